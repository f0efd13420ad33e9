"""Reading a case's volumes off the page's thread, and the next case's before it is asked for.

Reading a 600 x 512 x 512 CT from ``.nii.gz`` takes longer than showing it, so the page reads
the case after the one shown in the background, straight into VTK's layout: moving on then
costs only the display.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..imageio import Image, read_image
from ..metrics import kits_dice
from ..mrml.volumes import VolumeData
from ..uncertainty import uncertainty_from_bytes
from .cases import ReviewCase


@dataclass(frozen=True)
class CaseVolumes:
    """A case's images ready for volume nodes (``[i, j, k]`` arrays in ``.array``): the CT (None
    when it cannot be found), the label map (uint8 0/1/2), the uncertainty (float32 in [0, 1] over
    the voxels near the crop, with its own affine; None without one), and the KiTS19 Dice against
    the truth (None without one)."""

    ct: VolumeData | None
    labels: VolumeData
    uncertainty: VolumeData | None
    dice: dict[str, float] | None


def load_case(case: ReviewCase) -> CaseVolumes:
    """Read ``case``'s volumes, its files side by side (and its Dice when a truth of the same grid exists)."""
    files = {"labels": (case.labels, np.uint8), "ct": (case.image, None), "uncertainty": (case.uncertainty, np.uint8),
             "truth": (case.truth, np.uint8)}
    with ThreadPoolExecutor(max_workers=len(files), thread_name_prefix="review-read") as pool:
        reads = {name: pool.submit(read_image, path, dtype) for name, (path, dtype) in files.items() if path is not None}
        images = {name: read.result() for name, read in reads.items()}
    labels, truth = images["labels"], images.get("truth")
    dice = None
    if truth is not None and truth.array.shape == labels.array.shape:
        dice = kits_dice(labels.array, truth.array)
    stored = images.get("uncertainty")  # uint8 round(255 u), as the command line writes it (uncertainty_files.py)
    doubt = None if stored is None else Image(uncertainty_from_bytes(stored.array), stored.affine)
    return CaseVolumes(_data(images.get("ct")), VolumeData.from_image(labels), _data(doubt), dice)


def _data(image: Image | None) -> VolumeData | None:
    return None if image is None else VolumeData.from_image(image)


class Prefetcher:
    """Cases read by background threads, keeping the ``keep`` most recently asked for.

    A case read ahead (:meth:`prefetch`) waits ``delay_s`` first, so that it does not take the CPU
    from showing the case just opened; asking for it (:meth:`get`) ends the wait. Two threads, so
    that a case asked for is never queued behind one read ahead.
    """

    def __init__(self, keep: int = 3):
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="review-prefetch")
        self._futures: OrderedDict[str, tuple[Future[CaseVolumes], threading.Event]] = OrderedDict()
        self._keep = keep

    def prefetch(self, case: ReviewCase, delay_s: float = 0.0) -> None:
        """Start reading ``case`` (after ``delay_s``) unless it is read or being read."""
        if case.name in self._futures:
            self._futures.move_to_end(case.name)
        else:
            hurry = threading.Event()
            self._futures[case.name] = (self._pool.submit(_load_after, case, hurry, delay_s), hurry)
        while len(self._futures) > self._keep:
            future, _ = self._futures.popitem(last=False)[1]
            future.cancel()

    def get(self, case: ReviewCase) -> CaseVolumes:
        """``case``'s volumes, waiting for them when they are still being read; a failed read
        raises its error (and is tried again next time)."""
        self.prefetch(case)
        future, hurry = self._futures[case.name]
        hurry.set()
        try:
            return future.result()
        except Exception:
            self._futures.pop(case.name, None)
            raise

    def close(self) -> None:
        for _, hurry in self._futures.values():
            hurry.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _load_after(case: ReviewCase, hurry: threading.Event, delay_s: float) -> CaseVolumes:
    hurry.wait(delay_s)
    return load_case(case)
