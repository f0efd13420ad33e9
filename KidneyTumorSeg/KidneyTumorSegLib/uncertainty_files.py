"""The ensemble's uncertainty and its disputed voxels as files, compact: only the input voxels near
the stage-2 crop (each file with its own affine, a box of the input grid; nothing else was
examined, so the uncertainty is 0 there), the map as uint8 ``round(255 · u)``, the disputed voxels
as a 0/1 label map computed here, so that a reader (the Slicer module) needs no float map on the
whole input grid. On a 600 × 512 × 512 input the float32 map on the whole grid took 630 MB."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from .boxes import Box
from .crop_values import crop_on_source
from .geometry import WorkingFrame
from .imageio import Image, atomic_output, write_image, write_label_map
from .uncertainty import uncertainty_to_bytes


def uncertainty_near_crop(values: np.ndarray, crop: Box, frame: WorkingFrame, source_affine: np.ndarray) -> Image:
    """``values`` ``[z, y, x]`` of ``crop`` linearly resampled onto the input voxels near it: float32
    ``[i, j, k]`` with the voxel -> RAS affine of that box of the input grid (one zero voxel at the
    grid's first corner when the crop holds no input voxel)."""
    near, box = crop_on_source(values, crop, frame)
    if box is None:
        return Image(np.zeros((1, 1, 1), np.float32), np.asarray(source_affine, float))
    shift = np.eye(4)
    shift[:3, 3] = box.start
    return Image(near, np.asarray(source_affine, float) @ shift)


def write_uncertainty_files(stack: contextlib.ExitStack, near: Image, disputed_threshold: float, overwrite: bool,
                            uncertainty: Path | None = None, review_mask: Path | None = None) -> None:
    """Write the map (uint8 0-255) to ``uncertainty`` and the voxels whose uncertainty reaches
    ``disputed_threshold`` (uint8 0/1) to ``review_mask``, each under a temporary name that
    ``stack`` renames when every output of the run is written."""
    if uncertainty is not None:
        temporary = stack.enter_context(atomic_output(uncertainty, overwrite))
        write_image(temporary, uncertainty_to_bytes(near.array), near.affine, overwrite=True)
    if review_mask is not None:
        temporary = stack.enter_context(atomic_output(review_mask, overwrite))
        write_label_map(temporary, near.array >= disputed_threshold, near.affine, overwrite=True)
