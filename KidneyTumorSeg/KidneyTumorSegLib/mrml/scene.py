"""MRML scenes that work inside 3D Slicer and, through ``slicer-core``, in plain Python.

Inside Slicer the application already owns the scene and the module logics. Outside it a bare
``vtkMRMLScene`` lacks them: :func:`new_headless_scene` creates the application logic, its colour
logic (and the colour legends' node class) and the volumes, segmentations, markups,
subject-hierarchy, tables and crop-volume logics, as Slicer does at start-up (a segmentation cannot hold a binary labelmap without them).
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import slicer

SCRIPTED_MODULE_NODE = "vtkMRMLScriptedModuleNode"
_MODULE_LOGICS = {
    "volumes": "vtkSlicerVolumesLogic",
    "segmentations": "vtkSlicerSegmentationsModuleLogic",
    "markups": "vtkSlicerMarkupsLogic",
    "subjecthierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "tables": "vtkSlicerTablesLogic",
    "cropvolume": "vtkSlicerCropVolumeLogic",
}
_global: HeadlessScene | None = None


def in_slicer_application() -> bool:
    """Whether this runs inside the Slicer application (not on ``slicer-core``)."""
    return hasattr(slicer, "app")


@dataclass
class HeadlessScene:
    """A scene with the application and module logics Slicer would attach to it.

    ``logics`` maps lower-case module names (``slicer.modules.<name>``) to their logic; they are
    held here so that VTK does not free them while the scene lives.
    """

    scene: Any
    application_logic: Any
    logics: dict[str, Any] = field(default_factory=dict)

    def logic(self, name: str) -> Any:
        return self.logics[name]


def new_headless_scene() -> HeadlessScene:
    """A fresh private scene with its logics (for writing files, tests, or work outside Slicer)."""
    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    colors = application.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.SetMRMLApplicationLogic(application)
    colors.AddDefaultColorNodes()
    application.SetModuleLogic("Colors", colors)
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # as Slicer's Colors module does at start-up
    headless = HeadlessScene(scene, application, {"colors": colors})
    for name, class_name in _MODULE_LOGICS.items():
        logic = getattr(slicer, class_name)()
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
        application.SetModuleLogic(name, logic)
        headless.logics[name] = logic
    return headless


def private_scene() -> HeadlessScene:
    """A scene of one's own (e.g. to write a file): bare inside Slicer, whose logics are global
    (segmentation converters are registered at start-up), with its logics outside."""
    if in_slicer_application():
        return HeadlessScene(slicer.vtkMRMLScene(), None)
    return new_headless_scene()


def application_scene() -> Any:
    """The scene ``slicer.mrmlScene``: Slicer's own, or a headless one made once outside Slicer.

    Outside Slicer this also sets ``slicer.modules.<name>.logic()`` for the logics above, which
    the ``slicer.util`` array helpers look up.
    """
    global _global
    if in_slicer_application():
        return slicer.mrmlScene
    if _global is None:
        _global = new_headless_scene()
        slicer.mrmlScene = _global.scene
        modules = getattr(slicer, "modules", None) or types.SimpleNamespace()
        for name, logic in _global.logics.items():
            setattr(modules, name, types.SimpleNamespace(logic=lambda logic=logic: logic))
        slicer.modules = modules
    return _global.scene


def module_parameter_node(scene: Any, module_name: str) -> Any:
    """The module's singleton ``vtkMRMLScriptedModuleNode`` in ``scene``, created when missing.

    Same tag and attribute as Slicer's ``ScriptedLoadableModuleLogic.getParameterNode()``, so
    the panel, the console and a reloaded scene all find the same node.
    """
    node = scene.GetSingletonNode(module_name, SCRIPTED_MODULE_NODE)
    if node is None:
        node = scene.CreateNodeByClass(SCRIPTED_MODULE_NODE)
        node.UnRegister(None)  # CreateNodeByClass returns a new reference; the scene keeps its own
        node.SetSingletonTag(module_name)
        node.SetAttribute("ModuleName", module_name)
        node.SetName(module_name)
        node = scene.AddNode(node)
    return node


def node_ids(scene: Any) -> set[str]:
    """The IDs of every node in ``scene`` (to check that an action left it unchanged)."""
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
