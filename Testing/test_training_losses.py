"""Losses, the poly schedule and the twelve configurations against their definitions in SPEC §2."""
from __future__ import annotations

import json

import math

import pytest
import torch

from training_tools.configs import all_configs, load_config, parse_override, preset_names
from training_tools.losses import LossWeights, bce_loss, dice_loss, total_loss, wmse_loss
from training_tools.schedule import poly_lr


def _logits(probabilities: list[float]) -> torch.Tensor:
    p = torch.tensor(probabilities, dtype=torch.float64)
    return torch.log(p / (1 - p)).reshape(1, 1, -1)


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, -1)


def test_dice_loss_is_one_minus_smoothed_soft_dice():
    # p = (0.8, 0.2, 0.6, 0.4), t = (1, 0, 1, 0): Σpt = 1.4, Σp = 2, Σt = 2 -> 1 - (2.8 + 1) / (4 + 1)
    loss = dice_loss(_logits([0.8, 0.2, 0.6, 0.4]), _t([1, 0, 1, 0]))
    assert loss.item() == pytest.approx(0.24, abs=1e-6)
    # Empty target and (almost) empty prediction: no loss.
    assert dice_loss(torch.full((1, 1, 8), -30.0), torch.zeros(1, 1, 8)).item() == pytest.approx(0.0, abs=1e-6)


def test_bce_loss_is_the_mean_cross_entropy():
    loss = bce_loss(_logits([0.8, 0.2, 0.6, 0.4]), _t([1, 0, 1, 0]))
    assert loss.item() == pytest.approx(-(2 * math.log(0.8) + 2 * math.log(0.6)) / 4, rel=1e-6)


def test_wmse_weights_positive_voxels_by_their_target_sum_and_the_rest_by_their_count():
    # t > 0: (0.5 - 1)² + (0.2 - 0.5)² = 0.34 over Σt = 1.5; t ≤ 0: 0² + 0.3² = 0.09 over N = 2
    loss = wmse_loss(_t([0.5, 0.2, 0.0, 0.3]), _t([1.0, 0.5, 0.0, 0.0]))
    assert loss.item() == pytest.approx((0.34 / 1.5 + 0.09 / 2) / 2, rel=1e-6)


def test_wmse_with_an_all_zero_target_keeps_only_the_count_term():
    loss = wmse_loss(_t([0.2, 0.4]), _t([0.0, 0.0]))
    assert loss.item() == pytest.approx((0.0 + (0.04 + 0.16) / 2) / 2, rel=1e-6)


def test_wmse_with_no_zero_target_keeps_only_the_weighted_term():
    loss = wmse_loss(_t([0.0, 0.0]), _t([0.5, 1.0]))
    assert loss.item() == pytest.approx((1.25 / 1.5 + 0.0) / 2, rel=1e-6)


def test_wmse_floor_bounds_a_window_that_holds_only_the_tail_of_a_boundary():
    target = torch.zeros(1, 1, 1000)
    target[0, 0, :5] = 3e-4  # five voxels of a soft boundary's faint tail: Σ t = 0.0015
    head = torch.full_like(target, 0.3)
    tail_error = 5 * (0.3 - 3e-4) ** 2
    assert wmse_loss(head, target).item() == pytest.approx((tail_error / 0.0015 + 0.09) / 2, rel=1e-4)  # the paper: ~150
    floored = wmse_loss(head, target, positive_floor=0.001).item()  # divides by 0.001 * 1000 voxels = 1
    assert floored == pytest.approx((tail_error / 1.0 + 0.09) / 2, rel=1e-4)
    whole = torch.rand(1, 1, 1000)  # a window with a real boundary (Σ t ≈ 500) is scored as the paper scores it
    assert wmse_loss(head, whole, 0.001).item() == pytest.approx(wmse_loss(head, whole).item(), rel=1e-6)
    _, parts = total_loss(_logits([0.5] * 1000), head, torch.zeros(1, 1, 1000), target, "dice", wmse_positive_floor=0.001)
    assert parts["reg_loss"].item() == pytest.approx(floored, rel=1e-6)


def test_total_loss_adds_wmse_to_the_segmentation_loss():
    logits, seg, reg_pred, reg_target = _logits([0.8, 0.2]), _t([1, 0]), _t([0.5, 0.0]), _t([1.0, 0.0])
    total, parts = total_loss(logits, reg_pred, seg, reg_target, "bce")
    assert total.item() == pytest.approx(bce_loss(logits, seg).item() + wmse_loss(reg_pred, reg_target).item(), rel=1e-6)
    assert set(parts) == {"loss", "seg_loss", "reg_loss"}


def test_dice_plus_bce_gives_false_positives_in_a_window_without_tumor_their_gradient():
    """With an empty truth, soft Dice barely moves a confident false positive (loss P/(P+1)); the
    BCE term of "dice+bce" pushes every such voxel down, in proportion to its weight."""
    target = torch.zeros(2, 1, 8, 16, 16)
    logits = torch.full_like(target, 2.0)  # p = 0.88 everywhere: the whole window called tumor
    gradients = {}
    for name, voxel in (("dice", 1.0), ("dice+bce", 1.0), ("dice+bce", 0.5)):
        leaf = logits.clone().requires_grad_(True)
        loss, _ = total_loss(leaf, None, target, target, name, LossWeights(voxel=voxel))
        loss.backward()
        gradients[name, voxel] = float(leaf.grad.abs().sum())
        expected = dice_loss(logits, target) + (voxel * bce_loss(logits, target) if name != "dice" else 0.0)
        assert float(loss.detach()) == pytest.approx(float(expected))
    assert gradients["dice+bce", 1.0] > 100 * gradients["dice", 1.0]
    assert gradients["dice+bce", 0.5] == pytest.approx(gradients["dice", 1.0] + 0.5 * (gradients["dice+bce", 1.0]
                                                                                   - gradients["dice", 1.0]), rel=1e-4)
    with pytest.raises(ValueError, match="segmentation loss"):
        total_loss(logits, None, target, target, "focal")


def test_poly_schedule_values():
    assert poly_lr(1e-3, 0, 100) == pytest.approx(1e-3)
    assert poly_lr(1e-3, 50, 100) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert poly_lr(1e-4, 90, 100) == pytest.approx(1e-4 * 0.1 ** 0.9)
    assert poly_lr(1e-4, 100, 100) == 0.0


# SPEC §2, written out: role -> (learning rate, segmentation loss, training patch).
SPEC_TABLE = {
    "stage1": (1e-4, "dice", (16, 64, 64)),
    "KT": (1e-4, "dice", (32, 128, 128)),
    "K1": (1e-4, "dice", (32, 128, 128)),
    "K2": (1e-4, "dice", (32, 128, 128)),
    "T-vnet": (1e-3, "dice", (32, 64, 64)),
    "T-unet": (1e-3, "dice", (32, 64, 64)),
    **{f"T2D-{a}-{loss}": (1e-3, loss, (256, 256)) for loss in ("dice", "bce") for a in ("ax", "co", "sa")},
}


@pytest.mark.parametrize("preset", ["paper", *preset_names()])
def test_every_config_of_every_preset_follows_spec_loss_patch_and_optimiser(preset):
    configs = all_configs(preset)
    assert list(configs) == list(SPEC_TABLE)
    for role, config in configs.items():
        lr, loss, patch = SPEC_TABLE[role]
        assert config.segmentation_loss in (loss, "dice+bce")  # a tumor preset may add BCE to Dice (SPEC, revised)
        assert config.effective_patch_size == patch or preset == "smoke"  # smoke trains on smaller patches
        assert config.weight_decay == 5e-4 and config.poly_power == 0.9
        heads = {k: v for k, v in config.loss_weights.items() if k != "voxel"}
        assert heads == {"segmentation": 1.0, "regression": 1.0}  # segmentation loss + WMSE, unweighted
        assert "voxel" not in config.loss_weights or config.segmentation_loss == "dice+bce"  # weighs dice+bce's BCE term
        assert config.iterations >= 1 and config.batch_size >= 1 and config.base_channels >= 1
        if preset in ("paper", "smoke"):  # smoke: the paper's settings, only fewer and smaller
            assert config.segmentation_loss == loss
            assert config.learning_rate == lr and not config.augmentation
            assert config.spec_deviations() == ([] if preset == "paper" else [
                f"patch {config.effective_patch_size} (SPEC {patch})"] if config.effective_patch_size != patch else [])
        else:  # the demo presets raise the learning rate and augment; each run records both as deviations
            assert config.learning_rate in (5e-4, 1e-3) and config.augmentation
            expected = [] if config.learning_rate == lr else [f"learning rate {config.learning_rate:g} (SPEC {lr:g})"]
            if config.segmentation_loss != loss:
                expected.append(f"segmentation loss {config.segmentation_loss} (SPEC {loss})")
            if config.inference_window_fraction:
                expected.append(f"{config.inference_window_fraction:g} of the windows drawn anywhere in the crop, "
                                "as inference meets the model (the paper: all around the tumor)")
            if config.wmse_positive_floor:
                expected.append(f"WMSE boundary term divided by at least {config.wmse_positive_floor:g} of the batch's "
                                "voxels (the paper: by the boundary's Σ t alone)")
            if config.tumor_box_padding == "zeros":
                expected.append("zeros around the expanded tumor box (SPEC: the image's own voxels)")
            expected.append(f"training-time augmentation {json.dumps(config.augmentation, sort_keys=True)} "
                            "(the paper uses none)")
            assert config.spec_deviations() == expected


def test_demo_presets_reduce_the_width_and_overrides_apply_last():
    paper = all_configs("paper")
    for preset in ("demo-cpu", "demo-gpu"):
        for role, config in all_configs(preset).items():
            assert config.base_channels < paper[role].base_channels
    config = load_config("K2", "paper", dict([parse_override("iterations=7"), parse_override("patch_size=[16,32,32]")]))
    assert config.iterations == 7 and config.effective_patch_size == (16, 32, 32)
    assert config.spec_deviations() == ["patch (16, 32, 32) (SPEC (32, 128, 128))"]
    with pytest.raises(ValueError, match="unknown config fields"):
        load_config("KT", None, {"iteration": 3})


def test_tumor_box_padding_is_the_image_by_default_and_zeros_only_for_the_3d_tumor_models():
    assert all(c.tumor_box_padding == "image" for c in all_configs("paper").values())
    config = load_config("T-unet", "paper", {"tumor_box_padding": "zeros"})
    assert config.spec_deviations() == ["zeros around the expanded tumor box (SPEC: the image's own voxels)"]
    with pytest.raises(ValueError, match="tumor_box_padding must be one of"):
        load_config("T-vnet", "paper", {"tumor_box_padding": "mirror"})
    with pytest.raises(ValueError, match="applies to T-vnet and T-unet only"):
        load_config("KT", "paper", {"tumor_box_padding": "zeros"})
