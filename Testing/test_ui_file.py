"""The Slicer module's files without Slicer: every widget the code uses exists in the .ui with the
expected class, the module file stays thin and declares what Slicer needs, icons and CMake are in place."""
from __future__ import annotations

import ast
import re
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "KidneyTumorSeg"
MODULE_FILE = MODULE_DIR / "KidneyTumorSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "KidneyTumorSeg.ui"

EXPECTED_WIDGETS = {
    "inputsCollapsibleButton": "ctkCollapsibleButton",
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "bundlePathLineEdit": "ctkPathLineEdit",
    "stage1CollapsibleButton": "ctkCollapsibleButton",
    "locateButton": "QPushButton",
    "cropRoiSelector": "qMRMLNodeComboBox",
    "showSegmentationBoxCheckBox": "QCheckBox",
    "showLandmarkBoxCheckBox": "QCheckBox",
    "showLandmarksCheckBox": "QCheckBox",
    "decisionsLabel": "QLabel",
    "outputsCollapsibleButton": "ctkCollapsibleButton",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "show3DButton": "qMRMLSegmentationShow3DButton",
    "resultsTableSelector": "qMRMLNodeComboBox",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
    "deviceComboBox": "QComboBox",
    "membersLineEdit": "QLineEdit",
    "overlapSpinBox": "QDoubleSpinBox",
    "minTumorPixelsSpinBox": "QSpinBox",
    "keepAllComponentsCheckBox": "QCheckBox",
    "allowPartialCheckBox": "QCheckBox",
    "showResult3DCheckBox": "QCheckBox",
    "showUncertaintyCheckBox": "QCheckBox",
    "segmentButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "installDependenciesButton": "QPushButton",
}
NODE_TYPES = {
    "inputVolumeSelector": ["vtkMRMLScalarVolumeNode"],
    "cropRoiSelector": ["vtkMRMLMarkupsROINode"],
    "outputSegmentationSelector": ["vtkMRMLSegmentationNode"],
    "resultsTableSelector": ["vtkMRMLTableNode"],
}


@pytest.fixture(scope="module")
def ui_root() -> ElementTree.Element:
    return ElementTree.parse(UI_FILE).getroot()


@pytest.fixture(scope="module")
def ui_widgets(ui_root) -> dict[str, ElementTree.Element]:
    return {widget.get("name"): widget for widget in ui_root.iter("widget")}


def used_widget_names() -> set[str]:
    """Names the module reads as ``self.ui.<name>`` or ``ui.<name>`` (with ``ui = self.ui``)."""
    return set(re.findall(r"\bui\.([A-Za-z_]\w*)", MODULE_FILE.read_text(encoding="utf-8")))


def test_every_widget_the_code_uses_exists_with_the_expected_class(ui_widgets):
    used = used_widget_names()
    assert used, "the module uses no widget: the pattern no longer matches the code"
    unknown = used - EXPECTED_WIDGETS.keys()
    assert not unknown, f"widgets used in code without an expected class here: {sorted(unknown)}"
    for name in sorted(used):
        assert name in ui_widgets, f"{name} is used in KidneyTumorSeg.py but missing from the .ui"
        assert ui_widgets[name].get("class") == EXPECTED_WIDGETS[name], name


def test_the_panel_has_the_four_sections_and_every_expected_widget(ui_widgets):
    for name, widget_class in EXPECTED_WIDGETS.items():
        assert ui_widgets[name].get("class") == widget_class, name
    assert ui_widgets["KidneyTumorSeg"].get("class") == "qMRMLWidget"


def test_node_selectors_show_the_right_node_types_and_follow_the_scene(ui_root, ui_widgets):
    scene_receivers = {c.findtext("receiver") for c in ui_root.iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    for name, types in NODE_TYPES.items():
        node_types = ui_widgets[name].find("property[@name='nodeTypes']/stringlist")
        assert [s.text for s in node_types] == types, name
        assert name in scene_receivers, f"{name} does not get the scene"
    custom = {c.findtext("class") for c in ui_root.iter("customwidget")}
    used_custom = {w.get("class") for w in ui_widgets.values() if w.get("class", "").startswith(("q", "ctk"))}
    assert used_custom <= custom


def test_device_choices_and_defaults_match_the_engine(ui_widgets):
    pytest.importorskip("slicer")
    from KidneyTumorSegLib.controller import Parameters

    devices = [item.findtext("property/string") for item in ui_widgets["deviceComboBox"].iter("item")]
    assert devices == ["auto", "cpu", "cuda"] and Parameters().device == "auto"
    assert float(ui_widgets["overlapSpinBox"].findtext("property[@name='value']/double")) == Parameters().overlap
    assert int(ui_widgets["minTumorPixelsSpinBox"].findtext("property[@name='value']/number")) == Parameters().min_tumor_pixels


def test_module_file_is_thin_and_declares_module_widget_logic_test():
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert len(source.splitlines()) < 400
    tree = ast.parse(source)
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"KidneyTumorSeg", "KidneyTumorSegWidget", "KidneyTumorSegLogic", "KidneyTumorSegTest"} <= classes
    assert 'self.parent.categories = ["Segmentation"]' in source
    assert "demo" in source and "Zhang" in source and "cascaded fusion FCNs" in source
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KidneyTumorSegLogic")
    assert {"locate", "segment", "segmentFolder", "ensureDependencies"} <= {f.name for f in logic.body if isinstance(f, ast.FunctionDef)}


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_icons_cmake_and_requirements_are_in_place():
    assert _png_size(MODULE_DIR / "Resources" / "Icons" / "KidneyTumorSeg.png") == (128, 128)
    assert _png_size(REPO / "Resources" / "Icons" / "KidneyTumorSeg.png") == (128, 128)
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"PyTorch"\)', top) and "add_subdirectory(KidneyTumorSeg)" in top
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top
    module = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in module and "WITH_GENERIC_TESTS" in module
    requirements = (MODULE_DIR / "Resources" / "requirements.txt").read_text(encoding="utf-8")
    names = {re.split(r"[<>=~ ]", line)[0] for line in requirements.splitlines() if line.strip() and not line.startswith("#")}
    assert {"nibabel", "scipy", "pynrrd"} <= names and not names & {"torch", "numpy", "vtk", "SimpleITK", "slicer-core"}
