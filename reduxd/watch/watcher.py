"""Watch raw-data folders: filesystem events and scans put candidate paths on a queue.

Events are only hints. The ledger is the source of truth, so the daemon also runs
a catch-up scan once the observers are running (a PollingObserver never reports
files present at its start) and a periodic reconciliation scan (inotify overflows
and shares that drop out lose events silently).

Handlers do nothing but ``queue.put``: an exception in a handler kills the
observer thread without a word.
"""

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

from watchdog.events import FileSystemEventHandler
from watchdog.observers.polling import PollingObserver

from reduxd.errors import ConfigError, ReduxdError
from reduxd.fsinfo import is_network_fs
from reduxd.log import get_logger

log = get_logger(__name__)

DEFAULT_IGNORE = (".*", "*.tmp", "*.part", "*~", "*.swp")
DEFAULT_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.fz")
OBSERVER_KINDS = ("auto", "inotify", "polling")


class WatchError(ReduxdError):
    """The watch layer cannot keep watching (the service should exit non-zero)."""


# -- which files -------------------------------------------------------------------


@dataclass(frozen=True)
class FileFilter:
    """Which files are frames: extension list and ignore globs, both case-insensitive.

    Examples
    --------
    >>> f = FileFilter()
    >>> f.wanted("night/M51_0001.FITS"), f.wanted("night/.M51_0001.fits")
    (True, False)
    >>> f.wanted("/data/.sync/a.fits", root="/data")
    False
    """

    ignore_patterns: tuple[str, ...] = DEFAULT_IGNORE
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    exclude: tuple[str, ...] = ()  # absolute folders never looked into (reduxd's output)

    def ignored(self, name: str) -> bool:
        """True when a file or folder name matches an ignore pattern."""
        name = name.lower()
        return any(fnmatch.fnmatchcase(name, pat.lower()) for pat in self.ignore_patterns)

    def excluded(self, path: str | os.PathLike) -> bool:
        """True when ``path`` (absolute) is one of the ``exclude`` folders or below one."""
        path = os.fspath(path)
        return any(path == e or path.startswith(e.rstrip(os.sep) + os.sep) for e in self.exclude)

    def wanted(self, path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> bool:
        """True for a frame file; with ``root``, folders below it are checked too."""
        path = os.fspath(path)
        name = os.path.basename(path)
        if not name.lower().endswith(tuple(e.lower() for e in self.extensions)):
            return False
        if self.ignored(name):
            return False
        if self.exclude and self.excluded(os.path.abspath(path)):
            return False
        if root is None:
            return True
        rel = os.path.relpath(os.path.dirname(path), root)
        if rel == ".":
            return True
        return not rel.startswith("..") and not any(self.ignored(p) for p in rel.split(os.sep))


DEFAULT_FILTER = FileFilter()


def wanted(path: str | os.PathLike) -> bool:
    """True when ``path`` looks like a raw frame under the default filter.

    Examples
    --------
    >>> wanted("M51_0001.fits"), wanted("M51_0001.fits.tmp"), wanted("notes.txt")
    (True, False, False)
    """
    return DEFAULT_FILTER.wanted(path)


def scan(root: str | os.PathLike, *, file_filter: FileFilter = DEFAULT_FILTER) -> Iterator[Path]:
    """Yield every wanted file below ``root`` in sorted path order (os.scandir).

    Folders matching an ignore pattern are pruned, symlinked folders are not
    followed (no loops). Raises OSError if ``root`` itself cannot be read;
    unreadable or vanishing subfolders are skipped.

    Examples
    --------
    >>> paths = list(scan("/data/sharpcap"))  # doctest: +SKIP
    """
    yield from _walk(os.path.abspath(root), file_filter, top=True)


def _walk(folder, file_filter, *, top=False):
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        if top:
            raise
        return
    for entry in entries:
        if _is_dir(entry):
            if not file_filter.ignored(entry.name) and not file_filter.excluded(entry.path):
                yield from _walk(entry.path, file_filter)
        elif file_filter.wanted(entry.name) and _is_file(entry):
            yield Path(entry.path)


def _is_dir(entry):
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_file(entry):
    try:
        return entry.is_file()
    except OSError:
        return False


def check_roots(roots, *, outdir, state_file):
    """Refuse roots that would make reduxd read its own files; return the folders to skip.

    A root that is ``/``, lies inside (or is) the output folder, or is the ledger's
    folder, is refused: reduxd would take its own files for raw frames. The output
    folder and the ledger's folder, when below a root, are returned (spelled
    below that root): the watcher neither scans them nor reports their events.

    Raises
    ------
    ConfigError
        Naming the root and the reason.

    Examples
    --------
    >>> check_roots(["/data"], outdir="/data/analysis", state_file="/var/lib/r.sqlite")
    ('/data/analysis',)
    """
    out = os.path.realpath(outdir)
    ledger = os.path.realpath(os.path.dirname(os.path.abspath(state_file)))
    skip = []
    for root in roots:
        real = os.path.realpath(root)
        if real == os.sep:
            raise ConfigError(f"watch root {root!r} is the whole filesystem: refused")
        for what, folder in (("output folder", out), ("ledger's folder", ledger)):
            if real == folder or (what == "output folder" and _below(real, out)):
                raise ConfigError(
                    f"watch root {root!r} is (inside) the {what} {folder}: reduxd would"
                    " reduce its own files; keep the output and the ledger out of the data"
                    " folders, or in a subfolder of them"
                )
        for folder in (out, ledger):
            if _below(folder, real) and folder != real:
                spelled = os.path.join(os.path.abspath(root), os.path.relpath(folder, real))
                if spelled not in skip:
                    skip.append(spelled)
    return tuple(skip)


def _below(path, folder):
    """True when ``path`` is ``folder`` or inside it (both real, absolute)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# -- observers ---------------------------------------------------------------------


class _QueueHandler(FileSystemEventHandler):
    """Puts wanted paths of created/modified/closed/moved events on a queue. Nothing else."""

    def __init__(self, root, file_filter, out):
        super().__init__()
        self.root = root
        self.file_filter = file_filter
        self.out = out

    def _put(self, path):
        try:
            path = os.fsdecode(path)
            if path and self.file_filter.wanted(path, root=self.root):
                self.out.put(Path(path))
        except Exception:  # never let anything kill the observer thread
            pass

    def on_created(self, event):
        if not event.is_directory:
            self._put(event.src_path)

    def on_modified(self, event):
        if not event.is_directory:
            self._put(event.src_path)

    def on_closed(self, event):
        self._put(event.src_path)

    def on_moved(self, event):
        if not event.is_directory:
            self._put(event.dest_path)


def _make_observer(kind, poll_interval):
    if kind == "polling":
        return PollingObserver(timeout=poll_interval)
    from watchdog.observers.inotify import InotifyObserver  # Linux only

    return InotifyObserver()


def _ident(path):
    """(st_dev, st_ino) of a folder, or None when it is not a readable folder."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


class _RootWatch:
    """One root and the observer currently watching it."""

    def __init__(self, root, kind):
        self.root = root
        self.kind = kind  # 'inotify' | 'polling'
        self.observer = None
        self.ident = None  # (st_dev, st_ino) of the root when its observer started
        self.failures = 0  # consecutive unhealthy checks while the root existed
        self.waiting = False  # root missing (logged once)

    def alive(self):
        """Observer and all its emitters alive, and the root is still the same folder.

        The identity check catches a share mounted over (or unmounted from) the
        mount point after the observer started, and a root renamed away.
        """
        obs = self.observer
        if obs is None or not obs.is_alive():
            return False
        emitters = list(obs.emitters)
        if not emitters or not all(e.is_alive() for e in emitters):
            return False
        return _ident(self.root) == self.ident

    def stop(self, timeout=5.0):
        obs, self.observer = self.observer, None
        if obs is None:
            return
        try:
            obs.stop()
            obs.join(timeout)
        except Exception as exc:  # a broken observer must not block a restart
            log.warning("observer stop failed", root=self.root, error=repr(exc))


class Watcher:
    """Recursive watch of one or more roots; wanted paths go to ``self.queue``.

    Parameters
    ----------
    roots : iterable of path-like
        Folders to watch recursively. A missing root is watched once it appears.
    queue : queue.Queue, optional
        Where paths (``pathlib.Path``) are put; a new unbounded queue by default.
    observer : {'auto', 'inotify', 'polling'}
        'auto' uses polling on network filesystems and inotify elsewhere.
    poll_interval : float
        Seconds between snapshots of a polling observer.
    ignore_patterns, extensions : sequence of str
        Passed to :class:`FileFilter`.
    exclude : sequence of path-like
        Folders below a root that are never scanned nor reported (reduxd's output
        folder and the ledger's folder: see :func:`check_roots`).
    max_failures : int
        Consecutive failed checks of an existing root before
        :meth:`check_and_restart` raises :class:`WatchError`.

    Examples
    --------
    >>> w = Watcher(["/data/sharpcap"], observer="auto", poll_interval=2.0)  # doctest: +SKIP
    >>> w.start()                  # observers up, then a catch-up scan  # doctest: +SKIP
    >>> path = w.queue.get()       # a hint: feed it to the ledger and StabilityTracker
    ...                            # doctest: +SKIP
    >>> w.check_and_restart()      # from the main loop, before WATCHDOG=1  # doctest: +SKIP
    True
    """

    def __init__(
        self,
        roots: Iterable[str | os.PathLike],
        *,
        queue: Queue | None = None,
        observer: str = "auto",
        poll_interval: float = 2.0,
        ignore_patterns: Iterable[str] = DEFAULT_IGNORE,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        exclude: Iterable[str | os.PathLike] = (),
        max_failures: int = 5,
    ):
        if observer not in OBSERVER_KINDS:
            raise ValueError(f"observer must be one of {OBSERVER_KINDS}, not {observer!r}")
        self.queue = queue if queue is not None else Queue()
        self.mode = observer
        self.poll_interval = poll_interval
        self.max_failures = max_failures
        excluded = tuple(os.path.abspath(e) for e in exclude)
        self.file_filter = FileFilter(tuple(ignore_patterns), tuple(extensions), excluded)
        self._fallback = {}  # root -> 'polling' after inotify failed to start there
        roots = [os.path.abspath(r) for r in roots]
        self._roots = [_RootWatch(r, self._kind_for(r)) for r in roots]
        if not self._roots:
            raise ValueError("Watcher needs at least one root")

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def roots(self) -> list[str]:
        """The watched roots (absolute paths)."""
        return [rw.root for rw in self._roots]

    def kinds(self) -> dict[str, str]:
        """Observer kind per root, e.g. ``{'/data/sharpcap': 'polling'}``."""
        return {rw.root: rw.kind for rw in self._roots}

    def start(self, *, catch_up: bool = True) -> int:
        """Start observers on the existing roots, then queue a catch-up scan.

        Returns the number of paths queued by the scan. Never raises for a
        missing root (it is picked up by :meth:`check_and_restart`).
        """
        queued = 0
        for rw in self._roots:
            if self._start_root(rw) and catch_up:
                queued += self._scan_root(rw)
        return queued

    def stop(self) -> None:
        """Stop every observer (idempotent)."""
        for rw in self._roots:
            rw.stop()

    def healthy(self) -> bool:
        """True when every root has a live observer with live emitters."""
        return all(rw.alive() for rw in self._roots)

    def check_and_restart(self) -> bool:
        """Restart dead observers or emitters; re-watch roots that came back.

        A missing root (share down, folder removed) is waited for without
        counting as a failure; a restarted root gets a catch-up scan (files
        written while it was not watched). Returns True when every root is
        watched afterwards.

        Raises
        ------
        WatchError
            When a root that exists was found unwatched by more than
            ``max_failures`` consecutive checks (e.g. it is not a folder, or
            its observer keeps dying).
        """
        for rw in self._roots:
            if rw.alive():
                rw.failures = 0
                continue
            rw.stop()
            if not os.path.lexists(rw.root):
                self._wait_for(rw)
                continue
            if rw.waiting:
                log.info("watch root is back", root=rw.root)
                rw.waiting = False
            else:
                rw.failures += 1
                if rw.failures > self.max_failures:
                    raise WatchError(
                        f"{rw.root}: cannot watch it ({rw.failures} checks in a row); giving up"
                    )
                log.warning("restarting watch", root=rw.root, kind=rw.kind, failures=rw.failures)
            if self._start_root(rw):
                self._scan_root(rw)
        return self.healthy()

    def rescan(self) -> int:
        """Reconciliation scan of every existing root; returns the number of paths queued."""
        return sum(self._scan_root(rw) for rw in self._roots if rw.observer is not None)

    def split(self, path: str | os.PathLike) -> tuple[str, str]:
        """``(root, relpath)`` of a queued path (relpath with '/'), for the ledger.

        Examples
        --------
        >>> Watcher(["/data"], observer="polling").split("/data/n1/a.fits")
        ('/data', 'n1/a.fits')
        """
        path = os.path.abspath(path)
        for root in sorted(self.roots, key=len, reverse=True):
            if path.startswith(root.rstrip(os.sep) + os.sep):
                return root, Path(os.path.relpath(path, root)).as_posix()
        raise ValueError(f"{path} is not below any watched root")

    # -- internals ---------------------------------------------------------------

    def _kind_for(self, root):
        if self.mode != "auto":
            return self.mode
        if is_network_fs(root) or self._fallback.get(root) == "polling":
            return "polling"
        return "inotify"

    def _wait_for(self, rw):
        if not rw.waiting:
            log.warning("watch root missing, waiting for it", root=rw.root)
        rw.waiting = True

    def _start_root(self, rw):
        """Start an observer on ``rw.root``; False (logged) if it is missing or fails."""
        if not os.path.lexists(rw.root):
            self._wait_for(rw)
            return False
        rw.kind = self._kind_for(rw.root)  # a share may have been mounted meanwhile
        ident = _ident(rw.root)
        try:
            if ident is None:
                raise NotADirectoryError(f"{rw.root} is not a readable folder")
            obs = _make_observer(rw.kind, self.poll_interval)
            handler = _QueueHandler(rw.root, self.file_filter, self.queue)
            obs.schedule(handler, rw.root, recursive=True)
            obs.start()
        except OSError as exc:
            log.error("cannot start observer", root=rw.root, kind=rw.kind, error=str(exc))
            if self.mode == "auto" and rw.kind == "inotify":  # e.g. inotify watch limit
                self._fallback[rw.root] = "polling"
            return False
        rw.observer, rw.ident, rw.waiting = obs, ident, False
        log.info("watching", root=rw.root, kind=rw.kind)
        return True

    def _scan_root(self, rw):
        n = 0
        try:
            for path in scan(rw.root, file_filter=self.file_filter):
                self.queue.put(path)
                n += 1
        except OSError as exc:
            log.warning("scan failed", root=rw.root, error=str(exc))
        return n
