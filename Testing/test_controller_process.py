"""The out-of-process runner on real processes, and the controller driving the real command line."""
from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.process import CliCommand, DoneEvent, ProgressEvent, RunOptions, SubprocessRunner, parse_line, runner_for


def run_to_end(runner: SubprocessRunner, argv: list[str], timeout_s: float = 60) -> tuple[list[str], list]:
    lines: list[str] = []
    finished: list = []
    runner.start(argv, lines.append, lambda code, stderr: finished.append((code, stderr)))
    deadline = time.monotonic() + timeout_s
    while runner.poll():
        assert time.monotonic() < deadline, "the command did not end"
        time.sleep(0.02)
    return lines, finished


def test_runner_streams_stdout_lines_and_reports_the_exit_and_stderr():
    script = textwrap.dedent("""
        import json, sys
        for n in range(3):
            print(json.dumps({"type": "progress", "fraction": n / 2, "stage": "stage2", "model": "KT"}), flush=True)
        print("kidneytumorseg: error: boom", file=sys.stderr)
        sys.exit(3)
    """)
    lines, finished = run_to_end(SubprocessRunner(), [sys.executable, "-c", script])
    assert [parse_line(line) for line in lines] == [ProgressEvent(f, "stage2", "KT") for f in (0.0, 0.5, 1.0)]
    assert finished == [(3, "kidneytumorseg: error: boom")]


def test_parse_line_knows_progress_done_and_ignores_the_rest():
    assert parse_line('{"type": "done", "output": "x.nii.gz"}') == DoneEvent("x.nii.gz")
    assert parse_line('{"type": "progress", "fraction": 1.5}') == ProgressEvent(1.0, "", "")
    assert parse_line("INFO: hello") is None and parse_line("[1, 2]") is None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(os.name != "posix", reason="checks POSIX process groups")
def test_cancel_kills_the_whole_process_tree(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("ready", flush=True)
        time.sleep(120)
    """)
    runner = SubprocessRunner(kill_grace_s=1.0)
    lines: list[str] = []
    finished: list = []
    runner.start([sys.executable, "-c", script], lines.append, lambda *report: finished.append(report))
    deadline = time.monotonic() + 30
    while "ready" not in lines:
        assert runner.poll() and time.monotonic() < deadline
        time.sleep(0.02)
    child, grandchild = runner.pid, int(pid_file.read_text())
    runner.cancel()
    assert not runner.running
    deadline = time.monotonic() + 10
    while (_alive(child) or _alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child) and not _alive(grandchild)
    time.sleep(0.2)
    runner.poll()
    assert finished == []  # a cancelled command reports nothing


def test_cli_command_builds_the_documented_argument_lists(tmp_path):
    command = CliCommand(python="/slicer/bin/PythonSlicer", package_parent=tmp_path)
    options = RunOptions(bundle="/b", device="cuda", members=("KT", "T-vnet"), overlap=0.5, min_tumor_pixels=64)
    locate = command.locate(Path("in.nii"), Path("boxes.json"), options)
    assert locate[:5] == ["/slicer/bin/PythonSlicer", "-m", "KidneyTumorSegLib.cli.main", "locate", "in.nii"]
    assert locate[locate.index("-o") + 1] == "boxes.json" and locate[locate.index("--progress") + 1] == "json"
    segment = command.segment(Path("in.nii"), Path("out.nii.gz"), options, Path("box.json"), Path("report.json"))
    assert segment[segment.index("--box") + 1] == "box.json" and segment[segment.index("--members") + 1] == "KT,T-vnet"
    assert "--box" not in command.segment(Path("in.nii"), Path("out.nii.gz"), RunOptions())
    full = command.segment(Path("in.nii"), Path("out.nii.gz"), options, None, None, Path("u.nii.gz"), Path("r.nii.gz"))
    assert full[full.index("--uncertainty") + 1] == "u.nii.gz" and full[full.index("--review-mask") + 1] == "r.nii.gz"
    assert "--bundle" not in command.segment(Path("in.nii"), Path("out.nii.gz"), RunOptions())
    assert command.environment()["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)


@pytest.fixture(scope="module")
def untrained_bundle(tmp_path_factory) -> Path:
    """A bundle of random networks (stage 1, KT, K1), 4 base channels: fast, segments nothing real."""
    from training_tools.untrained import make_untrained_bundle

    return make_untrained_bundle(tmp_path_factory.mktemp("bundle") / "untrained", base_channels=4, roles=("stage1", "KT", "K1"))


@pytest.fixture(scope="module")
def small_ct(example_ct_path, tmp_path_factory) -> Path:
    """A 17 x 17 x 16 voxel (3 mm) block of the real CT holding a kidney edge and some air."""
    import nibabel as nib

    image = nib.load(str(example_ct_path))
    start = np.array([16, 16, 2])
    block = np.asarray(image.dataobj)[16:33, 16:33, 2:18]
    affine = image.affine.copy()
    affine[:3, 3] = (image.affine @ np.r_[start, 1.0])[:3]
    path = tmp_path_factory.mktemp("ct") / "small_ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(block), affine), str(path))
    return path


@pytest.mark.slow
def test_real_cli_locate_drag_segment_then_cancel(small_ct, untrained_bundle):
    pytest.importorskip("slicer")
    from KidneyTumorSegLib.controller import Controller, State
    from KidneyTumorSegLib.imageio import read_image
    from KidneyTumorSegLib.locate_result import RasBox
    from KidneyTumorSegLib.mrml.roi import roi_ras_box, set_roi_box
    from KidneyTumorSegLib.mrml.scene import module_parameter_node, new_headless_scene, node_ids
    from KidneyTumorSegLib.mrml.segmentation import segment_id, segmentation_labels
    from KidneyTumorSegLib.mrml.volumes import add_volume

    headless = new_headless_scene()
    scene = headless.scene
    volume = add_volume(scene, read_image(small_ct), "small")
    command = CliCommand()
    runner = runner_for(command, kill_grace_s=1.0)  # as the Slicer module starts it
    controller = Controller(scene, module_parameter_node(scene, "KidneyTumorSeg"), runner, command, confirm=lambda q: True)
    controller.update(input_volume=volume, bundle_path=str(untrained_bundle), members=("KT",), device="cpu", show_3d=False,
                      allow_partial=True)
    try:
        assert controller.locate()
        assert controller.wait() is State.LOCATED, controller.error
        p = controller.parameters
        assert p.crop_roi is not None and not p.crop_roi.GetLocked() and p.landmarks is not None

        located = roi_ras_box(p.crop_roi)
        dragged = RasBox(located.low, (located.center[0], *located.high[1:]))
        set_roi_box(p.crop_roi, dragged)
        assert controller.segment()
        assert controller.wait() is State.DONE, controller.error
        p = controller.parameters
        labels, affine = segmentation_labels(p.output_segmentation, volume)
        assert labels.shape == volume.GetImageData().GetDimensions() and np.allclose(affine, read_image(small_ct).affine)
        assert segment_id(p.output_segmentation, "Kidney") and segment_id(p.output_segmentation, "Tumor")
        outside = np.argwhere(labels > 0) @ affine[:3, :3].T + affine[:3, 3]  # stage 2 ran only inside the dragged box
        assert np.all(outside[:, 0] <= dragged.high[0] + 1e-3) if len(outside) else True

        before = node_ids(scene)
        controller.update(members=("KT", "K1"))  # KT reports half-way, then K1 still runs when we cancel
        assert controller.segment()
        pid = runner.pid
        deadline = time.monotonic() + 120
        while controller.fraction == 0.0:
            assert controller.poll() and time.monotonic() < deadline, controller.error
            time.sleep(0.02)
        assert controller.state is State.SEGMENTING and controller.fraction < 1.0
        controller.cancel()
        assert controller.state is State.CANCELLED and node_ids(scene) == before
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        controller.close()


def test_segment_folder_raises_when_no_case_succeeded(small_ct, untrained_bundle, tmp_path, caplog):
    """The real batch on a folder with an unreadable .nrrd: it exits 3 (some cases failed); the case
    that worked is written and the failure named, and a folder where every case fails is an error
    carrying the case's own message, not an empty list."""
    pytest.importorskip("slicer")
    import shutil

    from KidneyTumorSegLib.folder_segmentation import segment_folder

    inputs, broken = tmp_path / "in", tmp_path / "broken"
    for folder in (inputs, broken):
        folder.mkdir()
        (folder / "case_b.nrrd").write_bytes(b"NRRD0004\ntype: nonsense\n\n")
    shutil.copy(small_ct, inputs / "case_a.nii.gz")
    command = CliCommand()
    options = RunOptions(bundle=str(untrained_bundle), device="cpu", members=("KT",), allow_partial=True)
    with caplog.at_level("WARNING", logger="KidneyTumorSegLib.folder_segmentation"):
        written = segment_folder(inputs, tmp_path / "out", runner_for(command), command, options)
    assert [p.name for p in written] == ["case_a.seg.nrrd"]
    assert "1 of 2 cases failed" in caplog.text and "case_b" in caplog.text
    with pytest.raises(RuntimeError, match=r"no case was segmented: 1 of 1 failed; case_b: .*case_b\.nrrd"):
        segment_folder(broken, tmp_path / "out broken", runner_for(command), command, options)
    assert not list((tmp_path / "out broken").glob("*.seg.nrrd"))


def test_windows_children_get_their_own_group_and_no_console_window(monkeypatch):
    from KidneyTumorSegLib import process

    flags = process.process_group_options("nt")["creationflags"]
    assert flags & 0x08000000 and flags & 0x00000200  # CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP
    assert process.process_group_options("posix") == {"start_new_session": True}
    calls = []
    monkeypatch.setattr(process.subprocess, "run", lambda argv, **kwargs: calls.append((argv, kwargs)))
    process.kill_windows_tree(4321)
    assert calls[0][0] == ["taskkill", "/F", "/T", "/PID", "4321"] and calls[0][1]["creationflags"] & 0x08000000
