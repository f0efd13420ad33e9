"""Issue 6: every input a user can get wrong ends with one line on stderr, no traceback, a non-zero
exit code and no output file (nor a ``.part`` leftover), before any model runs."""
from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import KidneyTumorSegLib.cascade as cascade_module
from KidneyTumorSegLib.cli.main import main
from synthetic_cases import phantom_ct, steered_bundle, working_affine, write_nifti

torch.set_num_threads(1)

SHAPE = (16, 48, 48)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return steered_bundle(tmp_path_factory.mktemp("bad") / "bundle", ("stage1", "KT"), {"stage1": 10.0, "KT": 10.0},
                          heat=0.0, kidney_patch=(16, 64, 64))


@pytest.fixture
def model_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every network the cascade turns into a predictor from now on."""
    made: list[str] = []
    real = cascade_module.make_predictor

    def recording(network, *args, **kwargs):
        made.append(type(network).__name__)
        return real(network, *args, **kwargs)

    monkeypatch.setattr(cascade_module, "make_predictor", recording)
    return made


def _ct(folder: Path, array: np.ndarray, name: str = "ct.nii.gz") -> Path:
    return write_nifti(folder / name, array, working_affine())


def _good(folder: Path) -> Path:
    return _ct(folder, phantom_ct(SHAPE))


# Each case builds its input in a folder and returns (changed options, text the error must contain).
# The default argv is `segment <folder>/ct.nii.gz -o <folder>/out/seg.nii.gz --bundle <bundle> ...`.


def _missing_file(folder: Path) -> tuple[dict, str]:
    return {"image": folder / "absent.nii.gz"}, "no such file"


def _text_file(folder: Path) -> tuple[dict, str]:
    (folder / "ct.nii.gz").write_text("this is not an image\n", encoding="utf-8")
    return {}, "cannot read image"


def _truncated(folder: Path) -> tuple[dict, str]:
    path = _good(folder)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return {}, "cannot read image"


def _not_gzip(folder: Path) -> tuple[dict, str]:
    path = _good(folder)
    path.write_bytes(gzip.decompress(path.read_bytes())[:2000])  # a raw NIfTI named .nii.gz, cut short
    return {}, "cannot read image"


def _two_d(folder: Path) -> tuple[dict, str]:
    nib.save(nib.Nifti1Image(np.zeros((64, 64), np.int16), np.eye(4)), str(folder / "ct.nii.gz"))
    return {}, "expected a 3D image, got 2 dimensions"


def _four_d(folder: Path) -> tuple[dict, str]:
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 16, 2), np.int16), np.eye(4)), str(folder / "ct.nii.gz"))
    return {}, "expected a 3D image, got 4 dimensions"


def _constant(folder: Path) -> tuple[dict, str]:
    _ct(folder, np.full(SHAPE, 40, np.int16))
    return {}, "image is constant"


def _nan(folder: Path) -> tuple[dict, str]:
    ct = phantom_ct(SHAPE).astype(np.float32)
    ct[3, 10, 10:20] = np.nan
    _ct(folder, ct)
    return {}, f"image holds NaN or infinite values in 10 of {ct.size} voxels (0.0271 %); --force segments it with them as air"


def _mr_like(folder: Path) -> tuple[dict, str]:
    _ct(folder, np.random.default_rng(0).integers(0, 2000, SHAPE).astype(np.int16))
    return {}, "does not look like CT"


def _tiny(folder: Path) -> tuple[dict, str]:
    _ct(folder, phantom_ct((8, 16, 16)))
    return {}, "image too small"


def _empty_bundle(folder: Path) -> tuple[dict, str]:
    _good(folder)
    (folder / "empty").mkdir()
    return {"--bundle": folder / "empty"}, "not a model bundle"


def _garbage_bundle(folder: Path) -> tuple[dict, str]:
    _good(folder)
    (folder / "garbage").mkdir()
    (folder / "garbage" / "manifest.json").write_bytes(np.random.default_rng(1).bytes(4096))
    return {"--bundle": folder / "garbage"}, "malformed manifest"


def _no_bundle(folder: Path) -> tuple[dict, str]:
    _good(folder)
    return {"--bundle": folder / "nowhere"}, "model bundle folder not found"


def _output_folder_missing(folder: Path) -> tuple[dict, str]:
    _good(folder)
    return {"-o": folder / "nowhere" / "seg.nii.gz"}, "output folder does not exist"


def _output_is_a_folder(folder: Path) -> tuple[dict, str]:
    _good(folder)
    (folder / "out" / "seg.nii.gz").mkdir(parents=True)
    return {}, "is a folder"


def _report_folder_missing(folder: Path) -> tuple[dict, str]:
    _good(folder)
    return {"--report": folder / "nowhere" / "report.json"}, "output folder does not exist"


def _bad_output_name(folder: Path) -> tuple[dict, str]:
    _good(folder)
    return {"-o": folder / "out" / "seg.png"}, "output must end with"


def _bad_uncertainty_name(folder: Path) -> tuple[dict, str]:
    _good(folder)
    return {"--uncertainty": folder / "out" / "u.seg.nrrd"}, "--uncertainty must end with .nii.gz, .nii or .nrrd"


def _uncertainty_folder_missing(folder: Path) -> tuple[dict, str]:
    _good(folder)
    return {"--uncertainty": folder / "nowhere" / "u.nii.gz"}, "output folder does not exist"


def _bad_review_mask_name(folder: Path) -> tuple[dict, str]:
    _good(folder)
    return {"--review-mask": folder / "out" / "r.seg.nrrd"}, "--review-mask must end with .nii.gz, .nii or .nrrd"


def _box_outside(folder: Path) -> tuple[dict, str]:
    _good(folder)
    (folder / "box.json").write_text(json.dumps({"ras": [[500, 500, 500], [600, 600, 600]]}), encoding="utf-8")
    return {"--box": folder / "box.json"}, "wholly outside the image"


def _box_ijk_outside(folder: Path) -> tuple[dict, str]:
    _good(folder)
    (folder / "box.json").write_text(json.dumps({"boxes": {"crop": {"ijk": [[100, 120], [0, 5], [0, 5]]}}}), encoding="utf-8")
    return {"--box": folder / "box.json"}, "wholly outside the image"


def _box_not_json(folder: Path) -> tuple[dict, str]:
    _good(folder)
    (folder / "box.json").write_text("{ras: [", encoding="utf-8")
    return {"--box": folder / "box.json"}, "box file is not valid JSON"


def _box_missing(folder: Path) -> tuple[dict, str]:
    _good(folder)
    return {"--box": folder / "absent.json"}, "box file not found"


CASES: dict[str, Callable[[Path], tuple[dict, str]]] = {
    "missing file": _missing_file, "text file named .nii.gz": _text_file, "truncated gzip NIfTI": _truncated,
    "raw NIfTI named .nii.gz": _not_gzip, "2D image": _two_d, "4D image": _four_d, "constant volume": _constant,
    "NaN voxels": _nan, "MR-like volume": _mr_like, "tiny volume": _tiny, "empty bundle folder": _empty_bundle,
    "garbage bundle folder": _garbage_bundle, "nonexistent bundle": _no_bundle,
    "missing output folder": _output_folder_missing, "output is a folder": _output_is_a_folder,
    "missing report folder": _report_folder_missing, "bad output name": _bad_output_name,
    "bad uncertainty name": _bad_uncertainty_name, "missing uncertainty folder": _uncertainty_folder_missing,
    "bad review mask name": _bad_review_mask_name,
    "box outside the image": _box_outside, "ijk box outside the image": _box_ijk_outside,
    "box file not JSON": _box_not_json, "box file missing": _box_missing,
}


def _run(folder: Path, bundle: Path, changes: dict, capsys, command: str = "segment") -> tuple[int, str, str]:
    (folder / "out").mkdir(exist_ok=True)
    options = {"image": folder / "ct.nii.gz", "-o": folder / "out" / "seg.nii.gz", "--bundle": bundle,
               "--allow-partial": None, "--device": "cpu", "--progress": "json", **changes}
    argv = [command, str(options.pop("image"))]
    for key, value in options.items():
        argv += [key, str(value)] if value is not None else [key]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _check_refused(code: int, out: str, err: str, message: str, folder: Path, model_runs: list[str]) -> None:
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kidneytumorseg: error: "), err
    assert message in lines[0]
    assert "Traceback" not in err and out == ""  # no progress, no "done"
    assert model_runs == []  # refused before any model ran
    produced = [p for p in (folder / "out").rglob("*") if p.is_file()]
    assert produced == []
    assert not [p for p in folder.rglob("*") if ".part" in p.name]


@pytest.mark.parametrize("name", list(CASES))
def test_refused_input(name: str, bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    changes, message = CASES[name](tmp_path)
    _check_refused(*_run(tmp_path, bundle, changes, capsys), message, tmp_path, model_runs)


@pytest.mark.parametrize("content, message", [
    ({"boxes": {"segmentation": None}}, "no crop box"),
    ({"boxes": {"crop": None}}, "no crop box"),
    ({"boxes": [1, 2]}, "no crop box"),
    ([1, 2, 3], "must hold a JSON object"),
    ({"ras": [[0, 0, 0]]}, "box 'ras' must be two finite corners"),
    ({"ras": [["a", 0, 0], [1, 1, 1]]}, "box 'ras' must be two finite corners"),
    ({"ras": "nan"}, "box 'ras' must be two finite corners"),
    ({"ijk": [[0, 5], [0, 5]]}, "box 'ijk' must be three inclusive ranges"),
    ({"ijk": [[5, 0], [0, 5], [0, 5]]}, "ranges must run low to high"),
    ({"ijk": [[0.5, 5], [0, 5], [0, 5]]}, "box 'ijk' must hold whole voxel indices (integers), got 0.5"),
    ({"crop": {}}, "neither 'ras' nor 'ijk'"),
    ({"ijk": [[0, 40], [0, 40], [0, 10]], "ras": [[20, 10, 0], [40, 30, 20]]},
     "the crop box's 'ijk' [[0, 40], [0, 40], [0, 10]] and 'ras' [[20, 10, 0], [40, 30, 20]] disagree"),
])
def test_malformed_box_files(content, message, bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    _good(tmp_path)
    (tmp_path / "box.json").write_text(json.dumps(content), encoding="utf-8")
    _check_refused(*_run(tmp_path, bundle, {"--box": tmp_path / "box.json"}, capsys), message, tmp_path, model_runs)


def test_locate_refuses_the_same_way(bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    changes, message = _truncated(tmp_path)
    changes["-o"] = tmp_path / "out" / "boxes.json"
    _check_refused(*_run(tmp_path, bundle, changes, capsys, "locate"), message, tmp_path, model_runs)


def test_unwritable_output_folder(bundle: Path, tmp_path: Path, capsys, model_runs, monkeypatch) -> None:
    _good(tmp_path)
    out = tmp_path / "out"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == out and mode == os.W_OK else real_access(path, mode))
    _check_refused(*_run(tmp_path, bundle, {}, capsys), "output folder is not writable", tmp_path, model_runs)


def test_existing_output_is_left_untouched(bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    _good(tmp_path)
    existing = tmp_path / "out" / "seg.nii.gz"
    existing.parent.mkdir()
    existing.write_bytes(b"precious bytes")
    code, out, err = _run(tmp_path, bundle, {}, capsys)
    assert code == 1 and err.splitlines() == [f"kidneytumorseg: error: {existing}: already exists (use --overwrite to replace it)"]
    assert existing.read_bytes() == b"precious bytes" and model_runs == []
    assert [p.name for p in existing.parent.iterdir()] == ["seg.nii.gz"]


def test_existing_uncertainty_map_is_left_untouched(bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    _good(tmp_path)
    existing = tmp_path / "u.nii.gz"
    existing.write_bytes(b"precious bytes")
    code, _, err = _run(tmp_path, bundle, {"--uncertainty": existing}, capsys)
    assert code == 1 and "already exists" in err and existing.read_bytes() == b"precious bytes"
    assert not (tmp_path / "out" / "seg.nii.gz").exists() and model_runs == []


def test_existing_report_is_left_untouched(bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    _good(tmp_path)
    report = tmp_path / "report.json"
    report.write_text("{}", encoding="utf-8")
    code, _, err = _run(tmp_path, bundle, {"--report": report}, capsys)
    assert code == 1 and "already exists" in err and report.read_text(encoding="utf-8") == "{}"
    assert not (tmp_path / "out" / "seg.nii.gz").exists() and model_runs == []


@pytest.mark.parametrize("option, value, message", [
    ("--overlap", "1.0", "--overlap must be in [0, 1)"),
    ("--batch-size", "0", "--batch-size must be"),
    ("--members", "KT,T9", "unknown ensemble members: T9 (valid: KT, K1, K2, T-vnet, T-unet, T2D-ax-dice, "),
])
def test_bad_model_options(option: str, value: str, message: str, bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    _good(tmp_path)
    _check_refused(*_run(tmp_path, bundle, {option: value}, capsys), message, tmp_path, model_runs)


def test_a_valid_case_still_works_and_overwrite_replaces(bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    _good(tmp_path)
    code, out, err = _run(tmp_path, bundle, {}, capsys)
    assert code == 0 and err == "" and json.loads(out.splitlines()[-1])["type"] == "done"
    assert model_runs == ["VNet", "VNet"]
    written = tmp_path / "out" / "seg.nii.gz"
    assert nib.load(written).shape == SHAPE
    written.write_bytes(b"old")
    code, _, _ = _run(tmp_path, bundle, {"--overwrite": None}, capsys)
    assert code == 0 and nib.load(written).shape == SHAPE
    assert sorted(p.name for p in written.parent.iterdir()) == ["seg.nii.gz"]


def test_mr_like_volume_is_segmented_with_force(bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    _mr_like(tmp_path)
    code, _, err = _run(tmp_path, bundle, {"--force": None}, capsys)
    assert code == 0, err
    assert nib.load(tmp_path / "out" / "seg.nii.gz").shape == SHAPE


def test_a_missing_optional_package_is_reported_before_any_work(bundle: Path, tmp_path: Path, capsys, model_runs,
                                                                 monkeypatch) -> None:
    import importlib.util

    _good(tmp_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    _check_refused(*_run(tmp_path, bundle, {"--qa": tmp_path / "out" / "qa.png"}, capsys), "--qa needs matplotlib",
                   tmp_path, model_runs)


def test_no_kidney_found_suggests_the_whole_volume(tmp_path: Path, capsys) -> None:
    blind = steered_bundle(tmp_path / "blind", ("stage1", "KT"), {"stage1": -10.0}, heat=0.0, kidney_patch=(16, 64, 64))
    _good(tmp_path)
    code, out, err = _run(tmp_path, blind, {}, capsys)
    assert code == 1 and len(err.splitlines()) == 1 and "--box full" in err and "Traceback" not in err
    assert all(json.loads(line)["type"] == "progress" for line in out.splitlines())  # no "done"
    assert list((tmp_path / "out").iterdir()) == []
    code, _, _ = _run(tmp_path, blind, {"--box": "full"}, capsys)
    assert code == 0 and nib.load(tmp_path / "out" / "seg.nii.gz").shape == SHAPE


def _link_to(folder: Path, kind: str) -> Path:
    """``folder/out/seg.nii.gz`` as the input itself, or a symbolic or hard link to it."""
    if kind == "same path":
        return folder / "ct.nii.gz"
    link = folder / "out" / "seg.nii.gz"
    link.parent.mkdir(exist_ok=True)
    (link.symlink_to if kind == "symbolic link" else link.hardlink_to)(folder / "ct.nii.gz")
    return link


@pytest.mark.parametrize("kind", ["same path", "symbolic link", "hard link"])
@pytest.mark.parametrize("option", ["-o", "--report", "--uncertainty"])
def test_an_output_that_is_the_input_is_refused_even_with_overwrite(kind: str, option: str, bundle: Path, tmp_path: Path,
                                                                   capsys, model_runs) -> None:
    original = _good(tmp_path).read_bytes()
    output = _link_to(tmp_path, kind)
    changes = {option: output, "--overwrite": None}
    if option != "-o":
        changes["-o"] = tmp_path / "out" / "labels.nii.gz"
    code, out, err = _run(tmp_path, bundle, changes, capsys)
    assert code == 1 and err.splitlines() == [f"kidneytumorseg: error: {output}: is the input {tmp_path / 'ct.nii.gz'}"
                                              + ("" if kind == "same path" else ", through a link")
                                              + "; write the output under another name (--overwrite never replaces an input)"]
    assert (tmp_path / "ct.nii.gz").read_bytes() == original and output.read_bytes() == original and model_runs == []
    assert not (tmp_path / "out" / "labels.nii.gz").exists()


def test_the_box_file_is_an_input_too(bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    _good(tmp_path)
    box = tmp_path / "box.json"
    box.write_text(json.dumps({"ijk": [[0, 15], [0, 47], [0, 47]]}), encoding="utf-8")
    code, _, err = _run(tmp_path, bundle, {"--box": box, "--report": box, "--overwrite": None}, capsys)
    assert code == 1 and f"{box}: is the input {box};" in err
    assert json.loads(box.read_text(encoding="utf-8")) == {"ijk": [[0, 15], [0, 47], [0, 47]]} and model_runs == []


def test_two_outputs_of_one_name_are_refused(bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    _good(tmp_path)
    seg = tmp_path / "out" / "seg.nii.gz"
    _check_refused(*_run(tmp_path, bundle, {"--uncertainty": seg}, capsys), f"{seg}: given for two outputs", tmp_path,
                   model_runs)


@pytest.mark.parametrize("kind", ["same path", "symbolic link"])
def test_locate_refuses_to_write_over_its_input(kind: str, bundle: Path, tmp_path: Path, capsys, model_runs) -> None:
    original = _good(tmp_path).read_bytes()
    output = _link_to(tmp_path, kind)
    code, _, err = _run(tmp_path, bundle, {"-o": output, "--overwrite": None}, capsys, "locate")
    assert code == 1 and len(err.splitlines()) == 1 and "is the input" in err
    assert (tmp_path / "ct.nii.gz").read_bytes() == original and model_runs == []


def test_nan_voxels_are_air_with_force(bundle: Path, tmp_path: Path, capsys, model_runs, caplog) -> None:
    ct = phantom_ct(SHAPE).astype(np.float32)
    air = ct == ct.min()
    holes = air & (np.random.default_rng(2).random(SHAPE) < 0.5)  # NaN and infinities where the phantom holds air
    ct[holes] = np.where(np.arange(np.count_nonzero(holes)) % 2, np.nan, np.inf)
    _ct(tmp_path, ct)
    code, _, err = _run(tmp_path, bundle, {"--force": None}, capsys)
    assert code == 0, err
    assert f"image holds NaN or infinite values in {np.count_nonzero(holes)} of {ct.size} voxels" in caplog.text
    assert "segmented with them as air (-1000 HU, --force)" in caplog.text
    filled = tmp_path / "filled"
    filled.mkdir()
    _ct(filled, np.where(holes, -1000.0, ct).astype(np.float32))
    assert _run(filled, bundle, {"--force": None}, capsys)[0] == 0
    labels = np.asarray(nib.load(tmp_path / "out" / "seg.nii.gz").dataobj)
    assert labels.any() and np.array_equal(labels, np.asarray(nib.load(filled / "out" / "seg.nii.gz").dataobj))
