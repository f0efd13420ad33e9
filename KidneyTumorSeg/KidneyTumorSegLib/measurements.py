"""Clinical measurements of a label map: kidney and tumor volume per side, tumor count and size."""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from .settings import LABEL_KIDNEY, LABEL_TUMOR
from .targets import CONNECTIVITY_26

_MM3_PER_ML = 1000.0


def _largest_diameter_mm(points_ijk: np.ndarray, affine: np.ndarray) -> float:
    """Largest distance (mm) between two voxel centres of a component ``[N, 3]`` (via its convex hull)."""
    world = points_ijk @ affine[:3, :3].T
    if len(world) > 4:
        try:
            world = world[ConvexHull(world).vertices]
        except QhullError:  # flat or degenerate: fall back to all points (few, by definition)
            pass
    return float(pdist(world).max()) if len(world) > 1 else 0.0


def measure(labels: np.ndarray, affine: np.ndarray) -> dict:
    """Volumes and tumor sizes of a label map ``[i, j, k]`` (0/1/2) with voxel -> RAS ``affine``.

    Side: RAS x grows towards the patient's right, so a voxel is on the patient's left when its
    x is below the midline -- halfway between the centroids of the two largest foreground
    components, or the image centre when there are fewer. Returns ``kidney_ml``/``tumor_ml``
    per side ("left", "right", "total"), ``tumor_count`` (26-connected tumor components),
    ``tumors`` (volume mL, largest diameter mm and side each, largest first),
    ``largest_tumor_diameter_mm`` and ``midline_x_mm`` (RAS x of the midline).
    """
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3])) / _MM3_PER_ML)
    image_centre_x = _world_x((np.array(labels.shape) - 1) / 2.0, affine)
    labels, affine = _crop_to_foreground(labels, affine)
    foreground = labels > 0
    components, count = ndimage.label(foreground, structure=CONNECTIVITY_26)
    if count >= 2:
        sizes = np.bincount(components.ravel())[1:]
        biggest = np.argsort(sizes)[::-1][:2] + 1
        centroids = ndimage.center_of_mass(foreground, components, biggest)
        midline = float(np.mean([_world_x(c, affine) for c in centroids]))
    else:
        midline = image_centre_x
    result: dict = {}
    for name, label in (("kidney_ml", LABEL_KIDNEY), ("tumor_ml", LABEL_TUMOR)):
        points = np.argwhere(labels == label)
        left = int(np.count_nonzero(points @ affine[0, :3] + affine[0, 3] < midline))
        result[name] = {"left": left * voxel_ml, "right": (len(points) - left) * voxel_ml, "total": len(points) * voxel_ml}
    tumor_components, tumor_count = ndimage.label(labels == LABEL_TUMOR, structure=CONNECTIVITY_26)
    tumors = []
    for index, where in enumerate(ndimage.find_objects(tumor_components), start=1):
        points = np.argwhere(tumor_components[where] == index) + np.array([s.start for s in where])
        side = "left" if _world_x(points.mean(axis=0), affine) < midline else "right"
        tumors.append({"volume_ml": len(points) * voxel_ml, "diameter_mm": _largest_diameter_mm(points.astype(float), affine), "side": side})
    tumors.sort(key=lambda t: t["volume_ml"], reverse=True)
    result["tumor_count"] = int(tumor_count)
    result["tumors"] = tumors
    result["largest_tumor_diameter_mm"] = max((t["diameter_mm"] for t in tumors), default=0.0)
    result["midline_x_mm"] = midline
    return result


def _crop_to_foreground(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box of the foreground and the affine of that sub-grid (whole input when empty)."""
    nonzero = [np.flatnonzero(np.any(labels, axis=tuple(o for o in range(3) if o != a))) for a in range(3)]
    if any(n.size == 0 for n in nonzero):
        return labels, affine
    start = np.array([n[0] for n in nonzero])
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return labels[tuple(slice(n[0], n[-1] + 1) for n in nonzero)], shifted


def _world_x(index: np.ndarray, affine: np.ndarray) -> float:
    """RAS x (mm) of one voxel index ``[3]``."""
    return float(affine[0, :3] @ np.asarray(index, float) + affine[0, 3])
