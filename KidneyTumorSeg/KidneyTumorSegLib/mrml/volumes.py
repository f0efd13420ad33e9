"""Volume nodes <-> :class:`Image` (array ``[i, j, k]`` as nibabel indexes it, voxel -> RAS affine).

Slicer's IJKToRAS matrix is the NIfTI affine; VTK stores voxels with i varying fastest, so the
flat buffer reshaped ``[k, j, i]`` (what ``slicer.util.arrayFromVolume`` returns) is the
transpose of the ``[i, j, k]`` array.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import vtk
from vtk.util import numpy_support

from ..imageio import Image


def matrix_to_array(matrix: Any) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4 x 4 float array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def array_to_matrix(array: np.ndarray) -> Any:
    """A 4 x 4 array as a ``vtkMatrix4x4``."""
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def volume_affine(node: Any) -> np.ndarray:
    """Voxel ``(i, j, k)`` -> world RAS (mm) of a volume node, its linear parent transforms included.

    Raises ValueError under a non-linear transform (harden it first).
    """
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    affine = matrix_to_array(ijk_to_ras)
    parent = node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(f"volume '{node.GetName()}' is under a non-linear transform: harden it first")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        affine = matrix_to_array(to_world) @ affine
    return affine


def volume_array(node: Any) -> np.ndarray:
    """The voxels of a scalar volume node as an ``[i, j, k]`` view of its memory (no copy)."""
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise ValueError(f"volume '{node.GetName()}' has no voxels")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume '{node.GetName()}' has {image_data.GetNumberOfScalarComponents()} components; a CT has one")
    return image_data_array(image_data)


def image_data_array(image_data: Any) -> np.ndarray:
    """The voxels of a one-component ``vtkImageData`` as an ``[i, j, k]`` view (no copy)."""
    i, j, k = image_data.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    return flat.reshape(k, j, i).transpose(2, 1, 0)


def image_from_volume(node: Any) -> Image:
    """A volume node as an :class:`Image` (``[i, j, k]`` view, world affine)."""
    return Image(array=volume_array(node), affine=volume_affine(node))


def image_data_from_array(array: np.ndarray) -> Any:
    """A ``vtkImageData`` holding a copy of a 3D ``[i, j, k]`` array (origin 0, spacing 1)."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array [i, j, k], got shape {array.shape}")
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*(int(n) for n in array.shape))
    image_data.AllocateScalars(numpy_support.get_vtk_array_type(array.dtype), 1)
    numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())[:] = array.ravel(order="F")
    return image_data


@dataclass(frozen=True)
class VolumeData:
    """Voxels ready for a volume node: a ``vtkImageData`` (origin 0, spacing 1) sharing the memory
    of ``array`` (``[i, j, k]``, kept here so that it lives as long as the image data) and the
    voxel -> RAS ``affine``. Building it off the display thread leaves the node only a pointer to swap."""

    image_data: Any
    array: np.ndarray
    affine: np.ndarray

    @classmethod
    def from_image(cls, image: Image) -> VolumeData:
        """Without a copy when ``image.array`` is Fortran-ordered (as nibabel reads NIfTI)."""
        array = np.asarray(image.array)
        if array.ndim != 3:
            raise ValueError(f"expected a 3D array [i, j, k], got shape {array.shape}")
        flat = array.ravel(order="F")
        image_data = vtk.vtkImageData()
        image_data.SetDimensions(*(int(n) for n in array.shape))
        image_data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=False))
        return cls(image_data, flat.reshape(array.shape, order="F"), np.asarray(image.affine, dtype=np.float64))


def add_volume(scene: Any, image: Image, name: str, class_name: str = "vtkMRMLScalarVolumeNode") -> Any:
    """A new volume node (scalar or label map) in ``scene`` with a copy of ``image``."""
    node = scene.AddNewNodeByClass(class_name, name)
    set_volume_image(node, image)
    return node


def set_volume_image(node: Any, image: Image | VolumeData) -> None:
    """Replace the voxels and geometry of a volume node with a copy of ``image``, or with the
    voxels of ``image`` itself when it is :class:`VolumeData`."""
    if isinstance(image, VolumeData):
        node.SetAndObserveImageData(image.image_data)
    else:
        node.SetAndObserveImageData(image_data_from_array(image.array))
    node.SetIJKToRASMatrix(array_to_matrix(image.affine))


def write_volume_nifti(node: Any, path: str | os.PathLike) -> Path:
    """Write a volume node to NIfTI (``.nii`` or ``.nii.gz``) exactly as the command line reads it."""
    image = image_from_volume(node)
    nifti = nib.Nifti1Image(image.array, image.affine)
    nifti.header.set_xyzt_units("mm")
    nifti.set_qform(image.affine, code=1)
    nifti.set_sform(image.affine, code=1)
    path = Path(path)
    nib.save(nifti, str(path))
    return path
