"""Training cache: KiTS19-layout cases brought to the working frame, with every training target.

One folder per case, written atomically (a case is complete only once its ``meta.json`` exists;
it is written last, inside a temporary folder that is then renamed)::

    case_XXXXX/
      image_down.npy       float16 [z4, y4, x4]     x4 block mean of the normalised image
      foreground_down.npy  uint8   [z4, y4, x4]     x4 block max of label > 0
      landmarks_down.npy   float16 [5, z4, y4, x4]  stage-1 heat-maps (left, top, right, bottom, center)
      image.npy            float16 [z, y, x]        normalised image inside the crop box
      labels.npy           uint8   [z, y, x]        labels inside the crop box
      boundary.npy         float16 [3, z, y, x]     soft boundaries inside the crop box:
                                                    foreground (sigma 3), kidney (3), tumor (2)
      meta.json            shapes, boxes, tumor slices, source

The crop box is the ground-truth box of kidney and tumor expanded by the stage-2 margin
(16 x 128 x 128 total) and clipped to the image: every stage-2 sampler reads inside it (SPEC §2).
Boundary targets computed on the crop equal those of the whole volume: the boundary is a
per-slice 2D operation, and the 64-pixel in-plane margin exceeds the Gaussian's reach (4 sigma).
Arrays are opened with ``numpy.load(mmap_mode="r")``, so a sampler reads only its patch.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.geometry import to_working_frame, working_frame_for
from KidneyTumorSegLib.imageio import read_image
from KidneyTumorSegLib.preprocessing import downsample_max, downsample_mean, normalize_hu
from KidneyTumorSegLib.settings import DEFAULT_SETTINGS, LABEL_KIDNEY, LABEL_TUMOR, WORKING_SPACING_ZYX, MethodSettings
from KidneyTumorSegLib.targets import landmark_heatmaps, task_boundary_target

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
META_NAME = "meta.json"
CACHE_MANIFEST = "cache.json"
BOUNDARY_CHANNELS: tuple[str, ...] = ("foreground", "kidney", "tumor")
SLICE_AXES: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}


@dataclass(frozen=True)
class KitsCase:
    """One case of a KiTS19-layout folder: ``case_XXXXX/imaging.nii.gz`` and ``segmentation.nii.gz``."""

    case_id: str
    imaging: Path
    segmentation: Path


def find_kits_cases(data_dir: str | os.PathLike) -> list[KitsCase]:
    """Cases of a KiTS19-layout folder holding both files, sorted by name."""
    cases = []
    for folder in sorted(Path(data_dir).glob("case_*")):
        imaging = _first_existing(folder, ("imaging.nii.gz", "imaging.nii"))
        segmentation = _first_existing(folder, ("segmentation.nii.gz", "segmentation.nii"))
        if imaging and segmentation:
            cases.append(KitsCase(folder.name, imaging, segmentation))
    return cases


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def tumor_slices(labels_crop: np.ndarray) -> dict[str, list[int]]:
    """Indices of the slices of a crop ``[z, y, x]`` holding tumor, per slicing axis."""
    tumor = labels_crop == LABEL_TUMOR
    return {
        name: np.flatnonzero(tumor.any(axis=tuple(a for a in range(3) if a != axis))).tolist()
        for name, axis in SLICE_AXES.items()
    }


def case_arrays(normalized: np.ndarray, labels: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS,
                allow_empty: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Every cached array of one case and its metadata, from the working-frame image and labels.

    ``normalized``: float32 ``[z, y, x]`` in [0, 1]; ``labels``: uint8 ``[z, y, x]``.
    Labels without kidney or tumor raise ValueError, unless ``allow_empty``: then only stage 1's
    arrays are cached (all-zero targets), and the stage-2 samplers skip the case.
    """
    shape = labels.shape
    foreground_box = Box.from_mask(labels > 0)
    if foreground_box is None and not allow_empty:
        raise ValueError("the segmentation holds no kidney or tumor voxel")
    stage1 = _stage1_arrays(normalized, labels, settings)
    meta = {"version": CACHE_VERSION, "working_shape": list(shape), "down_shape": list(stage1["foreground_down"].shape)}
    if foreground_box is None:
        return stage1, {**meta, "crop_box": None, "foreground_box": None, "tumor_box": None, "tumor_crop_box": None,
                        "tumor_slices": {name: [] for name in SLICE_AXES}, "voxels": {"kidney": 0, "tumor": 0}}
    crop = foreground_box.expanded(settings.crop.kidney_margin_zyx).clipped(shape)
    labels_crop = np.ascontiguousarray(labels[crop.slices])
    boundary = np.stack([
        task_boundary_target(labels_crop > 0, "kidney_tumor", settings),
        task_boundary_target(labels_crop == LABEL_KIDNEY, "kidney", settings),
        task_boundary_target(labels_crop == LABEL_TUMOR, "tumor", settings),
    ])
    arrays = {
        **stage1,
        "image": normalized[crop.slices].astype(np.float16),
        "labels": labels_crop,
        "boundary": boundary.astype(np.float16),
    }
    tumor_box = Box.from_mask(labels == LABEL_TUMOR)
    meta.update({
        "crop_box": crop.to_json(),
        "foreground_box": foreground_box.to_json(),
        "tumor_box": None if tumor_box is None else tumor_box.to_json(),
        "tumor_crop_box": None if tumor_box is None else
        tumor_box.expanded(settings.crop.tumor_margin_zyx).clipped(shape).to_json(),
        "tumor_slices": tumor_slices(labels_crop),
        "voxels": {"kidney": int(np.count_nonzero(labels == LABEL_KIDNEY)),
                   "tumor": int(np.count_nonzero(labels == LABEL_TUMOR))},
    })
    return arrays, meta


def _stage1_arrays(normalized: np.ndarray, labels: np.ndarray, settings: MethodSettings) -> dict[str, np.ndarray]:
    """Stage 1's arrays on the x4 grid: image (block mean), foreground (block max), landmark heat-maps."""
    factor = settings.geometry.downsample_factor
    foreground_down = downsample_max((labels > 0).astype(np.uint8), factor)
    return {
        "image_down": downsample_mean(normalized, factor).astype(np.float16),
        "foreground_down": foreground_down,
        "landmarks_down": landmark_heatmaps(foreground_down, settings).astype(np.float16),
    }


def working_case(imaging: Path, segmentation: Path,
                 settings: MethodSettings = DEFAULT_SETTINGS) -> tuple[np.ndarray, np.ndarray]:
    """Read one case and resample it to the working frame: normalised float32 image and uint8 labels ``[z, y, x]``."""
    image = read_image(imaging)
    seg = read_image(segmentation)
    if seg.array.shape != image.array.shape:
        raise ValueError(f"{segmentation}: shape {seg.array.shape} differs from the image {image.array.shape}")
    return working_arrays(image.array, np.asarray(seg.array, np.uint8), image.affine, settings)


def working_arrays(ct: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                   settings: MethodSettings = DEFAULT_SETTINGS) -> tuple[np.ndarray, np.ndarray]:
    """A CT (HU) and its labels on one input grid ``[i, j, k]`` to the working frame ``[z, y, x]``."""
    frame = working_frame_for(ct.shape, affine)
    normalized = normalize_hu(to_working_frame(ct, frame, order=1), settings.intensity)
    working_labels = to_working_frame(labels, frame, order=0, dtype=np.uint8)
    return normalized, working_labels


def write_case(out_dir: Path, case_id: str, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write one case folder atomically: arrays, then ``meta.json``, in a temporary folder renamed at the end."""
    final = out_dir / case_id
    temporary = Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".partial", dir=out_dir))
    try:
        for name, array in arrays.items():
            np.save(temporary / f"{name}.npy", array)
        (temporary / META_NAME).write_text(json.dumps({"case_id": case_id, **meta}, indent=1) + "\n")
        temporary.chmod(0o755)  # mkdtemp makes it private
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    return final


def is_complete(case_dir: Path) -> bool:
    """Whether a cached case folder is complete and of this cache version."""
    meta_path = case_dir / META_NAME
    if not meta_path.is_file():
        return False
    try:
        return json.loads(meta_path.read_text()).get("version") == CACHE_VERSION
    except (OSError, json.JSONDecodeError):
        return False


def prepare_kits_case(case: KitsCase, out_dir: Path, settings: MethodSettings = DEFAULT_SETTINGS) -> str:
    """Cache one KiTS19 case (skipped when already complete); returns its id."""
    if is_complete(out_dir / case.case_id):
        return case.case_id
    normalized, labels = working_case(case.imaging, case.segmentation, settings)
    arrays, meta = case_arrays(normalized, labels, settings)
    meta["source"] = {"imaging": str(case.imaging), "segmentation": str(case.segmentation)}
    write_case(out_dir, case.case_id, arrays, meta)
    return case.case_id


def _prepare_one(args: tuple[KitsCase, Path]) -> tuple[str, str | None]:
    case, out_dir = args
    try:
        return prepare_kits_case(case, out_dir), None
    except Exception as error:  # one bad case must not stop the others
        return case.case_id, f"{type(error).__name__}: {error}"


def default_workers() -> int:
    """min(4, CPU count)."""
    return max(1, min(4, os.cpu_count() or 1))


def threads_per_worker(workers: int, tasks: int) -> int:
    """Torch threads for each of ``workers`` processes running ``tasks`` at once, sharing the CPU cores."""
    return max(1, (os.cpu_count() or 1) // max(1, min(workers, tasks)))


def run_parallel(function: Callable, jobs: Sequence, workers: int, description: str,
                 progress: bool = True) -> list:
    """``function`` over ``jobs`` in a spawn pool of ``workers`` processes (in-process for 1), with a progress bar."""
    if workers <= 1 or len(jobs) <= 1:
        results = map(function, jobs)
        return list(progress_bar(results, len(jobs), description, progress))
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    with context.Pool(min(workers, len(jobs)), initializer=_worker_logging, initargs=(level,)) as pool:
        results = pool.imap_unordered(function, jobs)
        return list(progress_bar(results, len(jobs), description, progress))


def _worker_logging(level: int) -> None:
    """Log from a pool worker at the parent's level (spawned processes start unconfigured)."""
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")


def progress_bar(items: Iterable, total: int, description: str, enabled: bool = True) -> Iterable:
    """``items`` with a tqdm bar when enabled and tqdm is installed, else log lines every 10 %."""
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(items, total=total, desc=description, unit="case")
        except ImportError:
            pass
    return _logged_progress(items, total, description)


def _logged_progress(items: Iterable, total: int, description: str) -> Iterable:
    step = max(1, total // 10)
    for done, item in enumerate(items, 1):
        if done % step == 0 or done == total:
            logger.info("%s: %d/%d", description, done, total)
        yield item


def prepare_cache(data_dir: str | os.PathLike, out_dir: str | os.PathLike, workers: int | None = None,
                  progress: bool = True) -> list[str]:
    """Cache every case of a KiTS19-layout folder (complete cases are skipped); returns the cached ids.

    Cases that fail are logged and left out; stale temporary folders of interrupted runs are removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".case_*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    cases = find_kits_cases(data_dir)
    if not cases:
        raise FileNotFoundError(f"{data_dir}: no case_XXXXX/imaging.nii.gz + segmentation.nii.gz found")
    todo = [c for c in cases if not is_complete(out_dir / c.case_id)]
    logger.info("%d cases, %d already cached, %d to prepare", len(cases), len(cases) - len(todo), len(todo))
    results = run_parallel(_prepare_one, [(c, out_dir) for c in todo], workers or default_workers(), "prepare", progress)
    for case_id, error in results:
        if error:
            logger.error("%s: not cached (%s)", case_id, error)
    write_cache_manifest(out_dir, {"source": str(Path(data_dir).resolve())})
    return [c.case_id for c in cases if is_complete(out_dir / c.case_id)]


def write_cache_manifest(out_dir: Path, extra: dict) -> None:
    """``cache.json``: version, settings of the targets and crops, and ``extra`` (e.g. the source)."""
    settings = DEFAULT_SETTINGS
    manifest = {
        "version": CACHE_VERSION,
        "spacing_zyx": list(WORKING_SPACING_ZYX),
        "intensity": {"hu_min": settings.intensity.hu_min, "hu_max": settings.intensity.hu_max},
        "kidney_margin_zyx": list(settings.crop.kidney_margin_zyx),
        "tumor_margin_zyx": list(settings.crop.tumor_margin_zyx),
        "boundary_channels": list(BOUNDARY_CHANNELS),
        **extra,
    }
    (out_dir / CACHE_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


class CachedCase:
    """A cached case: ``meta`` and its arrays, memory-mapped read-only on first use."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / META_NAME).read_text())
        self.case_id: str = self.meta["case_id"]

    def _load(self, name: str) -> np.ndarray:
        return np.load(self.folder / f"{name}.npy", mmap_mode="r")

    @cached_property
    def image_down(self) -> np.ndarray:
        return self._load("image_down")

    @cached_property
    def foreground_down(self) -> np.ndarray:
        return self._load("foreground_down")

    @cached_property
    def landmarks_down(self) -> np.ndarray:
        return self._load("landmarks_down")

    @cached_property
    def image(self) -> np.ndarray:
        return self._load("image")

    @cached_property
    def labels(self) -> np.ndarray:
        return self._load("labels")

    @cached_property
    def boundary(self) -> np.ndarray:
        return self._load("boundary")

    @property
    def has_kidney(self) -> bool:
        """Whether the case holds kidney or tumor (else only stage 1 trains on it)."""
        return self.meta["crop_box"] is not None

    @property
    def crop_box(self) -> Box:
        """The crop box in working-frame voxels."""
        return Box.from_json(self.meta["crop_box"])

    @property
    def tumor_crop_box(self) -> Box | None:
        """The expanded tumor box relative to the crop (None without tumor)."""
        if self.meta["tumor_crop_box"] is None:
            return None
        box, crop = Box.from_json(self.meta["tumor_crop_box"]), self.crop_box
        return Box(tuple(a - c for a, c in zip(box.start, crop.start)), tuple(b - c for b, c in zip(box.stop, crop.start)))

    def tumor_slices(self, axis: str) -> list[int]:
        """Crop slice indices along ``axis`` (axial, coronal, sagittal) that hold tumor."""
        return list(self.meta["tumor_slices"][axis])


def open_cache(cache_dir: str | os.PathLike, case_ids: Iterable[str] | None = None) -> list[CachedCase]:
    """The complete cases of a cache, sorted by id; ``case_ids`` selects some (all must exist)."""
    cache_dir = Path(cache_dir)
    complete = {p.name: p for p in sorted(cache_dir.glob("case_*")) if is_complete(p)}
    if case_ids is None:
        return [CachedCase(p) for p in complete.values()]
    missing = [c for c in case_ids if c not in complete]
    if missing:
        raise FileNotFoundError(f"{cache_dir}: cases not cached: {', '.join(missing)}")
    return [CachedCase(complete[c]) for c in case_ids]
