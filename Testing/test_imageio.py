"""Tests of imageio: NIfTI and NRRD reading, refusals with one-line messages, atomic label-map writing."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from KidneyTumorSegLib import fast_gzip
from KidneyTumorSegLib.imageio import (
    Image,
    ImageReadError,
    OutputExistsError,
    atomic_output,
    fortran_order,
    image_suffix,
    read_image,
    write_label_map,
)

# A KiTS19-like I,P,L affine with an origin, and an oblique one.
KITS_AFFINE = np.array([[0.0, 0.0, -0.8, 12.5], [0.0, -0.8, 0.0, -30.0], [-2.5, 0.0, 0.0, 40.0], [0, 0, 0, 1]])
_C, _S = np.cos(np.radians(20)), np.sin(np.radians(20))
OBLIQUE_AFFINE = np.array([[_C, -_S, 0, 1.0], [_S, _C, 0, 2.0], [0, 0, 1, 3.0], [0, 0, 0, 1]]) @ np.diag([1.5, 0.7, 2.0, 1.0])


def _labels(shape: tuple[int, ...] = (5, 6, 7)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, size=shape, dtype=np.uint8)


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray = KITS_AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _no_part_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".part" in p.name]


def _assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


# ---------------------------------------------------------------- reading NIfTI


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_array_affine_and_integer_dtype(tmp_path: Path, suffix: str) -> None:
    array = (_labels().astype(np.int16) - 1) * 700  # -700, 0, 700
    path = _save_nifti(tmp_path / f"ct{suffix}", array)
    image = read_image(path)
    assert image.array.dtype == np.int16
    np.testing.assert_array_equal(image.array, array)
    np.testing.assert_allclose(image.affine, KITS_AFFINE, atol=1e-6)
    assert image.affine.dtype == np.float64
    assert image.spacing == pytest.approx((2.5, 0.8, 0.8))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_unscaled_integer_types_are_kept(tmp_path: Path, dtype: type) -> None:
    path = _save_nifti(tmp_path / "labels.nii.gz", _labels().astype(dtype))
    assert read_image(path).array.dtype == dtype


def test_scaled_integer_data_becomes_float32(tmp_path: Path) -> None:
    stored = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    image = nib.Nifti1Image(stored, KITS_AFFINE)
    image.header.set_slope_inter(0.5, -1024.0)
    nib.save(image, str(tmp_path / "scaled.nii.gz"))
    read = read_image(tmp_path / "scaled.nii.gz")
    assert read.array.dtype == np.float32
    np.testing.assert_allclose(read.array, stored * 0.5 - 1024.0)


def test_float64_data_becomes_float32_and_dtype_can_be_forced(tmp_path: Path) -> None:
    path = _save_nifti(tmp_path / "f.nii.gz", np.linspace(-1, 1, 60).reshape(3, 4, 5))
    assert read_image(path).array.dtype == np.float32
    labels_path = _save_nifti(tmp_path / "l.nii.gz", _labels())
    forced = read_image(labels_path, dtype=np.float32)
    assert forced.array.dtype == np.float32
    np.testing.assert_array_equal(forced.array, _labels())


def test_real_ct_stays_int16(example_ct_path: Path) -> None:
    image = read_image(example_ct_path)
    assert image.array.dtype == np.int16
    assert image.array.shape == (122, 101, 30)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert image.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert image.array.min() < -500 and image.array.max() > 500  # HU, not rescaled


def test_4d_with_singleton_last_axis_is_squeezed(tmp_path: Path) -> None:
    array = _labels((4, 5, 6))
    path = _save_nifti(tmp_path / "four.nii.gz", array[..., None])
    image = read_image(path)
    assert image.array.shape == (4, 5, 6)
    np.testing.assert_array_equal(image.array, array)


def test_nrrd_4d_with_singleton_last_axis_is_squeezed(tmp_path: Path) -> None:
    array = _labels((4, 5, 6))
    directions = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [np.nan] * 3])
    header = {"space": "left-posterior-superior", "space directions": directions,
              "kinds": ["domain", "domain", "domain", "list"]}
    nrrd.write(str(tmp_path / "four.nrrd"), array[..., None], header, index_order="F")
    image = read_image(tmp_path / "four.nrrd")
    np.testing.assert_array_equal(image.array, array)
    np.testing.assert_allclose(image.affine, np.diag([-1.0, -2.0, 3.0, 1.0]))


@pytest.mark.parametrize("shape, fragment", [((4, 5), "2 dimensions"), ((4, 5, 6, 2), "4 dimensions")])
def test_nifti_not_3d_is_refused_in_one_line(tmp_path: Path, shape: tuple[int, ...], fragment: str) -> None:
    path = _save_nifti(tmp_path / "bad.nii.gz", np.zeros(shape, np.uint8))
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    _assert_one_line(error, "bad.nii.gz", "expected a 3D image", fragment)


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 6, 2)])
def test_nrrd_not_3d_is_refused_in_one_line(tmp_path: Path, shape: tuple[int, ...]) -> None:
    directions = np.eye(len(shape), 3) if len(shape) == 2 else np.vstack([np.eye(3), [np.nan] * 3])
    header = {"space": "left-posterior-superior", "space directions": directions}
    nrrd.write(str(tmp_path / "bad.nrrd"), np.zeros(shape, np.uint8), header, index_order="F")
    with pytest.raises(ImageReadError) as error:
        read_image(tmp_path / "bad.nrrd")
    _assert_one_line(error, "bad.nrrd", "not a 3D volume")


def test_text_file_named_nii_gz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image\nsecond line\n")
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    _assert_one_line(error, "notes.nii.gz", "cannot read image")


def test_truncated_gzip_is_refused(tmp_path: Path) -> None:
    path = _save_nifti(tmp_path / "whole.nii.gz", np.random.default_rng(1).integers(0, 1000, (20, 20, 20)).astype(np.int16))
    data = path.read_bytes()
    assert gzip.decompress(data)  # the intact file is valid gzip
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as error:
        read_image(truncated)
    _assert_one_line(error, "truncated.nii.gz", "cannot read image")


def test_missing_file_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError) as error:
        read_image(tmp_path / "absent.nii.gz")
    _assert_one_line(error, "absent.nii.gz", "no such file")
    with pytest.raises(ImageReadError):
        read_image(tmp_path)


@pytest.mark.parametrize("name", ["image.mha", "image.dcm", "image", "image.nii.bz2"])
def test_unsupported_suffix_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\0" * 400)
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    _assert_one_line(error, name, "unsupported file type")


def test_degenerate_transform_is_refused(tmp_path: Path) -> None:
    header = {"space": "left-posterior-superior", "space directions": np.diag([1.0, 1.0, 0.0])}
    nrrd.write(str(tmp_path / "flat.nrrd"), _labels(), header, index_order="F")
    with pytest.raises(ImageReadError) as error:
        read_image(tmp_path / "flat.nrrd")
    _assert_one_line(error, "flat.nrrd", "voxel-to-world transform is invalid")


def test_image_suffix_is_case_insensitive() -> None:
    assert image_suffix("a/b/CASE.NII.GZ") == ".nii.gz"
    assert image_suffix("x.nii") == ".nii"
    assert image_suffix("x.nrrd") == ".nrrd"
    assert image_suffix("x.nhdr") == ".nhdr"
    assert image_suffix("x.gz") == ""


# ---------------------------------------------------------------- NRRD


@pytest.mark.parametrize("affine", [KITS_AFFINE, OBLIQUE_AFFINE], ids=["IPL", "oblique"])
def test_nrrd_lps_header_gives_the_nifti_ras_affine(tmp_path: Path, affine: np.ndarray) -> None:
    array = _labels()
    _save_nifti(tmp_path / "same.nii.gz", array, affine)
    lps = np.array([-1.0, -1.0, 1.0])
    header = {"space": "left-posterior-superior", "space directions": affine[:3, :3].T * lps,
              "space origin": affine[:3, 3] * lps}
    nrrd.write(str(tmp_path / "same.nrrd"), array, header, index_order="F")
    from_nrrd, from_nifti = read_image(tmp_path / "same.nrrd"), read_image(tmp_path / "same.nii.gz")
    np.testing.assert_array_equal(from_nrrd.array, from_nifti.array)
    np.testing.assert_allclose(from_nrrd.affine, from_nifti.affine, atol=1e-5)
    np.testing.assert_allclose(from_nrrd.affine, affine, atol=1e-12)


def test_nrrd_ras_space_header(tmp_path: Path) -> None:
    header = {"space": "right-anterior-superior", "space directions": np.diag([1.0, 2.0, 3.0]),
              "space origin": np.array([4.0, 5.0, 6.0])}
    nrrd.write(str(tmp_path / "ras.nrrd"), _labels(), header, index_order="F")
    expected = np.diag([1.0, 2.0, 3.0, 1.0])
    expected[:3, 3] = [4, 5, 6]
    np.testing.assert_allclose(read_image(tmp_path / "ras.nrrd").affine, expected)


def test_nrrd_unknown_space_is_refused(tmp_path: Path) -> None:
    header = {"space": "scanner-xyz", "space directions": np.eye(3)}
    nrrd.write(str(tmp_path / "xyz.nrrd"), _labels(), header, index_order="F")
    with pytest.raises(ImageReadError) as error:
        read_image(tmp_path / "xyz.nrrd")
    _assert_one_line(error, "unsupported NRRD space")


@pytest.mark.parametrize("name", ["out.nrrd", "out.nii.gz", "out.nii"])
@pytest.mark.parametrize("affine", [KITS_AFFINE, OBLIQUE_AFFINE], ids=["IPL", "oblique"])
def test_write_label_map_then_read_equals(tmp_path: Path, name: str, affine: np.ndarray) -> None:
    labels = _labels()
    written = write_label_map(tmp_path / name, labels, affine)
    assert written == tmp_path / name
    image = read_image(written)
    assert image.array.dtype == np.uint8
    np.testing.assert_array_equal(image.array, labels)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    assert _no_part_files(tmp_path)


@pytest.mark.parametrize("view", ["C", "F", "flipped", "permuted"])
def test_fortran_order_keeps_every_voxel(view: str) -> None:
    """Tiles of 16 over a shape that is no multiple of 16, from any memory layout."""
    array = np.random.default_rng(1).integers(0, 255, size=(37, 50, 21)).astype(np.uint8)
    array = {"C": array, "F": np.asfortranarray(array), "flipped": array[::-1, :, ::-2],
             "permuted": array.transpose(1, 2, 0)}[view]
    ordered = fortran_order(array)
    assert ordered.flags.f_contiguous and ordered.dtype == array.dtype
    np.testing.assert_array_equal(ordered, array)


@pytest.mark.parametrize("name", ["out.nrrd", "out.nii.gz"])
def test_a_label_map_larger_than_the_transpose_tiles_reads_back_equal(tmp_path: Path, name: str) -> None:
    labels = np.random.default_rng(2).integers(0, 3, size=(40, 33, 70)).astype(np.uint8)
    np.testing.assert_array_equal(read_image(write_label_map(tmp_path / name, labels, KITS_AFFINE)).array, labels)


# ---------------------------------------------------------------- accelerated gzip (python-isal)


def test_igzip_reads_what_nibabel_wrote(tmp_path: Path) -> None:
    pytest.importorskip("isal")
    assert fast_gzip.available()
    ct = np.random.default_rng(3).integers(-1024, 2000, size=(30, 41, 52)).astype(np.int16)
    path = _save_nifti(tmp_path / "ct.nii.gz", ct)
    np.testing.assert_array_equal(read_image(path).array, np.asarray(nib.load(str(path)).dataobj))
    two = tmp_path / "ct2.nii.gz"
    nib.save(nib.Nifti2Image(ct, KITS_AFFINE), str(two))
    np.testing.assert_array_equal(read_image(two).array, ct)


def test_label_maps_written_through_igzip_open_with_python_gzip_and_nibabel(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard gzip: Python's zlib-based gzip and nibabel's own reader open it."""
    pytest.importorskip("isal")

    def no_plain_save(*args, **kwargs):
        raise AssertionError("the igzip path should write .nii.gz")

    monkeypatch.setattr(nib, "save", no_plain_save)
    labels = np.random.default_rng(4).integers(0, 3, size=(40, 33, 70)).astype(np.uint8)
    path = write_label_map(tmp_path / "labels.nii.gz", labels, KITS_AFFINE)
    with gzip.open(path) as stream:
        np.testing.assert_array_equal(np.asarray(nib.Nifti1Image.from_stream(stream).dataobj), labels)
    assert len(gzip.decompress(path.read_bytes())) == 352 + labels.size  # header, extension flag, voxels
    loaded = nib.load(str(path))
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), labels)
    np.testing.assert_allclose(loaded.affine, KITS_AFFINE, atol=1e-5)


def test_without_isal_the_plain_gzip_path_reads_and_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the fast-gzip extra, nibabel's own zlib path writes and reads (the same files)."""
    monkeypatch.setattr(fast_gzip, "igzip", None)
    assert not fast_gzip.available()
    saved, plain_save = [], nib.save
    monkeypatch.setattr(nib, "save", lambda image, name: saved.append(name) or plain_save(image, name))
    labels = _labels((20, 30, 40))
    path = write_label_map(tmp_path / "labels.nii.gz", labels, KITS_AFFINE)
    assert len(saved) == 1 and str(saved[0]).endswith(".nii.gz")  # nibabel wrote it, under the temporary name
    assert gzip.decompress(path.read_bytes())
    np.testing.assert_array_equal(read_image(path).array, labels)


def test_written_nifti_has_mm_units_and_both_transforms(tmp_path: Path) -> None:
    write_label_map(tmp_path / "l.nii.gz", _labels(), KITS_AFFINE)
    header = nib.load(str(tmp_path / "l.nii.gz")).header
    assert header.get_xyzt_units()[0] == "mm"
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    np.testing.assert_allclose(header.get_qform(), KITS_AFFINE, atol=1e-5)


def test_written_nrrd_header_is_lps(tmp_path: Path) -> None:
    write_label_map(tmp_path / "l.nrrd", _labels(), KITS_AFFINE)
    header = nrrd.read_header(str(tmp_path / "l.nrrd"))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space origin"], KITS_AFFINE[:3, 3] * [-1, -1, 1])
    np.testing.assert_allclose(header["space directions"][0], [0, 0, -2.5])


# ---------------------------------------------------------------- atomic writing


def test_write_refuses_existing_output_without_overwrite(tmp_path: Path) -> None:
    path = write_label_map(tmp_path / "l.nii.gz", _labels(), KITS_AFFINE)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError) as error:
        write_label_map(path, np.zeros((5, 6, 7), np.uint8), KITS_AFFINE)
    assert isinstance(error.value, FileExistsError)
    assert "already exists" in str(error.value)
    assert path.read_bytes() == before
    write_label_map(path, np.zeros((5, 6, 7), np.uint8), KITS_AFFINE, overwrite=True)
    assert not read_image(path).array.any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.nii.gz"]


def test_atomic_output_cleans_up_after_an_exception(tmp_path: Path) -> None:
    target = tmp_path / "result.nii.gz"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as temporary:
            assert temporary.parent == tmp_path and temporary.name.endswith(".part.nii.gz")
            temporary.write_bytes(b"half written")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_renames_on_success(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    with atomic_output(target) as temporary:
        temporary.write_text("done")
    assert target.read_text() == "done"
    assert list(tmp_path.iterdir()) == [target]


def test_unsupported_output_suffix_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported output type"):
        write_label_map(tmp_path / "l.png", _labels(), KITS_AFFINE)
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="output folder does not exist"):
        write_label_map(tmp_path / "absent" / "l.nii.gz", _labels(), KITS_AFFINE)


def test_unwritable_output_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: make the access check say what a user would see
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))
    else:
        folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="output folder is not writable"):
            write_label_map(folder / "l.nii.gz", _labels(), KITS_AFFINE)
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


def test_image_is_frozen() -> None:
    image = Image(np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(AttributeError):
        image.array = np.ones((2, 2, 2))  # type: ignore[misc]
