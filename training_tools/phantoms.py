"""Phantom CT volumes built around real KiTS19 kidney and tumor label maps.

A phantom keeps the mask's grid: ``[z, y, x]`` arrays as nibabel gives a KiTS19 file (axis
codes I, P, L: z inferior, y posterior, x patient-left). Around the real kidneys it paints a
body (fat, wall muscles, spine, ribs, liver, spleen, aorta, IVC, bowel with gas, lungs and
pelvis where the scan reaches them) on a coarse grid, renders the kidney cortex, medulla and
tumor at full resolution, blurs them by a point-spread function and adds correlated noise.
Tissue HU come from a real CT (``tissue_hu.json``); contrast enhancement, tumor kind, noise
and blur vary per case. Everything is drawn from one ``numpy.random.Generator``.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from training_tools.phantom_anatomy import Anatomy, paint_anatomy
from training_tools.phantom_fields import smooth_noise, upsample_box
from training_tools.phantom_kidney import KidneyLook, draw_kidney_look, render_kidneys
from training_tools.phantom_layout import kidney_layout
from training_tools.phantom_tissues import Contrast, draw_contrast, measured_hu, tissue_table

logger = logging.getLogger(__name__)

HU_MIN, HU_MAX = -1024, 3071
SLAB = 16  # slices assembled at a time
KIDNEY_MARGIN_MM = 10.0  # the kidney boxes reach this far beyond the labels
NOISE_HU = (8.0, 28.0)  # clip of the noise standard deviation
NOISE_SCALE = (0.8, 1.6)  # times the noise measured on the 3 mm reference CT, times sqrt(3 mm / dz)
NOISE_CORRELATION_PX = (0.4, 0.8)
PSF_MM = (0.5, 0.9)
NOISE_BANK_SLICES = 24
NOISE_BANK_PAD = 32
FOV_PROBABILITY = 0.6  # share of phantoms with a circular reconstruction field of view
IPL = ("I", "P", "L")


@dataclass
class _Patch:
    """A full-resolution box of HU that replaces the coarse anatomy there."""

    box: tuple[slice, slice, slice]
    hu: np.ndarray


def _anatomy_hu(anatomy: Anatomy, contrast: Contrast, rng: np.random.Generator) -> np.ndarray:
    """HU of the coarse anatomy: tissue mean plus tissue texture times a 4 mm random field."""
    means, amplitudes = tissue_table(contrast)
    texture = smooth_noise(anatomy.tissue.shape, anatomy.canvas.spacing, 4.0, rng)
    texture *= amplitudes[anatomy.tissue]
    texture += means[anatomy.tissue]
    return texture


def _psf_sigma(spacing: tuple[float, float, float], rng: np.random.Generator) -> tuple[float, ...]:
    """Blur in voxels: a scanner point-spread (0.5-0.9 mm) combined with each voxel's own width."""
    psf = rng.uniform(*PSF_MM)
    return tuple(float(np.sqrt(psf**2 + (0.42 * s) ** 2) / s) for s in spacing)


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
    up-sampled anatomy, blurred by the point-spread function."""
    spacing = anatomy.layout.spacing
    sigma = _psf_sigma(spacing, rng)
    midline = int(np.clip(round(anatomy.layout.origin_mm[2] / spacing[2]), 0, labels.shape[2]))
    patches = []
    for box in _kidney_boxes(labels, midline, spacing):
        background = upsample_box(anatomy_hu, anatomy.factors, box)
        hu = render_kidneys(labels[box], background, spacing, look, rng)
        patches.append(_Patch(box, ndimage.gaussian_filter(hu, sigma, truncate=3.0)))
    return patches


class _NoiseBank:
    """In-plane correlated Gaussian noise: a few padded slices, read at random offsets. Thinner
    slices are noisier (std ~ 1 / sqrt(slice thickness))."""

    def __init__(self, shape: tuple[int, int, int], slice_mm: float, rng: np.random.Generator):
        pad = NOISE_BANK_PAD
        count = min(shape[0], NOISE_BANK_SLICES)
        bank = rng.standard_normal((count, shape[1] + 2 * pad, shape[2] + 2 * pad), dtype=np.float32)
        sigma = rng.uniform(*NOISE_CORRELATION_PX)
        bank = ndimage.gaussian_filter(bank, (0.0, sigma, sigma), mode="wrap")
        self.bank = bank / bank.std()
        measured = measured_hu()["noise"]["std"]
        self.std = float(np.clip(measured * rng.uniform(*NOISE_SCALE) * np.sqrt(3.0 / slice_mm), *NOISE_HU))
        self.index = rng.integers(0, count, shape[0])
        self.offset = rng.integers(0, 2 * pad + 1, (shape[0], 2))
        self.shape = shape

    def add(self, hu: np.ndarray, z0: int) -> None:
        for k in range(hu.shape[0]):
            (oy, ox), i = self.offset[z0 + k], self.index[z0 + k]
            hu[k] += self.std * self.bank[i, oy : oy + self.shape[1], ox : ox + self.shape[2]]


def _outside_fov(anatomy: Anatomy, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray | None:
    """[y, x] mask outside a circular field of view around the body, or None (no circle)."""
    if rng.uniform() >= FOV_PROBABILITY:
        return None
    body, layout = anatomy.body, anatomy.layout
    radius = max(body.half_width, body.anterior, body.posterior) * 1.1 + rng.uniform(5.0, 40.0)
    y = np.arange(shape[1]) * layout.spacing[1] - layout.origin_mm[1] - body.centre_y
    x = np.arange(shape[2]) * layout.spacing[2] - layout.origin_mm[2]
    return (y[:, None] ** 2 + x[None, :] ** 2) > radius**2


@dataclass(frozen=True)
class PhantomInfo:
    """What was drawn for one phantom: its coarse anatomy, contrast and kidney/tumor look."""

    anatomy: Anatomy
    contrast: Contrast
    look: KidneyLook
    noise_hu: float


def make_phantom(labels_zyx: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Phantom CT (int16 HU, same shape) around a ``[z, y, x]`` KiTS19 label map (I, P, L).

    ``spacing_zyx`` in mm. Kidney (1) and tumor (2) voxels get cortex / medulla / tumor HU;
    everything else is synthetic anatomy placed relative to the kidneys.
    """
    return make_phantom_with_info(labels_zyx, spacing_zyx, rng)[0]


def make_phantom_with_info(
    labels_zyx: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator
) -> tuple[np.ndarray, PhantomInfo]:
    """``make_phantom`` that also returns what it drew (``PhantomInfo``)."""
    labels = np.asarray(labels_zyx)
    labels = labels if labels.dtype == np.uint8 else labels.astype(np.uint8)
    spacing = tuple(float(s) for s in spacing_zyx)
    layout = kidney_layout(labels, spacing, rng)
    contrast = draw_contrast(rng)
    anatomy = paint_anatomy(labels, layout, rng)
    coarse_hu = _anatomy_hu(anatomy, contrast, rng)
    look = draw_kidney_look(contrast, rng)
    patches = _kidney_patches(labels, coarse_hu, anatomy, look, rng)
    noise = _NoiseBank(labels.shape, spacing[0], rng)
    outside = _outside_fov(anatomy, labels.shape, rng)
    out = np.empty(labels.shape, np.int16)
    for z0 in range(0, labels.shape[0], SLAB):
        z1 = min(z0 + SLAB, labels.shape[0])
        slab = (slice(z0, z1), slice(0, labels.shape[1]), slice(0, labels.shape[2]))
        hu = upsample_box(coarse_hu, anatomy.factors, slab)
        for patch in patches:
            lo, hi = max(z0, patch.box[0].start), min(z1, patch.box[0].stop)
            if lo < hi:
                src = patch.hu[lo - patch.box[0].start : hi - patch.box[0].start]
                hu[lo - z0 : hi - z0, patch.box[1], patch.box[2]] = src
        noise.add(hu, z0)
        if outside is not None:
            hu[:, outside] = HU_MIN
        np.clip(hu, HU_MIN, HU_MAX, out=hu)
        out[z0:z1] = np.rint(hu, out=hu)
    logger.debug("phantom: tumor %s, phase %.2f, noise %.1f HU", look.tumor_kind, contrast.phase, noise.std)
    return out, PhantomInfo(anatomy, contrast, look, noise.std)


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


def find_masks(folder: str | Path) -> list[Path]:
    """KiTS19 label maps in a folder: ``case_*.nii.gz`` files and ``case_*/segmentation.nii.gz``."""
    folder = Path(folder)
    found = {case_name(p): p for p in folder.glob("case_*/segmentation.nii*")}
    found.update({case_name(p): p for p in folder.glob("case_*.nii*") if p.is_file()})
    return [found[name] for name in sorted(found)]


def _to_ipl(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Label array turned to I, P, L axes, the transform back, and the spacing in that order."""
    current = nib.orientations.io_orientation(img.affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(IPL))
    data = np.asarray(img.dataobj)
    labels = nib.orientations.apply_orientation(data, transform).astype(np.uint8)
    zooms = np.asarray(img.header.get_zooms()[:3], float)
    spacing = tuple(float(zooms[int(a)]) for a in transform[:, 0].argsort())
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(IPL), current)
    return labels, back, spacing


def _write_atomic(img: nib.Nifti1Image, path: Path) -> None:
    temporary = path.with_name(path.name.replace(".nii", ".partial.nii"))
    nib.save(img, str(temporary))
    temporary.replace(path)


def make_phantom_case(mask_path: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Write ``out_dir/case_XXXXX/{imaging,segmentation}.nii.gz`` (KiTS19 layout) for one mask.

    ``imaging`` is int16 HU on the mask's grid and affine; ``segmentation`` holds the same
    labels as uint8. Each file is written under a temporary name, then renamed.
    """
    mask_path = Path(mask_path)
    name = case_name(mask_path)
    img = nib.load(str(mask_path))
    labels_ipl, back, spacing = _to_ipl(img)
    rng = np.random.default_rng(case_seed(seed, name))
    try:
        phantom = make_phantom(labels_ipl, spacing, rng)
    except ValueError as error:
        raise ValueError(f"{mask_path}: {error}") from error
    hu = nib.orientations.apply_orientation(phantom, back)
    labels = nib.orientations.apply_orientation(labels_ipl, back)
    case_dir = Path(out_dir) / name
    case_dir.mkdir(parents=True, exist_ok=True)
    for array, dtype, filename in ((labels, np.uint8, "segmentation.nii.gz"), (hu, np.int16, "imaging.nii.gz")):
        header = img.header.copy()
        header.set_data_dtype(dtype)
        out = nib.Nifti1Image(np.asfortranarray(array, dtype=dtype), img.affine, header)  # NIfTI order
        out.header.set_slope_inter(1.0, 0.0)
        _write_atomic(out, case_dir / filename)
    return case_dir


def make_phantoms(
    mask_paths: Iterable[str | Path], out_dir: str | Path, seed: int = 0, progress: bool = True
) -> list[Path]:
    """``make_phantom_case`` for every mask, with a progress bar (tqdm, else log lines)."""
    paths = [Path(p) for p in mask_paths]
    written = []
    for path in _progress(paths, progress):
        written.append(make_phantom_case(path, out_dir, seed))
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
