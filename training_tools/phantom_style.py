"""How widely a phantom's appearance is drawn: one named, frozen set of distributions.

Generator v2 follows SynthSeg's idea (Billot et al., Medical Image Analysis 2023): draw the
appearance of every case well beyond the real range, so that a real scan is just one more
sample. ``STYLES["v2"]`` is that generator's default; ``STYLES["v1"]`` keeps the first
generator's narrow, KiTS19-like look (enhanced phases only, the mask's own resolution, no
field-of-view changes), for comparisons.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PhantomStyle:
    """The distributions one phantom is drawn from.

    ``phase_weights``: probability of each contrast phase (``phantom_phases.PHASES``).
    ``spread``: each tissue's HU is drawn uniformly from its phase range widened on both
    sides by ``spread`` times the range's width plus ``spread_hu``.
    ``random_soft_tissue``: probability that every soft tissue instead takes an independent
    uniform HU in ``random_hu`` (SynthSeg's contrast-agnostic draw; fat, air, lung and bone keep
    their physical values).
    ``oral_contrast``: probability of contrast-filled bowel.
    ``noise_hu``: range of the noise standard deviation (drawn log-uniformly).
    ``slice_mm`` / ``pixel_mm``: ranges of the simulated acquisition's slice thickness and
    in-plane pixel; ``low_pixel``: probability that the pixel is drawn from ``low_pixel_mm`` instead
    (down-sampled scans). ``isotropic``: probability that the pixel equals the slice thickness.
    ``fat_mm``: range of the subcutaneous fat thickness (body size).
    ``resolution``: False keeps the grid's own resolution (no acquisition blur or resampling).
    Field of view (``phantom_fov``; training volumes only): ``extend_mm`` more body painted above
    and below the mask (range, each end), then a window of slices kept that holds every kidney,
    cuts through them (``cut_kidney``), misses them (``no_kidney``) or is short (``short_window``: a
    ``short_mm`` long window centred in the kidneys); in-plane, a window ``fov_mm`` wide (range)
    around the kidneys.
    """

    phase_weights: tuple[float, float, float, float] = (0.3, 0.25, 0.3, 0.15)
    spread: float = 0.25
    spread_hu: float = 10.0
    random_soft_tissue: float = 0.15
    random_hu: tuple[float, float] = (-40.0, 260.0)
    oral_contrast: float = 0.3
    noise_hu: tuple[float, float] = (5.0, 40.0)
    noise_grain_px: tuple[float, float] = (0.0, 1.0)
    slice_mm: tuple[float, float] = (0.5, 5.0)
    pixel_mm: tuple[float, float] = (0.5, 1.0)
    low_pixel: float = 0.25
    low_pixel_mm: tuple[float, float] = (1.0, 3.5)
    isotropic: float = 0.2
    psf_mm: tuple[float, float] = (0.4, 1.2)
    fat_mm: tuple[float, float] = (5.0, 90.0)
    resolution: bool = True
    extend_mm: tuple[float, float] = (0.0, 150.0)
    cut_kidney: float = 0.1
    no_kidney: float = 0.05
    short_window: float = 0.2
    short_mm: tuple[float, float] = (45.0, 150.0)
    fov_mm: tuple[float, float] = (280.0, 500.0)


STYLES: dict[str, PhantomStyle] = {
    "v2": PhantomStyle(),
    "v1": PhantomStyle(
        phase_weights=(0.0, 0.5, 0.5, 0.0),
        spread=0.0,
        spread_hu=5.0,
        random_soft_tissue=0.0,
        oral_contrast=0.0,
        noise_hu=(8.0, 28.0),
        noise_grain_px=(0.4, 0.8),
        fat_mm=(8.0, 40.0),
        resolution=False,
        extend_mm=(0.0, 0.0),
        cut_kidney=0.0,
        no_kidney=0.0,
        short_window=0.0,
        fov_mm=(1e4, 1e4),
    ),
}
DEFAULT_STYLE = "v2"


def style_named(name: str) -> PhantomStyle:
    """The style called ``name`` (``v1`` or ``v2``); ValueError names the valid ones."""
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown phantom style {name!r}; expected one of {', '.join(sorted(STYLES))}") from None

HEALTHY_SHARE = 0.3
"""[D] Share of training phantoms whose tumor is rendered and labelled as kidney (SPEC §2, revised):
KiTS19 holds tumor cases only, so without them "no tumor" is never shown to the tumor models."""
