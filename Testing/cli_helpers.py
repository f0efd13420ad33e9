"""Shared pieces of the command-line tests: a small RAS phantom CT and a steered bundle, and how to run."""
from __future__ import annotations

from pathlib import Path

import pytest

from KidneyTumorSegLib.cli.main import main
from synthetic_cases import image_in, phantom_ct, steered_bundle, write_nifti

REPO = Path(__file__).resolve().parents[1]
WORKING_SHAPE = (16, 64, 96)


def cli_files(root: Path) -> dict[str, Path]:
    """``{"ct": a RAS phantom CT, "bundle": tiny networks}``: stage 1 marks the whole volume and
    fixed landmark points; KT and K1 mark everything."""
    image = image_in(phantom_ct(WORKING_SHAPE), "RAS")
    bundle = steered_bundle(root / "bundle", ("stage1", "KT", "K1", "T-vnet"), {"stage1": 10.0, "KT": 10.0, "K1": 10.0},
                            heat=1.0, kidney_patch=(16, 64, 64))
    return {"ct": write_nifti(root / "ct.nii.gz", image.array, image.affine), "bundle": bundle}


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """``kidneytumorseg ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def model_args(files: dict[str, Path], progress: str = "none") -> list[str]:
    return ["--bundle", str(files["bundle"]), "--allow-partial", "--device", "cpu", "--progress", progress]  # 4 of 12 models


def no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".part" in p.name]


def floats(data: object) -> list[float]:
    """Every float in a JSON-like value."""
    if isinstance(data, float):
        return [data]
    values = data.values() if isinstance(data, dict) else data if isinstance(data, list) else []
    return [f for value in values for f in floats(value)]
