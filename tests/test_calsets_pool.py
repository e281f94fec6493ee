"""Masters built in a process pool: the darks are combined beside the bias, not after it,
and the masters are those of a build in this process."""

import shutil
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from astropy.io import fits

from reduxd.config import load_config
from reduxd.pipeline import Pipeline
from reduxd.simulate import NightSpec, simulate_night
from reduxd.store import Ledger

FILE_SUMS = {"CHECKSUM", "DATASUM", "RDXBIASC", "RDXDARKC", "RDXDCURC"}  # sha1s of files


class WatchedPool(ProcessPoolExecutor):
    """A process pool that notes, at each submit, the kind and the masters already written."""

    def __init__(self, outdir, **kwargs):
        super().__init__(**kwargs)
        self.outdir = outdir
        self.submits = []

    def submit(self, fn, *args, **kwargs):
        written = sorted(p.name for p in self.outdir.rglob("*.fits"))
        self.submits.append((args[0] if fn.__name__ == "make_masters" else fn.__name__, written))
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    folder = tmp_path_factory.mktemp("night")
    simulate_night(folder, NightSpec.small(), workers=1)
    return folder


def _build(tmp_path, night, *, jobs):
    out = tmp_path / f"out{jobs}"
    config = load_config(None, {"paths": {"data": [str(night)], "outdir": str(out)}})
    paths = sorted((night / "calibration").rglob("*.fits"))
    pool = WatchedPool(out, max_workers=jobs) if jobs > 1 else None
    with Ledger(tmp_path / f"ledger{jobs}.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger, durable=False)
        for path in paths:
            assert pipeline.handle(path, night).status == "ingested"
        pipeline.flush(pool=pool)
    if pool is not None:
        pool.shutdown()
    masters = {p.name: p for p in (out / "masters").rglob("*.fits")}
    return masters, pool


def test_darks_start_with_the_bias_and_give_the_masters_of_a_serial_build(tmp_path, night):
    pooled, pool = _build(tmp_path, night, jobs=2)
    serial, _ = _build(tmp_path, night, jobs=1)
    kinds = [kind for kind, _written in pool.submits]
    assert kinds.count("dark") >= 2 and kinds.index("flat") > kinds.index("dark")
    assert kinds.count("flat_levels") == 2 * kinds.count("flat")  # levels in two halves
    assert kinds.index("flat_levels") > kinds.index("dark")
    for kind, written in pool.submits:
        if kind == "dark":  # submitted before any master was written: beside the bias
            assert written == []
    assert sorted(pooled) == sorted(serial)
    assert any(name.startswith("dark_current") for name in pooled)
    for name, path in pooled.items():
        with fits.open(path) as a, fits.open(serial[name]) as b:
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                if x.is_image:
                    np.testing.assert_array_equal(x.data, y.data)
                else:
                    assert x.data.tolist() == y.data.tolist()
                assert _cards(x.header) == _cards(y.header)


def test_flats_start_once_the_bias_and_the_dark_of_their_exposure_are_written(tmp_path, night):
    pooled, pool = _build(tmp_path, night, jobs=2)
    first = next(written for kind, written in pool.submits if kind == "flat_levels")
    flat_dark = [n for n in pooled if n.startswith("dark_") and n.endswith("_2s.fits")]
    light_dark = [n for n in pooled if n.startswith("dark_") and n.endswith("_15s.fits")]
    assert flat_dark and light_dark
    assert any(n.startswith("bias_") for n in first) and set(flat_dark) <= set(first)
    assert not set(light_dark) & set(first)  # the 15 s dark is not waited for


def test_flats_without_a_dark_of_their_exposure_wait_for_the_dark_current(tmp_path, night):
    partial = tmp_path / "night"
    shutil.copytree(night / "calibration", partial / "calibration",
                    ignore=lambda folder, names: [n for n in names if n == "darks_2"])  # fmt: skip
    pooled, pool = _build(tmp_path, partial, jobs=2)
    serial, _ = _build(tmp_path, partial, jobs=1)
    first = next(written for kind, written in pool.submits if kind == "flat_levels")
    assert any(n.startswith("dark_current_") for n in first)  # bias + dark current * t
    for name, path in pooled.items():
        np.testing.assert_array_equal(fits.getdata(path), fits.getdata(serial[name]))


def _cards(header):
    return [(c.keyword, c.value) for c in header.cards if c.keyword not in FILE_SUMS]


def _cached_sum(record):
    from reduxd import reduce

    return float(reduce._WORKER_CACHE.get(record).sum(dtype=np.float64))


def test_masters_built_are_served_from_memory_here_and_in_forked_workers(tmp_path, night):
    out = tmp_path / "out"
    config = load_config(None, {"paths": {"data": [str(night)], "outdir": str(out)}})
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger, durable=False)
        for path in sorted((night / "calibration").rglob("*.fits")):
            pipeline.handle(path, night)
        pipeline.flush()
        records = ledger.masters()
        expected = {r.path: fits.getdata(r.path).astype(np.float32) for r in records}
        for r in records:  # the files are gone: only memory can answer
            (out / "gone").mkdir(exist_ok=True)
            (out / r.path).rename(out / "gone" / f"{r.id}.fits")
        assert {r.kind for r in records} == {"bias", "dark", "dark_current", "flat"}
        for r in records:
            np.testing.assert_array_equal(pipeline.cache.get(r), expected[r.path])
        pipeline.cache.share_with_workers()
        with ProcessPoolExecutor(max_workers=1) as pool:
            sums = list(pool.map(_cached_sum, records))
    assert sums == [float(expected[r.path].sum(dtype=np.float64)) for r in records]


def test_a_build_reads_its_frames_layouts_from_their_ingest_unless_a_file_changed(
    tmp_path, night, monkeypatch
):
    from reduxd import calsets

    frames = tmp_path / "night"
    shutil.copytree(night / "calibration", frames / "calibration")
    out = tmp_path / "out"
    config = load_config(None, {"paths": {"data": [str(frames)], "outdir": str(out)}})
    probed = []
    probe = calsets.probe
    monkeypatch.setattr(calsets, "probe", lambda path, **k: probed.append(path) or probe(path, **k))
    paths = sorted((frames / "calibration").rglob("*.fits"))
    biases = [p for p in paths if "bias" in str(p.relative_to(frames))]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger, durable=False)
        for path in paths:
            assert pipeline.handle(path, frames).status == "ingested"
        changed = biases[0]
        with fits.open(changed) as hdul:  # the same frame, written again after its ingest
            data, header = hdul[0].data.copy(), hdul[0].header.copy()
        header["HISTORY"] = "written again"
        fits.PrimaryHDU(data, header).writeto(changed, overwrite=True)
        pipeline.flush()
        assert ledger.masters()
    assert probed == [str(changed)]
