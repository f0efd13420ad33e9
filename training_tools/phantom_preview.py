"""A picture of phantom cases beside their masks: axial and coronal slices through the tumor.

    python -m training_tools.phantom_preview --masks M1.nii.gz M2.nii.gz --seed 0 --out phantoms.png
    python -m training_tools.phantom_preview --masks M1.nii.gz ... --beside CT.nii.gz --beside-labels SEG.nii.gz \
        --out phantoms_v2.png

builds the phantoms of the given KiTS19 masks in a temporary folder and draws them; with
``--cases DIR ...`` it draws existing KiTS19-layout case folders instead, and with ``--cached DIR ...``
cached training phantoms (``phantom-cache``: moved tumors named by their mask). ``--beside`` draws a
real CT first, at the same window, through the middle of its kidneys (TotalSegmentator classes 2
and 3 of ``--beside-labels``), and every phantom as an axial and a coronal slice with the mask's
outline: a grid to judge the phantoms' look against a real scan.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from KidneyTumorSegLib.settings import IntensitySettings, WORKING_SPACING_ZYX
from training_tools.phantom_style import DEFAULT_STYLE, STYLES, style_named
from training_tools.phantoms import make_phantom_case

logger = logging.getLogger(__name__)

WINDOW_HU = (-200.0, 300.0)  # the method's HU clip
BODY_HU = -500.0
LABEL_COLOURS = np.array([[0, 0, 0], [0.95, 0.75, 0.2], [0.9, 0.15, 0.15]])  # background, kidney, tumor


def _load_volumes(image_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """An image and its labels as ``[z, y, x]`` (I, P, L) arrays, and the spacing."""
    images = []
    for path in (image_path, labels_path):
        img = nib.as_closest_canonical(nib.load(str(path)))  # R, A, S
        images.append(np.asarray(img.dataobj).transpose(2, 1, 0)[::-1, ::-1, ::-1])  # -> I, P, L
    zooms = nib.as_closest_canonical(nib.load(str(image_path))).header.get_zooms()[:3]
    return images[0], images[1].astype(np.uint8), (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def _load_case(case_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Imaging and labels of a KiTS19-layout case as ``[z, y, x]`` (I, P, L) arrays, and the spacing."""
    return _load_volumes(case_dir / "imaging.nii.gz", case_dir / "segmentation.nii.gz")


def _tumor_centre(labels: np.ndarray) -> tuple[int, int, int]:
    target = labels == 2 if (labels == 2).any() else labels > 0
    return tuple(int(np.median(i)) for i in np.nonzero(target))


def _body_crop(image: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of a slice that hold the body (largest region above -500 HU), plus a margin."""
    regions, count = ndimage.label(image > BODY_HU)
    if count == 0:
        return slice(None), slice(None)
    body = regions == 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))
    rows, cols = np.nonzero(body.any(axis=1))[0], np.nonzero(body.any(axis=0))[0]
    return (
        slice(max(int(rows[0]) - 4, 0), int(rows[-1]) + 5),
        slice(max(int(cols[0]) - 4, 0), int(cols[-1]) + 5),
    )


def _save(fig, png: str | Path) -> Path:
    """Write a preview figure as a PNG on black (its folder made as needed) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=72, facecolor="black")
    plt.close(fig)
    return png


def save_phantom_preview(case_dirs: Sequence[str | Path], png: str | Path) -> Path:
    """Draw one row per case: axial phantom, axial mask, coronal phantom, coronal mask (through
    the tumor's median voxel). Radiological view: patient-left on the right, anterior / superior up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(case_dirs), 4, figsize=(16, 4.2 * len(case_dirs)), squeeze=False)
    for row, case_dir in zip(axes, case_dirs):
        hu, labels, spacing = _load_case(Path(case_dir))
        z, y, _ = _tumor_centre(labels)
        views = (
            ("axial", hu[z], labels[z], spacing[1] / spacing[2]),
            ("coronal", hu[:, y, :], labels[:, y, :], spacing[0] / spacing[2]),
        )
        for k, (view, image, mask, aspect) in enumerate(views):
            crop = _body_crop(image)
            row[2 * k].imshow(image[crop], cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect)
            row[2 * k + 1].imshow(LABEL_COLOURS[np.clip(mask[crop], 0, 2)], aspect=aspect, interpolation="nearest")
            title = f"{Path(case_dir).name} phantom, {view}, {spacing[0]:g} mm slices"
            row[2 * k].set_title(title, fontsize=10, color="white")
            row[2 * k + 1].set_title(f"KiTS19 mask, {view}: kidney, tumor", fontsize=10, color="white")
        for ax in row:
            ax.set_axis_off()
    return _save(fig, png)


REAL_KIDNEY_CLASSES = (2, 3)  # TotalSegmentator "total": right and left kidney


def _panel(ax, image: np.ndarray, mask: np.ndarray, aspect: float, title: str) -> None:
    """One slice at the method's window with the kidney (yellow) and tumor (red) outlines."""
    crop = _body_crop(image)
    ax.imshow(image[crop], cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect)
    for label, colour in ((1, LABEL_COLOURS[1]), (2, LABEL_COLOURS[2])):
        if (mask[crop] >= label).any():
            ax.contour(mask[crop] >= label, [0.5], colors=[colour], linewidths=0.6)
    ax.set_title(title, fontsize=9, color="white")
    ax.set_axis_off()


def save_comparison(real_ct: Path, real_labels: Path, case_dirs: Sequence[str | Path], png: str | Path) -> Path:
    """A grid: the real CT (column 0) and each phantom, axial slice on top and coronal below,
    through the middle of the kidneys (real CT) or the tumor (phantoms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(real_ct, real_labels)] + [(Path(c) / "imaging.nii.gz", Path(c) / "segmentation.nii.gz") for c in case_dirs]
    fig, axes = plt.subplots(2, len(columns), figsize=(3.2 * len(columns), 6.6), squeeze=False)
    for k, (image_path, labels_path) in enumerate(columns):
        hu, labels, spacing = _load_volumes(image_path, labels_path)
        if k == 0:
            labels = np.isin(labels, REAL_KIDNEY_CLASSES).astype(np.uint8)
            name = "real CT (test only)"
        else:
            name = f"{Path(case_dirs[k - 1]).name} phantom"
        z, y, _ = _tumor_centre(labels)
        _panel(axes[0, k], hu[z], labels[z], spacing[1] / spacing[2], f"{name}, {spacing[0]:g} mm")
        _panel(axes[1, k], hu[:, y, :], labels[:, y, :], spacing[0] / spacing[2], "coronal")
    return _save(fig, png)


def _load_cached(case_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """A cached training phantom's image (back to HU) and labels, ``[z, y, x]`` on the working frame,
    and a title naming the mask and, for a moved tumor, the mask it came from."""
    meta = json.loads((case_dir / "meta.json").read_text())
    intensity = IntensitySettings()
    image = np.load(case_dir / "image.npy").astype(np.float32) * (intensity.hu_max - intensity.hu_min) + intensity.hu_min
    source = meta.get("source", {})
    title = meta["case_id"]
    if source.get("tumor_of"):
        title += f", tumor of {source['tumor_of'].split('.')[0]}"
    elif source.get("healthy"):
        title += ", healthy"
    return image, np.load(case_dir / "labels.npy"), title


def save_cached_preview(case_dirs: Sequence[str | Path], png: str | Path) -> Path:
    """A grid of cached training phantoms (``phantom_cache``): axial slice on top, coronal below,
    through the tumor, with the kidney and tumor outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(case_dirs), figsize=(3.2 * len(case_dirs), 6.6), squeeze=False)
    spacing = WORKING_SPACING_ZYX
    for k, case_dir in enumerate(case_dirs):
        hu, labels, title = _load_cached(Path(case_dir))
        z, y, _ = _tumor_centre(labels)
        _panel(axes[0, k], hu[z], labels[z], spacing[1] / spacing[2], title)
        _panel(axes[1, k], hu[:, y, :], labels[:, y, :], spacing[0] / spacing[2], "coronal")
    return _save(fig, png)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--masks", type=Path, nargs="+", help="KiTS19 label maps to build phantoms from")
    source.add_argument("--cases", type=Path, nargs="+", help="KiTS19-layout case folders")
    source.add_argument("--cached", type=Path, nargs="+", help="cached training phantoms (phantom-cache case folders)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", default=DEFAULT_STYLE, choices=sorted(STYLES), help=f"generator style (default {DEFAULT_STYLE})")
    parser.add_argument("--beside", type=Path, default=None, help="a real CT to draw first, at the same window")
    parser.add_argument("--beside-labels", type=Path, default=None, help="its TotalSegmentator label map (kidneys 2, 3)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.beside is not None and args.beside_labels is None:
        parser.error("--beside needs --beside-labels (to find the kidneys' slices)")

    def draw(cases: Sequence[Path]) -> None:
        if args.beside is not None:
            save_comparison(args.beside, args.beside_labels, cases, args.out)
        else:
            save_phantom_preview(cases, args.out)

    if args.cached:
        save_cached_preview(args.cached, args.out)
    elif args.cases:
        draw(args.cases)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            draw([make_phantom_case(m, tmp, args.seed, style_named(args.style)) for m in args.masks])
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
