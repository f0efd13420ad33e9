"""Box JSON (what `locate` writes and `segment --box` reads): round trips on I,P,L, RAS and oblique
inputs, the input-voxel path, and one-line errors for malformed boxes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.geometry import WorkingFrame, index_to_world, working_frame_for
from KidneyTumorSegLib.locate_result import LocateOutcome
from KidneyTumorSegLib.report import box_from_json, box_json, crop_from_json, stage1_json
from KidneyTumorSegLib.settings import WORKING_SPACING_ZYX
from KidneyTumorSegLib.stage1 import Landmark, Stage1Result
from synthetic_cases import rotation, working_affine

KITS_IPL = np.array([[0, 0, -0.919921875, 170.0], [0, -0.919921875, 0, 200.0], [-0.5, 0, 0, 40.0], [0, 0, 0, 1]])
RAS = np.array([[0.8, 0, 0, -100.0], [0, 0.8, 0, 50.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])


FRAMES = {
    "IPL": working_frame_for((90, 80, 100), KITS_IPL),
    "RAS": working_frame_for((100, 90, 30), RAS),
    "oblique": working_frame_for((100, 90, 30), rotation(15, 2) @ rotation(5, 0) @ RAS),
}


def _boxes(frame: WorkingFrame) -> list[Box]:
    """A central box, the whole frame, one voxel, a flat box at the first corner."""
    centre = Box(tuple(s // 4 for s in frame.shape), tuple(s // 2 for s in frame.shape))
    middle = tuple(s // 2 for s in frame.shape)
    return [centre, Box.full(frame.shape), Box(middle, middle), Box((0, 0, 0), (0, 3, 5))]


def _through_json(data: dict) -> dict:
    return json.loads(json.dumps(data))


@pytest.mark.parametrize("name", list(FRAMES))
def test_ras_round_trip(name: str) -> None:
    frame = FRAMES[name]
    for box in _boxes(frame):
        data = _through_json(box_json(box, frame))
        assert set(data) == {"ijk", "ras"}
        assert box_from_json({"boxes": {"crop": data}}, frame) == box
        assert box_from_json(data, frame) == box  # a bare box
        assert box_from_json({"ras": data["ras"]}, frame) == box


@pytest.mark.parametrize("name", list(FRAMES))
def test_ras_are_the_outer_voxel_edges(name: str) -> None:
    frame = FRAMES[name]
    box = _boxes(frame)[0]
    low, high = np.array(box_json(box, frame)["ras"])
    spacing = np.array(WORKING_SPACING_ZYX)
    # The working frame is axis-aligned in RAS (I,P,L): x <- working x, y <- y, z <- z.
    np.testing.assert_allclose(high - low, (np.array(box.size) * spacing)[::-1], atol=2e-3)
    centres = index_to_world(np.array([box.start, box.stop], float), frame.affine)
    assert np.all(low < centres.min(axis=0)) and np.all(centres.max(axis=0) < high)


@pytest.mark.parametrize("name", list(FRAMES))
def test_ijk_path_covers_the_box(name: str) -> None:
    frame = FRAMES[name]
    for box in _boxes(frame)[:3]:
        ijk = _through_json(box_json(box, frame))["ijk"]
        assert all(0 <= a <= b < n for (a, b), n in zip(ijk, frame.source_shape))
        assert box_from_json({"ijk": ijk}, frame).contains(box)


def test_a_box_beside_an_oblique_input_has_no_ijk() -> None:
    """The working frame of an oblique input covers it with corners that hold no input voxel."""
    frame = FRAMES["oblique"]
    last = tuple(s - 1 for s in frame.shape)
    data = _through_json(box_json(Box(last, last), frame))
    assert data["ijk"] is None
    assert box_from_json(data, frame) == Box(last, last)  # the RAS corners still locate it


@pytest.mark.parametrize("orientation", ["IPL", "RAS"])
def test_ijk_path_is_exact_on_a_working_spacing_grid(orientation: str) -> None:
    """Input voxels one-to-one with working voxels: the ijk ranges are the box itself (flipped for RAS)."""
    shape_zyx = (20, 64, 80)
    affine = working_affine()
    if orientation == "IPL":
        frame = working_frame_for(shape_zyx, affine)
    else:  # the same grid with axes reversed and flipped: i = R (= 79 - x), j = A (63 - y), k = S (19 - z)
        ras = np.zeros((4, 4))
        ras[:3, 0], ras[:3, 1], ras[:3, 2] = -affine[:3, 2], -affine[:3, 1], -affine[:3, 0]
        ras[:3, 3] = index_to_world(np.array([[19, 63, 79]]), affine)[0]
        ras[3, 3] = 1
        frame = working_frame_for(shape_zyx[::-1], ras)
    assert frame.shape == shape_zyx
    box = Box((3, 10, 20), (12, 50, 70))
    ijk = box_json(box, frame)["ijk"]
    if orientation == "IPL":
        assert ijk == [[3, 12], [10, 50], [20, 70]]
    else:
        assert ijk == [[79 - 70, 79 - 20], [63 - 50, 63 - 10], [19 - 12, 19 - 3]]
    assert box_from_json({"ijk": ijk}, frame) == box


@pytest.mark.parametrize("orientation", sorted(FRAMES))
def test_ijk_and_ras_of_one_box_must_agree_within_a_voxel(orientation: str) -> None:
    """A box as `locate` writes it (both) reads back; one whose 'ijk' was edited while its 'ras'
    stayed (or the reverse) is refused, naming both: which one the user meant is unknown."""
    frame = FRAMES[orientation]
    box = Box((2, 5, 7), (10, 40, 33))
    data = box_json(box, frame)
    assert box_from_json(data, frame) == box
    ijk = np.array(data["ijk"])
    data["ijk"] = (ijk + [[0, 1], [0, 0], [0, 0]]).tolist()  # one voxel: rounding, accepted
    assert box_from_json(data, frame) == box
    data["ijk"] = (ijk + [[0, 2], [0, 0], [0, 0]]).tolist()  # two voxels: an edit
    with pytest.raises(ValueError, match=r"'ijk' .* and 'ras' .* disagree .*delete the one you did not edit"):
        box_from_json(data, frame)
    del data["ras"]
    assert box_from_json(data, frame) != box  # the edited 'ijk' alone is used


@pytest.mark.parametrize("orientation", ["IPL", "RAS"])
def test_an_edited_ijk_box_is_echoed_as_given(orientation: str) -> None:
    """The input's voxels are not the working frame's: the box on the working frame, taken back to
    the input, holds one more voxel on some axes; the report echoes the box the user gave."""
    frame = FRAMES[orientation]
    edited = [[10, 40], [20, 60], [5, 25]]
    given = crop_from_json(_through_json({"boxes": {"crop": {"ijk": edited}}}), frame)
    assert given.echo["ijk"] == edited and given.clipped_from is None and "clipped_from" not in given.echo
    assert box_json(given.box, frame)["ijk"] != edited  # what the report said before: one voxel wider
    assert given.echo["ras"] == Box((10, 20, 5), (40, 60, 25)).edge_corners_ras(frame.source_affine).round(3).tolist()
    ras = box_json(given.box, frame)["ras"]
    assert crop_from_json({"ras": ras}, frame).echo["ras"] == ras  # 'ras' given: 'ras' echoed


def test_a_clipped_ijk_box_says_so() -> None:
    frame = FRAMES["RAS"]  # input 100 x 90 x 30
    given = crop_from_json({"ijk": [[-5, 10], [0, 200], [3, 4]]}, frame)
    assert given.clipped_from == [[-5, 10], [0, 200], [3, 4]] and given.echo["ijk"] == [[0, 10], [0, 89], [3, 4]]
    assert given.echo["clipped_from"] == given.clipped_from


@pytest.mark.parametrize("ijk, shown", [([[0.5, 5], [0, 5], [0, 5]], "0.5"), ([[0, 5], [0, 5.25], [1.5, 5]], "5.25, 1.5")])
def test_a_fractional_ijk_asks_for_integers(ijk, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"^box 'ijk' must hold whole voxel indices \(integers\), got {shown}$"):
        crop_from_json({"ijk": ijk}, FRAMES["RAS"])
    assert crop_from_json({"ijk": [[0, 5.0], [0, 5], [1, 5]]}, FRAMES["RAS"]).echo["ijk"] == [[0, 5], [0, 5], [1, 5]]


def test_a_box_partly_outside_is_clipped() -> None:
    frame = FRAMES["RAS"]
    low, high = np.array(box_json(Box.full(frame.shape), frame)["ras"])
    grown = {"ras": [(low - 50).tolist(), (high + 50).tolist()]}
    assert box_from_json(grown, frame) == Box.full(frame.shape)
    ijk = {"ijk": [[-5, 10], [0, 200], [3, 4]]}
    assert box_from_json(ijk, frame) == box_from_json({"ijk": [[0, 10], [0, 89], [3, 4]]}, frame)


@pytest.mark.parametrize("data, message", [
    ([1, 2], "must hold a JSON object"),
    ("crop", "must hold a JSON object"),
    ({"boxes": {}}, "no crop box"),
    ({"boxes": None}, "no crop box"),
    ({"boxes": {"crop": [1, 2]}}, "no crop box"),
    ({"size": [1, 2, 3]}, "neither 'ras' nor 'ijk'"),
    ({"ras": [[0, 0, 0], [1, 1]]}, "two finite corners"),
    ({"ras": [[0, 0, 0], [1, 1, float("nan")]]}, "two finite corners"),
    ({"ras": [[0, 0, 0], [1, 1, None]]}, "two finite corners"),
    ({"ijk": [[0, 1], [0, 1], [0, "b"]]}, "three inclusive ranges"),
    ({"ijk": [[0, 1, 2], [0, 1, 2]]}, "three inclusive ranges"),
    ({"ijk": [[0, 1], [3, 2], [0, 1]]}, "low to high"),
    ({"ras": [[1e4, 1e4, 1e4], [2e4, 2e4, 2e4]]}, "wholly outside the image"),
    ({"ijk": [[-10, -1], [0, 1], [0, 1]]}, "wholly outside the image"),
])
def test_malformed_boxes_raise_one_line_value_errors(data, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        box_from_json(data, FRAMES["oblique"])
    assert "\n" not in str(error.value)


def test_stage1_json_and_its_reading_by_the_slicer_module() -> None:
    frame = FRAMES["IPL"]
    result = Stage1Result(
        segmentation_box=Box((4, 8, 12), (11, 23, 39)), landmark_box=None, chosen_box=Box((4, 8, 12), (11, 23, 39)),
        refined_box=None, crop_box=Box((0, 0, 0), (14, 87, 103)),
        landmarks=(Landmark("left", (5.5, 9.5, 13.5), 0.9), Landmark("center", (7.5, 15.5, 25.5), 0.7)),
        decisions=("no landmarks: segmentation box used",))
    data = _through_json(stage1_json(result, frame))
    assert set(data["boxes"]) == {"segmentation", "landmarks", "chosen", "refined", "crop"}
    assert data["boxes"]["landmarks"] is None and data["boxes"]["refined"] is None
    assert data["boxes"]["crop"] == _through_json(box_json(result.crop_box, frame))
    assert [lm["name"] for lm in data["landmarks"]] == ["left", "center"]
    np.testing.assert_allclose(data["landmarks"][0]["ras"], index_to_world(np.array([[5.5, 9.5, 13.5]]), frame.affine)[0], atol=1e-3)
    assert data["decisions"] == ["no landmarks: segmentation box used"]
    assert box_from_json(data, frame) == result.crop_box  # what `segment --box` reads
    outcome = LocateOutcome.from_json(data)
    assert outcome.crop_box.to_box(frame) == result.crop_box and outcome.landmark_box is None
    assert [p.name for p in outcome.landmarks] == ["left", "center"]
