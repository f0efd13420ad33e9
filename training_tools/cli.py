"""``kidneytumorseg-train``: the training toolkit's command line, one sub-command per step.

Each sub-command is a ``_cmd_<name>(args) -> int`` function registered in ``build_parser``;
add new steps the same way.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from training_tools.cli_review import add_review_commands
from training_tools.cli_training import add_training_commands
from training_tools.phantom_style import DEFAULT_STYLE, HEALTHY_SHARE, STYLES
from training_tools.phantom_fov import FIELDS_OF_VIEW

logger = logging.getLogger(__name__)


def _add_phantoms(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "phantoms",
        help="build phantom CTs around real KiTS19 label maps (KiTS19 layout out)",
        description="Turn KiTS19 label maps (case_XXXXX.nii.gz files or case_XXXXX/segmentation.nii.gz "
        "folders) into case_XXXXX/imaging.nii.gz (int16 HU, the mask's grid) + segmentation.nii.gz.",
    )
    parser.add_argument("--masks", type=Path, required=True, help="folder of KiTS19 label maps")
    parser.add_argument("--out", type=Path, required=True, help="output folder (KiTS19 layout)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; each case's stream also depends on its name")
    parser.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    parser.add_argument("--cases", type=int, default=None, metavar="N", help="only the first N cases (sorted by name)")
    parser.add_argument("--style", default=DEFAULT_STYLE, choices=sorted(STYLES),
                        help=f"generator style (default {DEFAULT_STYLE}: appearance drawn well beyond real CT; "
                        "v1: the first generator's KiTS19-like look)")
    parser.add_argument("--field-of-view", default="mask", choices=FIELDS_OF_VIEW,
                        help="mask (default): the mask's own grid; drawn: a training phantom's field of view "
                        "(more body, a window that may cut, miss or be short); short: always a 45-150 mm window "
                        "through the kidneys, as a scan of a few centimetres")
    parser.add_argument("--no-tumor", action="store_true",
                        help="render each mask's tumor as kidney and label it kidney: tumor-free cases with the same "
                        "kidneys, to measure how much healthy kidney a bundle calls tumor")
    parser.set_defaults(run=_cmd_phantoms)


def _chosen_masks(args: argparse.Namespace) -> list[Path]:
    """The first ``--cases`` label maps of ``--masks`` (all without it); an error is logged when none."""
    from training_tools.phantoms import find_masks

    masks = find_masks(args.masks)[: args.cases]
    if not masks:
        logger.error("no case_*.nii.gz or case_*/segmentation.nii.gz under %s", args.masks)
    return masks


def _cmd_phantoms(args: argparse.Namespace) -> int:
    from training_tools.phantom_style import style_named
    from training_tools.phantoms import case_name, make_phantoms

    masks = _chosen_masks(args)
    if not masks:
        return 1
    existing = [m for m in masks if (args.out / case_name(m)).exists()]
    if existing and not args.overwrite:
        names = ", ".join(case_name(m) for m in existing[:5])
        logger.error("%d case folder(s) exist in %s (%s ...); use --overwrite", len(existing), args.out, names)
        return 1
    make_phantoms(masks, args.out, seed=args.seed, progress=True, style=style_named(args.style),
                  field_of_view=args.field_of_view, tumor=not args.no_tumor)
    logger.info("wrote %d phantom case(s) to %s", len(masks), args.out)
    return 0


def _add_phantom_cache(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "phantom-cache",
        help="paint training phantoms straight into a training cache (several per mask, some healthy)",
        description="Draw VARIANTS training phantoms of every KiTS19 label map (each its own appearance and field of "
        "view) on the working frame and cache them with every training target, ready for 'train --cache'. Cached "
        "phantoms are skipped, so a cache grows by re-running with more --variants and the same seed.",
    )
    parser.add_argument("--masks", type=Path, required=True, help="folder of KiTS19 label maps")
    parser.add_argument("--out", type=Path, required=True, help="cache folder")
    parser.add_argument("--variants", type=int, default=1, help="phantoms per mask (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; each phantom's stream also depends on its id")
    parser.add_argument("--style", default=DEFAULT_STYLE, choices=sorted(STYLES),
                        help=f"generator style (default {DEFAULT_STYLE})")
    parser.add_argument("--healthy-share", type=float, default=HEALTHY_SHARE,
                        help=f"share of phantoms whose tumor is rendered and labelled as kidney "
                        f"(default {HEALTHY_SHARE})")
    parser.add_argument("--moved-share", type=float, default=0.0,
                        help="share of the other phantoms whose tumor is another mask's, moved to a random place of "
                        "the kidney surface, so that a tumor's place tells nothing (default 0: each mask's own tumor)")
    parser.add_argument("--cases", type=int, default=None, metavar="N", help="only the first N masks (sorted by name)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default min(4, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    parser.set_defaults(run=_cmd_phantom_cache)


def _cmd_phantom_cache(args: argparse.Namespace) -> int:
    from training_tools.phantom_cache import PhantomDraw, cache_phantoms

    masks = _chosen_masks(args)
    if not masks:
        return 1
    draw = PhantomDraw(args.seed, args.style, args.healthy_share, args.moved_share)
    cached = cache_phantoms(masks, args.out, draw, args.variants, args.workers, progress=not args.no_progress)
    wanted = len(masks) * args.variants
    logger.info("%d of %d phantoms cached in %s", len(cached), wanted, args.out)
    return 0 if cached else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kidneytumorseg-train", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_phantoms(commands)
    _add_phantom_cache(commands)
    add_training_commands(commands)
    add_review_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; an error is one line on stderr and exit code 1 (``-v``: the traceback)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.run(args))
    except Exception as error:
        if args.verbose:
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"kidneytumorseg-train: error: {message} (-v shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
