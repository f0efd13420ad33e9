"""KidneyTumorSeg: kidney and kidney-tumor segmentation in abdominal CT, as a 3D Slicer module.

Thin by design: the panel binds widgets to :class:`KidneyTumorSegLib.controller.Controller`, which
holds every decision and is tested outside Slicer; inference runs out of process.
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

MODULE_NAME = "KidneyTumorSeg"
MIN_TORCH_VERSION = "2.4"
MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = os.path.join(MODULE_DIR, "Resources", "requirements.txt")
SAMPLE = os.path.join(MODULE_DIR, "Resources", "Sample", "case_sample", "imaging.nii.gz")


class KidneyTumorSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Kidney Tumor Seg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["KidneyTumorSeg contributors"]
        self.parent.helpText = """
Segments the kidneys and kidney tumors of an abdominal CT with the two-stage cascade of Zhang et al.
(KiTS19): <b>Locate</b> runs stage 1 and shows the segmentation box (orange), the landmark box
(violet), the crop box (yellow, editable) and the landmarks; drag the crop box if needed, then
<b>Segment</b> runs the stage-2 ensemble inside it (or the whole cascade when nothing was located).
The result is a segmentation with segments Kidney and Tumor (SNOMED CT terms, linked to the CT for
DICOM SEG export) and a table of volumes and tumor sizes.
<p><b>Warning:</b> the model bundle shipped with the module is a <i>demo</i> trained on synthetic
phantoms. It is not a clinical model and must not be used for diagnosis; choose your own trained
bundle under Inputs.</p>
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
        ui = self.ui
        for selector, name in ((ui.inputVolumeSelector, "input_volume"), (ui.cropRoiSelector, "crop_roi"),
                               (ui.outputSegmentationSelector, "output_segmentation"), (ui.resultsTableSelector, "results_table")):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node, name=name: self.setParameter(**{name: node}))
        for box, name in ((ui.showSegmentationBoxCheckBox, "show_segmentation_box"), (ui.showLandmarkBoxCheckBox, "show_landmark_box"),
                          (ui.showLandmarksCheckBox, "show_landmarks"), (ui.showResult3DCheckBox, "show_3d"),
                          (ui.keepAllComponentsCheckBox, "keep_all_components")):
            box.connect("toggled(bool)", lambda checked, name=name: self.setParameter(**{name: checked}))
        ui.bundlePathLineEdit.connect("currentPathChanged(QString)", lambda path: self.setParameter(bundle_path=path))
        ui.deviceComboBox.connect("currentTextChanged(QString)", lambda text: self.setParameter(device=text))
        ui.membersLineEdit.connect("editingFinished()", self.onMembersEdited)
        ui.overlapSpinBox.connect("valueChanged(double)", lambda value: self.setParameter(overlap=value))
        ui.minTumorPixelsSpinBox.connect("valueChanged(int)", lambda value: self.setParameter(min_tumor_pixels=value))
        ui.locateButton.connect("clicked(bool)", self.onLocateButton)
        ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.initializeController()

    def cleanup(self):
        self.removeObservers()
        self.timer.stop()
        if self.controller is not None:
            self.controller.close()

    def enter(self):
        if self.controller is None:
            self.initializeController()

    def onSceneStartClose(self, caller, event):
        if self.controller is not None:
            self.removeObserver(self.controller.parameter_node, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.controller.close()
            self.controller = None
        self.timer.stop()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeController()

    def initializeController(self):
        parameterNode = self.logic.getParameterNode()
        self.controller = self.logic.createController(parameterNode, confirm=self.confirm, onChange=self.updateGUI)
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

    def confirm(self, question):
        return slicer.util.confirmYesNoDisplay(question, windowTitle="KidneyTumorSeg")

    def onLocateButton(self):
        self.startOrCancel(self.controller.locate, "locating")

    def onSegmentButton(self):
        self.startOrCancel(self.controller.segment, "segmenting")

    def startOrCancel(self, start, runningStateName):
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

    def updateGUI(self, caller=None, event=None):
        controller = self.controller
        if controller is None or self._updating:
            return
        p, ui = controller.parameters, self.ui
        self._updating = True
        try:
            ui.inputVolumeSelector.setCurrentNode(p.input_volume)
            ui.cropRoiSelector.setCurrentNode(p.crop_roi)
            ui.outputSegmentationSelector.setCurrentNode(p.output_segmentation)
            ui.resultsTableSelector.setCurrentNode(p.results_table)
            ui.show3DButton.setSegmentationNode(p.output_segmentation)
            ui.bundlePathLineEdit.currentPath = p.bundle_path
            ui.showSegmentationBoxCheckBox.checked = p.show_segmentation_box
            ui.showLandmarkBoxCheckBox.checked = p.show_landmark_box
            ui.showLandmarksCheckBox.checked = p.show_landmarks
            ui.showResult3DCheckBox.checked = p.show_3d
            ui.keepAllComponentsCheckBox.checked = p.keep_all_components
            ui.deviceComboBox.setCurrentText(p.device)
            ui.membersLineEdit.text = ",".join(p.members)
            ui.overlapSpinBox.value = p.overlap
            ui.minTumorPixelsSpinBox.value = p.min_tumor_pixels
        finally:
            self._updating = False
        state = controller.state.value
        ui.locateButton.text = "Cancel" if state == "locating" else "Locate"
        ui.segmentButton.text = "Cancel" if state == "segmenting" else "Segment"
        ui.locateButton.enabled = state == "locating" or controller.can_run
        ui.segmentButton.enabled = state == "segmenting" or controller.can_run
        for widget in (ui.inputsCollapsibleButton, ui.cropRoiSelector, ui.outputsCollapsibleButton, ui.advancedCollapsibleButton):
            widget.enabled = not controller.running
        ui.progressBar.visible = controller.running
        ui.progressBar.value = int(round(100 * controller.fraction))
        ui.statusLabel.text = controller.status()
        ui.decisionsLabel.text = "\n".join(controller.decisions)
        if controller.running and not self.timer.isActive():
            self.timer.start()


class KidneyTumorSegLogic(ScriptedLoadableModuleLogic):
    """The blocking API for the Python console and batch use; no pop-ups unless ``interactive``.

    ``options`` are :class:`KidneyTumorSegLib.controller.Parameters` fields: ``bundle_path``,
    ``device``, ``members``, ``overlap``, ``min_tumor_pixels``, ``keep_all_components``, ``show_3d``.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastResult = None

    def command(self):
        from KidneyTumorSegLib.process import CliCommand

        return CliCommand(python=shutil.which("PythonSlicer") or sys.executable)

    def createController(self, parameterNode, confirm, onChange=None):
        from KidneyTumorSegLib.controller import Controller
        from KidneyTumorSegLib.process import runner_for

        command = self.command()
        return Controller(slicer.mrmlScene, parameterNode, runner_for(command), command, confirm=confirm, on_change=onChange)

    def ensureDependencies(self, interactive=False):
        """PyTorch through the PyTorch extension, the rest from requirements.txt, installed only with
        the user's consent (``interactive``); otherwise raise with the command that installs them."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError("KidneyTumorSeg needs the PyTorch extension: install it from the Extensions Manager.")
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if not interactive:
                raise RuntimeError("PyTorch is not installed: run the module once interactively, or see docs/slicer_console.md")
            if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=f">={MIN_TORCH_VERSION}") is None:
                return False
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None:
            requirements = packaging.load_requirements(REQUIREMENTS)
            if packaging.pip_check(requirements):
                return True
            if not interactive:
                raise RuntimeError(f"missing Python packages: PythonSlicer -m pip install -r {REQUIREMENTS}")
            packaging.pip_ensure(requirements, requester=MODULE_NAME)
            return packaging.pip_check(requirements)
        missing = [name for name in ("nibabel", "scipy") if not _importable(name)]
        if missing and (not interactive or not slicer.util.confirmOkCancelDisplay(
                f"KidneyTumorSeg needs these Python packages: {', '.join(missing)}. Install them now?")):
            raise RuntimeError(f"missing Python packages {missing}: PythonSlicer -m pip install -r {REQUIREMENTS}")
        if missing:
            slicer.util.pip_install(f"-r {REQUIREMENTS}")
        return True

    def _run(self, start, volumeNode, overwrite=False, **changes):
        from KidneyTumorSegLib.controller import State

        self.ensureDependencies(interactive=False)
        controller = self.createController(None, confirm=lambda question: overwrite)
        try:
            controller.update(input_volume=volumeNode)
            controller.update(**changes)
            if not getattr(controller, start)():
                raise RuntimeError(controller.status())
            state = controller.wait(idle=slicer.app.processEvents)
            if state not in (State.LOCATED, State.DONE):
                raise RuntimeError(f"KidneyTumorSeg {start} {state.value}: {controller.error}")
            self.lastResult = controller.parameters
            return self.lastResult
        finally:
            controller.close()

    def locate(self, volumeNode, **options):
        """Stage 1; returns the parameters holding ``crop_roi``, ``segmentation_roi``,
        ``landmark_roi`` and ``landmarks``."""
        return self._run("locate", volumeNode, **options)

    def segment(self, volumeNode, roiNode=None, segmentationNode=None, tableNode=None, overwrite=False, **options):
        """Stage 2 inside ``roiNode`` (the whole cascade when None); returns the segmentation node.

        A new segmentation (and table) is created unless one is given; an existing one with
        segments is replaced only when ``overwrite``."""
        result = self._run("segment", volumeNode, overwrite=overwrite, crop_roi=roiNode,
                           output_segmentation=segmentationNode, results_table=tableNode, **options)
        return result.output_segmentation

    def segmentFolder(self, inputDir, outputDir, overwrite=False, **options):
        """Every case of ``inputDir`` to ``<case>.seg.nrrd``, ``.nii.gz`` and ``.json`` in ``outputDir``."""
        from KidneyTumorSegLib.controller import Parameters
        from KidneyTumorSegLib.folder_segmentation import segment_folder
        from KidneyTumorSegLib.process import runner_for

        self.ensureDependencies(interactive=False)
        command = self.command()
        written = segment_folder(inputDir, outputDir, runner_for(command), command, Parameters(**options).run_options(), overwrite,
                                 idle=slicer.app.processEvents,
                                 on_progress=lambda fraction, case: logging.info("KidneyTumorSeg: %s done (%.0f %%)", case, 100 * fraction))
        return [str(path) for path in written]


def _importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


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
        self.assertEqual(names, {"Kidney", "Tumor"})
        self.assertIsNotNone(logic.lastResult.results_table)
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
