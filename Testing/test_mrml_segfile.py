"""`.seg.nrrd` files written and read through real MRML (slicer-core), and the command line's use of them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from KidneyTumorSegLib.imageio import OutputExistsError, read_image  # noqa: E402
from KidneyTumorSegLib.mrml.segmentation_file import expected_segments, read_segmentation_file, write_segmentation_file  # noqa: E402
from test_controller_process import small_ct, untrained_bundle  # noqa: E402,F401  (shared fixtures)

REPO = Path(__file__).resolve().parents[1]
OBLIQUE = np.array([[0.7, -0.3, 0.0, -20.0], [0.25, 0.75, 0.4, 10.0], [0.1, -0.3, 2.9, 55.0], [0, 0, 0, 1.0]])


@pytest.fixture(scope="module")
def real_labels(real_kits_crops):
    image = next(iter(real_kits_crops.values()))
    return np.asarray(image.dataobj, dtype=np.uint8), image.affine


def test_written_file_reads_back_with_kidney_tumor_terms_and_voxels(real_labels, tmp_path):
    labels, affine = real_labels
    path = write_segmentation_file(labels, affine, tmp_path / "case.seg.nrrd")
    read = read_segmentation_file(path)
    assert np.array_equal(read.labels, labels)
    assert np.allclose(read.affine, affine, atol=1e-4)
    assert _same_segments(read.segments)
    assert "SCT^64033007^Kidney" in read.segments["Kidney"].terminology
    assert "SCT^108369006^Neoplasm" in read.segments["Tumor"].terminology
    # DICOM SEG export reads these tags; without them it calls the segments MANUAL
    assert {info.algorithm[0] for info in read.segments.values()} == {"AUTOMATIC"}
    assert all(0 < len(info.algorithm[1]) <= 64 for info in read.segments.values())  # a DICOM LO value
    assert [p.name for p in tmp_path.iterdir()] == ["case.seg.nrrd"]  # no temporary left behind


def _same_segments(segments) -> bool:
    expected = expected_segments()
    assert segments.keys() == expected.keys()
    for name, info in segments.items():
        assert (info.label, info.terminology) == (expected[name].label, expected[name].terminology)
        assert info.algorithm == expected[name].algorithm
        assert np.allclose(info.color, expected[name].color, atol=1 / 255)
    return True


def test_oblique_grid_and_missing_tumor_survive_the_round_trip(tmp_path):
    labels = np.zeros((9, 8, 7), np.uint8)
    labels[2:6, 3:7, 1:5] = 1
    read = read_segmentation_file(write_segmentation_file(labels, OBLIQUE, tmp_path / "oblique.seg.nrrd"))
    assert np.array_equal(read.labels, labels) and np.allclose(read.affine, OBLIQUE, atol=1e-4)
    assert set(read.segments) == {"Kidney", "Tumor"}  # the empty tumor segment is kept


def test_an_existing_file_is_refused_unless_overwrite(tmp_path):
    labels = np.ones((3, 3, 3), np.uint8)
    path = write_segmentation_file(labels, np.eye(4), tmp_path / "a.seg.nrrd")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        write_segmentation_file(labels * 2, np.eye(4), path)
    assert path.read_bytes() == before
    write_segmentation_file(labels * 2, np.eye(4), path, overwrite=True)
    assert read_segmentation_file(path).labels.max() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.seg.nrrd"]


@pytest.mark.slow
def test_cli_seg_nrrd_equals_its_nifti_output(small_ct, untrained_bundle, tmp_path):
    """Done-when: `segment X -o Y.seg.nrrd` is read by real MRML with Kidney and Tumor, their SNOMED CT
    terms, and the voxels of the NIfTI output of the same case."""
    outputs = {}
    for name in ("labels.nii.gz", "labels.seg.nrrd"):
        outputs[name] = tmp_path / name
        run = subprocess.run(
            [sys.executable, "-m", "KidneyTumorSegLib.cli.main", "--quiet", "segment", str(small_ct), "-o", str(outputs[name]),
             "--bundle", str(untrained_bundle), "--allow-partial", "--box", "full", "--members", "KT", "--progress", "none"],
            cwd=REPO / "KidneyTumorSeg", capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    nifti = read_image(outputs["labels.nii.gz"])
    segmentation = read_segmentation_file(outputs["labels.seg.nrrd"])
    assert np.array_equal(segmentation.labels, nifti.array)
    assert np.allclose(segmentation.affine, nib.load(str(small_ct)).affine, atol=1e-4)
    assert _same_segments(segmentation.segments)
