"""Tissue HU measured on the real TotalSegmentator CT (training_tools.tissue_hu)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from training_tools.tissue_hu import TISSUE_HU_JSON, load_tissue_hu, main, measure_tissue_hu

DATA = Path(__file__).parent / "Data" / "totalsegmentator"
CT, SEG = DATA / "example_ct_sm.nii.gz", DATA / "example_seg.nii.gz"


@pytest.fixture(scope="module")
def measured() -> dict:
    return measure_tissue_hu(CT, SEG)


def test_remeasured_statistics_equal_the_committed_json(measured):
    committed = json.loads(TISSUE_HU_JSON.read_text())
    assert measured["source"] == committed["source"]
    assert measured["noise"] == pytest.approx(committed["noise"], abs=0.01)
    assert measured["tissues"].keys() == committed["tissues"].keys()
    for name, stats in committed["tissues"].items():
        numbers = {k: v for k, v in stats.items() if k != "classes"}
        assert measured["tissues"][name]["classes"] == stats["classes"], name
        assert {k: measured["tissues"][name][k] for k in numbers} == pytest.approx(numbers, abs=0.01), name


def test_statistics_are_anatomically_plausible(measured):
    t = measured["tissues"]
    assert -130 < t["fat"]["mean"] < -70
    assert t["air"]["mean"] < -900 and t["bowel_gas"]["p50"] < -900
    assert 30 < t["liver"]["mean"] < 70 and 20 < t["spleen"]["mean"] < 60
    assert t["vertebrae"]["p99"] > 400 and t["rib"]["mean"] > 150
    assert t["kidney"]["classes"] == [2, 3] and t["liver"]["classes"] == [5]
    assert -900 < t["lung"]["mean"] < -600
    assert 5 < measured["noise"]["std"] < 25


def test_command_writes_what_load_reads(tmp_path, measured):
    out = tmp_path / "hu.json"
    assert main([str(CT), str(SEG), "--out", str(out)]) == 0
    loaded = load_tissue_hu(out)
    assert loaded["liver"] == measured["tissues"]["liver"] and loaded["noise"] == measured["noise"]
