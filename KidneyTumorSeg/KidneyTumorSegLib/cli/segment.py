"""`segment` and `locate`: one image through the cascade, outputs written atomically."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..boxes import Box
from ..bundle import ModelBundle, default_bundle_path, load_bundle
from ..cascade import KIDNEY_ROLES, STAGE2_ORDER, Cascade, InferenceOptions, PreparedCase, SegmentationResult
from ..geometry import WorkingFrame, working_frame_for
from ..imageio import Image, atomic_output, check_output_path, image_suffix, read_image, write_label_map
from ..measurements import measure
from ..peak_memory import peak_rss_mb
from ..report import DEMO_NOTICE, box_from_json, box_json, kidney_finding, result_notes, stage1_json
from ..settings import DEFAULT_SETTINGS, MethodSettings
from ..validation import InputError, check_ct
from .display import MODES, ProgressDisplay

logger = logging.getLogger(__name__)

LABEL_OUTPUTS = (".nii.gz", ".nii", ".nrrd")
SEGMENTATION_OUTPUT = ".seg.nrrd"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs models."""
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle folder (default: the shipped demo bundle)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    parser.add_argument("--members", default=None, help="comma-separated stage-2 models to use, e.g. KT,K1,T-vnet (default: all in the bundle)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap in [0, 1) (default 0.25)")
    parser.add_argument("--batch-size", type=int, default=2, help="3D patches per batch (default 2)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every network: minutes of compiling first, then faster (for long GPU batch runs)")
    parser.add_argument("--min-tumor-pixels", type=int, default=DEFAULT_SETTINGS.fusion.min_tumor_component_pixels,
                        help="keep per-slice tumor components larger than this (default 64)")
    parser.add_argument("--strict", action="store_true", help="strict consensus: KT-only voxels become background, not kidney")
    parser.add_argument("--keep-all-components", action="store_true",
                        help="keep stage 2's kidney components that stage 1 did not see (the paper's behaviour; "
                             "use it when your --box holds a kidney stage 1 missed)")
    parser.add_argument("--force", action="store_true", help="segment even if the image does not look like CT")
    parser.add_argument("--progress", choices=MODES, default="bar", help="bar (terminal), json (lines on stdout) or none")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def add_segment_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("segment", help="segment kidneys and tumors in a CT", description="Segment kidneys and kidney tumors in one CT image.")
    parser.add_argument("image", type=Path, help="CT image (.nii.gz, .nii or .nrrd)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="label map (.nii.gz/.nii/.nrrd: 0/1/2 on the input grid) or Slicer segmentation (.seg.nrrd)")
    parser.add_argument("--box", default=None, help="boxes.json from `locate` (its crop box), or 'full' to skip stage 1")
    parser.add_argument("--report", type=Path, default=None, help="write a JSON report (boxes, timings, volumes, tumor sizes)")
    parser.add_argument("--qa", type=Path, default=None, help="write a QA picture (PNG) of boxes, landmarks and result")
    add_model_options(parser)
    parser.set_defaults(handler=run_segment)


def add_locate_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("locate", help="run stage 1 only: boxes and landmarks", description="Run stage 1 (localisation and mixed cropping) and write the boxes as JSON.")
    parser.add_argument("image", type=Path, help="CT image (.nii.gz, .nii or .nrrd)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="boxes JSON")
    parser.add_argument("--qa", type=Path, default=None, help="write a QA picture (PNG) of the boxes and landmarks")
    add_model_options(parser)
    parser.set_defaults(handler=run_locate)


def method_settings(args: argparse.Namespace) -> MethodSettings:
    """The method settings the command-line options select."""
    fusion = dataclasses.replace(DEFAULT_SETTINGS.fusion, min_tumor_component_pixels=args.min_tumor_pixels,
                                 kt_only_label=0 if args.strict else DEFAULT_SETTINGS.fusion.kt_only_label)
    stage1 = dataclasses.replace(DEFAULT_SETTINGS.stage1, support_components=not args.keep_all_components)
    return dataclasses.replace(DEFAULT_SETTINGS, fusion=fusion, stage1=stage1)


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """Inference options from the command line; validates the numbers."""
    if not 0.0 <= args.overlap < 1.0:
        raise ValueError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    members = tuple(m.strip() for m in args.members.split(",") if m.strip()) if args.members else None
    return InferenceOptions(device=args.device, overlap=args.overlap, batch_size=args.batch_size, members=members,
                            compile=args.compile, settings=method_settings(args))


def open_bundle(args: argparse.Namespace) -> ModelBundle:
    """The bundle named by ``--bundle`` or the shipped default."""
    bundle = load_bundle(args.bundle or default_bundle_path())
    if bundle.is_demo:
        logger.warning("bundle '%s' is a demo bundle trained on synthetic phantoms: not for clinical use", bundle.manifest.get("name", bundle.path.name))
    return bundle


def refuse_existing(paths: list[Path | None], overwrite: bool) -> None:
    """Fail before any work when an output exists and ``--overwrite`` was not given, is a
    folder, or its folder is missing or not writable."""
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a folder; give a file name")
        check_output_path(path, overwrite)


def stage1_plan(cascade: Cascade) -> list[str]:
    """The models stage 1 runs, in order: stage 1, then the models refining its box."""
    stage1 = cascade.settings.stage1
    if not stage1.refine_enabled:
        return ["stage1"]
    if stage1.refine_with == "KT":
        return ["stage1", "KT"]
    return ["stage1", *(r for r in KIDNEY_ROLES if r in cascade.members)]


def plan(cascade: Cascade, with_stage1: bool) -> list[str]:
    """The models a run reports progress for, in the order they run (the kidney models refine
    stage 1's box; stage 2 runs them only in strict consensus, the one mode where they change a
    label; with a given box, stage 1's segmentation head runs for the support rule)."""
    support = ["stage1"] if cascade.settings.stage1.support_components else []
    first = stage1_plan(cascade) if with_stage1 else support
    stage2 = [r for r in STAGE2_ORDER if r in cascade.members and (r not in KIDNEY_ROLES or cascade.kidney_models_label)]
    return first + [r for r in stage2 if r not in first]


def read_checked_image(args: argparse.Namespace) -> Image:
    """The ``image`` argument, read and checked (:class:`InputError` names the file)."""
    image = read_image(args.image)
    try:
        check_ct(image, force=args.force)
    except InputError as error:
        raise InputError(f"{args.image}: {error}") from None
    return image


def read_box_option(option: str | None) -> Any:
    """``--box`` read before any work: None (run stage 1), "full", or the parsed boxes JSON."""
    if option is None or option == "full":
        return option
    path = Path(option)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: box file not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: box file is not valid JSON ({error})") from None


def crop_from_option(option: Any, frame: WorkingFrame, source: str = "--box") -> Box | None:
    """The working-frame crop of a :func:`read_box_option` result: None (run stage 1), the whole
    frame ("full"), or the crop box of a boxes JSON (ValueError when malformed or outside)."""
    if option is None:
        return None
    if option == "full":
        return Box.full(frame.shape)
    try:
        return box_from_json(option, frame)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def segmentation_report(result: SegmentationResult, case: PreparedCase, bundle: ModelBundle, seconds: float) -> dict[str, Any]:
    """The JSON report of one segmentation."""
    report: dict[str, Any] = {
        "input": str(case.image.array.shape),
        "bundle": {"name": bundle.manifest.get("name"), "path": str(bundle.path), "demo": bundle.is_demo,
                   "missing_roles": list(bundle.missing_roles())},
        "models": list(result.models),
        "crop": box_json(result.crop_box, case.frame),
        "stage1": None if result.stage1 is None else stage1_json(result.stage1, case.frame),
        **kidney_finding(result.labels, result.stage1, None if case.support_down is None else bool(case.support_down.any())),
        "measurements": measure(result.labels, case.image.affine),
        "seconds": {"total": round(seconds, 3), **{k: round(v, 3) for k, v in result.timings.items()}},
        "peak_rss_mb": peak_rss_mb(),
    }
    return report


def write_outputs(result: SegmentationResult, case: PreparedCase, args: argparse.Namespace, report: dict | None) -> None:
    """Write label map / segmentation, report and QA picture: all or nothing."""
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(atomic_output(args.output, args.overwrite))
        write_result(output, result.labels, case.image.affine, args.output)
        if report is not None and args.report is not None:
            report_path = stack.enter_context(atomic_output(args.report, args.overwrite))
            report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if args.qa is not None:
            from ..qa import save_qa_png

            qa_path = stack.enter_context(atomic_output(args.qa, args.overwrite))
            save_qa_png(qa_path, case.normalized, result.labels_working, result.crop_box, result.stage1, case.frame.spacing,
                        title="; ".join(result_notes(report or {})))


def write_result(temporary: Path, labels, affine, destination: Path) -> None:
    """Write labels ``[i, j, k]`` to ``temporary`` in the format ``destination``'s name asks for."""
    if destination.name.lower().endswith(SEGMENTATION_OUTPUT):
        try:
            from ..mrml.segmentation_file import write_segmentation_file
        except ImportError as error:
            raise RuntimeError("writing .seg.nrrd needs slicer-core (pip install 'kidneytumorseg[mrml]')") from error
        write_segmentation_file(labels, affine, temporary, overwrite=True)
    elif image_suffix(destination) in LABEL_OUTPUTS:
        write_label_map(temporary, labels, affine, overwrite=True)
    else:
        raise ValueError(f"{destination}: output must end with .nii.gz, .nii, .nrrd or .seg.nrrd")


def check_output_name(path: Path) -> None:
    if not (path.name.lower().endswith(SEGMENTATION_OUTPUT) or image_suffix(path) in LABEL_OUTPUTS):
        raise ValueError(f"{path}: output must end with .nii.gz, .nii, .nrrd or .seg.nrrd")


def check_writers(output: Path | None, qa: Path | None) -> None:
    """Fail before any work when an output needs an optional package that is not installed."""
    if output is not None and output.name.lower().endswith(SEGMENTATION_OUTPUT):
        try:
            from ..mrml.segmentation_file import write_segmentation_file  # noqa: F401
        except ImportError as error:
            raise RuntimeError("writing .seg.nrrd needs slicer-core (pip install 'kidneytumorseg[mrml]')") from error
    elif output is not None and image_suffix(output) == ".nrrd" and importlib.util.find_spec("nrrd") is None:
        raise RuntimeError("writing .nrrd needs pynrrd (pip install 'kidneytumorseg[cli]')")
    if qa is not None and importlib.util.find_spec("matplotlib") is None:
        raise RuntimeError("--qa needs matplotlib (pip install 'kidneytumorseg[cli]')")


def run_segment(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    check_output_name(args.output)
    check_writers(args.output, args.qa)
    refuse_existing([args.output, args.report, args.qa], args.overwrite)
    options = inference_options(args)
    box = read_box_option(args.box)
    image = read_checked_image(args)
    crop = crop_from_option(box, working_frame_for(image.array.shape, image.affine), f"--box {args.box}")
    bundle = open_bundle(args)
    cascade = Cascade(bundle, options)
    case = cascade.prepare(image)
    with ProgressDisplay(args.progress, plan(cascade, crop is None), "segment") as display:
        result = cascade.segment(image, crop, display, case=case)
        report = segmentation_report(result, case, bundle, time.perf_counter() - start)
        write_outputs(result, case, args, report)
        display.done(output=str(args.output))
    if not report["kidney_found"]:
        logger.warning("%s: no kidney found: the result is empty (%s). Check the crop with --qa, or give one with --box",
                       args.image, report["stage1_decision"])
    logger.info("wrote %s (%.1f s)", args.output, time.perf_counter() - start)
    return 0


def run_locate(args: argparse.Namespace) -> int:
    check_writers(None, args.qa)
    refuse_existing([args.output, args.qa], args.overwrite)
    options = inference_options(args)
    image = read_checked_image(args)
    bundle = open_bundle(args)
    cascade = Cascade(bundle, options)
    case = cascade.prepare(image)
    with ProgressDisplay(args.progress, stage1_plan(cascade), "locate") as display:
        stage1 = cascade.locate(case, display)
        with contextlib.ExitStack() as stack:
            output = stack.enter_context(atomic_output(args.output, args.overwrite))
            output.write_text(json.dumps(stage1_json(stage1, case.frame), indent=2) + "\n", encoding="utf-8")
            if args.qa is not None:
                import numpy as np

                from ..qa import save_qa_png

                qa_path = stack.enter_context(atomic_output(args.qa, args.overwrite))
                save_qa_png(qa_path, case.normalized, np.zeros(case.frame.shape, np.uint8), stage1.crop_box, stage1, case.frame.spacing,
                            title=DEMO_NOTICE if bundle.is_demo else "")
        display.done(output=str(args.output))
    return 0
