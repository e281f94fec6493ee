"""The live page in a real headless browser while ``reduxd watch`` reduces a night.

Debian's ``chromium`` and ``chromium-driver`` (installed by ``.ci/run``), driven
by Selenium; no browser is downloaded. The daemon is a real subprocess watching
a folder into which a simulated night's frames are copied one per ``CADENCE``
seconds. The page is opened once, after the first lights; the test asserts the
number of light-curve points and the latest light's name grow without a reload,
that a ``<script>`` OBJECT is shown as text, and that the browser reports no
Content-Security-Policy violation. Screenshots go to ``REDUXD_SCREENSHOTS`` (or
the test's tmp folder).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from nights import CAMERA, stage_night
from test_web import EVIL, copy_frame

from reduxd.simulate import NightSpec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
    ),
]
CADENCE = 1.0  # seconds between frames copied into the watched folder
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1900",
)


def browser(profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(DRIVER))


def write_config(tmp, root, target):
    path = tmp / "config.toml"
    path.write_text(
        f"""
[paths]
data = ["{root}"]
outdir = "{tmp / "out"}"
{CAMERA}
[photometry]
radius = 8.0
[lightcurve]
target = [{target[0]:.2f}, {target[1]:.2f}]
[output]
stack = false
reduced = false
[watch]
observer = "inotify"
settle_seconds = 0.5
set_timeout_seconds = 1.0
[web]
listen = "127.0.0.1:0"
"""
    )
    return path


def page_url(out_path, proc, timeout=60):
    """The page's address from the daemon's ``web_started`` log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in out_path.read_text().splitlines():
            if '"web_started"' in line:
                return json.loads(line)["url"]
        assert proc.poll() is None, out_path.read_text()[-3000:]
        time.sleep(0.1)
    pytest.fail("the daemon did not start its web server\n" + out_path.read_text()[-3000:])


def feed(stage, root, rels, stop):
    """Copy frames into the watched tree one per CADENCE seconds (the camera)."""
    for rel in rels:
        if stop.is_set():
            return
        name = None if not isinstance(rel, tuple) else rel[1]
        obj = None if not isinstance(rel, tuple) else EVIL
        copy_frame(stage, root, rel[0] if isinstance(rel, tuple) else rel, obj=obj, name=name)
        time.sleep(CADENCE)


def counts(driver):
    """(light-curve points of all fields, latest light's name)."""
    points = driver.execute_script(
        "return [...document.querySelectorAll('#curve-list .curve')]"
        ".reduce((n, e) => n + Number(e.dataset.points || 0), 0);"
    )
    return points, driver.find_element("id", "latest-name").text


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_page_follows_the_night_live(tmp_path):
    shots = Path(os.environ.get("REDUXD_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    spec = NightSpec.small(n_lights=8, lights_per_run=4)
    stage, rels, truth = stage_night(tmp_path, spec=spec)
    root = tmp_path / "root"
    root.mkdir()
    lights = [r for r in rels if not r.startswith("calibration/")]
    calibration = [r for r in rels if r.startswith("calibration/")]
    evil = (lights[3], "evil/" + Path(lights[3]).name)
    sequence = [*lights[:2], *lights[2:8], evil, *lights[8:]]
    for rel in calibration:  # the calibration was taken before the page is opened
        copy_frame(stage, root, rel)
    star = truth["stars"][0]
    config = write_config(tmp_path, root, (star["x"], star["y"]))
    out_path = tmp_path / "daemon.out"
    with open(out_path, "wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reduxd", "watch", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(stage, root, sequence, stop), daemon=True)
    driver = None
    try:
        url = page_url(out_path, daemon)
        feeder.start()
        driver = browser(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
        driver.get(url)
        driver.execute_script("window.__notReloaded = true;")
        first = wait_until(
            lambda: (c := counts(driver))[0] >= 1 and c, 120, "the first light-curve point"
        )
        finder = driver.find_element("id", "finder")
        js = "return arguments[0].complete && arguments[0].naturalWidth"

        def chart_loaded():
            return driver.execute_script(js, finder) > 100

        wait_until(chart_loaded, 30, "the first finder chart")
        driver.save_screenshot(str(shots / "page-early.png"))
        total = len(lights) + 1
        last_name = lights[-1]
        final = wait_until(
            lambda: (c := counts(driver))[1] == last_name and c[0] >= len(lights) and c,
            60 + 10 * total,
            "every light on the page",
        )
        time.sleep(1.0)
        driver.save_screenshot(str(shots / "page-late.png"))
        assert driver.execute_script("return window.__notReloaded === true;")  # no reload
        assert final[0] > first[0] and final[1] != first[1], (first, final)
        assert driver.find_element("id", "conn").text == "live"
        # the <script> OBJECT is text on the page, not markup
        labels = [e.text for e in driver.find_elements("css selector", "#curve-list h3")]
        assert any(EVIL in label for label in labels), labels
        assert len(driver.find_elements("tag name", "script")) == 2  # uPlot and app.js only
        # previous/next navigation
        driver.find_element("id", "prev").click()
        assert driver.find_element("id", "latest-name").text != last_name
        assert not driver.find_element("id", "follow").is_selected()
        driver.find_element("id", "next").click()
        assert driver.find_element("id", "latest-name").text == last_name
        wait_until(chart_loaded, 30, "the finder chart of the newest light")
        assert driver.find_elements("css selector", "#marks .mark.target")
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not [m for m in severe if "Content Security Policy" in m], severe
        assert not severe, severe
    finally:
        stop.set()
        if driver is not None:
            driver.quit()
        daemon.terminate()
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, out_path.read_text()[-3000:]
