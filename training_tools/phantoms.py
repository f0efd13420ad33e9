"""Phantom CT volumes built around real KiTS19 kidney and tumor label maps (generator v2).

A phantom keeps the mask's grid: ``[z, y, x]`` arrays as nibabel gives a KiTS19 file (axis
codes I, P, L: z inferior, y posterior, x patient-left). Around the real kidneys it paints a
body (fat, wall muscles, spine, ribs, liver, spleen, stomach, aorta, IVC, bowel with gas or
oral contrast, ureters, lungs and pelvis where the scan reaches them) on a coarse grid, renders
the kidney cortex, medulla, collecting system and tumor at full resolution, then images it with
a simulated scanner (``phantom_acquisition``). A style (``phantom_style``) sets how widely each
case draws its contrast phase, tissue HU, tumor look, body size, resolution and noise; the
default, "v2", draws well beyond real CT. Everything is drawn from one ``numpy.random.Generator``.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np

from training_tools.phantom_acquisition import Acquisition, acquire, draw_acquisition
from training_tools.phantom_anatomy import Anatomy, paint_anatomy
from training_tools.phantom_fields import smooth_noise, upsample_box
from training_tools.phantom_fov import FIELDS_OF_VIEW, FieldOfView, draw_field_of_view
from training_tools.phantom_kidney import KidneyLook, draw_kidney_look, render_kidneys
from training_tools.phantom_layout import kidney_layout
from training_tools.phantom_phases import Appearance, draw_appearance
from training_tools.phantom_style import DEFAULT_STYLE, STYLES, PhantomStyle
from training_tools.phantom_tissues import tissue_table
from KidneyTumorSegLib.settings import LABEL_KIDNEY, LABEL_TUMOR

logger = logging.getLogger(__name__)

HU_MIN, HU_MAX = -1024, 3071
KIDNEY_MARGIN_MM = 10.0  # the kidney boxes reach this far beyond the labels
FOV_PROBABILITY = 0.6  # share of phantoms with a circular reconstruction field of view
IPL = ("I", "P", "L")
HEALTHY_STREAM = 7_000_001  # seeds the healthy-or-not draw of a training phantom apart from its painting


@dataclass
class _Patch:
    """A full-resolution box of HU that replaces the coarse anatomy there."""

    box: tuple[slice, slice, slice]
    hu: np.ndarray


def _anatomy_hu(anatomy: Anatomy, appearance: Appearance, rng: np.random.Generator) -> np.ndarray:
    """HU of the coarse anatomy: tissue mean plus tissue texture times a 4 mm random field."""
    means, amplitudes = tissue_table(appearance, rng)
    texture = smooth_noise(anatomy.tissue.shape, anatomy.canvas.spacing, 4.0, rng)
    texture *= amplitudes[anatomy.tissue]
    texture += means[anatomy.tissue]
    return texture


def _kidney_boxes(
    labels: np.ndarray, midline_x: int, spacing: tuple[float, float, float]
) -> list[tuple[slice, slice, slice]]:
    """Bounding boxes of the labels on each side of the midline, grown by ``KIDNEY_MARGIN_MM``;
    one box when the two would overlap."""
    margins = [int(np.ceil(KIDNEY_MARGIN_MM / s)) for s in spacing]
    boxes = []
    for part in (slice(0, midline_x), slice(midline_x, labels.shape[2])):
        fg = labels[:, :, part] > 0
        profiles = [np.nonzero(fg.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1))]
        if any(p.size == 0 for p in profiles):
            continue
        offsets = (0, 0, part.start)
        boxes.append(
            tuple(
                slice(max(int(p[0]) + o - m, 0), min(int(p[-1]) + o + m + 1, n))
                for p, o, n, m in zip(profiles, offsets, labels.shape, margins)
            )
        )
    if len(boxes) == 2 and boxes[0][2].stop > boxes[1][2].start:
        boxes = [tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(*boxes))]
    return boxes


def _kidney_patches(
    labels: np.ndarray, anatomy_hu: np.ndarray, anatomy: Anatomy, look: KidneyLook, rng: np.random.Generator
) -> list[_Patch]:
    """Full-resolution boxes around the kidneys of each side: kidney and tumor HU over the
    up-sampled anatomy."""
    spacing = anatomy.layout.spacing
    midline = int(np.clip(round(anatomy.layout.origin_mm[2] / spacing[2]), 0, labels.shape[2]))
    patches = []
    for box in _kidney_boxes(labels, midline, spacing):
        background = upsample_box(anatomy_hu, anatomy.factors, box)
        patches.append(_Patch(box, render_kidneys(labels[box], background, spacing, look, rng)))
    return patches


def _outside_fov(anatomy: Anatomy, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray | None:
    """[y, x] mask outside a circular field of view around the body, or None (no circle)."""
    if rng.uniform() >= FOV_PROBABILITY:
        return None
    body, layout = anatomy.body, anatomy.layout
    radius = max(body.half_width, body.anterior, body.posterior) * rng.uniform(0.9, 1.15) + rng.uniform(5.0, 40.0)
    y = np.arange(shape[1]) * layout.spacing[1] - layout.origin_mm[1] - body.centre_y
    x = np.arange(shape[2]) * layout.spacing[2] - layout.origin_mm[2]
    return (y[:, None] ** 2 + x[None, :] ** 2) > radius**2


@dataclass(frozen=True)
class PhantomInfo:
    """What was drawn for one phantom: anatomy, appearance (phase, HU), kidney/tumor look and
    the simulated acquisition."""

    anatomy: Anatomy
    appearance: Appearance
    look: KidneyLook
    acquisition: Acquisition


def make_phantom(
    labels_zyx: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator, style: PhantomStyle | None = None
) -> np.ndarray:
    """Phantom CT (int16 HU, same shape) around a ``[z, y, x]`` KiTS19 label map (I, P, L).

    ``spacing_zyx`` in mm; ``style`` None = the default style ("v2"). Kidney (1) and tumor (2)
    voxels get cortex / medulla / collecting system / tumor HU; everything else is synthetic
    anatomy placed relative to the kidneys.
    """
    return make_phantom_with_info(labels_zyx, spacing_zyx, rng, style)[0]


def make_phantom_with_info(
    labels_zyx: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator, style: PhantomStyle | None = None
) -> tuple[np.ndarray, PhantomInfo]:
    """``make_phantom`` that also returns what it drew (``PhantomInfo``)."""
    style = style or STYLES[DEFAULT_STYLE]
    labels = np.asarray(labels_zyx)
    labels = labels if labels.dtype == np.uint8 else labels.astype(np.uint8)
    spacing = tuple(float(s) for s in spacing_zyx)
    layout = kidney_layout(labels, spacing, rng)
    appearance = draw_appearance(style, rng)
    anatomy = paint_anatomy(labels, layout, rng, style.fat_mm)
    coarse_hu = _anatomy_hu(anatomy, appearance, rng)
    look = draw_kidney_look(appearance, style, rng)
    whole = tuple(slice(0, n) for n in labels.shape)
    hu = upsample_box(coarse_hu, anatomy.factors, whole)
    for patch in _kidney_patches(labels, coarse_hu, anatomy, look, rng):
        hu[patch.box] = patch.hu
    acquisition = draw_acquisition(style, rng)
    hu = acquire(hu, spacing, acquisition, rng, style.resolution)
    outside = _outside_fov(anatomy, labels.shape, rng)
    if outside is not None:
        hu[:, outside] = HU_MIN
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    logger.debug("phantom: %s phase, tumor %s, voxel %s mm, noise %.1f HU", appearance.phase, look.tumor_kind,
                 acquisition.voxel_mm, acquisition.noise_hu)
    return np.rint(hu).astype(np.int16), PhantomInfo(anatomy, appearance, look, acquisition)


def make_training_phantom(
    labels_zyx: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator, style: PhantomStyle | None = None
) -> tuple[np.ndarray, np.ndarray, FieldOfView]:
    """A phantom with a drawn field of view (``phantom_fov``): more body above and below the mask,
    then a window that holds the kidneys, cuts through them or misses them.

    Returns the phantom (int16 HU ``[z, y, x]``), its labels (uint8, same shape; all 0 when the
    window misses the kidneys) and the field of view drawn.
    """
    style = style or STYLES[DEFAULT_STYLE]
    labels = np.asarray(labels_zyx, np.uint8)
    fov = draw_field_of_view(labels, tuple(float(s) for s in spacing_zyx), style, rng)
    padded = fov.pad(labels)
    hu = make_phantom(padded, spacing_zyx, rng, style)
    return np.ascontiguousarray(hu[fov.keep]), np.ascontiguousarray(padded[fov.keep]), fov


# --- files ------------------------------------------------------------------------------------


def case_name(mask_path: str | Path) -> str:
    """``case_00012`` for ``case_00012.nii.gz`` and for ``case_00012/segmentation.nii.gz``."""
    path = Path(mask_path)
    if path.name.startswith("segmentation."):
        return path.parent.name
    return path.name.split(".")[0]


def case_seed(seed: int, name: str) -> np.random.SeedSequence:
    """The random stream of one case: a function of the run seed and the case name only."""
    return np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))])


def without_tumor(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every tumor voxel (2) made kidney (1): the same kidneys, rendered healthy."""
    return np.where(labels == LABEL_TUMOR, np.uint8(LABEL_KIDNEY), labels).astype(np.uint8)


def is_healthy_phantom(seed: int, name: str, share: float) -> bool:
    """Whether the training phantom ``name`` of run ``seed`` renders its tumor as kidney: a draw of
    its own stream (apart from the phantom's), true for a ``share`` of the phantoms."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"healthy share must lie in [0, 1], got {share}")
    return bool(np.random.default_rng([*case_seed(seed, name).entropy, HEALTHY_STREAM]).random() < share)


def find_masks(folder: str | Path) -> list[Path]:
    """KiTS19 label maps in a folder: ``case_*.nii.gz`` files and ``case_*/segmentation.nii.gz``."""
    folder = Path(folder)
    found = {case_name(p): p for p in folder.glob("case_*/segmentation.nii*")}
    found.update({case_name(p): p for p in folder.glob("case_*.nii*") if p.is_file()})
    return [found[name] for name in sorted(found)]


@dataclass(frozen=True)
class IplLabels:
    """A label map turned to I, P, L axes: uint8 ``labels`` ``[z, y, x]``, their ``affine``, the
    ``spacing`` (z, y, x) in mm, and ``back``, the orientation transform to the file's own axes."""

    labels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    back: np.ndarray


def labels_on_ipl_axes(img: nib.Nifti1Image) -> IplLabels:
    """``img``'s labels turned to I, P, L axes (no resampling: axes reordered and flipped)."""
    current = nib.orientations.io_orientation(img.affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(IPL))
    labels = nib.orientations.apply_orientation(np.asarray(img.dataobj), transform).astype(np.uint8)
    affine = img.affine @ nib.orientations.inv_ornt_aff(transform, img.shape[:3])
    zooms = np.asarray(img.header.get_zooms()[:3], float)
    spacing = tuple(float(zooms[int(a)]) for a in transform[:, 0].argsort())
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(IPL), current)
    return IplLabels(labels, np.asarray(affine, float), spacing, back)


def _windowed_phantom(ipl: IplLabels, rng: np.random.Generator, style: PhantomStyle | None,
                      short: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A phantom of ``ipl``'s labels with a drawn field of view (always a short window when
    ``short``): int16 HU and uint8 labels on I, P, L axes, and their affine."""
    style = style or STYLES[DEFAULT_STYLE]
    if short:
        style = replace(style, no_kidney=0.0, cut_kidney=0.0, short_window=1.0)
    hu, labels, fov = make_training_phantom(ipl.labels, ipl.spacing, rng, style)
    window_start = np.eye(4)
    window_start[:3, 3] = [fov.keep[0].start - fov.pad_before, fov.keep[1].start, fov.keep[2].start]
    return hu, labels, ipl.affine @ window_start


def _write_atomic(img: nib.Nifti1Image, path: Path) -> None:
    temporary = path.with_name(path.name.replace(".nii", ".partial.nii"))
    nib.save(img, str(temporary))
    temporary.replace(path)


def make_phantom_case(mask_path: str | Path, out_dir: str | Path, seed: int = 0, style: PhantomStyle | None = None,
                      field_of_view: str = "mask", tumor: bool = True) -> Path:
    """Write ``out_dir/case_XXXXX/{imaging,segmentation}.nii.gz`` (KiTS19 layout) for one mask.

    ``field_of_view``: ``"mask"`` paints the mask's own grid and affine; ``"drawn"`` draws the
    style's training field of view (more body above and below, a window that may cut or miss the
    kidneys or be short: ``make_training_phantom``); ``"short"`` always keeps a short window
    (``style.short_mm``) through the kidneys, as a scan of a few centimetres. The last two keep the
    mask's voxel size and orientation (I, P, L axes) and an affine that puts every label where the
    mask has it. ``imaging`` is int16 HU, ``segmentation`` uint8; each file is written under a
    temporary name, then renamed.
    """
    if field_of_view not in FIELDS_OF_VIEW:
        raise ValueError(f"field_of_view must be one of {', '.join(FIELDS_OF_VIEW)}, got {field_of_view!r}")
    mask_path = Path(mask_path)
    name = case_name(mask_path)
    img = nib.load(str(mask_path))
    ipl = labels_on_ipl_axes(img)
    if not tumor:
        ipl = replace(ipl, labels=without_tumor(ipl.labels))
    rng = np.random.default_rng(case_seed(seed, name))
    try:
        if field_of_view == "mask":
            phantom = make_phantom(ipl.labels, ipl.spacing, rng, style)
            hu, labels = (nib.orientations.apply_orientation(a, ipl.back) for a in (phantom, ipl.labels))
            affine = img.affine
        else:
            hu, labels, affine = _windowed_phantom(ipl, rng, style, field_of_view == "short")
    except ValueError as error:
        raise ValueError(f"{mask_path}: {error}") from error
    case_dir = Path(out_dir) / name
    case_dir.mkdir(parents=True, exist_ok=True)
    for array, dtype, filename in ((labels, np.uint8, "segmentation.nii.gz"), (hu, np.int16, "imaging.nii.gz")):
        header = img.header.copy()
        header.set_data_dtype(dtype)
        out = nib.Nifti1Image(np.asfortranarray(array, dtype=dtype), affine, header)  # NIfTI order
        out.header.set_slope_inter(1.0, 0.0)
        _write_atomic(out, case_dir / filename)
    return case_dir


def make_phantoms(
    mask_paths: Iterable[str | Path], out_dir: str | Path, seed: int = 0, progress: bool = True,
    style: PhantomStyle | None = None, field_of_view: str = "mask", tumor: bool = True,
) -> list[Path]:
    """``make_phantom_case`` for every mask, with a progress bar (tqdm, else log lines)."""
    paths = [Path(p) for p in mask_paths]
    written = []
    for path in _progress(paths, progress):
        written.append(make_phantom_case(path, out_dir, seed, style, field_of_view, tumor))
    return written


def _progress(items: list, enabled: bool) -> Iterable:
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return _logged(items)
    return tqdm(items, desc="phantoms", unit="case")


def _logged(items: list) -> Iterable:
    for i, item in enumerate(items, 1):
        logger.info("phantom %d/%d: %s", i, len(items), case_name(item))
        yield item
