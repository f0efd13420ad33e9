"""`review`: a web page over a `batch` output folder to accept, reject or send each case for
correction, flagged cases first (review/ holds the logic, review/app.py the page)."""
from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from ..review.access import is_loopback, plan_access
from ..review.cases import read_cases

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8080

DESCRIPTION = """\
Review the results of `batch` in a web browser: the case list (cases flagged for review first,
volumes per side, Dice where a truth exists, status, how many are reviewed) beside axial, coronal
and sagittal views of the CT with the labels, the crop box and the uncertainty (batch
--uncertainty). Each decision (accepted, needs correction, rejected; a note) is saved to
<case>.review.json beside the case's report and reviews.csv is rebuilt; label maps are never
changed. Restarting resumes at the first case without a decision.

The page listens on 127.0.0.1 (this machine only) unless --host; any other host requires the
random token of the address printed at start-up. Over SSH: ssh -L 8080:127.0.0.1:8080 server,
then open http://127.0.0.1:8080/index.html on your own machine. Needs the 'review' extra
(pip install 'kidneytumorseg[review]')."""


def add_review_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("review", help="review a batch output folder in a web browser", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path, help="the output folder of `batch` (<case>.json, <case>.nii.gz)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; any other needs the printed token)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of the CT images, when the paths in the reports no longer lead to them "
                             "(default: each report's image path)")
    parser.add_argument("--truth", type=Path, default=None,
                        help="folder of ground-truth label maps (files or KiTS19 case folders) for Dice "
                             "(default: segmentation.nii.gz beside a KiTS19 imaging.nii.gz)")
    parser.set_defaults(handler=run_review)


def run_review(args: argparse.Namespace) -> int:
    folder = args.output_dir
    cases = read_cases(folder, args.images, args.truth)
    if not cases:
        raise ValueError(f"{folder}: no finished cases (<case>.json with <case>.nii.gz) of a batch run")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{folder}: folder is not writable (decisions are saved there)")
    access = plan_access(args.host, args.port)
    try:
        from ..review.app import ReviewApp
    except ImportError as error:
        raise RuntimeError(f"review needs the 'review' extra (pip install 'kidneytumorseg[review]'): {error}") from error
    missing = sum(case.image is None for case in cases)
    if missing:
        logger.warning("%d of %d cases have no CT at the path in their report: labels only (--images DIR finds them)",
                       missing, len(cases))
    for name in ("trame", "trame_client", "trame_server", "trame_slicer", "wslink", "aiohttp"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    os.environ["TRAME_ARGS"] = "--server"  # trame reads no other arguments: ours are parsed above; never open a browser
    app = ReviewApp(folder, cases, access)
    shown = "127.0.0.1" if is_loopback(access.host) else socket.gethostname() if access.host in ("0.0.0.0", "::") else access.host
    print(f"kidneytumorseg review: {len(cases)} cases of {folder}: open {access.url(shown)}", flush=True)  # the token's only showing
    app.server.start(host=access.host, port=access.port, open_browser=False, show_connection_info=False)
    return 0
