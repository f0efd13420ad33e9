"""Training phantoms cached straight from real KiTS19 masks (training_tools.phantom_cache), tumors
moved between masks (training_tools.phantom_transplant) and the `phantom-cache` command."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from training_tools import cli
from training_tools.cache import open_cache
from training_tools.phantom_cache import PhantomDraw, working_labels
from training_tools.phantom_transplant import transplant_tumor, tumor_crop
from training_tools.phantoms import without_tumor
from training_tools.train import data_deviations

DATA = Path(__file__).parent / "Data" / "kits19"
HOST = DATA / "case_00015.nii.gz"  # both kidneys, a small tumor
DONOR = DATA / "case_00005.nii.gz"  # one kidney, 0.5 mm slices


@pytest.fixture(scope="module")
def host():
    return working_labels(HOST)


def test_a_moved_tumor_keeps_its_shape_and_touches_the_kidney_at_a_new_place(host):
    labels, spacing = host
    donor = tumor_crop(working_labels(DONOR)[0])
    assert donor is not None and donor.sum() > 50
    healthy = without_tumor(labels)
    centres = []
    for seed in range(6):
        moved = transplant_tumor(healthy, donor, spacing, np.random.default_rng(seed))
        tumor = moved == 2
        assert ndimage.label(tumor)[1] == 1  # one piece, as the donor's
        assert tumor.sum() <= donor.sum() and tumor.sum() > 0.5 * donor.sum()  # only what falls off the grid is lost
        assert (ndimage.binary_dilation(tumor) & (moved == 1)).any()  # on the kidney
        np.testing.assert_array_equal(moved[~tumor] > 0, healthy[~tumor] > 0)  # the kidneys stay where they were
        centres.append(np.argwhere(tumor).mean(axis=0))
    spread_mm = np.ptp(np.asarray(centres) * np.asarray(spacing), axis=0).max()
    assert spread_mm > 20.0  # the place is drawn anew: it tells nothing


def test_without_kidney_nothing_is_moved(host):
    labels, spacing = host
    empty = np.zeros_like(labels)
    donor = tumor_crop(labels)
    assert transplant_tumor(empty, donor, spacing, np.random.default_rng(0)) is empty
    assert tumor_crop(empty) is None


def test_draw_settings_are_checked():
    with pytest.raises(ValueError, match="moved share"):
        PhantomDraw(moved_share=1.5)
    with pytest.raises(ValueError, match="healthy share"):
        PhantomDraw(healthy_share=-0.1)
    with pytest.raises(ValueError, match="unknown phantom style"):
        PhantomDraw(style="v9")


def test_cli_caches_variants_grows_and_refuses_another_draw(tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in (HOST, DONOR):
        shutil.copy(path, masks / path.name)
    out = tmp_path / "cache"
    common = ["phantom-cache", "--masks", str(masks), "--out", str(out), "--seed", "4", "--healthy-share", "0",
              "--moved-share", "1", "--workers", "1", "--no-progress"]
    assert cli.main(common) == 0
    first = {c.case_id: c for c in open_cache(out)}
    assert sorted(first) == ["case_00005", "case_00015"]
    for case in first.values():
        source = case.meta["source"]
        assert source["tumor_of"] not in (None, source["phantom_of"])  # the other mask's tumor
        assert (np.load(case.folder / "labels.npy") == 2).any()
    stamps = {name: (case.folder / "meta.json").stat().st_mtime_ns for name, case in first.items()}

    assert cli.main([*common, "--variants", "2"]) == 0  # grows: only the new variants are drawn
    grown = {c.case_id: c for c in open_cache(out)}
    assert sorted(grown) == ["case_00005", "case_00005_v1", "case_00015", "case_00015_v1"]
    assert {name: (grown[name].folder / "meta.json").stat().st_mtime_ns for name in stamps} == stamps
    assert json.loads((out / "cache.json").read_text())["phantoms"]["moved_share"] == 1.0
    assert [n.split(" hold")[0] for n in data_deviations(open_cache(out))] == ["4 of 4 training phantoms"]

    pytest.importorskip("matplotlib")
    from training_tools import phantom_preview
    from training_tools.phantom_preview import _load_cached

    png = tmp_path / "moved.png"
    assert phantom_preview.main(["--cached", str(out / "case_00015"), str(out / "case_00005_v1"), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    hu, labels, title = _load_cached(out / "case_00015")
    assert title == "case_00015, tumor of case_00005" and hu.shape == labels.shape and hu.min() >= -200.0

    other = [*common]
    other[other.index("--seed") + 1] = "5"
    assert cli.main([*other, "--variants", "3"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "seed 4" in error[0]
    assert len(open_cache(out)) == 4  # nothing added


def test_moving_tumors_does_not_repaint_the_phantoms_it_leaves(tmp_path):
    """The moved-tumor draw has its own stream: a healthy phantom is the same bytes whatever the moved share."""
    from training_tools.phantom_cache import cache_phantom

    images = []
    for share in (0.0, 1.0):
        folder = tmp_path / str(share)
        folder.mkdir()
        name, error = cache_phantom((HOST, folder, PhantomDraw(seed=2, healthy_share=1.0, moved_share=share), 0, (DONOR,)))
        assert error is None
        images.append(np.load(folder / name / "image.npy"))
    np.testing.assert_array_equal(*images)
