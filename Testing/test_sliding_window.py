"""Sliding-window and slice-wise inference checked with toy predictors of known exact output."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from KidneyTumorSegLib.inference import (
    Cancelled,
    gaussian_importance_map,
    make_predictor,
    patch_starts,
    pick_device,
    predict_along_axis,
    resolve_amp_dtype,
    sliding_window_predict,
)
from KidneyTumorSegLib.inference.sliding_window import MIN_IMPORTANCE
from KidneyTumorSegLib.networks import VNet

RNG = np.random.default_rng(0)


def double(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


@pytest.mark.parametrize("size, patch, overlap, expected", [
    (64, 32, 0.0, [0, 32]),
    (64, 32, 0.5, [0, 16, 32]),
    (70, 32, 0.5, [0, 13, 25, 38]),
    (70, 32, 0.0, [0, 19, 38]),
    (32, 32, 0.5, [0]),
    (33, 32, 0.5, [0, 1]),
])
def test_patch_starts_cover_the_axis_flush_to_the_end(size, patch, overlap, expected) -> None:
    assert patch_starts(size, patch, overlap) == expected


def test_patch_starts_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        patch_starts(64, 32, 1.0)
    with pytest.raises(ValueError):
        patch_starts(16, 32, 0.5)


@pytest.mark.parametrize("shape", [(20, 33, 47), (8, 16, 16), (5, 10, 40), (3, 7, 9)])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("gaussian", [True, False])
def test_doubling_predictor_gives_twice_the_volume(shape, overlap, gaussian) -> None:
    volume = RNG.random(shape, dtype=np.float32)
    out = sliding_window_predict(volume, double, (8, 16, 16), overlap=overlap, batch_size=3,
                                 gaussian=gaussian)
    assert out.shape == (1, *shape) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 2 * volume, rtol=1e-6, atol=1e-7)


def test_multichannel_predictor_and_half_precision_output() -> None:
    volume = RNG.random((9, 20, 18), dtype=np.float32)
    out = sliding_window_predict(volume, lambda x: torch.cat([x, 1 - x, x * x], dim=1),
                                 (8, 8, 8), out_dtype=np.float16)
    assert out.shape == (3, 9, 20, 18) and out.dtype == np.float16
    np.testing.assert_allclose(out, np.stack([volume, 1 - volume, volume ** 2]), atol=1e-3)


def _counting_predictor():
    """Returns patch number k (0, 1, ...) everywhere in the k-th patch."""
    seen = [0]

    def predict(x: torch.Tensor) -> torch.Tensor:
        index = torch.arange(seen[0], seen[0] + x.shape[0], dtype=torch.float32)
        seen[0] += x.shape[0]
        return torch.ones_like(x) * index.view(-1, 1, 1, 1, 1)

    return predict


def test_overlaps_are_blended_with_the_importance_map() -> None:
    volume = np.zeros((8, 8, 24), dtype=np.float32)  # x starts 0 and 8 with a 16 patch
    uniform = sliding_window_predict(volume, _counting_predictor(), (8, 8, 16), gaussian=False)
    np.testing.assert_array_equal(uniform[0, 0, 0], [0] * 8 + [0.5] * 8 + [1] * 8)
    blended = sliding_window_predict(volume, _counting_predictor(), (8, 8, 16), gaussian=True)
    profile = gaussian_importance_map((8, 8, 16))[4, 4]
    w0 = np.concatenate([profile, np.zeros(8)])
    w1 = np.concatenate([np.zeros(8), profile])
    np.testing.assert_allclose(blended[0, 4, 4], w1 / (w0 + w1), rtol=1e-5)
    assert blended[0, 4, 4, 8] < 0.1 and blended[0, 4, 4, 15] > 0.9  # nearer centre wins


def test_gaussian_blending_is_the_default() -> None:
    """The cascade calls the sliding window without ``gaussian``: the default must blend."""
    volume = np.zeros((8, 8, 24), dtype=np.float32)
    default = sliding_window_predict(volume, _counting_predictor(), (8, 8, 16))
    np.testing.assert_array_equal(default, sliding_window_predict(volume, _counting_predictor(), (8, 8, 16), gaussian=True))
    assert default[0, 4, 4, 8] < 0.1 and default[0, 4, 4, 15] > 0.9  # uniform weights give 0.5 there


def test_gaussian_map_is_cached_symmetric_positive_and_has_sigma_one_eighth() -> None:
    gaussian_importance_map.cache_clear()
    first = gaussian_importance_map((17, 24, 9))
    assert gaussian_importance_map((17, 24, 9)) is first
    assert gaussian_importance_map.cache_info().hits == 1
    assert not first.flags.writeable and first.dtype == np.float32
    for axis in range(3):
        np.testing.assert_array_equal(first, np.flip(first, axis))
    assert first.min() >= MIN_IMPORTANCE > 0 and first.max() == 1.0
    assert first[8, :, 4].argmax() in (11, 12)
    offsets = np.arange(17) - 8
    expected = np.maximum(np.exp(-0.5 * (offsets / (17 / 8)) ** 2), MIN_IMPORTANCE)
    line = first[:, 11, 4] / first[8, 11, 4]
    np.testing.assert_allclose(line[line > 1e-3], expected[line > 1e-3], rtol=1e-5)


def test_progress_reaches_the_total_and_batch_size_does_not_change_the_result() -> None:
    volume = RNG.random((13, 21, 30), dtype=np.float32)
    results = []
    for batch_size in (1, 3, 7):
        calls: list[tuple[int, int]] = []
        results.append(sliding_window_predict(
            volume, lambda x: x * x + 1, (8, 8, 16), batch_size=batch_size,
            progress=lambda done, total: calls.append((done, total))))
        total = 3 * 5 * 3  # starts: z 0,3,5  y 0,3,7,10,13  x 0,7,14
        assert calls[-1] == (total, total)
        assert len(calls) == -(-total // batch_size)
        assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


def test_cancel_stops_before_the_next_batch() -> None:
    polls = iter([False, False, True])
    predicted = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        predicted.append(x.shape[0])
        return x

    with pytest.raises(Cancelled):
        sliding_window_predict(np.zeros((16, 32, 32), np.float32), predictor, (8, 8, 8),
                               batch_size=2, cancel=lambda: next(polls))
    assert predicted == [2, 2]


def test_wrong_predictor_output_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match="predictor returned"):
        sliding_window_predict(np.zeros((8, 8, 8), np.float32), lambda x: x[..., :4], (8, 8, 8))


# ---- 2D slice-wise prediction ---------------------------------------------------------------

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}


@pytest.mark.parametrize("axis", list(AXES))
def test_identity_2d_predictor_returns_the_volume(axis: str) -> None:
    volume = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    planes: list[tuple[int, int]] = []

    def identity(x: torch.Tensor) -> torch.Tensor:
        planes.append(tuple(x.shape[2:]))
        return x

    out = predict_along_axis(volume, identity, axis, batch_size=2, divisor=4)
    np.testing.assert_array_equal(out, volume[None])
    expected_plane = tuple(-(-s // 4) * 4 for i, s in enumerate(volume.shape) if i != AXES[axis])
    assert set(planes) == {expected_plane}


@pytest.mark.parametrize("axis", list(AXES))
def test_slice_index_lands_on_the_right_axis(axis: str) -> None:
    volume = RNG.random((4, 5, 6), dtype=np.float32)
    seen = [0]
    progress: list[tuple[int, int]] = []

    def slice_number(x: torch.Tensor) -> torch.Tensor:  # slice k -> channel 0 = k, channel 1 = x
        index = torch.arange(seen[0], seen[0] + x.shape[0], dtype=torch.float32)
        seen[0] += x.shape[0]
        return torch.cat([torch.zeros_like(x) + index.view(-1, 1, 1, 1), x], dim=1)

    out = predict_along_axis(volume, slice_number, axis, batch_size=3, divisor=8,
                             progress=lambda done, total: progress.append((done, total)))
    n = volume.shape[AXES[axis]]
    shape = [1, 1, 1]
    shape[AXES[axis]] = n
    assert out.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(out[0], np.broadcast_to(np.arange(n).reshape(shape), (4, 5, 6)))
    np.testing.assert_array_equal(out[1], volume)
    assert progress[-1] == (n, n)


def test_2d_cancel_and_bad_axis() -> None:
    with pytest.raises(Cancelled):
        predict_along_axis(np.zeros((4, 4, 4), np.float32), lambda x: x, "axial",
                           cancel=lambda: True)
    with pytest.raises(ValueError, match="axis"):
        predict_along_axis(np.zeros((4, 4, 4), np.float32), lambda x: x, "oblique")


# ---- network predictors ---------------------------------------------------------------------

def test_make_predictor_returns_sigmoid_and_raw_regression() -> None:
    torch.manual_seed(0)
    net = VNet(base_channels=2, regression_channels=5)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        net.eval()
        seg, reg = net(x)
    both = make_predictor(net, "cpu", amp_dtype=torch.bfloat16, output="seg+reg")(x)
    assert both.shape == (2, 6, 16, 16, 16) and both.dtype == torch.float32
    torch.testing.assert_close(both[:, :1], torch.sigmoid(seg))
    torch.testing.assert_close(both[:, 1:], reg)
    assert not net.training
    with pytest.raises(ValueError, match="regression head"):
        make_predictor(VNet(base_channels=2, regression_channels=0), "cpu", output="seg+reg")(x)


@pytest.mark.parametrize("net", [VNet(base_channels=2, regression_channels=5),
                                 VNet(base_channels=2, regression_channels=1, branch_level="second_last")])
def test_segmentation_only_skips_the_regression_decoder_and_keeps_the_segmentation(net) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16, 16)
    calls = []
    net.reg_decoder.register_forward_hook(lambda *_: calls.append(1))
    seg_only = make_predictor(net, "cpu", output="seg")(x)
    assert calls == []
    both = make_predictor(net, "cpu", output="seg+reg")(x)
    assert calls == [1]
    torch.testing.assert_close(seg_only, both[:, :1])


def test_network_through_the_sliding_window_gives_probabilities() -> None:
    torch.manual_seed(0)
    predictor = make_predictor(VNet(base_channels=2), "cpu")
    out = sliding_window_predict(RNG.random((20, 30, 20), dtype=np.float32), predictor,
                                 (16, 16, 16), out_dtype=np.float16)
    assert out.shape == (1, 20, 30, 20) and out.dtype == np.float16
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_device_and_amp_choices() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            pick_device("cuda")
    with pytest.raises(ValueError):
        pick_device("mps")
    assert resolve_amp_dtype("bf16", torch.device("cpu")) is None
    assert resolve_amp_dtype("none", torch.device("cuda")) is None
    assert resolve_amp_dtype("fp16", torch.device("cuda")) is torch.float16
    with pytest.raises(ValueError):
        resolve_amp_dtype("int8", torch.device("cpu"))
