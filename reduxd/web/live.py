"""The page's data, kept current by one thread that follows the ledger read-only.

Every ``interval`` seconds the thread asks the ledger (its own ``readonly``
connection) whether anything was committed (``PRAGMA data_version``) and, if
so, which reductions are new since the last one it saw. New lights become
events; the light curve of each field that got a light is recomputed and sent
as the new points only (``append``), or whole (``replace``) when earlier points
changed (the automatic comparison ensemble changed, or a light was re-reduced).
Browsers follow the numbered event log through server-sent events; one that
fell too far behind is told to reload its snapshot.
"""

import math
import secrets
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

from reduxd.log import get_logger
from reduxd.reduce import quicklook_path
from reduxd.store import Ledger
from reduxd.web import queries

log = get_logger("reduxd.web")
KEEP_EVENTS = 5000  # events kept for browsers that reconnect
TOLERANCE = 1e-4  # mag: earlier points that moved more than this are re-sent
STATE_SECONDS = 1.0  # the service state is read at most this often without new lights
CURVE_SHARE = 0.25  # a field's curve is rebuilt at most this fraction of the time


class Live:
    """Snapshot and event log of one ledger and output folder.

    Parameters
    ----------
    config : reduxd.config.Config
    service : callable, optional
        Returns a dict about the running daemon (``running_since``, ``roots``,
        ``observer``, ``pending_sets``); None for a read-only server.
    interval : float
        Seconds between looks at the ledger.
    """

    def __init__(self, config, *, service=None, interval=0.5):
        self.config = config
        self.outdir = Path(config.paths.outdir)
        self.state_path = Path(config.paths.state_file)
        self.service = service
        self.interval = interval
        self.lock = threading.Lock()
        self.events = deque(maxlen=KEEP_EVENTS)  # (seq, dict)
        self.seq = 0
        self.instance = secrets.token_hex(4)  # a browser following another server reloads
        self.state = {}
        self.lights = {}  # frame id -> record, in commit order
        self.fields = {}  # (object, filter) -> {"id", "label", "points", "meta"}
        self._columns = defaultdict(dict)  # field -> {frame id: queries.curve_columns}
        self._shapes = {}  # frame id -> (ny, nx)
        self._dirty = set()  # fields with new lights whose curve is not rebuilt yet
        self._not_before = {}  # field -> monotonic time before which it is not rebuilt again
        self._no_chart = {}  # frame id -> relpath of lights whose finder chart is not written yet
        self._cursor = 0  # last reduction id seen
        self._version = None
        self._state_at = -math.inf
        self._stop = threading.Event()
        self._thread = None
        self.error = None

    # -- thread ----------------------------------------------------------------

    def start(self):
        """Start following the ledger (returns at once)."""
        self._thread = threading.Thread(target=self._run, name="reduxd-web-live", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self):
        ledger = None
        while not self._stop.is_set():
            try:
                ledger = ledger or self._open()
                if ledger is not None:
                    self.update(ledger)
                self.error = None
            except Exception as exc:  # keep serving what is known; say why once
                if str(exc) != str(self.error):
                    log.warning("web_update_failed", reason=f"{type(exc).__name__}: {exc}")
                self.error = exc
                if ledger is not None:
                    ledger.close()
                ledger = None
            self._stop.wait(self.interval)
        if ledger is not None:
            ledger.close()

    def _open(self):
        if not self.state_path.is_file():
            self._set_state({"service": self._service(), "missing": str(self.state_path)})
            return None
        return Ledger(self.state_path, readonly=True)

    def _service(self):
        try:
            return self.service() if self.service else None
        except Exception:  # the daemon's objects change under us: try next time
            return None

    # -- one look at the ledger ------------------------------------------------

    def update(self, ledger):
        """Read what is new in ``ledger``; append events. Called by the thread."""
        version = ledger.data_version()
        changed = version != self._version
        new = ledger.reductions_since(self._cursor) if changed else []
        if new:
            self._add_lights(ledger, new)
        self._find_charts()
        self._update_curves()
        now = time.monotonic()
        if changed and not new and now - self._state_at < STATE_SECONDS:
            changed = False  # other commits (a frame begun...): the state once a second
        else:
            self._version = version
        state = None
        if changed:
            self._state_at = now
            state = queries.service_state(ledger, self._service())
        if state is None and self.service is not None:
            state = {**self.state, "service": queries.clean(self._service())}
        if state is not None and state != self.state:
            self._set_state(state)

    def _set_state(self, state):
        with self.lock:
            self.state = state
            self._emit({"type": "state", "state": state})

    def _add_lights(self, ledger, new):
        masters = {m.id: queries.master_text(m) for m in ledger.masters(status=None)}
        touched, records = set(), []
        for reduction_id, frame_id in new:
            frame = ledger.frame(frame_id)
            rows = [
                {**m.row, "version": m.version, "current": 1}
                for m in ledger.measurements(frame_id=frame_id)
            ]
            if frame is None or not rows:
                continue
            key = (rows[0].get("object", ""), rows[0].get("filter", ""))
            for columns in self._columns.values():  # a re-reduced light leaves its old field
                columns.pop(frame_id, None)
            self._columns[key][frame_id] = queries.curve_columns(rows)
            touched.add(key)
            airmass, ny, nx = queries.header_facts(frame.path)
            self._shapes[frame_id] = (ny, nx)
            records.append(
                (key, frame, rows, reduction_id, [masters.get(i, str(i)) for i in
                                                  ledger.masters_used(frame_id)], airmass)
            )  # fmt: skip
            self._cursor = max(self._cursor, reduction_id)
        metas = {key: self._known_meta(key) for key in touched}
        self._dirty |= touched
        with self.lock:
            for key, frame, rows, reduction_id, used, airmass in records:
                record = queries.light_record(
                    frame, rows, reduction_id=reduction_id, masters=used, airmass=airmass,
                    quicklook=self._quicklook_url(frame),
                )  # fmt: skip
                record["field"] = self._field_id(key)
                record["marks"] = queries.marks(rows, metas[key], self._shapes[frame.id])
                self.lights.pop(frame.id, None)
                self.lights[frame.id] = record
                if record["quicklook"] is None and self.config.output.quicklook:
                    self._no_chart[frame.id] = frame
            if records:
                self._emit({"type": "lights", "lights": [self.lights[r[1].id] for r in records
                                                         if r[1].id in self.lights]})  # fmt: skip
        while len(self._no_chart) > 100:  # lights whose chart never came (write failed)
            self._no_chart.pop(next(iter(self._no_chart)))

    def _find_charts(self):
        """Send again the lights whose finder chart was written after their rows."""
        found = [f for f in self._no_chart.values() if self._quicklook_url(f) is not None]
        if not found:
            return
        with self.lock:
            for frame in found:
                del self._no_chart[frame.id]
                self.lights[frame.id] = {
                    **self.lights[frame.id],
                    "quicklook": self._quicklook_url(frame),
                }
            self._emit({"type": "lights", "lights": [self.lights[f.id] for f in found]})

    def _known_meta(self, key):
        """Target and comparisons of a field for the chart marks (computed for a new field)."""
        meta = self.fields.get(key, {}).get("meta")
        return meta if meta else self._curve(key)[1]

    def _update_curves(self):
        """Rebuild the curves of fields with new lights, each at most CURVE_SHARE of the time.

        A night of 1,000 lights of 80 stars takes ~0.6 s to rebuild: the server
        then rebuilds it every few seconds at most instead of hogging the
        daemon's process.
        """
        for key in sorted(self._dirty):
            start = time.monotonic()
            if start < self._not_before.get(key, 0.0):
                continue
            self._dirty.discard(key)
            points, meta = self._curve(key)
            with self.lock:
                self._send_curve(key, points, meta)
            end = time.monotonic()
            self._not_before[key] = end + (end - start) * (1.0 / CURVE_SHARE - 1.0)

    def _curve(self, key):
        try:
            return queries.field_curve(list(self._columns[key].values()), self.config.lightcurve)
        except Exception as exc:  # a field the curve code cannot handle yet
            log.debug("web_curve_skipped", field=list(key), reason=str(exc))
            return [], {"target_id": None, "comparison_ids": [], "checks": []}

    def _quicklook_url(self, frame):
        path = quicklook_path(self.outdir, frame.relpath)
        return f"/quicklook/{frame.id}" if path.is_file() else None

    def _field_id(self, key):
        if key not in self.fields:
            label = " ".join(p for p in key if p)
            self.fields[key] = {"id": len(self.fields) + 1, "label": label, "points": [],
                                "meta": {}}  # fmt: skip
        return self.fields[key]["id"]

    def _send_curve(self, key, points, meta):
        """Emit the new points of a field, or all of them when earlier ones changed."""
        self._field_id(key)
        field = self.fields[key]
        old = field["points"]
        same = meta == field["meta"] and _same_prefix(old, points)
        field["points"], field["meta"] = points, meta
        event = {"type": "curve", "field": field["id"], "label": field["label"], "meta": meta}
        if same:
            self._emit({**event, "mode": "append", "points": points[len(old) :]})
        else:
            self._emit({**event, "mode": "replace", "points": points})

    def _emit(self, event):
        self.seq += 1
        self.events.append((self.seq, event))

    # -- readers (any thread) --------------------------------------------------

    def snapshot(self):
        """Everything the page needs to draw itself, with the event number it is current to."""
        with self.lock:
            return {
                "instance": self.instance,
                "seq": self.seq,
                "state": self.state,
                "lights": list(self.lights.values()),
                "fields": [
                    {"id": f["id"], "label": f["label"], "meta": f["meta"], "points": f["points"]}
                    for f in self.fields.values()
                ],
            }

    def since(self, seq):
        """Events after ``seq``, or None when they are no longer kept (reload the snapshot)."""
        with self.lock:
            if seq >= self.seq:
                return []
            if not self.events or self.events[0][0] > seq + 1:
                return None
            return [(n, e) for n, e in self.events if n > seq]

    def light(self, frame_id):
        """The record of a reduced light (None if unknown)."""
        with self.lock:
            return self.lights.get(frame_id)

    def wait_ready(self, timeout=10.0):
        """Wait until the first look at the ledger is done (tests, start-up)."""
        deadline = time.monotonic() + timeout
        while not self.state and time.monotonic() < deadline:
            time.sleep(0.02)
        return bool(self.state)


def _same_prefix(old, new):
    """True when the first ``len(old)`` points of ``new`` equal ``old`` (within TOLERANCE)."""
    if len(new) < len(old):
        return False
    for a, b in zip(old, new, strict=False):
        if a["file"] != b["file"]:
            return False
        for key in ("dmag", "err", "ens"):
            if not _close(a.get(key), b.get(key)):
                return False
        if len(a["checks"]) != len(b["checks"]) or not all(
            _close(x, y) for x, y in zip(a["checks"], b["checks"], strict=True)
        ):
            return False
    return True


def _close(a, b):
    if a is None or b is None:
        return a is b
    return abs(a - b) <= TOLERANCE
