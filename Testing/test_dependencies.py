"""First use in Slicer: what is installed, and installing the rest, with Slicer's installers faked at
their boundary (:class:`SlicerPython`). No Qt, no Slicer application."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from KidneyTumorSegLib import dependencies
from KidneyTumorSegLib.dependencies import (DependencyError, Requirement, SlicerPython, check, choose_backend, ensure,
                                            read_requirements, release, version_at_least)

SLICER_5_8 = {"numpy": "1.26.4", "scipy": "1.13.1"}  # what a fresh Slicer holds (no nibabel, no torch)


class FakeTorchUtils:
    """PyTorchUtils' logic: reports the builds it detects and 'installs' torch."""

    def __init__(self, python: FakeSlicerPython, backends=("cpu",)):
        self.python, self.backends, self.installs = python, list(backends), []

    def getCompatibleComputationBackends(self, forceComputationBackend=None, torchVersionRequirement=None):
        return self.backends

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        self.installs.append({"askConfirmation": askConfirmation, "backend": forceComputationBackend,
                              "requirement": torchVersionRequirement})
        self.python.versions["torch"] = f"2.13.0+{forceComputationBackend or 'cpu'}"
        return types.SimpleNamespace(__version__=self.python.versions["torch"])


class FakePackaging:
    """``slicer.packaging`` of Slicer 5.12: ``pip_ensure`` raises when the user declines its dialog."""

    def __init__(self, python: FakeSlicerPython, decline: bool = False):
        self.python, self.decline, self.calls = python, decline, []

    def load_requirements(self, path):
        return [f"{r}" for r in read_requirements(path)]

    def pip_ensure(self, requirements, constraints=None, requester=None):
        self.calls.append({"requirements": requirements, "constraints": Path(constraints).read_text(), "requester": requester})
        if self.decline:
            raise RuntimeError("User declined package installation")
        self.python.install(requirements)


class FakeSlicerPython(SlicerPython):
    def __init__(self, versions: dict[str, str], extension: bool = True, backends=("cpu",), packaging=None,
                 machine=("linux", "x86_64")):
        self.versions = dict(versions)
        self.machine = machine
        self.utils = FakeTorchUtils(self, backends) if extension else None
        self._packaging = packaging(self) if packaging else None
        self.pip_calls: list[list[str]] = []
        self.constraints: list[str] = []

    def installed_version(self, distribution):
        return self.versions.get(distribution)

    def platform(self):
        return self.machine

    def torch_utils(self):
        return self.utils

    def packaging(self):
        return self._packaging

    def pip_install(self, arguments):
        assert isinstance(arguments, list)  # a string would be shlex-split by Slicer
        self.pip_calls.append(arguments)
        if "-c" in arguments:
            self.constraints.append(Path(arguments[arguments.index("-c") + 1]).read_text())
        self.install([a for a in arguments if ">=" in a])

    def install(self, requirements):
        for text in requirements:
            name, minimum = text.split(">=")
            self.versions[name] = minimum


class Answers:
    """A user who answers the questions in turn (and records them)."""

    def __init__(self, *answers: bool):
        self.answers, self.questions = list(answers), []

    def __call__(self, question: str) -> bool:
        self.questions.append(question)
        return self.answers.pop(0)


def test_the_shipped_requirements_hold_nibabel_and_scipy_and_nothing_slicer_owns():
    requirements = read_requirements()
    assert {r.name for r in requirements} >= {"nibabel", "scipy"}
    assert not {r.name for r in requirements} & {"torch", "numpy", "vtk", "SimpleITK", "slicer-core"}
    assert all(r.minimum for r in requirements)


def test_requirements_of_another_form_are_refused(tmp_path):
    (tmp_path / "r.txt").write_text("# comment\nnibabel>=5.0  # inline\n\nscipy\n")
    assert read_requirements(tmp_path / "r.txt") == (Requirement("nibabel", "5.0"), Requirement("scipy"))
    (tmp_path / "r.txt").write_text("nibabel==5.0\n")
    with pytest.raises(ValueError, match="unsupported requirement"):
        read_requirements(tmp_path / "r.txt")


def test_versions_compare_by_release():
    assert release("2.13.0+cpu") == (2, 13, 0) and release("2.4.0rc1") == (2, 4, 0) and release("2.4") == (2, 4)
    assert version_at_least("2.13.0+cu126", "2.4") and version_at_least("2.4.0", "2.4")
    assert not version_at_least("2.3.1", "2.4") and not version_at_least("1.13.1", "2.4")
    assert not Requirement("nibabel", "5.0").satisfied_by("4.0.2") and Requirement("nibabel", "5.0").satisfied_by("5.3.2")
    assert not Requirement("nibabel").satisfied_by(None)


def test_a_fresh_slicer_is_not_ready_and_says_what_to_install():
    status = check(FakeSlicerPython(SLICER_5_8))
    assert not status.ready and status.pytorch_extension and status.torch_version is None
    assert [r.name for r in status.missing] == ["nibabel", "pynrrd"]
    assert status.describe() == "Install dependencies: PyTorch>=2.4 (through the PyTorch extension), nibabel>=5.0, pynrrd>=1.0."
    assert "PyTorch extension" in check(FakeSlicerPython(SLICER_5_8, extension=False)).describe()
    assert check(FakeSlicerPython({**SLICER_5_8, "torch": "2.13.0", "nibabel": "5.3.2", "pynrrd": "1.1.3"})).ready


def test_the_console_installs_nothing_and_raises_with_the_way_to_install():
    python = FakeSlicerPython(SLICER_5_8)
    with pytest.raises(RuntimeError, match=r"missing: PyTorch>=2\.4 .*nibabel>=5\.0.*ensureDependencies\(interactive=True\)"):
        ensure(python, None)
    assert python.utils.installs == [] and python.pip_calls == []
    with pytest.raises(DependencyError, match="PyTorch extension: install it from the Extensions Manager"):
        ensure(FakeSlicerPython(SLICER_5_8, extension=False), Answers())


@pytest.mark.parametrize("takes_gpu, backend", [(True, "cu126"), (False, "cpu")])
def test_first_use_on_slicer_5_8_installs_torch_as_detected_then_nibabel_after_naming_it(takes_gpu, backend):
    python = FakeSlicerPython(SLICER_5_8, backends=["cpu", "cu118", "cu126"])
    user = Answers(True, takes_gpu, True)
    assert ensure(python, user)
    assert python.utils.installs == [{"askConfirmation": False, "backend": backend, "requirement": ">=2.4"}]
    assert "PyTorch>=2.4" in user.questions[0] and "cu126" in user.questions[1] and "nibabel>=5.0" in user.questions[2]
    assert python.pip_calls == [["nibabel>=5.0", "pynrrd>=1.0", "-c", python.pip_calls[0][3]]]
    assert python.constraints == ["numpy==1.26.4\n"]  # Slicer's own numpy stays as it is
    assert not Path(python.pip_calls[0][3]).exists()  # the constraints file is removed afterwards
    assert check(python).ready


def test_a_machine_without_gpu_gets_the_cpu_build_without_a_second_question():
    assert choose_backend(["cpu"], Answers()) == "cpu"
    assert choose_backend([], Answers()) is None  # PyTorchUtils cannot tell: it decides itself
    assert choose_backend(["cu121", "cpu", "cu124"], Answers(True)) == "cu124"


def test_declining_an_install_returns_false_quietly_and_installs_nothing():
    python = FakeSlicerPython(SLICER_5_8)
    assert ensure(python, Answers(False)) is False
    assert python.utils.installs == [] and python.pip_calls == []
    python = FakeSlicerPython({**SLICER_5_8, "torch": "2.13.0"})
    assert ensure(python, Answers(False)) is False and python.pip_calls == []


def test_slicer_5_12_installs_through_pip_ensure_and_a_declined_dialog_is_no_error():
    python = FakeSlicerPython({**SLICER_5_8, "torch": "2.13.0"}, packaging=FakePackaging)
    assert ensure(python, Answers())  # pip_ensure asks itself, naming the packages
    call = python.packaging().calls[0]
    assert call["requirements"] == ["nibabel>=5.0", "scipy>=1.10", "pynrrd>=1.0"] and call["requester"] == "KidneyTumorSeg"
    assert call["constraints"] == "numpy==1.26.4\n" and python.pip_calls == []
    declined = FakeSlicerPython({**SLICER_5_8, "torch": "2.13.0"}, packaging=lambda p: FakePackaging(p, decline=True))
    assert ensure(declined, Answers()) is False

    class Failing(FakePackaging):
        def pip_ensure(self, *args, **kwargs):
            raise RuntimeError("pip_install(blocking=False) is only supported on the main thread")

    with pytest.raises(RuntimeError, match="main thread"):
        ensure(FakeSlicerPython({**SLICER_5_8, "torch": "2.13.0"}, packaging=Failing), Answers())


def test_an_older_torch_is_refused_on_every_start_even_with_all_else_installed():
    python = FakeSlicerPython({**SLICER_5_8, "torch": "2.1.2+cu118", "nibabel": "5.3.2"})
    for confirm in (None, Answers()):
        with pytest.raises(DependencyError, match=r"PyTorch 2\.1\.2\+cu118 is older than 2\.4.*>=2\.4"):
            ensure(python, confirm)
    assert python.utils.installs == [] and python.pip_calls == []
    assert "installed: 2.1.2+cu118" in check(python).describe()


def test_slicer_packaging_is_imported_explicitly(monkeypatch):
    slicer = pytest.importorskip("slicer")
    assert SlicerPython().packaging() is None  # slicer-core, like Slicer < 5.12, has none
    module = types.ModuleType("slicer.packaging")
    monkeypatch.setitem(sys.modules, "slicer.packaging", module)
    monkeypatch.delattr(slicer, "packaging", raising=False)
    assert SlicerPython().packaging() is module  # found although `slicer` never imported it


def test_pip_install_gets_a_list_that_keeps_a_windows_path_whole(monkeypatch):
    util = pytest.importorskip("slicer.util")
    received = []
    monkeypatch.setattr(util, "pip_install", received.append)
    path = r"C:\Users\Jane Doe\AppData\Local\slicer.org\Slicer 5.8.1\constraints.txt"
    SlicerPython().pip_install(["nibabel>=5.0", "-c", path])
    assert received == [["nibabel>=5.0", "-c", path]]


def test_the_real_boundary_reads_this_python(monkeypatch):
    python = SlicerPython()
    assert python.installed_version("numpy") is not None and python.installed_version("no-such-package-here") is None
    # every requirement of requirements.txt is seen where it is installed, pynrrd (module nrrd) too
    assert all(python.installed_version(r.name) is not None for r in dependencies.read_requirements())
    assert "pynrrd" in {r.name for r in dependencies.read_requirements()}  # Slicer bundles no NRRD reader for Python
    assert python.torch_utils() is None
    fake = types.ModuleType("PyTorchUtils")
    fake.PyTorchUtilsLogic = lambda: "logic"
    monkeypatch.setitem(sys.modules, "PyTorchUtils", fake)
    assert python.torch_utils() == "logic"
    assert dependencies.MIN_TORCH_VERSION == "2.4"


@pytest.mark.parametrize("torch_version", [None, "2.2.2"])  # nothing yet, or what PyTorchUtils brings there
def test_macos_on_x86_64_is_refused_with_where_it_runs(torch_version):
    versions = {**SLICER_5_8, **({"torch": torch_version} if torch_version else {})}
    python = FakeSlicerPython(versions, machine=("darwin", "x86_64"))
    status = check(python)
    assert not status.ready and "no build newer than 2.2.2 for macOS on x86-64" in status.describe()
    assert "Linux or Windows" in status.describe() and "arm64" in status.describe()
    with pytest.raises(DependencyError, match="no build newer than 2.2.2"):
        ensure(python, Answers(True, True, True))
    assert python.utils.installs == [] and python.pip_calls == []  # nothing was tried
    apple_silicon = FakeSlicerPython(versions if torch_version is None else SLICER_5_8, machine=("darwin", "arm64"))
    assert ensure(apple_silicon, Answers(True, True, True)) and apple_silicon.utils.installs  # a native Python installs


def test_a_second_install_while_one_runs_is_refused_and_installs_nothing():
    """Slicer's installers process events while pip runs, so a second click arrives inside the first install."""
    python = FakeSlicerPython(SLICER_5_8)
    second: list = []

    class ClickedAgain(FakeTorchUtils):
        def installTorch(self, **kwargs):
            assert dependencies.installing()
            try:
                ensure(python, Answers(True, True, True))
            except DependencyError as error:
                second.append(str(error))
            return super().installTorch(**kwargs)

    python.utils = ClickedAgain(python)
    assert ensure(python, Answers(True, True, True)) and not dependencies.installing()
    assert second == ["KidneyTumorSeg is installing its dependencies already: wait until it has finished"]
    assert len(python.utils.installs) == 1 and len(python.pip_calls) == 1  # one PyTorch, one pip
    failing = FakeSlicerPython(SLICER_5_8, extension=False)
    with pytest.raises(DependencyError):
        ensure(failing, Answers(True))
    assert not dependencies.installing()  # an install that failed frees the way for the next
