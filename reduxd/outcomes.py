"""What happened to a frame, and the one place where an exception becomes a ledger state.

:class:`Outcome` is what the pipeline returns for each file (one summary line).
:class:`Reactions` turns what went wrong with a frame into its ledger state:

============================  =============================================
raised                        the frame
============================  =============================================
``FrameIncomplete``           waits (``incomplete``), quarantined after
                              ``incomplete_timeout_seconds``
``FrameRejected``             ``quarantined`` with the reason
``MissingCalibration``        waits for its master (``waiting``)
a disk write error            waits, its attempt not spent; ``OutputUnavailable``
                              is raised for the daemon to pause
anything else                 ``failed`` after ``max_tries`` attempts
============================  =============================================
"""

from dataclasses import dataclass

from reduxd.errors import (
    FrameIncomplete,
    FrameRejected,
    MissingCalibration,
    OutputUnavailable,
    is_transient,
)
from reduxd.framemeta import FrameMeta
from reduxd.log import get_logger

WAITING = "waiting for calibration"
log = get_logger("reduxd.pipeline")


@dataclass
class Outcome:
    """What happened to one file (one summary log line each)."""

    path: str
    status: str  # reduced|ingested|skipped|excluded|incomplete|quarantined|failed|waiting|changed
    kind: str | None = None
    reason: str | None = None
    n_stars: int = 0
    latency_ms: float | None = None
    info: FrameMeta | None = None  # a reduced light's metadata


class Reactions:
    """Record in the ledger what an exception means for a frame; return its :class:`Outcome`.

    Parameters
    ----------
    ledger : reduxd.store.Ledger
    watch : reduxd.config.Watch
        ``max_tries`` and ``incomplete_timeout_seconds``.
    clock : callable
        Monotonic clock (an incomplete frame's age).
    """

    def __init__(self, ledger, watch, clock):
        self.ledger = ledger
        self.watch = watch
        self.clock = clock
        self.incomplete_since = {}
        self._incomplete_seen = set()
        self.to_release = set()  # frames left 'processing' by a ledger write error

    def react(self, row, rel, kind, exc):
        """The frame ``row`` raised ``exc``: record it; raise ``OutputUnavailable`` on a disk
        write error (the frame waits), else return the :class:`Outcome`."""
        if isinstance(exc, FrameIncomplete):
            return self.incomplete(row, rel, exc)
        if isinstance(exc, FrameRejected):
            return self.quarantine(row, rel, exc.reason)
        if isinstance(exc, MissingCalibration):
            return self.waiting(row, rel, exc.reason)
        if isinstance(exc, KeyboardInterrupt):  # a forced stop: the attempt is not spent
            self.ledger.defer(row.id, "interrupted by a forced stop")
            raise exc
        if is_transient(exc):
            self.pause(row, rel, exc)
        reason = f"{type(exc).__name__}: {exc}"
        state = self.ledger.fail(row.id, reason, max_tries=self.watch.max_tries)
        log.error("frame_failed", file=rel, state=state, reason=reason, exc_info=exc)
        return Outcome(rel, "failed", kind=kind, reason=reason)

    def excluded(self, row, rel, checksum, night, filter_name):
        """A light in an excluded filter (``-x``): recorded, not reduced."""
        self.ledger.exclude(row.id, checksum=checksum, night=night,
                            info=FrameMeta(excluded=filter_name))  # fmt: skip
        return Outcome(rel, "excluded", kind="light", reason=f"filter {filter_name} excluded")

    def duplicate(self, row, rel, checksum, night, first):
        """A byte-identical copy of a light already reduced: recorded, not measured again."""
        reason = f"duplicate of {first.relpath} (same checksum)"
        info = FrameMeta(excluded="duplicate", duplicate_of=first.relpath)
        self.ledger.finish(row.id, kind="light", checksum=checksum, night=night, info=info)
        log.warning("frame_duplicate", file=rel, duplicate_of=first.relpath)
        return Outcome(rel, "excluded", kind="light", reason=reason)

    def quarantine(self, row, rel, reason):
        self.ledger.quarantine(row.id, reason)
        log.error("frame_quarantined", file=rel, reason=reason)
        return Outcome(rel, "quarantined", reason=reason)

    def waiting(self, row, rel, reason):
        """A light waits for a master (each problem logged once)."""
        self.ledger.defer(row.id, f"{WAITING}: {reason}", state="waiting")
        if row.last_error != f"{WAITING}: {reason}":
            log.warning("light_waiting", file=rel, reason=reason)
        return Outcome(rel, "waiting", kind="light", reason=reason)

    def incomplete(self, row, rel, exc):
        first = self.incomplete_since.setdefault(row.id, self.clock())
        timeout = self.watch.incomplete_timeout_seconds
        if self.clock() - first >= timeout:
            reason = f"still incomplete after {timeout:g} s: {exc.reason}"
            return self.quarantine(row, rel, reason)
        self.ledger.fail(row.id, f"incomplete: {exc.reason}", max_tries=10**9, retry="incomplete")
        if row.id not in self._incomplete_seen:  # logged once per frame
            self._incomplete_seen.add(row.id)
            log.info("frame_incomplete", file=rel, reason=exc.reason)
        return Outcome(rel, "incomplete", reason=exc.reason)

    def complete(self, row):
        """The frame was read whole: forget when it was first seen incomplete."""
        self.incomplete_since.pop(row.id, None)

    def pause(self, row, rel, exc):
        """A write error of the disk: the frame waits, its attempt not spent; raise.

        If the ledger itself cannot be written the frame is remembered and
        released by :meth:`release`.
        """
        reason = exc.reason if isinstance(exc, OutputUnavailable) else f"{rel}: {exc}"
        try:
            if self.ledger.frame(row.id).state == "processing":
                self.ledger.defer(row.id, f"output unavailable: {reason}")
        except Exception as ledger_exc:
            if not is_transient(ledger_exc):
                raise
            self.to_release.add(row.id)
        raise OutputUnavailable(reason) from exc

    def release(self):
        """Frames held by a ledger write error go back to waiting."""
        for frame_id in sorted(self.to_release):
            if self.ledger.frame(frame_id).state == "processing":
                self.ledger.defer(frame_id, "output unavailable (released)")
            self.to_release.discard(frame_id)


def recover_interrupted(ledger, *, max_tries):
    """Frames a killed run left ``processing`` go back to ``seen`` (or fail); log each."""
    for row in ledger.recover_interrupted(max_tries=max_tries):
        log.warning(
            "interrupted_frame",
            file=row.relpath,
            state=row.state,
            attempts=row.attempts,
            reason=row.last_error,
        )


def log_reduced(job, rows, result, latency_ms, version, target_mag):
    """The one log line of a reduced light (``target_mag``: the target's dmag, or None)."""
    fields = {"file": job.rel, "object": job.key, "filter": job.info.filter,
              "n_stars": len(rows), "latency_ms": round(latency_ms, 1),
              "calib": result.calib, "fwhm": round(result.fwhm, 2)}  # fmt: skip
    if version > 1:
        fields["version"] = version
    if target_mag is not None:
        fields["target_mag"] = target_mag
    log.info("frame_reduced", **fields)
