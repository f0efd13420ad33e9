"""Deterministic k-fold split of cases (5 folds by default), shared by training and evaluation."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_FOLDS = 5


def fold_assignment(case_ids: Sequence[str], folds: int = DEFAULT_FOLDS, seed: int = 0) -> dict[str, int]:
    """Fold of every case: the sorted ids shuffled by ``seed`` and dealt into ``folds`` near-equal
    contiguous groups (sizes differ by at most one)."""
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    ids = sorted(case_ids)
    if len(ids) < folds:
        raise ValueError(f"{len(ids)} cases cannot make {folds} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    groups = np.array_split(order, folds)
    return {ids[i]: fold for fold, group in enumerate(groups) for i in group}


def split_cases(case_ids: Sequence[str], fold: int | None, folds: int = DEFAULT_FOLDS,
                seed: int = 0) -> tuple[list[str], list[str]]:
    """(training ids, held-out ids) of ``fold``, both sorted; ``fold`` None = every case trains, none held out."""
    ids = sorted(case_ids)
    if fold is None:
        return ids, []
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    assignment = fold_assignment(ids, folds, seed)
    return [c for c in ids if assignment[c] != fold], [c for c in ids if assignment[c] == fold]


def parse_fold(text: str) -> int | None:
    """``"all"`` -> None (no held-out cases), else the fold number."""
    return None if text == "all" else int(text)
