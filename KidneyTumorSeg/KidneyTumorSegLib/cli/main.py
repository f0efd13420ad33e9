"""Entry point of `kidneytumorseg`: segment, locate, batch, summarize, evaluate, review, demo.

Every failure a user can cause ends with one line on stderr and a non-zero exit code;
``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from .batch import add_batch_parser
from .demo import add_demo_parser
from .evaluate import add_evaluate_parser
from .exits import EXIT_FAILURE, EXIT_INTERRUPTED
from .review import add_review_parser
from .segment import LABEL_MEANING, add_locate_parser, add_segment_parser
from .summary import add_summarize_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kidneytumorseg", description="Kidney and kidney-tumor segmentation in abdominal "
                                     f"CT (KiTS19 cascaded fusion FCNs). Label maps hold {LABEL_MEANING}.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs (default off)")
    parser.add_argument("--quiet", action="store_true", help="log only warnings and errors (default: progress too)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_segment_parser(commands)
    add_locate_parser(commands)
    add_batch_parser(commands)
    add_summarize_parser(commands)
    add_evaluate_parser(commands)
    add_review_parser(commands)
    add_demo_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("kidneytumorseg: interrupted; unfinished outputs were discarded", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.debug:
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"kidneytumorseg: error: {message}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
