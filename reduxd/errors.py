"""Exception types shared by every layer.

Two kinds of trouble with an input file are kept apart, because the service
reacts differently: a file that is still being written is retried later, a
file that is broken is quarantined and never retried.
"""


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
