"""Training phantoms painted straight into a cache: several per mask, some healthy, some with moved tumors.

Each training phantom is drawn on the working frame (``make_training_phantom``: its own
appearance and field of view) and cached with every training target, without a NIfTI in
between. Phantom ``v`` of a mask is cached as ``case_XXXXX`` (v = 0) or ``case_XXXXX_vN``; its
random stream depends only on the run seed and that id, so a cache grows by re-running with more
``variants`` (cached phantoms are skipped) and every phantom is the same whichever worker drew it.

A model fits a few dozen phantoms image by image (``benchmarks/generalisation_gap.py``: an axial
2D U-Net scores Dice 0.90 on its 74 training phantoms, 0.08 on new phantoms of the same masks),
so more phantoms per mask are what a tumor model needs most.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from KidneyTumorSegLib.geometry import to_working_frame, working_frame_for
from KidneyTumorSegLib.preprocessing import normalize_hu

from .cache import (CACHE_MANIFEST, case_arrays, default_workers, is_complete, run_parallel, write_cache_manifest,
                    write_case)
from .phantom_style import DEFAULT_STYLE, HEALTHY_SHARE, style_named
from .phantom_transplant import transplant_tumor, tumor_crop
from .phantoms import case_name, case_seed, is_healthy_phantom, labels_on_ipl_axes, make_training_phantom, without_tumor

logger = logging.getLogger(__name__)


MOVED_STREAM = 7_000_002  # seeds a phantom's moved tumor apart from its painting and its healthy draw


@dataclass(frozen=True)
class PhantomDraw:
    """How a cache's phantoms are drawn: run ``seed``, generator ``style``, ``healthy_share`` (tumor
    rendered as kidney) and ``moved_share`` (of the others: the tumor of another mask, moved to a
    random place of this one's kidney surface, ``phantom_transplant``)."""

    seed: int = 0
    style: str = DEFAULT_STYLE
    healthy_share: float = HEALTHY_SHARE
    moved_share: float = 0.0

    def __post_init__(self) -> None:
        style_named(self.style)  # ValueError names the styles
        for name in ("healthy_share", "moved_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name.replace('_', ' ')} must lie in [0, 1], got {getattr(self, name)}")


def variant_name(mask_path: Path, variant: int) -> str:
    """Cache id of one training phantom: the case name, with ``_vN`` for the N-th extra variant."""
    return case_name(mask_path) + (f"_v{variant}" if variant else "")


def working_labels(mask_path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A label map on its working frame (nearest): uint8 ``[z, y, x]`` and the spacing (z, y, x) mm."""
    turned = labels_on_ipl_axes(nib.load(str(mask_path)))
    frame = working_frame_for(turned.labels.shape, turned.affine)
    return to_working_frame(turned.labels, frame, order=0, dtype=np.uint8), frame.spacing


def _moved_tumor(labels: np.ndarray, spacing: tuple[float, float, float], mask_path: Path, donors: tuple[Path, ...],
                 rng: np.random.Generator) -> tuple[np.ndarray, str | None]:
    """``labels`` with its tumor rendered as kidney and a random donor's tumor moved onto its kidney
    surface, and the donor's file name (None, labels unchanged, when no other mask has a tumor)."""
    others = [d for d in donors if d.name != mask_path.name]
    for donor in rng.permutation(len(others)):
        tumor = tumor_crop(working_labels(others[donor])[0])
        if tumor is not None:
            return transplant_tumor(without_tumor(labels), tumor, spacing, rng), others[donor].name
    return labels, None


def cache_phantom(job: tuple[Path, Path, PhantomDraw, int, tuple[Path, ...]]) -> tuple[str, str | None]:
    """Build phantom ``variant`` of a mask on the working frame and cache it (skipped when cached);
    (case id, error or None). ``job``: mask, cache folder, draw, variant, donor masks.

    The mask goes to the working frame (nearest), the phantom is painted there with a drawn field
    of view; a window without kidney caches stage 1's arrays only. A ``healthy_share`` of the
    phantoms (``is_healthy_phantom``) render and label their tumor as kidney; a ``moved_share`` of
    the others take a donor's tumor at a random place instead of their own.
    """
    mask_path, cache_dir, draw, variant, donors = job
    name = variant_name(mask_path, variant)
    try:
        if not is_complete(cache_dir / name):
            labels, spacing = working_labels(mask_path)
            healthy = is_healthy_phantom(draw.seed, name, draw.healthy_share)
            moved_rng = np.random.default_rng([*case_seed(draw.seed, name).entropy, MOVED_STREAM])
            donor = None
            if healthy:
                labels = without_tumor(labels)
            elif moved_rng.uniform() < draw.moved_share:
                labels, donor = _moved_tumor(labels, spacing, mask_path, donors, moved_rng)
            rng = np.random.default_rng(case_seed(draw.seed, name))
            ct, labels, _ = make_training_phantom(labels, spacing, rng, style_named(draw.style))
            arrays, meta = case_arrays(normalize_hu(ct), labels, allow_empty=True)
            meta["source"] = {"phantom_of": mask_path.name, "seed": draw.seed, "style": draw.style, "variant": variant,
                              "healthy": healthy, "tumor_of": donor}
            write_case(cache_dir, name, arrays, meta)
        return name, None
    except Exception as error:  # one bad mask must not stop the others
        return name, f"{type(error).__name__}: {error}"


def check_draw(cache_dir: Path, draw: PhantomDraw) -> None:
    """Refuse to add phantoms of another draw to a cache (ValueError): its cases would mix two runs."""
    manifest = cache_dir / CACHE_MANIFEST
    if not manifest.is_file():
        return
    recorded = json.loads(manifest.read_text()).get("phantoms")
    if recorded is None:
        raise ValueError(f"{cache_dir}: a cache of other cases (no phantom draw recorded); choose another folder")
    wanted = asdict(draw)
    differing = [k for k in wanted if recorded.get(k) != wanted[k]]
    if differing:
        found = ", ".join(f"{k} {recorded.get(k)}" for k in differing)
        raise ValueError(f"{cache_dir}: holds phantoms of {found}; choose another folder or the same settings")


def cache_phantoms(masks: list[Path], cache_dir: Path, draw: PhantomDraw = PhantomDraw(), variants: int = 1,
                   workers: int | None = None, progress: bool = True) -> list[str]:
    """Cache ``variants`` phantoms of every mask (ids ``variant_name``), ``workers`` processes at once;
    the ids cached (failures are logged and left out). ``cache.json`` records the draw."""
    if variants < 1:
        raise ValueError(f"variants must be at least 1, got {variants}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    check_draw(cache_dir, draw)
    donors = tuple(masks) if draw.moved_share > 0 else ()
    jobs = [(m, cache_dir, draw, v, donors) for v in range(variants) for m in masks]
    cached = []
    for name, error in run_parallel(cache_phantom, jobs, workers or default_workers(), "phantoms", progress):
        if error:
            logger.error("%s: left out (%s)", name, error)
        else:
            cached.append(name)
    masks_dir = str(masks[0].parent.resolve()) if masks else None
    write_cache_manifest(cache_dir, {"phantoms": asdict(draw), "masks": masks_dir})
    return sorted(cached)
