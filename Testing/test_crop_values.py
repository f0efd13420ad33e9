"""Crop values (the uncertainty map) onto the working frame and, linearly, onto the input grid:
the same as resampling the whole working frame with scipy, for axis-aligned and oblique inputs."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.crop_values import crop_on_source, crop_to_frame
from KidneyTumorSegLib.geometry import working_frame_for
from synthetic_cases import rotation


def _affine(spacing: tuple[float, float, float], axes: str) -> np.ndarray:
    """I,P,L or R,A,S voxel axes with ``spacing`` (mm)."""
    directions = {"IPL": [(0, 0, -1), (0, -1, 0), (-1, 0, 0)], "RAS": [(1, 0, 0), (0, 1, 0), (0, 0, 1)]}[axes]
    affine = np.eye(4)
    affine[:3, :3] = np.array(directions, float).T * np.array(spacing)
    affine[:3, 3] = (12.0, -30.0, 41.0)
    return affine


def crop_to_source(values: np.ndarray, crop: Box, frame, slab: int = 64) -> np.ndarray:
    """:func:`crop_on_source`'s values pasted into the whole input grid (0 elsewhere)."""
    near, box = crop_on_source(values, crop, frame, slab)
    assert near.dtype == np.float32 and near.flags.f_contiguous and (box is None or near.shape == box.size)
    whole = np.zeros(frame.source_shape, np.float32)
    if box is not None:
        whole[box.slices] = near
    return whole


def _reference(values: np.ndarray, crop: Box, frame) -> np.ndarray:
    """Linear resampling of the whole working frame (the crop pasted into zeros) onto the input grid."""
    mapping = frame.source_to_working()
    return ndimage.affine_transform(crop_to_frame(values, crop, frame.shape), mapping[:3, :3], offset=mapping[:3, 3],
                                    output_shape=frame.source_shape, order=1, mode="nearest", prefilter=False)


@pytest.mark.parametrize("shape, affine", [
    ((40, 36, 30), _affine((1.0, 0.6, 0.7), "IPL")),  # thin slices: values fall between working slices
    ((30, 36, 24), _affine((0.7, 0.9, 4.0), "RAS")),  # thick slices, axes in another order
    ((24, 30, 28), rotation(12.0, axis=2) @ _affine((1.0, 0.8, 2.0), "RAS")),  # oblique
])
@pytest.mark.parametrize("slab", [1, 5, 16])
def test_crop_values_on_the_input_grid_match_a_whole_frame_resampling(shape, affine, slab: int) -> None:
    frame = working_frame_for(shape, affine)
    crop = Box((2, 3, 4), (frame.shape[0] - 3, frame.shape[1] - 5, frame.shape[2] - 6))
    values = np.random.default_rng(0).random(crop.size).astype(np.float32)
    result = crop_to_source(values, crop, frame, slab=slab)
    assert result.shape == shape
    reference = _reference(values, crop, frame)
    np.testing.assert_allclose(result, reference, atol=1e-5)
    assert result.max() > 0.5 and result.min() == 0.0  # the crop's values arrive; far from it, 0
    near, box = crop_on_source(values, crop, frame, slab)
    outside = np.ones(shape, bool)
    outside[box.slices] = False
    assert not reference[outside].any()  # the box holds every input voxel the crop reaches
    assert near.size < np.prod(shape)  # and is smaller than the input grid


def test_a_crop_at_the_frame_edge_keeps_its_edge_values() -> None:
    frame = working_frame_for((20, 24, 24), _affine((1.5, 0.7, 0.7), "IPL"))
    crop = Box((0, 0, 0), (frame.shape[0] - 1, 9, 9))
    values = np.ones(crop.size, np.float32)
    result = crop_to_source(values, crop, frame)
    np.testing.assert_allclose(result, _reference(values, crop, frame), atol=1e-5)
    assert result[0, 0, 0] == 1.0


def test_values_of_the_wrong_shape_are_refused() -> None:
    frame = working_frame_for((10, 10, 10), _affine((3.0, 0.8, 0.8), "IPL"))
    with pytest.raises(ValueError, match="does not match the crop"):
        crop_on_source(np.zeros((2, 2, 2), np.float32), Box((0, 0, 0), (2, 2, 2)), frame)
