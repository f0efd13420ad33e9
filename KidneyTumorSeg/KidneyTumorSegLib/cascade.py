"""The whole method on one image: working frame, stage 1, stage-2 ensemble, back to the input grid.

:class:`Cascade` holds a verified bundle's networks as predictors on one device. Each stage is
callable alone (``locate``; ``segment`` with a given crop box) because the Slicer panel shows
stage 1's boxes and lets the user move the crop before stage 2 runs.

Probability maps stay float32 from the networks' sigmoid to every threshold, so "p ≥ 0.5" (SPEC)
is what runs: float16 storage would turn p in [0.49988, 0.5) into 0.5. The six 2D tumor maps are
summed as they come: under the default labels stage 2 holds at most 20 bytes a crop voxel in maps
(KT, the two 3D tumor models, the 2D sum and the 2D map being made), where float16 maps held 18.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .boxes import Box
from .bundle import ModelBundle
from .fusion import assign_labels, average_probabilities, clean_tumor
from .geometry import WorkingFrame, labels_to_source, working_frame_for
from .imageio import Image
from .inference import make_predictor, pick_device, predict_along_axis, resolve_amp_dtype, sliding_window_predict
from .inference.cancellation import CancelCallback, check_cancel
from .networks.registry import ROLES, required_divisor
from .preprocessing import downsample_mean
from .resample_torch import to_working_frame_torch
from .settings import DEFAULT_SETTINGS, LABEL_KIDNEY, MethodSettings
from .stage1 import Stage1Result, choose_crop
from .support import stage1_support, support_in_box, support_reach, supported_part
from .uncertainty import CaseReview, EnsembleUncertainty, case_review, ensemble_uncertainty
from .validation import check_memory

logger = logging.getLogger(__name__)

ProgressReport = Callable[[str, str, float], None]
"""``report(stage, model, fraction)``: ``fraction`` of ``model``'s work in ``stage`` is done."""

KIDNEY_ROLES = ("K1", "K2")
TUMOR_3D_ROLES = ("T-vnet", "T-unet")
TUMOR_2D_ROLES = tuple(role for role in ROLES if role.startswith("T2D-"))
STAGE2_ORDER = ("KT", *KIDNEY_ROLES, *TUMOR_3D_ROLES, *TUMOR_2D_ROLES)


@dataclass(frozen=True)
class InferenceOptions:
    """How to run the cascade: device ("auto" | "cpu" | "cuda"), autocast ("auto" | "none" |
    "bf16" | "fp16"), sliding-window overlap and batch sizes, and which ensemble members to use
    (None = every stage-2 model in the bundle).

    ``skip_outside_kt``: the tumor and kidney models of stage 2 run only on the patches and
    slices that hold a KT voxel. Exact: label assignment reads them only where KT = 1, and every
    such voxel gets the value of a full run.

    The paper gives no inference overlap; 0.25 is our default [D]: it needs about a third of the
    patches of 0.5 in 3D (what makes the CPU usable) and, with Gaussian blending, hides seams.

    ``channels_last``: the networks run in channels-last memory (faster on the CPU and GPU, the
    same values within float rounding). ``compile``: ``torch.compile`` each network once per
    cascade (the first patches wait for the compiler; pays off over many cases on a GPU).

    ``uncertainty``: also compute where the ensemble disagrees (uncertainty.py) and the case's
    review score, from the probabilities stage 2 already holds (no network runs). It needs every
    tumor group's probability wherever KT = 1: a group left out there would vote against.
    """

    device: str = "auto"
    amp: str = "auto"
    overlap: float = 0.25
    batch_size: int = 2
    batch_size_2d: int = 16
    members: tuple[str, ...] | None = None
    skip_outside_kt: bool = True
    channels_last: bool = True
    compile: bool = False
    uncertainty: bool = True
    settings: MethodSettings = DEFAULT_SETTINGS


@dataclass
class PreparedCase:
    """An input image brought to the working frame: ``normalized`` is ``[z, y, x]`` float32 in [0, 1];
    ``seconds``: how long that took. ``support_down``: stage 1's support on the ×4 grid (bool),
    once stage 1 has run."""

    image: Image
    frame: WorkingFrame
    normalized: np.ndarray
    kidney_cache: dict[Box, np.ndarray] = field(default_factory=dict)
    support_down: np.ndarray | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class SegmentationResult:
    """A finished segmentation: ``labels`` on the input grid ``[i, j, k]`` (uint8 0/1/2),
    ``labels_working`` on the working frame ``[z, y, x]``, the crop, stage 1's result (None when
    the box was given), the models that ran (in cascade order) and the seconds per step.
    ``uncertainty``: float32 ``[z, y, x]`` over ``crop_box`` in [0, 1] (0 outside the crop; see
    crop_values for the working frame and the input grid) and ``review``, the case's review
    summary; both None when ``InferenceOptions.uncertainty`` is off."""

    labels: np.ndarray
    labels_working: np.ndarray
    crop_box: Box
    stage1: Stage1Result | None
    models: tuple[str, ...]
    timings: dict[str, float]
    uncertainty: np.ndarray | None = None
    review: CaseReview | None = None


def _silent(stage: str, model: str, fraction: float) -> None:
    pass


class Cascade:
    """The two-stage cascade over one bundle on one device."""

    def __init__(self, bundle: ModelBundle, options: InferenceOptions = InferenceOptions()):
        self.bundle = bundle
        self.options = options
        self.settings = options.settings
        self.device = pick_device(options.device)
        self.amp_dtype = resolve_amp_dtype(options.amp, self.device)
        members = options.members
        unknown = set(members or ()) - set(STAGE2_ORDER)
        if unknown:
            raise ValueError(f"unknown ensemble members: {', '.join(sorted(unknown))} (valid: {', '.join(STAGE2_ORDER)})")
        self.members = tuple(r for r in STAGE2_ORDER if r in bundle.networks and (members is None or r in members or r == "KT"))
        self.timings: dict[str, float] = {}
        self._compiled: dict[str, nn.Module] = {}

    def _network(self, role: str) -> nn.Module:
        """The role's network, through ``torch.compile`` (once per cascade) when asked."""
        network = self.bundle.networks[role]
        if not self.options.compile:
            return network
        if role not in self._compiled:
            self._compiled[role] = torch.compile(network)
        return self._compiled[role]

    def _predictor(self, role: str, device: torch.device, output: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return make_predictor(self._network(role), device, self.amp_dtype, output, channels_last=self.options.channels_last)

    @property
    def user_box_is_authority(self) -> bool:
        """Whether a crop box the user gives overrides stage 1's support (``stage1.user_box_rule``)."""
        rule = self.settings.stage1.user_box_rule
        if rule not in ("authority", "support"):
            raise ValueError(f"stage1.user_box_rule must be 'authority' or 'support', not {rule!r}")
        return rule == "authority"

    @property
    def kidney_models_label(self) -> bool:
        """Whether K1/K2 can change a label in stage 2: only in strict consensus. Under the default
        (KT-only voxels are kidney) the label is the same with or without K, so stage 2 does not
        run them; they still refine stage 1's box."""
        return self.settings.fusion.kt_only_label != LABEL_KIDNEY

    # -- preparation -------------------------------------------------------------------------
    def prepare(self, image: Image) -> PreparedCase:
        """Resample ``image`` to the working frame (linear, in torch on the cascade's device: the
        same result as scipy's path within float rounding; see resample_torch) and normalise its
        HU window."""
        start = time.perf_counter()
        frame = working_frame_for(image.array.shape, image.affine)
        check_memory(frame.shape)
        window = self.bundle.intensity
        with torch.inference_mode():  # in place: no second copy of the working volume
            working = to_working_frame_torch(image.array, frame, self.device, order=1)
            working.clamp_(window.hu_min, window.hu_max).sub_(window.hu_min).div_(window.hu_max - window.hu_min)
            normalized = working.cpu().numpy()
        self.timings["prepare"] = time.perf_counter() - start
        return PreparedCase(image, frame, normalized, seconds=self.timings["prepare"])

    # -- model runs --------------------------------------------------------------------------
    def _run_3d(self, role: str, volume: np.ndarray, output: str, report: ProgressReport, stage: str,
                cancel: CancelCallback | None, region: np.ndarray | None = None) -> np.ndarray:
        start = time.perf_counter()
        entry = self.bundle.entries[role]

        def run(batch_size: int, device: torch.device) -> np.ndarray:
            predictor = self._predictor(role, device, output)
            return sliding_window_predict(
                volume, predictor, entry.patch_size, overlap=self.options.overlap, batch_size=batch_size,
                device=device, progress=lambda done, total: report(stage, role, done / total), cancel=cancel,
                region=region,
            )

        result = self._with_memory_fallback(role, run, self.options.batch_size)
        self.timings[role] = self.timings.get(role, 0.0) + time.perf_counter() - start
        return result

    def _run_2d(self, role: str, volume: np.ndarray, report: ProgressReport, cancel: CancelCallback | None,
                region: np.ndarray | None = None) -> np.ndarray:
        start = time.perf_counter()
        entry = self.bundle.entries[role]

        def run(batch_size: int, device: torch.device) -> np.ndarray:
            predictor = self._predictor(role, device, "seg")
            return predict_along_axis(
                volume, predictor, ROLES[role].axis, batch_size=batch_size, device=device,
                divisor=required_divisor(entry.architecture, entry.params),
                progress=lambda done, total: report("stage2", role, done / total), cancel=cancel, region=region,
            )

        result = self._with_memory_fallback(role, run, self.options.batch_size_2d)
        self.timings[role] = time.perf_counter() - start
        return result[0]

    def _with_memory_fallback(self, role: str, run: Callable[[int, torch.device], np.ndarray], batch_size: int) -> np.ndarray:
        """``run(batch_size, device)``; when the GPU runs out of memory, halve the batch, and at a
        batch of one go on on the CPU -- saying so each time. The CPU fallback sticks for the run."""
        while True:
            try:
                return run(batch_size, self.device)
            except torch.cuda.OutOfMemoryError:
                if self.device.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                if batch_size > 1:
                    batch_size //= 2
                    logger.warning("%s: out of GPU memory; retrying with batch size %d", role, batch_size)
                else:
                    self.device = torch.device("cpu")
                    logger.warning("%s: out of GPU memory even at batch size 1; continuing on the CPU (slower)", role)

    def _kidney_probability(self, case: PreparedCase, box: Box, report: ProgressReport,
                            cancel: CancelCallback | None, stage: str = "stage2",
                            region: np.ndarray | None = None) -> np.ndarray | None:
        """Mean of K1 and K2 over ``box`` ``[z, y, x]``; cached so stage 2 can reuse it.
        ``stage`` names the stage the runs are reported under (stage 1 when they refine its box);
        ``region`` limits a fresh run to the patches holding its voxels (then it is not cached)."""
        roles = [r for r in KIDNEY_ROLES if r in self.members]
        if not roles:
            return None
        for cached_box, probability in case.kidney_cache.items():
            if cached_box.contains(box):
                offset = [a - c for a, c in zip(box.start, cached_box.start)]
                return probability[tuple(slice(o, o + s) for o, s in zip(offset, box.size))]
        crop = case.normalized[box.slices]
        probability = average_probabilities(self._run_3d(r, crop, "seg", report, stage, cancel, region)[0] for r in roles)
        if region is None:
            case.kidney_cache[box] = probability
        return probability

    # -- stage 1 -----------------------------------------------------------------------------
    def _refiner(self, case: PreparedCase, support: np.ndarray | None, progress: ProgressReport,
                 cancel: CancelCallback | None) -> Callable[[Box], np.ndarray] | None:
        """The over-prediction rule's model: KT when configured, else mean(K1, K2); None without them.
        With stage 1's ``support`` it runs only on the patches holding a voxel of the support or of
        its trim region: there its output is exact, and the rule keeps only what lies there."""
        reach = None if support is None else support_reach(support, self.settings)

        def region(box: Box) -> np.ndarray | None:
            return None if reach is None else support_in_box(reach, box, self.settings.geometry.downsample_factor)

        if self.settings.stage1.refine_with == "KT":
            return lambda box: self._run_3d("KT", case.normalized[box.slices], "seg", progress, "stage1", cancel, region(box))[0]
        if any(r in self.members for r in KIDNEY_ROLES):
            return lambda box: self._kidney_probability(case, box, progress, cancel, "stage1", region(box))
        return None

    def locate(self, case: PreparedCase, progress: ProgressReport = _silent, cancel: CancelCallback | None = None) -> Stage1Result:
        """Stage 1 with mixed cropping; the kidney models refine the box when the bundle has them."""
        outputs = self._run_stage1(case, "seg+reg", progress, cancel)
        start = time.perf_counter()
        support = self._usable_support(case)
        refine = self._refiner(case, support, progress, cancel)
        result = choose_crop(outputs[0], outputs[1:], case.normalized.shape, refine, self.settings, support)
        self.timings["mixed_cropping"] = time.perf_counter() - start  # includes the kidney models' runs
        for decision in result.decisions:
            logger.info("stage 1: %s", decision)
        return result

    def _run_stage1(self, case: PreparedCase, output: str, progress: ProgressReport,
                    cancel: CancelCallback | None) -> np.ndarray:
        """Stage 1 on the ×4 grid of ``case`` (``output`` as for :func:`make_predictor`); keeps its
        support on the case."""
        down = downsample_mean(case.normalized, self.settings.geometry.downsample_factor)
        outputs = self._run_3d("stage1", down, output, progress, "stage1", cancel)
        case.support_down = stage1_support(outputs[0], self.settings)
        if self.settings.stage1.support_components and not case.support_down.any():
            logger.warning("stage 1 marked no kidney: every stage-2 component is kept")
        return outputs

    def _usable_support(self, case: PreparedCase) -> np.ndarray | None:
        """Stage 1's support when the support rule is on and stage 1 marked something, else None."""
        if not self.settings.stage1.support_components or case.support_down is None or not case.support_down.any():
            return None
        return case.support_down

    def _support_for_crop(self, case: PreparedCase, progress: ProgressReport,
                          cancel: CancelCallback | None) -> np.ndarray | None:
        """Stage 1's support on the ×4 grid, or None when the rule is off. A crop given by hand
        runs stage 1's segmentation head for it (no landmarks, no refinement)."""
        if not self.settings.stage1.support_components:
            return None
        if case.support_down is None:
            self._run_stage1(case, "seg", progress, cancel)
        return self._usable_support(case)

    # -- stage 2 -----------------------------------------------------------------------------
    def segment_crop(self, case: PreparedCase, crop: Box, progress: ProgressReport = _silent,
                     cancel: CancelCallback | None = None, user_box: bool = False) -> tuple[np.ndarray, EnsembleUncertainty | None]:
        """The stage-2 ensemble inside ``crop``: label map ``[z, y, x]`` of the crop (uint8), and
        where its members disagree (None when ``options.uncertainty`` is off). With
        ``stage1.support_components`` on, KT's components lying mostly outside stage 1's support
        are trimmed to its neighbourhood (or dropped) before label assignment (support.py) --
        except in a box the user gave (``user_box``) under the user's box rule
        (``stage1.user_box_rule = "authority"``): there every component inside the box is kept."""
        support = self._support_for_crop(case, progress, cancel)
        volume = case.normalized[crop.slices]
        kt = self._run_3d("KT", volume, "seg", progress, "stage2", cancel)[0]
        kt_mask = kt >= self.settings.geometry.probability_threshold
        if support is not None and user_box and self.user_box_is_authority:
            logger.info("stage 2: the crop box was given, so every kidney region inside it is kept (%d KT voxels); "
                        "stage 1's support does not apply (the user's box rule)", kt_mask.sum())
        elif support is not None:
            kept = supported_part(kt_mask, crop, support, self.settings)
            logger.info("stage 2: kept %d of %d KT voxels, in or beside stage 1's support", kept.sum(), kt_mask.sum())
            kt, kt_mask = np.where(kept, kt, 0).astype(kt.dtype), kept
        region = kt_mask if self.options.skip_outside_kt else None
        kidney = self._kidney_probability(case, crop, progress, cancel, region=region) if self.kidney_models_label else None
        tumor = [self._run_3d(r, volume, "seg", progress, "stage2", cancel, region)[0] for r in TUMOR_3D_ROLES if r in self.members]
        two_d = [r for r in TUMOR_2D_ROLES if r in self.members]
        if two_d:  # summed as they come: one 2D map at a time besides the sum
            tumor.append(average_probabilities(self._run_2d(r, volume, progress, cancel, region) for r in two_d))
        check_cancel(cancel)
        start = time.perf_counter()
        labels = clean_tumor(assign_labels(kt, kidney, tumor, self.settings), self.settings)
        self.timings["fusion"] = time.perf_counter() - start
        if not self.options.uncertainty:
            return labels, None
        start = time.perf_counter()
        uncertainty = ensemble_uncertainty(kt, kidney, tumor, labels, self.settings)
        self.timings["uncertainty"] = time.perf_counter() - start
        return labels, uncertainty

    def segment(self, image: Image, crop: Box | None = None, progress: ProgressReport = _silent,
                cancel: CancelCallback | None = None, case: PreparedCase | None = None) -> SegmentationResult:
        """Run the cascade on ``image``; ``crop`` (working-frame box) skips stage 1's boxes and is the
        user's box: under the user's box rule (the default) stage 1's support does not veto what
        stage 2 finds inside it."""
        self.timings = {}
        case = case or self.prepare(image)
        self.timings["prepare"] = case.seconds
        stage1 = None
        if crop is None:
            stage1 = self.locate(case, progress, cancel)
            crop = stage1.crop_box
        check_cancel(cancel)
        labels_crop, uncertainty = self.segment_crop(case, crop, progress, cancel, user_box=stage1 is None)
        start = time.perf_counter()
        labels_working = np.zeros(case.normalized.shape, np.uint8)
        labels_working[crop.slices] = labels_crop
        labels = labels_to_source(labels_working, case.frame)
        self.timings["to_input_grid"] = time.perf_counter() - start
        ran = tuple(role for role in ("stage1", *self.members) if role in self.timings)
        if uncertainty is None:
            return SegmentationResult(labels, labels_working, crop, stage1, ran, dict(self.timings))
        voxel_ml = float(np.prod(case.frame.spacing)) / 1000.0
        review = case_review(uncertainty, labels_crop, voxel_ml, self.settings)
        return SegmentationResult(labels, labels_working, crop, stage1, ran, dict(self.timings), uncertainty.voxels, review)

