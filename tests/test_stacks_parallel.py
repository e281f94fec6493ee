"""Stacks summed in chunks, in worker processes or not: fast reading, same pixels, same files."""

import pickle
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from fitsverify import assert_valid

from reduxd import fitsio, maskbits
from reduxd.config import load_config
from reduxd.errors import FrameIncomplete, FrameRejected
from reduxd.framemeta import FrameMeta
from reduxd.outcomes import Outcome
from reduxd.products import stacks
from reduxd.steps.stack import StackAccumulator
from reduxd.synth import render_stars

SHAPE = (120, 150)  # (ny, nx)
N_LIGHTS = 2 * stacks.CHUNK + 7  # three chunks, the last one short
STARS_X = np.array([30.0, 75.0, 110.0, 50.0, 125.0])
STARS_Y = np.array([25.0, 60.0, 90.0, 95.0, 30.0])
STARS_FLUX = np.array([4e4, 2e4, 1.5e4, 1e4, 8e3])


# -- reading ---------------------------------------------------------------------------


def test_read_images_reads_our_lights_and_astropy_files(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.normal(100, 5, SHAPE).astype(np.float32)
    image[3, 4] = np.nan
    mask = (rng.random(SHAPE) < 0.01).astype(np.uint8) * maskbits.BAD
    header = fits.Header({"OBJECT": "m1", "EXPTIME": 30.0})
    ours = tmp_path / "ours.fits"
    fitsio.write_images_atomic(ours, [(image, header, None), (mask, None, "MASK")])
    theirs = tmp_path / "theirs.fits"
    fits.HDUList([fits.PrimaryHDU(image, header), fits.ImageHDU(mask, name="MASK")]).writeto(theirs)
    for path in (ours, theirs):
        (h0, d0), (h1, d1) = fitsio.read_images(path, max_bytes=1 << 20)
        assert d0.dtype == np.float32 and d0.dtype.isnative and d0.flags.writeable
        np.testing.assert_array_equal(d0, image)
        assert d1.dtype == np.uint8 and d1.flags.writeable
        np.testing.assert_array_equal(d1, mask)
        assert h0["OBJECT"] == "m1" and h1["EXTNAME"] == "MASK"
        assert stacks._read_light(path, 1 << 20)[2] is not None


def test_read_images_scaled_integers_tables_and_no_mask(tmp_path):
    raw = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000  # astropy: int16 + BZERO
    table = fits.BinTableHDU.from_columns([fits.Column("a", "J", array=np.arange(3))])
    path = tmp_path / "u16.fits"
    fits.HDUList([fits.PrimaryHDU(raw), table, fits.ImageHDU(raw.astype(np.int32))]).writeto(path)
    (_, d0), (h1, d1), (_, d2) = fitsio.read_images(path, max_bytes=1 << 20)
    assert d0.dtype == np.float32 and d0.max() == 55000.0
    np.testing.assert_array_equal(d0, raw)
    assert h1["XTENSION"] == "BINTABLE" and d1 is None
    assert d2.dtype == np.int32 and d2.dtype.isnative
    _header, data, mask = stacks._read_light(path, 1 << 20)
    assert data.dtype == np.float32 and mask is None  # no MASK extension


def test_read_images_refuses_truncated_and_oversized_files(tmp_path):
    path = tmp_path / "light.fits"
    image = np.ones(SHAPE, np.float32)
    fitsio.write_images_atomic(path, [(image, None, None), (image.astype(np.uint8), None, "MASK")])
    whole = path.read_bytes()
    with pytest.raises(FrameRejected, match="over the limit"):
        fitsio.read_images(path, max_bytes=image.nbytes - 1)
    with pytest.raises(FrameRejected, match="over the limit"):
        fitsio.read_images(path, max_bytes=1000)  # the file itself, before reading it
    path.write_bytes(whole[: len(whole) - 2 * fitsio.BLOCK])
    with pytest.raises(FrameIncomplete, match="truncated"):
        fitsio.read_images(path, max_bytes=1 << 20)
    path.write_bytes(whole[:100])
    with pytest.raises(FrameIncomplete):
        fitsio.read_images(path, max_bytes=1 << 20)
    with pytest.raises(FrameIncomplete, match="cannot read"):
        fitsio.read_images(tmp_path / "missing.fits", max_bytes=1 << 20)


# -- a night of reduced lights, without running the pipeline -------------------------


class FakeLedger:
    def __init__(self, rows):
        self.rows = rows

    def frames(self, kind=None, state=None):
        return list(self.rows)


def make_night(tmp_path, n=N_LIGHTS, seed=2):
    """Reduced lights (ours: float32 + MASK) with offsets in the ledger, and a pipeline."""
    rng = np.random.default_rng(seed)
    outdir = tmp_path / "out"
    rows = []
    for i in range(n):
        dx, dy = rng.uniform(-5, 5, size=2)
        image = render_stars(SHAPE, STARS_X + dx, STARS_Y + dy, STARS_FLUX, 3.0) + 200.0
        image = (image + rng.normal(0, 6, SHAPE)).astype(np.float32)
        mask = np.zeros(SHAPE, np.uint8)
        mask[rng.integers(0, SHAPE[0], 20), rng.integers(0, SHAPE[1], 20)] = maskbits.BAD
        image[mask != 0] = 6e4
        header = fits.Header({"INSTRUME": "cam", "OBJECT": "field", "EXPTIME": 10.0})
        relpath = f"night/light_{i:03d}.fits"
        fitsio.write_images_atomic(
            outdir / "reduced" / relpath, [(image, header, None), (mask, None, "MASK")]
        )
        info = FrameMeta(object="field", filter="V", gain=100, exptime=10.0,
                         version=1, offset=(float(dx), float(dy)))  # fmt: skip
        rows.append(SimpleNamespace(relpath=relpath, info=info))
    config = load_config(None, {"paths": {"outdir": str(outdir)}})
    pipeline = SimpleNamespace(
        outdir=outdir, config=config, ledger=FakeLedger(rows), durable=False,
        reference=lambda key: None,
    )  # fmt: skip
    return pipeline


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return make_night(tmp_path_factory.mktemp("stacks"))


def single_accumulator(pipeline):
    acc = StackAccumulator()
    for row in pipeline.ledger.rows:
        with fits.open(pipeline.outdir / "reduced" / row.relpath) as hdul:
            acc.add(hdul[0].data.astype(np.float32), hdul["MASK"].data, dx=row.info["offset"][0],
                    dy=row.info["offset"][1])  # fmt: skip
    return acc


def written(path):
    with fits.open(path) as hdul:
        return hdul[0].header.copy(), hdul[0].data.copy(), hdul["COUNT"].data.copy()


def test_stack_chunk_result_pickles(night):
    items = [
        (str(night.outdir / "reduced" / r.relpath), *r.info["offset"])
        for r in night.ledger.rows[:4]
    ]
    run = pickle.loads(pickle.dumps(stacks.stack_chunk(items, 1 << 24)))
    assert run.acc.n_frames == 4 and run.acc.shape == SHAPE
    assert stacks.stack_chunk([], 1 << 24).acc.n_frames == 0


def test_same_stack_with_and_without_a_pool(night, tmp_path):
    paths = stacks.write_stacks(night)
    assert [p.name for p in paths] == ["stack_field_V_g100_10s.fits"]
    header, data, count = written(paths[0])
    csv = stacks.photometry_path(paths[0]).read_bytes()
    assert header["NCOMBINE"] == N_LIGHTS and header["RDXKIND"] == "stack"
    assert count.dtype.newbyteorder("=") == np.int32 and count.max() == N_LIGHTS
    assert_valid(paths[0])

    for path in [*paths, stacks.photometry_path(paths[0])]:
        path.unlink()
    (group,) = stacks.start_stacks(night, None).groups  # what write_stacks ran inline
    assert [len(c) for c in group.chunks] == [stacks.CHUNK, stacks.CHUNK, 7]
    with ProcessPoolExecutor(2) as pool:
        pending = stacks.start_stacks(night, pool)
        (group,) = pending.groups
        assert len(group.chunks) == 3 and all(isinstance(c, Future) for c in group.chunks)
        assert stacks.finish_stacks(night, pending) == paths
    header2, data2, count2 = written(paths[0])
    np.testing.assert_array_equal(data2, data)  # bit for bit, NaN included
    np.testing.assert_array_equal(count2, count)
    assert stacks.photometry_path(paths[0]).read_bytes() == csv
    assert header2 == header  # cards included (CHECKSUM: same data, same header)

    reference, ref_count, _ = single_accumulator(night).result()
    np.testing.assert_array_equal(count, ref_count)
    np.testing.assert_allclose(data, reference, rtol=2e-7, atol=0)


def committed(pipeline, changed=None):
    """The outcomes of the night's lights as a batch commits them (``changed``:
    ``{index: offset}`` to say a light was committed with another offset)."""
    out = []
    for i, row in enumerate(pipeline.ledger.rows):
        info = row.info if i not in (changed or {}) else row.info.updated(offset=changed[i])
        out.append(Outcome(row.relpath, "reduced", kind="light", info=info))
    return out


def early_runs(pipeline, pool, outcomes, n_lights=N_LIGHTS):
    early = stacks.EarlyRuns(pipeline.outdir, pool, n_lights=n_lights, max_bytes=1 << 24,
                             rules=pipeline.config.classify)  # fmt: skip
    failed = Outcome("night/failed.fits", "failed", kind="light")
    for outcome in [failed, *outcomes]:
        early.offer(outcome)
    return early


def test_runs_started_early_are_taken_and_the_stack_is_the_same(night):
    (path,) = stacks.write_stacks(night)
    before = path.read_bytes(), stacks.photometry_path(path).read_bytes()
    path.unlink()
    with ProcessPoolExecutor(2) as pool:
        early = early_runs(night, pool, committed(night))
        started = list(early.jobs.values())
        assert len(started) == 2  # the full runs; the short last one is cut at the end
        pending = stacks.start_stacks(night, pool, early=early)
        (group,) = pending.groups
        assert group.chunks[:2] == started and group.chunks[2] not in started
        assert early.jobs == {}
        assert stacks.finish_stacks(night, pending) == [path]
    assert (path.read_bytes(), stacks.photometry_path(path).read_bytes()) == before


def test_a_run_whose_lights_changed_is_stacked_again(night):
    (path,) = stacks.write_stacks(night)
    before = path.read_bytes()
    path.unlink()
    with ProcessPoolExecutor(2) as pool:
        early = early_runs(night, pool, committed(night, changed={3: (9.0, -9.0)}))
        stale = list(early.jobs.values())
        pending = stacks.start_stacks(night, pool, early=early)
        (group,) = pending.groups
        assert group.chunks[0] is not stale[0] and group.chunks[1] is stale[1]
        assert early.jobs == {}  # the stale job dropped (cancelled, or done and unused)
        stacks.finish_stacks(night, pending)
    assert path.read_bytes() == before


def test_no_early_runs_without_a_pool_or_when_runs_could_be_longer(night):
    assert early_runs(night, None, committed(night)).jobs == {}
    longest = stacks.MAX_CHUNKS * stacks.CHUNK
    pool = RecordingPool()
    assert early_runs(night, pool, committed(night), n_lights=longest + 1).jobs == {}
    assert early_runs(night, pool, committed(night), n_lights=longest).jobs != {}


class RecordingPool:
    def __init__(self):
        self.submitted = []

    def submit(self, fn, *args):
        self.submitted.append(args)
        future = Future()
        future.set_result(fn(*args))
        return future


def test_unchanged_stack_submits_nothing(tmp_path):
    pipeline = make_night(tmp_path, n=5)
    pool = RecordingPool()
    (path,) = stacks.write_stacks(pipeline, pool)
    assert len(pool.submitted) == 1
    before = path.stat().st_mtime_ns, path.read_bytes()
    pool = RecordingPool()
    pending = stacks.start_stacks(pipeline, pool)
    assert pool.submitted == []
    assert stacks.finish_stacks(pipeline, pending) == [path]
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before

    row = pipeline.ledger.rows[2]
    row.info = row.info.updated(offset=(9.0, -9.0))  # an input changed: stacked again
    pool = RecordingPool()
    assert stacks.write_stacks(pipeline, pool) == [path]
    assert len(pool.submitted) == 1 and fits.getval(path, "NCOMBINE") == 5
    assert path.read_bytes() != before[1]


def test_groups_without_lights_on_disk_are_skipped(tmp_path):
    pipeline = make_night(tmp_path, n=3)
    for row in pipeline.ledger.rows:
        (pipeline.outdir / "reduced" / row.relpath).unlink()
    pending = stacks.start_stacks(pipeline, None)
    assert pending.groups == [] and stacks.finish_stacks(pipeline, pending) == []
    assert not Path(pipeline.outdir / "stacks").exists()


def test_unreadable_light_raises_and_keeps_the_pool_usable(tmp_path):
    pipeline = make_night(tmp_path, n=4)
    light = pipeline.outdir / "reduced" / pipeline.ledger.rows[1].relpath
    light.write_bytes(light.read_bytes()[:5000])
    with ProcessPoolExecutor(2) as pool:
        pending = stacks.start_stacks(pipeline, pool)
        with pytest.raises(FrameIncomplete, match=r"light_001\.fits.*truncated"):
            stacks.finish_stacks(pipeline, pending)
        assert pool.submit(abs, -3).result() == 3  # the worker's error did not break the pool
    with pytest.raises(FrameIncomplete, match="truncated"):
        stacks.write_stacks(pipeline)
    assert not (pipeline.outdir / "stacks").exists()
