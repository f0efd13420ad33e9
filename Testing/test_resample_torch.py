"""The grid_sample resampling of Cascade.prepare (on every device) equals the scipy path that
prepares the training data."""
from __future__ import annotations

import numpy as np
import pytest

from KidneyTumorSegLib.geometry import to_working_frame, working_frame_for
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
    for slab in (2, 3, frame.shape[0] - 1):  # slabs of several sizes, a one-slice remainder among them
        np.testing.assert_allclose(to_working_frame_torch(ct, frame, "cpu", order=1, slab=slab).numpy(), got, atol=0.05)


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
