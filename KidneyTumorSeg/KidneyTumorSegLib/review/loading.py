"""Reading a case's volumes off the page's thread, and the next case's before it is asked for.

Reading a 600 x 512 x 512 CT from ``.nii.gz`` takes longer than showing it, so the page reads
the case after the one shown in the background, straight into VTK's layout: moving on then
costs only the display.
"""
from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..imageio import Image, read_image
from ..metrics import kits_dice
from ..mrml.volumes import VolumeData
from .cases import ReviewCase


@dataclass(frozen=True)
class CaseVolumes:
    """A case's images ready for volume nodes (``[i, j, k]`` arrays in ``.array``): the CT (None
    when it cannot be found), the label map (uint8 0/1/2), the uncertainty (float32 in [0, 1],
    None without one), and the KiTS19 Dice against the truth (None without one)."""

    ct: VolumeData | None
    labels: VolumeData
    uncertainty: VolumeData | None
    dice: dict[str, float] | None


def load_case(case: ReviewCase) -> CaseVolumes:
    """Read ``case``'s volumes, its files side by side (and its Dice when a truth of the same grid exists)."""
    files = {"labels": (case.labels, np.uint8), "ct": (case.image, None), "uncertainty": (case.uncertainty, np.float32),
             "truth": (case.truth, np.uint8)}
    with ThreadPoolExecutor(max_workers=len(files), thread_name_prefix="review-read") as pool:
        reads = {name: pool.submit(read_image, path, dtype) for name, (path, dtype) in files.items() if path is not None}
        images = {name: read.result() for name, read in reads.items()}
    labels, truth = images["labels"], images.get("truth")
    dice = None
    if truth is not None and truth.array.shape == labels.array.shape:
        dice = kits_dice(labels.array, truth.array)
    return CaseVolumes(_data(images.get("ct")), VolumeData.from_image(labels), _data(images.get("uncertainty")), dice)


def _data(image: Image | None) -> VolumeData | None:
    return None if image is None else VolumeData.from_image(image)


class Prefetcher:
    """Cases read by one background thread, keeping the ``keep`` most recently asked for."""

    def __init__(self, keep: int = 3):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-prefetch")
        self._futures: OrderedDict[str, Future[CaseVolumes]] = OrderedDict()
        self._keep = keep

    def prefetch(self, case: ReviewCase) -> None:
        """Start reading ``case`` unless it is read or being read."""
        if case.name in self._futures:
            self._futures.move_to_end(case.name)
        else:
            self._futures[case.name] = self._pool.submit(load_case, case)
        while len(self._futures) > self._keep:
            self._futures.popitem(last=False)[1].cancel()

    def get(self, case: ReviewCase) -> CaseVolumes:
        """``case``'s volumes, waiting for them when they are still being read; a failed read
        raises its error (and is tried again next time)."""
        self.prefetch(case)
        future = self._futures[case.name]
        try:
            return future.result()
        except Exception:
            self._futures.pop(case.name, None)
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
