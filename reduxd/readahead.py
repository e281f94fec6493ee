"""Frames read in a thread just ahead of their turn (``reduxd reduce``'s calibration frames).

Reading a frame is mostly waiting for the disk and checksumming its bytes, both
done without the GIL: a thread reading the next frames while this one classifies
and records the current one uses a core that would otherwise idle. Only frames
asked for are read ahead of, a few at a time (a re-run whose frames are done
reads nothing), and a frame changed since it was read ahead is read again.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reduxd.watch.stability import file_signature


class ReadAhead:
    """Read ``paths`` (in that order) with ``read`` in one thread, ``depth`` files ahead.

    Examples
    --------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> paths = [os.path.join(folder, name) for name in ("a", "b", "c")]
    >>> for p in paths:
    ...     with open(p, "w") as fh:
    ...         _ = fh.write(os.path.basename(p))
    >>> def read(path):
    ...     with open(path) as fh:
    ...         return fh.read()
    >>> with ReadAhead(paths, read) as ahead:
    ...     ahead.take(paths[0]), ahead.take(paths[1]), ahead.take(paths[2])
    (None, 'b', 'c')
    """

    def __init__(self, paths, read, *, depth=2):
        self._order = [Path(p) for p in paths]
        self._index = {p: i for i, p in enumerate(self._order)}
        self._read = read
        self._depth = depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="reduxd-read-ahead")
        self._ahead = {}  # path -> future of (signature, value, exception)

    def take(self, path):
        """What ``read(path)`` gives (or raises), if read ahead and unchanged since; else None.

        Asking for a frame starts reading the ``depth`` frames after it.
        """
        path = Path(path)
        future = self._ahead.pop(path, None)
        i = self._index.get(path)
        if i is not None:
            self._prepare(i)
        if future is None:
            return None
        signature, value, exc = future.result()
        if signature is None or signature != file_signature(path):
            return None  # changed (or vanished) since: the caller reads it as it is now
        if exc is not None:
            raise exc
        return value

    def _prepare(self, i):
        for stale in [p for p in self._ahead if self._index[p] < i]:  # passed over
            self._ahead.pop(stale).cancel()
        for path in self._order[i + 1 : i + 1 + self._depth]:
            if path not in self._ahead:
                self._ahead[path] = self._pool.submit(self._read_one, path)

    def _read_one(self, path):
        signature = file_signature(path)
        try:
            return signature, self._read(path), None
        except Exception as exc:  # raised again by take(), in the caller's turn
            return signature, None, exc

    def close(self):
        """Stop reading ahead (frames read and not taken are dropped)."""
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
