"""Light curves kept current: each new light appended, the curve rebuilt now and then.

When a light is committed, :meth:`Curves.changed` appends it to its field's light
curve (against the comparisons frozen at the last build), or marks the field for a
rebuild: a superseded light, a frame that cannot be appended, a field that doubled
its frames since the last build. :meth:`Curves.update` rebuilds the marked curves
from the ledger's current rows and remembers each field's ensemble, so the log line
of the next light can give the target's differential magnitude (:meth:`Curves.target_mag`).

A rebuild reads only its field's rows (:meth:`Ledger.field_measurements`). In the
daemon (``update(final=False)``) it runs in a child process on a snapshot of the
ledger, off the worker, and hands back the files' contents: this process installs
them when it lands. Until then the lights committed meanwhile are appended to the
curve there is (its frozen ensemble), so each light is in the curve as soon as its
rows are; they are kept and appended again to the new curve when it lands. The work
per light, and its wait for the curve, stay flat all night.
"""

import itertools
import math
import multiprocessing
import os
import pickle
import resource
import threading
import time
import zlib
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from astropy.table import Column, Table

from reduxd.errors import ReduxdError
from reduxd.lightrows import LightRows
from reduxd.log import configure_logging, get_logger
from reduxd.products import lightcurve
from reduxd.products.tables import columns_to_table
from reduxd.store import Ledger

log = get_logger("reduxd.pipeline")
CURVE_MIN_FRAMES = 10  # a light curve is rebuilt after this many appended lights at least
CHUNK_ROWS = 5_000  # rows turned into table columns at a time when a curve is rebuilt


class Curves:
    """The light curves of one output folder, fed from one ledger."""

    def __init__(self, config, *, ledger, outdir, clock):
        self.config = config
        self.ledger = ledger
        self.outdir = outdir
        self.clock = clock
        self.dirty = set()  # (field, filter) with new rows
        self.doubled = set()  # of those, the ones still appended to (rebuilt as they doubled)
        self.ensembles = {}  # (field, filter) -> its last light curve's target and ensemble
        self.states = {}  # (field, filter) -> what appending to its light curve needs
        self._at = -math.inf
        self.pool = None  # one child process for the rebuilds off the worker (daemon)
        self.running = None  # (future, fields) of the rebuild in the child
        self.waiting = defaultdict(list)  # field -> (packed rows, version) committed meanwhile
        self.files = None  # {path: bytes}: the files of a rebuild in a child, not written
        self.kept = None  # KeptRows: the rows committed by this process (a batch)
        self.unwritten = None  # [(object, filter, curve)]: built, files written later
        self.final_pool = None  # the batch's pool: builds the final curves, then writes them
        self.plots = None  # the pool that plots the final curves (default: final_pool)
        self.writing = []  # futures of the pool jobs writing the final curves' files
        self.sender = None  # thread: sends the final curves' files to the pool once built
        self.marks = {}  # ECSV path -> (target_id, comparison_ids) of its curve's final build

    def keep_rows(self):
        """Keep the rows committed from now on (a batch): the final build of a field
        all of whose lights were committed here takes them from memory, not the ledger."""
        self.kept = KeptRows()

    def target_mag(self, rows):
        """The configured target's differential magnitude in this frame, or None.

        Uses the field's ensemble from its last light curve; None before there is
        one, when no target is configured, or when the target is not measured here.
        """
        key = (rows[0]["object"], rows[0]["filter"]) if rows else None
        ensemble = self.ensembles.get(key)
        return lightcurve.frame_dmag(rows, ensemble) if ensemble else None

    def changed(self, field, rows, version, *, frame=None):
        """Append a new light to its field's curve, or mark the curve for a rebuild.

        Rebuilt (comparisons chosen again) when a light is superseded, when the
        frame cannot be appended, and when the field has doubled its frames
        since the last build: the work per light stays the same all night. A field
        that doubled is still appended to until its rebuild starts (the daemon's
        ticks space rebuilds by 30 s), and while it runs (see :meth:`_land`).
        ``frame``: the light's ledger id (for :meth:`keep_rows`).
        """
        if self.kept is not None:
            self.kept.add(field, rows, version, frame)
        if self.running and field in self.running[1]:
            self.waiting[field].append((_pack(rows), version))  # again on the new curve
            if version == 1:
                self._append(field, rows)  # meanwhile on the curve there is
            return
        appendable = field not in self.dirty or field in self.doubled
        if version == 1 and appendable and self._append(field, rows):
            state = self.states[field]
            state["appended"] = state.get("appended", 0) + 1
            if state["appended"] >= max(state["frames"], CURVE_MIN_FRAMES):
                self.doubled.add(field)  # appended to until its rebuild starts
                self.dirty.add(field)
            return
        self.doubled.discard(field)
        self.dirty.add(field)

    def _append(self, field, rows):
        """Append a light to the field's curve against its frozen ensemble; False if not."""
        state = self.states.get(field)
        if state is None:
            return False
        try:
            return lightcurve.append_lightcurve(
                self.outdir, rows, state, object=field[0], filter=field[1],
                save=self.config.output.save,
            )  # fmt: skip
        except Exception as exc:
            log.warning("lightcurve_not_appended", object=field[0], reason=str(exc))
            return False

    def update(self, *, min_interval=0.0, final=True, pool=None, plots=None):
        """Rewrite the light curves of fields that got new rows.

        ``min_interval`` (s) spaces the rebuilds of fields that have a curve; a
        field without one yet (a new field, or too few frames so far) is built at
        the first call after its new light.

        ``final`` (the end of a batch, a stop): curves that were appended to since
        their last build are rebuilt too, so they end on the whole night's ensemble,
        here and now, or with ``pool`` (the batch's forked process pool: it runs
        beside the stacks) their files are written there while their ensembles
        (:meth:`marked`) are already known here; :meth:`close` waits for them. The
        curves whose rows this process kept (:meth:`keep_rows`) are built here; the
        others in the pool, their files sent once they are built (:meth:`_send`).
        ``plots``: a pool for the plots instead of ``pool`` (one forked after this
        process imported matplotlib). Otherwise (the daemon's tick) the rebuild goes to
        a child process and lands at a later call.
        """
        self._land(wait=final)
        self.plots = plots
        if final:
            appended = [f for f, state in self.states.items() if state and state.get("appended")]
            self.dirty.update(appended)
        now = self.clock()
        young = any(not self.states.get(f) for f in self.dirty)  # no curve yet: not held back
        if not self.dirty or self.running or (now - self._at < min_interval and not young):
            return
        self._at = now
        fields, upto = sorted(self.dirty, key=str), self.ledger.last_reduction()
        self.dirty.clear()
        self.doubled.clear()
        tables = self._kept_tables(fields, upto) if final else None
        if final and pool is None:
            built = write_here(self, tables) if tables else self._rebuild(fields, upto)
            self._install(built)
            self._close_pool()
            return
        self.final_pool, self.marks = (pool if final else None), {}
        if tables:  # the rows are here: built here (no table to send), files in the pool
            built = build_tables(self.config, str(self.outdir), tables)
            self._install(built)
            self._write_later(built[3])
            return
        args = (self.config, str(self.ledger.path), str(self.outdir), fields, upto)
        if final:  # in the batch's forked pool, whose workers log to the run's log
            work = rebuild_later
        else:
            work, pool = rebuild, self._child()
        self.running = (pool.submit(work, *args), set(fields))
        if final:  # the files are written as soon as the curves are built, whatever runs here
            self.sender = threading.Thread(target=self._send, args=(self.running[0],), daemon=True)
            self.sender.start()

    def _child(self):
        """The daemon's one-worker pool for rebuilds (spawned: the daemon has threads)."""
        if self.pool is None:
            self.pool = rebuild_pool()
        return self.pool

    def _send(self, future):
        """(A thread) Once the final curves are built, send their files to the pool: the
        tables and the plots in two jobs, side by side."""
        try:
            self._write_later(future.result()[3])
        except Exception:  # the build failed (said by _land) or the pool is gone
            return

    def _write_later(self, unwritten):
        """Send the files of the final curves built (``unwritten``) to the pools: the
        tables and the plots in two jobs, side by side."""
        if unwritten:
            args = (str(self.outdir), self.config.output.save, unwritten)
            pools = {"plot": self.plots or self.final_pool}
            self.writing = [
                pools.get(part, self.final_pool).submit(write_built, *args, parts=(part,))
                for part in lightcurve.CURVE_FILES
            ]

    def marked(self, ecsv_path):
        """``(target_id, comparison_ids)`` that the light curve ``ecsv_path`` names once
        the last final update has written it (what a finder chart marks), maybe before
        it is written; None if that update does not write it. Waits for the build (its
        files may still be being written, see :meth:`update`)."""
        self._land(wait=True)
        return self.marks.get(Path(ecsv_path))

    def close(self):
        """Wait for a rebuild in the child and for the writing of its files, then stop
        the child."""
        self._land(wait=True)
        writing, self.writing = self.writing, []
        for job in writing:
            try:
                job.result()
            except Exception as exc:  # the worker died: the files were not all written
                log.warning("lightcurve_not_written", reason=str(exc))
        self.final_pool = self.plots = None
        self._close_pool()

    def _close_pool(self):
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def _land(self, *, wait):
        """Take a finished rebuild's ensembles, then append the lights that waited for it."""
        if not self.running or not (wait or self.running[0].done()):
            return
        future, fields = self.running
        self.running = None
        if self.sender is not None:  # once it is done, self.writing is known
            self.sender.join()
            self.sender = None
        rebuilt = {}
        try:
            built = future.result()
            self._install(built)
            rebuilt = built[1]
        except Exception as exc:
            log.warning("lightcurve_not_written", fields=sorted(fields, key=str), reason=str(exc))
            self.dirty.update(fields)
            if isinstance(exc, BrokenProcessPool):  # the child died (OOM-killed...): a new one
                self._close_pool()
        for field in fields:
            waiting = self.waiting.pop(field, [])
            if field not in rebuilt:  # its curve is the old one, lights appended: built anew
                self.dirty.update([field] if waiting else [])
                continue
            for packed, version in waiting:
                self.changed(field, _unpack(packed), version)

    def _install(self, built):
        """Take a rebuild's ``(ensembles, states[, files[, unwritten]])``; write the files a
        child made; mark the curves built for a batch's pool (:meth:`_write_later`)."""
        ensembles, states, files, unwritten = (*built, None, None)[:4]
        if files:
            lightcurve.write_files(files)
        self.ensembles.update(ensembles)
        self.states.update(states)
        save = self.config.output.save
        for obj, filt, lc in unwritten or ():  # in the order write_built writes them
            ecsv = lightcurve.lightcurve_paths(self.outdir, object=obj, filter=filt, save=save)[1]
            self.marks[Path(ecsv)] = lightcurve.ensemble_ids(lc.meta)

    def _rebuild(self, fields, upto):
        """Rewrite the curves of ``fields`` from the ledger's rows up to reduction ``upto``.

        Returns the ``(ensembles, states)`` of the curves written.
        """
        ensembles, states = {}, {}
        for obj, filt in fields:
            found = self.ledger.field_measurements(obj, filt, upto=upto)
            rows = (row for _version, row in found)  # current rows; no version in a curve
            table = field_table(rows, chunk=CHUNK_ROWS, columns=lightcurve.CURVE_COLUMNS)
            if len(table):
                self._write(obj, filt, table, ensembles, states)
        return ensembles, states

    def _kept_tables(self, fields, upto):
        """``[(field, table)]`` from the kept rows, if they are exactly each field's
        current rows in the ledger up to ``upto``; else None."""
        if self.kept is None:
            return None
        out = []
        for obj, filt in fields:
            found = self.ledger.field_reductions(obj, filt, upto=upto)
            table = self.kept.table((obj, filt), [(f, v) for _r, f, v in found])
            if table is None:
                return None
            out.append(((obj, filt), table))
        return out

    def _write(self, obj, filt, table, ensembles, states):
        lc = self.config.lightcurve
        common = dict(object=obj, filter=filt, n_comparisons=lc.n_comparisons,
                      save=self.config.output.save)  # fmt: skip
        target, comparisons, radec = lightcurve.field_target(lc, obj)
        kept = {}
        try:
            try:
                lightcurve.write_lightcurve(
                    self.outdir, table, target=target, comparisons=comparisons,
                    radec=radec, keep=kept, files=self.files, later=self.unwritten, **common,
                )  # fmt: skip
            except ReduxdError as exc:
                if target is None and radec is None:
                    raise
                # the configured target (and its comparisons) is in another field
                log.warning("lightcurve_target_not_in_field", object=obj, reason=str(exc))
                lightcurve.write_lightcurve(
                    self.outdir, table, target=None, keep=kept, files=self.files,
                    later=self.unwritten, **common,
                )  # fmt: skip
            if "lightcurve" in kept:
                ensembles[(obj, filt)] = lightcurve.ensemble_of(kept["lightcurve"])
            states[(obj, filt)] = (
                lightcurve.frozen_of(kept["lightcurve"]) if "lightcurve" in kept else None
            )
        except Exception as exc:
            log.warning("lightcurve_not_written", object=obj, filter=filt, reason=str(exc))


def _pack(rows):
    """A light's rows as one compressed block while it waits for a rebuild.

    As dicts a 1,000-star light is about 4 MB in thousands of small objects; a
    rebuild late in a long night keeps tens of lights waiting, and their objects
    leave the heap fragmented after they are gone. Packed: about 0.2 MB each.
    """
    return zlib.compress(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL), 1)


def _unpack(packed):
    return pickle.loads(zlib.decompress(packed))


def field_table(rows, *, chunk=CHUNK_ROWS, columns=None):
    """:func:`lightcurve.field_table` of many rows, built ``chunk`` rows at a time.

    The rows (an iterator) are never all held as dicts: a night of 1,000 lights
    of 1,000 stars is a million rows, gigabytes as dicts, a few hundred MB as
    columns. The result is that of ``lightcurve.field_table(list(rows))``: a
    column that the whole would leave out (not in every row, or multi-aperture
    lists of different lengths) is left out; ``target_x``/``target_y`` are NaN
    in rows without them. ``columns``: keep only these (a rebuild keeps
    :data:`lightcurve.CURVE_COLUMNS`, what a light curve reads).
    """
    rows = iter(rows)
    parts = []
    while batch := list(itertools.islice(rows, chunk)):
        parts.append(table_part(batch, columns))
    return join_parts(parts)


def table_part(rows, columns=None):
    """One chunk of :func:`field_table`: the rows' table, strings narrowed; only
    ``columns`` kept when given."""
    part = lightcurve.field_table(rows, columns=columns)
    if columns is not None:
        part.keep_columns([n for n in part.colnames if n in columns])
    return _narrow_strings(part)


def light_part(lights, columns):
    """:func:`table_part` of the rows of ``lights`` (:class:`~reduxd.lightrows.LightRows`,
    in order) keeping ``columns``, built from their columns, or None when a light's
    frame values (place, target, detector, radii) are not all shared values of the
    kinds :func:`lightcurve.field_table` reads (its rows are then read as dicts)."""
    if not all(map(_part_fits, lights)):
        return None
    lengths = [len(light) for light in lights]

    def joined(name, dtype):
        if np.dtype(dtype).kind == "U" and all(name in light.shared for light in lights):
            texts = np.array([light.shared[name] for light in lights], dtype=dtype)
            width = max(1, int(np.char.str_len(texts).max()))  # as _narrow_strings leaves it
            return np.repeat(texts.astype(f"U{width}"), lengths)
        return np.concatenate([light.array(name, dtype) for light in lights])

    part = columns_to_table(joined, columns=columns)
    if all("pointing" in light.order and "site" in light.order for light in lights):
        frames = [np.asarray(lightcurve.row_place(light.shared), np.float64) for light in lights]
        place = np.concatenate([np.broadcast_to(frame, (n, 5))
                                for frame, n in zip(frames, lengths, strict=True)])  # fmt: skip
        for k, name in enumerate(lightcurve.PLACE_COLUMNS):
            part[name] = place[:, k]
        texts = np.array([str(light.shared.get("site_source") or "") for light in lights])
        part["site_source"] = np.repeat(texts, lengths)  # the dtype a list of them gives
    if any("target_xy" in light.order for light in lights):
        xy = [light.shared.get("target_xy") or (math.nan, math.nan) for light in lights]
        for k, name in enumerate(("target_x", "target_y")):
            part[name] = np.repeat(np.array([v[k] for v in xy], dtype=np.float64), lengths)
    detectors = [tuple(d) for light in lights if (d := light.shared.get("detector"))]
    if detectors:
        part.meta["detector"] = lightcurve.detector_meta(detectors)
    sizes = {_width(light, k) for light in lights for k in lightcurve.APERTURE_KEYS}
    if len(sizes) == 1 and sizes != {-1}:
        for key in lightcurve.APERTURE_KEYS:
            part[key] = joined(key, np.float64)
    part.keep_columns([n for n in part.colnames if n in columns])
    return _narrow_strings(part)


_FRAME_KEYS = ("pointing", "site", "site_source", "target_xy", "detector", "radius_ap")


def _part_fits(light):
    """Whether :func:`light_part` reads ``light`` as :func:`lightcurve.field_table` reads
    its dicts: its frame values shared (lists of the right lengths, or None)."""
    if any(k in light.columns for k in _FRAME_KEYS):
        return False
    shared = light.shared
    sizes = {"pointing": 2, "site": 3, "target_xy": 2}
    for key, size in sizes.items():
        value = shared.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == size):
            return False
    return all(light.columns[k].ndim == 2 for k in ("flux_ap", "flux_err_ap") if k in light.columns)


def _width(light, key):
    """Values per row of ``key`` (a list each) in ``light``; -1 when not a list."""
    if key in light.columns:
        return light.columns[key].shape[1]
    value = light.shared.get(key)
    return len(value) if isinstance(value, list) else -1


def join_parts(parts):
    """The table of :func:`table_part` chunks, in order (see :func:`field_table`)."""
    if len(parts) < 2:
        return parts[0] if parts else lightcurve.field_table([])
    # the column order of a part with every kind of column there is
    order = max(parts, key=lambda p: ("target_x" in p.colnames, len(p.colnames))).colnames
    for name in ("target_x", "target_y"):
        if any(name in p.colnames for p in parts):
            for p in parts:
                if name not in p.colnames:
                    p[name] = np.full(len(p), np.nan)
    keep = set.intersection(*(set(p.colnames) for p in parts))
    if len({p["flux_ap"].shape[1:] for p in parts if "flux_ap" in keep}) > 1:
        keep -= set(lightcurve.APERTURE_KEYS)
    table = _joined(parts, [n for n in order if n in keep])
    detectors = [tuple(d.values()) for p in parts for d in p.meta.get("detector", [])]
    if detectors:
        table.meta["detector"] = lightcurve.detector_meta(detectors)
    return table


def _joined(parts, names):
    """The parts' rows in one table: a column at a time, each part's copy dropped as it
    is joined (``vstack`` held the parts and the whole at once: twice the memory). The
    joined values become the column without another copy."""
    table = Table(meta=dict(parts[0].meta))
    for name in names:
        first = parts[0][name]
        joined = np.concatenate([np.asarray(p[name]) for p in parts])
        table.add_column(Column(joined, name=name, copy=False), copy=False)
        table[name].info.unit = first.info.unit
        table[name].info.description = first.info.description
        table[name].info.format = first.info.format
        for p in parts:
            p.remove_column(name)
    return table


def _narrow_strings(table):
    """String columns as wide as their longest value (the contract's ``file`` is U256)."""
    for name in table.colnames:
        values = np.asarray(table[name])
        if values.dtype.kind == "U" and len(values):
            width = max(1, int(np.char.str_len(values).max()))
            table.replace_column(name, table[name].astype(f"U{width}"), copy=False)
    return table


class KeptRows:
    """A batch's committed rows per field, as :func:`table_part` chunks of ``chunk`` rows.

    A field is spoilt (its curve read from the ledger) when a light is committed
    again (a new version) or without its ledger id.
    """

    def __init__(self, chunk=CHUNK_ROWS):
        self.chunk = chunk
        self.fields = {}  # field -> (frame ids, parts, lights' rows not yet in a part)
        self.spoilt = set()

    def add(self, field, rows, version, frame):
        if field in self.spoilt:
            return
        if version != 1 or frame is None:
            self.spoilt.add(field)
            self.fields.pop(field, None)
            return
        frames, parts, pending = self.fields.setdefault(field, ([], [], []))
        frames.append(frame)
        pending.append(rows)
        if sum(map(len, pending)) >= self.chunk:
            parts.append(_kept_part(pending))
            pending.clear()

    def table(self, field, found):
        """The field's table if ``found`` (the ledger's ``(frame_id, version)`` of its
        current rows, in frame order) are the lights kept, in that order; else None.
        Once per field: the kept parts are joined into the table, column by column."""
        if field in self.spoilt or field not in self.fields:
            return None
        frames, parts, pending = self.fields.pop(field)
        self.spoilt.add(field)
        if [tuple(f) for f in found] != [(f, 1) for f in frames]:
            return None
        if pending:
            parts = [*parts, _kept_part(pending)]
        return join_parts(parts)


def _kept_part(lights):
    """The :func:`table_part` of kept lights' rows (from their columns when they are
    all :class:`~reduxd.lightrows.LightRows` that :func:`light_part` reads)."""
    columns = lightcurve.CURVE_COLUMNS
    if all(isinstance(rows, LightRows) for rows in lights):
        part = light_part(lights, columns)
        if part is not None:
            return part
    return table_part([row for rows in lights for row in rows], columns)


def build_tables(config, outdir, tables):
    """Build light curves from ``[(field, table)]``, writing nothing; returns
    ``(ensembles, states, None, unwritten)`` for :meth:`Curves._install`, which sends
    ``unwritten``, the built curves, to :func:`write_built` in the batch's pool."""
    curves = Curves(config, ledger=None, outdir=Path(outdir), clock=time.monotonic)
    curves.unwritten = []
    return (*write_here(curves, tables), None, curves.unwritten)


def rebuild_later(config, ledger_path, outdir, fields, upto):
    """:func:`rebuild_here` building only, as :func:`build_tables` (in a pool worker)."""
    later = []
    ensembles, states = rebuild_here(config, ledger_path, outdir, fields, upto, later=later)
    return ensembles, states, None, later


def write_built(outdir, save, unwritten, parts=lightcurve.CURVE_FILES):
    """Write the files (``parts`` of them, see :func:`lightcurve.write_built`) of curves
    built by :func:`build_tables` or :func:`rebuild_later` (``[(object, filter, curve)]``),
    in a pool worker."""
    for obj, filt, lc in unwritten:
        try:
            lightcurve.write_built(outdir, lc, object=obj, filter=filt, save=save, parts=parts)
        except Exception as exc:
            log.warning("lightcurve_not_written", object=obj, filter=filt, reason=str(exc))


def write_here(curves, tables):
    """Write (or, with ``curves.unwritten``, only build) the curves of ``[(field, table)]``
    with ``curves``' config and output folder; ``(ensembles, states)``."""
    ensembles, states = {}, {}
    for (obj, filt), table in tables:
        if len(table):
            curves._write(obj, filt, table, ensembles, states)
    return ensembles, states


def rebuild_pool():
    """A one-worker pool for the daemon's rebuilds: a new child spawned for each (the
    daemon has threads), which exits when the daemon is gone (see :func:`_exit_with_parent`)."""
    spawn = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1,
                               initializer=_exit_with_parent, initargs=(os.getpid(),))  # fmt: skip


def _exit_with_parent(parent):
    """(In the child) Exit once ``parent`` is gone: a daemon killed with SIGKILL cannot stop
    its pool, and a child sending back a result no one reads any more waits for good."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="reduxd-parent-watch", daemon=True).start()


def rebuild(config, ledger_path, outdir, fields, upto):
    """Rebuild light curves in a child process, from a read-only ledger.

    Returns ``(ensembles, states, files)`` for :meth:`Curves._install`: the files'
    contents (``{path: bytes}``) are not written here but by the daemon when it
    takes them, so that the lights it appends meanwhile are never written to a
    file that this rebuild then replaces.
    """
    configure_logging(level=config.logging.level, json_file=config.logging.json_file or None)
    started = time.monotonic()
    files = {}
    ensembles, states = rebuild_here(config, ledger_path, outdir, fields, upto, files=files)
    # the child is new for each rebuild: its peak RSS is this rebuild's (and its imports')
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    frames = sum(state["frames"] for state in states.values() if state)
    log.debug("lightcurves_rebuilt", fields=sorted(fields, key=str), frames=frames,
              seconds=round(time.monotonic() - started, 2), peak_rss_mb=round(peak))  # fmt: skip
    return ensembles, states, files


def rebuild_here(config, ledger_path, outdir, fields, upto, *, files=None, later=None):
    """:func:`rebuild` with this process's logging (a forked worker logs to the run's log).

    Writes the files, or with ``files`` (a dict) puts their contents there, or with
    ``later`` (a list) builds the curves only and puts them there.
    """
    with Ledger(ledger_path, readonly=True) as ledger:
        curves = Curves(config, ledger=ledger, outdir=Path(outdir), clock=time.monotonic)
        curves.files = files
        curves.unwritten = later
        return curves._rebuild(fields, upto)
