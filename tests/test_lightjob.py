"""One light path: a light reduced in this process or in a worker goes through the same
LightJob, compute (products written) then commit, and reacts the same to a failed
product write: the frame fails, nothing is committed, the retry measures it once."""

import shutil
from concurrent.futures import ProcessPoolExecutor

import pytest

from reduxd import pipeline as pipeline_module
from reduxd.batch import sort_frames
from reduxd.calsets import header_info
from reduxd.config import load_config
from reduxd.executors import InProcess
from reduxd.pipeline import Pipeline
from reduxd.simulate import NightSpec, simulate_night
from reduxd.store import Ledger


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    """The first light of a small simulated night (read-only: copy it)."""
    night = tmp_path_factory.mktemp("night")
    simulate_night(night, NightSpec.small(), workers=1)
    lights = sorted(p for p in night.rglob("*.fits") if p.is_relative_to(night / "pg2213"))
    return night, lights[0]


def _config(tmp_path, root):
    return load_config(None, {
        "paths": {"data": [str(root)], "outdir": str(tmp_path / "out")},
        "calibration": {"force": True},
        "photometry": {"radius": 8.0},
        "output": {"quicklook": False, "stack": False},
    })  # fmt: skip


def _reduce(pipeline, path, root, how):
    if how == "handle":
        return pipeline.handle(path, root)
    if how == "in-process":
        (outcome,) = pipeline.handle_many([(root, path)], pool=InProcess())
        return outcome
    with ProcessPoolExecutor(max_workers=1) as pool:
        (outcome,) = pipeline.handle_many([(root, path)], pool=pool)
    return outcome


def _copied(tmp_path, light):
    """``(root, path, config)``: the light copied under ``tmp_path / "raw"``, its config."""
    night, raw = light
    root = tmp_path / "raw"
    path = root / raw.relative_to(night)
    path.parent.mkdir(parents=True)
    shutil.copy2(raw, path)
    return root, path, _config(tmp_path, root)


@pytest.mark.parametrize("how", ["handle", "in-process", "process-pool"])
def test_a_failed_product_write_fails_the_light_on_every_path(tmp_path, light, how):
    root, path, config = _copied(tmp_path, light)
    (tmp_path / "out").mkdir()
    blocker = tmp_path / "out" / "reduced"
    blocker.write_text("a file where the folder should be")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger)
        outcome = _reduce(pipeline, path, root, how)
        assert (outcome.status, outcome.kind) == ("failed", "light")
        assert "reduced" in outcome.reason
        assert ledger.measurements(current_only=False) == []
        row = ledger.frame(root=str(root), relpath=path.relative_to(root).as_posix())
        assert (row.state, row.attempts) == ("seen", 1)
        blocker.unlink()
        assert _reduce(pipeline, path, root, how).status == "reduced"
        assert {m.version for m in ledger.measurements(current_only=False)} == {1}
        assert ledger.frame(row.id).info["object"] == "pg2213"


def test_start_workers_forks_a_local_pools_workers_at_once():
    """After it no thread of this process is copied into a worker (see batch.Preload)."""
    import multiprocessing

    from reduxd.executors import start_workers

    with ProcessPoolExecutor(max_workers=2) as pool:
        before = len(multiprocessing.active_children())
        start_workers(pool)
        assert len(multiprocessing.active_children()) == before + 2
        start_workers(pool)  # once forked, nothing more
        assert len(multiprocessing.active_children()) == before + 2
    start_workers(None)  # --jobs 1: nothing to fork


class SleepJob:
    """A job as FanOut sends it (``key``, ``submit``, ``work``): it sleeps in the pool
    and returns when it started."""

    def __init__(self, key):
        self.key, self.work = key, None

    def submit(self, pool, base, *, config, durable):
        self.work = pool.submit(started_after_sleep, 0.1)


def started_after_sleep(seconds):
    import time

    start = time.monotonic()
    time.sleep(seconds)
    return start


@pytest.mark.parametrize("window", [None, 2])
def test_a_window_lets_other_jobs_start_between_the_lights(window):
    """With a window, a job sent once the first light is taken (a stack's run) starts
    before the last lights; without one every light is queued ahead of it."""
    from reduxd.lightjob import FanOut

    with ProcessPoolExecutor(max_workers=1) as pool:
        fan = FanOut(pool, reference=lambda key: "ref", config=None, durable=False,
                     window=window)  # fmt: skip
        jobs = [SleepJob("field") for _ in range(8)]
        for job in jobs:
            fan.add(job)
            assert len(fan.running) <= (window or 8)
        assert sum(job.work is not None for job in jobs) == (window or 8)
        taken = fan.ready(wait=True)
        other = pool.submit(started_after_sleep, 0.0)
        while fan.pending:
            taken += fan.ready(wait=True)
            assert len(fan.running) <= (window or 8)
        last = jobs[-1].work.result()
        assert taken == jobs and (other.result() < last) == (window is not None)


def test_a_window_of_one_with_lights_waiting_for_their_fields_first_light():
    """Lights of a new field wait for its first light, others are sent meanwhile (one
    at a time); all come back in the order they were added."""
    from reduxd.lightjob import FanOut

    with ProcessPoolExecutor(max_workers=2) as pool:
        fan = FanOut(pool, reference=lambda key: None if key == "new" else "ref", config=None,
                     durable=False, window=1)  # fmt: skip
        jobs = [SleepJob(key) for key in ("new", "new", "old", "new", "old", "old")]
        for job in jobs:
            fan.add(job)
        assert [job.work is not None for job in jobs] == [True] + [False] * 5
        taken = []
        while fan.pending:
            taken += fan.ready(wait=True)
            assert len(fan.running) <= 1
    assert taken == jobs


def test_lights_sorted_from_their_headers_are_not_read_again(tmp_path, light, monkeypatch):
    # reduxd reduce classifies every light while sorting the night (sort_frames): the
    # pipeline takes that FrameInfo, the same as its own reading of the header gives
    root, path, config = _copied(tmp_path, light)
    infos = {}
    _cal, lights = sort_frames([(root, path)], config, infos=infos)
    assert lights == [(root, path)]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger)
        row = ledger.observe(str(root), path.relative_to(root).as_posix(), size=1, mtime_ns=1)
        assert infos[path] == header_info(row, config)

        def read_again(*_args):
            raise AssertionError("header read again")

        monkeypatch.setattr(pipeline_module, "header_info", read_again)
        (outcome,) = pipeline.handle_many([(root, path)], pool=InProcess(), infos=infos)
    assert outcome.status == "reduced"
