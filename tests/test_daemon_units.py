"""The daemon's parts in-process (reconciliation, set-aside files, watchdog feeding), and
the fixes made in other modules while proving the service (each with its reason)."""

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from reduxd.config import load_config
from reduxd.daemon import Service
from reduxd.fitsio import add_cards
from reduxd.pipeline import WAITING, Pipeline
from reduxd.simulate import Night, NightSpec, simulate_night
from reduxd.store import Ledger
from reduxd.watch.stability import StabilityTracker
from reduxd.watch.watcher import Watcher


def _config(tmp_path, root, **watch):
    return load_config(
        None,
        {
            "paths": {"data": [str(root)], "outdir": str(tmp_path / "out")},
            "calibration": {"force": True},
            "photometry": {"radius": 8.0},
            "output": {"quicklook": False, "stack": False},
            "watch": {"observer": "polling", "settle_seconds": 0.0, **watch},
        },
    )


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A small simulated night (read-only: copy what you need)."""
    path = tmp_path_factory.mktemp("night")
    simulate_night(path, NightSpec.small(), workers=1)
    return path


def _lights(night):
    return sorted(p for p in night.rglob("*.fits") if p.is_relative_to(night / "pg2213"))


# -- reconciliation -------------------------------------------------------------------


def _put(root, name, data=b"x" * 2880):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_reconcile_hands_on_only_what_the_ledger_does_not_account_for(tmp_path):
    root = tmp_path / "raw"
    done = _put(root, "a/done.fits")
    new = _put(root, "a/new.fits")
    changed = _put(root, "a/changed.fits")
    retry = _put(root, "a/retry.fits")
    waiting = _put(root, "a/waiting.fits")
    failed = _put(root, "a/failed.fits")
    config = _config(tmp_path, root)
    service = Service(config)
    watcher = Watcher([root], observer="polling")
    tracker = StabilityTracker(settle_seconds=0.0)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:

        def observe(path, state, error=None):
            st = path.stat()
            row = ledger.observe(str(root), path.relative_to(root).as_posix(),
                                 size=st.st_size, mtime_ns=st.st_mtime_ns)  # fmt: skip
            ledger.begin(row.id)
            if state == "done":
                ledger.finish(row.id, kind="light", checksum="c")
            elif state == "seen":
                ledger.fail(row.id, error, max_tries=3)
            elif state == "failed":
                ledger.fail(row.id, error, max_tries=1)
            if error and error.startswith(WAITING):  # as the pipeline records it
                ledger.defer(row.id, error, state="waiting")

        observe(done, "done")
        observe(changed, "done")
        observe(retry, "seen", "ValueError: once")
        observe(waiting, "seen", f"{WAITING}: no flat in V")
        observe(failed, "failed", "ValueError: always")
        changed.write_bytes(b"y" * 5760)  # rewritten after it was reduced
        n = service._reconcile(ledger, tracker, watcher)
        assert n == 3
        assert {p for p in (done, new, changed, retry, waiting, failed) if p in tracker} == {
            new,
            changed,
            retry,
        }
        assert service._reconcile(ledger, tracker, watcher) == 0  # already tracked
        shutil.rmtree(root)
        assert service._reconcile(ledger, StabilityTracker(), watcher) == 0  # root gone


def test_file_that_breaks_handling_is_set_aside_until_it_changes(tmp_path, night):
    """A file name SQLite cannot store (not UTF-8) made ``handle`` raise: before, the
    exception killed the service, and it crash-looped on the same file after each restart."""
    root = tmp_path / "raw"
    root.mkdir()
    light = _lights(night)[0]
    bad = os.path.join(os.fsencode(root), b"M51_\xff.fits")
    shutil.copyfile(light, bad)
    good = root / "ok.fits"
    shutil.copy2(light, good)
    config = _config(tmp_path, root)
    service = Service(config)
    watcher = service.watcher = Watcher([root], observer="polling")
    tracker = StabilityTracker(settle_seconds=0.0)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger)
        assert service._reconcile(ledger, tracker, watcher) == 2
        assert service._reduce_settled(pipeline, tracker, watcher)
        assert service.counts == {"quarantined": 1, "reduced": 1}  # refused, with the reason
        assert ledger.counts()["done"] == 1
        assert service._reconcile(ledger, tracker, watcher) == 0  # not retried...
        with open(bad, "ab") as fh:
            fh.write(b"\0" * 2880)
        assert service._reconcile(ledger, tracker, watcher) == 1  # ...until it changes


def test_watchdog_fed_between_frames_of_a_long_run(tmp_path, night, monkeypatch):
    """The pipeline calls back before each frame (also inside tick's re-reductions), so
    a long re-reduction does not starve systemd's watchdog; never while unhealthy."""
    pings = []
    monkeypatch.setattr("reduxd.daemon.notify.watchdog", lambda: pings.append(1) or True)
    root = tmp_path / "raw"
    shutil.copytree(night / "pg2213", root / "pg2213")
    clock = [0.0]
    config = _config(tmp_path, root)
    service = Service(config, clock=lambda: clock[0])
    service.watcher = Watcher([root], observer="polling")
    service.watcher.start(catch_up=False)
    seen = []
    try:
        with Ledger(tmp_path / "ledger.sqlite") as ledger:
            pipeline = Pipeline(
                config,
                ledger=ledger,
                progress=lambda rel: seen.append(rel) or service._progress(rel),
            )
            for path in _lights(root):
                clock[0] += 2.0  # each frame "takes" 2 s
                pipeline.handle(path, root)
            assert len(seen) == len(pings) == len(_lights(root))
            service.watcher.stop()  # observer dead, root still there: no ping
            pipeline.handle(_lights(root)[0], root)  # skipped: never reaches _process
            clock[0] += 2.0
            service._progress("x")
            assert len(pings) == len(_lights(root))
    finally:
        service.watcher.stop()


# -- fixes in other modules -----------------------------------------------------------


def _float_light(tmp_path, night):
    """A float32 light (as MaxIm DL or NINA can save): BITPIX=-32, saturation infinite."""
    frame = next(f for f in Night(NightSpec.small()).frames(workers=1) if f.kind == "light")
    header = fits.Header()
    for key, value, comment in frame.cards:
        if key not in ("SIMPLE", "BSCALE", "BZERO", "EXTEND"):
            header[key] = (value, comment)
    path = tmp_path / "raw" / "pg2213" / "float" / "light_f32.fits"
    path.parent.mkdir(parents=True)
    fits.PrimaryHDU(frame.data.astype(np.float32), header).writeto(path)
    return path


def test_float32_light_is_reduced_once(tmp_path, night):
    """fitsio.add_cards: RDXSATUR=inf made writing the calibrated light raise *after* the
    rows were committed, so the light was failed, retried and measured max_tries times."""
    path = _float_light(tmp_path, night)
    root = tmp_path / "raw"
    config = _config(tmp_path, root)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger)
        outcome = pipeline.handle(path, root)
        assert outcome.status == "reduced" and outcome.n_stars > 5
        assert pipeline.handle(path, root).status == "skipped"
        assert ledger.counts()["done"] == 1
        assert {m.version for m in ledger.measurements(current_only=False)} == {1}
    reduced = tmp_path / "out" / "reduced" / path.relative_to(root)
    header = fits.getheader(reduced)
    assert header["RDXSATUR"] is None  # undefined value
    assert "inf" in header.comments["RDXSATUR"]


def test_add_cards_non_finite():
    header = add_cards(fits.Header(), [("A", float("nan"), "x"), ("B", np.float32(np.inf), "")])
    assert header["A"] is None and "nan" in header.comments["A"]  # FITS: undefined value
    assert header["B"] is None
    fits.PrimaryHDU(header=header).writeto(Path(os.devnull), output_verify="exception",
                                           overwrite=True)  # fmt: skip


def test_products_failure_does_not_redo_a_committed_light(tmp_path, night, caplog):
    """pipeline._light: products are written before the rows are committed (a light the
    ledger calls done has its products); a failure there (a path blocked) commits
    nothing, so the retry measures the light once: one version, no duplicate rows."""
    root = tmp_path / "raw"
    light = _lights(night)[0]
    path = root / light.relative_to(night)
    path.parent.mkdir(parents=True)
    shutil.copy2(light, path)
    config = _config(tmp_path, root)
    (tmp_path / "out").mkdir()
    blocker = tmp_path / "out" / "reduced"
    blocker.write_text("a file where the folder should be")
    caplog.set_level(logging.ERROR)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger)
        outcome = pipeline.handle(path, root)
        assert outcome.status == "failed" and "reduced" in outcome.reason
        assert ledger.measurements(current_only=False) == []
        blocker.unlink()
        assert pipeline.handle(path, root).status == "reduced"
        row = ledger.frame(root=str(root), relpath=path.relative_to(root).as_posix())
        assert row.state == "done" and row.attempts == 2
        assert pipeline.handle(path, root).status == "skipped"
        assert {m.version for m in ledger.measurements(current_only=False)} == {1}
