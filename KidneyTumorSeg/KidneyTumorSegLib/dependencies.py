"""What KidneyTumorSeg needs in Slicer's Python, and installing it on first use, without Qt.

Slicer ships numpy and scipy (5.12 also SimpleITK) but not nibabel, and PyTorch comes through the
PyTorch extension (``PyTorchUtils``). This module imports only the standard library, so the panel
can start in a fresh Slicer and offer the install. Every question goes through an injected
``confirm``; Slicer's installers sit behind :class:`SlicerPython`, which the tests replace.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MIN_TORCH_VERSION = "2.4"
TORCH_REQUIREMENT = f">={MIN_TORCH_VERSION}"
REQUIREMENTS = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
SLICER_OWN_PACKAGES = ("numpy", "vtk", "SimpleITK")
"""Slicer's own packages: pinned at their installed versions while anything is installed."""
REQUESTER = "KidneyTumorSeg"
OFFLINE_HELP = "see 'Offline install' in docs/slicer_console.md"

Confirm = Callable[[str], bool]

# Where pip finds no PyTorch >= 2.4, by (sys.platform, platform.machine()) of Slicer's Python:
# PyTorch's last macOS x86-64 wheels are 2.2.2, and Slicer's macOS releases are x86-64 builds (run
# under Rosetta on Apple silicon), so their Python is x86-64 on every Mac.
NO_TORCH_PLATFORMS = {("darwin", "x86_64"): "macOS on x86-64"}
NO_TORCH_MESSAGE = (
    "KidneyTumorSeg needs PyTorch{requirement}, and PyTorch publishes no build newer than 2.2.2 for {where}, "
    "which this Slicer's Python is (an Intel Mac, or Slicer for Intel under Rosetta on Apple silicon): use "
    "KidneyTumorSeg in Slicer on Linux or Windows, or its command line from a native (arm64) Python on an "
    "Apple-silicon Mac")


class DependencyError(RuntimeError):
    """Something KidneyTumorSeg needs is missing and was not installed (one-line message)."""


@dataclass(frozen=True)
class Requirement:
    """One line of ``requirements.txt``: a distribution name and an optional minimum version."""

    name: str
    minimum: str | None = None

    def __str__(self) -> str:
        return self.name if self.minimum is None else f"{self.name}>={self.minimum}"

    def satisfied_by(self, version: str | None) -> bool:
        return version is not None and (self.minimum is None or version_at_least(version, self.minimum))


_REQUIREMENT_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?$")


def read_requirements(path: str | os.PathLike = REQUIREMENTS) -> tuple[Requirement, ...]:
    """The requirements of a ``requirements.txt`` holding ``name`` or ``name>=version`` lines
    (comments and blank lines skipped); ValueError for any other line."""
    requirements = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _REQUIREMENT_LINE.match(line)
        if match is None:
            raise ValueError(f"{path}: unsupported requirement {line!r} (use 'name' or 'name>=version')")
        requirements.append(Requirement(match.group(1), match.group(2)))
    return tuple(requirements)


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``, ``"2.4"`` -> ``(2, 4)``."""
    numbers = []
    for part in version.split("+", 1)[0].split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group(0)))
        if digits.group(0) != part:  # "0rc1", "0a0": the release ends here
            break
    return tuple(numbers)


def version_at_least(version: str, minimum: str) -> bool:
    """Whether ``version``'s release is at least ``minimum``'s (missing parts count as 0)."""
    have, want = release(version), release(minimum)
    width = max(len(have), len(want))
    return have + (0,) * (width - len(have)) >= want + (0,) * (width - len(want))


# Distributions of requirements.txt whose module has another name.
IMPORT_NAMES = {"pynrrd": "nrrd"}


class SlicerPython:
    """Slicer's side of installing: what is installed, PyTorchUtils, ``slicer.packaging`` and
    ``slicer.util.pip_install``. Each import happens only when asked for."""

    def platform(self) -> tuple[str, str]:
        """``(sys.platform, platform.machine())`` of this Python, e.g. ``("darwin", "x86_64")``."""
        return sys.platform, platform.machine()

    def installed_version(self, distribution: str) -> str | None:
        """The version of an installed distribution whose module (of the same name, or the one
        :data:`IMPORT_NAMES` gives) can be found, or None. Nothing is imported."""
        try:
            version = importlib.metadata.version(distribution)
            found = importlib.util.find_spec(IMPORT_NAMES.get(distribution, distribution)) is not None
        except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
            return None
        return version if found else None

    def torch_utils(self) -> Any | None:
        """``PyTorchUtils.PyTorchUtilsLogic()`` of the PyTorch extension, or None without it."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            return None
        return PyTorchUtils.PyTorchUtilsLogic()

    def packaging(self) -> Any | None:
        """``slicer.packaging`` (Slicer >= 5.12; ``slicer`` does not import it itself), or None."""
        try:
            return importlib.import_module("slicer.packaging")
        except ImportError:
            return None

    def pip_install(self, arguments: Sequence[str]) -> None:
        """``slicer.util.pip_install`` with a list, so paths with spaces or backslashes stay whole."""
        import slicer.util

        slicer.util.pip_install(list(arguments))


@dataclass(frozen=True)
class DependencyStatus:
    """What is there: the PyTorch extension, torch's version (None: not installed) and the
    requirements that are absent or too old."""

    pytorch_extension: bool
    torch_version: str | None
    missing: tuple[Requirement, ...]
    no_torch_here: str | None = None
    """Why no PyTorch >= 2.4 can be installed on this platform (:data:`NO_TORCH_PLATFORMS`), else None."""

    @property
    def torch_ok(self) -> bool:
        return self.torch_version is not None and version_at_least(self.torch_version, MIN_TORCH_VERSION)

    @property
    def ready(self) -> bool:
        return self.pytorch_extension and self.torch_ok and not self.missing

    def needed(self) -> list[str]:
        """What to install, in words, e.g. ``["PyTorch>=2.4 (PyTorch extension)", "nibabel>=5.0"]``."""
        needed = []
        if not self.pytorch_extension:
            needed.append("the PyTorch extension (Extensions Manager)")
        elif self.torch_version is None:
            needed.append(f"PyTorch{TORCH_REQUIREMENT} (through the PyTorch extension)")
        elif not self.torch_ok:
            needed.append(f"PyTorch{TORCH_REQUIREMENT} (installed: {self.torch_version})")
        return needed + [str(requirement) for requirement in self.missing]

    def describe(self) -> str:
        """One line for the panel's status label."""
        if self.ready:
            return "All dependencies are installed."
        if self.no_torch_here is not None and not self.torch_ok:
            return f"{self.no_torch_here}."
        if not self.pytorch_extension:
            return "Install the PyTorch extension from the Extensions Manager and restart Slicer."
        return f"Install dependencies: {', '.join(self.needed())}."


def check(python: SlicerPython, requirements: Sequence[Requirement] | None = None) -> DependencyStatus:
    """What is installed now (torch's version is read on every call, never cached)."""
    importlib.invalidate_caches()
    requirements = read_requirements() if requirements is None else requirements
    where = NO_TORCH_PLATFORMS.get(python.platform())
    return DependencyStatus(
        pytorch_extension=python.torch_utils() is not None,
        torch_version=python.installed_version("torch"),
        missing=tuple(r for r in requirements if not r.satisfied_by(python.installed_version(r.name))),
        no_torch_here=None if where is None else NO_TORCH_MESSAGE.format(requirement=TORCH_REQUIREMENT, where=where),
    )


_installing = False


def installing() -> bool:
    """Whether :func:`ensure` is running in this process. Slicer's installers process the
    application's events on every line pip prints, so a second click on *Install dependencies*
    (or *Segment*) reaches the panel while the first install runs; the panel checks this first."""
    return _installing


def ensure(python: SlicerPython, confirm: Confirm | None, requirements_file: str | os.PathLike = REQUIREMENTS) -> bool:
    """Make the dependencies present: True when they are, False when the user declined an install.

    ``confirm`` None (console and batch use) installs nothing: anything missing raises
    :class:`DependencyError` saying how to install it. Otherwise PyTorch comes through
    PyTorchUtils (CUDA or CPU build, as it detects and the user chooses) and the other
    requirements through ``slicer.packaging.pip_ensure`` (Slicer >= 5.12, whose dialog names them)
    or ``slicer.util.pip_install`` after a question naming them; Slicer's own numpy, vtk and
    SimpleITK are pinned while pip runs. An installed PyTorch older than 2.4 is refused with the
    way to replace it; so is a platform where pip finds no PyTorch >= 2.4 (macOS x86-64), saying
    where KidneyTumorSeg runs. While one call installs, another (from a second click) raises
    :class:`DependencyError` and installs nothing.
    """
    global _installing
    if _installing:
        raise DependencyError("KidneyTumorSeg is installing its dependencies already: wait until it has finished")
    _installing = True
    try:
        return _ensure(python, confirm, requirements_file)
    finally:
        _installing = False


def _ensure(python: SlicerPython, confirm: Confirm | None, requirements_file: str | os.PathLike) -> bool:
    requirements = read_requirements(requirements_file)
    status = check(python, requirements)
    if status.ready:
        return True
    if status.no_torch_here is not None and not status.torch_ok:
        raise DependencyError(status.no_torch_here)
    if not status.pytorch_extension:
        raise DependencyError("KidneyTumorSeg needs the PyTorch extension: install it from the Extensions Manager, then restart Slicer")
    if status.torch_version is not None and not status.torch_ok:
        raise DependencyError(f"PyTorch {status.torch_version} is older than {MIN_TORCH_VERSION}: in the PyTorch Utils module "
                              f"uninstall it, restart Slicer, then install PyTorch with the version requirement {TORCH_REQUIREMENT}")
    if confirm is None:
        raise DependencyError(f"missing: {', '.join(status.needed())}. Click Install dependencies in the KidneyTumorSeg panel, or run "
                              f"logic.ensureDependencies(interactive=True), to install them; offline: {OFFLINE_HELP}")
    if status.torch_version is None and not install_torch(python, confirm):
        return False
    missing = check(python, requirements).missing
    if missing and not install_packages(python, confirm, missing, requirements_file):
        return False
    status = check(python, requirements)
    if not status.ready:
        raise DependencyError(f"still missing after installing: {', '.join(status.needed())}")
    return True


def install_torch(python: SlicerPython, confirm: Confirm) -> bool:
    """PyTorch through PyTorchUtils after the user agreed; the CUDA build when PyTorchUtils finds an
    NVIDIA driver and the user takes it, else the CPU build. False when declined."""
    if not confirm(f"KidneyTumorSeg needs PyTorch{TORCH_REQUIREMENT}. Install it now through the PyTorch extension? "
                   "It downloads up to a few GB and takes minutes."):
        return False
    utils = python.torch_utils()
    backend = choose_backend(computation_backends(utils), confirm)
    torch = utils.installTorch(askConfirmation=False, forceComputationBackend=backend, torchVersionRequirement=TORCH_REQUIREMENT)
    importlib.invalidate_caches()
    return torch is not None


def computation_backends(utils: Any) -> list[str]:
    """The PyTorch builds PyTorchUtils finds usable here (``["cpu", "cu126"]``: an NVIDIA driver was
    found); [] when this PyTorchUtils cannot tell (it then picks one itself)."""
    detect = getattr(utils, "getCompatibleComputationBackends", None)
    if detect is None:
        return []
    try:
        return [str(backend) for backend in detect(torchVersionRequirement=TORCH_REQUIREMENT)]
    except Exception as error:  # no network, an old light-the-torch, ...: let PyTorchUtils decide
        logger.warning("could not list the PyTorch builds for this machine (%s): PyTorchUtils chooses", error)
        return []


def choose_backend(backends: Sequence[str], confirm: Confirm) -> str | None:
    """The build to install: the newest CUDA build when one is offered and the user takes it,
    else ``"cpu"``; None (PyTorchUtils chooses) when nothing was detected."""
    cuda = sorted((b for b in backends if re.fullmatch(r"cu\d+", b)), key=lambda b: int(b[2:]))
    if cuda and confirm(f"An NVIDIA GPU driver was found. Install the GPU build of PyTorch ({cuda[-1]})? "
                        "Choose No for the CPU build (slower, smaller download)."):
        return cuda[-1]
    if cuda or "cpu" in backends:
        return "cpu"
    return None


def install_packages(python: SlicerPython, confirm: Confirm, missing: Sequence[Requirement],
                     requirements_file: str | os.PathLike = REQUIREMENTS) -> bool:
    """Install the ``missing`` requirements; False when the user declined."""
    with _pinned_slicer_packages(python) as constraints:
        packaging = python.packaging()
        if packaging is not None:
            try:
                packaging.pip_ensure(packaging.load_requirements(str(requirements_file)), constraints=constraints, requester=REQUESTER)
            except RuntimeError as error:  # Slicer 5.12 raises when the user declines its dialog
                if "declined" not in str(error):
                    raise
                return False
        else:
            names = ", ".join(str(r) for r in missing)
            if not confirm(f"KidneyTumorSeg needs these Python packages: {names}. Install them into Slicer's Python now? "
                           "Slicer's own numpy, vtk and SimpleITK are kept as they are."):
                return False
            python.pip_install([*(str(r) for r in missing), *(["-c", constraints] if constraints else [])])
    importlib.invalidate_caches()
    return True


class _pinned_slicer_packages:
    """A temporary pip constraints file pinning Slicer's own packages at their installed versions
    (its path, or None when none is installed); deleted afterwards."""

    def __init__(self, python: SlicerPython):
        versions = {name: python.installed_version(name) for name in SLICER_OWN_PACKAGES}
        self.pins = [f"{name}=={version}" for name, version in versions.items() if version is not None]
        self.path: str | None = None

    def __enter__(self) -> str | None:
        if not self.pins:
            return None
        handle, self.path = tempfile.mkstemp(prefix="KidneyTumorSeg-constraints-", suffix=".txt")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write("\n".join(self.pins) + "\n")
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            os.remove(self.path)
