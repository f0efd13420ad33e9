"""Peak memory of the Slicer side of a segmentation: what the module's process adds while it reads
the command line's outputs into the scene (label map, report, uncertainty map, disputed voxels), as
JSON. Today's engine and, with ``--baseline REF``, the engine of git commit ``REF``, each in its
own child process.

    python benchmarks/slicer_load_memory.py --mask kits19/masks/case_00098.nii.gz --slices 600 \
        --baseline main --out slicer_load.json

The outputs are made once, from the case's true labels, as the command line writes them: the label
map, the report, and the uncertainty (0.6 on tumor, 0.1 on kidney, 0 elsewhere, over the stage-2
crop a trained stage 1 would give: the true kidney box plus the stage-2 margin) in both formats --
uint8 over the voxels near the crop with the disputed voxels beside it (today), and float32 on the
whole input grid (before). Each child builds a real MRML scene (``slicer-core``) holding a CT
volume of the case's grid and runs Segment through the panel's controller; its runner hands over
the prepared files in the format the child's engine asks for instead of running the networks, so
the figures do not depend on a shared CPU. The child's peak resident memory is reset (Linux
``/proc/self/clear_refs``) once the run has started: ``load_peak_mb`` is the peak above the memory
held before the results arrived, all of it the module's reading of them. No 3D surfaces (their
cost does not depend on these files).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cascade_benchmark import REPOSITORY, cached_case, checkout_state, emit_json, export_baseline, shown_path

STATUS = Path("/proc/self/status")


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` memory figure (``VmRSS``, ``VmHWM``) in MB."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def make_outputs(labels_path: Path, folder: Path) -> dict[str, str]:
    """The command line's outputs for the case of ``labels_path``, both uncertainty formats, in ``folder``."""
    from KidneyTumorSegLib.boxes import Box
    from KidneyTumorSegLib.geometry import to_working_frame, working_frame_for
    from KidneyTumorSegLib.imageio import read_image, write_image, write_label_map
    from KidneyTumorSegLib.measurements import measure
    from KidneyTumorSegLib.stage1 import stage2_crop
    from KidneyTumorSegLib.uncertainty import EnsembleUncertainty, case_review
    from KidneyTumorSegLib.uncertainty_files import uncertainty_near_crop, write_uncertainty_files

    truth = read_image(labels_path, dtype=np.uint8)
    frame = working_frame_for(truth.array.shape, truth.affine)
    working = to_working_frame(truth.array, frame, order=0, dtype=np.uint8)
    crop = stage2_crop(Box.from_mask(working > 0), frame.shape)
    inside = working[crop.slices]
    values = np.select([inside == 2, inside == 1], [0.6, 0.1], 0.0).astype(np.float32)
    review = case_review(EnsembleUncertainty(values, None), inside, float(np.prod(frame.spacing)) / 1000).to_json()
    paths = {name: folder / name for name in ("labels.nii.gz", "report.json", "uncertainty_near.nii.gz", "review.nii.gz",
                                               "uncertainty_whole.nii.gz")}
    write_label_map(paths["labels.nii.gz"], truth.array, truth.affine)
    paths["report.json"].write_text(json.dumps({"measurements": measure(truth.array, truth.affine), "kidney_found": True,
                                                "bundle": {"demo": False}, "review": review["review"], "uncertainty": review}))
    near = uncertainty_near_crop(values, crop, frame, truth.affine)
    with contextlib.ExitStack() as stack:
        write_uncertainty_files(stack, near, review["disputed_threshold"], False, paths["uncertainty_near.nii.gz"],
                                paths["review.nii.gz"])
    whole = np.zeros(truth.array.shape[::-1], np.float32).T  # as --uncertainty wrote it before: float32, whole grid
    start = np.rint(np.linalg.inv(truth.affine) @ near.affine[:, 3])[:3].astype(int)
    whole[tuple(slice(s, s + n) for s, n in zip(start, near.array.shape))] = near.array
    write_image(paths["uncertainty_whole.nii.gz"], whole, truth.affine)
    return {name: str(path) for name, path in paths.items()}


class ReplayRunner:
    """A :class:`ProcessRunner` that hands over prepared outputs in the format the command asks for."""

    def __init__(self, outputs: dict[str, str]):
        self.outputs = outputs
        self._finish = None

    def start(self, argv, on_line, on_finished) -> None:
        def option(name: str) -> Path:
            return Path(argv[argv.index(name) + 1])

        def finish() -> None:
            shutil.copy(self.outputs["labels.nii.gz"], option("-o"))
            shutil.copy(self.outputs["report.json"], option("--report"))
            if "--review-mask" in argv:
                shutil.copy(self.outputs["uncertainty_near.nii.gz"], option("--uncertainty"))
                shutil.copy(self.outputs["review.nii.gz"], option("--review-mask"))
            else:
                shutil.copy(self.outputs["uncertainty_whole.nii.gz"], option("--uncertainty"))
            on_line(json.dumps({"type": "done", "output": str(option("-o"))}))
            on_finished(0, "")

        self._finish = finish

    def poll(self) -> bool:
        finish, self._finish = self._finish, None
        if finish is not None:
            finish()
        return False

    def cancel(self) -> None:
        self._finish = None


def measure_load(outputs: dict[str, str]) -> dict:
    """One Segment through the controller, replayed; the memory and seconds of reading its results."""
    from KidneyTumorSegLib.controller import Controller, State
    from KidneyTumorSegLib.imageio import Image, read_image
    from KidneyTumorSegLib.mrml.scene import module_parameter_node, new_headless_scene
    from KidneyTumorSegLib.mrml.volumes import add_volume

    labels = read_image(outputs["labels.nii.gz"])
    headless = new_headless_scene()
    scene = headless.scene
    volume = add_volume(scene, Image(np.zeros(labels.array.shape, np.int16), labels.affine), "case")  # the CT's grid
    del labels
    controller = Controller(scene, module_parameter_node(scene, "KidneyTumorSeg"), ReplayRunner(outputs))
    controller.update(input_volume=volume, show_3d=False)
    try:
        if not controller.segment():
            raise RuntimeError(controller.status())
        Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
        before_mb = status_mb("VmRSS")
        start = time.perf_counter()
        state = controller.wait(interval_s=0.0)
        seconds = time.perf_counter() - start
        if state is not State.DONE:
            raise RuntimeError(f"segment {state.value}: {controller.error}")
        return {"rss_before_load_mb": round(before_mb, 1), "load_peak_mb": round(status_mb("VmHWM") - before_mb, 1),
                "load_seconds": round(seconds, 2),
                "uncertainty_voxels": int(controller.parameters.uncertainty_volume.GetImageData().GetNumberOfPoints()),
                "ct_voxels": int(volume.GetImageData().GetNumberOfPoints())}
    finally:
        controller.close()


def run_child(outputs: dict[str, str], engine: Path) -> dict:
    """:func:`measure_load` in a child process whose ``KidneyTumorSegLib`` comes from ``engine``."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(engine), str(Path(__file__).parent), str(REPOSITORY)])}
    code = f"import json, slicer_load_memory as m; print(json.dumps(m.measure_load({outputs!r})))"
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mask", type=Path, required=True, help="a KiTS19 mask (.nii.gz) the case is built on")
    parser.add_argument("--slices", type=int, default=600, help="slices of the case (default 600)")
    parser.add_argument("--baseline", default=None, help="also measure the engine of this git commit")
    parser.add_argument("--cache", type=Path, default=None, help="keep the built case here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    if not STATUS.is_file():
        parser.error("needs Linux (/proc/self/status and clear_refs)")
    with tempfile.TemporaryDirectory() as folder:
        _, labels = cached_case(args.mask, args.slices, args.cache or Path(folder))
        outputs_folder = Path(folder) / "outputs"
        outputs_folder.mkdir()
        outputs = make_outputs(labels, outputs_folder)
        sizes = {name: round(Path(path).stat().st_size / 2**20, 1) for name, path in outputs.items()}
        engines = {"current": (REPOSITORY / "KidneyTumorSeg", None)}
        if args.baseline:
            tree, commit = export_baseline(args.baseline, Path(folder))
            engines["baseline"] = (tree / "KidneyTumorSeg", commit)
        runs = {name: run_child(outputs, engine) for name, (engine, _) in engines.items()}
    result = {"mask": shown_path(args.mask), "slices": args.slices, "file_mb": sizes, "current": checkout_state(),
              "baseline": None if not args.baseline else {"ref": args.baseline, "commit": engines["baseline"][1]}, "runs": runs}
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
