"""The cascade benchmark end to end on a small real-mask phantom: JSON with both modes, two
depths, per-model seconds, peak memory and the speed-up of the cascade over ``--box full``."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MASK = ROOT / "Testing" / "Data" / "kits19" / "case_00015.nii.gz"  # 46 slices of 3 mm


def test_cascade_benchmark_scales_over_depth_and_compares_with_full(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cascade_benchmark.py"), "--mask", str(MASK),
                    "--untrained", "2", "--slices", "16,32", "--threads", "1", "--crop-from-truth", "--layouts", "channels_last,contiguous",
                    "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert [(r["slices"], r["layout"], r["mode"]) for r in runs] == [
        (depth, layout, mode) for depth in (16, 32) for layout in ("channels_last", "contiguous") for mode in ("cascade", "full")]
    assert all("error" not in r for r in runs), runs
    for run in runs:
        assert run["input_shape"][0] == run["slices"] and run["threads"] == 1
        assert run["peak_rss_mb"] > 0 and run["seconds_end_to_end"] > 0
        assert {"read", "prepare", "KT", "T-vnet", "T2D-ax-dice", "fusion", "write"} <= set(run["seconds"])
    cascade, full = runs[4], runs[5]
    assert all(c <= f for c, f in zip(cascade["crop_shape"], full["crop_shape"]))
    assert full["crop_shape"] == full["working_shape"]
    assert [(s["slices"], s["layout"]) for s in result["speedup_cascade_vs_full"]] == [
        (16, "channels_last"), (16, "contiguous"), (32, "channels_last"), (32, "contiguous")]


def test_cascade_benchmark_compares_runs_with_and_without_the_uncertainty(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cascade_benchmark.py"), "--mask", str(MASK),
                    "--untrained", "2", "--slices", "16", "--threads", "1", "--crop-from-truth", "--modes", "cascade",
                    "--uncertainty", "on,off", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    on, off = result["runs"]
    assert (on["uncertainty"], off["uncertainty"]) == ("on", "off") and "error" not in on and "error" not in off
    assert {"uncertainty", "uncertainty_to_input_grid", "write_uncertainty"} <= set(on["seconds"])
    assert not {"uncertainty", "uncertainty_to_input_grid", "write_uncertainty"} & set(off["seconds"])
    assert 0.0 <= on["review"]["score"] <= 1.0 and off["review"] is None
    assert on["dice"] == off["dice"]  # the labels do not change
    [cost] = result["uncertainty_cost"]
    assert cost["time_ratio"] == round(on["seconds_end_to_end"] / off["seconds_end_to_end"], 3)
    assert cost["peak_rss_ratio"] == round(on["peak_rss_mb"] / off["peak_rss_mb"], 3)
    assert cost["seconds_added"]["uncertainty"] == on["seconds"]["uncertainty"]


def test_benchmark_runs_a_git_commits_engine_beside_this_one_and_compares_labels(tmp_path: Path) -> None:
    """``--baseline HEAD``: the same case through the committed engine (exported by git archive),
    twice per process (``--repeat``), two processes each (``--trials``), labels compared voxel by voxel."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cascade_benchmark.py"), "--mask", str(MASK),
                    "--untrained", "2", "--slices", "16", "--threads", "1", "--crop-from-truth", "--modes", "cascade",
                    "--baseline", "HEAD", "--repeat", "2", "--trials", "2", "--conditions", "a test", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert result["baseline"] == {"ref": "HEAD", "commit": head} and result["conditions"] == "a test"
    assert result["current"]["commit"] == head and result["mask"] == "Testing/Data/kits19/case_00015.nii.gz"
    runs = result["runs"]
    assert [(r["code"], r["trial"], r["engine_in_this_checkout"]) for r in runs] == [
        ("current", 0, True), ("current", 1, True), ("baseline", 0, False), ("baseline", 1, False)]
    for run in runs:
        assert len(run["seconds_end_to_end_each"]) == 2 and run["seconds_end_to_end"] == run["seconds_end_to_end_each"][-1]
        fixed = sum(run["seconds"][step] for step in ("read", "prepare", "to_input_grid", "write"))
        assert abs(run["seconds_fixed"] - fixed) < 0.01 and run["cpu_seconds"] > 0
    [comparison] = result["label_comparisons"]
    assert comparison["a"]["code"] == "current" and comparison["b"]["code"] == "baseline"
    assert comparison["equal"] and comparison["voxels_differing"] == 0


def _benchmark(name: str):
    """benchmarks/<name>.py as a module (the benchmarks folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_session_caches_training_phantoms_with_the_current_generator(tmp_path: Path) -> None:
    """The session's phantom step (run beside the label checks, so the dry run alone does not show
    a failure) caches a complete case of the generator's default style for a real mask."""
    from training_tools.cache import is_complete
    from training_tools.phantom_style import DEFAULT_STYLE
    from training_tools.phantoms import case_name

    gpu_session = _benchmark("gpu_session")
    cache = tmp_path / "cache"
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(MASK, masks / MASK.name)
    subprocess.run(gpu_session.build_cache(masks, 1, cache, 1), cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    case = cache / case_name(MASK)
    assert is_complete(case)
    assert json.loads((case / "meta.json").read_text())["source"]["style"] == DEFAULT_STYLE


def test_gpu_session_widths_keep_the_bundle_under_its_limit() -> None:
    gpu_session = _benchmark("gpu_session")
    size = gpu_session.projected_bundle_mb(gpu_session.TRAINING_WIDTHS)
    assert size <= gpu_session.BUNDLE_LIMIT_MB
    assert size > gpu_session.projected_bundle_mb({})  # the wider models add weights


def _visibility_case(cache: Path, case_id: str, kidney_level: float, seed: int) -> None:
    """A synthetic case whose kidney sits at ``kidney_level`` and whose tumor 0.12 below it."""
    from training_helpers import synthetic_labels
    from training_tools.cache import case_arrays, write_case
    labels = synthetic_labels()
    rng = np.random.default_rng(seed)
    image = np.choose(labels, [0.3, kidney_level, kidney_level - 0.12]).astype(np.float32)
    image += rng.normal(0.0, 0.02, labels.shape).astype(np.float32)
    arrays, meta = case_arrays(np.clip(image, 0.05, 1.0), labels)
    cache.mkdir(parents=True, exist_ok=True)
    write_case(cache, case_id, arrays, meta)


def test_tumor_visibility_scores_visible_tumors_as_the_validation_does(tmp_path: Path) -> None:
    for number, level in enumerate((0.6, 0.7, 0.8)):
        _visibility_case(tmp_path / "train", f"case_{number:05d}", level, number)
    _visibility_case(tmp_path / "val", "case_00010", 0.65, 10)
    out = tmp_path / "visibility.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tumor_visibility.py"), "--train-cache", str(tmp_path / "train"),
                    "--val-cache", str(tmp_path / "val"), "--out", str(out)], check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["training_cases"] == 3 and result["training_tumor_cases"] == 3
    assert result["training_tumor_contrast_sd"]["share_above_2"] == 1.0  # 0.12 against noise of 0.02
    referenced = result["validation"]["kidney_referenced"]
    assert referenced["val_dice"] > 0.8 and referenced["val_healthy_called_tumor"] < 0.05
    assert [row["case"] for row in result["per_case"]] == ["case_00010"]
    assert set(result["per_case"][0]) >= {"local", "kidney_referenced", "tumor_contrast"}


def test_generalisation_gap_scores_training_and_validation_cases_as_validation_does(tmp_path: Path) -> None:
    import torch
    from training_helpers import write_synthetic_case
    from KidneyTumorSegLib.networks.registry import ROLES
    from training_tools.configs import load_config
    from training_tools.validation import validate
    gap = _benchmark("generalisation_gap")
    train = [write_synthetic_case(tmp_path / "train", f"case_{n:05d}", shift_x=2 * n, seed=n) for n in range(4)]
    val = [write_synthetic_case(tmp_path / "val", "case_00010", shift_x=-6, seed=10)]
    run = tmp_path / "runs" / "T2D-ax-dice"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(load_config("T2D-ax-dice", overrides={"base_channels": 2}).to_json()))
    torch.manual_seed(0)
    chosen, exported = ROLES["T2D-ax-dice"].build(2), ROLES["T2D-ax-dice"].build(2)
    torch.save(chosen.state_dict(), run / "best.pt")
    torch.save(exported.state_dict(), run / "model.pt")
    out = tmp_path / "gap.json"
    argv = ["generalisation_gap.py", "--run", str(run), "--train-cache", str(tmp_path / "train"),
            "--val-cache", str(tmp_path / "val"), "--train-cases", "2", "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        gap.main()
    row = json.loads(out.read_text())["runs"][0]
    assert row["role"] == "T2D-ax-dice" and row["weights"] == "best.pt"  # what validation chose comes first
    assert row["training_cases"]["cases"] == ["case_00000", "case_00002"]  # spread over the cache
    spec = ROLES["T2D-ax-dice"]
    expected_train = validate(chosen.eval(), spec, [train[0], train[2]], torch.device("cpu"))
    expected_val = validate(chosen.eval(), spec, val, torch.device("cpu"))
    assert row["training_cases"]["val_dice"] == pytest.approx(expected_train["val_dice"], abs=1e-4)
    assert row["validation_cases"]["val_precision"] == pytest.approx(expected_val["val_precision"], abs=1e-4)
    assert row["dice_gap"] == pytest.approx(row["training_cases"]["val_dice"] - row["validation_cases"]["val_dice"], abs=2e-4)
    role, network, weights = gap.load_run(run, "model")
    assert weights == "model.pt"  # asked for by name, though best.pt is there
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), exported.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), chosen.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        gap.load_run(run, "latest")
