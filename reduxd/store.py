"""The ledger: what reduxd has seen and done, in one SQLite file on local disk.

One connection, owned by the thread that opened it (Python's sqlite3 refuses use
from another thread). Every state change is its own committed transaction, and an
attempt is committed *before* the work starts, so a frame that kills the process
is retried at most ``max_tries`` times instead of crash-looping the service.

Frame states::

    seen -> processing -> done
                       -> seen (retry) -> ... -> failed (attempts exhausted)
                       -> waiting (a light without its master; no attempt spent)
                       -> incomplete (the file is still being written; no attempt spent)
                       -> quarantined (broken file, with the reason)
                       -> excluded (its filter is excluded; seen again when it no longer is)
    done -> changed (the file changed after it was reduced: alert, do not redo silently)

``seen``, ``waiting`` and ``incomplete`` are picked up again (:data:`PENDING`):
a waiting light when masters arrive, an incomplete file when it grows or settles.
A ledger made by an earlier version, where these two were ``seen`` with the
column ``frames.wait`` or only their reason, is migrated in place (:func:`_migrate`).

A light's photometry rows are stored as one binary record (``light_rows``, see
:mod:`reduxd.rowblob`; schema version 2). A ledger of version 1 kept them as one
JSON text per row (``measurements``): it is migrated by adding the new table, and
its rows stay where they are and are read as before; a light reduced again gets
a record.
"""

import dataclasses
import json
import os
import re
import sqlite3
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from reduxd.errors import ReduxdError
from reduxd.framemeta import FrameMeta
from reduxd.fsinfo import is_network_fs, mount_fstype
from reduxd.rowblob import decode_rows, encode_rows
from reduxd.rowtext import json_rows
from reduxd.steps.select import MasterRecord

SCHEMA_VERSION = 2
OLD_VERSIONS = (1,)  # opened and migrated (a reader: read as they are)
STATES = (
    "seen", "processing", "done", "failed", "quarantined", "changed", "excluded",
    "waiting",     # a light waiting for a master (calibration)
    "incomplete",  # a file still being written: read again later, no attempt spent
)  # fmt: skip
PENDING = ("seen", "waiting", "incomplete")  # states of frames to be picked up again

# the frames' indexes (name: columns), made when a ledger is opened without them (new, or
# an earlier version's)
FRAME_INDEXES = {
    "frames_state": "state",
    "frames_night": "night, kind",
    "frames_checksum": "checksum",  # duplicate_of
}
# duplicate_of: the first done, measured light with a checksum (found by frames_checksum)
DUPLICATE = (
    "WHERE checksum = ? AND id != ? AND kind = 'light' AND state = 'done'"
    " AND json_extract(info, '$.excluded') IS NULL ORDER BY id LIMIT 1"
)
_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE frames (
    id INTEGER PRIMARY KEY,
    root TEXT NOT NULL,
    relpath TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    checksum TEXT,
    kind TEXT,
    night TEXT,
    state TEXT NOT NULL CHECK (state IN ('seen', 'processing', 'done', 'failed',
        'quarantined', 'changed', 'excluded', 'waiting', 'incomplete')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    info TEXT,                 -- JSON
    first_seen TEXT NOT NULL,  -- UTC ISO
    updated TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    latency REAL,              -- seconds from file mtime to done
    UNIQUE (root, relpath)
);
CREATE TABLE masters (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    checksum TEXT NOT NULL,
    instrument TEXT NOT NULL,
    ny INTEGER NOT NULL, nx INTEGER NOT NULL,
    xbin INTEGER NOT NULL, ybin INTEGER NOT NULL,
    gain REAL, exptime REAL, filter TEXT, ccd_temp REAL,
    date_start TEXT, date_end TEXT,
    ncombine INTEGER NOT NULL,
    night TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('valid', 'rejected')),
    reason TEXT,
    created TEXT NOT NULL,
    UNIQUE (path, checksum)
);
CREATE INDEX masters_kind ON masters (kind, instrument, status);
CREATE TABLE reductions (
    id INTEGER PRIMARY KEY,
    frame_id INTEGER NOT NULL REFERENCES frames (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    calib TEXT NOT NULL,
    superseded INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    fingerprint TEXT,           -- JSON: the settings that produced the rows
    UNIQUE (frame_id, version)
);
CREATE TABLE reduction_masters (
    reduction_id INTEGER NOT NULL REFERENCES reductions (id) ON DELETE CASCADE,
    master_id INTEGER NOT NULL REFERENCES masters (id),
    PRIMARY KEY (reduction_id, master_id)
);
CREATE TABLE measurements (
    id INTEGER PRIMARY KEY,
    reduction_id INTEGER NOT NULL REFERENCES reductions (id) ON DELETE CASCADE,
    data TEXT NOT NULL          -- one photometry row, JSON
);
CREATE INDEX measurements_reduction ON measurements (reduction_id);
CREATE TABLE light_rows (
    reduction_id INTEGER PRIMARY KEY REFERENCES reductions (id) ON DELETE CASCADE,
    object TEXT,                -- the first row's object and filter (the field)
    filter TEXT,
    n INTEGER NOT NULL,         -- how many rows
    data BLOB NOT NULL          -- all the light's rows (reduxd.rowblob)
);
CREATE TABLE field_refs (
    field_key TEXT PRIMARY KEY,
    data TEXT NOT NULL,         -- JSON
    updated TEXT NOT NULL
);
"""


class LedgerError(ReduxdError):
    """The ledger cannot be used (network filesystem, newer schema, bad state change)."""


# (words in SQLite's or the OS's message, what to tell the operator)
_ADVICE = (
    ("not a database", "it is not a SQLite database (damaged or another file): move it "
     "aside (mv FILE FILE.bad) and start again; reduxd rebuilds it from the raw frames"),
    ("malformed", "the database is damaged: move it aside (mv FILE FILE.bad) and start "
     "again; reduxd rebuilds it from the raw frames"),
    ("disk is full", "the disk is full: free some space and start again"),
    ("no space", "the disk is full: free some space and start again"),
    ("disk i/o error", "the disk may be full, read-only or failing: check `df` and the "
     "kernel log, then start again"),
    ("read-only", "the disk is read-only: remount it read-write or set [paths] state "
     "to a writable local folder"),
    ("readonly", "the file or its folder is read-only: make them writable by the user "
     "running reduxd, or set [paths] state to a writable local folder"),
    ("unable to open", "cannot create or open it: check that its folder exists and is "
     "writable by the user running reduxd, or set [paths] state"),
    ("permission", "permission denied: make the file and its folder writable by the user "
     "running reduxd, or set [paths] state"),
)  # fmt: skip


def ledger_error(path, exc):
    """A :class:`LedgerError` naming the ledger file, the cause and what to do.

    Examples
    --------
    >>> str(ledger_error("/srv/l.sqlite", sqlite3.DatabaseError("file is not a database")))
    ... # doctest: +ELLIPSIS
    'ledger /srv/l.sqlite: file is not a database: it is not a SQLite database ...'
    """
    if isinstance(exc, LedgerError):
        return exc
    text = str(exc)
    advice = next((a for words, a in _ADVICE if words in text.lower()), "")
    advice = advice.replace("FILE", str(path))
    return LedgerError(f"ledger {path}: {text}" + (f": {advice}" if advice else ""))


@dataclass(frozen=True)
class FrameRow:
    """One raw frame as the ledger knows it."""

    id: int
    root: str
    relpath: str
    size: int
    mtime_ns: int
    checksum: str | None
    kind: str | None
    night: str | None
    state: str
    attempts: int
    last_error: str | None
    info: FrameMeta
    first_seen: str
    updated: str
    started: str | None
    finished: str | None
    latency: float | None
    changed: bool = False  # set by observe() on the transition done -> changed

    @property
    def path(self) -> Path:
        """Absolute path of the raw file."""
        return Path(self.root) / self.relpath


@dataclass(frozen=True)
class Measurement:
    """One stored photometry row with where it came from."""

    frame_id: int
    version: int
    calib: str
    superseded: bool
    night: str | None
    relpath: str
    row: dict = field(default_factory=dict)


def utc_now() -> str:
    """Current UTC time as ISO 8601 with milliseconds.

    Examples
    --------
    >>> utc_now()  # doctest: +SKIP
    '2025-06-01T03:12:45.123+00:00'
    """
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _json_default(obj):
    """numpy scalars/arrays and datetimes in measurement rows."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, datetime):
        return obj.isoformat()
    raise TypeError(f"cannot store {type(obj).__name__} in the ledger: {obj!r}")


def _dumps(data):
    return json.dumps(data, default=_json_default, allow_nan=True)


def _meta_json(info):
    """``frames.info`` of a :class:`FrameMeta` (a mapping of its field names is read as one)."""
    try:
        return _dumps(FrameMeta.of(info).to_dict())
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"cannot store frame metadata {info!r}: {exc}") from None


def _check_local(path, allow_network_fs):
    if not is_network_fs(path):
        return
    msg = (
        f"ledger {path} is on a network filesystem ({mount_fstype(path)}): SQLite's WAL "
        "and locking do not work there and the database can be corrupted; put it on a "
        "local disk (e.g. /var/lib/reduxd)"
    )
    if not allow_network_fs:
        raise LedgerError(msg)
    warnings.warn(msg, stacklevel=3)


class Ledger:
    """SQLite ledger of frames, masters, measurements and field references.

    Parameters
    ----------
    path : path-like
        Database file (created with its schema when missing).
    allow_network_fs : bool
        Refuse a path on NFS/CIFS/... unless True (then only warn).
    busy_timeout : float
        Seconds to wait for a lock held by another process (e.g. a report
        reading the database).
    durable : bool
        ``synchronous=FULL`` (default) or ``NORMAL``; see the notes.
    readonly : bool
        Open an existing ledger for reading only (SQLite ``mode=ro``): never
        creates, migrates or takes a write lock (``reduxd serve``, the web page).

    Notes
    -----
    WAL journal with ``synchronous=FULL``: readers never block the writer, and a
    commit is on disk before it returns, so an attempt recorded before the work
    (or a frame marked done) survives a power cut, which small observatories do
    have. The cost, one fsync of the WAL per commit, is nothing at a few commits
    per frame. ``durable=False`` (``reduxd reduce``, whose re-run redoes what is
    missing) uses ``NORMAL``: safe against a process crash, but a power cut may
    lose the last commits.

    Examples
    --------
    >>> ledger = Ledger("/var/lib/reduxd/ledger.sqlite")  # doctest: +SKIP
    >>> row = ledger.observe("/data/sharpcap", "M51/Light_001.fits", size=1, mtime_ns=1)
    ... # doctest: +SKIP
    >>> attempt = ledger.begin(row.id)  # doctest: +SKIP
    >>> ledger.finish(row.id, kind="light", checksum="ab12", night="2025-06-01")
    ... # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        allow_network_fs: bool = False,
        busy_timeout: float = 10.0,
        durable: bool = True,
        readonly: bool = False,
    ):
        self.path = Path(path)
        self.durable = durable
        self.readonly = readonly
        _check_local(self.path, allow_network_fs)
        try:
            if readonly:
                self._db = _connect_readonly(self.path, busy_timeout)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ledger_error(self.path, exc) from exc
        self._db.row_factory = sqlite3.Row
        try:
            if readonly:
                self._check_version()
                _legacy_view(self._db)
                _legacy_rows(self._db)
            else:
                self._setup(busy_timeout)
        except (OSError, sqlite3.Error) as exc:
            self._db.close()
            raise ledger_error(self.path, exc) from exc
        except BaseException:
            self._db.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    # -- setup ---------------------------------------------------------------------

    def _setup(self, busy_timeout):
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise LedgerError(f"{self.path}: cannot switch to WAL journal (got {mode!r})")
        db.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        db.execute("PRAGMA foreign_keys = ON")
        with self._tx():
            exists = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
            ).fetchone()
            if not exists:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        self._check_version()
        _migrate(db)
        _index_frames(db)

    def _check_version(self):
        version = self._db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if version != SCHEMA_VERSION and version not in OLD_VERSIONS:
            raise LedgerError(
                f"{self.path}: schema version {version}, this reduxd knows {SCHEMA_VERSION}"
            )

    def _tx(self):
        return _Transaction(self._db)

    def transaction(self):
        """One transaction around several calls: all of them are committed, or none.

        Examples
        --------
        >>> with ledger.transaction():  # doctest: +SKIP
        ...     ledger.add_measurements(row.id, rows, calib="none", master_ids=[])
        ...     ledger.finish(row.id, kind="light", checksum=None)
        """
        return self._tx()

    @property
    def schema_version(self) -> int:
        """Schema version stored in the database."""
        return self._db.execute("SELECT max(version) FROM schema_version").fetchone()[0]

    # -- frames --------------------------------------------------------------------

    def observe(self, root: str, relpath: str, *, size: int, mtime_ns: int) -> FrameRow:
        """Record a frame as seen, or return its existing row.

        A frame that is ``done`` and whose size or mtime changed goes to
        ``changed`` and comes back with ``changed=True`` (once): raise an
        alert rather than redo it silently. A ``failed`` or ``quarantined``
        frame that changed (rewritten) is given a fresh start as ``seen``.

        Examples
        --------
        >>> row = ledger.observe("/data", "n1/a.fits", size=2880, mtime_ns=0)  # doctest: +SKIP
        >>> row.state  # doctest: +SKIP
        'seen'
        """
        root, relpath = str(root), str(relpath)
        old = self._find(root, relpath)
        if old is None:
            now = utc_now()
            with self._tx():
                self._db.execute(
                    "INSERT INTO frames (root, relpath, size, mtime_ns, state, first_seen,"
                    " updated) VALUES (?, ?, ?, ?, 'seen', ?, ?) ON CONFLICT DO NOTHING",
                    (root, relpath, size, mtime_ns, now, now),
                )
            return self._find(root, relpath)
        if (old.size, old.mtime_ns) == (size, mtime_ns):
            return old
        return self._on_change(old, size, mtime_ns)

    def _on_change(self, old, size, mtime_ns):
        note = f"file changed: size {old.size} -> {size}, mtime_ns {old.mtime_ns} -> {mtime_ns}"
        sets, args = "size = ?, mtime_ns = ?", [size, mtime_ns]
        if old.state == "done":
            sets += ", state = 'changed', last_error = ?"
            args.append(note)
        elif old.state in ("failed", "quarantined"):
            sets += ", state = 'seen', attempts = 0, last_error = ?"
            args.append(f"{note} (was {old.state}: {old.last_error})")
        self._update(old.id, sets, args)
        return dataclasses.replace(self.frame(old.id), changed=old.state == "done")

    def begin(self, frame_id: int) -> int:
        """Record and commit a new attempt (state ``processing``) before the work; return it.

        Starting again from ``done`` or ``changed`` (a re-reduction) restarts
        the attempt count.

        Raises
        ------
        LedgerError
            If the frame is already ``processing``.

        Examples
        --------
        >>> attempt = ledger.begin(row.id)  # then do the work  # doctest: +SKIP
        """
        row = self._get(frame_id)
        if row.state == "processing":
            raise LedgerError(f"frame {frame_id} ({row.relpath}) is already being processed")
        attempts = 1 if row.state in ("done", "changed") else row.attempts + 1
        self._update(
            frame_id,
            "state = 'processing', attempts = ?, started = ?",
            [attempts, utc_now()],
        )
        return attempts

    def finish(
        self,
        frame_id: int,
        *,
        kind: str,
        checksum: str | None,
        night: str | None = None,
        info: FrameMeta | None = None,
    ) -> FrameRow:
        """Mark a frame done, with its kind, checksum, night and metadata (:class:`FrameMeta`).

        Examples
        --------
        >>> ledger.finish(row.id, kind="light", checksum=file_checksum(row.path),
        ...               night="2025-06-01", info=FrameMeta(filter="V"))  # doctest: +SKIP
        """
        row = self._get(frame_id)
        latency = max(0.0, time.time() - row.mtime_ns / 1e9)
        self._update(
            frame_id,
            "state = 'done', kind = ?, checksum = ?, night = ?, info = ?, finished = ?,"
            " latency = ?, last_error = NULL",
            [kind, checksum, night, _meta_json(info), utc_now(), latency],
        )
        return self.frame(frame_id)

    def fail(self, frame_id: int, reason: str, *, max_tries: int, retry: str = "seen") -> str:
        """Record a failed attempt; return the new state (``retry`` or ``failed``).

        ``retry``: the state of a frame to try again, ``seen`` or ``incomplete``
        (a file still being written).

        Examples
        --------
        >>> ledger.fail(row.id, "FrameIncomplete: short data", max_tries=3)  # doctest: +SKIP
        'seen'
        """
        _check_state(retry, ("seen", "incomplete"))
        row = self._get(frame_id)
        state = retry if row.attempts < max_tries else "failed"
        self._update(frame_id, "state = ?, last_error = ?", [state, reason])
        return state

    def quarantine(self, frame_id: int, reason: str) -> None:
        """Set a broken frame aside for good, with the reason."""
        self._get(frame_id)
        self._update(frame_id, "state = 'quarantined', last_error = ?", [reason])

    def defer(self, frame_id: int, reason: str, *, state: str = "seen") -> None:
        """Back to ``state`` without spending an attempt: ``waiting`` for a master, or
        ``seen`` (a forced stop, a full disk).

        Examples
        --------
        >>> ledger.defer(row.id, "waiting for calibration: no flat in V", state="waiting")
        ... # doctest: +SKIP
        """
        _check_state(state, ("seen", "waiting"))
        row = self._get(frame_id)
        attempts = max(row.attempts - 1, 0) if row.state == "processing" else row.attempts
        self._update(frame_id, "state = ?, attempts = ?, last_error = ?", [state, attempts, reason])

    def annotate(self, frame_ids, **changes) -> None:
        """Set fields of the metadata of each frame in ``frame_ids`` (one transaction)."""
        with self._tx():
            for frame_id in frame_ids:
                row = self._get(frame_id)
                merged = _meta_json(row.info.updated(**changes))
                self._db.execute(
                    "UPDATE frames SET info = ?, updated = ? WHERE id = ?",
                    (merged, utc_now(), frame_id),
                )

    def exclude(self, frame_id: int, *, checksum: str | None, night: str | None, info: FrameMeta):
        """Mark a light ``excluded`` (its filter is excluded); ``reset`` brings it back."""
        self._get(frame_id)
        self._update(
            frame_id,
            "state = 'excluded', kind = 'light', checksum = ?, night = ?, info = ?,"
            " finished = ?, last_error = NULL",
            [checksum, night, _meta_json(info), utc_now()],
        )

    def fingerprints(self) -> dict[int, dict]:
        """The settings fingerprint of each frame's current reduction (``{}`` when unknown)."""
        cur = self._db.execute("SELECT frame_id, fingerprint FROM reductions WHERE superseded = 0")
        return {r[0]: json.loads(r[1]) if r[1] else {} for r in cur}

    def reset(self, frame_id: int) -> None:
        """Back to ``seen`` with no attempts (operator retry of a failed/changed frame)."""
        self._get(frame_id)
        self._update(frame_id, "state = 'seen', attempts = 0", [])

    def recover_interrupted(self, *, max_tries: int) -> list[FrameRow]:
        """At start: frames left ``processing`` by a crash go back to ``seen`` or to ``failed``.

        Returns the updated rows. A frame whose attempts are exhausted is
        ``failed``, so a frame that kills the process cannot crash-loop it.

        Examples
        --------
        >>> for row in ledger.recover_interrupted(max_tries=3):  # doctest: +SKIP
        ...     log.warning("interrupted frame", path=str(row.path), state=row.state)
        """
        rows = self._select("WHERE state = 'processing'")
        for row in rows:
            state = "seen" if row.attempts < max_tries else "failed"
            reason = f"interrupted during attempt {row.attempts} (process died or was killed)"
            self._update(row.id, "state = ?, last_error = ?", [state, reason])
        return [self.frame(row.id) for row in rows]

    def duplicate_of(self, frame_id: int, checksum: str) -> FrameRow | None:
        """The first done, measured light with this checksum, other than ``frame_id``."""
        rows = self._select(DUPLICATE, (checksum, frame_id))
        return rows[0] if rows else None

    def pending(self) -> list[FrameRow]:
        """Frames to be picked up again (``seen``, ``waiting``, ``incomplete``), oldest first."""
        return self._select(f"WHERE state IN {PENDING} ORDER BY id")

    def counts(self) -> dict[str, int]:
        """Number of frames per state (every state present, zeros included)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._db.execute("SELECT state, count(*) FROM frames GROUP BY state"):
            counts[state] = n
        return counts

    def last_arrival(self) -> str | None:
        """When the newest frame was first seen (UTC ISO), None for an empty ledger."""
        return self._db.execute("SELECT max(first_seen) FROM frames").fetchone()[0]

    def recent(self, n: int = 20) -> list[FrameRow]:
        """The ``n`` most recently updated frames, newest first."""
        return self._select("ORDER BY updated DESC, id DESC LIMIT ?", (n,))

    def failures(self) -> list[FrameRow]:
        """Frames that need a person: ``failed``, ``quarantined`` and ``changed``."""
        return self._select("WHERE state IN ('failed', 'quarantined', 'changed') ORDER BY id")

    def frames(
        self, *, night: str | None = None, kind: str | None = None, state: str | None = None
    ) -> list[FrameRow]:
        """Frames filtered by night, kind and state (None: any)."""
        where, args = _where(night=night, kind=kind, state=state)
        return self._select(f"{where} ORDER BY id", args)

    def frame(
        self, frame_id: int | None = None, *, root: str | None = None, relpath: str | None = None
    ) -> FrameRow | None:
        """One frame by id, or by ``root`` and ``relpath``; None if unknown."""
        if frame_id is not None:
            rows = self._select("WHERE id = ?", (frame_id,))
            return rows[0] if rows else None
        return self._find(str(root), str(relpath))

    def _find(self, root, relpath):
        rows = self._select("WHERE root = ? AND relpath = ?", (root, relpath))
        return rows[0] if rows else None

    def _get(self, frame_id):
        row = self.frame(frame_id)
        if row is None:
            raise LedgerError(f"no frame with id {frame_id}")
        return row

    def _select(self, tail, args=()):
        cur = self._db.execute(f"SELECT * FROM frames {tail}", args)
        return [_frame_row(r) for r in cur]

    def _update(self, frame_id, sets, args):
        with self._tx():
            self._db.execute(
                f"UPDATE frames SET {sets}, updated = ? WHERE id = ?",
                [*args, utc_now(), frame_id],
            )

    # -- masters -------------------------------------------------------------------

    def add_master(self, rec: MasterRecord, *, status: str = "valid", reason: str | None = None):
        """Store a master calibration; return its id (the existing id if already stored).

        Examples
        --------
        >>> master_id = ledger.add_master(rec)  # doctest: +SKIP
        """
        old = self._db.execute(
            "SELECT id FROM masters WHERE path = ? AND checksum = ?", (rec.path, rec.checksum)
        ).fetchone()
        if old:
            return old[0]
        values = _master_values(rec)
        cols = ", ".join(values)
        marks = ", ".join("?" * len(values))
        with self._tx():
            cur = self._db.execute(
                f"INSERT INTO masters ({cols}, status, reason, created) VALUES ({marks}, ?, ?, ?)",
                [*values.values(), status, reason, utc_now()],
            )
        return cur.lastrowid

    def masters(
        self,
        kind: str | None = None,
        *,
        instrument: str | None = None,
        status: str | None = "valid",
    ) -> list[MasterRecord]:
        """Stored masters (with ``id`` set), filtered; ``status=None`` for all."""
        where, args = _where(kind=kind, instrument=instrument, status=status)
        cur = self._db.execute(f"SELECT * FROM masters {where} ORDER BY id", args)
        return [_master_record(r) for r in cur]

    def master_status(self, master_id: int) -> tuple[str, str | None]:
        """``(status, reason)`` of a master."""
        row = self._db.execute(
            "SELECT status, reason FROM masters WHERE id = ?", (master_id,)
        ).fetchone()
        if row is None:
            raise LedgerError(f"no master with id {master_id}")
        return row["status"], row["reason"]

    def reject_master(self, master_id: int, reason: str) -> None:
        """Mark a master unusable (it stays stored, for the record)."""
        self.master_status(master_id)
        with self._tx():
            self._db.execute(
                "UPDATE masters SET status = 'rejected', reason = ? WHERE id = ?",
                (reason, master_id),
            )

    # -- measurements --------------------------------------------------------------

    def add_measurements(
        self,
        frame_id: int,
        rows: list[dict],
        *,
        calib: str,
        master_ids: list[int],
        fingerprint: dict | None = None,
    ) -> int:
        """Store a frame's photometry rows as a new version; older versions are superseded.

        ``calib`` says how the frame was calibrated (e.g. ``'bias+dark+flat'``),
        ``master_ids`` which masters were used, ``fingerprint`` the settings that made
        the rows (see :mod:`reduxd.fingerprint`). Returns the new version number.

        Examples
        --------
        >>> ledger.add_measurements(row.id, rows, calib="bias+dark+flat",
        ...                         master_ids=[bias.id, dark.id, flat.id])  # doctest: +SKIP
        1
        """
        self._get(frame_id)
        with self._tx():
            db = self._db
            version = db.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM reductions WHERE frame_id = ?",
                (frame_id,),
            ).fetchone()[0]
            db.execute("UPDATE reductions SET superseded = 1 WHERE frame_id = ?", (frame_id,))
            red_id = db.execute(
                "INSERT INTO reductions (frame_id, version, calib, created, fingerprint)"
                " VALUES (?, ?, ?, ?, ?)",
                (frame_id, version, calib, utc_now(), _dumps(fingerprint) if fingerprint else None),
            ).lastrowid
            db.executemany(
                "INSERT INTO reduction_masters VALUES (?, ?)",
                [(red_id, m) for m in dict.fromkeys(master_ids)],
            )
            record = _record(rows)
            if record is not None:
                db.execute("INSERT INTO light_rows VALUES (?, ?, ?, ?, ?)", (red_id, *record))
            else:
                db.executemany(
                    "INSERT INTO measurements (reduction_id, data) VALUES (?, ?)",
                    [(red_id, text) for text in json_rows(rows, _dumps)],
                )
        return version

    def measurements(
        self, *, current_only: bool = True, night: str | None = None, frame_id: int | None = None
    ) -> list[Measurement]:
        """Stored photometry rows, in frame then version then insertion order."""
        where, args = ["1"], []
        if current_only:
            where.append("r.superseded = 0")
        if night is not None:
            where.append("f.night = ?")
            args.append(night)
        if frame_id is not None:
            where.append("f.id = ?")
            args.append(frame_id)
        select = (
            "SELECT f.id AS frame_id, r.version, r.calib, r.superseded, f.night, f.relpath,"
            " m.data FROM {table} m JOIN reductions r ON m.reduction_id = r.id"
            f" JOIN frames f ON r.frame_id = f.id WHERE {' AND '.join(where)}"
        )
        out = []
        for r in self._db.execute(select.format(table="light_rows"), args):
            source = (r["frame_id"], r["version"], r["calib"], bool(r["superseded"]))
            out += [Measurement(*source, r["night"], r["relpath"], row)
                    for row in decode_rows(r["data"])]  # fmt: skip
        cur = self._db.execute(select.format(table="measurements") + " ORDER BY m.id", args)
        for r in cur:  # rows stored as JSON by a ledger of version 1
            source = (r["frame_id"], r["version"], r["calib"], bool(r["superseded"]))
            out.append(Measurement(*source, r["night"], r["relpath"], json.loads(r["data"])))
        # a light's rows are in one table: a stable sort keeps their order
        out.sort(key=lambda m: (m.frame_id, m.version))
        return out

    def field_measurements(self, object, filter, *, upto: int | None = None):
        """Current photometry rows of one field, in frame then insertion order (an iterator).

        A field is the rows' ``object`` and ``filter`` (None matches a missing
        value). Only the field's reductions are read, not the night's: a light
        curve's rebuild costs its own frames. ``upto``: reductions with this id
        or lower only (a snapshot, see :meth:`last_reduction`). Yields
        ``(version, row)``.
        """
        for red_id, _frame_id, version in self.field_reductions(object, filter, upto=upto):
            yield from ((version, row) for row in self._rows_of(red_id))

    def _rows_of(self, reduction_id):
        """The rows of one reduction (a record, or JSON texts of a ledger of version 1)."""
        db = self._db
        found = db.execute(
            "SELECT data FROM light_rows WHERE reduction_id = ?", (reduction_id,)
        ).fetchone()
        if found is not None:
            return decode_rows(found[0])
        cur = db.execute(
            "SELECT data FROM measurements WHERE reduction_id = ? ORDER BY id", (reduction_id,)
        )
        # one parse of the light's rows as a list: a tenth less than a parse per row
        return json.loads("[" + ",".join(r[0] for r in cur) + "]")

    def field_reductions(self, object, filter, *, upto: int | None = None):
        """``(reduction_id, frame_id, version)`` of one field's current reductions, in
        frame order (see :meth:`field_measurements`)."""
        upto = self.last_reduction() if upto is None else upto
        return self._db.execute(
            "SELECT r.id, r.frame_id, r.version FROM reductions r WHERE r.superseded = 0"
            " AND r.id <= ? AND coalesce((SELECT b.object IS ? AND b.filter IS ? FROM"
            " light_rows b WHERE b.reduction_id = r.id), (SELECT json_extract(m.data,"
            " '$.object') IS ? AND json_extract(m.data, '$.filter') IS ? FROM measurements m"
            " WHERE m.reduction_id = r.id ORDER BY m.id LIMIT 1)) ORDER BY r.frame_id",
            (upto, object, filter, object, filter),
        ).fetchall()

    def last_reduction(self) -> int:
        """Id of the newest reduction (0 without any): a snapshot for :meth:`field_measurements`."""
        return self._db.execute("SELECT coalesce(max(id), 0) FROM reductions").fetchone()[0]

    def reductions_since(self, reduction_id: int = 0) -> list[tuple[int, int]]:
        """``(reduction_id, frame_id)`` of current reductions newer than ``reduction_id``.

        For readers following the ledger (the web page): each reduced light once,
        in commit order; a re-reduced light comes back with its new reduction.
        """
        cur = self._db.execute(
            "SELECT id, frame_id FROM reductions WHERE id > ? AND superseded = 0 ORDER BY id",
            (reduction_id,),
        )
        return [(r[0], r[1]) for r in cur]

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def masters_used(self, frame_id: int) -> list[int]:
        """Ids of the masters used by a frame's current reduction."""
        cur = self._db.execute(
            "SELECT rm.master_id FROM reduction_masters rm JOIN reductions r"
            " ON rm.reduction_id = r.id WHERE r.frame_id = ? AND r.superseded = 0"
            " ORDER BY rm.master_id",
            (frame_id,),
        )
        return [r[0] for r in cur]

    def frames_calibrated_with(self, master_id: int) -> list[int]:
        """Frames whose current reduction used ``master_id`` (e.g. to redo after a rejection)."""
        cur = self._db.execute(
            "SELECT DISTINCT r.frame_id FROM reductions r JOIN reduction_masters rm"
            " ON rm.reduction_id = r.id WHERE rm.master_id = ? AND r.superseded = 0"
            " ORDER BY r.frame_id",
            (master_id,),
        )
        return [r[0] for r in cur]

    def frames_reduced_without(
        self, master_kind: str, *, night: str | None = None, kind: str = "light"
    ) -> list[int]:
        """Frames (lights by default) whose current reduction used no master of ``master_kind``.

        E.g. ``frames_reduced_without('flat', night='2025-06-01')`` when the flats
        of that night arrive after the lights.

        Examples
        --------
        >>> ledger.frames_reduced_without("flat", night="2025-06-01")  # doctest: +SKIP
        [12, 13, 14]
        """
        where, args = "", [master_kind, kind]
        if night is not None:
            where, args = " AND f.night = ?", [*args, night]
        cur = self._db.execute(
            "SELECT f.id FROM frames f JOIN reductions r ON r.frame_id = f.id"
            " AND r.superseded = 0 WHERE NOT EXISTS (SELECT 1 FROM reduction_masters rm"
            " JOIN masters m ON m.id = rm.master_id WHERE rm.reduction_id = r.id"
            f" AND m.kind = ?) AND f.kind = ?{where} ORDER BY f.id",
            args,
        )
        return [r[0] for r in cur]

    # -- field references ----------------------------------------------------------

    def save_reference(self, field_key: str, data: dict) -> None:
        """Store (replace) the reference star catalogue of a field, as JSON.

        Examples
        --------
        >>> ledger.save_reference("M51|V", {"stars": [...]})  # doctest: +SKIP
        >>> ledger.load_reference("M51|V")["stars"]  # doctest: +SKIP
        """
        with self._tx():
            self._db.execute(
                "INSERT INTO field_refs VALUES (?, ?, ?) ON CONFLICT (field_key)"
                " DO UPDATE SET data = excluded.data, updated = excluded.updated",
                (field_key, _dumps(data), utc_now()),
            )

    def load_reference(self, field_key: str) -> dict | None:
        """The stored reference of a field, or None."""
        row = self._db.execute(
            "SELECT data FROM field_refs WHERE field_key = ?", (field_key,)
        ).fetchone()
        return None if row is None else json.loads(row[0])


def _migrate(db):
    """Bring a ledger made by an earlier version up to date, in place, in one transaction.

    Adds ``reductions.fingerprint``, and the states ``excluded``, ``waiting`` and
    ``incomplete``. SQLite cannot change a CHECK constraint, so the frames table is
    rebuilt as SQLite documents (foreign keys off; create the new table, copy, drop,
    rename, indexes, foreign key check); ids and rows are kept, and a frame that
    waited as ``seen`` gets its state from :func:`_state_sql`.
    """
    columns = {r[1] for r in db.execute("PRAGMA table_info(reductions)")}
    version = db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    if "fingerprint" in columns and "'waiting'" in _frames_sql(db) and version == SCHEMA_VERSION:
        return
    db.execute("PRAGMA foreign_keys = OFF")
    try:
        with _Transaction(db):
            if "fingerprint" not in columns:
                db.execute("ALTER TABLE reductions ADD COLUMN fingerprint TEXT")
            if "'waiting'" not in _frames_sql(db):
                _rebuild_frames(db)
            if version != SCHEMA_VERSION:
                _add_light_rows(db)
            if db.execute("PRAGMA foreign_key_check").fetchall():
                raise LedgerError("ledger migration broke a foreign key; nothing was changed")
    finally:
        db.execute("PRAGMA foreign_keys = ON")


def _index_frames(db):
    """Make the frames' indexes a ledger lacks (one made by an earlier version); when it has
    them all, nothing is written."""
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    missing = [name for name in FRAME_INDEXES if name not in names]
    if missing:
        with _Transaction(db):
            _make_indexes(db, missing)


def _make_indexes(db, names):
    for name in names:
        db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON frames ({FRAME_INDEXES[name]})")


def _light_rows_sql():
    return re.search(r"CREATE TABLE light_rows \(.*?\n\);", _SCHEMA, re.S).group(0)


def _add_light_rows(db):
    """Version 1 -> 2 (inside a transaction): the table of row records; the JSON rows stay."""
    db.execute(_light_rows_sql().replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


def _legacy_rows(db):
    """A read-only reader of a ledger of version 1: an empty TEMP ``light_rows`` (for this
    connection only) lets the queries of this version read it."""
    if db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION:
        return
    db.execute(_light_rows_sql().replace("CREATE TABLE", "CREATE TEMP TABLE", 1))


def _record(rows):
    """``(object, filter, n, record)`` of a light's rows for ``light_rows``, or None (JSON
    texts: no rows, rows of other shapes, or a field not given as text)."""
    if not rows:
        return None
    first = rows[0]
    field = (first.get("object"), first.get("filter"))
    if not all(v is None or isinstance(v, str) for v in field):
        return None
    data = encode_rows(rows, _dumps)
    return None if data is None else (*field, len(rows), data)


def _frames_sql(db):
    return db.execute("SELECT sql FROM sqlite_master WHERE name = 'frames'").fetchone()[0]


def _rebuild_frames(db):
    """Copy the frames into a table made by this version's schema (inside a transaction)."""
    create = re.search(r"CREATE TABLE frames \(.*?\n\);", _SCHEMA, re.S).group(0)
    db.execute(create.replace("CREATE TABLE frames", "CREATE TABLE frames_new", 1))
    new = {r[1] for r in db.execute("PRAGMA table_info(frames_new)")}
    old = [r[1] for r in db.execute("PRAGMA table_info(frames)")]
    kept = ", ".join(c for c in old if c in new and c != "state")
    state = _state_sql(old)
    db.execute(f"INSERT INTO frames_new ({kept}, state) SELECT {kept}, {state} FROM frames")
    db.execute("DROP TABLE frames")
    db.execute("ALTER TABLE frames_new RENAME TO frames")
    _make_indexes(db, FRAME_INDEXES)


def _state_sql(columns):
    """SQL giving the state of a frame stored by an earlier version with ``columns``.

    Main f55142a kept a waiting frame as ``seen`` with ``frames.wait``
    (``calibration`` or ``incomplete``); before that column only its reason told
    (``waiting for calibration: ...``, ``incomplete: ...``). Read here, nowhere else.
    """
    if "wait" in columns:
        waiting, incomplete = "wait = 'calibration'", "wait = 'incomplete'"
    else:
        waiting = "last_error LIKE 'waiting for calibration%'"
        incomplete = "last_error LIKE 'incomplete:%'"
    return (
        f"CASE WHEN state = 'seen' AND {waiting} THEN 'waiting'"
        f" WHEN state = 'seen' AND {incomplete} THEN 'incomplete' ELSE state END"
    )


def _legacy_view(db):
    """A read-only reader of a ledger not migrated yet sees this version's states.

    A TEMP view named ``frames`` (it shadows the file's table for this connection
    only; nothing is written to the file) gives the states :func:`_rebuild_frames`
    would store.
    """
    if "'waiting'" in _frames_sql(db):
        return
    old = [r[1] for r in db.execute("PRAGMA table_info(frames)")]
    state = f"{_state_sql(old)} AS state"
    select = ", ".join(state if c == "state" else c for c in old if c != "wait")
    db.execute(f"CREATE TEMP VIEW frames AS SELECT {select} FROM main.frames")


def _check_state(state, allowed):
    if state not in allowed:
        raise LedgerError(f"state {state!r} is not one of {', '.join(allowed)} here")


def _connect_readonly(path, busy_timeout):
    """A ``mode=ro`` connection to an existing ledger (LedgerError if it cannot be opened)."""
    if not path.is_file():
        raise LedgerError(f"{path}: no ledger there (a read-only reader does not create one)")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
    try:
        db.execute("SELECT 1 FROM schema_version LIMIT 1")
    except sqlite3.Error as exc:
        db.close()
        raise LedgerError(f"{path}: cannot open the ledger read-only: {exc}") from None
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return db


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection.

    Inside a transaction already open it joins it: the outer one commits or rolls back.
    """

    def __init__(self, db):
        self.db = db
        self.outer = False

    def __enter__(self):
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _where(**filters):
    pairs = [(k, v) for k, v in filters.items() if v is not None]
    if not pairs:
        return "", []
    return "WHERE " + " AND ".join(f"{k} = ?" for k, _ in pairs), [v for _, v in pairs]


def _frame_row(r):
    data = dict(r)
    try:
        data["info"] = FrameMeta.from_dict(json.loads(data["info"]) if data["info"] else {})
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"frame {data['id']} ({data['relpath']}): {exc}") from None
    return FrameRow(**data)


def _iso(value):
    return None if value is None else value.isoformat()


def _master_values(rec):
    return {
        "kind": rec.kind,
        "path": str(rec.path),
        "checksum": rec.checksum,
        "instrument": rec.instrument,
        "ny": rec.shape[0],
        "nx": rec.shape[1],
        "xbin": rec.binning[0],
        "ybin": rec.binning[1],
        "gain": rec.gain,
        "exptime": rec.exptime,
        "filter": rec.filter,
        "ccd_temp": rec.ccd_temp,
        "date_start": _iso(rec.date_start),
        "date_end": _iso(rec.date_end),
        "ncombine": rec.ncombine,
        "night": rec.night,
    }


def _master_record(r):
    def when(text):
        return None if text is None else datetime.fromisoformat(text)

    return MasterRecord(
        kind=r["kind"],
        path=r["path"],
        checksum=r["checksum"],
        instrument=r["instrument"],
        shape=(r["ny"], r["nx"]),
        binning=(r["xbin"], r["ybin"]),
        gain=r["gain"],
        exptime=r["exptime"],
        filter=r["filter"],
        ccd_temp=r["ccd_temp"],
        date_start=when(r["date_start"]),
        date_end=when(r["date_end"]),
        ncombine=r["ncombine"],
        night=r["night"],
        id=r["id"],
    )
