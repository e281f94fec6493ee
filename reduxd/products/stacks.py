"""Stacked lights: per (object, filter, gain, exposure), the aligned mean of its lights.

Each stack has its own photometry: the field's stars measured on the stack with
the same photometry step and options as single lights, against the field's
reference (so star IDs are the field's). The stack is the *mean* of N lights,
so its fluxes and ``mag_inst`` are per light (comparable with single frames);
the errors use the effective gain ``N * gain`` and read noise ``sqrt(N) * rn``
of a mean of N frames.

Files, under ``<outdir>/stacks/``::

    stack_<object>_<filter>_g<gain>_<exptime>s.fits             mean (primary), COUNT
    stack_<object>_<filter>_g<gain>_<exptime>s_photometry.csv   one row per star

A stack is rewritten only when its lights (their reduction versions and
offsets) or the photometry options changed (``RDXSTSIG`` card), so running
``reduxd reduce`` again leaves the files as they are.

The summing can run in worker processes while the caller does something else::

    pending = start_stacks(pipeline, pool)   # jobs submitted to the pool
    ...                                      # e.g. write the light curves
    paths = finish_stacks(pipeline, pending)  # merge, photometry, write

Each group's lights are summed in runs (in the ledger's order; their length,
:func:`chunk_size`, depends on the number of lights only), one job per run
(:func:`stack_chunk`), and the runs are merged in their order: the stack is the
same, bit for bit, whatever the pool and its size (``pool=None`` computes the
same runs in :func:`finish_stacks`). :func:`write_stacks` does both steps at once.
A batch starts the runs it can foresee while its lights are still being reduced
(:class:`EarlyRuns`); :func:`start_stacks` takes those whose lights are the run's.
"""

import csv
import dataclasses
import hashlib
import io
import json
import math
from collections import defaultdict
from concurrent.futures import Future
from datetime import UTC, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from reduxd import maskbits
from reduxd.errors import FrameRejected
from reduxd.files import atomic_write
from reduxd.fitsio import add_cards, clean_header, read_images, write_images_atomic
from reduxd.frames import classify
from reduxd.log import get_logger
from reduxd.photparams import phot_params
from reduxd.products.finder import finder_path, read_ensemble, write_finder
from reduxd.products.lightcurve import lightcurve_paths
from reduxd.products.naming import gain_label, reduced_path, safe_name, value_word
from reduxd.schema import STACK_NAMES
from reduxd.steps.photometry import photometer
from reduxd.steps.stack import StackAccumulator

log = get_logger("reduxd.stacks")

STACK_PHOT_COLUMNS = STACK_NAMES  # see reduxd.schema
_FORMAT = {"x": ".3f", "y": ".3f"}


def stack_name(obj, filt, gain, exptime):
    """Base name (no extension) of the stack of one group.

    Examples
    --------
    >>> stack_name("pg2213", "V", 150.0, 15.0), stack_name("m 13", None, None, 2)
    ('stack_pg2213_V_g150_15s', 'stack_m_13_none_gnone_2s')
    """
    return f"stack_{safe_name(obj)}_{safe_name(filt)}_{gain_label(gain)}_{value_word(exptime)}s"


def photometry_path(fits_path):
    """The photometry CSV written next to a stack FITS."""
    fits_path = Path(fits_path)
    return fits_path.with_name(fits_path.name.removesuffix(".fits") + "_photometry.csv")


def stack_groups(ledger):
    """Group the current reduced lights by (object, filter, gain, exposure)."""
    groups = defaultdict(list)
    for row in ledger.frames(kind="light", state="done"):
        info = row.info
        if info.excluded is not None or info.offset is None:
            continue
        key = (info.object, info.filter, info.gain, info.exptime)
        groups[key].append(row)
    return groups


def _signature(rows, params):
    members = sorted(
        (r.relpath, r.info.version, [round(float(v), 3) for v in r.info.offset]) for r in rows
    )
    text = json.dumps([members, repr(params)], default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def _unchanged(path, signature):
    if not path.exists() or not photometry_path(path).exists():
        return False
    try:
        return fits.getheader(path).get("RDXSTSIG") == signature
    except (OSError, ValueError):
        return False


# Lights per stacking job: CHUNK, more in groups of over MAX_CHUNKS * CHUNK lights (each
# job's result, a float64 frame, waits in memory for finish_stacks). Set by the number of
# lights only, never by the pool, so that the sums do not depend on the pool.
CHUNK = 25
MAX_CHUNKS = 16


def chunk_size(n_lights):
    """Lights per job in a group of ``n_lights``.

    Examples
    --------
    >>> chunk_size(10), chunk_size(400), chunk_size(401), chunk_size(1000)
    (25, 25, 26, 63)
    """
    return max(CHUNK, -(-n_lights // MAX_CHUNKS))


@dataclasses.dataclass
class _Group:
    """One stack to write: where, its inputs, and its chunks (futures or item lists)."""

    key: tuple
    path: Path
    header: fits.Header
    params: object
    signature: str
    chunks: list = dataclasses.field(default_factory=list)
    unchanged: bool = False
    merged: object = None  # (mean, count, cards, n_frames) of its runs, once measure_stacks ran
    measured: object = None  # StackMeasured, or its future
    error: object = None  # what stopped measure_stacks at this group


@dataclasses.dataclass
class PendingStacks:
    """What :func:`start_stacks` started, for :func:`finish_stacks` (opaque)."""

    groups: list
    max_bytes: int
    rules: object = None  # config.classify: the lights' dates (span_cards)


@dataclasses.dataclass
class Run:
    """A run of lights stacked by :func:`stack_chunk`: their sum, and the
    ``(start, end, mid)`` times of each one with a start time, in order."""

    acc: StackAccumulator
    spans: list


def stack_chunk(items, max_bytes, rules=None):
    """Stack a run of reduced lights; return its :class:`Run` (worker job).

    Parameters
    ----------
    items : list of (str, float, float)
        ``(path, dx, dy)`` of each reduced light (primary image + ``MASK``), in order.
    max_bytes : int
        Largest image size read (``config.reading.max_bytes``).
    rules : reduxd.config.ClassifyRules, optional
        How the lights' headers are classified (their times, :func:`light_span`).

    Module level and with plain arguments, so that it runs in a process pool; the
    run pickles (numpy arrays) back to the caller.

    Raises
    ------
    FrameIncomplete, FrameRejected
        A light cannot be read (missing, truncated, not FITS); they pickle, so a
        worker's error reaches the caller and the pool stays usable.
    """
    run = Run(StackAccumulator(), [])
    for path, dx, dy in items:
        header, data, mask = _read_light(path, max_bytes)
        run.acc.add(data, mask, dx=dx, dy=dy)
        span = light_span(header, path, rules)
        if span is not None:
            run.spans.append(span)
    return run


def _read_light(path, max_bytes):
    """A reduced light's primary header, float32 image and ``MASK`` (None without one)."""
    hdus = read_images(path, max_bytes=max_bytes)
    if hdus[0][1] is None:
        raise FrameRejected(path, "no image in the primary HDU")
    masks = [
        image
        for header, image in hdus[1:]
        if image is not None and str(header.get("EXTNAME", "")).strip().upper() == "MASK"
    ]
    return hdus[0][0], hdus[0][1].astype(np.float32, copy=False), (masks[0] if masks else None)


def light_span(header, path, rules=None):
    """``(start, end, mid)`` UTC datetimes of a reduced light, from its header
    (classified as its raw frame was); None without a start time."""
    info = classify(header, path, rules)
    if info.date_obs is None:
        return None
    end = info.date_obs + timedelta(seconds=float(info.exptime or 0.0))
    return info.date_obs, end, info.date_mid or info.date_obs


class EarlyRuns:
    """Stacking runs started while a batch still reduces its lights.

    :meth:`offer` each light's outcome as it is committed (in order): every
    ``CHUNK`` reduced lights of a group are a run, sent to ``pool`` at once.
    :func:`start_stacks` takes a job whose run is exactly one it cuts (the same
    lights, offsets and reduction versions, in the same order), so the stack is the
    same as without; :meth:`cancel` drops the others. Off (nothing sent) without a
    pool, or when a group could be long enough for its runs to be longer than
    ``CHUNK`` (:func:`chunk_size` of ``n_lights``, the batch's number of lights).

    Examples
    --------
    >>> EarlyRuns("out", None, n_lights=10, max_bytes=1 << 20).on
    False
    """

    def __init__(self, outdir, pool, *, n_lights, max_bytes, rules=None):
        self.outdir, self.pool, self.max_bytes, self.rules = Path(outdir), pool, max_bytes, rules
        self.on = pool is not None and chunk_size(n_lights) == CHUNK
        self.lights = defaultdict(list)  # group -> [((path, dx, dy), version)] not in a run
        self.jobs = {}  # (a run's items, their versions) -> its job

    def offer(self, outcome):
        """Note a committed light (an ``Outcome``); send its group's run when full."""
        info = outcome.info
        if not self.on or outcome.status != "reduced" or info is None or info.offset is None:
            return
        lights = self.lights[(info.object, info.filter, info.gain, info.exptime)]
        path = str(reduced_path(self.outdir, outcome.path))
        lights.append(((path, *map(float, info.offset)), info.version))
        if len(lights) == CHUNK:
            items, versions = zip(*lights, strict=True)
            lights.clear()
            job = self.pool.submit(stack_chunk, list(items), self.max_bytes, self.rules)
            self.jobs[items, versions] = job

    def take(self, items, versions):
        """The job started for the run ``items`` (``(path, dx, dy)``) of the lights'
        reductions ``versions``, or None."""
        return self.jobs.pop((tuple(items), tuple(versions)), None)

    def cancel(self):
        """Cancel the jobs not taken (one still running finishes, unused)."""
        for job in self.jobs.values():
            job.cancel()
        self.jobs.clear()


def start_stacks(pipeline, pool=None, *, early=None):
    """Start stacking every group whose stack is out of date; return a pending object.

    Each group's lights are cut into runs of :func:`chunk_size` in their order,
    each run stacked by :func:`stack_chunk`: submitted to ``pool`` (a
    ``concurrent.futures`` executor) now, or without a pool run in
    :func:`finish_stacks`. Groups whose stack is up to date (``RDXSTSIG``) are
    not stacked again. Pass the result to :func:`finish_stacks`, once.

    Parameters
    ----------
    pipeline : reduxd.pipeline.Pipeline
        Its ledger, config, output folder.
    pool : concurrent.futures.Executor, optional
        A process pool; None: no work now.
    early : EarlyRuns, optional
        Runs started while the lights were reduced: each taken if it is one of
        the runs cut here, else done again.

    Returns
    -------
    PendingStacks
    """
    max_bytes, rules = pipeline.config.reading.max_bytes, pipeline.config.classify
    groups = []
    for (obj, filt, gain, exptime), rows in sorted(
        stack_groups(pipeline.ledger).items(), key=lambda kv: str(kv[0])
    ):
        rows = [r for r in rows if reduced_path(pipeline.outdir, r.relpath).exists()]
        if not rows:
            continue
        path = pipeline.outdir / "stacks" / f"{stack_name(obj, filt, gain, exptime)}.fits"
        header = _first_header(reduced_path(pipeline.outdir, rows[0].relpath))
        camera = pipeline.config.camera(str(header.get("INSTRUME", "")).strip(), gain)
        base = phot_params(pipeline.config, camera)
        signature = _signature(rows, base)
        group = _Group((obj, filt, gain, exptime), path, header, base, signature)
        groups.append(group)
        if _unchanged(path, signature):
            group.unchanged = True
            continue
        items = [
            (str(reduced_path(pipeline.outdir, r.relpath)), *map(float, r.info.offset))
            for r in rows
        ]
        size = chunk_size(len(items))
        for k in range(0, len(items), size):
            chunk = items[k : k + size]
            versions = [r.info.version for r in rows[k : k + size]]
            job = early.take(chunk, versions) if early is not None else None
            if job is None and pool is not None:
                job = pool.submit(stack_chunk, chunk, max_bytes, rules)
            group.chunks.append(chunk if job is None else job)
    if early is not None:
        early.cancel()
    return PendingStacks(groups, max_bytes, rules)


def measure_stacks(pipeline, pending, pool=None):
    """Merge each stack's runs (waiting for them) and measure and write it: its FITS and
    photometry table, in ``pool`` when given (a process pool, while the caller goes on).

    :func:`finish_stacks` then draws the finder charts, which mark the light curves'
    comparisons. An error (an unreadable light) stops here and is raised by
    :func:`finish_stacks` at its group, as if it had happened there.
    """
    for group in pending.groups:
        if group.unchanged or group.merged is not None:
            continue
        try:
            acc, spans = _merged(group, pending)
        except Exception as exc:
            group.error = exc
            return
        if acc.n_frames == 0:
            continue
        group.merged = (*acc.result(), acc.n_frames)  # the mean, made once
        header = add_cards(group.header, span_cards(spans))
        args = (group.path, header, group.merged, group.params, group.key, group.signature,
                pipeline.reference(group.key[0]), pipeline.durable)  # fmt: skip
        group.measured = pool.submit(write_stack, *args) if pool else write_stack(*args)


def _merged(group, pending):
    """The group's runs merged in frame order, whoever computed them (each freed once
    merged), and the lights' ``(start, end, mid)`` times."""
    acc, spans = StackAccumulator(), []
    chunks, group.chunks = group.chunks, []
    while chunks:
        run = _chunk_result(chunks.pop(0), pending.max_bytes, pending.rules)
        acc.merge(run.acc)
        spans += run.spans
    return acc, spans


def finish_stacks(pipeline, pending, *, ensembles=None):
    """Combine the chunks started by :func:`start_stacks`, measure and write each stack
    (unless :func:`measure_stacks` did) and draw its finder chart.

    Writes one stacked FITS and its photometry CSV per group; returns the FITS
    paths (up to date ones included), in group order. Waits for the pool's jobs;
    an error of a job (an unreadable light) is raised here. A finder chart marks
    the target and comparisons named by the light curve of its object and filter:
    ``ensembles(ecsv_path)`` gives them (e.g. from a curve built, its files not yet
    written), or when it returns None (or is not given) they are read from that
    ECSV.
    """
    measure_stacks(pipeline, pending)
    out = []
    for group in pending.groups:
        if group.error is not None:
            raise group.error
        if group.unchanged:
            out.append(group.path)
            continue
        if group.measured is None:  # no light in it
            continue
        measured = group.measured
        measured = measured.result() if isinstance(measured, Future) else measured
        _write_finder(pipeline, group, measured, ensembles=ensembles)
        out.append(group.path)
    return out


def _chunk_result(chunk, max_bytes, rules):
    if isinstance(chunk, Future):
        return chunk.result()
    return stack_chunk(chunk, max_bytes, rules)


def write_stacks(pipeline, pool=None):
    """Write one stacked FITS and its photometry per group; return the FITS paths."""
    return finish_stacks(pipeline, start_stacks(pipeline, pool))


@dataclasses.dataclass
class StackMeasured:
    """A stack written by :func:`write_stack`: its stars (``PhotResult.table``) and radius."""

    table: object
    radius: float


def write_stack(path, header, merged, params, key, signature, reference, durable):
    """Measure the stack ``merged`` (``(mean, count, cards, n_frames)``: a
    StackAccumulator's result and frame count) of group ``key`` (object, filter, gain,
    exposure) and write its FITS (``header`` plus the stack's and photometry's cards) and
    photometry table; return :class:`StackMeasured`.

    Module level and with plain arguments: a worker process runs it."""
    obj, filt, gain, exptime = key
    mean, count, cards, n_frames = merged
    phot = stack_photometry(
        mean, count, n_frames=n_frames, exptime=exptime, params=params, reference=reference
    )
    cards = [*cards, *phot.cards, ("RDXSTSIG", signature, "sha1 of the inputs")]
    hdr = add_cards(header.copy(), cards)
    write_images_atomic(path, [(mean, hdr, None), (count, None, "COUNT")], durable=durable)
    radius = dict((k, v) for k, v, _ in phot.cards).get("PHOTRAD", params.radius)
    meta = {"object": obj, "filter": filt, "gain": gain, "exptime": exptime}
    write_stack_photometry(
        photometry_path(path), phot.table, nframes=n_frames, radius=radius, **meta
    )
    return StackMeasured(phot.table, radius)


def _write_finder(pipeline, group, measured, *, ensembles=None):
    obj, filt, gain, exptime = group.key
    mean, count, _cards, n_frames = group.merged
    save = pipeline.config.output.save
    _csv, ecsv, _png = lightcurve_paths(pipeline.outdir, object=obj, filter=filt, save=save)
    marks = ensembles(ecsv) if ensembles is not None else None
    target_id, comparison_ids = marks if marks is not None else read_ensemble(ecsv)
    finder = finder_path(pipeline.outdir, save=save, obj=obj, filt=filt, gain=gain, exptime=exptime)
    title = f"{obj} {filt}: stack of {n_frames} lights ({group.path.name})"
    write_finder(finder, mean, measured.table, radius=measured.radius, target_id=target_id,
                 comparison_ids=comparison_ids, title=title, mask=count == 0,
                 durable=pipeline.durable)  # fmt: skip
    log.info(
        "stack_written",
        file=str(group.path),
        finder=str(finder),
        nframes=n_frames,
        n_stars=len(measured.table),
    )


def span_cards(spans):
    """DATE-OBS (first start), DATE-END (last end), DATE-AVG (mean mid-time) of the
    inputs, from their ``(start, end, mid)`` (:func:`light_span`)."""
    if not spans:
        return []
    starts, ends, mids = zip(*spans, strict=True)
    origin = min(mids)
    mean_mid = origin + sum((m - origin for m in mids), timedelta()) / len(mids)
    return [
        ("DATE-OBS", _isot(min(starts)), "start of the first light stacked (UTC)"),
        ("DATE-END", _isot(max(ends)), "end of the last light stacked (UTC)"),
        ("DATE-AVG", _isot(mean_mid), "mean mid-exposure time of the lights (UTC)"),
    ]


def _isot(when):
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _first_header(path):
    with fits.open(path, memmap=False) as hdul:
        return clean_header(hdul[0].header)


def stack_photometry(mean, count, *, n_frames, exptime, params, reference):
    """Measure a stack (the mean of ``n_frames`` lights) like a single light.

    Pixels no light covered (``count == 0``) or non-finite are masked. The noise
    terms are those of a mean of ``n_frames`` frames: gain ``n * g`` (e-/ADU) and
    read noise ``sqrt(n) * rn``.

    Returns
    -------
    reduxd.steps.photometry.PhotResult
    """
    mean = np.asarray(mean, dtype=np.float32)
    mask = np.zeros(mean.shape, dtype=np.uint8)
    mask[count == 0] |= maskbits.BAD
    bad = ~np.isfinite(mean)
    mask[bad] |= maskbits.NONFINITE
    data = mean
    if bad.any():
        data = mean.copy()
        data[bad] = np.median(mean[~bad]) if (~bad).any() else 0.0
    n = max(int(n_frames), 1)
    params = dataclasses.replace(
        params,
        gain_e_per_adu=params.gain_e_per_adu * n,
        read_noise_e=params.read_noise_e * math.sqrt(n),
    )
    if reference is not None and len(reference) == 0:
        reference = None
    return photometer(data, mask=mask, exptime=exptime, params=params, reference=reference)


def write_stack_photometry(path, table, *, object, filter, gain, exptime, nframes, radius):
    """Write a stack's star table as CSV (atomically); return the path."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(STACK_PHOT_COLUMNS)
    fixed = {"object": object, "filter": filter or "", "gain": gain, "exptime": exptime,
             "nframes": nframes, "radius": radius}  # fmt: skip
    for star in table:
        values = {**fixed, **{name: star[name] for name in STACK_PHOT_COLUMNS[5:-1]}}
        writer.writerow([_fmt(name, values[name]) for name in STACK_PHOT_COLUMNS])
    return atomic_write(path, lambda fh: fh.write(buf.getvalue().encode("utf-8")))


def _fmt(name, value):
    if value is None:
        return ""
    if isinstance(value, np.integer | int) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, np.floating | float):
        value = float(value)
        if not math.isfinite(value):
            return "nan"
        return format(value, _FORMAT.get(name, ".6g"))
    return str(value)
