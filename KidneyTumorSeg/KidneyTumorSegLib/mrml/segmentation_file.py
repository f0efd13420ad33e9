"""Slicer segmentation files (``.seg.nrrd``) written and read through real MRML.

The command line writes ``.seg.nrrd`` with :func:`write_segmentation_file` when ``slicer-core``
is installed; :func:`read_segmentation_file` reads any such file back to labels for checks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..imageio import Image, atomic_output
from .scene import private_scene
from .segmentation import (ALGORITHM_NAME, ALGORITHM_NAME_TAG, ALGORITHM_TYPE, ALGORITHM_TYPE_TAG, SEGMENTS, fill_segmentation,
                           link_to_volume, new_segmentation_node, segment_tag, segment_terminology, segmentation_labels)
from .volumes import add_volume


@dataclass(frozen=True)
class SegmentInfo:
    """What a segment of a file says about itself; ``algorithm``: its DICOM SegmentAlgorithmType and
    SegmentAlgorithmName tags ("" where absent), which DICOM SEG export writes."""

    name: str
    label: int
    terminology: str
    color: tuple[float, float, float]
    algorithm: tuple[str, str]


@dataclass(frozen=True)
class SegmentationFile:
    """A segmentation read back: Kidney / Tumor as ``labels`` ``[i, j, k]`` (0/1/2) on the reference
    grid (voxel -> RAS ``affine``), and every segment's description by name."""

    labels: np.ndarray
    affine: np.ndarray
    segments: dict[str, SegmentInfo]


def write_segmentation_file(labels: np.ndarray, affine: np.ndarray, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``labels`` ``[i, j, k]`` (0 background, 1 kidney, 2 tumor) with voxel -> RAS ``affine``
    as a Slicer segmentation: segments Kidney and Tumor with SNOMED CT terminology and standard
    colours, the label grid as reference geometry. Atomic; refuses an existing ``path`` unless
    ``overwrite``.
    """
    path = Path(path)
    labels = np.asarray(labels, dtype=np.uint8)
    with atomic_output(path, overwrite) as temporary:
        headless = private_scene()
        scene = headless.scene
        reference = add_volume(scene, Image(labels, np.asarray(affine, float)), "reference", "vtkMRMLLabelMapVolumeNode")
        node = new_segmentation_node(scene, _case_name(path))
        link_to_volume(node, reference)
        fill_segmentation(node, labels, affine)
        storage = node.CreateDefaultStorageNode()
        storage.SetUseCompression(True)
        storage.SetFileName(str(temporary))
        if not storage.WriteData(node):
            raise OSError(f"{path}: Slicer could not write the segmentation")
    return path


def read_segmentation_file(path: str | os.PathLike) -> SegmentationFile:
    """Read a ``.seg.nrrd`` with MRML's segmentation storage node."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    headless = private_scene()  # keeps the logics alive while the scene is used
    scene = headless.scene
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", _case_name(path))
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        raise ValueError(f"{path}: not a readable Slicer segmentation")
    segmentation = node.GetSegmentation()
    segments = {}
    for n in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(n)
        segments[segment.GetName()] = SegmentInfo(
            segment.GetName(), segment.GetLabelValue(), segment_terminology(segment), tuple(segment.GetColor()),
            (segment_tag(segment, ALGORITHM_TYPE_TAG), segment_tag(segment, ALGORITHM_NAME_TAG)))
    labels, affine = segmentation_labels(node)
    return SegmentationFile(labels, affine, segments)


def expected_segments() -> dict[str, SegmentInfo]:
    """The segments :func:`write_segmentation_file` writes, by name."""
    return {s.name: SegmentInfo(s.name, s.label, s.terminology, s.color, (ALGORITHM_TYPE, ALGORITHM_NAME)) for s in SEGMENTS}


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
