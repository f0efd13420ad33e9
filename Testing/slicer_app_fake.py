"""Run KidneyTumorSeg.py as Slicer would, with Slicer's Qt layer faked at its boundary.

``python slicer_app_fake.py SCENARIO [BLOCKED ...]`` imports the module file in this process with
the packages named in BLOCKED made unimportable (as in a fresh Slicer, which has no nibabel and,
before the PyTorch extension installed it, no torch), drives the widget, the console API and the
self-test, and prints what it saw as one JSON line. The MRML scene is real (slicer-core); only
``qt``, ``slicer.ScriptedLoadableModule``, the dialogs, ``loadUI`` and PyTorchUtils are fakes.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import json
import logging
import sys
import types
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "KidneyTumorSeg"


class Blocker(importlib.abc.MetaPathFinder):
    """Makes the named top-level packages unimportable."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


class FakeWidget:
    """A Qt widget: properties are remembered (and their assignments logged), any other method call
    is logged, ``connect`` keeps the slot."""

    def __init__(self, name: str):
        object.__setattr__(self, "_state", {"name": name, "props": {"currentPath": "", "text": "", "visible": True},
                                            "sets": [], "calls": [], "slots": {}})

    def __getattr__(self, attribute):
        state = object.__getattribute__(self, "_state")
        if attribute in state["props"]:
            return state["props"][attribute]
        return lambda *args: state["calls"].append([attribute, *map(str, args)])

    def __setattr__(self, attribute, value):
        self._state["props"][attribute] = value
        self._state["sets"].append([attribute, value if isinstance(value, (str, bool, int, float)) else str(value)])

    def connect(self, signal, slot):
        self._state["slots"][signal] = slot


class FakeUi:
    def __init__(self):
        self.widgets: dict[str, FakeWidget] = {}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self.widgets.setdefault(name, FakeWidget(name))


class FakeTimer(FakeWidget):
    def __init__(self):
        super().__init__("timer")
        self._state["props"]["active"] = False

    def isActive(self):
        return self._state["props"]["active"]

    def start(self):
        self._state["props"]["active"] = True

    def stop(self):
        self._state["props"]["active"] = False


def install_fake_slicer_app(torch_utils: bool) -> dict:
    """The Qt side of Slicer as fakes; returns what they record (errors shown, reloads, ...)."""
    import slicer
    import slicer.util

    seen: dict = {"errors": [], "reloads": 0, "ui": FakeUi()}
    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    sys.modules["qt"] = qt

    base = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or types.SimpleNamespace(isEntered=True)
            self.layout = FakeWidget("layout")
            self.moduleName = type(self).__name__[: -len("Widget")]

        def setup(self):
            pass

        def resourcePath(self, name):
            return str(MODULE_DIR / "Resources" / name)

        def onReload(self):
            seen["reloads"] += 1

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode("KidneyTumorSeg", "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag("KidneyTumorSeg")
                node = slicer.mrmlScene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest:
        def delayDisplay(self, message, msec=1000):
            logging.info("delayDisplay: %s", message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
        setattr(base, cls.__name__, cls)
    sys.modules["slicer.ScriptedLoadableModule"] = base
    slicer.ScriptedLoadableModule = base
    slicer.mrmlScene = slicer.vtkMRMLScene()

    @contextlib.contextmanager
    def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception as error:  # Slicer shows a dialog and goes on
            seen["errors"].append(f"{message} {error}")

    slicer.util.tryWithErrorDisplay = tryWithErrorDisplay
    slicer.util.loadUI = lambda path: FakeWidget(Path(path).name)
    slicer.util.childWidgetVariables = lambda widget: seen["ui"]
    slicer.util.confirmYesNoDisplay = lambda *args, **kwargs: False
    if torch_utils:
        module = types.ModuleType("PyTorchUtils")
        module.PyTorchUtilsLogic = lambda: types.SimpleNamespace(installTorch=None)
        sys.modules["PyTorchUtils"] = module
    return seen


def widget_view(ui: FakeUi) -> dict:
    return {name: widget._state["props"] for name, widget in ui.widgets.items()}


def run(scenario: str, blocked: set[str]) -> dict:
    sys.meta_path.insert(0, Blocker(blocked))
    seen = install_fake_slicer_app(torch_utils="PyTorchUtils" not in blocked)
    sys.path.insert(0, str(MODULE_DIR))
    import KidneyTumorSeg

    widget = KidneyTumorSeg.KidneyTumorSegWidget()
    widget.setup()
    ui = seen["ui"]
    result = {"controller": widget.controller is not None, "errors": seen["errors"], "view": widget_view(ui),
              "imported": sorted(name for name in ("nibabel", "torch", "KidneyTumorSegLib.controller") if name in sys.modules)}
    if scenario == "fresh":
        try:
            KidneyTumorSeg.KidneyTumorSegLogic().segment(None)
        except Exception as error:
            result["console_error"] = [type(error).__name__, isinstance(error, RuntimeError), str(error)]
        records = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        logging.getLogger().addHandler(handler)
        test = KidneyTumorSeg.KidneyTumorSegTest()
        test.setUp()
        test.test_flow_on_sample()
        result["self_test_log"] = records
        button = ui.installDependenciesButton
        during: list = []

        def confirm_and_click_again(question, **kwargs):  # the installer asks; meanwhile the user clicks again
            during.append({"button_enabled": button.enabled, "status": ui.statusLabel.text, "installing": True})
            button._state["slots"]["clicked(bool)"]()  # PythonQt calls a slot with the arguments it takes
            return False  # then declines

        sys.modules["slicer.util"].confirmYesNoDisplay = confirm_and_click_again
        button._state["slots"]["clicked(bool)"]()  # PythonQt calls a slot with the arguments it takes
        result["install_clicks"] = {"questions": during, "button_enabled_after": button.enabled, "errors": list(seen["errors"])}
        widget.onReload()
        result["reloads"] = seen["reloads"]
        result["library_left"] = sorted(name for name in sys.modules if name.startswith("KidneyTumorSegLib"))
    elif scenario == "installed":
        path_editor = ui.bundlePathLineEdit
        path_editor._state["sets"].clear()
        path_editor._state["props"]["currentPath"] = "/models/my bund"  # the user types, one key at a time
        path_editor._state["slots"]["currentPathChanged(QString)"]("/models/my bund")
        result["bundle_path"] = widget.controller.parameters.bundle_path
        result["path_editor_sets"] = list(path_editor._state["sets"])
        widget.controller.update(bundle_path="/models/other")  # a change from elsewhere is shown
        result["path_editor_after_change"] = path_editor.currentPath
        widget.controller._bundle_used = "/models/other"  # as after a successful run
        widget.onTimer()
        result["history_calls"] = [call for call in path_editor._state["calls"] if call[0] == "addCurrentPathToHistory"]
        widget.onTimer()  # remembered once
        result["history_calls_again"] = [call for call in path_editor._state["calls"] if call[0] == "addCurrentPathToHistory"]
        removed: list = []
        widget.controller.node_removed = lambda node: removed.append(node.GetName())
        scene = sys.modules["slicer"].mrmlScene
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a CT")
        scene.RemoveNode(volume)
        result["removed_nodes_told"] = removed
        widget.cleanup()
    return result


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], set(sys.argv[2:]))))
