"""Where the stage-2 ensemble disagrees: a per-voxel uncertainty and a per-case review score.

Pure functions of the probabilities stage 2 already computed (no extra network runs). Every
array is indexed ``[z, y, x]`` over the stage-2 crop of the working frame; probabilities are
float32 or float16 in [0, 1], labels uint8 (0 background, 1 kidney, 2 tumor).

The definition [D] (``settings.UncertaintySettings``): label assignment answers two questions per
voxel, each asked of a group of members.

- *Foreground* (kidney or tumor vs background): KT, and the K mean where stage 2 ran K (strict
  consensus; elsewhere KT alone). K sees kidney only, so at a voxel labelled tumor KT answers alone.
- *Tumor* (tumor vs kidney): the tumor groups T-vnet, T-unet and the mean of the 2D U-Nets, inside
  KT's foreground, where the method asks them. With ``tumor_outside_kt`` the question is also
  asked outside it (the label's answer there is "no"): a tumor KT missed then shows, but so does
  every tissue near the kidneys that weak tumor models call tumor -- off by default [D]: the demo
  bundle's tumor models mark about a litre of non-kidney tissue per case there.

For one question with members' probabilities ``p_1 … p_n`` and the label's answer ``y``::

    u = w · (share of members whose vote p_i ≥ 0.5 differs from y)
        + (1 − w) · (1 − |2 · mean(p) − 1|)

The first term is the disagreement itself (votes against the label: a tumor only one group saw,
a tumor island the clean-up removed); the second says how close the members' mean is to the
threshold, which separates a split of 0.51 / 0.49 from one of 0.99 / 0.01 and still grades a
single member. ``w`` = ``disagreement_weight`` (0.5). A voxel's uncertainty is the larger of its
two answers' (either can make its label wrong): it is in [0, 1], 1 only where the members split
and their mean sits on the threshold. Under the default fusion KT alone answers the foreground
question, so that term is at most ``1 − w``; a confident two-to-one split of the tumor groups
gives exactly 0.5.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .settings import DEFAULT_SETTINGS, LABEL_BACKGROUND, LABEL_TUMOR, MethodSettings


@dataclass(frozen=True)
class EnsembleUncertainty:
    """``voxels``: float32 ``[z, y, x]`` of the crop in [0, 1]. ``tumor_agreement``: the share of
    voxels labelled tumor on which every tumor group votes tumor (None: no tumor labelled, or no
    tumor group ran)."""

    voxels: np.ndarray
    tumor_agreement: float | None


@dataclass(frozen=True)
class CaseReview:
    """The per-case review summary (see :func:`case_review`)."""

    score: float
    review: bool
    disputed_ml: float
    tumor_agreement: float | None
    disputed_threshold: float
    score_threshold: float

    def to_json(self) -> dict:
        """Rounded for reports and tables."""
        return {
            "score": round(self.score, 4),
            "review": self.review,
            "disputed_ml": round(self.disputed_ml, 2),
            "tumor_agreement": None if self.tumor_agreement is None else round(self.tumor_agreement, 4),
            "disputed_threshold": self.disputed_threshold,
            "score_threshold": self.score_threshold,
        }


def decision_uncertainty(member_probs: Sequence[np.ndarray], decided: np.ndarray, weight: float,
                         threshold: float = DEFAULT_SETTINGS.geometry.probability_threshold) -> np.ndarray:
    """Uncertainty of one binary decision: ``w · disagreement + (1 − w) · (1 − |2 · mean − 1|)``.

    ``member_probs``: the members' probabilities, one shape; ``decided``: bool, the label's answer
    to the decision. A member votes 1 where ``p ≥ threshold``. Returns float32 in [0, 1].
    """
    if not member_probs:
        raise ValueError("decision_uncertainty needs at least one member")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"disagreement weight must be in [0, 1], got {weight}")
    against = np.zeros(decided.shape, np.float32)
    mean = np.zeros(decided.shape, np.float32)
    for prob in member_probs:
        against += (prob >= threshold) != decided
        np.add(mean, prob, out=mean, dtype=np.float32)
    scale = np.float32(1.0 / len(member_probs))
    mean *= scale
    # 1 - |2 mean - 1|, in place: mean becomes the ambiguity of the members' mean
    mean *= 2.0
    mean -= 1.0
    np.abs(mean, out=mean)
    np.subtract(1.0, mean, out=mean)
    mean *= np.float32(1.0 - weight)
    against *= np.float32(weight) * scale
    mean += against
    return mean


def ensemble_uncertainty(kt_prob: np.ndarray, k_prob: np.ndarray | None, tumor_probs: Sequence[np.ndarray],
                         labels: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS) -> EnsembleUncertainty:
    """The voxel uncertainty of a fused crop (module docstring) and its tumor agreement.

    ``kt_prob``: KT as label assignment read it (after the support rule); ``k_prob``: the K mean
    when stage 2 ran K, else None; ``tumor_probs``: one map per tumor group (may be empty; 0
    where the group did not run, so no doubt); ``labels``: the final labels of the crop (after the clean-up).
    """
    threshold = settings.geometry.probability_threshold
    weight = settings.uncertainty.disagreement_weight
    foreground = labels != LABEL_BACKGROUND
    tumor = labels == LABEL_TUMOR
    members = [kt_prob] if k_prob is None else [kt_prob, np.where(tumor, kt_prob, k_prob)]
    voxels = decision_uncertainty(members, foreground, weight, threshold)
    if not tumor_probs:
        return EnsembleUncertainty(voxels, None)
    asked = slice(None) if settings.uncertainty.tumor_outside_kt else kt_prob >= threshold
    tumor_uncertainty = decision_uncertainty([prob[asked] for prob in tumor_probs], tumor[asked], weight, threshold)
    voxels[asked] = np.maximum(voxels[asked], tumor_uncertainty)
    labelled = int(np.count_nonzero(tumor))
    if labelled == 0:
        return EnsembleUncertainty(voxels, None)
    unanimous = np.logical_and.reduce([prob[tumor] >= threshold for prob in tumor_probs])
    return EnsembleUncertainty(voxels, float(np.count_nonzero(unanimous)) / labelled)


def case_review(uncertainty: EnsembleUncertainty, labels: np.ndarray, voxel_ml: float,
                settings: MethodSettings = DEFAULT_SETTINGS) -> CaseReview:
    """The review summary of one case from its crop's uncertainty and labels ``[z, y, x]``.

    A voxel is *disputed* when its uncertainty reaches ``disputed_threshold``. The score is the
    share of the examined region -- voxels labelled kidney or tumor, and disputed ones -- that is
    disputed: 0 when the members agree everywhere, 1 when nothing is agreed on; 0 also when
    nothing was labelled or disputed. ``review`` is ``score ≥ score_threshold``.
    """
    chosen = settings.uncertainty
    disputed = uncertainty.voxels >= chosen.disputed_threshold
    examined = int(np.count_nonzero(disputed | (labels != LABEL_BACKGROUND)))
    count = int(np.count_nonzero(disputed))
    score = count / examined if examined else 0.0
    return CaseReview(score, score >= chosen.review_score_threshold, count * voxel_ml, uncertainty.tumor_agreement,
                      chosen.disputed_threshold, chosen.review_score_threshold)


UNCERTAINTY_LEVELS = 255  # a stored uncertainty map holds round(255 · u) as uint8: steps of 0.004


def uncertainty_to_bytes(values: np.ndarray) -> np.ndarray:
    """Uncertainty in [0, 1] as uint8 ``round(255 · u)``, in the array's own memory order."""
    scaled = np.clip(values, 0.0, 1.0) * np.float32(UNCERTAINTY_LEVELS)
    return np.rint(scaled, out=scaled).astype(np.uint8, order="K")


def uncertainty_from_bytes(stored: np.ndarray) -> np.ndarray:
    """A stored uint8 map back to float32 in [0, 1]."""
    return np.asarray(stored, np.float32) / np.float32(UNCERTAINTY_LEVELS)
