"""KidneyTumorSeg: kidney and kidney-tumor segmentation in abdominal CT, as a 3D Slicer module.

Thin by design: the panel binds widgets to :class:`KidneyTumorSegLib.controller.Controller`, which
holds every decision and is tested outside Slicer; inference runs out of process. At start only
modules that need nothing beyond Slicer's own Python are imported (``dependencies``, ``colours``):
the controller, which needs nibabel and torch, is built once :mod:`KidneyTumorSegLib.dependencies`
finds them installed, and until then the panel offers to install them.
"""
import logging
import os
import shutil
import sys

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from KidneyTumorSegLib import dependencies
from KidneyTumorSegLib.colours import BOX_COLOURS, LANDMARK_COLOUR

MODULE_NAME = "KidneyTumorSeg"
LIBRARY = "KidneyTumorSegLib"
MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
SAMPLE_FOLDER = os.path.join(MODULE_DIR, "Resources", "Sample")  # one KiTS19-layout case: case_sample/imaging.nii.gz
SAMPLE = os.path.join(SAMPLE_FOLDER, "case_sample", "imaging.nii.gz")


class KidneyTumorSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Kidney Tumor Seg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["KidneyTumorSeg contributors"]
        self.parent.helpText = f"""
Segments the kidneys and kidney tumors of an abdominal CT with the two-stage cascade of Zhang et al.
(KiTS19): <b>Locate</b> finds the kidneys and shows the box around the kidney tissue found
({BOX_COLOURS["segmentation"].name}), the box of the kidney landmarks ({BOX_COLOURS["landmarks"].name}), the crop box
({BOX_COLOURS["crop"].name}, editable) and the landmarks ({LANDMARK_COLOUR.name}); drag the crop box if needed, then
<b>Segment</b> outlines kidneys and tumors inside it (or finds the kidneys first when nothing was located).
A crop box you dragged is trusted: every kidney region found inside it is kept.
The result is a segmentation with segments Kidney and Tumor (SNOMED CT terms, linked to the CT for
DICOM SEG export) and a table saying per side whether a kidney was found, its volume and its tumors;
the status line says the same and warns when a kidney is missing or far smaller than the other.
<p><b>Warning:</b> the model bundle shipped with the module is a <i>demo</i> trained on synthetic
phantoms. It is not a clinical model and must not be used for diagnosis; choose your own trained
bundle under Inputs. On a real scan that covers the abdomen it finds the kidneys (kidney Dice 0.72 on
a real non-contrast CT) but calls much of each kidney tumor (half of what it labels on that CT, which has
no tumor; half of healthy kidney on tumor-free phantoms), so its tumor label and tumor volumes mean
nothing; on a short scan (about 30 slices) it finds part of the kidneys at best (0.38 on an excerpt of
that CT), and when it finds nothing the status line says so.</p>
<p>Please cite: J. Zhang, K. He, T. Qin, J. Chen, L. Yang. <i>Segmentation of kidney and kidney tumor
by cascaded fusion FCNs with soft-boundary regression.</i> KiTS19 Challenge, MICCAI 2019.</p>
"""
        self.parent.acknowledgementText = """
The method is that of Zhang, He, Qin, Chen and Yang (Nanjing University) for the 2019 Kidney Tumor
Segmentation Challenge (KiTS19, N. Heller et al.). Test data: KiTS19 label maps (CC BY-NC-SA 4.0) and a
CT from TotalSegmentator (Apache-2.0).
"""


class KidneyTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.controller = None
        self.dependencyStatus = None
        self._updating = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/KidneyTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = KidneyTumorSegLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onTimer)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.updateGUI)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        ui = self.ui
        for selector, name in ((ui.inputVolumeSelector, "input_volume"), (ui.cropRoiSelector, "crop_roi"),
                               (ui.outputSegmentationSelector, "output_segmentation"), (ui.resultsTableSelector, "results_table")):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node, name=name: self.setParameter(**{name: node}))
        for box, name in ((ui.showSegmentationBoxCheckBox, "show_segmentation_box"), (ui.showLandmarkBoxCheckBox, "show_landmark_box"),
                          (ui.showLandmarksCheckBox, "show_landmarks"), (ui.showResult3DCheckBox, "show_3d"),
                          (ui.showUncertaintyCheckBox, "show_uncertainty"), (ui.keepAllComponentsCheckBox, "keep_all_components"),
                          (ui.allowPartialCheckBox, "allow_partial")):
            box.connect("toggled(bool)", lambda checked, name=name: self.setParameter(**{name: checked}))
        ui.bundlePathLineEdit.connect("currentPathChanged(QString)", lambda path: self.setParameter(bundle_path=path))
        ui.deviceComboBox.connect("currentTextChanged(QString)", lambda text: self.setParameter(device=text))
        ui.membersLineEdit.connect("editingFinished()", self.onMembersEdited)
        ui.overlapSpinBox.connect("valueChanged(double)", lambda value: self.setParameter(overlap=value))
        ui.minTumorPixelsSpinBox.connect("valueChanged(int)", lambda value: self.setParameter(min_tumor_pixels=value))
        ui.locateButton.connect("clicked(bool)", self.onLocateButton)
        ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.initializeController()

    def cleanup(self):
        self.removeObservers()
        self.timer.stop()
        if self.controller is not None:
            self.controller.close()

    def enter(self):
        if self.controller is None:
            self.initializeController()

    def onReload(self):
        forgetLibraryModules()
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event):
        if self.controller is not None:
            self.removeObserver(self.controller.parameter_node, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.controller.close()
            self.controller = None
        self.timer.stop()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeRemoved(self, caller, event, node):
        """A run whose CT leaves the scene is cancelled."""
        if self.controller is not None:
            self.controller.node_removed(node)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeController()

    def initializeController(self):
        """Build the controller when the dependencies are installed; else show what is missing."""
        self.dependencyStatus = self.logic.dependencyStatus()
        if not self.dependencyStatus.ready:
            self.updateGUI()
            return
        parameterNode = self.logic.getParameterNode()
        self.controller = self.logic.createController(parameterNode, confirm=_askYesNo, onChange=self.updateGUI)
        self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        if self.controller.parameters.input_volume is None:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume is not None and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self.controller.update(input_volume=firstVolume)
        self.updateGUI()

    def setParameter(self, **changes):
        if self._updating or self.controller is None:
            return
        with slicer.util.tryWithErrorDisplay("KidneyTumorSeg: could not change the setting.", waitCursor=False):
            self.controller.update(**changes)

    def onMembersEdited(self):
        self.setParameter(members=tuple(m.strip() for m in self.ui.membersLineEdit.text.split(",") if m.strip()))

    def onInstallDependencies(self):
        if dependencies.installing():  # a second click, delivered while pip runs
            return
        self.ui.installDependenciesButton.enabled = False
        self.ui.statusLabel.text = "Installing dependencies…"
        try:
            with slicer.util.tryWithErrorDisplay("KidneyTumorSeg could not install its dependencies.", waitCursor=True):
                if self.logic.ensureDependencies(interactive=True):
                    self.initializeController()
        finally:
            self.ui.installDependenciesButton.enabled = True
        self.updateGUI()

    def onLocateButton(self):
        self.startOrCancel(self.controller.locate, "locating")

    def onSegmentButton(self):
        self.startOrCancel(self.controller.segment, "segmenting")

    def startOrCancel(self, start, runningStateName):
        if dependencies.installing():  # a click delivered while pip runs
            return
        if self.controller.running:
            if self.controller.state.value == runningStateName:
                self.controller.cancel()
            return
        with slicer.util.tryWithErrorDisplay("KidneyTumorSeg could not start.", waitCursor=True):
            if self.logic.ensureDependencies(interactive=True):
                start()
        self.updateGUI()

    def onTimer(self):
        if self.controller is None or not self.controller.poll():
            self.timer.stop()
            if self.controller is not None and self.controller.bundle_to_remember():
                self.ui.bundlePathLineEdit.addCurrentPathToHistory()

    def updateGUI(self, caller=None, event=None):
        controller, ui = self.controller, self.ui
        if controller is None:
            self.showMissingDependencies()
            return
        if self._updating:
            return
        p = controller.parameters
        ui.installDependenciesButton.visible = False
        self._updating = True
        try:
            ui.inputVolumeSelector.setCurrentNode(p.input_volume)
            ui.cropRoiSelector.setCurrentNode(p.crop_roi)
            ui.outputSegmentationSelector.setCurrentNode(p.output_segmentation)
            ui.resultsTableSelector.setCurrentNode(p.results_table)
            ui.show3DButton.setSegmentationNode(p.output_segmentation)
            if ui.bundlePathLineEdit.currentPath != p.bundle_path:  # rewriting it would move the cursor
                ui.bundlePathLineEdit.currentPath = p.bundle_path
            ui.showSegmentationBoxCheckBox.checked = p.show_segmentation_box
            ui.showLandmarkBoxCheckBox.checked = p.show_landmark_box
            ui.showLandmarksCheckBox.checked = p.show_landmarks
            ui.showResult3DCheckBox.checked = p.show_3d
            ui.showUncertaintyCheckBox.checked = p.show_uncertainty
            ui.keepAllComponentsCheckBox.checked = p.keep_all_components
            ui.allowPartialCheckBox.checked = p.allow_partial
            ui.deviceComboBox.setCurrentText(p.device)
            ui.membersLineEdit.text = ",".join(p.members)
            ui.overlapSpinBox.value = p.overlap
            ui.minTumorPixelsSpinBox.value = p.min_tumor_pixels
        finally:
            self._updating = False
        state = controller.state.value
        ui.locateButton.text = "Cancel" if state == "locating" else "Locate"
        ui.segmentButton.text = "Cancel" if state == "segmenting" else "Segment"
        idle = not dependencies.installing()
        ui.locateButton.enabled = idle and (state == "locating" or controller.can_run)
        ui.segmentButton.enabled = idle and (state == "segmenting" or controller.can_run)
        for widget in (ui.inputsCollapsibleButton, ui.cropRoiSelector, ui.outputsCollapsibleButton, ui.advancedCollapsibleButton):
            widget.enabled = not controller.running
        ui.progressBar.visible = controller.running
        ui.progressBar.value = int(round(100 * controller.fraction))
        ui.statusLabel.text = controller.status()
        ui.decisionsLabel.text = "\n".join(controller.decisions)
        if controller.running and not self.timer.isActive():
            self.timer.start()

    def showMissingDependencies(self):
        ui = self.ui
        ui.installDependenciesButton.visible = True
        ui.installDependenciesButton.enabled = not dependencies.installing()
        ui.locateButton.enabled = ui.segmentButton.enabled = False
        ui.progressBar.visible = False
        ui.statusLabel.text = self.dependencyStatus.describe() if self.dependencyStatus is not None else ""


class KidneyTumorSegLogic(ScriptedLoadableModuleLogic):
    """The blocking API for the Python console and batch use; no pop-ups unless ``interactive``.

    ``options`` are :class:`KidneyTumorSegLib.controller.Parameters` fields: ``bundle_path``,
    ``device``, ``members``, ``overlap``, ``min_tumor_pixels``, ``keep_all_components``, ``allow_partial``, ``show_3d``,
    ``show_uncertainty``. After ``segment``, ``lastReview`` is the case's review: ``score`` (share of
    the labelled region where the models disagree), ``review`` (True: look at it), ``disputed_ml``.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastResult = None
        self.lastReview = None

    def command(self):
        from KidneyTumorSegLib.process import CliCommand

        return CliCommand(python=shutil.which("PythonSlicer") or sys.executable)

    def createController(self, parameterNode, confirm, onChange=None):
        from KidneyTumorSegLib.controller import Controller
        from KidneyTumorSegLib.process import runner_for

        command = self.command()
        return Controller(slicer.mrmlScene, parameterNode, runner_for(command), command, confirm=confirm, on_change=onChange)

    def dependencyStatus(self):
        """What is installed now (:class:`KidneyTumorSegLib.dependencies.DependencyStatus`)."""
        return dependencies.check(dependencies.SlicerPython())

    def ensureDependencies(self, interactive=False):
        """True when PyTorch and the packages of requirements.txt are installed. ``interactive``
        asks before installing each (False: the user declined); otherwise a missing one raises a
        RuntimeError saying how to install it. PyTorch's version is checked on every call."""
        return dependencies.ensure(dependencies.SlicerPython(), _askYesNo if interactive else None)

    def _run(self, start, volumeNode, overwrite=False, **changes):
        self.ensureDependencies(interactive=False)
        from KidneyTumorSegLib.controller import State

        controller = self.createController(None, confirm=lambda question: overwrite)
        try:
            controller.update(input_volume=volumeNode)
            controller.update(**changes)
            if not getattr(controller, start)():
                raise RuntimeError(controller.status())
            state = controller.wait(idle=slicer.app.processEvents)
            if state not in (State.LOCATED, State.DONE):
                raise RuntimeError(f"KidneyTumorSeg {start} {state.value}: {controller.error}")
            logging.info("KidneyTumorSeg: %s", controller.status())
            self.lastResult, self.lastReview = controller.parameters, controller.review
            return self.lastResult
        finally:
            controller.close()

    def locate(self, volumeNode, **options):
        """Stage 1; returns the parameters holding ``crop_roi``, ``segmentation_roi``,
        ``landmark_roi`` and ``landmarks``."""
        return self._run("locate", volumeNode, **options)

    def segment(self, volumeNode, roiNode=None, segmentationNode=None, tableNode=None, overwrite=False, **options):
        """Stage 2 inside ``roiNode`` (the whole cascade when None); returns the segmentation node,
        and keeps the case's review in ``lastReview`` (also in the node's ``KidneyTumorSeg.Review*``
        attributes).

        A new segmentation (and table) is created unless one is given; an existing one with
        segments is replaced only when ``overwrite``."""
        result = self._run("segment", volumeNode, overwrite=overwrite, crop_roi=roiNode,
                           output_segmentation=segmentationNode, results_table=tableNode, **options)
        return result.output_segmentation

    def segmentFolder(self, inputDir, outputDir, overwrite=False, **options):
        """Every case of ``inputDir`` to ``<case>.seg.nrrd``, ``.nii.gz`` and ``.json`` in ``outputDir``;
        a failing case is skipped with a warning, and RuntimeError when no case has a result."""
        self.ensureDependencies(interactive=False)
        from KidneyTumorSegLib.controller import Parameters
        from KidneyTumorSegLib.folder_segmentation import segment_folder
        from KidneyTumorSegLib.process import runner_for

        command = self.command()
        written = segment_folder(inputDir, outputDir, runner_for(command), command, Parameters(**options).run_options(), overwrite,
                                 idle=slicer.app.processEvents,
                                 on_progress=lambda fraction, case: logging.info("KidneyTumorSeg: %s done (%.0f %%)", case, 100 * fraction))
        return [str(path) for path in written]


def _askYesNo(question):
    return slicer.util.confirmYesNoDisplay(question, windowTitle=MODULE_NAME)


def forgetLibraryModules(modules=sys.modules):
    """Drop KidneyTumorSegLib and its submodules from ``modules``, so that Slicer's Reload reads
    edits under KidneyTumorSegLib/ too (it re-reads only this file)."""
    for name in [name for name in modules if name == LIBRARY or name.startswith(LIBRARY + ".")]:
        del modules[name]


class KidneyTumorSegTest(ScriptedLoadableModuleTest):
    """The whole flow on the sample case: Locate, drag the crop box, Segment, then a cancelled Segment."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_flow_on_sample()

    def test_flow_on_sample(self):
        if not os.path.isfile(SAMPLE):
            self.delayDisplay(f"Sample case not found ({SAMPLE}): skipped")
            return
        status = KidneyTumorSegLogic().dependencyStatus()
        if not status.ready:  # a clean build machine: the logic needs PyTorch and nibabel
            logging.warning("KidneyTumorSeg self-test: logic part skipped. %s", status.describe())
            return
        from KidneyTumorSegLib.mrml.roi import roi_ras_box, set_roi_box
        from KidneyTumorSegLib.mrml.scene import node_ids
        from KidneyTumorSegLib.locate_result import RasBox

        volume = slicer.util.loadVolume(SAMPLE)
        logic = KidneyTumorSegLogic()
        located = logic.locate(volume)
        self.assertIsNotNone(located.crop_roi)
        self.assertFalse(located.crop_roi.GetLocked())
        self.assertTrue(located.segmentation_roi is None or located.segmentation_roi.GetLocked())
        self.delayDisplay("Located")
        box = roi_ras_box(located.crop_roi)
        set_roi_box(located.crop_roi, RasBox(tuple(v - 5 for v in box.low), tuple(v + 5 for v in box.high)))
        segmentation = logic.segment(volume, located.crop_roi, show_3d=False)
        names = {segmentation.GetSegmentation().GetNthSegment(n).GetName() for n in range(segmentation.GetSegmentation().GetNumberOfSegments())}
        self.assertEqual(names, {"Kidney", "Tumor"})  # the disputed voxels have a node of their own
        self.assertEqual(logic.lastResult.review_segmentation.GetSegmentation().GetNthSegment(0).GetName(), "Review")
        self.assertIsNotNone(logic.lastResult.results_table)
        self.assertIsNotNone(logic.lastResult.uncertainty_volume)
        self.assertTrue(0.0 <= logic.lastReview["score"] <= 1.0)
        self.delayDisplay("Segmented")
        controller = logic.createController(None, confirm=lambda question: False)
        controller.update(input_volume=volume)
        before = node_ids(slicer.mrmlScene)
        self.assertTrue(controller.segment())
        controller.cancel()
        self.assertEqual(controller.state.value, "cancelled")
        self.assertEqual(node_ids(slicer.mrmlScene), before)
        controller.close()
        self.delayDisplay("Test passed")
