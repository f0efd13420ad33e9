"""Running stage-2 models only where KT holds foreground changes no label (issue 7 optimisation)."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

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


def test_cascade_labels_identical_with_and_without_skipping(tmp_path) -> None:
    from KidneyTumorSegLib.boxes import Box
    from KidneyTumorSegLib.bundle import load_bundle
    from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
    from KidneyTumorSegLib.imageio import Image
    from training_tools.untrained import make_untrained_bundle

    torch.manual_seed(0)
    bundle = load_bundle(make_untrained_bundle(tmp_path / "b", base_channels=2,
                                               roles=("stage1", "KT", "K1", "T-vnet", "T2D-ax-dice", "T2D-co-bce")))
    rng = np.random.default_rng(1)
    ct = rng.normal(0, 300, size=(40, 40, 12)).astype(np.float32)
    image = Image(ct, np.diag([0.78162497, 0.78162497, 3.0, 1.0]))
    base = InferenceOptions(device="cpu", settings=dataclasses.replace(
        InferenceOptions().settings, fusion=dataclasses.replace(InferenceOptions().settings.fusion, kt_only_label=0)))
    results = []
    for skip in (False, True):
        cascade = Cascade(bundle, dataclasses.replace(base, skip_outside_kt=skip))
        case = cascade.prepare(image)
        results.append(cascade.segment(image, Box.full(case.frame.shape), case=case).labels)
    np.testing.assert_array_equal(results[0], results[1])
