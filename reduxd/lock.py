"""One writer per ledger: an advisory lock beside the SQLite file.

``reduxd watch`` and ``reduxd reduce`` take the lock before opening the ledger;
a second writer on the same ledger exits at once with a message naming the
process that holds it. Readers (``reduxd status``, the web page) never take it
and are never blocked; they may call :func:`holder` to show who is writing.

The lock is an ``fcntl.flock`` on ``<state_path>.lock``, which holds JSON
``{"pid": ..., "command": "watch" | "reduce", "started": ISO-8601 UTC}``. The
kernel releases it when the process dies, even by ``kill -9``: a lock file left
behind by a dead process is not a held lock.

Examples
--------
>>> import tempfile, os
>>> state = os.path.join(tempfile.mkdtemp(), "reduxd.sqlite")
>>> holder(state) is None
True
>>> with acquire(state, command="reduce") as lock:
...     holder(state)["command"], holder(state)["pid"] == os.getpid()
('reduce', True)
>>> holder(state) is None
True
"""

import contextlib
import fcntl
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from reduxd.errors import ReduxdError

COMMANDS = ("watch", "reduce")
# holder() takes a shared lock for an instant; acquire() retries for this long
# before deciding the lock is really held by another writer
RETRY_SECONDS = 0.5


class LedgerInUse(ReduxdError):
    """Another process writes to this ledger (``pid``, ``command``, ``started`` say which)."""

    def __init__(self, state_path, info):
        self.state_path = str(state_path)
        self.info = dict(info or {})
        self.pid = self.info.get("pid")
        who = f"process {self.pid}" if self.pid else "another process"
        if self.info.get("command"):
            who += f" (reduxd {self.info['command']}, since {self.info.get('started')})"
        super().__init__(
            f"ledger {state_path} is in use by {who}: stop it first, or give this "
            "command another output folder or ledger (--state)"
        )


def lock_path(state_path):
    """The lock file of a ledger: ``<state_path>.lock``."""
    return Path(f"{os.fspath(state_path)}.lock")


class Lock:
    """A held lock; release it with :meth:`release` or by leaving the ``with`` block."""

    def __init__(self, fd, path, info):
        self._fd = fd
        self.path = path
        self.info = info

    def release(self):
        """Release the lock (idempotent). The file stays; it means nothing unlocked."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def acquire(state_path, *, command):
    """Take the single-writer lock of the ledger ``state_path``.

    Parameters
    ----------
    state_path : path-like
        The ledger file (it need not exist yet); its folder must exist.
    command : {'watch', 'reduce'}
        Recorded in the lock file for :func:`holder` and the other process's message.

    Returns
    -------
    Lock
        A context manager; the lock is held until it is released or the process ends.

    Raises
    ------
    LedgerInUse
        Another live process holds the lock; its pid, command and start time are
        in the message and in the exception's ``info``.
    """
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, not {command!r}")
    path = lock_path(state_path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _lock(fd, state_path)
        info = {
            "pid": os.getpid(),
            "command": command,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return Lock(fd, path, info)


def _lock(fd, state_path):
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LedgerInUse(state_path, _read(fd)) from None
            time.sleep(0.02)


def holder(state_path):
    """Who holds the lock of ``state_path``: its JSON as a dict, or None when nobody does.

    Never blocks and never creates a file: a missing lock file, or one no live
    process holds (left by a process that died), gives None.
    """
    try:
        fd = os.open(lock_path(state_path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # an exclusive lock: a writer is alive
            return _read(fd) or {"pid": None, "command": None, "started": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd):
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "null")
        if isinstance(data, dict):
            return data
    return {}
