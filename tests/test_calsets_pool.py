"""Masters built in a process pool: the darks are combined beside the bias, not after it,
and the masters are those of a build in this process."""

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
        self.submits.append((args[0], written))
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


def _cards(header):
    return [(c.keyword, c.value) for c in header.cards if c.keyword not in FILE_SUMS]
