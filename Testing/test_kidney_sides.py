"""What a result says per kidney, on a real KiTS19 mask (case_00015) with stand-in networks: a
kidney removed from the scan, and a kidney stage 1 saw that stage 2 kept nothing of."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.bundle import load_bundle
from KidneyTumorSegLib.cascade import STAGE2_ORDER, Cascade, InferenceOptions
from KidneyTumorSegLib.cli.segment import segmentation_report
from KidneyTumorSegLib.imageio import Image
from KidneyTumorSegLib.kidney_sides import per_side_lines, side_findings, side_warnings
from KidneyTumorSegLib.report import result_notes
from synthetic_cases import ThresholdNet, normalized, steered_bundle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def kidneys(real_kits_crops) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """case_00015's two kidneys (bool masks on its own grid), its affine, and the side of the first
    (the larger) as the report names it: the patient's left has the lower RAS x."""
    image = real_kits_crops.get("case_00015")
    if image is None:
        pytest.skip("case_00015 is not among the real KiTS19 crops")
    components, _ = ndimage.label(np.asarray(image.dataobj) > 0)
    first, second = np.argsort(np.bincount(components.ravel())[1:])[::-1][:2] + 1
    x = [(image.affine @ np.r_[ndimage.center_of_mass(components == c), 1.0])[0] for c in (first, second)]
    return components == first, components == second, image.affine, "left" if x[0] < x[1] else "right"


def _report(ct: np.ndarray, affine: np.ndarray, kt: ThresholdNet, tmp_path: Path) -> dict:
    """The report of the cascade with stand-ins: stage 1 marks over 140 HU, KT what ``kt`` marks."""
    bundle = load_bundle(steered_bundle(tmp_path / "bundle", tuple(STAGE2_ORDER) + ("stage1",), {}, kidney_patch=(16, 64, 64)))
    networks = {**bundle.networks, "stage1": ThresholdNet(normalized(140), channels=5, heat=0.0), "KT": kt}
    cascade = Cascade(dataclasses.replace(bundle, networks=networks), InferenceOptions(device="cpu", members=("KT",)))
    case = cascade.prepare(Image(ct, affine))
    result = cascade.segment(case.image, crop=Box.full(case.frame.shape), case=case)
    return segmentation_report(result, case, bundle, 1.0, tmp_path / "case_00015.nii.gz")


def test_a_removed_kidney_is_said_per_side(kidneys, tmp_path: Path) -> None:
    present, removed, affine, side = kidneys
    other = "right" if side == "left" else "left"
    report = _report(np.where(present, 150, 0).astype(np.int16), affine, ThresholdNet(normalized(120)), tmp_path)
    found = report["kidneys"]
    assert found[side]["kidney_found"] is True and found[other]["kidney_found"] is False
    assert found[side]["stage1_saw_kidney"] is True and found[other]["stage1_saw_kidney"] is False
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    assert found[side]["kidney_ml"] == pytest.approx(present.sum() * voxel_ml, rel=0.05) and found[other]["kidney_ml"] == 0
    assert report["kidney_found"] is True  # one kidney is found ...
    assert report["warnings"] == [f"no {other} kidney found (a missing kidney, or one outside the crop)"]  # ... the other is said
    assert f"No {other} kidney found" in " ".join(result_notes(report))


def test_a_kidney_stage_1_saw_and_stage_2_dropped_is_a_warning(kidneys, tmp_path: Path) -> None:
    """KT marks 120-148 HU: the first kidney (145 HU) it sees, the second (160 HU) only stage 1 sees."""
    first, second, affine, side = kidneys
    other = "right" if side == "left" else "left"
    ct = np.where(first, 145, np.where(second, 160, 0)).astype(np.int16)
    report = _report(ct, affine, ThresholdNet(normalized(120), normalized(148)), tmp_path)
    assert report["kidneys"][other] | {"kidney_ml": 0.0, "tumor_ml": 0.0} == {
        "kidney_found": False, "kidney_ml": 0.0, "tumor_ml": 0.0, "stage1_saw_kidney": True}
    assert report["kidneys"][other]["kidney_ml"] < 10.0
    assert report["warnings"] == [f"no {other} kidney found although stage 1 saw one there: stage 2 kept nothing of it "
                                  "(a missing kidney, or one outside the crop)"]


def test_a_far_smaller_kidney_is_a_warning() -> None:
    measurements = {"kidney_ml": {"left": 150.0, "right": 40.0}, "tumor_ml": {"left": 0.0, "right": 5.0}}
    sides = side_findings(measurements, {"left": True, "right": True})
    assert [s["kidney_found"] for s in sides.values()] == [True, True]
    assert side_warnings(sides) == ["the right kidney (45 mL with tumor) is far smaller than the left (150 mL): "
                                    "part of it may be missing"]
    assert per_side_lines(sides) == ["left kidney: found, 150 mL, tumor 0 mL", "right kidney: found, 40 mL, tumor 5 mL"]
    measurements["kidney_ml"]["right"] = 60.0  # 65 mL: above a third of 150
    assert side_warnings(side_findings(measurements, None)) == []
