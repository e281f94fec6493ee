"""Benchmark: ``reduxd watch`` latency on a realtime night, and its CPU use while idle.

Usage::

    .venv/bin/python benchmarks/bench_daemon.py                 # both parts (~4 min)
    .venv/bin/python benchmarks/bench_daemon.py --part latency --lights 20 --cadence 1.5
    .venv/bin/python benchmarks/bench_daemon.py --part idle --frames 5000 --idle-seconds 60
    .venv/bin/python benchmarks/bench_daemon.py --part latency --web-client   # page on/off
    .venv/bin/python benchmarks/bench_daemon.py --part long --long-lights 100 --stars 1000

Latency: the simulator writes a night of 1608x1104 frames (ZWO ASI432MM) in real
time into the watched folder (in chunks, ``--cadence`` seconds apart) while the
daemon runs as a subprocess with JSON on stdout. Each light's ``frame_reduced``
line gives ``latency_ms``: from the file being found stable (after
``settle_seconds``) to its photometry rows being written. Target: median < 150 ms.

With ``--web-client`` the latency part runs three times in the same run, on the
same pre-rendered frames: without the web page (``[web] listen = ""``), with it
and a client connected all night the way the page's JavaScript is (one snapshot,
then the event stream; the finder chart and the download list fetched for every
new light), and without it again. It prints the ratio of the median latencies
(issue 14: unchanged within noise) and that of the two runs without the page.

Idle CPU: ``--frames`` tiny frames in a SharpCap-like tree are reduced in a first
pass (so they are in the ledger as done), then the daemon is started again with a
polling observer and its utime + stime (``/proc/<pid>/stat``) measured over
``--idle-seconds`` of doing nothing. Target: < 2 % of one core. The cost of one
watchdog polling snapshot and of one reconciliation pass over the tree are timed
in-process to show what costs what.

Long crowded night (``--part long``): ``--long-lights`` pre-rendered lights of a
field of ``--stars`` stars (one filter) delivered ``--long-cadence`` s apart.
Printed: the latency (stable file to rows and light curve written) around light
10, 100, 1,000 and the last (median of the 11 lights centred there), and the daemon's RSS
(``VmRSS``) when those lights were reduced and at the end, and the peak RSS of the
child processes that rebuild the light curve (``VmHWM``, sampled). Targets: light 1,000
within 1.2x of light 10, RSS after 1,000 within 1.2x of RSS after 100.

Temporary files are removed at the end.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reduxd.simulate import (  # noqa: E402
    NightSpec,
    fits_bytes,
    sharpcap_cards,
    simulate_night,
    write_frame,
)

CAMERA = NightSpec().camera_toml()
CLK_TCK = os.sysconf("SC_CLK_TCK")


def write_config(tmp, *, root, observer, settle, poll_interval=2.0, reconcile=60.0, listen=""):
    path = tmp / "config.toml"
    path.write_text(
        f"""
[paths]
data = ["{root}"]
outdir = "{tmp / "out"}"
[calibration]
force = true
{CAMERA}
[output]
stack = false
[watch]
observer = "{observer}"
poll_interval = {poll_interval}
settle_seconds = {settle}
reconcile_seconds = {reconcile}
set_timeout_seconds = 5.0
[web]
listen = "{listen}"
"""
    )
    return path


def start_daemon(config, log_path, *, exit_when_idle=None):
    cmd = [sys.executable, "-m", "reduxd", "watch", "--config", str(config)]
    if exit_when_idle is not None:
        cmd += ["--exit-when-idle", str(exit_when_idle)]
    out = open(log_path, "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
    proc.log_file = out
    return proc


def events(log_path, name):
    out = []
    for line in Path(log_path).read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


def wait_for(log_path, name, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events(log_path, name):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited ({proc.returncode}) before {name}")
        time.sleep(0.1)
    raise TimeoutError(f"no {name} within {timeout} s")


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.log_file.close()


def cpu_seconds(pid):
    """utime + stime of a process, seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid):
    """Pids of the direct children of ``pid`` (the web page's process)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=float), q))


# -- latency ---------------------------------------------------------------------------


def deliver(stage, root, *, cadence):
    """Write the staged frames into ``root`` in time order, ``cadence`` s apart, in chunks."""
    frames = sorted(stage.rglob("*.fits"), key=lambda p: p.stat().st_mtime_ns)
    due = time.monotonic()
    for path in frames:
        time.sleep(max(0.0, due - time.monotonic()))
        due += cadence
        dest = root / path.relative_to(stage)
        write_frame(dest, path.read_bytes(), delivery="chunks", chunk_bytes=256 * 1024, pause=0.02)


def web_client(url, stop, seen):
    """Follow the page's data as its JavaScript does, until ``stop`` is set."""
    try:
        _follow(url, stop, seen)
    except Exception as exc:
        seen.append(f"client failed: {type(exc).__name__}: {exc}")


def _follow(url, stop, seen):
    import httpx

    with httpx.Client(base_url=url.rstrip("/"), timeout=httpx.Timeout(60, connect=10)) as c:
        snap = c.get("/api/snapshot").json()
        c.get("/api/files")
        query = {"after": snap["seq"], "instance": snap["instance"]}
        with c.stream("GET", "/events", params=query) as r:
            event = None
            for line in r.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "lights":
                    for light in json.loads(line[6:])["lights"]:
                        seen.append(light["file"])
                        if light["quicklook"]:
                            c.get(light["quicklook"])
                    c.get("/api/files")


def bench_latency(tmp, *, lights, cadence, settle, observer, live, web=False, stage=None):
    root = tmp / "raw"
    root.mkdir()
    listen = "127.0.0.1:0" if web else ""
    config = write_config(tmp, root=root, observer=observer, settle=settle, listen=listen)
    spec = NightSpec(n_lights=lights, lights_per_run=10, n_bias=5, n_darks=3, n_flats=3)
    stage = stage or tmp / "stage"
    if live:  # the simulator renders while the daemon works (it shares the CPUs)
        writer = threading.Thread(
            target=simulate_night,
            args=(root, spec),
            kwargs={"realtime": True, "cadence": cadence, "overwrite": True},
        )
    else:  # rendered beforehand: the camera computer is another machine
        if not stage.exists():
            simulate_night(stage, spec)
        writer = threading.Thread(target=deliver, args=(stage, root), kwargs={"cadence": cadence})
    log_path = tmp / "latency.jsonl"
    proc = start_daemon(config, log_path)
    stop_client, seen, client = threading.Event(), [], None
    try:
        wait_for(log_path, "service_started", proc, 60)
        if web:
            wait_for(log_path, "web_started", proc, 60)
            url = events(log_path, "web_started")[0]["url"]
            client = threading.Thread(target=web_client, args=(url, stop_client, seen))
            client.daemon = True
            client.start()
        t0 = time.monotonic()
        writer.start()
        writer.join()
        written = time.monotonic() - t0
        n_lights = lights * len(spec.filters)
        deadline = time.monotonic() + 120
        while len(events(log_path, "frame_reduced")) < n_lights:
            if time.monotonic() > deadline:
                raise TimeoutError("not every light was reduced")
            time.sleep(0.2)
        cpu = cpu_seconds(proc.pid)
        web_cpu = sum(cpu_seconds(pid) for pid in children(proc.pid)) if web else 0.0
        time.sleep(3 if web else 0)  # the page's last events
    finally:
        stop_client.set()
        stop(proc)
    reduced = [e for e in events(log_path, "frame_reduced") if "version" not in e]
    latency = [e["latency_ms"] for e in reduced]
    later = latency[1:]  # the first light also builds every pending master
    return {
        "frames written": f"{len(list(root.rglob('*.fits')))} in {written:.0f} s"
        + (" (simulator running alongside)" if live else " (pre-rendered)"),
        "lights reduced": len(reduced),
        "first light (builds masters)": f"{latency[0]:.0f} ms",
        "latency median": f"{statistics.median(later):.0f} ms  (target < 150 ms)",
        "latency p95": f"{percentile(later, 95):.0f} ms",
        "latency max": f"{max(later):.0f} ms",
        "settle time (not included)": f"{settle:g} s",
        "daemon CPU for the night": f"{cpu:.1f} s",
        **({"web process CPU for the night": f"{web_cpu:.1f} s"} if web else {}),
        **({"lights the client was sent": len(set(seen))} if web else {}),
        **({"client": seen[-1]} if web and seen and seen[-1].startswith("client") else {}),
        "_median": statistics.median(later),
    }


# -- long crowded night -----------------------------------------------------------------


def rss_mb(pid):
    """Resident set size of a process, MB (``VmRSS`` of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_mb(pid):
    """Peak resident set size of a process so far, MB (``VmHWM``); 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024.0 for line in text.splitlines()
                 if line.startswith("VmHWM:")), 0.0)  # fmt: skip


def watch_rss(log_path, proc, marks, out, stop_event, trace=None, child_peaks=None):
    """Record the daemon's RSS when the number of reduced lights first reaches each mark,
    every sample as ``(lights reduced, RSS)`` in ``trace``, and in ``child_peaks``
    ``{pid: (lights reduced when it started, peak RSS, lights reduced when it started
    working)}`` of the daemon's child processes (the light-curve rebuilds: one child
    each, spawned idle as soon as the one before exits: working once its RSS passes
    ``BUSY_MB``)."""
    pending = sorted(marks)
    while not stop_event.is_set() and proc.poll() is None:
        n = len(events(log_path, "frame_reduced"))
        rss = rss_mb(proc.pid)
        if trace is not None:
            trace.append((n, rss))
        for pid in children(proc.pid) if child_peaks is not None else ():
            started, peak, busy = child_peaks.get(pid, (n, 0.0, None))
            peak = max(peak, peak_mb(pid))
            child_peaks[pid] = (started, peak, n if busy is None and peak > BUSY_MB else busy)
        while pending and n >= pending[0]:
            out[pending.pop(0)] = rss
        if not pending and trace is None:
            return
        time.sleep(0.25)


BUSY_MB = 60.0  # a spawned pool worker waits in ~15 MB; a rebuild imports numpy and astropy


def rss_spread(trace, m, half=5):
    """(min, max) RSS sampled while lights ``m - half`` to ``m + half`` were reduced: the
    minimum is what the daemon holds between lights, the maximum during one."""
    values = [rss for n, rss in trace if abs(n - m) <= half]
    return (min(values), max(values)) if values else (float("nan"), float("nan"))


def watch_curve(outdir, seen, stop_event):
    """Record in ``seen`` when each light's row first appears in a light-curve CSV under
    ``outdir`` (``{file: time.time()}``), polled every 0.2 s."""
    while not stop_event.is_set():
        for path in outdir.rglob("lightcurve_*.csv"):
            try:
                lines = path.read_text().splitlines()[1:]
            except OSError:
                continue
            now = time.time()
            for line in lines:
                parts = line.split(",")
                if len(parts) > 2:
                    seen.setdefault(parts[2], now)
        time.sleep(0.2)


def curve_latency(event, seen):
    """ms from a light's stable file (its ``frame_reduced`` time less its latency) to its
    row in the light curve; NaN if it never appeared."""
    from datetime import datetime

    stable = datetime.fromisoformat(event["timestamp"]).timestamp() - event["latency_ms"] / 1e3
    return (seen[event["file"]] - stable) * 1e3 if event["file"] in seen else float("nan")


def bench_long(tmp, *, lights, stars, cadence, settle, observer, stage=None):
    root = tmp / "raw"
    root.mkdir()
    config = write_config(tmp, root=root, observer=observer, settle=settle)
    spec = NightSpec(
        filters=("V",), n_stars=stars, n_lights=lights, lights_per_run=50, n_bias=5, n_darks=3,
        n_flats=3,
    )  # fmt: skip
    t0 = time.monotonic()
    if stage is None:
        stage = tmp / "stage"
        simulate_night(stage, spec)
    elif not (stage / "truth.json").exists():
        simulate_night(stage, spec)  # kept for the next run (--long-stage)
    rendered = time.monotonic() - t0
    writer = threading.Thread(target=deliver, args=(stage, root), kwargs={"cadence": cadence})
    log_path = tmp / "long.jsonl"
    proc = start_daemon(config, log_path)
    marks = sorted({m for m in (10, 100, 1000) if m <= lights} | {lights})
    rss, done, trace, child_peaks = {}, threading.Event(), [], {}
    sampler = threading.Thread(
        target=watch_rss, args=(log_path, proc, marks, rss, done, trace, child_peaks)
    )
    seen = {}
    curve_watch = threading.Thread(target=watch_curve, args=(tmp / "out", seen, done))
    try:
        wait_for(log_path, "service_started", proc, 60)
        writer.start()
        sampler.start()
        curve_watch.start()
        writer.join()
        deadline, done_before = time.monotonic() + 300, -1
        while (reduced := len(events(log_path, "frame_reduced"))) < lights:
            if reduced > done_before:  # a loaded machine may leave a backlog: wait while it shrinks
                deadline, done_before = time.monotonic() + 300, reduced
            if time.monotonic() > deadline:
                raise TimeoutError(f"{lights - reduced} lights not reduced after 300 s")
            time.sleep(0.5)
        time.sleep(cadence)  # the last light's row in the curve
        end_rss = rss_mb(proc.pid)
        for m in marks:  # reached while the sampler slept
            rss.setdefault(m, end_rss)
    finally:
        done.set()
        stop(proc)
    reduced = [e for e in events(log_path, "frame_reduced") if "version" not in e]
    latency = [e["latency_ms"] for e in reduced]
    to_curve = [curve_latency(e, seen) for e in reduced]
    # the light's wait for the curve after its rows: what a backlog of lights leaves out
    extra = [c - r for c, r in zip(to_curve, latency, strict=True)]
    stars_measured = statistics.median(e["n_stars"] for e in reduced)
    out = {
        "lights": f"{len(reduced)} of a {stars}-star field (median {stars_measured:.0f} measured)"
        f", delivered {cadence:g} s apart; rendering {rendered:.0f} s (not timed)",
    }
    for m in marks:
        window = latency[max(0, m - 6) : m + 5]
        low, high = rss_spread(trace, m)
        out[f"latency around light {m}"] = (
            f"{statistics.median(window):.0f} ms (median of lights {max(1, m - 5)}-"
            f"{min(len(latency), m + 5)}); RSS {rss.get(m, float('nan')):.0f} MB "
            f"(lights {max(1, m - 5)}-{m + 5}: {low:.0f}-{high:.0f} MB)"
        )
        curve = [v for v in to_curve[max(0, m - 6) : m + 5] if v == v]
        wait = [v for v in extra[max(0, m - 6) : m + 5] if v == v]
        out[f"  to its row in the light curve, light {m}"] = (
            f"{statistics.median(curve):.0f} ms median, {max(curve):.0f} ms max; after its "
            f"rows {statistics.median(wait):.0f} ms median, {max(wait):.0f} ms max"
            if curve
            else "not in the curve"
        )
    first = statistics.median(latency[max(0, marks[0] - 6) : marks[0] + 5])
    last_mark = marks[-1]
    last = statistics.median(latency[max(0, last_mark - 6) : last_mark + 5])
    out[f"latency ratio light {last_mark} / light {marks[0]}"] = f"{last / first:.2f}"
    curve_first = np.nanmedian(to_curve[max(0, marks[0] - 6) : marks[0] + 5])
    curve_last = np.nanmedian(to_curve[max(0, last_mark - 6) : last_mark + 5])
    out["  the same, to the row in the light curve"] = f"{curve_last / curve_first:.2f}"
    if 100 in rss and last_mark > 100:
        out[f"RSS ratio light {last_mark} / light 100"] = f"{rss[last_mark] / rss[100]:.2f}"
        (low, high), (low100, high100) = rss_spread(trace, last_mark), rss_spread(trace, 100)
        out["  the same, lowest / highest sample around those lights"] = (
            f"{low / low100:.2f} / {high / high100:.2f}"
        )
    out["latency p95 / max (all lights)"] = (
        f"{percentile(latency[1:], 95):.0f} / {max(latency[1:]):.0f} ms"
    )
    out["RSS at the end"] = f"{end_rss:.0f} MB"
    out["light-curve rebuilds (child processes)"] = rebuild_peaks(child_peaks)
    block = max(10, lights // 10)
    out[f"latency by blocks of {block} lights: median / max"] = ", ".join(
        f"{statistics.median(latency[k : k + block]):.0f}/{max(latency[k : k + block]):.0f}"
        for k in range(0, len(latency), block)
    )
    out[f"to the light curve by blocks of {block} lights: median / max"] = ", ".join(
        f"{np.nanmedian(to_curve[k : k + block]):.0f}/{np.nanmax(to_curve[k : k + block]):.0f}"
        for k in range(0, len(to_curve), block)
    )
    out[f"wait for the curve after the rows, by blocks of {block}: median / max"] = ", ".join(
        f"{np.nanmedian(extra[k : k + block]):.0f}/{np.nanmax(extra[k : k + block]):.0f}"
        for k in range(0, len(extra), block)
    )
    out["lights never seen in the light curve"] = sum(1 for v in to_curve if v != v)
    return out


def rebuild_peaks(child_peaks):
    """The peak RSS of the daemon's rebuild children (sampled every 0.25 s: ``VmHWM``)."""
    if not child_peaks:
        return "none seen"
    runs = sorted(child_peaks.values())
    top = max(runs, key=lambda r: r[1])

    def when(start, busy):
        return f"spawned at light {start}, " + (
            f"working from light {busy}" if busy is not None else "never working"
        )

    return (
        f"{len(runs)}; highest peak {top[1]:.0f} MB ({when(top[0], top[2])}); "
        + ", ".join(f"{peak:.0f} MB ({when(n, busy)})" for n, peak, busy in runs[-4:])
        + " (the last ones)"
    )


# -- idle CPU --------------------------------------------------------------------------


def make_tree(root, n):
    """``n`` tiny bias frames in SharpCap's nested layout, 100 per capture folder."""
    rng = np.random.default_rng(1)
    cards = sharpcap_cards("bias", exptime=3.2e-05, date_obs=0)
    for i in range(n):
        folder = root / f"night_{i // 1000:02d}" / "calibration" / "bias" / f"{i // 100:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = (600 + 16 * rng.integers(0, 4, (16, 16))).astype(np.uint16)
        (folder / f"bias_{i:05d}.fits").write_bytes(fits_bytes(data, cards))


def breakdown(config_path, root, repeat=5):
    """In-process timings of one polling snapshot and one reconciliation pass."""
    from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

    from reduxd.config import load_config
    from reduxd.daemon import Service
    from reduxd.store import Ledger
    from reduxd.watch.stability import StabilityTracker
    from reduxd.watch.watcher import Watcher

    def cpu(fn):
        t = time.process_time()
        for _ in range(repeat):
            fn()
        return (time.process_time() - t) / repeat

    snap = DirectorySnapshot(str(root))
    snapshot = cpu(lambda: DirectorySnapshot(str(root)))
    diff = cpu(lambda: DirectorySnapshotDiff(snap, DirectorySnapshot(str(root)))) - snapshot
    config = load_config(config_path)
    service = Service(config)
    watcher = Watcher([root], observer="polling")
    with Ledger(config.paths.state_file) as ledger:
        reconcile = cpu(lambda: service._reconcile(ledger, StabilityTracker(), watcher))
    return snapshot, diff, reconcile


def idle_cpu(tmp, config, seconds, name):
    """CPU use (% of one core) of a daemon that has nothing to do, and its log lines."""
    log_path = tmp / f"idle-{name}.jsonl"
    proc = start_daemon(config, log_path)
    try:
        wait_for(log_path, "service_started", proc, 120)
        time.sleep(5)  # start-up done
        c0, w0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, w1 = cpu_seconds(proc.pid), time.monotonic()
        lines = len(Path(log_path).read_text().splitlines())
    finally:
        stop(proc)
    queued = events(log_path, "service_started")[0]["queued"]
    return 100 * (c1 - c0) / (w1 - w0), lines - 2, queued


def bench_idle(tmp, *, frames, seconds, observers, reconcile):
    root = tmp / "raw"
    make_tree(root, frames)
    observer, interval = observers[0]
    config = write_config(tmp, root=root, observer=observer, settle=0.5, poll_interval=interval)
    t0 = time.monotonic()
    first = start_daemon(config, tmp / "first.jsonl", exit_when_idle=3)
    try:
        first.wait(1800)
    finally:
        stop(first)
    first_pass = time.monotonic() - t0 - 3
    out = {
        "frames in the tree": frames,
        "first pass (all reduced)": f"{first_pass:.0f} s ({frames / first_pass:.0f} frames/s)",
    }
    for observer, interval in observers:
        name = f"{observer}" + (f" every {interval:g} s" if observer == "polling" else "")
        config = write_config(
            tmp,
            root=root,
            observer=observer,
            settle=0.5,
            poll_interval=interval,
            reconcile=reconcile,
        )
        cpu, lines, queued = idle_cpu(tmp, config, seconds, name.replace(" ", "_"))
        target = "  (target < 2 %)" if observer == "polling" else ""
        out[f"idle CPU, {name}"] = f"{cpu:.2f} % of one core{target}"
        out["  log lines while idle / queued at start"] = f"{lines} / {queued}"
    polling = [i for o, i in observers if o == "polling"]
    snapshot, diff, pass_cpu = breakdown(config, root)
    interval = polling[0] if polling else 2.0
    out["  watchdog polling snapshot of the tree"] = f"{snapshot * 1000:.0f} ms CPU per poll"
    out["  watchdog snapshot diff"] = f"{diff * 1000:.0f} ms CPU per poll"
    out[f"  reconciliation pass (every {reconcile:g} s)"] = f"{pass_cpu * 1000:.0f} ms CPU"
    per_second = (snapshot + diff) / interval + pass_cpu / reconcile
    out[f"  sum of these, polling every {interval:g} s"] = f"{100 * per_second:.2f} % + main loop"
    return out


def _observer(text):
    kind, _, interval = text.partition(":")
    return kind, float(interval or 2.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("latency", "idle", "both", "long"), default="both")
    p.add_argument("--long-lights", type=int, default=100, help="lights of the long night")
    p.add_argument("--long-cadence", type=float, default=2.0, help="seconds between its lights")
    p.add_argument("--stars", type=int, default=1000, help="stars of the long night's field")
    p.add_argument(
        "--long-stage",
        type=Path,
        help="folder of the long night's rendered frames: rendered there once, then reused",
    )
    p.add_argument("--lights", type=int, default=20, help="lights per filter (2 filters)")
    p.add_argument("--cadence", type=float, default=1.5, help="seconds between frames")
    p.add_argument("--settle", type=float, default=1.0, help="settle_seconds")
    p.add_argument("--observer", default="inotify", help="observer for the latency part")
    p.add_argument(
        "--live-simulator",
        action="store_true",
        help="render frames while the daemon runs (simulate_night realtime) instead of before",
    )
    p.add_argument(
        "--web-client",
        action="store_true",
        help="latency without and with the web page and a connected client (same frames)",
    )
    p.add_argument("--frames", type=int, default=5000, help="frames in the idle tree")
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument(
        "--idle-observers",
        default="polling:2,polling:5,inotify",
        help="observer[:poll_interval] runs to measure (config.toml default: polling every 2 s)",
    )
    p.add_argument("--reconcile", type=float, default=60.0, help="as in config.toml")
    args = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        tmp = Path(tmp)
        if args.part in ("latency", "both"):
            runs = [(False, "")]
            if args.web_client:  # A/B/A: the spread of the two A runs is the noise
                runs += [(True, ", web page + client"), (False, ", again")]
            for web, label in runs:
                (tmp / "latency").mkdir()
                results[f"latency (realtime night, 1608x1104{label})"] = bench_latency(
                    tmp / "latency",
                    lights=args.lights,
                    cadence=args.cadence,
                    settle=args.settle,
                    observer=args.observer,
                    live=args.live_simulator,
                    web=web,
                    stage=tmp / "stage",
                )
                shutil.rmtree(tmp / "latency")
            medians = [r.pop("_median") for r in results.values()]
            if args.web_client:
                without = (medians[0] + medians[2]) / 2
                results["web page"] = {
                    "median latency, with / without the page": f"{medians[1] / without:.2f}",
                    "the two runs without the page, ratio": f"{medians[2] / medians[0]:.2f}",
                }
        if args.part == "long":
            (tmp / "long").mkdir()
            results["long crowded night (1608x1104)"] = bench_long(
                tmp / "long",
                lights=args.long_lights,
                stars=args.stars,
                cadence=args.long_cadence,
                settle=args.settle,
                observer=args.observer,
                stage=args.long_stage,
            )
        if args.part in ("idle", "both"):
            (tmp / "idle").mkdir()
            results["idle (polling observer)"] = bench_idle(
                tmp / "idle",
                frames=args.frames,
                seconds=args.idle_seconds,
                observers=[_observer(o) for o in args.idle_observers.split(",")],
                reconcile=args.reconcile,
            )
    width = max(len(k) for part in results.values() for k in part)
    for title, rows in results.items():
        print(f"\n{title}")
        print("-" * (width + 30))
        for key, value in rows.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
