"""`kidneytumorseg review` served for real and driven in Debian's headless Chromium (selenium).

One server (a subprocess, listening on every address, so it asks for its token) serves the
module. The token tests need only the 'review' extra; the browser tests also need the system's
``chromium`` and ``chromedriver`` (Debian: apt-get install chromium chromium-driver) and are
skipped, saying so, where they are missing: no browser is downloaded.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from KidneyTumorSegLib.colours import LABEL_COLOURS
from KidneyTumorSegLib.settings import LABEL_KIDNEY, LABEL_TUMOR
from review_folders import make_batch_folder

pytest.importorskip("trame_slicer", reason="the review page needs the 'review' extra (trame-slicer)")

REPO = Path(__file__).resolve().parents[1]
FLAGS = {"case_a": (False, 0.05), "case_b": (True, 0.30), "case_c": (None, None), "case_d": (True, 0.60),
         "case_e": (False, 0.09)}
ORDER = ["case_d", "case_b", "case_e", "case_a", "case_c"]
START_SECONDS = 180


def _browser_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _offscreen_rendering() -> bool:
    """Whether VTK can render off screen here (EGL or OSMesa from Mesa); tried in a child process,
    which a missing library may abort."""
    probe = "import vtk; w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); w.Render()"
    try:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """``(folder, base URL, token)`` of a review server over a fresh batch folder."""
    if not _offscreen_rendering():
        pytest.skip("VTK cannot render off screen here (Debian: apt-get install libegl1 libgl1-mesa-dri)")
    root = tmp_path_factory.mktemp("review")
    folder = make_batch_folder(root, FLAGS)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "KidneyTumorSeg"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    log = open(root / "server.log", "w+", encoding="utf-8")
    server = subprocess.Popen([sys.executable, "-m", "KidneyTumorSegLib.cli.main", "review", str(folder), "--host", "0.0.0.0",
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=root)
    try:
        line = server.stdout.readline()  # printed once the page is built, before it listens
        token = re.search(r"\?token=(\S+)", line)
        assert token, f"no address with a token printed: {line!r}; {(root / 'server.log').read_text()[-2000:]}"
        base = f"http://127.0.0.1:{port}"
        _wait_until_listening(f"{base}/index.html?token={token.group(1)}", server)
        yield folder, base, token.group(1)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_listening(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert server.poll() is None, "the review server stopped"
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {START_SECONDS} s")


def _status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_non_loopback_server_refuses_requests_without_its_token(served) -> None:
    _, base, token = served
    assert _status(f"{base}/index.html") == 403
    assert _status(f"{base}/index.html?token=wrong{token}") == 403
    assert _status(f"{base}/") == 403
    assert _status(f"{base}/index.html?token={token}") == 200


# -- in the browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page(served):
    """The review page open in headless Chromium, with the token."""
    paths = _browser_paths()
    if paths is None:
        pytest.skip("no system Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium (the 'test' extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    try:
        _, base, token = served
        driver.get(f"{base}/index.html?token={token}")
        _wait(driver, lambda: len(_rows(driver)) == len(FLAGS) and len(_views(driver)) == 3)
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, seconds: float = 180.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(lambda _: condition())


def _rows(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#case-list tbody tr")


def _views(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#views img.image-display-area")


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def _view_pixels(driver, index: int = 0) -> np.ndarray | None:
    """The RGB pixels ``[row, column, 3]`` of slice view ``index`` (0 axial, 1 coronal, 2 sagittal);
    None while the view has no picture yet."""
    from PIL import Image

    view = _views(driver)[index]
    if view.size["height"] == 0:
        return None
    return np.asarray(Image.open(io.BytesIO(_views(driver)[index].screenshot_as_png)).convert("RGB"), dtype=np.int16)


def _near(pixels: np.ndarray, rgb: tuple[float, float, float], opacity: float, grey: float, tolerance: float = 30.0) -> np.ndarray:
    """Where ``pixels`` show ``rgb`` blended at ``opacity`` over a ``grey`` (0-255) background."""
    expected = opacity * 255 * np.asarray(rgb) + (1 - opacity) * grey
    return np.linalg.norm(pixels - expected, axis=-1) < tolerance


def test_the_list_shows_flagged_cases_first_and_resumes_at_the_first(page) -> None:
    assert [row.get_attribute("data-case") for row in _rows(page)] == ORDER
    assert "flagged (0.60)" in _rows(page)[0].text and "0.0 / 12.3" in _rows(page)[0].text
    assert _text(page, "reviewed-count") == "0 of 5 reviewed"
    assert _text(page, "case-name") == "case_d"
    assert "loadVolume(" in _text(page, "slicer-command")


def test_kidney_and_tumor_are_drawn_in_their_colours_where_the_labels_are(page) -> None:
    pixels = _wait(page, lambda: _coloured(_view_pixels(page)))
    kidney, tumor = pixels
    rows, columns = np.nonzero(kidney)
    tumor_rows, tumor_columns = np.nonzero(tumor)
    # radiological view: the patient's right (the kidney block) on the screen's left, the tumor block on its right
    assert columns.mean() < tumor_columns.mean()
    assert abs(rows.mean() - tumor_rows.mean()) < 0.1 * page.find_element("id", "views").size["height"]


def _coloured(pixels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Kidney- and tumor-coloured pixels of a view (label layer at 0.6 over the CT's mid grey),
    when both are there in quantity."""
    if pixels is None:
        return None
    grey = (40 - (40 - 200)) / 400 * 255  # 40 HU in the abdomen window (400 / 40)
    kidney = _near(pixels, LABEL_COLOURS[LABEL_KIDNEY].rgb, 0.6, grey)
    tumor = _near(pixels, LABEL_COLOURS[LABEL_TUMOR].rgb, 0.6, grey)
    return (kidney, tumor) if kidney.sum() > 200 and tumor.sum() > 200 else None


def test_the_uncertainty_overlay_toggles(page) -> None:
    from selenium.webdriver.common.by import By

    before = _wait(page, lambda: _labelled_view(page))[0]
    page.execute_script("arguments[0].click()", page.find_element(By.ID, "uncertainty-toggle"))  # the switch's input
    # the uncertain block (a third of the slice) is now drawn over the CT
    _wait(page, lambda: _changed(before, _view_pixels(page)) > 0.05)
    page.execute_script("document.activeElement.blur()")
    page.find_element(By.TAG_NAME, "body").send_keys("u")  # the key toggles it back
    _wait(page, lambda: _changed(before, _view_pixels(page)) < 0.01)


def _labelled_view(driver) -> tuple[np.ndarray] | None:
    """The axial view's pixels, once the labels are drawn."""
    pixels = _view_pixels(driver)
    return (pixels,) if _coloured(pixels) else None


def _changed(before: np.ndarray, after: np.ndarray | None) -> float:
    """The fraction of pixels that changed (1 while the view has no picture)."""
    if after is None or before.shape != after.shape:
        return 1.0
    return float((np.abs(before - after).sum(axis=-1) > 60).mean())


def test_decisions_are_saved_and_the_later_one_wins(page, served) -> None:
    from selenium.webdriver.common.by import By

    folder = served[0]
    page.find_element(By.CSS_SELECTOR, '#case-list tr[data-case="case_b"]').click()  # a flagged case
    _wait(page, lambda: _text(page, "case-name") == "case_b")
    note = page.find_element(By.CSS_SELECTOR, "#note")
    note.send_keys("left kidney fine")
    page.find_element(By.ID, "accept").click()
    _wait(page, lambda: (folder / "case_b.review.json").exists())
    saved = json.loads((folder / "case_b.review.json").read_text())
    assert saved["status"] == "accepted" and saved["note"] == "left kidney fine"
    page.execute_script("document.activeElement.blur()")
    page.find_element(By.TAG_NAME, "body").send_keys("r")  # reject by key: replaces the decision
    _wait(page, lambda: json.loads((folder / "case_b.review.json").read_text())["status"] == "rejected")
    # the file is written before the page hears back: wait for the new message, not for any message
    _wait(page, lambda: "replaced the decision 'accepted'" in (_text(page, "message") or ""))
    _wait(page, lambda: _text(page, "reviewed-count") == "1 of 5 reviewed")
    assert "case_b,rejected,left kidney fine," in (folder / "reviews.csv").read_text()
    assert page.find_element(By.CSS_SELECTOR, '#case-list tr[data-case="case_b"]').get_attribute("data-status") == "rejected"
    page.find_element(By.TAG_NAME, "body").send_keys("n")  # next case by key
    _wait(page, lambda: _text(page, "case-name") == "case_e")
