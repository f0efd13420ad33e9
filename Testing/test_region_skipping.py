"""Running stage-2 models only where KT holds foreground changes no label (issue 7 optimisation)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from KidneyTumorSegLib.inference import predict_along_axis, sliding_window_predict


def _context_predictor(x: torch.Tensor) -> torch.Tensor:
    """Depends on the whole patch (its mean), so blending between patches matters."""
    return x + x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)


def _volume_and_region() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    volume = rng.random((20, 50, 70), dtype=np.float32)
    region = np.zeros(volume.shape, bool)
    region[5:9, 10:14, 40:47] = True
    return volume, region


def test_sliding_window_region_voxels_equal_a_full_run_and_fewer_patches_run() -> None:
    volume, region = _volume_and_region()
    seen = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return _context_predictor(x)

    full = sliding_window_predict(volume, _context_predictor, (8, 16, 16), overlap=0.5, batch_size=1)
    limited = sliding_window_predict(volume, counting, (8, 16, 16), overlap=0.5, batch_size=1, region=region)
    np.testing.assert_allclose(limited[0][region], full[0][region], rtol=1e-6)
    total = len(np.arange(0, 13, 4)) * len(np.arange(0, 35, 8)) * len(np.arange(0, 55, 8))
    assert sum(seen) < total / 4


def test_sliding_window_empty_region_runs_nothing() -> None:
    volume, _ = _volume_and_region()
    out = sliding_window_predict(volume, lambda x: 1 / 0, (8, 16, 16), region=np.zeros(volume.shape, bool))
    assert out.shape == (1, *volume.shape) and not out.any()


def test_2d_region_runs_only_slices_holding_it_with_exact_values() -> None:
    volume, region = _volume_and_region()
    for axis, array_axis in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        full = predict_along_axis(volume, _context_predictor, axis, divisor=2)
        limited = predict_along_axis(volume, _context_predictor, axis, divisor=2, region=region)
        np.testing.assert_allclose(limited[0][region], full[0][region], rtol=1e-6)
        held = np.moveaxis(region, array_axis, 0).reshape(volume.shape[array_axis], -1).any(axis=1)
        assert not np.moveaxis(limited[0], array_axis, 0)[~held].any()


class _ContextNet(torch.nn.Module):
    """Segmentation logits that depend on the voxel and on its patch's mean (so which patches run
    changes the blended values) and fire between ``low`` and ``high``; 2D or 3D, no regression."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor, regression: bool = True) -> tuple[torch.Tensor, None]:
        value = x + 0.5 * (x.mean(dim=tuple(range(2, x.ndim)), keepdim=True) - 0.5)
        return 40.0 * torch.minimum(value - self.low, self.high - value), None


@pytest.mark.parametrize("kt_only_label", [0, 1])
def test_cascade_labels_identical_with_and_without_skipping(tmp_path, kt_only_label: int) -> None:
    """Overlapping bands of a smooth random CT: KT fires on most voxels, each tumor model on its own band,
    K on another; with and without skipping every label is the same, and all three occur."""
    from synthetic_cases import image_in, steered_bundle

    from KidneyTumorSegLib.boxes import Box
    from KidneyTumorSegLib.bundle import load_bundle
    from KidneyTumorSegLib.cascade import STAGE2_ORDER, TUMOR_2D_ROLES, Cascade, InferenceOptions

    bundle = load_bundle(steered_bundle(tmp_path / "b", tuple(STAGE2_ORDER) + ("stage1",), {}, kidney_patch=(16, 64, 64)))
    bands = {"KT": (0.2, 2.0), "K1": (0.3, 0.7), "K2": (0.35, 0.75), "T-vnet": (0.55, 0.65), "T-unet": (0.6, 0.7)}
    bands.update({role: (0.45 + 0.02 * number, 0.6) for number, role in enumerate(TUMOR_2D_ROLES)})
    bundle = dataclasses.replace(bundle, networks={**bundle.networks, **{r: _ContextNet(*b) for r, b in bands.items()}})
    noise = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=(20, 70, 80)), (1.0, 4.0, 4.0))
    ct = (50 + 150 * noise / noise.std()).astype(np.int16)  # blobs: tumor bands wider than the 64-pixel clean-up
    image = image_in(ct, "IPL")
    settings = InferenceOptions().settings
    base = InferenceOptions(device="cpu", settings=dataclasses.replace(
        settings, fusion=dataclasses.replace(settings.fusion, kt_only_label=kt_only_label)))
    results = []
    for skip in (False, True):
        cascade = Cascade(bundle, dataclasses.replace(base, skip_outside_kt=skip))
        results.append(cascade.segment(image, Box.full(ct.shape)).labels)
    np.testing.assert_array_equal(results[0], results[1])
    assert set(np.unique(results[1])) == {0, 1, 2}, np.bincount(results[1].ravel())
