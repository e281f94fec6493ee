"""Many nights in one ``reduxd reduce``: what each night holds, and progress per night.

``reduxd reduce -D archive`` (a folder of night folders) or ``-D n1 n2 ...``
reduces every night found: the masters of each night first (they are built per
night), then the lights of all nights in time order. :func:`plan_nights` counts
what each night holds (printed before the work starts) and
:class:`NightProgress` reports each night as it completes, besides the overall
progress of :class:`reduxd.batch.Progress`.
"""

from collections import Counter, defaultdict
from dataclasses import dataclass, field

UNKNOWN = "?"  # files whose night cannot be read (the pipeline says why)


@dataclass
class NightPlan:
    """What one night holds: calibration frames by kind, and lights."""

    night: str
    calibration: Counter = field(default_factory=Counter)
    lights: int = 0

    @property
    def frames(self):
        return sum(self.calibration.values()) + self.lights

    def describe(self):
        cal = ", ".join(f"{n} {kind}" for kind, n in sorted(self.calibration.items()))
        return f"night {self.night}: {self.lights} lights, {cal or 'no calibration frames'}"


def plan_nights(cal, lights, *, utc_offset_hours, night_of_light):
    """Count the frames of each night; return ``(plans by night, night of each relpath)``.

    Parameters
    ----------
    cal : list of (root, path, FrameInfo or None)
        Calibration frames (from :func:`reduxd.batch.sort_frames`).
    lights : list of (root, path)
    utc_offset_hours : float
        The site's offset (a night is the local date of its evening).
    night_of_light : dict
        ``{path: night}`` of the lights (from the FrameInfo that ``sort_frames`` gives).
    """
    plans, night_of = {}, {}

    def plan(night):
        return plans.setdefault(night, NightPlan(night))

    for root, path, info in cal:
        night = info.night(utc_offset_hours) if info is not None else UNKNOWN
        plan(night).calibration[info.kind if info is not None else "unreadable"] += 1
        night_of[path.relative_to(root).as_posix()] = night
    for root, path in lights:
        night = night_of_light.get(path, UNKNOWN)
        plan(night).lights += 1
        night_of[path.relative_to(root).as_posix()] = night
    return dict(sorted(plans.items())), night_of


class NightProgress:
    """Overall progress (a :class:`reduxd.batch.Progress`), plus a line as each night ends.

    Parameters
    ----------
    overall : reduxd.batch.Progress
        Counts every file; its stream gets the per-night lines too.
    plans : dict
        ``{night: NightPlan}`` from :func:`plan_nights`.
    night_of : dict
        ``{relpath: night}``; each ``step(relpath)`` counts for that night.
    """

    def __init__(self, overall, plans, night_of):
        self.overall, self.plans, self.night_of = overall, plans, night_of
        self.done_by = defaultdict(int)
        self.finished = set()

    def step(self, label=""):
        night = self.night_of.get(label, UNKNOWN)
        self.done_by[night] += 1
        self.overall.step(label)
        plan = self.plans.get(night)
        if plan is None or night in self.finished or self.done_by[night] < plan.frames:
            return
        self.finished.add(night)
        self.overall.write(
            f"night {night} done: {plan.frames} files "
            f"({len(self.finished)}/{len(self.plans)} nights)"
        )

    def close(self):
        self.overall.close()
