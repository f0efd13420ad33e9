"""How fast `kidneytumorseg review` shows a case, as JSON: the first view of a case nobody has
read yet, and the move to the next case once the page has read it in the background.

Writes ``--cases`` synthetic batch results of ``--shape`` voxels (CT int16 with noise, label map,
uncertainty map, report; the slices first, as ``600,512,512``) into a temporary folder, starts
the review server on it and drives the page in headless Chromium (the system's chromium and
chromedriver, through selenium). For each move it records the seconds from the click or key to
the three views showing the new case in the browser, and the server's own seconds to read and
show it ("read and shown in" on the page): moving to the next case (read ahead while the one
before was shown) through every case, then opening three cases the page no longer keeps.

    python benchmarks/review_benchmark.py --shape 600,512,512 --out benchmarks/results/cpu_review_600x512x512.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "KidneyTumorSeg"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cascade_benchmark import emit_json  # noqa: E402
from KidneyTumorSegLib.imageio import write_image, write_label_map  # noqa: E402

SPACING_MM = (0.78, 0.78, 1.0)  # i, j, k


def make_folder(root: Path, shape_zyx: tuple[int, int, int], cases: int) -> Path:
    """``root/out`` with ``cases`` batch results of one synthetic abdomen ``[z, y, x]`` = ``shape_zyx``."""
    depth, rows, columns = shape_zyx
    shape = (columns, rows, depth)  # [i, j, k] as nibabel indexes it
    affine = np.diag([-SPACING_MM[0], -SPACING_MM[1], SPACING_MM[2], 1.0])
    i, j = np.ogrid[:columns, :rows]
    body = ((i - columns / 2) / (0.45 * columns)) ** 2 + ((j - rows / 2) / (0.35 * rows)) ** 2 < 1
    kidneys = [((i - c) / (0.08 * columns)) ** 2 + ((j - 0.6 * rows) / (0.09 * rows)) ** 2 < 1 for c in (0.3 * columns, 0.7 * columns)]
    rng = np.random.default_rng(0)
    ct = np.where(body[..., None], 40, -1000).astype(np.int16) + rng.integers(-20, 20, shape, dtype=np.int16)
    labels = np.zeros(shape, np.uint8)
    extent = slice(int(0.4 * depth), int(0.6 * depth))
    for kidney in kidneys:
        labels[..., extent][kidney] = 1
    labels[: columns // 3, :, extent][kidneys[0][: columns // 3] & (j > 0.6 * rows)] = 2
    uncertainty = np.zeros(shape, np.float32)
    uncertainty[..., extent][kidneys[1]] = 0.7
    out = root / "out"
    out.mkdir()
    for number in range(cases):
        case = f"case_{number:03d}"
        image = write_image(root / f"{case}.nii.gz", ct, affine)
        write_label_map(out / f"{case}.nii.gz", labels, affine)
        write_image(out / f"{case}.uncertainty.nii.gz", uncertainty, affine)
        volume_ml = float(np.prod(SPACING_MM)) / 1000 * int((labels == 1).sum()) / 2
        report = {"case": case, "image": str(image), "review": number % 2 == 0,
                  "uncertainty": {"score": 0.5 - 0.01 * number, "review": number % 2 == 0},
                  "measurements": {"kidney_ml": {"left": volume_ml, "right": volume_ml, "total": 2 * volume_ml},
                                   "tumor_ml": {"left": 0.0, "right": 1.0, "total": 1.0}}}
        (out / f"{case}.json").write_text(json.dumps(report), encoding="utf-8")
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: Path, port: int) -> tuple[subprocess.Popen, float]:
    """The review server on ``folder`` and the seconds until it answered (it reads the first case before listening)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "KidneyTumorSeg"), str(REPOSITORY)])}
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "KidneyTumorSegLib.cli.main", "--quiet", "review", str(folder),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    server.stdout.readline()
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5).read()
            return server, time.perf_counter() - start
        except OSError:
            if server.poll() is not None:
                raise RuntimeError("the review server stopped")
            time.sleep(0.2)


def open_browser(url: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (browser and driver):
        raise SystemExit("needs the system's chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(argument)
    page = webdriver.Chrome(service=Service(driver), options=options)
    page.get(url)
    return page


def timed_move(page, action, case: str) -> dict:
    """Seconds from ``action()`` until ``case`` is named and all three views show a new picture."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def sources() -> list[str]:
        return [view.get_attribute("src") for view in page.find_elements(By.CSS_SELECTOR, "#views img.image-display-area")]

    before = sources()
    start = time.perf_counter()
    action()
    WebDriverWait(page, 120, poll_frequency=0.02).until(
        lambda _: page.find_element(By.ID, "case-name").text == case
        and all(now != then for now, then in zip(sources(), before)) and len(sources()) == 3)
    seconds = time.perf_counter() - start
    shown = re.search(r"([0-9.]+) s", page.find_element(By.ID, "shown-seconds").text)
    return {"case": case, "seconds_in_browser": round(seconds, 3), "seconds_server": float(shown.group(1)) if shown else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="600,512,512", help="z,y,x voxels of each case (default 600,512,512)")
    parser.add_argument("--cases", type=int, default=6, help="how many cases, at least 5 (default 6)")
    parser.add_argument("--settle", type=float, default=12.0,
                        help="seconds to look at each case, in which the next one is read ahead (default 12)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.cases < 5:
        parser.error("--cases must be at least 5 (the page keeps 3 cases read)")
    shape = tuple(int(n) for n in args.shape.split(","))
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as temporary:
        begin = time.perf_counter()
        folder = make_folder(Path(temporary), shape, args.cases)
        written = time.perf_counter() - begin
        port = free_port()
        server, start_seconds = start_server(folder, port)
        try:
            page = open_browser(f"http://127.0.0.1:{port}/index.html")
            try:
                rows = lambda: page.find_elements(By.CSS_SELECTOR, "#case-list tbody tr")  # noqa: E731
                WebDriverWait(page, 120).until(lambda _: len(rows()) == args.cases)
                names = [row.get_attribute("data-case") for row in rows()]
                body = page.find_element(By.TAG_NAME, "body")
                time.sleep(args.settle)
                moves = []
                for name in names[1:]:  # each read ahead while the one before was shown
                    moves.append(timed_move(page, lambda: body.send_keys("n"), name))
                    time.sleep(args.settle)
                cold = []
                for name in (names[0], names[3], names[0]):  # none of these is among the 3 cases kept
                    cold.append(timed_move(page, lambda: page.find_element(By.CSS_SELECTOR, f'tr[data-case="{name}"]').click(),
                                           name))
                    time.sleep(args.settle)
            finally:
                page.quit()
        finally:
            server.terminate()
            server.wait(timeout=30)
    emit_json({
        "benchmark": "review", "shape_zyx": list(shape), "cases": args.cases, "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2), "machine": platform.machine(), "python": platform.python_version(),
        "seconds_writing_cases": round(written, 1), "seconds_server_start_with_first_case": round(start_seconds, 3),
        "first_view_not_read_ahead": {"median_seconds_in_browser": _median(cold, "seconds_in_browser"),
                                      "median_seconds_server": _median(cold, "seconds_server"), "moves": cold},
        "next_case_read_ahead": {"median_seconds_in_browser": _median(moves, "seconds_in_browser"),
                                 "median_seconds_server": _median(moves, "seconds_server"), "moves": moves},
    }, args.out)
    return 0


def _median(moves: list[dict], key: str) -> float | None:
    values = [move[key] for move in moves if move[key] is not None]
    return round(float(np.median(values)), 3) if values else None


if __name__ == "__main__":
    sys.exit(main())
