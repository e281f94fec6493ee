"""Logging: structlog for reduxd, with stdlib logging and warnings through the same chain.

Under systemd stdout is not a tty: one JSON object per line, which journald
stores and rotates. On a terminal: structlog's readable ConsoleRenderer. Records
from stdlib loggers (watchdog, astropy's logger) and ``warnings.warn`` calls
(astropy's header warnings) get the same keys: ``event``, ``level``, ``logger``,
``timestamp``.
"""

import logging
import logging.handlers
import sys
from datetime import UTC, datetime

import structlog

_HANDLER_MARK = "_reduxd_handler"
#: libraries whose DEBUG lines (matplotlib's findfont, PIL's PNG chunks) drown reduxd's own;
#: kept at WARNING unless ``[logging] third_party_debug`` is true
QUIET_LOGGERS = ("matplotlib", "PIL", "fontTools", "urllib3", "asyncio", "watchdog")


class _OnceFilter(logging.Filter):
    """Python warnings (astropy's 'Card is too long' ...): each message once per process."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record):
        lines = record.getMessage().strip().splitlines()
        key = lines[0].split(": ", 1)[-1] if lines else ""  # without 'file:line: '
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _one_line_warning(logger, method_name, event_dict):
    """``warnings.warn`` records: keep 'file:line: Category: message', drop the source line."""
    if event_dict.get("logger") == "py.warnings":
        lines = str(event_dict.get("event", "")).strip().splitlines()
        event_dict["event"] = lines[0] if lines else ""
    return event_dict


def _record_time(logger, method_name, event_dict):
    """Stdlib records: the time the record was made (the same in every handler)."""
    record = event_dict.get("_record")
    if record is not None and "timestamp" not in event_dict:
        when = datetime.fromtimestamp(record.created, tz=UTC)
        event_dict["timestamp"] = when.isoformat().replace("+00:00", "Z")
    return event_dict


def _shared_processors():
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.PositionalArgumentsFormatter(),
        _one_line_warning,
        _record_time,
        structlog.processors.MaybeTimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def _formatter(*, as_json, colors=None):
    if as_json:
        render = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        colors = sys.stdout.isatty() if colors is None else colors
        render = [structlog.dev.ConsoleRenderer(colors=colors)]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )


_ONCE = _OnceFilter()


def _handler(handler, formatter):
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    return handler


def _route_astropy():
    """Send astropy's logger and warnings through the root logger, not its own handler."""
    try:
        from astropy import log as astropy_log
    except ImportError:
        return
    if astropy_log.warnings_logging_enabled():
        # must happen before logging.captureWarnings replaces warnings.showwarning
        astropy_log.disable_warnings_logging()
    for handler in list(astropy_log.handlers):
        astropy_log.removeHandler(handler)
    astropy_log.propagate = True


def configure_logging(
    *,
    level: str | int = "INFO",
    json_file: str | None = None,
    force_json: bool | None = None,
    third_party_debug: bool = False,
    text_file: str | None = None,
) -> None:
    """Configure structlog, stdlib logging and warnings for the whole process.

    Parameters
    ----------
    level : str or int
        Minimum level, e.g. ``'INFO'`` or ``'DEBUG'``.
    json_file : path-like, optional
        Also append JSON lines to this file (reopened if logrotate moves it).
    force_json : bool, optional
        True: JSON on stdout; False: console format; None: JSON unless stdout is a tty.
    third_party_debug : bool
        Let :data:`QUIET_LOGGERS` log below WARNING too.
    text_file : path-like, optional
        Also write readable lines (no colours) to this file (``reduxd reduce``'s
        per-run ``redux_<timestamp>.log``).

    Examples
    --------
    >>> configure_logging(level="INFO", force_json=True)  # doctest: +SKIP
    >>> get_logger("reduxd.daemon").info("started", roots=2)  # doctest: +SKIP
    {"roots": 2, "event": "started", "logger": "reduxd.daemon", "level": "info", ...}
    """
    as_json = not sys.stdout.isatty() if force_json is None else force_json
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(_handler(logging.StreamHandler(sys.stdout), _formatter(as_json=as_json)))
    if text_file is not None:
        text_handler = _BestEffortFileHandler(text_file, encoding="utf-8")
        root.addHandler(_handler(text_handler, _formatter(as_json=False, colors=False)))
    if json_file is not None:
        file_handler = logging.handlers.WatchedFileHandler(json_file, encoding="utf-8")
        root.addHandler(_handler(file_handler, _formatter(as_json=True)))
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if third_party_debug else logging.WARNING)
    _route_astropy()
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addFilter(_ONCE)  # on the logger: every handler sees it
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


class _BestEffortFileHandler(logging.FileHandler):
    """A log file that stops quietly once its disk refuses a write (stdout still has all)."""

    failed = False

    def emit(self, record):
        if not self.failed:
            super().emit(record)

    def handleError(self, record):
        self.failed = True


def get_logger(name: str | None = None):
    """A structlog logger named ``name`` (module loggers: ``get_logger(__name__)``).

    Examples
    --------
    >>> log = get_logger("reduxd.watch")
    >>> log.info("watching", root="/data/sharpcap")  # doctest: +SKIP
    """
    return structlog.get_logger(name)
