"""One light between its plan and its commit, and the fan-out of many lights to a pool.

A :class:`LightJob` is built once per light (its ledger row, relative path,
FrameInfo, calibration plan, field and night) and used alike by a light reduced
in this process and by one sent to a worker: the work (calibrate, measure, write
the products: :func:`reduxd.reduce.compute_light`) runs first, then the
coordinator commits the result.

:class:`FanOut` sends lights to any ``concurrent.futures.Executor``-like object
(``submit`` returning a future): a process pool, a Dask client's executor, or
:class:`reduxd.executors.InProcess`. Every light of a field is reduced against
the field's reference as it was when the run met the field (frozen); a field
without one waits for its first light's. Jobs come back in the order they were
added.
"""

from collections import defaultdict, deque
from concurrent import futures
from dataclasses import dataclass

from reduxd.executors import InProcess
from reduxd.fields import field_key
from reduxd.framemeta import FrameMeta
from reduxd.reduce import compute_light


@dataclass
class LightJob:
    """A light to reduce: what the coordinator knows of it before its pixels are read."""

    row: object  # reduxd.store.FrameRow
    rel: str  # path relative to its data root
    path: str
    info: object  # reduxd.frames.FrameInfo
    plan: object  # reduxd.steps.select.Plan, with its bad-pixel mask
    key: str  # the field (:func:`reduxd.fields.field_key`)
    night: str
    started: float  # clock time it was seen stable (its latency runs from there)
    base: object = None  # the field reference it is reduced against
    work: object = None  # its future, once submitted

    @classmethod
    def build(cls, row, path, rel, info, plan, *, utc_offset_hours, started):
        key = field_key(info, rel)
        night = info.night(utc_offset_hours)
        return cls(row, rel, str(path), info, plan, key, night, started)

    def submit(self, pool, base, *, config, durable):
        """Send the work to ``pool`` against the field reference ``base``."""
        self.base = base
        self.work = pool.submit(
            compute_light, self.path, self.rel, self.info, self.plan, base, config,
            night=self.night, field=self.key, durable=durable,
        )  # fmt: skip

    def meta(self, result, n_stars, version):
        """The ledger metadata of this light once measured (``result``: its ``Measured``)."""
        info = self.info
        return FrameMeta(object=self.key, filter=info.filter, exptime=info.exptime,
                         gain=info.gain, n_stars=n_stars, offset=result.offset,
                         fwhm=result.fwhm, calib=result.calib, version=version)  # fmt: skip


class FanOut:
    """Lights sent to ``pool`` (None: this process), returned in order when done.

    Parameters
    ----------
    pool : concurrent.futures.Executor-like or None
    reference : callable
        ``field -> FieldReference or None``: the field's reference now.
    config, durable
        Passed to the work.
    window : int, optional
        At most this many lights in the pool and not done; the others wait here
        (in order), so that another job sent to the pool meanwhile (a stack's run)
        starts after at most that many lights. None: every light is sent at once.
    """

    def __init__(self, pool, *, reference, config, durable, window=None):
        self.pool = pool if pool is not None else InProcess()
        self.reference = reference
        self.config = config
        self.durable = durable
        self.window = window
        self.pending = deque()  # every light added and not yet taken, in order
        self.unsent = deque()  # (job, reference): to send once the window has room
        self.running = []  # sent, not seen done
        self.frozen = {}
        self.firsts = {}  # field: its first light, still running
        self.waiting = defaultdict(list)  # field: lights waiting for the field's first light

    def add(self, job):
        self.pending.append(job)
        self._release()
        key = job.key
        if key in self.firsts:
            self.waiting[key].append(job)
        elif key not in self.frozen and self.reference(key) is None:  # the field's first light
            self._submit(job, None)
            self.firsts[key] = job
        else:
            self._submit(job, self.frozen.setdefault(key, self.reference(key)))

    def ready(self, *, wait=False):
        """Jobs from the front of the queue whose work is done, in order; ``wait``: until
        there is at least one (or none is pending)."""
        self._release()
        while wait and self.pending and not self._done(self.pending[0]):
            works = [job.work for job in self.running]
            if not works:
                raise RuntimeError("FanOut: the first light pending was never sent")
            futures.wait(works, return_when=futures.FIRST_COMPLETED)
            self._release()
        out = []
        while self.pending and self._done(self.pending[0]):
            out.append(self.pending.popleft())
        return out

    @staticmethod
    def _done(job):
        return job.work is not None and job.work.done()

    def _submit(self, job, base):
        self.unsent.append((job, base))
        self._send()

    def _send(self):
        """Send waiting lights, in order, while the window has room."""
        self.running = [job for job in self.running if not job.work.done()]
        while self.unsent and (self.window is None or len(self.running) < self.window):
            job, base = self.unsent.popleft()
            job.submit(self.pool, base, config=self.config, durable=self.durable)
            self.running.append(job)

    def _release(self):
        """Freeze the reference of fields whose first light is done, queue their waiting
        lights, and send what the window has room for."""
        for key in [key for key, first in self.firsts.items() if self._done(first)]:
            self.frozen[key] = _reference_of(self.firsts.pop(key).work)
            self.unsent.extend((job, self.frozen[key]) for job in self.waiting.pop(key, ()))
        self._send()


def _reference_of(work):
    """The field reference a first light found (None if it failed: as without one)."""
    try:
        return work.result().reference
    except Exception:
        return None
