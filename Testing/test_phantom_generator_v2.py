"""Phantom generator v2: contrast phases, tissue HU drawn wide, the simulated scanner, the field of view."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from training_tools.phantom_acquisition import Acquisition, acquire, draw_acquisition
from training_tools.phantom_fov import draw_field_of_view
from training_tools.phantom_phases import PHASES, draw_appearance, phase_ranges
from training_tools.phantom_style import STYLES, style_named
from training_tools.phantom_tissues import measured_hu
from training_tools.phantoms import make_training_phantom


def _appearances(style_name: str, count: int = 400, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [draw_appearance(STYLES[style_name], rng) for _ in range(count)]


def test_non_contrast_ranges_are_centred_on_the_real_ct():
    ranges, measured = phase_ranges("non_contrast"), measured_hu()
    for name, tissue in (("liver", "liver"), ("spleen", "spleen"), ("cortex", "kidney"), ("fat", "fat")):
        assert np.mean(ranges[name]) == pytest.approx(measured[tissue]["mean"])


def test_enhanced_phases_follow_the_renal_timing():
    arterial, venous, late = (phase_ranges(p) for p in PHASES[1:])
    assert arterial["cortex"][0] > arterial["medulla"][1]  # corticomedullary: cortex >> medulla
    assert venous["cortex"] == venous["medulla"]  # nephrographic: homogeneous
    assert late["urine"][0] >= 300.0 and venous["urine"][1] <= 40.0  # excretory: bright collecting system
    assert arterial["aorta"][0] > venous["aorta"][1]
    assert phase_ranges("non_contrast")["paraspinal"][0] < venous["paraspinal"][0]  # muscles enhance too
    with pytest.raises(ValueError, match="unknown phase"):
        phase_ranges("delayed")


def test_v2_draws_every_phase_and_beyond_the_real_range():
    drawn = _appearances("v2")
    assert {a.phase for a in drawn} == set(PHASES)
    assert 0.05 < np.mean([a.randomised for a in drawn]) < 0.3
    assert 0.15 < np.mean([a.oral_contrast for a in drawn]) < 0.45
    plain = [a for a in drawn if a.phase == "non_contrast" and not a.randomised]
    low, high = phase_ranges("non_contrast")["cortex"]
    cortex = [a.hu["cortex"] for a in plain]
    assert min(cortex) < low and max(cortex) > high  # widened beyond the range
    assert all(a.hu["fat"] <= -40.0 for a in drawn)


def test_v1_style_keeps_the_kits_like_look():
    drawn = _appearances("v1")
    assert {a.phase for a in drawn} == {"corticomedullary", "nephrographic"}
    assert not any(a.randomised or a.oral_contrast for a in drawn)
    assert min(a.hu["cortex"] for a in drawn) > 100.0
    with pytest.raises(ValueError, match="expected one of v1, v2"):
        style_named("v3")


def _edge_volume() -> np.ndarray:
    hu = np.full((40, 40, 40), -100.0, np.float32)
    hu[20:] = 100.0  # a step along z
    return hu


def test_thick_slices_blur_along_z_more_than_thin_ones():
    spacing = (1.0, 1.0, 1.0)
    widths = []
    for thickness in (1.0, 5.0):
        acquisition = Acquisition((thickness, 1.0, 1.0), psf_mm=0.5, noise_hu=0.0, noise_grain_px=0.0)
        profile = acquire(_edge_volume(), spacing, acquisition, np.random.default_rng(0))[:, 20, 20]
        widths.append(int(np.count_nonzero((profile > -80.0) & (profile < 80.0))))
    assert widths[1] >= widths[0] + 3
    kept = acquire(_edge_volume(), spacing, Acquisition((5.0, 3.0, 3.0), 0.5, 0.0, 0.0), np.random.default_rng(0),
                   resolution=False)[:, 20, 20]
    assert int(np.count_nonzero((kept > -80.0) & (kept < 80.0))) <= widths[0] + 1


def test_noise_has_the_drawn_level_and_the_shape_is_kept():
    flat = np.zeros((30, 64, 64), np.float32)
    for voxel in ((1.0, 1.0, 1.0), (3.0, 3.0, 3.0)):
        acquisition = Acquisition(voxel, psf_mm=0.5, noise_hu=20.0, noise_grain_px=0.0)
        out = acquire(flat, (1.0, 1.0, 1.0), acquisition, np.random.default_rng(1))
        assert out.shape == flat.shape and out.dtype == np.float32
        assert 8.0 < out.std() < 22.0  # interpolating a coarse grid back smooths its noise a little
    drawn = [draw_acquisition(STYLES["v2"], np.random.default_rng(s)) for s in range(300)]
    thickness = [a.voxel_mm[0] for a in drawn]
    assert min(thickness) < 1.0 and max(thickness) > 4.5
    assert any(a.voxel_mm[1] > 2.5 for a in drawn)  # low in-plane resolution
    assert any(a.voxel_mm[0] == a.voxel_mm[1] for a in drawn)  # isotropic
    assert all(5.0 <= a.noise_hu <= 40.0 for a in drawn)


@pytest.fixture(scope="module")
def real_mask(real_kits_crops) -> tuple[np.ndarray, tuple[float, float, float]]:
    image = max(real_kits_crops.values(), key=lambda i: float(i.header.get_zooms()[0]))  # the 3 mm one: cheap
    return np.asarray(image.dataobj, np.uint8), tuple(float(z) for z in image.header.get_zooms()[:3])


def _labelled(labels: np.ndarray) -> int:
    return int(np.count_nonzero(labels))


def test_field_of_view_holds_cuts_or_misses_the_kidneys(real_mask):
    labels, spacing = real_mask
    style = STYLES["v2"]
    for seed in range(5):
        whole = replace(style, cut_kidney=0.0, no_kidney=0.0, short_window=0.0)
        fov = draw_field_of_view(labels, spacing, whole, np.random.default_rng(seed))
        assert _labelled(fov.pad(labels)[fov.keep]) == _labelled(labels)
        cut = draw_field_of_view(labels, spacing, replace(style, cut_kidney=1.0, no_kidney=0.0), np.random.default_rng(seed))
        assert 0 < _labelled(cut.pad(labels)[cut.keep]) < _labelled(labels)
        short_style = replace(style, cut_kidney=0.0, no_kidney=0.0, short_window=1.0, short_mm=(45.0, 60.0))
        short = draw_field_of_view(labels, spacing, short_style, np.random.default_rng(seed))
        assert short.keep[0].stop - short.keep[0].start <= int(60.0 / spacing[0])
        assert _labelled(short.pad(labels)[short.keep]) > 0
        missed = replace(style, extend_mm=(150.0, 150.0), no_kidney=1.0)
        none = draw_field_of_view(labels, spacing, missed, np.random.default_rng(seed))
        assert _labelled(none.pad(labels)[none.keep]) == 0 and none.keep[0].stop - none.keep[0].start >= 8


def test_training_phantom_pads_paints_and_windows(real_mask):
    labels, spacing = real_mask
    style = replace(STYLES["v2"], extend_mm=(9.0, 9.0), cut_kidney=0.0, no_kidney=0.0, short_window=0.0)
    hu, window_labels, fov = make_training_phantom(labels, spacing, np.random.default_rng(3), style)
    assert hu.shape == window_labels.shape and hu.dtype == np.int16
    assert np.array_equal(window_labels, fov.pad(labels)[fov.keep])
    assert fov.pad_before == fov.pad_after == int(9.0 / spacing[0])
    kidney = hu[window_labels == 1].astype(float)
    assert kidney.std() > 1.0  # painted, not empty
