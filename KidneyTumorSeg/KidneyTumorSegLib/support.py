"""Stage 1's foreground as the support of stage 2's components [D].

Stage 2's kidney models (K, KT) see only a crop, and inside it they can mark structures that look
like kidney (bright contrast-filled bowel loops, vessels) far from any kidney. Stage 1 sees the
whole body at ×4 and is rarely fooled the same way. With ``stage1.support_components`` on, a 3D
connected component of K or KT is kept only when at least ``stage1.support_min_overlap`` (half)
of its voxels lie in stage 1's foreground -- touching it at the blocky ×4 edge is not enough.
A component below that overlap is dropped whole (``stage1.support_outside = "drop"``) or, by
default, trimmed to the support grown by ``support_trim_margin_blocks`` ×4 blocks (``"trim"``):
on a short scan KT's kidney can merge with the tissue beside it into one component lying mostly
outside the support, and dropping it whole loses the kidney. Stage 1's own small islands (< ``stage1.support_min_fraction`` of its largest component) do not
count as support, nor does any component beyond its two largest (``support_max_components``:
a body has two kidneys). The paper has no such rule; switch it off for the paper's behaviour.

Arrays are ``[z, y, x]``: the ×4 grid for stage 1's outputs, the working frame (or a box of it)
for stage 2's masks.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .boxes import Box
from .settings import DEFAULT_SETTINGS, MethodSettings
from .targets import CONNECTIVITY_26, large_components


def stage1_support(probability_down: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """Stage 1's foreground ``p >= 0.5`` on the ×4 grid (bool, same shape): its 26-connected
    components of at least ``support_min_fraction`` of the largest, and of those only the
    ``support_max_components`` largest (a body has two kidneys)."""
    labels, keep = large_components(probability_down >= settings.geometry.probability_threshold,
                                    settings.stage1.support_min_fraction)
    sizes = np.where(keep, np.bincount(labels.ravel(), minlength=keep.size), 0)
    largest = np.argsort(sizes, kind="stable")[::-1][:settings.stage1.support_max_components]
    keep = np.zeros_like(keep)
    keep[largest] = sizes[largest] > 0
    return keep[labels]


def support_in_box(support_down: np.ndarray, box: Box, factor: int) -> np.ndarray:
    """The ×4-grid mask ``support_down`` seen on the working-frame voxels of ``box`` (bool,
    ``box.size``): voxel ``v`` takes the value of block ``v // factor`` (False past the grid's end)."""
    blocks = [np.arange(start, stop + 1) // factor for start, stop in zip(box.start, box.stop)]
    pad = [(0, max(0, int(block[-1]) + 1 - length)) for block, length in zip(blocks, support_down.shape)]
    return np.pad(support_down, pad)[np.ix_(*blocks)]


def grown_support(support_down: np.ndarray, blocks: int) -> np.ndarray:
    """``support_down`` (bool, ×4 grid) grown by ``blocks`` blocks along every axis and diagonal."""
    if blocks <= 0:
        return support_down.copy()
    return ndimage.binary_dilation(support_down, structure=CONNECTIVITY_26, iterations=blocks)


def keep_supported(mask: np.ndarray, support: np.ndarray, min_overlap: float,
                   trim_to: np.ndarray | None = None) -> np.ndarray:
    """The 26-connected components of ``mask`` with at least ``min_overlap`` of their voxels (and
    at least one) in ``support``, whole; of every other component only its voxels in ``trim_to``
    (None: nothing). All arrays bool, same shape."""
    if mask.shape != support.shape or (trim_to is not None and trim_to.shape != mask.shape):
        shapes = f"mask {mask.shape}, support {support.shape}" + ("" if trim_to is None else f", trim_to {trim_to.shape}")
        raise ValueError(f"keep_supported: {shapes} differ")
    components, count = ndimage.label(mask, structure=CONNECTIVITY_26)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    supported = np.bincount(components[support & mask], minlength=count + 1)
    keep = (supported > 0) & (supported >= min_overlap * sizes)
    keep[0] = False
    kept = keep[components]
    if trim_to is not None:
        kept |= mask & trim_to
    return kept


def trim_region(support_down: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray | None:
    """Where a component mostly outside the support is kept (bool, ×4 grid): the support grown by
    ``stage1.support_trim_margin_blocks``; None when ``stage1.support_outside`` is ``"drop"``."""
    rule = settings.stage1.support_outside
    if rule == "drop":
        return None
    if rule != "trim":
        raise ValueError(f"stage1.support_outside must be 'drop' or 'trim', not {rule!r}")
    return grown_support(support_down, settings.stage1.support_trim_margin_blocks)


def support_reach(support_down: np.ndarray, settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """Where the rule may keep voxels (bool, ×4 grid): the trim region, or under ``"drop"`` the support itself."""
    trim = trim_region(support_down, settings)
    return support_down if trim is None else trim


def supported_part(mask: np.ndarray, box: Box, support_down: np.ndarray,
                   settings: MethodSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """The support rule on ``mask`` (bool, the working-frame voxels of ``box``): its components
    lying mostly in stage 1's support ``support_down`` (×4 grid) whole, the others trimmed or
    dropped as ``stage1.support_outside`` says (bool, same shape)."""
    factor = settings.geometry.downsample_factor
    trim = trim_region(support_down, settings)
    return keep_supported(mask, support_in_box(support_down, box, factor), settings.stage1.support_min_overlap,
                          None if trim is None else support_in_box(trim, box, factor))
