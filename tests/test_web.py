"""The live web page's server: a real uvicorn on a free loopback port, a real HTTP client.

One small simulated night is reduced once by ``reduxd reduce`` (a real
subprocess writing a real ledger); the server reads it read-only. Covered:
every endpoint, the security headers, the token rules (``reduxd serve`` as a
subprocess on a non-loopback address), path-traversal attempts, a ``<script>``
OBJECT staying data, and the event stream delivering a light reduced by another
process while a client listens.
"""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from astropy.io import fits
from nights import CAMERA, stage_night

from reduxd import lock
from reduxd.config import load_config
from reduxd.errors import ConfigError
from reduxd.web.server import WebServer, check_listen

EVIL = "<script>alert('x')</script>"
SECRET = "SECRET-OUTSIDE-THE-OUTPUT-FOLDER"
N_FIRST = 6  # lights reduced before the server starts


def copy_frame(stage, root, rel, *, obj=None, name=None):
    """Copy a staged frame into the watched tree (optionally with another OBJECT card).

    The copy's mtime is now, as for a frame the camera just wrote (latency counts from it).
    """
    dest = root / (name or rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if obj is None:
        shutil.copyfile(stage / rel, dest)
    else:
        with fits.open(stage / rel) as hdul:
            hdul[0].header["OBJECT"] = obj
            hdul.writeto(dest)
    return dest


def reduce(config):
    out = subprocess.run(
        [sys.executable, "-m", "reduxd", "reduce", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A reduced night: ``(tmp, config path, stage, light relpaths not yet reduced)``."""
    tmp = tmp_path_factory.mktemp("web")
    stage, rels, truth = stage_night(tmp)
    root = tmp / "root"
    lights = [r for r in rels if not r.startswith("calibration/")]
    for rel in [r for r in rels if r.startswith("calibration/")] + lights[:N_FIRST]:
        copy_frame(stage, root, rel)
    copy_frame(stage, root, lights[0], obj=EVIL, name="evil/" + Path(lights[0]).name)
    star = truth["stars"][0]
    config = tmp / "config.toml"
    config.write_text(
        f"""
[paths]
data = ["{root}"]
outdir = "{tmp / "out"}"
{CAMERA}
[photometry]
radius = 8.0
[lightcurve]
target = [{star["x"]:.2f}, {star["y"]:.2f}]
[output]
stack = false
reduced = false
[web]
listen = "127.0.0.1:0"
"""
    )
    reduce(config)
    (tmp / "secret.csv").write_text(SECRET)
    (tmp / "out" / "evil.csv").symlink_to(tmp / "secret.csv")
    (tmp / "out" / "outside").symlink_to(tmp)
    return tmp, config, stage, lights[N_FIRST:]


@pytest.fixture(scope="module")
def server(night):
    web = WebServer(load_config(night[1]), listen="127.0.0.1:0", interval=0.2).start()
    assert web.live.wait_ready()
    deadline = time.monotonic() + 30
    while len(web.live.snapshot()["lights"]) < N_FIRST + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield web
    finally:
        web.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=30) as c:
        yield c


def raw_get(server, path):
    """GET ``path`` exactly as written (no client-side normalisation of ``..`` or ``%``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- the page and its assets ----------------------------------------------------------


def test_page_has_no_inline_code_and_strict_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all("src=" in s for s in scripts)  # no inline script
    assert "<style" not in html and " style=" not in html and " on" not in html.split("<body")[1]
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    for asset in ("app.js", "style.css", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"):
        a = client.get(f"/static/{asset}")
        assert a.status_code == 200 and len(a.content) > 100, asset
        assert a.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/nothing.js").status_code == 404
    assert client.get("/favicon.ico").status_code == 204


def test_app_js_builds_the_dom_with_text_only(client):
    js = client.get("/static/app.js").text
    assert "innerHTML" not in js and "outerHTML" not in js and "insertAdjacentHTML" not in js
    assert "eval(" not in js and "document.write" not in js


# -- data -------------------------------------------------------------------------------


def test_snapshot_lights_curves_and_state(client, night):
    r = client.get("/api/snapshot")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.headers["cache-control"] == "no-store"
    snap = r.json()
    lights = snap["lights"]
    assert len(lights) == N_FIRST + 1
    assert all(light["quicklook"] == f"/quicklook/{light['id']}" for light in lights)
    light = next(x for x in lights if x["object"] == "pg2213")
    assert light["filter"] in ("V", "R") and light["exptime"] == 15.0
    assert light["n_stars"] > 5 and 2.0 < light["fwhm"] < 6.0 and light["sky"] > 0
    assert light["calib"] and light["masters"] and light["latency"] is not None
    assert light["marks"]["target"] is not None and light["marks"]["comparisons"]
    assert all(0 <= v <= 1 for v in light["marks"]["target"])
    state = snap["state"]
    assert state["counts"]["done"] >= N_FIRST + 1 and state["service"] is None
    assert {m["kind"] for m in state["masters"]} >= {"bias", "dark", "flat"}
    assert sum(m["lights"] for m in state["masters"] if m["kind"] == "flat") == N_FIRST + 1
    fields = {f["label"]: f for f in snap["fields"]}
    with_target = [f for label, f in fields.items() if label.startswith("pg2213")]
    assert sum(len(f["points"]) for f in with_target) == N_FIRST
    for f in with_target:
        assert f["meta"]["target_id"] is not None and f["meta"]["comparison_ids"]
        for p in f["points"]:
            assert p["dmag"] is not None and p["err"] > 0 and p["ens"] is not None
            assert p["t"] == pytest.approx((p["mjd"] - 40587.0) * 86400.0, abs=0.01)


def test_lights_after_sends_only_newer(client):
    lights = client.get("/api/lights").json()["lights"]
    last = lights[-2]["reduction"]
    newer = client.get(f"/api/lights?after={last}").json()["lights"]
    assert [x["id"] for x in newer] == [lights[-1]["id"]]
    assert client.get("/api/lights?after=999999").json()["lights"] == []


def test_quicklook_by_ledger_id(client):
    light = client.get("/api/snapshot").json()["lights"][0]
    r = client.get(f"/quicklook/{light['id']}")
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    assert r.headers["content-type"] == "image/png"
    assert client.get("/quicklook/999999").status_code == 404
    assert client.get("/quicklook/abc").status_code == 404


def test_downloads(client, night):
    outdir = night[0] / "out"
    files = client.get("/api/files").json()["files"]
    names = {f["name"] for f in files}
    assert {"photometry.csv", "photometry.ecsv"} <= names
    assert any(n.startswith("lightcurve_pg2213") and n.endswith(".csv") for n in names)
    assert "evil.csv" not in names  # a symlink out of the folder is not offered
    r = client.get("/files/photometry.csv")
    assert r.status_code == 200 and r.content == (outdir / "photometry.csv").read_bytes()
    assert "attachment" in r.headers["content-disposition"]
    assert r.headers["cache-control"] == "no-store"
    quicklook = next((outdir / "quicklook").rglob("*.png")).relative_to(outdir).as_posix()
    assert client.get(f"/files/{quicklook}").status_code == 200
    assert client.get("/files/reduxd.sqlite").status_code == 404  # not a product


@pytest.mark.parametrize(
    "path",
    [
        "/files/../config.toml",
        "/files/../secret.csv",
        "/files/%2e%2e/secret.csv",
        "/files/%2E%2E%2Fsecret.csv",
        "/files/..%2fsecret.csv",
        "/files/%252e%252e/secret.csv",
        "/files/..%5csecret.csv",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        "/files/reduced/../../secret.csv",
        "/files/./photometry/../../secret.csv",
        "/files/evil.csv",
        "/files/outside/secret.csv",
        "/files/photometry.csv%00.png",
        "/quicklook/..%2F..%2Fsecret.csv",
        "/static/../../../secret.csv",
        "/static/%2e%2e/app.py",
    ],
)
def test_traversal_is_refused(server, path):
    status, body = raw_get(server, path)
    assert status in (400, 404), (path, status)
    assert SECRET.encode() not in body and b"[paths]" not in body and b"root:" not in body


def test_header_values_are_data_not_markup(client):
    """A ``<script>`` OBJECT is sent as JSON data (the page puts it in with textContent)."""
    snap = client.get("/api/snapshot")
    assert snap.headers["x-content-type-options"] == "nosniff"
    assert snap.headers["content-type"].startswith("application/json")
    evil = [x for x in snap.json()["lights"] if x["object"] == EVIL]
    assert len(evil) == 1 and evil[0]["file"].startswith("evil/")
    assert EVIL in [f["label"].rsplit(" ", 1)[0] for f in snap.json()["fields"]]
    assert "<script>alert" not in client.get("/").text


# -- the event stream -------------------------------------------------------------------


def test_event_stream_delivers_a_new_light(server, night, client):
    """Another process reduces a light; the stream sends its row and the new curve points."""
    tmp, config, stage, later = night
    seq = client.get("/api/snapshot").json()["seq"]
    got, done = [], threading.Event()

    def listen():
        with httpx.Client(timeout=httpx.Timeout(120, connect=10)) as c:
            url = f"{server.url}events?after={seq}"
            with c.stream("GET", url) as r:
                got.append(("headers", dict(r.headers)))
                event = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        got.append((event, json.loads(line[6:])))
                    if done.is_set():
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    new = later[0]
    copy_frame(stage, tmp / "root", new)
    started = time.monotonic()
    reduce(config)
    reduced_at = time.monotonic()
    deadline = reduced_at + 30
    while time.monotonic() < deadline:
        names = [x["file"] for e, d in got if e == "lights" for x in d["lights"]]
        if new in names and any(e == "curve" for e, _ in got):
            break
        time.sleep(0.05)
    arrived = time.monotonic()
    done.set()
    headers = got[0][1]
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-store"
    lights = [x for e, d in got if e == "lights" for x in d["lights"]]
    assert [x["file"] for x in lights] == [new], got
    curves = [d for e, d in got if e == "curve"]
    assert curves and curves[-1]["points"], curves
    if curves[-1]["mode"] == "append":  # only what is new is sent
        assert [p["file"] for p in curves[-1]["points"]] == [new]
    assert arrived - reduced_at < 2.0 + 1.0, (started, reduced_at, arrived)


def test_stream_of_another_server_instance_reloads(server):
    status_line, events = None, []
    url = f"{server.url}events?after=3&instance=gone"
    with httpx.Client(timeout=10) as c, c.stream("GET", url) as r:
        status_line = r.status_code
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
                break
    assert status_line == 200 and events == ["reload"]


# -- listening rules and the serve command ---------------------------------------------------


def test_non_loopback_needs_a_token(night, monkeypatch):
    config = load_config(night[1])
    monkeypatch.delenv("REDUXD_WEB_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="not a loopback address"):
        check_listen(config, "0.0.0.0:8750")
    assert check_listen(config, "127.0.0.1:8750") == ("127.0.0.1", 8750, "")
    assert check_listen(config, "[::1]:8750")[:2] == ("::1", 8750)
    monkeypatch.setenv("REDUXD_WEB_TOKEN", "abc")
    assert check_listen(config, "0.0.0.0:8750") == ("0.0.0.0", 8750, "abc")
    with pytest.raises(ConfigError, match="host:port"):
        check_listen(config, "localhost")


class Serve:
    """``reduxd serve`` in a subprocess; its address read from stderr."""

    def __init__(self, config, listen, env):
        self.out = Path(config).parent / f"serve-{time.monotonic_ns()}.out"
        self._fh = open(self.out, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reduxd", "serve", "--config", str(config), "--listen", listen],
            stdout=self._fh,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        line = self.proc.stderr.readline()
        m = re.search(r"on http://[^:]+:(\d+)/", line)
        assert m, line + self.proc.stderr.read() if self.proc.poll() is not None else line
        self.port = int(m.group(1))
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self._fh.close()
        return rc

    def log_events(self):
        return [json.loads(x) for x in self.out.read_text().splitlines() if x.startswith("{")]


def test_token_is_checked_on_every_request(night):
    token = "s3cret-token"
    serve = Serve(night[1], "0.0.0.0:0", {"REDUXD_WEB_TOKEN": token})
    try:
        with httpx.Client(base_url=serve.base, timeout=30) as c:
            for path in ("/", "/api/snapshot", "/events", "/static/app.js", "/files/photometry.csv",
                         "/quicklook/1", "/api/files"):  # fmt: skip
                r = c.get(path)
                assert r.status_code == 401, path
                assert r.headers["x-content-type-options"] == "nosniff"
                assert c.get(path, params={"token": "wrong"}).status_code == 401
                bad = {"Authorization": "Bearer wrong"}
                assert c.get(path, headers=bad).status_code == 401
            ok = c.get("/", params={"token": token})
            assert ok.status_code == 200 and "HttpOnly" in ok.headers["set-cookie"]
        with httpx.Client(base_url=serve.base, timeout=30) as c:  # the cookie alone
            c.cookies.set("reduxd_token", token)
            assert c.get("/api/snapshot").status_code == 200
        bearer = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=serve.base, timeout=30, headers=bearer) as c:
            assert c.get("/api/files").status_code == 200
            with c.stream("GET", "/events") as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
    finally:
        assert serve.stop() == 0
    refused = [e for e in serve.log_events() if e.get("event") == "web_unauthorized"]
    assert len(refused) == 1 and refused[0]["client"] == "127.0.0.1"  # once per client


def test_serve_refuses_an_open_address_without_token(night):
    env = {k: v for k, v in os.environ.items() if k != "REDUXD_WEB_TOKEN"}
    out = subprocess.run(
        [sys.executable, "-m", "reduxd", "serve", "--config", str(night[1]),
         "--listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 2
    assert "not a loopback address" in out.stderr and "token" in out.stderr


def test_serve_does_not_write_the_ledger(night):
    """``reduxd serve`` opens the ledger read-only: its bytes do not change."""
    ledger = night[0] / "out" / "reduxd.sqlite"
    before = ledger.read_bytes()
    serve = Serve(night[1], "127.0.0.1:0", {})
    try:
        with httpx.Client(base_url=serve.base, timeout=30) as c:
            deadline = time.monotonic() + 30
            while not c.get("/api/snapshot").json()["lights"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.get("/api/snapshot").json()["lights"]
    finally:
        assert serve.stop() == 0
    assert ledger.read_bytes() == before


def test_page_curves_equal_the_written_light_curves(client, night):
    """The page's dmag and errors are those of the light-curve files reduxd writes."""
    import csv

    outdir = night[0] / "out"
    fields = client.get("/api/snapshot").json()["fields"]
    compared = 0
    for field in fields:
        obj, filt = field["label"].rsplit(" ", 1)
        path = outdir / f"lightcurve_{obj}_{filt}.csv"
        if obj != "pg2213":
            continue
        with open(path, newline="") as fh:
            rows = {r["file"]: r for r in csv.DictReader(fh)}
        assert len(rows) == len(field["points"])
        for p in field["points"]:
            assert p["dmag"] == pytest.approx(float(rows[p["file"]]["dmag"]), abs=2e-5)
            assert p["err"] == pytest.approx(float(rows[p["file"]]["dmag_err"]), abs=2e-5)
            compared += 1
    assert compared >= N_FIRST


@pytest.mark.parametrize("shape", [(120, 200), (2000, 3300)])  # enlarged x4; binned by 3
def test_chart_marks_fall_on_the_drawn_circles(tmp_path, shape):
    """queries.chart_position puts a mark where write_quicklook drew the star's circle."""
    import numpy as np
    from astropy.table import Table
    from PIL import Image

    from reduxd.products.quicklook import CLEAN, write_quicklook
    from reduxd.web.queries import chart_position

    x, y, radius = shape[1] * 0.3 + 0.4, shape[0] * 0.6 - 0.3, 25.0
    table = Table({"star_id": [7], "x": [x], "y": [y], "mag_inst": [np.nan], "flags": [0]})
    data = np.random.default_rng(0).normal(100, 1, shape).astype(np.float32)
    path = write_quicklook(tmp_path / "q.png", data, table, radius=radius, title=" ")
    picture = np.asarray(Image.open(path))
    fx, fy = chart_position(x, y, shape)
    cx, cy = fx * picture.shape[1], fy * picture.shape[0]
    rows, cols = np.nonzero(picture == CLEAN)
    d = np.hypot(cols - cx, rows - cy)
    r_drawn = radius * picture.shape[1] / shape[1]
    on_ring = np.abs(d - r_drawn) < 1.5
    assert on_ring.sum() > 0.8 * 2 * np.pi * r_drawn, (on_ring.sum(), r_drawn)


def test_serve_shows_the_daemon_that_holds_the_ledger(night):
    """A ``reduxd watch`` holding the ledger's lock is shown (pid, since when); none: read-only."""
    ledger = night[0] / "out" / "reduxd.sqlite"
    serve = Serve(night[1], "127.0.0.1:0", {})
    try:
        with httpx.Client(base_url=serve.base, timeout=30) as c:
            assert c.get("/api/snapshot").json()["state"].get("service") is None
            with lock.acquire(ledger, command="watch") as held:
                deadline = time.monotonic() + 30
                service = None
                while service is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                    service = c.get("/api/snapshot").json()["state"].get("service")
            assert service["pid"] == os.getpid()
            assert service["running_since"] == held.info["started"]
    finally:
        assert serve.stop() == 0
