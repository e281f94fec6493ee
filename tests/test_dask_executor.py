"""``reduxd reduce`` on Dask: several nights, a real LocalCluster, a worker killed.

Three small simulated nights (each its own date, target and calibration) in one
folder of night folders. The reference run is ``--executor local --jobs 1`` in
a process where Dask cannot be imported; the Dask runs (``dask-local``, and
``dask`` against a LocalCluster the test owns: scheduler and worker processes
on localhost) must give the same tables, light curves and pixels.
"""

import contextlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from reduxd.batch import Progress
from reduxd.nightplan import NightPlan, NightProgress
from reduxd.simulate import NightSpec, simulate_night
from reduxd.store import Ledger

N_NIGHTS, N_LIGHTS = 3, 8  # lights per night (V and R, 4 each)
NO_DASK = "import sys; sys.modules['distributed'] = sys.modules['dask'] = None; "
CLI = "from reduxd.cli import main; sys.exit(main(sys.argv[1:]))"


def reduxd(args, cwd, *, no_dask=False, wait=True, timeout=300):
    """Run the ``reduxd`` command (with ``no_dask``: Dask cannot be imported)."""
    code = (NO_DASK if no_dask else "import sys; ") + CLI
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-c", code, *args]
    if not wait:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr}"
    return proc


def reduce_args(out, *extra):
    return ["reduce", "-D", "archive", "-O", str(out), "--progress-every", "0", *extra]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A folder ``archive/`` of three night folders."""
    base = tmp_path_factory.mktemp("dask")
    for k in range(1, N_NIGHTS + 1):
        spec = NightSpec.small(
            n_lights=N_LIGHTS // 2, lights_per_run=2, target=f"field{k}", seed=k,
            start=f"2024-07-0{k}T00:50:00",
        )  # fmt: skip
        simulate_night(base / "archive" / f"night{k}", spec, workers=1)
        shutil.rmtree(base / "archive" / f"night{k}" / "truth")  # not raw frames
    return base


@pytest.fixture(scope="module")
def reference(archive):
    """The reference: one local job, Dask not importable."""
    ok(reduxd(reduce_args("local1", "--executor", "local", "--jobs", "1"), archive, no_dask=True))
    return archive / "local1"


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield cluster, client


def measurements(outdir):
    """``(file, version, superseded, row)`` of every photometry row in the ledger."""
    with Ledger(Path(outdir) / "reduxd.sqlite") as ledger:
        rows = ledger.measurements(current_only=False)
    return sorted((m.relpath, m.version, m.superseded, json.dumps(m.row)) for m in rows)


def pixels(hdu):
    return None if hdu.data is None else np.asarray(hdu.data).tobytes()


def assert_same_results(a, b):
    """Tables and light curves byte for byte; pixels of every image product."""
    tables = sorted(p.relative_to(a) for p in a.glob("*.*sv"))
    assert tables and tables == sorted(p.relative_to(b) for p in b.glob("*.*sv"))
    for rel in [*tables, *(p.relative_to(a) for p in a.glob("stacks/*.csv"))]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    images = sorted(p.relative_to(a) for p in a.rglob("*.fits"))
    assert images == sorted(p.relative_to(b) for p in b.rglob("*.fits"))
    assert len([p for p in images if p.parts[0] == "reduced"]) == N_NIGHTS * N_LIGHTS
    for rel in images:
        with fits.open(a / rel) as ha, fits.open(b / rel) as hb:
            assert len(ha) == len(hb), rel
            for x, y in zip(ha, hb, strict=True):
                assert pixels(x) == pixels(y), rel
    assert measurements(a) == measurements(b)


def test_dask_missing_or_no_scheduler_exit_2_and_say_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    for kind in ("dask", "dask-local"):
        proc = reduxd(["reduce", "-D", "empty", "--executor", kind], tmp_path, no_dask=True)
        assert proc.returncode == 2, proc.stderr
        assert "pip install 'reduxd[cluster]'" in proc.stderr
    proc = reduxd(["reduce", "-D", "empty", "--executor", "dask"], tmp_path)
    assert proc.returncode == 2 and "needs --scheduler tcp://HOST:PORT" in proc.stderr


def test_progress_says_when_each_night_is_done():
    plans = {"n1": NightPlan("n1", lights=2), "n2": NightPlan("n2", lights=1)}
    out = io.StringIO()
    night_of = {"a": "n1", "b": "n1", "c": "n2"}
    progress = NightProgress(Progress(3, stream=out, every=1e9), plans, night_of)
    for label in ("a", "c", "b"):
        progress.step(label)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[1].startswith("progress: 3/3 frames (100%)")
    assert lines[0] == "night n2 done: 1 files (1/2 nights)"
    assert lines[2] == "night n1 done: 2 files (2/2 nights)"


@pytest.mark.slow
def test_dask_local_gives_the_results_of_one_local_job(archive, reference):
    proc = ok(reduxd(reduce_args("dasklocal", "--executor", "dask-local", "--jobs", "2"), archive))
    assert "executor: dask LocalCluster, 2 worker processes" in proc.stderr
    assert "Dask dashboard: http://" in proc.stderr
    done = [line for line in proc.stderr.splitlines() if line.startswith("night ")]
    assert len(done) == N_NIGHTS and done[-1].endswith(f"({N_NIGHTS}/{N_NIGHTS} nights)")
    assert_same_results(reference, archive / "dasklocal")
    summary = json.loads((archive / "dasklocal" / "summary.json").read_text())
    assert summary["reduced"] == N_NIGHTS * N_LIGHTS and not summary["refused"]


def running_light(client, timeout=120.0):
    """Address of a worker busy with a light (polls the scheduler)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            if any(str(k).startswith("compute_light") for k in keys):
                return worker
        time.sleep(0.05)
    raise AssertionError("no light was ever processed by the cluster")


@pytest.mark.slow
def test_worker_killed_mid_run_costs_only_its_tasks(archive, reference, cluster):
    local_cluster, client = cluster
    address = client.scheduler.address
    run = reduxd(reduce_args("killed", "--executor", "dask", "--scheduler", address), archive,
                 wait=False)  # fmt: skip
    victim = running_light(client)
    pid = client.run(os.getpid)[victim]
    os.kill(pid, signal.SIGKILL)
    _out, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert pid not in client.run(os.getpid).values()  # it died; the nanny started another
    ran = set(local_cluster.scheduler.task_prefixes)  # masters, lights and stacks on workers
    assert {"make_masters", "compute_light", "stack_chunk"} <= ran, ran
    assert_same_results(reference, archive / "killed")
    versions = {(file, v) for file, v, _s, _r in measurements(archive / "killed")}
    assert len(versions) == N_NIGHTS * N_LIGHTS  # each light reduced once: one version
    assert {v for _f, v in versions} == {1}


def light_states(outdir):
    with sqlite3.connect(f"file:{Path(outdir) / 'reduxd.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT state FROM frames WHERE relpath LIKE '%field%'").fetchall()
    return Counter(state for (state,) in rows)


def wait_for_lights(outdir, n, timeout=120.0):
    """Wait until the ledger has ``n`` lights done (the coordinator commits them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.OperationalError):  # not created yet, or busy
            if light_states(outdir)["done"] >= n:
                return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} lights done after {timeout} s")


@pytest.mark.slow
def test_coordinator_killed_mid_run_resumes_each_light_once(archive, reference, cluster):
    """Killed with SIGKILL after some lights are committed, then run again.

    The lights committed before the kill keep their rows (not reduced again);
    lights submitted but not committed were left ``processing`` and the restart
    recovers them (``Ledger.recover_interrupted``): every light is reduced once,
    and the tables hold exactly the ledger's rows. Not bit for bit the
    uninterrupted run's: lights reduced after the restart are measured against
    the field's reference as it was committed.
    """
    _local_cluster, client = cluster
    args = reduce_args("restarted", "--executor", "dask", "--scheduler", client.scheduler.address)
    run = reduxd(args, archive, wait=False)
    wait_for_lights(archive / "restarted", 3)
    run.kill()
    run.communicate(timeout=60)
    before = measurements(archive / "restarted")
    assert before
    ok(reduxd(args, archive))
    after = measurements(archive / "restarted")
    assert set(before) <= set(after)  # committed rows kept as they were
    assert {version for _f, version, _s, _r in after} == {1}  # nothing reduced twice
    states = light_states(archive / "restarted")
    assert set(states) == {"done"}, states  # none left processing, lost or failed
    assert len({f for f, _v, _s, _r in after}) == N_NIGHTS * N_LIGHTS
    table = (archive / "restarted" / "photometry.csv").read_text().splitlines()
    assert len(table) - 1 == len(after)
