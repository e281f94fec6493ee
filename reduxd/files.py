"""Writing files so that a crash never leaves a partial file under the final name."""

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

MAX_NAME = 64  # longest sanitised name part (an OBJECT of 300 characters: 'File name too long')


def cap_name(name, limit=MAX_NAME):
    """``name`` cut to ``limit`` characters, ending in a hash of the whole when cut.

    Examples
    --------
    >>> cap_name("M51")
    'M51'
    >>> cap_name("x" * 300)  # doctest: +ELLIPSIS
    'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-...'
    >>> len(cap_name("x" * 300))
    64
    """
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{name[: limit - 9]}-{digest}"


def fsync_dir(folder):
    """Fsync a folder so a rename inside it survives a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write, *, mode=0o644, durable=True):
    """Write ``path`` atomically: ``write(fileobj)`` into a temporary file, fsync, rename.

    Parameters
    ----------
    path : str or Path
        Final name; its folder is created if needed.
    write : callable
        Called with a binary file object opened in the same folder.
    mode : int
        Permissions of the result (products are read by other users: 0o644).
    durable : bool
        Fsync the file and its folder, so the file survives a power cut once this
        returns. Without it the rename is still atomic (no partial file under
        ``path`` after a crash of reduxd), but a power cut may lose the file.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / 'a.txt'
    >>> _ = atomic_write(target, lambda fh: fh.write(b'done'))
    >>> target.read_bytes(), oct(target.stat().st_mode & 0o777)
    (b'done', '0o644')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def outside_root(path, root):
    """True when ``path`` (or a link on its way) leads out of the folder ``root``."""
    return not Path(path).resolve().is_relative_to(Path(root).resolve())
