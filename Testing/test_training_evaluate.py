"""Fold split, evaluation outputs, and the ``kidneytumorseg-train`` command line."""
from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from training_tools.cache import find_kits_cases
from training_tools.cli import main
from training_tools.evaluate import evaluate_one, plot_boxes, summarise_rows, write_rows
from training_tools.splits import fold_assignment, split_cases
from training_helpers import write_kits_case

IDS = [f"case_{i:05d}" for i in range(23)]


def test_five_fold_split_is_deterministic_disjoint_and_complete():
    folds = [split_cases(IDS, k) for k in range(5)]
    held = [h for _, h in folds]
    assert sorted(sum(held, [])) == IDS  # every case held out exactly once
    assert sorted(len(h) for h in held) == [4, 4, 5, 5, 5]
    for train, hold in folds:
        assert not set(train) & set(hold) and sorted(train + hold) == IDS
    assert split_cases(list(reversed(IDS)), 2) == folds[2]  # the order of the input does not matter
    assert fold_assignment(IDS, seed=1) != fold_assignment(IDS, seed=0)
    assert split_cases(IDS, None) == (IDS, [])


def test_evaluate_one_scores_the_cascade_output_on_the_input_grid(real_kits_crops, tmp_path):
    mask = next(iter(real_kits_crops.values())).slicer[::3, ::3, ::3]  # small: the metrics dominate the time
    write_kits_case(tmp_path, "case_00000", mask)
    case = find_kits_cases(tmp_path)[0]
    truth = np.asarray(mask.dataobj, dtype=np.uint8)
    wrong = truth.copy()
    wrong[wrong == 2] = 1  # a "cascade" that misses the tumor entirely
    for labels, tumor_dice in ((truth, 1.0), (wrong, 0.0)):
        cascade = SimpleNamespace(segment=lambda image, labels=labels: SimpleNamespace(labels=labels, uncertainty=None))
        row = evaluate_one(cascade, case)
        assert row["case_id"] == "case_00000"
        assert row["kidney_dice"] == 1.0 and row["tumor_dice"] == tumor_dice
        assert row["healthy_called_tumor"] == 0.0 and row["tumor_recall"] == tumor_dice
        assert "review_score" not in row  # a cascade without uncertainty adds no review columns


def test_rows_summary_csv_and_box_plot(tmp_path):
    rows = [{"case_id": f"c{i}", "kidney_dice": k, "tumor_dice": t, "mean_dice": (k + t) / 2,
             "kidney_surface_dice": 1.0, "tumor_surface_dice": 0.5, "kidney_hd95_mm": 1.0,
             "tumor_hd95_mm": float("inf") if i == 0 else 3.0, "seconds": 2.0,
             "tumor_tp": 30, "tumor_fp": fp, "tumor_fn": 10, "tumor_precision": 30 / (30 + fp), "tumor_recall": 0.75,
             "healthy_called_tumor": h}
            for i, (k, t, fp, h) in enumerate(((0.9, 0.6, 10, 0.02), (0.95, 0.8, 50, 0.1)))]
    summary = summarise_rows(rows)
    assert summary["kidney_dice"] == pytest.approx(0.925) and summary["tumor_dice"] == pytest.approx(0.7)
    assert summary["median_tumor_hd95_mm"] == 3.0  # infinite distances are left out of medians
    assert summary["tumor_precision_pooled"] == pytest.approx(60 / 120)  # voxels pooled, not a mean of 0.75 and 0.375
    assert summary["median_healthy_called_tumor"] == pytest.approx(0.06)
    write_rows(tmp_path / "per_case.csv", rows)
    with open(tmp_path / "per_case.csv") as handle:
        read = list(csv.DictReader(handle))
    assert [r["case_id"] for r in read] == ["c0", "c1"] and [r["tumor_fp"] for r in read] == ["10", "50"]
    assert plot_boxes(rows, tmp_path / "box.png", "t").stat().st_size > 1000


@pytest.mark.parametrize("command", ["prepare", "configs", "train", "evaluate", "export", "demo-bundle"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: kidneytumorseg-train " + command in capsys.readouterr().out


def test_configs_command_prints_json(capsys):
    assert main(["configs", "--preset", "demo-cpu", "--role", "T-unet"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["role"] == "T-unet" and config["learning_rate"] == 1e-3
