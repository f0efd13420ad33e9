"""Every number of the method, and every decision SPEC.md marks [D], as named settings.

Arrays in the working frame are indexed ``[z, y, x]``: z = cranio-caudal pointing Inferior
(3.0 mm), y = antero-posterior pointing Posterior, x = left-right pointing Left (0.78 mm each),
i.e. nibabel axis codes ``('I', 'P', 'L')`` -- KiTS19's own "interpolated" frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

WORKING_SPACING_ZYX: tuple[float, float, float] = (3.0, 0.78162497, 0.78162497)
WORKING_AXCODES: tuple[str, str, str] = ("I", "P", "L")

LABEL_BACKGROUND = 0
LABEL_KIDNEY = 1
LABEL_TUMOR = 2


@dataclass(frozen=True)
class IntensitySettings:
    """HU window mapped linearly onto [0, 1] (SPEC §0)."""

    hu_min: float = -200.0
    hu_max: float = 300.0


@dataclass(frozen=True)
class GeometrySettings:
    """Conventions shared by every stage (SPEC, 'Conventions')."""

    downsample_factor: int = 4
    gaussian_truncate: float = 4.0  # Gaussian filters are truncated at 4 sigma, mode="constant"
    probability_threshold: float = 0.5  # p counts as 1 when p >= 0.5


@dataclass(frozen=True)
class TargetSettings:
    """Landmark heat-map (stage 1) and soft-boundary (stage 2) targets (SPEC §1-2)."""

    landmark_sigma: float = 3.0
    landmark_min_component_fraction: float = 0.05  # [D] drop components < 5 % of the largest
    boundary_sigma_kidney: float = 3.0  # kidney and kidney+tumor targets
    boundary_sigma_tumor: float = 2.0  # tumor targets


@dataclass(frozen=True)
class Stage1Settings:
    """Localisation and mixed cropping (SPEC §1)."""

    landmark_peak_threshold: float = 0.5  # [D] heat-map maxima that reach 0.5 are landmarks
    landmark_peak_window: int = 9  # [D] 9 x 9 px maximum filter
    landmark_peaks_per_channel: int = 2  # [D] up to two per channel and slice, one per kidney
    width_tolerance: float = 0.2  # [D] |w_seg - w_lm| <= 0.2 * w_lm counts as "about the same"
    refine_min_component_voxels: int = 1500  # components < 1500 voxels are removed
    refine_max_volume_ratio: float = 0.5  # [D] refined box used when its volume < half
    refine_with: str = "K"  # "K" (paper) or "KT": which stage-2 model refines the box
    refine_enabled: bool = True
    # [D] K refines over the chosen box grown by this total margin [z, y, x] (8 / 64 / 64 per side:
    # the stage-2 margin, the context K was trained with) and clipped; (0, 0, 0) = the chosen box alone.
    refine_margin_zyx: tuple[int, int, int] = (16, 128, 128)
    support_components: bool = True  # [D] K/KT components must lie in stage 1's foreground (support.py)
    support_min_fraction: float = 0.1  # [D] stage-1 components < 10 % of its largest give no support
    support_max_components: int = 2  # [D] ... nor do any but its two largest (two kidneys)
    support_min_overlap: float = 0.5  # [D] a K/KT component needs >= half its voxels in the support
    # [D] a K/KT component below that overlap: "drop" it whole, or "trim" it to the support grown by
    # support_trim_margin_blocks ×4 blocks (a short scan's kidney merged with tissue beside it keeps its kidney part)
    support_outside: str = "trim"
    support_trim_margin_blocks: int = 1
    refine_only_when_support_is_smaller: bool = True  # [D] with the support: skip K when it cannot shrink the box
    # [D] the user's box rule: inside a crop box the user gives (--box, a box dragged in Slicer) every kidney region
    # stage 2 finds is kept, stage 1's support does not veto it ("authority"); "support": the support rule applies there too
    user_box_rule: str = "authority"


@dataclass(frozen=True)
class CropSettings:
    """Ground-truth crops for training and the stage-2 margin (SPEC §2), total growth in voxels [z, y, x]."""

    kidney_margin_zyx: tuple[int, int, int] = (16, 128, 128)  # [D] 8 / 64 / 64 per side
    tumor_margin_zyx: tuple[int, int, int] = (8, 16, 16)


@dataclass(frozen=True)
class FusionSettings:
    """Label assignment and tumor clean-up (SPEC §3)."""

    kt_only_label: int = LABEL_KIDNEY  # [D] KT=1 with neither K nor T -> kidney; 0 = strict consensus
    min_tumor_component_pixels: int = 64  # keep per-slice tumor components with > 64 pixels
    removed_tumor_label: int = LABEL_KIDNEY  # [D] removed tumor pixels become kidney


@dataclass(frozen=True)
class UncertaintySettings:
    """Where the stage-2 ensemble disagrees (uncertainty.py); not in the paper, every value ours."""

    disagreement_weight: float = 0.5  # [D] u = w * votes against the label + (1 - w) * (1 - |2 mean - 1|)
    tumor_outside_kt: bool = False  # [D] the tumor groups' votes count only inside KT's foreground
    disputed_threshold: float = 0.45  # [D] a voxel is disputed (the "Review" segment) when u >= 0.45: below the
    # 0.5 of a confident two-to-one split of the tumor groups; a lone KT only within 0.05 of its threshold
    review_score_threshold: float = 0.1  # [D] a case is flagged for review when >= 10 % of its labelled region is disputed


@dataclass(frozen=True)
class FindingSettings:
    """What a result says per kidney (kidney_sides.py); not in the paper, every value ours."""

    min_kidney_ml: float = 10.0  # [D] a side's kidney counts as found when kidney and tumor there reach 10 mL
    smaller_kidney_ratio: float = 1.0 / 3.0  # [D] a kidney (with tumor) below a third of the other is called far smaller


@dataclass(frozen=True)
class EvaluationSettings:
    """Metrics beyond the KiTS19 Dice (SPEC §4)."""

    surface_tolerance_mm: float = 2.0  # [D] surface Dice counts surface voxels within 2 mm


@dataclass(frozen=True)
class MethodSettings:
    """All settings of the method, grouped."""

    intensity: IntensitySettings = field(default_factory=IntensitySettings)
    geometry: GeometrySettings = field(default_factory=GeometrySettings)
    targets: TargetSettings = field(default_factory=TargetSettings)
    stage1: Stage1Settings = field(default_factory=Stage1Settings)
    crop: CropSettings = field(default_factory=CropSettings)
    fusion: FusionSettings = field(default_factory=FusionSettings)
    uncertainty: UncertaintySettings = field(default_factory=UncertaintySettings)
    findings: FindingSettings = field(default_factory=FindingSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)


DEFAULT_SETTINGS = MethodSettings()
