"""Validation Dice over a relay of training legs (``kidneytumorseg-train curves``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from training_tools.cli import main
from training_tools.logs import relay_validation

HEADER = ("iteration,lr,loss,seg_loss,reg_loss,seconds_per_iteration,val_dice,val_precision,val_recall,"
          "val_healthy_called_tumor\n")


def _log(folder: Path, role: str, rows: list[tuple[int, float | None]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{i},0.001,0.5,0.4,0.1,1.0,,\n" if dice is None else f"{i},,,,,,{dice},0.2\n" for i, dice in rows]
    (folder / f"{role}.csv").write_text(HEADER + "".join(lines))


def test_each_leg_continues_where_the_last_one_ended_and_carried_roles_add_nothing(tmp_path):
    _log(tmp_path / "first", "KT", [(10, None), (100, 0.5), (200, 0.7)])
    _log(tmp_path / "second", "KT", [(10, None), (100, 0.8), (150, None)])
    _log(tmp_path / "second", "stage1", [(100, 0.9)])
    legs = [("first", tmp_path / "first"), ("second", tmp_path / "second"), ("third", tmp_path / "third")]
    assert relay_validation(legs, "KT") == [("first", [100, 200], [0.5, 0.7]), ("second", [300], [0.8])]
    assert relay_validation(legs, "stage1") == [("second", [100], [0.9])]
    assert relay_validation(legs, "K1") == []


def test_curves_command_draws_one_panel_per_role_and_refuses_a_missing_folder(tmp_path, capsys):
    _log(tmp_path / "leg1", "KT", [(100, 0.5), (200, 0.7)])
    out = tmp_path / "relay.png"
    assert main(["curves", "--leg", f"leg1={tmp_path / 'leg1'}", "--roles", "KT,stage1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["curves", "--leg", f"leg2={tmp_path / 'nowhere'}", "--out", str(out)]) == 1
    assert "NAME=FOLDER" in capsys.readouterr().err  # one line, no traceback
    assert main(["curves", "--leg", f"leg1={tmp_path / 'leg1'}", "--roles", "KX", "--out", str(out)]) == 1
    assert "unknown roles" in capsys.readouterr().err
