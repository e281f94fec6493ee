"""Light curves kept current: each new light appended, the curve rebuilt now and then.

When a light is committed, :meth:`Curves.changed` appends it to its field's light
curve (against the comparisons frozen at the last build), or marks the field for a
rebuild: a superseded light, a frame that cannot be appended, a field that doubled
its frames since the last build. :meth:`Curves.update` rebuilds the marked curves
from the ledger's current rows and remembers each field's ensemble, so the log line
of the next light can give the target's differential magnitude (:meth:`Curves.target_mag`).
"""

import math
from collections import defaultdict

from reduxd.errors import ReduxdError
from reduxd.log import get_logger
from reduxd.products import lightcurve

log = get_logger("reduxd.pipeline")
CURVE_MIN_FRAMES = 10  # a light curve is rebuilt after this many appended lights at least


class Curves:
    """The light curves of one output folder, fed from one ledger."""

    def __init__(self, config, *, ledger, outdir, clock):
        self.config = config
        self.ledger = ledger
        self.outdir = outdir
        self.clock = clock
        self.dirty = set()  # (field, filter) with new rows
        self.ensembles = {}  # (field, filter) -> its last light curve's target and ensemble
        self.states = {}  # (field, filter) -> what appending to its light curve needs
        self._at = -math.inf

    def target_mag(self, rows):
        """The configured target's differential magnitude in this frame, or None.

        Uses the field's ensemble from its last light curve; None before there is
        one, when no target is configured, or when the target is not measured here.
        """
        key = (rows[0]["object"], rows[0]["filter"]) if rows else None
        ensemble = self.ensembles.get(key)
        return lightcurve.frame_dmag(rows, ensemble) if ensemble else None

    def changed(self, field, rows, version):
        """Append a new light to its field's curve, or mark the curve for a rebuild.

        Rebuilt (comparisons chosen again) when a light is superseded, when the
        frame cannot be appended, and when the field has doubled its frames
        since the last build: the work per light stays the same all night.
        """
        state = self.states.get(field)
        if version == 1 and state is not None and field not in self.dirty:
            save = self.config.output.save
            try:
                ok = lightcurve.append_lightcurve(
                    self.outdir, rows, state, object=field[0], filter=field[1], save=save
                )
            except Exception as exc:
                log.warning("lightcurve_not_appended", object=field[0], reason=str(exc))
                ok = False
            if ok:
                state["appended"] = state.get("appended", 0) + 1
                if state["appended"] < max(state["frames"], CURVE_MIN_FRAMES):
                    return
        self.dirty.add(field)

    def update(self, *, min_interval=0.0, final=True):
        """Rewrite the light curves of fields that got new rows.

        ``final`` (the end of a batch, a stop): curves that were appended to since
        their last build are rebuilt too, so they end on the whole night's ensemble.
        """
        if final:
            appended = [f for f, state in self.states.items() if state and state.get("appended")]
            self.dirty.update(appended)
        now = self.clock()
        if not self.dirty or now - self._at < min_interval:
            return
        self._at = now
        groups = defaultdict(list)
        wanted = set(self.dirty)
        for m in self.ledger.measurements(current_only=True):
            key = (m.row.get("object"), m.row.get("filter"))
            if key in wanted:
                groups[key].append({**m.row, "version": m.version, "current": 1})
        for (obj, filt), rows in groups.items():
            self._write(obj, filt, rows)
        self.dirty.clear()

    def _write(self, obj, filt, rows):
        lc = self.config.lightcurve
        table = lightcurve.field_table(rows)
        common = dict(object=obj, filter=filt, n_comparisons=lc.n_comparisons,
                      save=self.config.output.save)  # fmt: skip
        target, comparisons, radec = lightcurve.field_target(lc, obj)
        kept = {}
        try:
            try:
                lightcurve.write_lightcurve(
                    self.outdir, table, target=target, comparisons=comparisons,
                    radec=radec, keep=kept, **common,
                )  # fmt: skip
            except ReduxdError as exc:
                if target is None and radec is None:
                    raise
                # the configured target (and its comparisons) is in another field
                log.warning("lightcurve_target_not_in_field", object=obj, reason=str(exc))
                lightcurve.write_lightcurve(self.outdir, table, target=None, keep=kept, **common)
            if "lightcurve" in kept:
                self.ensembles[(obj, filt)] = lightcurve.ensemble_of(kept["lightcurve"])
            self.states[(obj, filt)] = (
                lightcurve.frozen_of(kept["lightcurve"]) if "lightcurve" in kept else None
            )
        except Exception as exc:
            log.warning("lightcurve_not_written", object=obj, filter=filt, reason=str(exc))
