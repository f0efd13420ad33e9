"""Training: two-process DDP on the CPU (gloo) that checkpoints and resumes, exact resume, export round trip."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.bundle import load_bundle
from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
from KidneyTumorSegLib.imageio import Image
from training_tools.configs import load_config
from training_tools.export import export_bundle
from KidneyTumorSegLib.inference import make_predictor, sliding_window_predict
from training_tools.cache import open_cache, working_arrays
from training_tools.logs import read_log
from training_tools.train import TrainOptions, train
from training_tools.validation import validate
from synthetic_cases import working_affine
from training_helpers import write_synthetic_case

REPOSITORY = Path(__file__).resolve().parent.parent
TINY = {"base_channels": 2, "iterations": 4, "batch_size": 1, "checkpoint_interval": 2, "val_interval": 2,
        "log_interval": 1}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    for index, shift in enumerate((0, -30, 40)):
        write_synthetic_case(folder, f"case_{index:05d}", shift_x=shift, seed=index)
    return folder


def _torchrun(cache: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "training_tools.cli", "train", "--config", "K1", "--cache", str(cache), "--out", str(out),
               "--fold", "all", "--device", "cpu", "--threads", "1", "--loader-threads", "1",
               "--set", "patch_size=[16,32,32]", *[f"--set={k}={json.dumps(v)}" for k, v in TINY.items()], *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPOSITORY), str(REPOSITORY / "KidneyTumorSeg")]))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def test_two_process_ddp_training_checkpoints_and_resumes(cache, tmp_path):
    out = tmp_path / "run"
    first = _torchrun(cache, out, "--stop-after", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["iteration"] == 2 and checkpoint["world_size"] == 2
    summary = json.loads((out / "run.json").read_text())
    assert not summary["finished"] and summary["world_size"] == 2
    assert summary["rank_checksums"][0] == summary["rank_checksums"][1]
    assert not (out / "model.pt").exists()

    second = _torchrun(cache, out, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed K1 at iteration 2 of 4" in second.stderr
    summary = json.loads((out / "run.json").read_text())
    assert summary["finished"] and summary["iteration"] == 4
    assert summary["rank_checksums"][0] == summary["rank_checksums"][1]  # the ranks stayed in sync
    rows = read_log(out / "log.csv")
    assert [r["iteration"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # the counter continued
    assert [r["iteration"] for r in rows if "val_dice" in r] == [2, 4]
    assert (out / "model.pt").is_file() and (out / "curves.png").is_file() and (out / "tensorboard").is_dir()


def _options(cache: Path, out: Path, **changes) -> TrainOptions:
    return TrainOptions(cache=cache, out=out, device="cpu", fold=None, threads=1, loader_threads=1,
                        tensorboard=False, **changes)


def test_resume_continues_exactly_like_an_uninterrupted_run(cache, tmp_path):
    config = load_config("T-unet", "paper", {**TINY, "patch_size": [16, 32, 32]})
    train(config, _options(cache, tmp_path / "whole"))
    train(config, _options(cache, tmp_path / "parts", stop_after=2))
    with pytest.raises(FileExistsError):
        train(config, _options(cache, tmp_path / "parts"))  # a checkpoint exists: needs --resume
    train(config, _options(cache, tmp_path / "parts", resume=True))
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "model.pt", weights_only=True)
    assert whole.keys() == parts.keys()
    for key in whole:
        assert torch.equal(whole[key], parts[key]), key


def test_validation_uses_the_held_out_fold(cache, tmp_path):
    config = load_config("T2D-ax-bce", "paper", {**TINY, "iterations": 1, "patch_size": [64, 64]})
    summary = train(config, TrainOptions(cache=cache, out=tmp_path / "r", device="cpu", fold=0, folds=3,
                                         threads=1, tensorboard=False))
    assert len(summary["training_cases"]) == 2 and len(summary["validation_cases"]) == 1
    assert summary["validation_held_out"]
    assert not set(summary["training_cases"]) & set(summary["validation_cases"])
    assert 0.0 <= summary["validation"]["val_dice"] <= 1.0


def test_validation_runs_the_engine_over_whole_crops_of_cases_apart_from_training(cache, tmp_path):
    """Scores are those of the engine's sliding window (its overlap, blending, the tumor models
    inside kidney and tumor) over the whole crop of the validation cache's case, with the weights
    model.pt keeps: validating on sampled training patches gives other numbers."""
    validation = tmp_path / "validation"
    write_synthetic_case(validation, "case_00100", shift_x=20, seed=9)
    config = load_config("T-vnet", "paper", {**TINY, "iterations": 4, "patch_size": [16, 32, 32]})
    out = tmp_path / "run"
    summary = train(config, _options(cache, out, val_cache=validation))
    assert summary["validation_cases"] == ["case_00100"] and summary["validation_held_out"]
    assert not set(summary["training_cases"]) & {"case_00100"}
    assert [h["iteration"] for h in summary["history"]] == [2, 4]
    chosen = summary["chosen"]
    assert chosen == max(summary["history"], key=lambda h: h["val_dice"])
    network = config.spec.build(config.base_channels)
    network.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    case = open_cache(validation)[0]
    labels = np.asarray(case.labels)
    probability = sliding_window_predict(np.asarray(case.image, np.float32), make_predictor(network, "cpu"),
                                         (32, 64, 64), InferenceOptions().overlap, region=labels > 0)[0]
    called, tumor = (probability >= 0.5) & (labels > 0), labels == 2
    tp, fp, fn = (called & tumor).sum(), (called & ~tumor).sum(), (~called & tumor).sum()
    assert chosen["val_dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-9)
    assert chosen["val_healthy_called_tumor"] == pytest.approx((called & (labels == 1)).sum() / (labels == 1).sum())
    assert chosen["val_chance_precision"] == pytest.approx(tumor.sum() / (labels > 0).sum())
    from training_tools.export import run_provenance

    assert run_provenance(summary)["chosen"] == chosen  # a bundle says which validation its weights scored
    with pytest.raises(ValueError, match="is the training cache"):
        train(config, _options(cache, tmp_path / "again", val_cache=cache))


def test_a_non_finite_step_leaves_the_weights_as_they_were(tmp_path, caplog):
    """A batch whose loss is NaN (here: an image of NaN) skips its optimizer step instead of
    writing NaN into every weight, as a bf16 overflow once did to a 4000-iteration run."""
    folder = tmp_path / "cache"
    case = write_synthetic_case(folder, "case_00000")
    image = case.folder / "image.npy"
    np.save(image, np.full(np.load(image).shape, np.nan, np.float16))
    config = load_config("K1", "paper", {**TINY, "iterations": 2, "patch_size": [16, 32, 32]})
    out = tmp_path / "run"
    train(config, _options(folder, out))
    torch.manual_seed(config.seed)
    initial = config.spec.build(config.base_channels).state_dict()
    trained = torch.load(out / "model.pt", weights_only=True)
    for key, value in initial.items():
        if value.is_floating_point():
            assert torch.equal(trained[key], value), key
    assert caplog.text.count("non-finite loss or gradient, step skipped") == 2


@pytest.mark.parametrize("half", [False, True])
def test_export_writes_a_bundle_the_inference_side_loads(cache, tmp_path, half):
    runs = []
    for role, patch in (("stage1", [16, 32, 32]), ("KT", [16, 32, 32])):
        config = load_config(role, "paper", {**TINY, "iterations": 1, "patch_size": patch})
        train(config, _options(cache, tmp_path / role))
        runs.append(tmp_path / role)
    bundle_dir = export_bundle(runs, tmp_path / "bundle", "test", "a test bundle", "3 synthetic cases", demo=True,
                               extra_provenance={"evaluation": {"kidney_dice": 0.5}}, half=half)
    bundle = load_bundle(bundle_dir)
    assert bundle.roles == ("stage1", "KT") and bundle.is_demo
    provenance = bundle.manifest["provenance"]
    assert provenance["data"] == "3 synthetic cases" and provenance["evaluation"] == {"kidney_dice": 0.5}
    assert provenance["runs"]["KT"]["config"]["base_channels"] == 2
    assert provenance["runs"]["KT"]["folder"] == f"{tmp_path.name}/KT"  # relative to the work folder: no machine path
    assert provenance["weights_dtype"] == ("float16" if half else "float32")
    assert "git" in provenance
    # Inference normalises a CT exactly as the training cache did: the bundle holds the trained HU window.
    ct = (np.indices((12, 40, 40)).sum(axis=0) * 25 - 500).astype(np.int16)  # -500 … 1725 HU: past both ends
    normalized, _ = working_arrays(ct, np.zeros(ct.shape, np.uint8), working_affine())
    prepared = Cascade(bundle, InferenceOptions(device="cpu")).prepare(Image(ct, working_affine()))
    np.testing.assert_allclose(prepared.normalized, normalized, atol=1e-5)
    for role in ("stage1", "KT"):
        trained = torch.load(tmp_path / role / "model.pt", weights_only=True)
        loaded = bundle.networks[role].state_dict()
        for key, value in trained.items():
            expected = value.half().float() if half and value.is_floating_point() else value
            assert torch.equal(loaded[key], expected), key


def test_export_skips_what_is_not_a_run_and_a_missing_stage1_is_one_line(cache, tmp_path, capsys, caplog):
    """`export work/runs/*` as a shell expands it: run folders and the ROLE.log files beside them."""
    from training_tools.cli import main

    runs = tmp_path / "work" / "runs"
    for role in ("stage1", "KT"):
        train(load_config(role, "paper", {**TINY, "iterations": 1, "patch_size": [16, 32, 32]}), _options(cache, runs / role))
        (runs / f"{role}.log").write_text("training log\n", encoding="utf-8")
    (runs / "empty").mkdir()
    everything = sorted(runs.iterdir())
    argv = ["export", *map(str, everything), "--out", str(tmp_path / "bundle"), "--data-description", "3 synthetic cases"]
    assert main(argv) == 0
    for path in ("KT.log", "stage1.log", "empty"):
        assert f"{runs / path}: skipped, not a training run (no run.json)" in caplog.text
    assert load_bundle(tmp_path / "bundle").roles == ("stage1", "KT")

    capsys.readouterr()
    argv = ["export", str(runs / "KT"), str(runs / "KT.log"), "--out", str(tmp_path / "no-stage1"), "--data-description", "d"]
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        "kidneytumorseg-train: error: the cascade needs stage1: add the run folder of each (the runs given train KT) "
        "(-v shows the traceback)"]
    assert not (tmp_path / "no-stage1").exists()
    assert main(["export", str(runs / "KT.log"), "--out", str(tmp_path / "none"), "--data-description", "d"]) == 1
    assert "none of the 1 paths given is a training run" in capsys.readouterr().err


@pytest.mark.parametrize("role", ["stage1", "KT", "T-unet", "T2D-sa-bce"])
def test_the_smoke_preset_trains_each_architecture_and_holds_no_mask_out(role, cache, tmp_path):
    from training_tools.demo_bundle import held_out_count

    config = load_config(role, "smoke")
    assert config.iterations == 2 and config.base_channels == 4 and config.augmentation is None
    summary = train(config, _options(cache, tmp_path / role))
    assert summary["finished"] and (tmp_path / role / "model.pt").is_file()
    assert held_out_count(None, "smoke") == 0 and held_out_count(None, "demo-cpu") == 10 and held_out_count(3, "smoke") == 3


def test_init_weights_starts_a_new_run_from_trained_weights(cache, tmp_path):
    config = load_config("T-unet", "paper", {**TINY, "patch_size": [16, 32, 32], "seed": 7})  # another start than ``tuned``
    train(config, _options(cache, tmp_path / "base"))
    base = torch.load(tmp_path / "base" / "model.pt", weights_only=True)
    tuned = load_config("T-unet", "paper", {**TINY, "iterations": 1, "patch_size": [16, 32, 32]})
    summary = train(tuned, _options(cache, tmp_path / "tuned", init_weights=tmp_path / "base" / "model.pt"))
    fresh = train(tuned, _options(cache, tmp_path / "fresh"))
    after_one = torch.load(tmp_path / "tuned" / "model.pt", weights_only=True)
    from_scratch = torch.load(tmp_path / "fresh" / "model.pt", weights_only=True)
    step = max(float((after_one[k].float() - base[k].float()).abs().max()) for k in base if base[k].is_floating_point())
    apart = max(float((from_scratch[k].float() - base[k].float()).abs().max()) for k in base if base[k].is_floating_point())
    assert step <= 2.5 * config.learning_rate  # one Adam step away from the weights it started from
    assert apart > 10 * step
    assert summary["init_weights"] == str((tmp_path / "base" / "model.pt").resolve()) and fresh["init_weights"] is None
    from training_tools.export import run_provenance

    record = run_provenance(summary)
    assert record["initialised_from"]["config"]["seed"] == 7 and record["initialised_from"]["iteration"] == 4
    assert "initialised_from" not in run_provenance(fresh)


def test_init_weights_refuses_weights_of_another_network(cache, tmp_path):
    config = load_config("T-unet", "paper", {**TINY, "iterations": 1, "patch_size": [16, 32, 32]})
    train(config, _options(cache, tmp_path / "narrow"))
    wider = load_config("T-unet", "paper", {**TINY, "iterations": 1, "base_channels": 4, "patch_size": [16, 32, 32]})
    with pytest.raises(ValueError, match="do not fit the configured network of T-unet"):
        train(wider, _options(cache, tmp_path / "wide", init_weights=tmp_path / "narrow" / "model.pt"))
    with pytest.raises(FileNotFoundError, match="initial weights for T-unet not found"):
        train(config, _options(cache, tmp_path / "missing", init_weights=tmp_path / "nothing.pt"))


def test_the_loop_follows_the_configured_loss_weights_poly_schedule_and_adam_weight_decay(cache, tmp_path):
    """SPEC §2 through the training loop itself: each logged loss is the weighted sum of its
    parts, each learning rate the poly schedule's, and the optimizer Adam with the weight decay."""
    from training_tools.schedule import poly_lr

    config = load_config("T-unet", "paper", {**TINY, "patch_size": [16, 32, 32],
                                             "loss_weights": {"segmentation": 1.0, "regression": 0.25}})
    train(config, _options(cache, tmp_path / "run"))
    rows = [r for r in read_log(tmp_path / "run" / "log.csv") if "loss" in r]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert row["lr"] == pytest.approx(poly_lr(config.learning_rate, row["iteration"] - 1, 4, config.poly_power), rel=1e-5)
        assert row["loss"] == pytest.approx(row["seg_loss"] + 0.25 * row["reg_loss"], rel=1e-4)
        assert row["reg_loss"] > 0.01 * row["seg_loss"]  # the weight shows
    assert config.poly_power == 0.9 and config.weight_decay == 5e-4
    groups = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert all(g["weight_decay"] == config.weight_decay and not g.get("decoupled_weight_decay", False) for g in groups)
    assert all(g["betas"] == (0.9, 0.999) and not g["amsgrad"] for g in groups)  # plain Adam


def test_export_carries_roles_without_a_run_over_from_a_bundle_unchanged(cache, tmp_path):
    runs = []
    for role, patch in (("stage1", [16, 32, 32]), ("KT", [16, 32, 32]), ("K1", [16, 32, 32])):
        train(load_config(role, "paper", {**TINY, "iterations": 1, "patch_size": patch}), _options(cache, tmp_path / role))
        runs.append(tmp_path / role)
    old = export_bundle(runs, tmp_path / "old", "old-bundle", "d", "data")
    manifest = json.loads((old / "manifest.json").read_text())  # as an older export wrote it: machine paths
    manifest["provenance"]["runs"]["KT"]["initialised_from"] = {"weights": "/scratch/w2/runs/KT/model.pt",
                                                                "folder": "/scratch/w2/runs/KT"}
    (old / "manifest.json").write_text(json.dumps(manifest))
    tuned = tmp_path / "tuned" / "KT"
    train(load_config("KT", "paper", {**TINY, "iterations": 1, "patch_size": [16, 32, 32]}),
          _options(cache, tuned, init_weights=old / "KT.pt"))
    new = load_bundle(export_bundle([tuned], tmp_path / "new", "new-bundle", "d", "data", carry_over=old))
    assert new.roles == ("stage1", "KT", "K1")
    for role in ("stage1", "K1"):  # carried over byte for byte, and the record says from where
        assert (old / f"{role}.pt").read_bytes() == (tmp_path / "new" / f"{role}.pt").read_bytes()
        assert new.manifest["provenance"]["runs"][role]["carried_over_from"] == "old-bundle"
        assert "folder" not in new.manifest["provenance"]["runs"][role]
    started = new.manifest["provenance"]["runs"]["KT"]["initialised_from"]
    assert started["weights"] == "KT.pt" and started["bundle"] == "old-bundle" and "folder" not in started
    assert started["initialised_from"] == {"weights": "model.pt"}  # the older run's machine paths stay behind


def test_fit_cases_score_training_cases_as_validation_does_and_choose_nothing(cache, tmp_path):
    """``fit_cases`` training cases are scored beside the validation cases by the same whole-crop
    validation (the gap shows memorising); the weights are still chosen by ``val_dice`` alone."""
    validation = tmp_path / "validation"
    write_synthetic_case(validation, "case_00100", shift_x=20, seed=9)
    config = load_config("T-unet", "paper", {**TINY, "iterations": 4, "patch_size": [16, 32, 32]})
    out = tmp_path / "run"
    summary = train(config, _options(cache, out, val_cache=validation, fit_cases=2))
    training = open_cache(cache)
    assert summary["fit_cases"] == [training[0].case_id, training[1].case_id]
    assert set(summary["fit_cases"]) <= set(summary["training_cases"])
    last = summary["history"][-1]
    network = config.spec.build(config.base_channels)
    network.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True)["model"])
    expected = validate(network.eval(), config.spec, training[:2], torch.device("cpu"))
    assert {k: last["fit_" + k[4:]] for k in expected} == pytest.approx(expected, abs=1e-9)
    assert summary["chosen"] == max(summary["history"], key=lambda h: h["val_dice"])
    logged = [row for row in read_log(out / "log.csv") if "val_dice" in row]
    assert [row["fit_dice"] for row in logged] == pytest.approx([h["fit_dice"] for h in summary["history"]], abs=1e-5)
    alone = train(config, _options(cache, tmp_path / "alone", fit_cases=2))  # no held-out cases: nothing to compare
    assert alone["fit_cases"] == [] and all("fit_dice" not in h for h in alone["history"])


def test_cpu_training_flushes_subnormal_floats(cache, tmp_path):
    """Trained weights give subnormal floats, which x86 CPUs compute many times slower; a CPU run
    flushes them to zero."""
    torch.set_flush_denormal(False)
    try:
        assert (torch.tensor([1e-40]) * 2.0).item() != 0.0
        train(load_config("T-vnet", "paper", {**TINY, "iterations": 1, "patch_size": [16, 32, 32]}),
              _options(cache, tmp_path / "run"))
        assert (torch.tensor([1e-40]) * 2.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
