"""Decide when a file has stopped growing (paperless-ngx consumer style).

Events and scans only *hint* that a file may be new; a file is handed on once its
size and mtime have not changed for ``settle_seconds``, measured on a monotonic clock
(wall-clock jumps at night, NTP steps, do not matter).
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _Entry:
    signature: tuple[int, int] | None  # (size, mtime_ns); None until first stat
    since: float  # monotonic time the signature was first seen


def file_signature(path):
    """(size, mtime_ns) of ``path``, or None when it is gone or unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class StabilityTracker:
    """Track candidate files until their size and mtime settle.

    Parameters
    ----------
    settle_seconds : float
        How long (size, mtime_ns) must stay unchanged. On NFS/CIFS shares this must
        exceed the attribute cache time (tens of seconds).
    clock : callable
        Monotonic clock returning seconds; injectable for tests.
    min_size : int
        Files smaller than this are never reported (a polling observer sees files
        at 0 bytes before the writer has written anything).

    Examples
    --------
    >>> tracker = StabilityTracker(settle_seconds=5.0)
    >>> tracker.touch("/data/night/light_0001.fits")
    >>> tracker.poll()  # later, from the main loop
    []
    """

    def __init__(
        self,
        *,
        settle_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        min_size: int = 1,
    ):
        self.settle_seconds = settle_seconds
        self.min_size = min_size
        self._clock = clock
        self._entries: dict[Path, _Entry] = {}

    def __len__(self):
        return len(self._entries)

    def __contains__(self, path):
        return Path(path) in self._entries

    def touch(self, path: str | os.PathLike) -> None:
        """Register a hint (event or scan) that ``path`` may be new or changing.

        Examples
        --------
        >>> StabilityTracker().touch("/data/night/light_0001.fits")
        """
        path = Path(path)
        if path not in self._entries:
            self._entries[path] = _Entry(file_signature(path), self._clock())
        else:
            self._update(path, self._entries[path], self._clock())

    def forget(self, path: str | os.PathLike) -> None:
        """Stop tracking ``path`` (no error if it was not tracked)."""
        self._entries.pop(Path(path), None)

    def poll(self) -> list[Path]:
        """Stat every tracked file; return (and stop tracking) the settled ones.

        Files that vanished are forgotten. The result is sorted by path.

        Examples
        --------
        >>> tracker = StabilityTracker(settle_seconds=0.0)
        >>> tracker.poll()
        []
        """
        now = self._clock()
        settled = []
        for path, entry in list(self._entries.items()):
            if not self._update(path, entry, now):
                del self._entries[path]
            elif self._is_settled(entry, now):
                settled.append(path)
                del self._entries[path]
        return sorted(settled)

    def _update(self, path, entry, now):
        """Refresh the signature; restart the timer on change. False if the file is gone."""
        sig = file_signature(path)
        if sig is None:
            return False
        if sig != entry.signature:
            entry.signature = sig
            entry.since = now
        return True

    def _is_settled(self, entry, now):
        size = entry.signature[0]
        return size >= self.min_size and now - entry.since >= self.settle_seconds
