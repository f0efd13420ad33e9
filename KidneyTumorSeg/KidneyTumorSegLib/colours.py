"""One colour for each of stage 1's boxes and for its landmarks, wherever they are drawn: the QA
picture, the Slicer ROIs and point list, the panel's labels and the README; and the colours of
the kidney and tumor segments in Slicer and on the review page."""
from __future__ import annotations

from dataclasses import dataclass

from .settings import LABEL_KIDNEY, LABEL_TUMOR


@dataclass(frozen=True)
class Colour:
    """A colour as named in the user's words and as RGB in [0, 1]."""

    name: str
    rgb: tuple[float, float, float]

    @property
    def hex(self) -> str:
        """``#rrggbb`` (what matplotlib takes)."""
        return "#" + "".join(f"{round(255 * c):02x}" for c in self.rgb)


def _from_hex(name: str, code: str) -> Colour:
    return Colour(name, tuple(int(code[i:i + 2], 16) / 255 for i in (1, 3, 5)))


BOX_COLOURS = {
    "segmentation": _from_hex("blue", "#4e9bff"),  # stage 1's foreground box
    "landmarks": _from_hex("orange", "#ff9f1c"),  # the landmarks' extent
    "crop": _from_hex("green", "#2ec46d"),  # what stage 2 sees; editable in Slicer
}
LANDMARK_COLOUR = _from_hex("pink", "#ff3cac")
# Slicer's recommended kidney colour and its lesion (mass / tumor) colour.
LABEL_COLOURS = {
    LABEL_KIDNEY: _from_hex("kidney", "#b96653"),
    LABEL_TUMOR: _from_hex("tumor", "#90ee90"),
}
