"""`segment` and `locate`: one image through the cascade, outputs written atomically."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..boxes import Box
from ..bundle import BundleError, ModelBundle, default_bundle_path, load_bundle
from ..cascade import KIDNEY_ROLES, STAGE2_ORDER, Cascade, InferenceOptions, PreparedCase, SegmentationResult
from ..crop_values import crop_to_frame
from ..geometry import WorkingFrame, working_frame_for
from ..imageio import (Image, atomic_output, check_output_path, image_suffix, read_image, refuse_input_as_output,
                       write_label_map)
from ..kidney_sides import per_side_lines, side_findings, side_warnings, stage1_sides
from ..measurements import measure
from ..peak_memory import peak_rss_mb
from ..review_flag import load_calibration, review_flag
from ..report import (DEMO_NOTICE, GivenCrop, box_json, crop_from_json, found_line, kidney_finding, result_notes, rounded,
                      stage1_json)
from ..settings import DEFAULT_SETTINGS, LABEL_BACKGROUND, MethodSettings
from ..uncertainty_files import uncertainty_near_crop, write_uncertainty_files
from ..validation import InputError, check_ct
from .cases import case_name
from .display import MODES, ProgressDisplay

logger = logging.getLogger(__name__)

LABEL_OUTPUTS = (".nii.gz", ".nii", ".nrrd")
SEGMENTATION_OUTPUT = ".seg.nrrd"
LABEL_MEANING = "0 = background, 1 = kidney, 2 = tumor"
BOXES_NOTE = ("Each box is given twice: 'ijk' (inclusive voxel index ranges of the input image, as nibabel "
              "indexes it) and 'ras' (two opposite corners in mm). `segment --box` reads boxes.crop: edit one of "
              "the two and delete the other; when both are present they must agree within a voxel.")
SUPPORT_HELP = ("keep stage 2's kidney regions that stage 1 did not see, in the labels and when refining the crop "
                "(the paper's behaviour; a --box of yours needs no such option: see --box-rule) (default: keep those "
                "stage 1 supports, and of the others only their part beside stage 1's kidneys)")
LOCATE_SUPPORT_HELP = ("refine the crop with every kidney region the stage-2 kidney models find, also those stage 1 "
                       "did not see (the paper's behaviour) (default: those stage 1 supports, and of the others only their "
                       "part beside stage 1's kidneys)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options of every command that runs models: which models, where, how, and the outputs."""
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle folder (default: the shipped demo bundle)")
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda[:N] (default auto: the GPU when there is one, else the CPU)")
    parser.add_argument("--members", default=None,
                        help=f"comma-separated stage-2 models to use, of {', '.join(STAGE2_ORDER)}; KT always runs "
                             "(default: every one in the bundle)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap in [0, 1) (default 0.25)")
    parser.add_argument("--batch-size", type=int, default=2, help="3D patches per batch (default 2)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every network: minutes of compiling first, then faster, for long GPU "
                             "batch runs (default off)")
    parser.add_argument("--force", action="store_true",
                        help="run even if the image does not look like CT (default: refuse it)")
    parser.add_argument("--progress", choices=MODES, default="bar",
                        help="bar (a terminal progress bar), json (JSON lines on stdout, for scripts and Slicer) or "
                             "none (default bar)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse to)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="run a bundle that lacks some of the twelve models, without them (default: refuse it; "
                             "the report records what was missing)")


def add_support_option(parser: argparse.ArgumentParser, help_text: str = SUPPORT_HELP) -> None:
    parser.add_argument("--keep-all-components", action="store_true", help=help_text)
    parser.add_argument("--support-outside", choices=("trim", "drop"), default=DEFAULT_SETTINGS.stage1.support_outside,
                        help="what happens to a kidney region lying mostly outside stage 1's kidneys: trim (keep its "
                             "part within one ×4 block of them) or drop (remove it whole, the rule of bundles evaluated "
                             f"before the trim rule) (default {DEFAULT_SETTINGS.stage1.support_outside})")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that segments (runs stage 2 and labels voxels)."""
    add_run_options(parser)
    parser.add_argument("--min-tumor-pixels", type=int, default=DEFAULT_SETTINGS.fusion.min_tumor_component_pixels,
                        help="in each axial slice, keep tumor (label 2) regions larger than this many pixels; smaller "
                             f"ones become kidney (label 1) (default {DEFAULT_SETTINGS.fusion.min_tumor_component_pixels})")
    parser.add_argument("--strict", action="store_true",
                        help="strict consensus: voxels only KT marks become background (0), not kidney (1) "
                             "(default: kidney)")
    add_support_option(parser)


def add_segment_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("segment", help="segment kidneys and tumors in a CT",
                                 description=f"Segment kidneys and kidney tumors in one CT image. Labels: {LABEL_MEANING}.")
    parser.add_argument("image", type=Path, help="CT image (.nii.gz, .nii or .nrrd), in Hounsfield units")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help=f"label map on the input's grid (.nii.gz, .nii or .nrrd; {LABEL_MEANING}) or a Slicer "
                             "segmentation with segments Kidney and Tumor (.seg.nrrd)")
    parser.add_argument("--box", default=None,
                        help="boxes.json from `locate` (its crop box, 'ijk' or 'ras'), or 'full' for the whole volume "
                             "(default: stage 1 finds the box)")
    parser.add_argument("--box-rule", choices=("authority", "support"), default=DEFAULT_SETTINGS.stage1.user_box_rule,
                        help="with --box: authority (every kidney region stage 2 finds inside your box is kept) or support "
                             "(stage 1's support rule applies inside it too, as in stage 1's own crop) "
                             f"(default {DEFAULT_SETTINGS.stage1.user_box_rule})")
    parser.add_argument("--report", type=Path, default=None,
                        help="write a JSON report: boxes, timings, volumes of kidney (1) and tumor (2), tumor sizes "
                             "(default: none)")
    parser.add_argument("--qa", type=Path, default=None,
                        help="write a QA picture (PNG) of boxes, landmarks, result and uncertainty (default: none)")
    parser.add_argument("--uncertainty", type=Path, default=None,
                        help="write where the ensemble disagrees (.nii.gz, .nii or .nrrd): uint8 round(255 x u), u in "
                             "[0, 1], over the input voxels near the crop (its own affine; 0 elsewhere): 0 = the models "
                             "agree, >= 115 (u >= 0.45) = disputed (default: none)")
    parser.add_argument("--review-mask", type=Path, default=None,
                        help="write the disputed voxels (u >= 0.45) as a 0/1 label map over the same voxels as "
                             "--uncertainty (.nii.gz, .nii or .nrrd; default: none)")
    add_model_options(parser)
    parser.set_defaults(handler=run_segment)


def add_locate_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("locate", help="run stage 1 only: boxes and landmarks",
                                 description="Run stage 1 (localisation and mixed cropping) and write the boxes as JSON "
                                             "for `segment --box`.")
    parser.add_argument("image", type=Path, help="CT image (.nii.gz, .nii or .nrrd), in Hounsfield units")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="boxes JSON: the segmentation, landmark and crop boxes, each as 'ijk' and 'ras', and "
                             "the landmarks")
    parser.add_argument("--qa", type=Path, default=None,
                        help="write a QA picture (PNG) of the boxes and landmarks (default: none)")
    add_run_options(parser)
    add_support_option(parser, LOCATE_SUPPORT_HELP)
    parser.set_defaults(handler=run_locate)


def method_settings(args: argparse.Namespace) -> MethodSettings:
    """The method settings the command-line options select."""
    fusion = DEFAULT_SETTINGS.fusion
    if "strict" in args:  # segmenting commands: `locate` labels nothing
        fusion = dataclasses.replace(fusion, min_tumor_component_pixels=args.min_tumor_pixels,
                                     kt_only_label=LABEL_BACKGROUND if args.strict else fusion.kt_only_label)
    stage1 = dataclasses.replace(DEFAULT_SETTINGS.stage1, support_components=not args.keep_all_components,
                                 support_outside=args.support_outside,
                                 user_box_rule=getattr(args, "box_rule", DEFAULT_SETTINGS.stage1.user_box_rule))
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
    """The bundle named by ``--bundle`` or the shipped default; a bundle lacking some of the
    paper's twelve models is refused (BundleError) unless ``--allow-partial``."""
    bundle = load_bundle(args.bundle or default_bundle_path())
    missing = bundle.missing_roles()
    if missing and not args.allow_partial:
        raise BundleError(f"{bundle.path}: the bundle lacks {len(missing)} of the 12 models ({', '.join(missing)}); "
                          "give --allow-partial to run the ensemble without them")
    if missing:
        logger.warning("bundle '%s' lacks %s: the ensemble runs without them (--allow-partial)", bundle.path.name,
                       ", ".join(missing))
    if bundle.is_demo:
        logger.warning("bundle '%s' is a demo bundle trained on synthetic phantoms: not for clinical use", bundle.manifest.get("name", bundle.path.name))
    return bundle


def refuse_existing(paths: list[Path | None], overwrite: bool, inputs: list[Path | None]) -> None:
    """Fail before any work when an output is an input (or a link to one), names the same file as
    another output, exists and ``--overwrite`` was not given, is a folder, or its folder is
    missing or not writable."""
    refuse_input_as_output(paths, inputs)
    named = [path for path in paths if path is not None]
    for number, path in enumerate(named):
        if any(os.path.abspath(path) == os.path.abspath(other) for other in named[:number]):
            raise ValueError(f"{path}: given for two outputs; give each output its own name")
    for path in named:
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
    """The ``image`` argument, read and checked (:class:`InputError` names the file); with
    ``--force`` its NaN or infinite voxels are air."""
    try:
        return check_ct(read_image(args.image), force=args.force)
    except InputError as error:
        raise InputError(f"{args.image}: {error}") from None


def box_file(option: str | None) -> Path | None:
    """The file ``--box`` names, None for no box or "full"."""
    return None if option is None or option == "full" else Path(option)


def read_box_option(option: str | None) -> Any:
    """``--box`` read before any work: None (run stage 1), "full", or the parsed boxes JSON."""
    path = box_file(option)
    if path is None:
        return option
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: box file not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: box file is not valid JSON ({error})") from None


def crop_from_option(option: Any, frame: WorkingFrame, source: str = "--box") -> GivenCrop | None:
    """The crop of a :func:`read_box_option` result: None (run stage 1), the whole frame ("full"),
    or the crop box of a boxes JSON (ValueError when malformed or outside; a warning naming the
    clipped box when its 'ijk' reaches outside the image)."""
    if option is None:
        return None
    if option == "full":
        full = Box.full(frame.shape)
        return GivenCrop(full, box_json(full, frame))
    try:
        given = crop_from_json(option, frame)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    if given.clipped_from is not None:
        logger.warning("%s: the crop box's 'ijk' %s reaches outside the image (%s voxels): clipped to %s", source,
                       given.clipped_from, " × ".join(map(str, frame.source_shape)), given.echo["ijk"])
    return given


def segmentation_report(result: SegmentationResult, case: PreparedCase, bundle: ModelBundle, seconds: float,
                        image_path: Path, settings: MethodSettings = DEFAULT_SETTINGS,
                        given_crop: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report of one segmentation of the image at ``image_path`` (floats rounded to 3 places):
    its crop (``given_crop``, a given box as the user gave it, or the one stage 1 chose), per kidney
    side what was found (``kidneys``), the warnings a clinician must read (``warnings``), and
    whether the case needs review (``review``) with why (``review_flag``: score, the measures that
    tripped, the bundle's calibration; review_flag.py)."""
    measurements = measure(result.labels, case.image.affine)
    saw = stage1_sides(case.support_down, case.frame, measurements["midline_x_mm"], settings.geometry.downsample_factor)
    sides = side_findings(measurements, saw, settings)
    report: dict[str, Any] = {
        "case": case_name(image_path),
        "image": str(image_path),
        "input": str(case.image.array.shape),
        "bundle": {"name": bundle.manifest.get("name"), "path": str(bundle.path), "demo": bundle.is_demo,
                   "partial": bool(bundle.missing_roles()), "missing_roles": list(bundle.missing_roles())},
        "models": list(result.models),
        "crop": given_crop if given_crop is not None else box_json(result.crop_box, case.frame),
        "stage1": None if result.stage1 is None else stage1_json(result.stage1, case.frame),
        **kidney_finding(sides, result.stage1, None if case.support_down is None else bool(case.support_down.any())),
        "kidneys": sides,
        "warnings": side_warnings(sides, settings),
        "measurements": measurements,
        "seconds": {"total": seconds, **result.timings},
        "peak_rss_mb": peak_rss_mb(),
    }
    if result.review is not None:
        report["uncertainty"] = result.review.to_json()
    flag = review_flag(report, load_calibration(bundle.path), settings)
    report["review"] = flag.pop("review")
    report["review_flag"] = flag
    return rounded(report)


def write_outputs(result: SegmentationResult, case: PreparedCase, output: Path, overwrite: bool,
                  report: dict | None = None, report_path: Path | None = None, qa: Path | None = None,
                  uncertainty: Path | None = None, review_mask: Path | None = None, truth: dict | None = None) -> None:
    """Write the label map / segmentation, and the report, QA picture, uncertainty map and review
    mask (uncertainty_files.py) when asked: all or nothing. ``truth``: the measurements of a true
    label map, shown beside the result's in the QA picture."""
    with contextlib.ExitStack() as stack:
        labels = stack.enter_context(atomic_output(output, overwrite))
        write_result(labels, result.labels, case.image.affine, output)
        if report is not None and report_path is not None:
            report_file = stack.enter_context(atomic_output(report_path, overwrite))
            report_file.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if uncertainty is not None or review_mask is not None:
            near = uncertainty_near_crop(result.uncertainty, result.crop_box, case.frame, case.image.affine)
            write_uncertainty_files(stack, near, result.review.disputed_threshold, overwrite, uncertainty, review_mask)
        if qa is not None:
            from ..qa import save_qa_png

            qa_path = stack.enter_context(atomic_output(qa, overwrite))
            doubt = None if result.uncertainty is None else crop_to_frame(result.uncertainty, result.crop_box, case.frame.shape)
            caption = "" if report is None else "Result: " + found_line(report["measurements"])
            if truth is not None:
                caption += "   |   Truth: " + found_line(truth)
            save_qa_png(qa_path, case.normalized, result.labels_working, result.crop_box, result.stage1, case.frame,
                        title="; ".join(result_notes(report or {})), uncertainty_zyx=doubt, caption=caption)


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


def check_uncertainty_name(path: Path | None, option: str = "--uncertainty") -> None:
    """``--uncertainty`` (or ``option``) must name a volume file (not a segmentation); pynrrd for .nrrd."""
    if path is None:
        return
    if path.name.lower().endswith(SEGMENTATION_OUTPUT) or image_suffix(path) not in LABEL_OUTPUTS:
        raise ValueError(f"{path}: {option} must end with .nii.gz, .nii or .nrrd")
    if image_suffix(path) == ".nrrd" and importlib.util.find_spec("nrrd") is None:
        raise RuntimeError("writing .nrrd needs pynrrd (pip install 'kidneytumorseg[cli]')")


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
    check_uncertainty_name(args.uncertainty)
    check_uncertainty_name(args.review_mask, "--review-mask")
    check_writers(args.output, args.qa)
    refuse_existing([args.output, args.report, args.qa, args.uncertainty, args.review_mask], args.overwrite,
                    [args.image, box_file(args.box)])
    options = inference_options(args)
    box = read_box_option(args.box)
    image = read_checked_image(args)
    crop = crop_from_option(box, working_frame_for(image.array.shape, image.affine), f"--box {args.box}")
    bundle = open_bundle(args)
    cascade = Cascade(bundle, options)
    case = cascade.prepare(image)
    with ProgressDisplay(args.progress, plan(cascade, crop is None), "segment") as display:
        result = cascade.segment(image, None if crop is None else crop.box, display, case=case)
        report = segmentation_report(result, case, bundle, time.perf_counter() - start, args.image, options.settings,
                                     None if crop is None else crop.echo)
        truth = getattr(args, "truth", None)
        truth = None if truth is None else measure(np.asarray(read_image(truth).array, np.uint8), case.image.affine)
        write_outputs(result, case, args.output, args.overwrite, report, args.report, args.qa, args.uncertainty,
                      args.review_mask, truth)
        display.done(output=str(args.output))
    if not report["kidney_found"]:
        advice = ("Check your box with --qa and widen it over the kidneys" if crop is not None
                  else "Check the crop with --qa, or give one with --box")
        logger.warning("%s: no kidney found: the result is empty (%s). %s", args.image, report["stage1_decision"], advice)
    logger.info("wrote %s (%.1f s)", args.output, time.perf_counter() - start)
    say_what_was_found(report, args.image)
    return 0


def say_what_was_found(report: dict[str, Any], image: Path) -> None:
    """The last lines of a segmentation: per kidney what was found, each warning, and whether the
    case needs review and why."""
    for line in per_side_lines(report["kidneys"]):
        logger.info("%s: %s", case_name(image), line)
    for warning in report["warnings"]:
        logger.warning("%s: %s", case_name(image), warning)
    flag = report["review_flag"]
    if report["review"]:
        logger.warning("%s: needs review (score %.2f): %s", case_name(image), flag["score"], "; ".join(flag["tripped"]))
    else:
        logger.info("%s: no review flag (score %.2f, below 1 on every measure)", case_name(image), flag["score"])


def run_locate(args: argparse.Namespace) -> int:
    check_writers(None, args.qa)
    refuse_existing([args.output, args.qa], args.overwrite, [args.image])
    options = inference_options(args)
    image = read_checked_image(args)
    bundle = open_bundle(args)
    cascade = Cascade(bundle, options)
    case = cascade.prepare(image)
    with ProgressDisplay(args.progress, stage1_plan(cascade), "locate") as display:
        stage1 = cascade.locate(case, display)
        with contextlib.ExitStack() as stack:
            output = stack.enter_context(atomic_output(args.output, args.overwrite))
            located = {"note": BOXES_NOTE, **stage1_json(stage1, case.frame)}
            output.write_text(json.dumps(rounded(located), indent=2) + "\n", encoding="utf-8")
            if args.qa is not None:
                import numpy as np

                from ..qa import save_qa_png

                qa_path = stack.enter_context(atomic_output(args.qa, args.overwrite))
                save_qa_png(qa_path, case.normalized, np.zeros(case.frame.shape, np.uint8), stage1.crop_box, stage1, case.frame,
                            title=DEMO_NOTICE if bundle.is_demo else "")
        display.done(output=str(args.output))
    return 0
