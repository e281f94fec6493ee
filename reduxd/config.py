"""Configuration: a TOML file loaded into frozen, typed dataclasses.

Every option is documented in the project's ``config.toml``. An unknown key, a
wrong type or an impossible value fails at start-up with a :class:`ConfigError`
naming the file, the key and what was expected.
"""

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from reduxd import skymethods
from reduxd.errors import ConfigError
from reduxd.frames import KINDS, ClassifyRules

COMBINE_METHODS = ("median", "sigma_clip")
OBSERVERS = ("auto", "inotify", "polling")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _check(predicate, expected):
    return {"check": predicate, "expected": expected}


POSITIVE = _check(lambda v: v > 0, "a number > 0")
NON_NEGATIVE = _check(lambda v: v >= 0, "a number >= 0")


def _one_of(choices):
    return _check(lambda v: v in choices, f"one of {', '.join(choices)}")


# the sky methods registered when the config is read (skymethods.py)
SKY_METHOD = _check(
    lambda v: v in skymethods.METHODS, lambda: f"one of {', '.join(skymethods.names())}"
)


@dataclass(frozen=True)
class Paths:
    data: tuple[str, ...] = ("data",)
    calibration: tuple[str, ...] = ()
    outdir: str = "analysis"
    state: str = ""

    @property
    def state_file(self):
        return self.state or str(Path(self.outdir) / "reduxd.sqlite")


@dataclass(frozen=True)
class Site:
    utc_offset_hours: float = field(
        default=-5.0, metadata=_check(lambda v: -14 <= v <= 14, "hours between -14 and 14")
    )
    latitude_deg: float | None = None
    longitude_deg: float | None = None  # east positive
    elevation_m: float = 0.0


@dataclass(frozen=True)
class Reading:
    max_frame_mb: float = field(default=2048.0, metadata=POSITIVE)
    extensions: tuple[str, ...] = (".fits", ".fit", ".fts", ".fits.fz")
    follow_links_outside: bool = False

    @property
    def max_bytes(self):
        return int(self.max_frame_mb * 1024 * 1024)


@dataclass(frozen=True)
class Camera:
    instrument: str = ""
    gain: float | None = None
    gain_e_per_adu: float = field(default=1.0, metadata=POSITIVE)
    read_noise_e: float = field(default=5.0, metadata=NON_NEGATIVE)
    saturation_adu: float = field(default=0.0, metadata=NON_NEGATIVE)


@dataclass(frozen=True)
class Calibration:
    combine: str = field(default="median", metadata=_one_of(COMBINE_METHODS))
    clip_sigma: float = field(default=3.0, metadata=POSITIVE)
    max_memory_mb: float = field(
        default=2048.0,
        metadata=_check(lambda v: 64 <= v <= 1048576, "a number > 0 (MB), between 64 and 1048576"),
    )
    flat_scale: str = field(default="median", metadata=_one_of(("none", "median")))
    temperature_tolerance: float = field(default=3.0, metadata=NON_NEGATIVE)
    max_age_days: float = field(default=30.0, metadata=NON_NEGATIVE)
    hot_sigma: float = field(default=0.0, metadata=NON_NEGATIVE)
    low_flat: float = field(default=0.5, metadata=_check(lambda v: 0 <= v < 1, "between 0 and 1"))
    master_max_deviation: float = field(default=0.5, metadata=POSITIVE)
    force: bool = False
    no_dark: bool = False
    no_flat: bool = False
    exclude_filters: tuple[str, ...] = ()
    cameras: tuple[Camera, ...] = ()


@dataclass(frozen=True)
class Photometry:
    radius: float = field(
        default=0.0,
        metadata=_check(
            lambda v: 0 <= v <= 1000, "a number >= 0 and <= 1000 (pixels; 0: from the seeing)"
        ),
    )
    radius_fwhm: float = field(default=0.0, metadata=NON_NEGATIVE)
    sky_method: str = field(default=skymethods.DEFAULT, metadata=SKY_METHOD)
    subframe: int = field(default=25, metadata=_check(lambda v: v >= 5, "an integer >= 5"))
    annulus: tuple[float, ...] = field(
        default=(),
        metadata=_check(lambda v: len(v) == 0 or (len(v) == 2 and 0 < v[0] < v[1]),
                        "[] or [r_in, r_out] with 0 < r_in < r_out"),
    )  # fmt: skip
    sky_region: tuple[int, ...] = field(
        default=(), metadata=_check(lambda v: len(v) in (0, 4), "[] or [x0, x1, y0, y1]")
    )
    smoothing: float = field(default=0.0, metadata=NON_NEGATIVE)
    detect_sigma: float = field(default=5.0, metadata=POSITIVE)
    fit_quality: float = field(default=0.9, metadata=_check(lambda v: 0 <= v <= 1, "0 to 1"))
    mesh_box: int = field(default=64, metadata=POSITIVE)
    min_snr: float = field(default=5.0, metadata=NON_NEGATIVE)
    match_radius: float = field(default=3.0, metadata=POSITIVE)
    max_offset: float = field(default=300.0, metadata=POSITIVE)


@dataclass(frozen=True)
class Target:
    """One field's target (``[[lightcurve.targets]]``)."""

    object: str = field(default="", metadata=_check(lambda v: v.strip() != "", "an OBJECT name"))
    position: tuple[float, ...] = field(
        default=(), metadata=_check(lambda v: len(v) in (0, 1, 2), "[], [star_id] or [x, y]")
    )
    radec: tuple[float, ...] = field(
        default=(), metadata=_check(lambda v: len(v) in (0, 2), "[] or [ra_deg, dec_deg]")
    )
    comparisons: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True)
class Lightcurve:
    target: tuple[float, ...] = field(
        default=(), metadata=_check(lambda v: len(v) in (0, 1, 2), "[], [star_id] or [x, y]")
    )
    comparisons: tuple[tuple[float, ...], ...] = ()
    n_comparisons: int = field(default=10, metadata=POSITIVE)
    targets: tuple[Target, ...] = ()


@dataclass(frozen=True)
class Output:
    save: str = ""
    reduced: bool = True
    quicklook: bool = True
    profile_plots: bool = False
    stack: bool = True


@dataclass(frozen=True)
class Watch:
    roots: tuple[str, ...] = ()
    observer: str = field(default="auto", metadata=_one_of(OBSERVERS))
    poll_interval: float = field(default=5.0, metadata=POSITIVE)
    settle_seconds: float = field(default=2.0, metadata=NON_NEGATIVE)
    reconcile_seconds: float = field(default=60.0, metadata=POSITIVE)
    set_timeout_seconds: float = field(default=30.0, metadata=NON_NEGATIVE)
    incomplete_timeout_seconds: float = field(default=600.0, metadata=POSITIVE)
    max_tries: int = field(default=3, metadata=POSITIVE)
    ignore_patterns: tuple[str, ...] = (".*", "*.tmp", "*.part", "*~", "*.swp")


@dataclass(frozen=True)
class Logging:
    level: str = field(default="INFO", metadata=_one_of(LEVELS))
    json_file: str = ""
    third_party_debug: bool = False


@dataclass(frozen=True)
class Web:
    listen: str = "127.0.0.1:8750"
    token: str = ""


@dataclass(frozen=True)
class Config:
    paths: Paths = field(default_factory=Paths)
    site: Site = field(default_factory=Site)
    reading: Reading = field(default_factory=Reading)
    classify: ClassifyRules = field(default_factory=ClassifyRules)
    calibration: Calibration = field(default_factory=Calibration)
    photometry: Photometry = field(default_factory=Photometry)
    lightcurve: Lightcurve = field(default_factory=Lightcurve)
    output: Output = field(default_factory=Output)
    watch: Watch = field(default_factory=Watch)
    logging: Logging = field(default_factory=Logging)
    web: Web = field(default_factory=Web)
    source: str = "<defaults>"

    def camera(self, instrument, gain):
        """Return the :class:`Camera` entry for an instrument and gain setting (or defaults)."""
        for cam in self.calibration.cameras:
            if cam.instrument in ("", instrument) and cam.gain in (None, gain):
                return cam
        return Camera(instrument=instrument, gain=gain)


class _Loader:
    def __init__(self, source):
        self.source = source

    def fail(self, key, expected, value):
        expected = expected() if callable(expected) else expected
        raise ConfigError(f"{self.source}: [{key}] expected {expected}, got {value!r}")

    def build(self, cls, values, key):
        if not isinstance(values, dict):
            self.fail(key, "a table", values)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            known = ", ".join(fields)
            where = f"{key}.{unknown[0]}" if key else unknown[0]
            raise ConfigError(f"{self.source}: unknown key {where} (known: {known})")
        kwargs = {}
        for name, value in values.items():
            where = f"{key}.{name}" if key else name
            kwargs[name] = self.convert(hints[name], value, where)
            meta = fields[name].metadata
            if "check" in meta and not meta["check"](kwargs[name]):
                self.fail(where, meta["expected"], value)
        return cls(**kwargs)

    def convert(self, hint, value, key):
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            return self.build(hint, value, key)
        if origin in (types.UnionType, typing.Union):
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], value, key)
        if origin is tuple:
            return self.convert_tuple(args, value, key)
        if origin is dict:
            return self.convert_dict(args, value, key)
        return self.convert_scalar(hint, value, key)

    def convert_tuple(self, args, value, key):
        if not isinstance(value, list | tuple):
            self.fail(key, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self.convert(args[0], v, key) for v in value)
        if len(args) != len(value):
            self.fail(key, f"a list of {len(args)} values", value)
        return tuple(self.convert(a, v, key) for a, v in zip(args, value, strict=True))

    def convert_dict(self, args, value, key):
        if not isinstance(value, dict):
            self.fail(key, "a table", value)
        return {str(k): self.convert(args[1], v, f"{key}.{k}") for k, v in value.items()}

    def convert_scalar(self, hint, value, key):
        if hint is bool:
            if not isinstance(value, bool):
                self.fail(key, "true or false", value)
            return value
        if hint in (int, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(key, "a number", value)
            if hint is int and value != int(value):
                self.fail(key, "an integer", value)
            return hint(value)
        if hint is str:
            if not isinstance(value, str):
                self.fail(key, "a string", value)
            return value
        return value


def _merge(base, overrides):
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(config):
    cls = config.classify
    if cls.default_kind not in KINDS:
        raise ConfigError(
            f"{config.source}: [classify.default_kind] expected one of {KINDS}, "
            f"got {cls.default_kind!r}"
        )
    for target in config.lightcurve.targets:
        if bool(target.position) == bool(target.radec):
            raise ConfigError(
                f"{config.source}: [[lightcurve.targets]] object {target.object!r}: expected "
                "exactly one of position = [x, y] (or [star_id]) and radec = [ra_deg, dec_deg]"
            )
    for table in ("types", "path_rules"):
        for kind in getattr(cls, table):
            if kind not in KINDS:
                raise ConfigError(
                    f"{config.source}: [classify.{table}.{kind}] expected a kind in {KINDS}"
                )
    return config


def load_config(path=None, overrides=None):
    """Load ``path`` (TOML) over the defaults, then apply ``overrides`` (nested dict).

    Parameters
    ----------
    path : str or Path, optional
        A TOML file; ``None`` uses the built-in defaults. ``config.toml`` shows each of
        them, except [paths] (the demo's folders), the camera entries and the light-curve
        target, which are site settings with no sensible built-in value.
    overrides : dict, optional
        Values from the command line, e.g. ``{'photometry': {'radius': 15.0}}``.

    Raises
    ------
    ConfigError
        Naming the file, the key and what was expected.

    Examples
    --------
    >>> cfg = load_config(overrides={'photometry': {'radius': 12}})
    >>> cfg.photometry.radius, cfg.photometry.sky_method
    (12.0, 'annulus')
    """
    raw, source = {}, "<defaults>"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if overrides:
        raw = _merge(raw, overrides)
    config = _Loader(source).build(Config, raw, "")
    return _validate(dataclasses.replace(config, source=source))
