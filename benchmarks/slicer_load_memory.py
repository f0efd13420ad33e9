"""Peak memory of the Slicer side of a segmentation: what the module's process adds while it reads
the command line's outputs into the scene (label map, report, uncertainty map, disputed voxels), as
JSON. Today's engine and, with ``--baseline REF``, the engine of git commit ``REF``, each in its
own child process.

    python benchmarks/slicer_load_memory.py --mask kits19/masks/case_00098.nii.gz --slices 600 \
        --baseline main --out slicer_load.json

Each child builds a real MRML scene (``slicer-core``), loads the case's CT as Slicer holds a loaded
volume, and runs Segment through the panel's controller with the real command line out of process
(the shipped bundle unless ``--bundle``; no 3D surfaces, whose cost does not depend on these files).
Once the command line is running the child's peak resident memory is reset (Linux
``/proc/self/clear_refs``), so ``load_peak_mb`` is the peak above the memory held before the
results arrived, all of it the module's reading of the results. The case is a phantom CT built on a
real KiTS19 mask (``cascade_benchmark.make_case``), padded or cut to ``--slices`` slices.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cascade_benchmark import REPOSITORY, cached_case, checkout_state, emit_json, export_baseline, shown_path

STATUS = Path("/proc/self/status")


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` memory figure (``VmRSS``, ``VmHWM``) in MB."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def measure(image_path: Path, bundle: str, threads: int, members: tuple[str, ...] = ()) -> dict:
    """One Segment through the controller on ``image_path``; the memory and seconds of reading its results."""
    from KidneyTumorSegLib.controller import Controller, State
    from KidneyTumorSegLib.imageio import read_image
    from KidneyTumorSegLib.mrml.scene import module_parameter_node, new_headless_scene
    from KidneyTumorSegLib.mrml.volumes import add_volume
    from KidneyTumorSegLib.process import CliCommand, runner_for

    headless = new_headless_scene()
    scene = headless.scene
    volume = add_volume(scene, read_image(image_path), "case")
    command = CliCommand()
    marks: dict[str, float] = {}
    controller: Controller | None = None

    def on_change() -> None:
        if controller is not None and controller.message == "Reading the result…" and "reading" not in marks:
            marks["reading"] = time.perf_counter()

    controller = Controller(scene, module_parameter_node(scene, "KidneyTumorSeg"), runner_for(command), command,
                            on_change=on_change)
    controller.update(input_volume=volume, show_3d=False, device="cpu", bundle_path=bundle, members=members)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the command line's threads (it inherits the environment)
    try:
        if not controller.segment():
            raise RuntimeError(controller.status())
        Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
        before_mb = status_mb("VmRSS")
        state = controller.wait(interval_s=0.02)
        done = time.perf_counter()
        if state is not State.DONE:
            raise RuntimeError(f"segment {state.value}: {controller.error}")
        return {"rss_before_load_mb": round(before_mb, 1), "load_peak_mb": round(status_mb("VmHWM") - before_mb, 1),
                "load_seconds": round(done - marks["reading"], 2), "review": controller.review,
                "uncertainty_voxels": int(controller.parameters.uncertainty_volume.GetImageData().GetNumberOfPoints()),
                "ct_voxels": int(volume.GetImageData().GetNumberOfPoints())}
    finally:
        controller.close()


def run_child(image: Path, bundle: str, threads: int, members: tuple[str, ...], engine: Path) -> dict:
    """:func:`measure` in a child process whose ``KidneyTumorSegLib`` comes from ``engine``."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(engine), str(Path(__file__).parent), str(REPOSITORY)])}
    code = f"import json, slicer_load_memory as m; print(json.dumps(m.measure({str(image)!r}, {bundle!r}, {threads}, {members!r})))"
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mask", type=Path, required=True, help="a KiTS19 mask (.nii.gz) the phantom CT is built on")
    parser.add_argument("--slices", type=int, default=600, help="slices of the case (default 600)")
    parser.add_argument("--bundle", default=str(REPOSITORY / "KidneyTumorSeg" / "Resources" / "Models" / "demo"))
    parser.add_argument("--threads", type=int, default=2, help="the command line's threads (default 2)")
    parser.add_argument("--members", default="", help="stage-2 members, e.g. KT (default: all; the files read "
                                                      "back have the same size whichever run)")
    parser.add_argument("--baseline", default=None, help="also measure the engine of this git commit")
    parser.add_argument("--cache", type=Path, default=None, help="keep the built case here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    if not STATUS.is_file():
        parser.error("needs Linux (/proc/self/status and clear_refs)")
    with tempfile.TemporaryDirectory() as folder:
        image, _ = cached_case(args.mask, args.slices, args.cache or Path(folder))
        engines = {"current": (REPOSITORY / "KidneyTumorSeg", None)}
        if args.baseline:
            tree, commit = export_baseline(args.baseline, Path(folder))
            engines["baseline"] = (tree / "KidneyTumorSeg", commit)
        members = tuple(m for m in args.members.split(",") if m)
        runs = {name: run_child(image, args.bundle, args.threads, members, engine) for name, (engine, _) in engines.items()}
    result = {"mask": shown_path(args.mask), "slices": args.slices, "threads": args.threads, "members": args.members or "all",
              "current": checkout_state(),
              "baseline": None if not args.baseline else {"ref": args.baseline, "commit": engines["baseline"][1]}, "runs": runs}
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
