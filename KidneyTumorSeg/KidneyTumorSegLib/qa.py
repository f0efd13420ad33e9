"""QA picture of a cascade run: boxes, landmarks and labels over axial and coronal CT views."""
from __future__ import annotations

import os

import numpy as np

from .boxes import Box
from .colours import BOX_COLOURS, LANDMARK_COLOUR
from .geometry import WorkingFrame
from .stage1 import Stage1Result

TITLE_COLOUR = "#ffd000"
BOX_LINES = {"segmentation": ("-", 3.0), "landmarks": ("--", 1.8), "crop": (":", 1.8)}
"""Line style and width per box, drawn in this order: a box lying on another still shows."""
INPUT_AXES = "ijk"


def input_slice(frame: WorkingFrame, centre_zyx: list[int], cut: int) -> str:
    """Where the working-frame slice through ``centre_zyx`` across axis ``cut`` lies in the input
    file: ``"k = 57"`` -- the input axis most aligned with ``cut`` and the input voxel index of the
    centre along it (nibabel indexing), as a viewer of the input file numbers its slices."""
    transform = frame.working_to_source()
    axis = int(np.argmax(np.abs(transform[:3, cut])))
    index = transform[:3, :3] @ np.asarray(centre_zyx, float) + transform[:3, 3]
    last = frame.source_shape[axis] - 1
    return f"{INPUT_AXES[axis]} = {int(np.clip(np.rint(index[axis]), 0, last))} of 0-{last}"
LABEL_COLOURS = {1: (0.86, 0.38, 0.27), 2: (0.95, 0.85, 0.2)}
UNCERTAINTY_COLOURMAP = "inferno"


def save_qa_png(path: str | os.PathLike, normalized_zyx: np.ndarray, labels_zyx: np.ndarray,
                crop: Box, stage1: Stage1Result | None, frame: WorkingFrame, title: str = "",
                uncertainty_zyx: np.ndarray | None = None, caption: str = "") -> None:
    """Write a PNG: an axial and a coronal working-frame slice through the result's centre, titled
    with the input file's slice number (the working frame's in small), under ``title`` (what the
    result must say about itself, e.g. made by a demo bundle; none when "") and ``caption`` (what
    was found, e.g. beside the truth), and with ``uncertainty_zyx`` a third panel: the uncertainty
    over the axial slice (window 0-1, colour bar).

    ``normalized_zyx`` is the [0, 1] CT, ``labels_zyx`` the labels and ``uncertainty_zyx`` the
    ensemble's uncertainty, all ``[z, y, x]`` in the working frame. Boxes and landmarks in the
    colours of :mod:`colours` and the line styles of :data:`BOX_LINES`; kidney red, tumor yellow.
    Needs matplotlib (a 'cli' extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    centre = [(a + b) // 2 for a, b in zip(crop.start, crop.stop)]
    foreground = np.argwhere(labels_zyx[crop.slices] > 0)
    if len(foreground):
        centre = [int(v) for v in np.median(foreground, axis=0) + np.array(crop.start)]
    spacing_zyx = frame.spacing
    boxes = {"crop": crop}
    if stage1 is not None:
        boxes = {"segmentation": stage1.segmentation_box, "landmarks": stage1.landmark_box, "crop": crop}
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
            style, width = BOX_LINES[name]
            axis.add_patch(Rectangle((box.start[col_axis] - 0.5, box.start[row_axis] - 0.5), box.size[col_axis], box.size[row_axis],
                                     fill=False, edgecolor=BOX_COLOURS[name].hex, linewidth=width, linestyle=style,
                                     label=f"{name} box"))
        if stage1 is not None:
            near = [lm for lm in stage1.landmarks if abs(lm.zyx[cut] - centre[cut]) <= 2]
            if near:
                axis.scatter([lm.zyx[col_axis] for lm in near], [lm.zyx[row_axis] for lm in near], s=12, c=LANDMARK_COLOUR.hex, label="landmarks")
        axis.set_title(f"{view}, input slice {input_slice(frame, centre, cut)}", color="white")
        axis.text(0.0, -0.02, f"working frame slice {centre[cut]}", transform=axis.transAxes, color="grey", fontsize=7,
                  va="top")
        axis.axis("off")
    axes[0].legend(loc="lower right", fontsize=8, facecolor="black", labelcolor="white")
    if uncertainty_zyx is not None:
        _uncertainty_panel(figure, axes[2], normalized_zyx[centre[0]], uncertainty_zyx[centre[0]], views[0][3],
                           input_slice(frame, centre, 0))
    if title:
        figure.suptitle(title, color=TITLE_COLOUR, fontsize=13, fontweight="bold")
    if caption:
        figure.text(0.5, 0.01, caption, color="white", fontsize=11, ha="center", va="bottom")
    figure.tight_layout(rect=(0, 0.04 if caption else 0, 1, 0.95 if title else 1))  # room for the title and caption
    figure.savefig(os.fspath(path), dpi=100, facecolor="black")
    plt.close(figure)


def _uncertainty_panel(figure, axis, image_yx: np.ndarray, uncertainty_yx: np.ndarray, aspect: float, where: str) -> None:
    """The axial slice's uncertainty over its CT: transparent where the members agree (0)."""
    axis.imshow(image_yx, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
    shown = axis.imshow(np.ma.masked_less_equal(uncertainty_yx, 0.0), cmap=UNCERTAINTY_COLOURMAP, vmin=0, vmax=1,
                        alpha=0.75, aspect=aspect, interpolation="nearest")
    colour_bar = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
    colour_bar.ax.tick_params(colors="white")
    colour_bar.set_label("uncertainty (ensemble disagreement)", color="white")
    axis.set_title(f"uncertainty, input slice {where}", color="white")
    axis.axis("off")
