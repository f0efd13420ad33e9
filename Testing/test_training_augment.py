"""Training-time augmentation: every step acts as described and keeps image and targets aligned."""
from __future__ import annotations

import numpy as np
import pytest

from training_tools.augment import Augmentation
from training_tools.configs import load_config

OFF = dict(scale=0.0, shift=0.0, noise=0.0)


def _block(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright block (image 0.8 on 0.2), its mask and a regression channel equal to the mask."""
    seg = np.zeros((1, *shape), np.float32)
    seg[(0, *(slice(n // 4, 3 * n // 4) for n in shape))] = 1.0
    image = (0.2 + 0.6 * seg).astype(np.float32)
    return image, seg, seg.copy()


@pytest.mark.parametrize("shape", [(16, 32, 32), (48, 48)])
def test_spatial_transform_moves_image_and_targets_together(shape):
    augment = Augmentation(**OFF, spatial=1.0, zoom=0.2, rotate_degrees=15.0)
    image, seg, reg = _block(shape)
    out_image, out_seg, out_reg = augment((image, seg, reg), np.random.default_rng(4))
    assert out_image.shape == image.shape and out_seg.shape == seg.shape and out_reg.shape == reg.shape
    assert set(np.unique(out_seg)) <= {0.0, 1.0}
    assert not np.array_equal(out_seg, seg)  # it moved
    agreement = np.mean((out_image > 0.5) == (out_seg > 0.5))
    assert agreement > 0.97
    assert np.abs(out_reg - out_seg).mean() < 0.05


def test_intensity_steps_leave_the_targets_alone_and_follow_the_seed():
    augment = Augmentation(scale=0.1, shift=0.05, noise=0.03, gamma=0.3, blur=1.0, low_resolution=1.0,
                           low_resolution_factor=(2.0, 2.0))
    sample = _block((8, 32, 32))
    first = augment(sample, np.random.default_rng(9))
    again = augment(sample, np.random.default_rng(9))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert np.array_equal(first[1], sample[1]) and np.array_equal(first[2], sample[2])
    assert first[0].shape == sample[0].shape and first[0].dtype == np.float32
    assert not np.allclose(first[0], sample[0])


def test_gamma_alone_keeps_zero_and_one_and_bends_the_middle():
    image = np.array([[[0.0, 0.25, 1.0]]], np.float32)
    out = Augmentation(**OFF, gamma=0.5)((image, image, image), np.random.default_rng(2))[0]
    assert out[0, 0, 0] == 0.0 and out[0, 0, 2] == pytest.approx(1.0) and out[0, 0, 1] != pytest.approx(0.25)


def test_config_json_round_trip_and_unknown_fields():
    augment = Augmentation.from_json({"blur_sigma": [0.5, 1.0], "spatial": 0.3})
    assert augment.blur_sigma == (0.5, 1.0) and augment.spatial == 0.3
    with pytest.raises(ValueError, match="unknown augmentation fields: elastic"):
        Augmentation.from_json({"elastic": 1.0})


def test_demo_presets_augment_and_say_so_while_the_paper_does_not():
    for preset in ("demo-cpu", "demo-gpu", "demo-cpu-finetune"):
        config = load_config("KT", preset)
        assert config.augmentation and config.augmentation["spatial"] > 0
        assert any("augmentation" in note for note in config.spec_deviations())
        Augmentation.from_json(config.augmentation)
    paper = load_config("KT", "paper")
    assert paper.augmentation is None and not any("augmentation" in n for n in paper.spec_deviations())
