"""The torch resampling of Cascade.prepare (separable for axis-aligned inputs, grid_sample for
oblique ones; on every device) equals the scipy path that prepares the training data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.geometry import axis_map, to_working_frame, working_frame_for
from KidneyTumorSegLib.resample_torch import to_working_frame_torch


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


AFFINES = {
    "IPL": np.array([[0, 0, -0.9, 10], [0, -0.9, 0, 20], [-2.0, 0, 0, 30], [0, 0, 0, 1.0]]),
    "RAS": np.diag([0.7, 0.8, 2.5, 1.0]),
    "oblique": np.vstack([np.c_[_rotation_z(0.35) @ np.diag([0.8, 0.8, 3.0]), [5.0, -4.0, 2.0]], [0, 0, 0, 1.0]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_torch_linear_resampling_equals_scipy(name: str) -> None:
    rng = np.random.default_rng(3)
    ct = rng.integers(-1000, 1500, size=(24, 30, 12)).astype(np.int16)
    frame = working_frame_for(ct.shape, AFFINES[name])
    expected = to_working_frame(ct, frame, order=1)
    got = to_working_frame_torch(ct, frame, "cpu", order=1).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=0.05)  # HU; float32 rounding only
    assert (axis_map(frame) is None) == (name == "oblique")  # which path ran
    for slab in (2, 3, frame.shape[0] - 1):  # slabs of several sizes, a one-slice remainder among them
        np.testing.assert_allclose(to_working_frame_torch(ct, frame, "cpu", order=1, slab=slab).numpy(), got, atol=0.05)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_torch_nearest_resampling_equals_scipy(name: str) -> None:
    labels = np.random.default_rng(4).integers(0, 3, size=(24, 30, 12)).astype(np.uint8)
    frame = working_frame_for(labels.shape, AFFINES[name])
    expected = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    np.testing.assert_array_equal(to_working_frame_torch(labels, frame, "cpu", order=0).numpy(), expected)


@pytest.mark.parametrize("view", ["fortran", "flipped", "permuted"])
def test_resampling_reads_any_memory_layout_of_the_input(view: str) -> None:
    """nibabel hands over Fortran-ordered arrays; flips and permutations are views with other strides."""
    ct = np.random.default_rng(5).integers(-1000, 1500, size=(24, 30, 12)).astype(np.int16)
    array = {"fortran": np.asfortranarray(ct), "flipped": ct[::-1, :, ::-1],
             "permuted": ct.transpose(2, 0, 1)}[view]
    frame = working_frame_for(array.shape, AFFINES["IPL"])
    expected = to_working_frame(np.ascontiguousarray(array), frame, order=1)
    np.testing.assert_allclose(to_working_frame_torch(array, frame, "cpu", order=1).numpy(), expected, atol=0.05)


def test_resampling_a_real_kits19_mask_equals_scipy(thin_slice_mask) -> None:
    """A real I,P,L mask with thin slices, as nibabel reads it (Fortran order): shrinks z, grows x and y."""
    labels = np.asarray(thin_slice_mask.dataobj).astype(np.uint8)
    frame = working_frame_for(labels.shape, thin_slice_mask.affine)
    assert axis_map(frame) is not None and frame.shape[0] < labels.shape[0]
    np.testing.assert_array_equal(to_working_frame_torch(labels, frame, "cpu", order=0).numpy(),
                                  to_working_frame(labels, frame, order=0, dtype=np.uint8))
    np.testing.assert_allclose(to_working_frame_torch(labels, frame, "cpu", order=1).numpy(),
                               to_working_frame(labels, frame, order=1), atol=1e-5)


def test_prepare_normalises_like_the_training_cache() -> None:
    from KidneyTumorSegLib.bundle import default_bundle_path, load_bundle
    from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
    from KidneyTumorSegLib.cli.demo import sample_case_path
    from KidneyTumorSegLib.imageio import read_image
    from KidneyTumorSegLib.preprocessing import normalize_hu

    image = read_image(sample_case_path() / "imaging.nii.gz")  # a phantom on a real KiTS19 mask
    cascade = Cascade(load_bundle(default_bundle_path(), roles=("stage1", "KT")), InferenceOptions(device="cpu"))
    case = cascade.prepare(image)
    expected = normalize_hu(to_working_frame(image.array, case.frame, order=1), cascade.bundle.intensity)
    assert case.normalized.dtype == np.float32 and case.normalized.shape == expected.shape
    np.testing.assert_allclose(case.normalized, expected, atol=1e-4)  # 0.05 HU of the 500 HU window


def _plain_separable(array: np.ndarray, frame, order: int) -> torch.Tensor:
    """The plain formulation the CPU path must equal bit for bit: torch's ``index_select`` along each
    working axis of the input permuted to ``[z, y, x]``, with a ``lerp`` at every position."""
    mapping = axis_map(frame)
    volume = torch.from_numpy(np.ascontiguousarray(array)).permute(*mapping.source_axes)
    for axis in sorted(range(3), key=lambda a: frame.shape[a] / volume.shape[a]):
        length = volume.shape[axis]
        position = torch.arange(frame.shape[axis], dtype=torch.float64) * mapping.scale[axis] + mapping.offset[axis]
        position = position.clamp_(0, length - 1)
        if order == 0:
            volume = volume.index_select(axis, torch.floor(position + 0.5).long()).float()
            continue
        low = position.floor().long()
        broadcast = [1, 1, 1]
        broadcast[axis] = -1
        weight = (position - low).float().view(broadcast)
        high = (low + 1).clamp_(max=length - 1)
        volume = volume.index_select(axis, low).float().lerp_(volume.index_select(axis, high).float(), weight)
    return volume.contiguous()


@pytest.mark.parametrize("axcodes", [("I", "P", "L"), ("R", "A", "S"), ("P", "S", "R")])
@pytest.mark.parametrize("layout", ["fortran", "C", "flipped"])
def test_separable_resampling_equals_the_plain_path_bit_for_bit(real_kits_crops, axcodes, layout) -> None:
    """Real KiTS19 geometries (0.5, 3 and 5 mm slices: integer, unit and fractional steps to the
    3 mm working slices), in other orientations and memory layouts, int16 and float32: the passes
    run in the input's memory order and skip all-zero weights, and every value stays the same."""
    import nibabel.orientations as nio

    for name, mask in real_kits_crops.items():
        labels = np.asarray(mask.dataobj)[:, :64, :80]
        noise = np.random.default_rng(len(name)).integers(-40, 40, size=labels.shape)
        ct = (labels.astype(np.int16) * 120 - 60 + noise).astype(np.int16)
        transform = nio.ornt_transform(nio.io_orientation(mask.affine), nio.axcodes2ornt(axcodes))
        ct, affine = nio.apply_orientation(ct, transform), mask.affine @ nio.inv_ornt_aff(transform, ct.shape)
        array = {"fortran": np.asfortranarray(ct), "C": np.ascontiguousarray(ct), "flipped": np.ascontiguousarray(ct)[::-1, :, ::-1]}[layout]
        if layout == "flipped":
            affine = affine @ nio.inv_ornt_aff(np.array([[0, -1], [1, 1], [2, -1]]), ct.shape)
        frame = working_frame_for(array.shape, affine)
        for source in (array, array.astype(np.float32)):
            for order in (0, 1):
                expected = _plain_separable(source, frame, order)
                assert torch.equal(to_working_frame_torch(source, frame, "cpu", order=order), expected), (name, order, source.dtype)
