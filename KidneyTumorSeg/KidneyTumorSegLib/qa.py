"""QA picture of a cascade run: boxes, landmarks and labels over axial and coronal CT views."""
from __future__ import annotations

import os

import numpy as np

from .boxes import Box
from .colours import BOX_COLOURS, LANDMARK_COLOUR
from .stage1 import Stage1Result

TITLE_COLOUR = "#ffd000"
LABEL_COLOURS = {1: (0.86, 0.38, 0.27), 2: (0.95, 0.85, 0.2)}
UNCERTAINTY_COLOURMAP = "inferno"


def save_qa_png(path: str | os.PathLike, normalized_zyx: np.ndarray, labels_zyx: np.ndarray,
                crop: Box, stage1: Stage1Result | None, spacing_zyx: tuple[float, float, float], title: str = "",
                uncertainty_zyx: np.ndarray | None = None) -> None:
    """Write a PNG: an axial and a coronal working-frame slice through the crop's centre, under
    ``title`` (what the result must say about itself, e.g. made by a demo bundle; none when ""), and
    with ``uncertainty_zyx`` a third panel: the uncertainty over the axial slice (window 0-1,
    colour bar).

    ``normalized_zyx`` is the [0, 1] CT, ``labels_zyx`` the labels and ``uncertainty_zyx`` the
    ensemble's uncertainty, all ``[z, y, x]`` in the working frame. Boxes and landmarks in the
    colours of :mod:`colours`; kidney red, tumor yellow. Needs matplotlib (a 'cli' extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    centre = [(a + b) // 2 for a, b in zip(crop.start, crop.stop)]
    foreground = np.argwhere(labels_zyx[crop.slices] > 0)
    if len(foreground):
        centre = [int(v) for v in np.median(foreground, axis=0) + np.array(crop.start)]
    boxes = {"crop": crop}
    if stage1 is not None:
        boxes.update(segmentation=stage1.segmentation_box, landmarks=stage1.landmark_box)
    views = [("axial", 0, (1, 2), spacing_zyx[1] / spacing_zyx[2]), ("coronal", 1, (0, 2), spacing_zyx[0] / spacing_zyx[2])]
    panels = 2 if uncertainty_zyx is None else 3
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 6), facecolor="black")
    for axis, (view, cut, (row_axis, col_axis), aspect) in zip(axes, views):
        index = [slice(None)] * 3
        index[cut] = centre[cut]
        image, labels = normalized_zyx[tuple(index)], labels_zyx[tuple(index)]
        overlay = np.zeros(labels.shape + (4,), np.float32)
        for value, colour in LABEL_COLOURS.items():
            overlay[labels == value] = (*colour, 0.45)
        axis.imshow(image, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        axis.imshow(overlay, aspect=aspect, interpolation="nearest")
        for name, box in boxes.items():
            if box is None:
                continue
            axis.add_patch(Rectangle((box.start[col_axis] - 0.5, box.start[row_axis] - 0.5), box.size[col_axis], box.size[row_axis],
                                     fill=False, edgecolor=BOX_COLOURS[name].hex, linewidth=1.5, label=name))
        if stage1 is not None:
            near = [lm for lm in stage1.landmarks if abs(lm.zyx[cut] - centre[cut]) <= 2]
            if near:
                axis.scatter([lm.zyx[col_axis] for lm in near], [lm.zyx[row_axis] for lm in near], s=12, c=LANDMARK_COLOUR.hex, label="landmarks")
        axis.set_title(f"{view} slice {centre[cut]} (working frame)", color="white")
        axis.axis("off")
    axes[0].legend(loc="lower right", fontsize=8, facecolor="black", labelcolor="white")
    if uncertainty_zyx is not None:
        _uncertainty_panel(figure, axes[2], normalized_zyx[centre[0]], uncertainty_zyx[centre[0]], views[0][3], centre[0])
    if title:
        figure.suptitle(title, color=TITLE_COLOUR, fontsize=13, fontweight="bold")
    figure.tight_layout(rect=(0, 0, 1, 0.95) if title else None)  # room for the title
    figure.savefig(os.fspath(path), dpi=100, facecolor="black")
    plt.close(figure)


def _uncertainty_panel(figure, axis, image_yx: np.ndarray, uncertainty_yx: np.ndarray, aspect: float, slice_index: int) -> None:
    """The axial slice's uncertainty over its CT: transparent where the members agree (0)."""
    axis.imshow(image_yx, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
    shown = axis.imshow(np.ma.masked_less_equal(uncertainty_yx, 0.0), cmap=UNCERTAINTY_COLOURMAP, vmin=0, vmax=1,
                        alpha=0.75, aspect=aspect, interpolation="nearest")
    colour_bar = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
    colour_bar.ax.tick_params(colors="white")
    colour_bar.set_label("uncertainty (ensemble disagreement)", color="white")
    axis.set_title(f"uncertainty, axial slice {slice_index}", color="white")
    axis.axis("off")
