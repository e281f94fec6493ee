"""Exception types shared by every layer.

Two kinds of trouble with an input file are kept apart, because the service
reacts differently: a file that is still being written is retried later, a
file that is broken is quarantined and never retried.
"""

import errno


class ReduxdError(Exception):
    """Base class for every error reduxd raises on purpose."""


class ConfigError(ReduxdError):
    """The configuration file is unusable (names the file, the key and what was expected)."""


class _PathReason(ReduxdError):
    """An error about one file, with the reason; picklable, so it crosses worker pools.

    (A default-pickled exception is rebuilt from its message alone, which these
    constructors do not accept: the pool would break on the first one.)
    """

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class FrameIncomplete(_PathReason):
    """The file is not complete yet (still being written): try again later."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: not complete yet: {reason}")


class FrameRejected(_PathReason):
    """The file is not a usable frame: quarantine it, with the reason."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: rejected: {reason}")


class MissingCalibration(_PathReason):
    """No usable master for a light and the policy forbids going on without it."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: missing calibration: {reason}")


class OutputUnavailable(ReduxdError):
    """Products, tables or the ledger cannot be written now (disk full, read-only, I/O error).

    The service's trouble, not the frame's: the frame goes back to ``seen``
    without spending an attempt and the service pauses, then retries.
    """

    def __init__(self, reason):
        self.reason = reason
        super().__init__(f"cannot write output: {reason}")

    def __reduce__(self):
        return (type(self), (self.reason,))


# errno values of OSError that mean "the disk", not "the frame"
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EROFS", "EACCES", "EPERM", "EIO", "EDQUOT")
    if hasattr(errno, name)
)
# what SQLite says for the same troubles (sqlite3.OperationalError has no errno)
_SQLITE_TRANSIENT = ("disk is full", "readonly database", "disk i/o error", "unable to open")


def is_transient(exc):
    """True when ``exc`` is a write error of the disk (see :class:`OutputUnavailable`).

    Examples
    --------
    >>> is_transient(OSError(errno.ENOSPC, "No space left on device"))
    True
    >>> is_transient(ValueError("bad pixel"))
    False
    """
    if isinstance(exc, OutputUnavailable):
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    if type(exc).__name__ == "OperationalError":  # sqlite3, without importing it here
        return any(text in str(exc).lower() for text in _SQLITE_TRANSIENT)
    return False
