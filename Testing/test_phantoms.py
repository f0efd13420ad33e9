"""Phantom CTs around real KiTS19 masks (training_tools.phantoms) and the `phantoms` command."""
from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from training_tools import cli
from training_tools.phantom_kidney import ISODENSE_OFFSET_HU, TUMOR_KINDS, draw_kidney_look, inner_depth
from training_tools.phantom_phases import CORTICOMEDULLARY_GAP_HU, draw_appearance
from training_tools.phantom_style import STYLES
from training_tools.phantom_tissues import Tissue
from training_tools.phantoms import (
    _progress,
    case_name,
    case_seed,
    find_masks,
    is_healthy_phantom,
    make_phantom,
    make_phantom_case,
    make_phantom_with_info,
)

DATA = Path(__file__).parent / "Data" / "kits19"
SMALL = DATA / "case_00015.nii.gz"  # 3 mm, cropped around both kidneys, uint16 on disk
WHOLE = DATA / "case_00030.nii.gz"  # 5 mm, whole 512 x 512 slices, very large tumor
THIN = DATA / "case_00005.nii.gz"  # 0.5 mm, one kidney, cropped


def _load(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj).astype(np.uint8), tuple(float(z) for z in img.header.get_zooms()[:3])


@pytest.fixture(scope="module")
def small():
    return _load(SMALL)


@pytest.fixture(scope="module")
def whole():
    """A v2 phantom at the mask's own resolution (the simulated scanner is tested on its own)."""
    labels, spacing = _load(WHOLE)
    style = replace(STYLES["v2"], resolution=False)
    hu, info = make_phantom_with_info(labels, spacing, np.random.default_rng(case_seed(7, "case_00030")), style)
    return labels, spacing, hu, info


def test_same_seed_same_bytes_other_seed_differs(small):
    labels, spacing = small
    first = make_phantom(labels, spacing, np.random.default_rng(11))
    again = make_phantom(labels, spacing, np.random.default_rng(11))
    other = make_phantom(labels, spacing, np.random.default_rng(12))
    assert first.dtype == np.int16 and first.shape == labels.shape
    assert first.tobytes() == again.tobytes()
    assert np.abs(first.astype(np.int32) - other).mean() > 5.0


def test_case_seed_depends_on_seed_and_name_only():
    def state(seed: int, name: str) -> list[int]:
        return case_seed(seed, name).generate_state(2).tolist()

    assert state(3, "case_00001") == state(3, "case_00001")
    assert state(3, "case_00001") != state(3, "case_00002")
    assert state(3, "case_00001") != state(4, "case_00001")


def _coarse_hu(hu: np.ndarray, info, tissue: Tissue) -> np.ndarray:
    """Phantom HU at coarse samples of one tissue whose 6 neighbours are the same tissue."""
    t = info.anatomy.tissue
    same = t == tissue
    inner = same.copy()
    for axis in range(3):
        inner[tuple(slice(1, -1) if a == axis else slice(None) for a in range(3))] &= (
            same[tuple(slice(2, None) if a == axis else slice(None) for a in range(3))]
            & same[tuple(slice(None, -2) if a == axis else slice(None) for a in range(3))]
        )
    idx = [i * f for i, f in zip(np.nonzero(inner), info.anatomy.factors)]
    keep = np.all([i < n for i, n in zip(idx, hu.shape)], axis=0)
    return hu[tuple(i[keep] for i in idx)].astype(np.float64)


def test_hu_ranges_per_region_follow_the_drawn_appearance(whole):
    labels, spacing, hu, info = whole
    drawn = info.appearance.hu
    fat = _coarse_hu(hu, info, Tissue.FAT)
    assert abs(np.median(fat) - drawn["fat"]) < 15.0
    assert abs(np.median(_coarse_hu(hu, info, Tissue.LIVER)) - drawn["liver"]) < 15.0
    assert np.median(_coarse_hu(hu, info, Tissue.CORTICAL)) > 200.0
    assert np.median(_coarse_hu(hu, info, Tissue.GAS)) < -500.0
    assert np.median(_coarse_hu(hu, info, Tissue.AIR)) < -500.0
    depth = inner_depth(labels > 0, spacing)
    cortex = (labels == 1) & (depth > 2.0) & (depth < info.look.cortex_mm - 1.0)
    assert abs(np.median(hu[cortex]) - info.look.cortex_hu) < 25.0
    assert hu.min() >= -1024 and hu.max() <= 3071


def test_anatomy_is_placed_around_the_kidneys(whole):
    _, _, _, info = whole
    anatomy = info.anatomy
    canvas, layout = anatomy.canvas, anatomy.layout
    right, left = layout.side("right")[0], layout.side("left")[0]

    def centre(tissue: Tissue) -> np.ndarray:
        idx = np.nonzero(anatomy.tissue == tissue)
        return np.array([canvas.z[idx[0]].mean(), canvas.y[idx[1]].mean(), canvas.x[idx[2]].mean()])

    spine, canal = centre(Tissue.CANCELLOUS), centre(Tissue.CANAL)
    assert right[2] < spine[2] < left[2] and abs(canal[2]) < 5.0  # midline, between the kidneys
    assert canal[1] > spine[1] - 40.0  # canal behind the vertebral bodies
    assert centre(Tissue.LIVER)[2] < 0 < centre(Tissue.SPLEEN)[2]  # liver patient-right, spleen left
    assert centre(Tissue.LIVER)[0] < right[0]  # liver above the right kidney's centre
    assert centre(Tissue.AORTA)[1] < spine[1] and centre(Tissue.IVC)[2] < centre(Tissue.AORTA)[2]
    assert centre(Tissue.GAS)[1] < 0  # bowel gas anterior
    body = anatomy.tissue != Tissue.AIR
    assert body.sum() > 0.3 * body.size


def _assert_same_geometry(mask: Path, case_dir: Path) -> None:
    source, imaging = nib.load(str(mask)), nib.load(str(case_dir / "imaging.nii.gz"))
    segmentation = nib.load(str(case_dir / "segmentation.nii.gz"))
    assert imaging.shape == segmentation.shape == source.shape
    assert np.allclose(imaging.affine, source.affine) and np.allclose(segmentation.affine, source.affine)
    assert imaging.get_data_dtype() == np.int16 and segmentation.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(segmentation.dataobj), np.asarray(source.dataobj))
    assert sorted(p.name for p in case_dir.iterdir()) == ["imaging.nii.gz", "segmentation.nii.gz"]


def test_geometry_equals_the_mask(tmp_path):
    _assert_same_geometry(THIN, make_phantom_case(THIN, tmp_path, seed=1))


def _flipped_small() -> nib.Nifti1Image:
    """The SMALL mask stored with its y and x axes reversed (axis codes I, A, R), same world positions."""
    img = nib.load(str(SMALL))
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    flip[:3, 3] = [0, img.shape[1] - 1, img.shape[2] - 1]
    return nib.Nifti1Image(np.asarray(img.dataobj)[:, ::-1, ::-1], img.affine @ flip, img.header.copy())


def test_other_orientations_are_turned_to_kits_axes_and_back(tmp_path):
    flipped = _flipped_small()
    assert nib.aff2axcodes(flipped.affine) == ("I", "A", "R")
    (tmp_path / "in").mkdir()
    nib.save(flipped, str(tmp_path / "in" / "case_00015.nii.gz"))
    straight = make_phantom_case(SMALL, tmp_path / "a", seed=2)
    turned = make_phantom_case(tmp_path / "in" / "case_00015.nii.gz", tmp_path / "b", seed=2)
    a = np.asarray(nib.load(str(straight / "imaging.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(turned / "imaging.nii.gz")).dataobj)
    assert np.array_equal(a, b[:, ::-1, ::-1])


def test_tumor_kinds_vary_and_isodense_stays_subtle():
    rng = np.random.default_rng(0)
    style = STYLES["v2"]
    pairs = [(appearance, draw_kidney_look(appearance, style, rng))
             for appearance in (draw_appearance(style, rng) for _ in range(400))]
    looks = [look for _, look in pairs]
    assert {look.tumor_kind for look in looks} == set(TUMOR_KINDS)
    assert any(look.necrosis_hu is not None for look in looks)
    assert any(look.calcification_hu is not None for look in looks)
    assert all((look.fat_hu is not None) == (look.tumor_kind == "fat_containing") for look in looks)
    for appearance, look in pairs:
        assert look.cortex_hu == appearance.hu["cortex"] and look.medulla_hu == appearance.hu["medulla"]
        if look.tumor_kind == "isodense" and not appearance.randomised:
            low, high = ISODENSE_OFFSET_HU
            assert low <= abs(look.tumor_hu - appearance.parenchyma_hu) <= high
        if appearance.phase == "corticomedullary" and not appearance.randomised:
            assert look.cortex_hu >= look.medulla_hu + CORTICOMEDULLARY_GAP_HU  # the bright cortical rim


def test_tumor_differs_from_kidney_in_some_seeds(small):
    labels, spacing = small
    differences = []
    for seed in range(4):
        hu = make_phantom(labels, spacing, np.random.default_rng(seed)).astype(np.float64)
        differences.append(hu[labels == 2].mean() - hu[labels == 1].mean())
    assert max(abs(d) for d in differences) > 30.0
    assert len({round(d) for d in differences}) == len(differences)


def _mask_folders(tmp_path: Path) -> tuple[Path, Path]:
    files, folders = tmp_path / "files", tmp_path / "folders"
    files.mkdir()
    (folders / "case_00015").mkdir(parents=True)
    shutil.copyfile(SMALL, files / "case_00015.nii.gz")
    shutil.copyfile(SMALL, folders / "case_00015" / "segmentation.nii.gz")
    return files, folders


def test_cli_writes_kits_layout_from_both_mask_layouts(tmp_path):
    files, folders = _mask_folders(tmp_path)
    assert find_masks(files) == [files / "case_00015.nii.gz"]
    assert case_name(find_masks(folders)[0]) == "case_00015"
    assert cli.main(["phantoms", "--masks", str(files), "--out", str(tmp_path / "a"), "--seed", "5"]) == 0
    assert cli.main(["phantoms", "--masks", str(folders), "--out", str(tmp_path / "b"), "--seed", "5"]) == 0
    images = [np.asarray(nib.load(str(tmp_path / d / "case_00015" / "imaging.nii.gz")).dataobj) for d in "ab"]
    assert np.array_equal(*images)
    _assert_same_geometry(SMALL, tmp_path / "a" / "case_00015")


def test_no_tumor_renders_the_real_tumor_as_kidney_with_the_same_kidneys(tmp_path, small):
    """`phantoms --no-tumor`: the same kidney-and-tumor region, all of it kidney, painted as kidney."""
    files, _ = _mask_folders(tmp_path)
    assert cli.main(["phantoms", "--masks", str(files), "--out", str(tmp_path / "t"), "--seed", "3"]) == 0
    assert cli.main(["phantoms", "--masks", str(files), "--out", str(tmp_path / "h"), "--seed", "3", "--no-tumor"]) == 0
    labels, _ = small
    healthy = np.asarray(nib.load(str(tmp_path / "h" / "case_00015" / "segmentation.nii.gz")).dataobj)
    assert (labels == 2).any() and not (healthy == 2).any()
    np.testing.assert_array_equal(healthy > 0, labels > 0)
    images = {d: np.asarray(nib.load(str(tmp_path / d / "case_00015" / "imaging.nii.gz")).dataobj).astype(float)
              for d in "th"}
    tumor, kidney = labels == 2, labels == 1
    # the tumor region takes the kidney's look: closer to the kidney's median than with the tumor painted
    gap = {d: abs(np.median(images[d][tumor]) - np.median(images[d][kidney])) for d in "th"}
    assert gap["h"] < gap["t"]


def test_the_healthy_share_of_training_phantoms_is_a_seeded_draw_per_name():
    names = [f"case_{i:05d}{suffix}" for i in range(300) for suffix in ("", "_v1")]
    drawn = [is_healthy_phantom(0, name, 0.3) for name in names]
    assert 0.25 < np.mean(drawn) < 0.35
    assert drawn == [is_healthy_phantom(0, name, 0.3) for name in names]  # reproducible
    assert [is_healthy_phantom(1, name, 0.3) for name in names] != drawn  # and the run seed's
    assert not any(is_healthy_phantom(0, name, 0.0) for name in names)
    with pytest.raises(ValueError, match="healthy share"):
        is_healthy_phantom(0, "case_00000", 1.5)


def _assert_labels_where_the_mask_has_them(mask: nib.Nifti1Image, case_dir: Path) -> np.ndarray:
    """Every voxel of the case's segmentation maps (through both affines) onto a mask voxel of the
    same label; returns the segmentation."""
    segmentation = nib.load(str(case_dir / "segmentation.nii.gz"))
    labels = np.asarray(segmentation.dataobj)
    assert nib.load(str(case_dir / "imaging.nii.gz")).shape == labels.shape
    to_mask = np.linalg.inv(mask.affine) @ segmentation.affine
    ijk = np.argwhere(np.ones(labels.shape, bool))
    source = np.rint(ijk @ to_mask[:3, :3].T + to_mask[:3, 3]).astype(int)
    inside = np.all((source >= 0) & (source < mask.shape), axis=1)
    expected = np.zeros(len(ijk), np.uint8)
    expected[inside] = np.asarray(mask.dataobj)[tuple(source[inside].T)]
    assert np.array_equal(labels[tuple(ijk.T)], expected)
    return labels


def test_a_short_field_of_view_keeps_a_few_centimetres_through_the_kidneys_where_the_mask_has_them(tmp_path):
    flipped = _flipped_small()
    (tmp_path / "in").mkdir()
    nib.save(flipped, str(tmp_path / "in" / "case_00015.nii.gz"))
    for seed in (3, 4):
        out = tmp_path / f"short{seed}"
        args = ["phantoms", "--masks", str(tmp_path / "in"), "--out", str(out), "--seed", str(seed), "--field-of-view", "short"]
        assert cli.main(args) == 0
        labels = _assert_labels_where_the_mask_has_them(flipped, out / "case_00015")
        slice_mm = float(nib.load(str(out / "case_00015" / "segmentation.nii.gz")).header.get_zooms()[0])
        assert nib.aff2axcodes(nib.load(str(out / "case_00015" / "imaging.nii.gz")).affine) == ("I", "P", "L")
        assert 45.0 - slice_mm <= labels.shape[0] * slice_mm <= 150.0 + slice_mm
        assert (labels == 1).sum() > 1000


def test_cli_refuses_to_overwrite_unless_asked(tmp_path, caplog):
    files, _ = _mask_folders(tmp_path)
    out = tmp_path / "out"
    (out / "case_00015").mkdir(parents=True)
    with caplog.at_level(logging.ERROR):
        assert cli.main(["phantoms", "--masks", str(files), "--out", str(out)]) == 1
    assert "--overwrite" in caplog.text
    assert not (out / "case_00015" / "imaging.nii.gz").exists()
    assert cli.main(["phantoms", "--masks", str(files), "--out", str(out), "--overwrite", "--cases", "1"]) == 0
    assert (out / "case_00015" / "imaging.nii.gz").exists()
    assert cli.main(["phantoms", "--masks", str(tmp_path / "empty"), "--out", str(out)]) == 1


def test_cli_help_lists_phantoms(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "phantoms" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["phantoms", "--help"])
    assert "--overwrite" in capsys.readouterr().out


def test_progress_falls_back_to_logging_without_tqdm(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with caplog.at_level(logging.INFO):
        assert list(_progress([Path("case_00001.nii.gz")], True)) == [Path("case_00001.nii.gz")]
    assert "phantom 1/1: case_00001" in caplog.text
