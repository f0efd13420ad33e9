"""The ensemble's uncertainty and the case review score on hand-made probability volumes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from KidneyTumorSegLib.fusion import assign_labels, clean_tumor
from KidneyTumorSegLib.settings import DEFAULT_SETTINGS, MethodSettings
from KidneyTumorSegLib.uncertainty import (
    EnsembleUncertainty, case_review, decision_uncertainty, ensemble_uncertainty, uncertainty_from_bytes, uncertainty_to_bytes,
)

SHAPE = (4, 30, 30)


def _settings(**uncertainty) -> MethodSettings:
    return dataclasses.replace(DEFAULT_SETTINGS, uncertainty=dataclasses.replace(DEFAULT_SETTINGS.uncertainty, **uncertainty))


def _filled(value: float) -> np.ndarray:
    return np.full(SHAPE, value, np.float32)


@pytest.mark.parametrize("probs, decided, expected", [
    ((0.9, 0.1, 0.1), True, 0.5 * 2 / 3 + 0.5 * (1 - abs(2 * 1.1 / 3 - 1))),  # one group of three saw it: 0.7
    ((0.9, 0.1, 0.1), False, 0.5 * 1 / 3 + 0.5 * (1 - abs(2 * 1.1 / 3 - 1))),
    ((1.0, 1.0, 1.0), True, 0.0),  # unanimous and certain
    ((0.0, 0.0, 0.0), False, 0.0),
    ((1.0, 0.0), True, 0.5 * 0.5 + 0.5 * 1.0),  # a clean split on the threshold: 0.75
    ((0.5,), True, 0.5),  # one member on the threshold: at most 1 - w
    ((0.8,), True, 0.5 * (1 - 0.6)),
    ((0.8,), False, 0.5 * 1 + 0.5 * (1 - 0.6)),  # the label went against the only member (e.g. a removed island)
])
def test_decision_uncertainty_is_the_documented_blend(probs: tuple[float, ...], decided: bool, expected: float) -> None:
    result = decision_uncertainty([_filled(p) for p in probs], np.full(SHAPE, decided), weight=0.5)
    assert result.dtype == np.float32 and result.shape == SHAPE
    np.testing.assert_allclose(result, expected, atol=1e-6)


@pytest.mark.parametrize("weight, expected", [(1.0, 2 / 3), (0.0, 1 - abs(2 * 1.1 / 3 - 1)), (0.25, 0.25 * 2 / 3 + 0.75 * (1 - abs(2 * 1.1 / 3 - 1)))])
def test_the_weight_moves_between_vote_share_and_closeness_to_the_threshold(weight: float, expected: float) -> None:
    result = decision_uncertainty([_filled(0.9), _filled(0.1), _filled(0.1)], np.ones(SHAPE, bool), weight=weight)
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_float16_members_vote_at_the_threshold_and_stay_in_range() -> None:
    probs = [np.linspace(0, 1, np.prod(SHAPE), dtype=np.float16).reshape(SHAPE) for _ in range(3)]
    decided = probs[0] >= 0.5
    result = decision_uncertainty(probs, decided, weight=0.5)
    assert result.dtype == np.float32 and 0.0 <= result.min() and result.max() <= 1.0
    np.testing.assert_allclose(result, 0.5 * (1 - np.abs(2 * probs[0].astype(np.float32) - 1)), atol=1e-3)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        decision_uncertainty([], np.ones(SHAPE, bool), 0.5)
    with pytest.raises(ValueError, match="weight"):
        decision_uncertainty([_filled(0.5)], np.ones(SHAPE, bool), 1.5)


def _crop() -> tuple[np.ndarray, list[np.ndarray], dict[str, tuple[slice, ...]]]:
    """KT and three tumor groups over a crop with named regions (10 x 10 px on all 4 slices, but
    the island: 2 x 2 px, which the clean-up removes)."""
    regions = {
        "kidney": np.s_[:, 0:10, 0:10],
        "tumor of one group": np.s_[:, 0:10, 10:20],
        "tumor of all groups": np.s_[:, 0:10, 20:30],
        "kidney boundary": np.s_[:, 10:20, 0:10],  # KT at 0.6
        "tumor outside KT": np.s_[:, 10:20, 10:20],
        "removed island": np.s_[:, 20:22, 20:22],  # all groups say tumor
    }
    kt = np.zeros(SHAPE, np.float32)
    tumor = [np.zeros(SHAPE, np.float32) for _ in range(3)]
    for name in ("kidney", "tumor of one group", "tumor of all groups"):
        kt[regions[name]] = 1.0
    kt[regions["kidney boundary"]] = 0.6
    kt[:, 20:30, 20:30] = 1.0  # KT only, but for the island
    tumor[2][regions["tumor of one group"]] = 0.9
    tumor[1][regions["tumor of one group"]] = 0.1
    for group in tumor:
        group[regions["tumor of all groups"]] = 1.0
        group[regions["removed island"]] = 0.8
    for group in tumor[:2]:
        group[regions["tumor outside KT"]] = 1.0
    return kt, tumor, regions


def test_ensemble_uncertainty_per_region() -> None:
    kt, tumor, regions = _crop()
    labels = clean_tumor(assign_labels(kt, None, tumor))
    result = ensemble_uncertainty(kt, None, tumor, labels)
    expected = {
        "kidney": 0.0,
        "tumor of one group": 0.5 * 2 / 3 + 0.5 * (1 - abs(2 * 1.0 / 3 - 1)),  # votes 1/3, mean 1/3
        "tumor of all groups": 0.0,
        "kidney boundary": 0.5 * (1 - abs(2 * 0.6 - 1)),  # KT alone: its closeness to 0.5
        "tumor outside KT": 0.0,  # the tumor groups are asked inside KT only (by default)
        "removed island": 0.5 * 1 + 0.5 * (1 - abs(2 * 0.8 - 1)),  # every group against the cleaned label
    }
    assert labels[regions["removed island"]].max() == 1 and labels[regions["tumor of one group"]].min() == 2
    for name, value in expected.items():
        np.testing.assert_allclose(result.voxels[regions[name]], value, atol=1e-6, err_msg=name)
    assert result.voxels.min() >= 0.0 and result.voxels.max() <= 1.0
    assert result.tumor_agreement == pytest.approx(0.5)  # labelled tumor: one region unanimous, one not


def test_tumor_votes_outside_kt_count_when_asked() -> None:
    kt, tumor, regions = _crop()
    labels = clean_tumor(assign_labels(kt, None, tumor))
    result = ensemble_uncertainty(kt, None, tumor, labels, _settings(tumor_outside_kt=True))
    two_groups_against_background = 0.5 * 2 / 3 + 0.5 * (1 - abs(2 * 2 / 3 - 1))
    np.testing.assert_allclose(result.voxels[regions["tumor outside KT"]], two_groups_against_background, atol=1e-6)
    np.testing.assert_allclose(result.voxels[:, 20:30, 0:10], 0.0, atol=1e-6)  # no group ran or voted there


def test_strict_consensus_lets_k_vote_on_the_foreground_but_not_on_tumor() -> None:
    kt, tumor, regions = _crop()
    k = np.zeros(SHAPE, np.float32)
    k[regions["kidney"]] = 1.0
    strict = dataclasses.replace(DEFAULT_SETTINGS, fusion=dataclasses.replace(DEFAULT_SETTINGS.fusion, kt_only_label=0))
    labels = clean_tumor(assign_labels(kt, k, tumor, strict), strict)
    result = ensemble_uncertainty(kt, k, tumor, labels, strict)
    np.testing.assert_allclose(result.voxels[regions["kidney"]], 0.0, atol=1e-6)  # KT and K agree
    np.testing.assert_allclose(result.voxels[regions["tumor of all groups"]], 0.0, atol=1e-6)  # K does not vote on tumor
    assert labels[:, 20:30, 24:30].max() == 0  # KT only: background in strict consensus
    np.testing.assert_allclose(result.voxels[:, 20:30, 24:30], 0.5 * 0.5 + 0.5 * 1.0, atol=1e-6)  # KT against K


def test_no_tumor_group_means_no_tumor_term_and_no_agreement() -> None:
    kt, _, regions = _crop()
    labels = clean_tumor(assign_labels(kt, None, []))
    result = ensemble_uncertainty(kt, None, [], labels)
    assert result.tumor_agreement is None
    np.testing.assert_allclose(result.voxels, 0.5 * (1 - np.abs(2 * kt - 1)), atol=1e-6)


def test_case_review_counts_disputed_voxels_of_the_examined_region() -> None:
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, :10, :10] = 1  # 400 labelled voxels
    voxels = np.zeros(SHAPE, np.float32)
    voxels[:, :5, :10] = 0.45  # 200 labelled and disputed (the threshold counts)
    voxels[:, 26:, 26:] = 0.9  # 64 disputed but unlabelled
    voxels[:, 5:10, :10] = 0.449  # not disputed
    review = case_review(EnsembleUncertainty(voxels, 0.25), labels, voxel_ml=0.002)
    assert review.score == pytest.approx(264 / 464)
    assert review.disputed_ml == pytest.approx(264 * 0.002)
    assert review.review and review.tumor_agreement == 0.25
    relaxed = case_review(EnsembleUncertainty(voxels, None), labels, 0.002, _settings(review_score_threshold=0.6))
    assert not relaxed.review
    assert relaxed.to_json() == {"score": round(264 / 464, 4), "review": False, "disputed_ml": 0.53, "tumor_agreement": None,
                                 "disputed_threshold": 0.45, "score_threshold": 0.6}


def test_a_case_with_nothing_labelled_or_disputed_scores_zero() -> None:
    review = case_review(EnsembleUncertainty(np.full(SHAPE, 0.2, np.float32), None), np.zeros(SHAPE, np.uint8), 0.002)
    assert review.score == 0.0 and not review.review and review.disputed_ml == 0.0


def test_a_stored_map_keeps_255_levels_and_the_memory_order():
    values = np.asfortranarray(np.random.default_rng(3).uniform(-0.2, 1.2, (7, 6, 5)).astype(np.float32))
    stored = uncertainty_to_bytes(values)
    assert stored.dtype == np.uint8 and stored.flags.f_contiguous  # written as NIfTI holds it, no copy
    assert stored.min() == 0 and stored.max() == 255  # clipped to [0, 1] first
    back = uncertainty_from_bytes(stored)
    np.testing.assert_allclose(back, np.clip(values, 0, 1), atol=0.5 / 255 + 1e-7)
    assert uncertainty_to_bytes(np.float32([0.45]))[0] == 115  # the disputed threshold's level
