"""A result tells the truth about itself everywhere (issue 16, item 4): an empty result says so with
stage 1's decision (report, stderr, batch summary), a demo bundle's result is named a demo (report,
QA picture), and each box has one colour in the QA picture, the Slicer ROIs, the panel and the README.

The bundle's stage 1 marks nothing but finds landmarks, and its KT marks nothing: the result is empty."""
from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.bundle import MANIFEST_NAME
from KidneyTumorSegLib.cli.main import main
from KidneyTumorSegLib.colours import BOX_COLOURS, LANDMARK_COLOUR
from KidneyTumorSegLib.geometry import working_frame_for
from KidneyTumorSegLib.kidney_sides import side_findings
from KidneyTumorSegLib.measurements import measure
from KidneyTumorSegLib.networks.registry import ROLES
from KidneyTumorSegLib.report import DEMO_NOTICE, kidney_finding, result_notes
from synthetic_cases import image_in, phantom_ct, steered_bundle, working_affine, write_nifti

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
WORKING_SHAPE = (16, 64, 96)


@pytest.fixture(scope="module")
def empty(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("empty")
    image = image_in(phantom_ct(WORKING_SHAPE), "RAS")
    bundle = steered_bundle(root / "bundle", ("stage1", "KT"), {"stage1": -10.0, "KT": -10.0}, heat=1.0,
                            kidney_patch=(16, 64, 64))
    return {"ct": write_nifti(root / "ct.nii.gz", image.array, image.affine), "bundle": bundle}


def set_demo(bundle: Path, demo: bool) -> None:
    manifest = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))
    (bundle / MANIFEST_NAME).write_text(json.dumps({**manifest, "demo": demo}), encoding="utf-8")


def test_an_empty_result_warns_and_its_report_and_qa_picture_say_why(empty, tmp_path, caplog, monkeypatch):
    from KidneyTumorSegLib import qa

    titles = []
    draw = qa.save_qa_png
    monkeypatch.setattr(qa, "save_qa_png", lambda *args, **kwargs: (titles.append(kwargs.get("title")), draw(*args, **kwargs)))
    set_demo(empty["bundle"], True)
    out, report = tmp_path / "seg.nii.gz", tmp_path / "report.json"
    with caplog.at_level(logging.WARNING):
        code = main(["segment", str(empty["ct"]), "-o", str(out), "--report", str(report), "--qa", str(tmp_path / "qa.png"),
                     "--bundle", str(empty["bundle"]), "--allow-partial", "--device", "cpu", "--progress", "none"])
    assert code == 0
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["kidney_found"] is False and data["measurements"]["kidney_ml"]["total"] == 0
    assert data["stage1_decision"] == "stage 1 marked no kidney voxel, only landmarks: landmark box used"
    assert data["bundle"]["demo"] is True
    warning = next(r.getMessage() for r in caplog.records if "no kidney found" in r.getMessage())
    assert str(empty["ct"]) in warning and data["stage1_decision"] in warning
    partial = f"Made without {', '.join(data['bundle']['missing_roles'])} (a partial bundle)"
    assert titles == [f"No kidney found ({data['stage1_decision']}); {partial}; {DEMO_NOTICE}"]


def test_the_command_line_prints_the_warning_on_stderr_and_exits_0(empty, tmp_path):
    done = subprocess.run([sys.executable, "-m", "KidneyTumorSegLib.cli.main", "segment", str(empty["ct"]), "-o",
                           str(tmp_path / "seg.nii.gz"), "--bundle", str(empty["bundle"]), "--allow-partial", "--device", "cpu", "--progress", "none"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == ""
    warning = next(line for line in done.stderr.splitlines() if "no kidney found" in line)
    assert warning.startswith("WARNING: ") and "the result is empty (stage 1 marked no kidney voxel, only landmarks" in warning


def test_a_result_with_kidney_of_a_trained_bundle_carries_no_note(tmp_path, capsys, caplog):
    image = image_in(phantom_ct(WORKING_SHAPE), "RAS")
    bundle = steered_bundle(tmp_path / "bundle", tuple(ROLES), {"stage1": 10.0, "KT": 10.0}, heat=1.0, kidney_patch=(16, 64, 64))
    set_demo(bundle, False)
    ct = write_nifti(tmp_path / "ct.nii.gz", image.array, image.affine)
    report = tmp_path / "report.json"
    assert main(["segment", str(ct), "-o", str(tmp_path / "seg.nii.gz"), "--report", str(report), "--bundle", str(bundle),
                 "--device", "cpu", "--members", "KT", "--progress", "none"]) == 0
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["kidney_found"] is True and data["bundle"]["demo"] is False and result_notes(data) == []
    assert "no kidney found" not in capsys.readouterr().err + caplog.text


def test_batch_marks_the_empty_case_in_its_row_and_report(empty, tmp_path, caplog):
    set_demo(empty["bundle"], True)
    cases, results = tmp_path / "cases", tmp_path / "results"
    cases.mkdir()
    (cases / "empty_case.nii.gz").write_bytes(empty["ct"].read_bytes())
    with caplog.at_level(logging.WARNING):
        assert main(["batch", str(cases), str(results), "--bundle", str(empty["bundle"]), "--allow-partial", "--device", "cpu", "--progress", "none"]) == 0
    assert any(r.getMessage().startswith("empty_case: no kidney found") for r in caplog.records)
    row = next(csv.DictReader(open(results / "summary.csv", encoding="utf-8")))
    assert row["status"] == "ok" and row["kidney_found"] == "False"
    case_report = json.loads((results / "empty_case.json").read_text(encoding="utf-8"))
    assert case_report["kidney_found"] is False and case_report["bundle"]["demo"] is True
    assert "landmark box used" in case_report["stage1_decision"]


def test_kidney_finding_names_a_given_crop_and_counts_tumor_as_kidney():
    labels = np.zeros((40, 40, 40), np.uint8)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])

    def sides() -> dict:
        return side_findings(measure(labels, affine), None)

    assert kidney_finding(sides(), None, None) == {"kidney_found": False, "stage1_decision": "the crop box was given, not chosen by stage 1"}
    assert kidney_finding(sides(), None, False)["stage1_decision"].endswith("; stage 1 marked no kidney voxel in the image")
    labels[1, 1, 1] = 2
    assert kidney_finding(sides(), None, True)["kidney_found"] is False  # one voxel is no kidney (under 10 mL)
    labels[:25, :25, :25] = 2  # 15.6 mL of tumor on one side
    assert kidney_finding(sides(), None, True)["kidney_found"] is True


def test_each_box_has_one_colour_in_the_qa_picture(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.colors
    import matplotlib.image

    from KidneyTumorSegLib.boxes import Box
    from KidneyTumorSegLib.qa import TITLE_COLOUR, save_qa_png
    from KidneyTumorSegLib.stage1 import Landmark, Stage1Result

    shape = (20, 80, 80)
    frame = working_frame_for(shape, working_affine())
    seg, crop = Box((2, 10, 10), (17, 69, 69)), Box((6, 30, 30), (13, 49, 49))
    landmarks = seg  # the landmark box on the segmentation box: both must still show (line styles)

    def draw(title: str) -> np.ndarray:
        stage1 = Stage1Result(seg, landmarks, seg, None, crop, (Landmark("center", (10.0, 40.0, 40.0), 0.9),), ())
        path = tmp_path / "qa.png"
        save_qa_png(path, np.zeros(shape, np.float32), np.zeros(shape, np.uint8), crop, stage1, frame, title=title)
        return matplotlib.image.imread(path)[..., :3]

    def count(pixels: np.ndarray, rgb: tuple[float, float, float]) -> int:
        return int((np.abs(pixels.reshape(-1, 3) - np.array(rgb)).max(axis=1) < 0.04).sum())

    with_title, without = draw(DEMO_NOTICE), draw("")
    for colour in [*BOX_COLOURS.values(), LANDMARK_COLOUR]:
        assert count(with_title, colour.rgb) > 20, f"no {colour.name} in the QA picture"
    title_rgb = matplotlib.colors.to_rgb(TITLE_COLOUR)
    # The whole notice is drawn on top (about 2800 pixels of its colour; one word would give about 300).
    assert count(with_title[:40], title_rgb) > 1500 and count(without, title_rgb) == 0


def test_each_box_has_one_colour_in_slicer_the_panel_and_the_readme():
    ui = (REPO / "KidneyTumorSeg" / "Resources" / "UI" / "KidneyTumorSeg.ui").read_text(encoding="utf-8")
    assert f"Show the box around the kidney tissue found ({BOX_COLOURS['segmentation'].name})" in ui
    assert f"Show the box of the kidney landmarks ({BOX_COLOURS['landmarks'].name})" in ui
    assert f"Crop box ({BOX_COLOURS['crop'].name})" in ui and f"Show landmarks ({LANDMARK_COLOUR.name})" in ui
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    caption = re.search(r"!\[QA picture[^]]*\]", readme).group(0)
    for words in (f"segmentation box ({BOX_COLOURS['segmentation'].name})", f"landmark box ({BOX_COLOURS['landmarks'].name})",
                  f"crop ({BOX_COLOURS['crop'].name})", f"landmarks ({LANDMARK_COLOUR.name})"):
        assert words in caption
    module = (REPO / "KidneyTumorSeg" / "KidneyTumorSeg.py").read_text(encoding="utf-8")
    assert all(f'BOX_COLOURS["{name}"].name' in module for name in BOX_COLOURS) and "LANDMARK_COLOUR.name" in module
    pytest.importorskip("slicer")
    from KidneyTumorSegLib.mrml.landmarks import show_landmarks
    from KidneyTumorSegLib.mrml.roi import CROP_BOX, LANDMARK_BOX, SEGMENTATION_BOX

    assert [style.color for style in (SEGMENTATION_BOX, LANDMARK_BOX, CROP_BOX)] == [c.rgb for c in BOX_COLOURS.values()]
    assert "LANDMARK_COLOUR.rgb" in Path(show_landmarks.__code__.co_filename).read_text(encoding="utf-8")


def test_qa_titles_carry_the_input_files_slice_numbers(tmp_path, monkeypatch):
    """An RAS input (the working frame's axes reversed and reordered): the axial panel names the
    input's k index of its slice and the coronal its j index, as a viewer of the input file
    numbers them; the working frame's slice number is there in small."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    from KidneyTumorSegLib.boxes import Box
    from KidneyTumorSegLib.qa import save_qa_png

    image = image_in(phantom_ct(WORKING_SHAPE), "RAS")  # input [i, j, k] = R, A, S; working [z, y, x] = I, P, L
    frame = working_frame_for(image.array.shape, image.affine)
    labels = np.zeros(frame.shape, np.uint8)
    labels[3:6, 20:30, 10:20] = 1  # the picture centres on the labels: working voxel (4, 24, 14) (medians, truncated)
    titles, texts = [], []
    monkeypatch.setattr(Axes, "set_title", lambda self, text, *a, **k: titles.append(text))
    draw_text = Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, x, y, text, *a, **k: (texts.append(text), draw_text(self, x, y, text, *a, **k)))
    save_qa_png(tmp_path / "qa.png", np.zeros(frame.shape, np.float32), labels, Box.full(frame.shape), None, frame,
                uncertainty_zyx=np.zeros(frame.shape, np.float32))
    centre = np.linalg.inv(image.affine) @ frame.affine @ np.array([4.0, 24.0, 14.0, 1.0])
    z, y = frame.shape[0] - 1, frame.shape[1] - 1
    assert titles[0] == f"axial, input slice k = {int(np.rint(centre[2]))} of 0-{image.array.shape[2] - 1}"
    assert int(np.rint(centre[2])) == z - 4  # S is the reverse of I
    assert titles[1] == f"coronal, input slice j = {int(np.rint(centre[1]))} of 0-{image.array.shape[1] - 1}"
    assert int(np.rint(centre[1])) == y - 24  # A is the reverse of P
    assert titles[2] == f"uncertainty, input slice k = {z - 4} of 0-{z}"
    assert texts[:2] == ["working frame slice 4", "working frame slice 24"]
