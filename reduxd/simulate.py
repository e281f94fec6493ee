"""``reduxd simulate``: a realistic SharpCap observing night with known truth.

Physical model (per pixel ``(y, x)``, one frame of exposure ``t`` seconds)::

    electrons = flat_f(y, x) * (sky_f + stars(y, x)) * t  +  dark(y, x) * t     [lights]
    electrons = flat_f(y, x) * lamp_f * t                  +  dark(y, x) * t     [flats]
    electrons =                                               dark(y, x) * t     [bias, darks]
    raw_adu   = bias(y, x) + (Poisson(electrons) + Normal(0, read_noise_e) + cosmics_e) / gain
    stored    = clip(round(raw_adu / step) * step, 0, saturation)  as uint16

- ``gain`` is ``gain_e_per_adu`` (e-/ADU) in the 16-bit units SharpCap stores.
- ``step = 2**(16 - adc_bits)``: the ASI432MM has a 12-bit ADC and SharpCap stores
  ADU * 16 (the real frames in ``shared/data/umbc-sharpcap`` are multiples of 16);
  ``saturation = (2**adc_bits - 1) * step`` (65520 for 12 bits, 65535 for 16 bits).
- ``bias(y, x)``: ``bias_adu`` plus a zero-mean column/pixel pattern (mean exactly ``bias_adu``).
- ``dark(y, x)``: ``dark_e_per_s`` times a log-normal pixel spread, plus ``n_hot`` hot
  pixels (20..2000 e-/s, stable positions, visible in darks, flats and lights).
- ``flat_f``: vignetting, a common sensor dust donut plus per-filter dust donuts, 0.5 %
  pixel response non-uniformity; normalised to median 1. Flat frames reach ~``flat_level_adu``.
- ``stars``: circular Gaussians integrated over pixels (:mod:`reduxd.synth`) of
  ``flux_e_per_s[filter] * transparency * transit_rel_flux`` e-/s, shifted by the
  pointing offset ``(dx, dy)`` of the frame (linear drift plus jitter); per-frame FWHM.
- Cosmic rays (lights only) are short tracks of deposited charge, not flat-fielded.

Star fluxes are in **electrons per second** above the atmosphere, before the flat
(``adu = flux * t * transparency * rel * flat / gain``). Pixel coordinates are
0-based numpy/photutils ``(x = column, y = row)`` of the array as astropy loads it.

Every frame is rendered from its own random stream ``(seed, kind, key, index)``, so
the same seed gives byte-identical files whatever the delivery mode or order.
Files are written byte by byte in SharpCap's card order (BITPIX 16, BZERO 32768
near the end), so they can be delivered in chunks.
"""

import argparse
import contextlib
import gzip
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.special import erf

from reduxd.synth import FWHM_TO_SIGMA, add_ccd_noise, render_stars

log = logging.getLogger(__name__)

BLOCK = 2880
DELIVERIES = ("chunks", "rename", "copy")
TRUTH_SCHEMA = "reduxd-simulate-truth/1"
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # MJD 51544.0
_MJD_EPOCH = 51544
_TICKS_PER_S = 10_000_000  # SharpCap writes 100 ns ticks (7 decimals)
_TICKS_PER_DAY = 86400 * _TICKS_PER_S
_KIND_CODE = {"bias": 1, "dark": 2, "flat": 3, "light": 4}


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Transit:
    """A transit of the target star (star id 0), box (``ingress_frac=0``) or trapezoid.

    Times are fractions of the light sequence (first light start to last light end),
    so the transit fits any night; the truth file gives them in MJD and seconds.
    """

    depth: float = 0.015  # fractional flux loss at full depth
    mid_frac: float = 0.5  # mid-time as a fraction of the light sequence
    duration_frac: float = 0.5  # first to last contact (T14), fraction of the sequence
    ingress_frac: float = 0.15  # ingress duration as a fraction of T14; 0 = box
    flux_e_per_s: float = 3000.0  # target's out-of-transit flux in the first filter

    def __post_init__(self):
        if not 0.0 <= self.depth < 1.0:
            raise ValueError(f"transit depth must be in [0, 1), got {self.depth}")
        if not 0.0 <= self.ingress_frac <= 0.5:
            raise ValueError(f"ingress_frac must be in [0, 0.5], got {self.ingress_frac}")
        if self.duration_frac <= 0 or self.flux_e_per_s <= 0:
            raise ValueError("transit duration_frac and flux_e_per_s must be positive")


def _pairs(value):
    if isinstance(value, Mapping):
        value = value.items()
    return tuple((str(k), float(v)) for k, v in value)


@dataclass(frozen=True)
class NightSpec:
    """Everything that defines a simulated night (defaults: a realistic ASI432MM night)."""

    target: str = "pg2213"
    filters: tuple[str, ...] = ("V", "R")
    light_exptime: float = 15.0
    n_lights: int = 50  # per filter
    lights_per_run: int = 10  # SharpCap capture run (one HH_MM_SS folder); filters alternate
    n_bias: int = 20
    n_darks: int = 10  # per exposure time (lights and flats)
    n_flats: int = 10  # per filter
    flat_exptime: float = 2.0
    flat_level_adu: float = 25000.0
    bias_exptime: float = 3.2e-05  # the camera's shortest exposure, as SharpCap writes it
    shape: tuple[int, int] = (1104, 1608)  # (ny, nx)
    n_stars: int = 80  # field stars besides the target
    star_flux_min: float = 100.0  # e-/s, faintest field star (first filter)
    star_flux_slope: float = 0.7  # N(>f) ~ f**-slope; a few stars saturate
    fwhm: float = 3.5  # px, median seeing
    fwhm_jitter: float = 0.08  # relative rms of the per-frame FWHM
    transparency_rms: float = 0.005  # relative rms of the per-frame transparency
    gain_setting: int = 150  # the GAIN card (camera setting, 0.1 dB)
    gain_e_per_adu: float = 0.25  # e- per stored (16-bit) ADU
    read_noise_e: float = 4.0
    adc_bits: int = 12
    bias_adu: float = 600.0
    bias_pattern_adu: float = 3.0  # rms of the fixed bias pattern
    dark_e_per_s: float = 0.3
    n_hot: int = 200
    sky_e_per_s: tuple[tuple[str, float], ...] = (
        ("B", 5.0),
        ("V", 8.0),
        ("R", 12.0),
        ("I", 15.0),
    )
    sky_default_e_per_s: float = 10.0
    vignetting: float = 0.3  # fractional loss in the corners
    n_dust_per_filter: int = 2
    prnu: float = 0.005
    cosmic_rays_per_frame: float = 8.0  # mean number of tracks per light
    drift_px_per_frame: tuple[float, float] = (0.25, -0.15)  # (dx, dy) per light
    jitter_px: float = 1.5  # rms per-frame pointing jitter (does not accumulate)
    transit: Transit | None = field(default_factory=Transit)
    instrument: str = "ZWO ASI432MM"
    pixel_um: float = 9.0
    ccd_temp: float = 38.0
    ccd_temp_jitter: float = 0.2
    start: str = "2024-07-02T00:50:00"  # UTC, first bias
    utc_offset_hours: float = -4.0  # local time in SharpCap's SIMPLE comment
    readout_s: float = 0.6  # time between the end of a frame and the next start
    run_gap_s: float = 30.0  # between capture runs (filter change, calibration)
    software: str = "SharpCap v4.0.9571.0, 64 bit"
    seed: int = 1

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "filters", tuple(str(f) for f in self.filters))
        set_(self, "shape", tuple(int(v) for v in self.shape))
        set_(self, "sky_e_per_s", _pairs(self.sky_e_per_s))
        set_(self, "drift_px_per_frame", tuple(float(v) for v in self.drift_px_per_frame))
        if isinstance(self.transit, Mapping):
            set_(self, "transit", Transit(**self.transit))
        if not self.filters or len(set(self.filters)) != len(self.filters):
            raise ValueError(f"filters must be distinct and non-empty, got {self.filters}")
        if len(self.shape) != 2 or min(self.shape) < 16:
            raise ValueError(f"shape must be (ny, nx), each >= 16, got {self.shape}")
        for name in ("n_lights", "lights_per_run", "n_bias", "n_darks", "n_flats", "n_stars"):
            if getattr(self, name) < (1 if name == "lights_per_run" else 0):
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("light_exptime", "flat_exptime", "gain_e_per_adu", "fwhm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 8 <= self.adc_bits <= 16:
            raise ValueError(f"adc_bits must be in 8..16, got {self.adc_bits}")
        _parse_start(self.start)

    @classmethod
    def small(cls, **overrides):
        """A tiny night (384x256, a few frames of each kind) for fast tests."""
        values = dict(
            shape=(256, 384),
            n_lights=6,
            lights_per_run=3,
            n_bias=5,
            n_darks=3,
            n_flats=3,
            n_stars=15,
            n_hot=10,
            cosmic_rays_per_frame=2.0,
            drift_px_per_frame=(0.6, -0.4),
            jitter_px=0.7,
        )
        values.update(overrides)
        return cls(**values)

    def camera_toml(self):
        """The ``[[calibration.cameras]]`` entry of this night's camera, as config TOML.

        >>> print(NightSpec().camera_toml())
        [[calibration.cameras]]
        instrument = "ZWO ASI432MM"
        gain_e_per_adu = 0.25
        read_noise_e = 4.0
        saturation_adu = 65520.0
        """
        saturation = (2**self.adc_bits - 1) * 2 ** (16 - self.adc_bits)
        return (
            "[[calibration.cameras]]\n"
            f'instrument = "{self.instrument}"\n'
            f"gain_e_per_adu = {self.gain_e_per_adu}\n"
            f"read_noise_e = {self.read_noise_e}\n"
            f"saturation_adu = {float(saturation)}"
        )

    def sky(self, filt):
        """Sky rate (e-/s/pixel before the flat) in filter ``filt``."""
        return dict(self.sky_e_per_s).get(filt, self.sky_default_e_per_s)

    @property
    def adu_step(self):
        return 2 ** (16 - self.adc_bits)

    @property
    def saturation_adu(self):
        return (2**self.adc_bits - 1) * self.adu_step


# --------------------------------------------------------------------------- time


def _parse_start(text):
    stamp = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def _ticks(stamp):
    delta = stamp - _EPOCH
    return (delta.days * 86400 + delta.seconds) * _TICKS_PER_S + delta.microseconds * 10


def _iso(ticks):
    """100 ns ticks since 2000-01-01 -> SharpCap's 'YYYY-MM-DDTHH:MM:SS.fffffff'."""
    stamp = _EPOCH + timedelta(microseconds=ticks // 10)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{stamp.microsecond:06d}{ticks % 10}"


def _mjd(ticks):
    days, rest = divmod(ticks, _TICKS_PER_DAY)
    return _MJD_EPOCH + days + rest / _TICKS_PER_DAY


def _exp_ticks(exptime):
    return round(exptime * _TICKS_PER_S)


def _fmt_exp(exptime):
    return f"{exptime:g}"


def _number(value):
    """SharpCap writes whole numbers without a decimal point (EXPTIME = 15)."""
    value = float(value)
    return int(value) if value.is_integer() else value


# --------------------------------------------------------------------------- FITS bytes


def sharpcap_cards(
    kind,
    *,
    exptime,
    date_obs,
    filt=None,
    obj="",
    gain=150,
    ccd_temp=38.0,
    instrument="ZWO ASI432MM",
    pixel_um=9.0,
    binning=1,
    utc_offset_hours=-4.0,
    software="SharpCap v4.0.9571.0, 64 bit",
):
    """Header cards ``(keyword, value, comment)`` in SharpCap 4.0's order and style.

    ``kind`` is 'light', 'dark', 'flat' or 'bias'; ``date_obs`` the exposure start
    (aware datetime, or ticks of 100 ns since 2000-01-01 UTC). FILTER is written for
    lights and flats only. Pass the result to :func:`fits_bytes` or :func:`write_frame`.
    """
    start = date_obs if isinstance(date_obs, int) else _ticks(date_obs)
    exp = _exp_ticks(exptime)
    end = start + exp
    local = _EPOCH + timedelta(microseconds=end // 10, hours=utc_offset_hours)
    cards = [
        ("SIMPLE", True, f"C# FITS: {local:%m/%d/%Y %H:%M:%S}"),
        ("OBJECT", obj, ""),
        ("GAIN", _number(gain), ""),
    ]
    if kind in ("light", "flat") and filt is not None:
        cards.append(("FILTER", filt, ""))
    cards += [
        ("DATE-AVG", _iso(start + exp // 2), "System Clock:Est. Frame Mid Point"),
        ("DATE-END", _iso(end), "System Clock:Est. Frame End"),
        ("DATE-OBS", _iso(start), "System Clock:Est. Frame Start"),
        ("SWCREATE", software, ""),
        ("FRAMETYP", kind.capitalize(), ""),
        ("CCD-TEMP", _number(round(ccd_temp, 1)), "C"),
        ("XBINNING", binning, ""),
        ("BLKLEVEL", 0, ""),
        ("YPIXSZ", _number(pixel_um * binning), "microns, includes binning if any"),
        ("XPIXSZ", _number(pixel_um * binning), "microns, includes binning if any"),
        ("EXPTIME", _number(exptime), "seconds"),
        ("ROWORDER", "TOP-DOWN", ""),
        ("BSCALE", 1, ""),
        ("BZERO", 32768, ""),
        ("EXTEND", True, "Extensions are permitted"),
        ("YBINNING", binning, ""),
        ("INSTRUME", instrument, ""),
    ]
    return cards


def _card(key, value, comment):
    return fits.Card(key, value, comment).image


def fits_bytes(data, cards=()):
    """Return the bytes of a BITPIX=16 + BZERO=32768 FITS file of uint16 ``data``.

    ``cards`` are ``(keyword, value, comment)`` tuples (or an astropy Header), kept in
    their order after SIMPLE/BITPIX/NAXIS*; BSCALE/BZERO are appended if absent.
    """
    data = np.asarray(data)
    if data.dtype != np.uint16 or data.ndim != 2:
        raise ValueError(f"data must be a 2-D uint16 array, got {data.dtype} {data.shape}")
    if isinstance(cards, fits.Header):
        cards = [(c.keyword, c.value, c.comment) for c in cards.cards]
    cards = list(cards)
    simple = next((c for c in cards if c[0] == "SIMPLE"), ("SIMPLE", True, ""))
    ny, nx = data.shape
    lines = [
        _card("SIMPLE", True, simple[2]),
        _card("BITPIX", 16, ""),
        _card("NAXIS", 2, "Dimensionality"),
        _card("NAXIS1", nx, ""),
        _card("NAXIS2", ny, ""),
    ]
    skip = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "END"}
    keys = set()
    for key, value, comment in cards:
        if key in skip:
            continue
        if key in ("BZERO", "BSCALE") and value != {"BZERO": 32768, "BSCALE": 1}[key]:
            raise ValueError(f"{key}={value!r}: uint16 data need BSCALE=1, BZERO=32768")
        keys.add(key)
        lines.append(_card(key, value, comment))
    if "BSCALE" not in keys:
        lines.append(_card("BSCALE", 1, ""))
    if "BZERO" not in keys:
        lines.append(_card("BZERO", 32768, ""))
    header = "".join(lines) + "END".ljust(80)
    header = header.ljust(-(-len(header) // BLOCK) * BLOCK).encode("ascii")
    body = (data.view(np.int16) ^ np.int16(-32768)).astype(">i2").tobytes()
    return header + body + b"\0" * (-len(body) % BLOCK)


def _write_chunks(path, blob, chunk_bytes, pause):
    """Write ``blob`` with one unbuffered ``write`` per chunk, sleeping between chunks."""
    step = len(blob) if not chunk_bytes else int(chunk_bytes)
    view = memoryview(blob)
    with open(path, "wb", buffering=0) as fh:
        for i in range(0, len(blob), step):
            if i and pause:
                time.sleep(pause)
            chunk = view[i : i + step]
            while chunk:
                chunk = chunk[fh.write(chunk) :]


def write_frame(
    path,
    data_adu_uint16,
    header_cards=(),
    *,
    delivery="chunks",
    chunk_bytes=None,
    pause=0.0,
    staging_dir=None,
):
    """Write one uint16 frame as SharpCap would, delivered the way a writer or share does.

    delivery:
      - ``'chunks'``: write in place, ``chunk_bytes`` at a time, sleeping ``pause`` s
        between chunks (the file grows under its final name);
      - ``'rename'``: the same into ``<name>.tmp`` next to it, then ``os.replace``;
      - ``'copy'``: the same into ``staging_dir`` (a temporary folder by default, outside
        the destination tree), then ``shutil.copy`` into place.

    ``data_adu_uint16`` may also be the bytes of a complete FITS file (``header_cards``
    is then ignored). Returns the final path.
    """
    if delivery not in DELIVERIES:
        raise ValueError(f"delivery must be one of {DELIVERIES}, got {delivery!r}")
    path = Path(path)
    if isinstance(data_adu_uint16, bytes | bytearray):
        blob = bytes(data_adu_uint16)
    else:
        blob = fits_bytes(data_adu_uint16, header_cards)
    path.parent.mkdir(parents=True, exist_ok=True)
    if delivery == "chunks":
        _write_chunks(path, blob, chunk_bytes, pause)
    elif delivery == "rename":
        tmp = path.with_name(path.name + ".tmp")
        _write_chunks(tmp, blob, chunk_bytes, pause)
        os.replace(tmp, path)
    else:
        own = staging_dir is None
        stage = Path(tempfile.mkdtemp(prefix="reduxd-stage-") if own else staging_dir)
        stage.mkdir(parents=True, exist_ok=True)
        tmp = stage / path.name
        try:
            _write_chunks(tmp, blob, chunk_bytes, pause)
            shutil.copy(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if own:
                shutil.rmtree(stage, ignore_errors=True)
    return path


# --------------------------------------------------------------------------- the night


@dataclass(frozen=True)
class SimFrame:
    """One rendered frame: where it goes (relative to OUTDIR), pixels and header cards."""

    relpath: str
    kind: str
    filter: str | None
    exptime: float
    start_ticks: int
    data: np.ndarray  # uint16 (ny, nx)
    cards: list

    def to_bytes(self):
        return fits_bytes(self.data, self.cards)


@dataclass(frozen=True)
class _Planned:
    relpath: str
    kind: str
    filt: str | None
    exptime: float
    start: int  # ticks
    key: int  # exposure (dark) or filter index (flat, light)
    index: int  # within kind+key
    light: int = -1  # global light index (time order)


def _donut(yy, xx, x0, y0, radius, width, depth):
    r = np.hypot(xx - x0, yy - y0)
    return 1.0 - depth * np.exp(-0.5 * ((r - radius) / width) ** 2) - 0.3 * depth * (r < radius)


def _trapezoid(t, mid, t14, ingress, depth):
    """Relative flux at times ``t`` (same unit as ``mid``)."""
    x = np.abs(np.asarray(t, dtype=np.float64) - mid)
    half = t14 / 2.0
    if ingress <= 0:
        return np.where(x < half, 1.0 - depth, 1.0)
    frac = np.clip((half - x) / ingress, 0.0, 1.0)
    return 1.0 - depth * frac


class Night:
    """A planned night: fixed maps, stars, timeline and truth; frames rendered lazily.

    >>> night = Night(NightSpec.small(seed=3))
    >>> frame = next(night.frames())
    >>> frame.kind, frame.data.dtype.name
    ('bias', 'uint16')
    """

    def __init__(self, spec=None, *, flats_last=False):
        self.spec = spec = spec or NightSpec()
        self.flats_last = bool(flats_last)
        rng = np.random.default_rng([spec.seed, 0])
        ny, nx = spec.shape
        yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
        self._make_bias(rng, ny, nx)
        self._make_dark(rng, ny, nx)
        self._make_flats(rng, yy, xx)
        self._make_stars(rng)
        self._plan(rng)
        self._make_lights(rng)
        self.truth = self._truth()

    # -- fixed maps
    def _make_bias(self, rng, ny, nx):
        s = self.spec
        pattern = rng.normal(0.0, s.bias_pattern_adu * 0.8, nx)[None, :] + rng.normal(
            0.0, s.bias_pattern_adu * 0.6, (ny, nx)
        )
        self.bias_map = (s.bias_adu + pattern - pattern.mean()).astype(np.float64)

    def _make_dark(self, rng, ny, nx):
        s = self.spec
        dark = s.dark_e_per_s * rng.lognormal(0.0, 0.3, (ny, nx))
        flat_idx = rng.choice(ny * nx, size=min(s.n_hot, ny * nx), replace=False)
        rates = 10 ** rng.uniform(np.log10(20.0), np.log10(2000.0), flat_idx.size)
        dark.flat[flat_idx] = rates
        self.dark_map = dark
        hy, hx = np.unravel_index(flat_idx, (ny, nx))
        order = np.lexsort((hx, hy))
        self.hot_pixels = [
            {"x": int(hx[i]), "y": int(hy[i]), "dark_e_per_s": float(rates[i])} for i in order
        ]

    def _make_flats(self, rng, yy, xx):
        s = self.spec
        ny, nx = s.shape
        scale = min(ny, nx)
        cx, cy = nx / 2 + rng.normal(0, 0.03 * nx), ny / 2 + rng.normal(0, 0.03 * ny)
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / ((nx / 2) ** 2 + (ny / 2) ** 2)
        prnu = 1.0 + rng.normal(0.0, s.prnu, (ny, nx))

        def dust(n):
            out = []
            for _ in range(n):
                radius = rng.uniform(0.03, 0.07) * scale
                out.append(
                    {
                        "x": float(rng.uniform(0.1, 0.9) * nx),
                        "y": float(rng.uniform(0.1, 0.9) * ny),
                        "radius": float(radius),
                        "width": float(radius * 0.25),
                        "depth": float(rng.uniform(0.03, 0.08)),
                    }
                )
            return out

        common = dust(1)
        self.flats, self.flat_info = {}, {}
        for j, filt in enumerate(s.filters):
            donuts = common + dust(s.n_dust_per_filter)
            illum = 1.0 - s.vignetting * (1.0 + 0.1 * j) * np.clip(r2, 0, None) ** 1.2
            for d in donuts:
                illum *= _donut(yy, xx, d["x"], d["y"], d["radius"], d["width"], d["depth"])
            flat = illum * prnu
            self.flats[filt] = flat / np.median(flat)
            self.flat_info[filt] = {"dust": donuts}

    def _make_stars(self, rng):
        s = self.spec
        ny, nx = s.shape
        margin = 3 * s.fwhm
        n = s.n_stars
        u = rng.uniform(0.0, 1.0, n)
        base = np.minimum(s.star_flux_min * u ** (-1.0 / s.star_flux_slope), 3e5)
        x = rng.uniform(margin, nx - 1 - margin, n)
        y = rng.uniform(margin, ny - 1 - margin, n)
        colours = [np.zeros(n)] + [rng.normal(0.3, 0.25, n) for _ in s.filters[1:]]
        stars = []
        if s.transit is not None:
            tx, ty = nx / 2 + rng.uniform(-3, 3), ny / 2 + rng.uniform(-3, 3)
            keep = np.hypot(x - tx, y - ty) > 8 * s.fwhm
            x, y, base = x[keep], y[keep], base[keep]
            colours = [c[keep] for c in colours]
            stars.append(
                (
                    tx,
                    ty,
                    {
                        f: s.transit.flux_e_per_s * 10 ** (0.4 * 0.3 * (j > 0))
                        for j, f in enumerate(s.filters)
                    },
                )
            )
        for i in range(x.size):
            fl = {f: float(base[i] * 10 ** (0.4 * colours[j][i])) for j, f in enumerate(s.filters)}
            stars.append((float(x[i]), float(y[i]), fl))
        self.star_x = np.array([st[0] for st in stars], dtype=np.float64)
        self.star_y = np.array([st[1] for st in stars], dtype=np.float64)
        self.star_flux = {
            f: np.array([st[2][f] for st in stars], dtype=np.float64) for f in s.filters
        }

    # -- timeline
    def _plan(self, rng):
        s = self.spec
        t = _ticks(_parse_start(s.start)) + int(rng.integers(0, _TICKS_PER_S))
        gap, readout = _exp_ticks(s.run_gap_s), _exp_ticks(s.readout_s)
        plan = []

        def run(kind, n, exptime, folder, stem, filt=None, key=0, first=0, light0=-1):
            nonlocal t
            if n <= 0:
                return
            hms = _iso(t)[11:19].replace(":", "_")
            for i in range(n):
                name = f"{folder}/{hms}/{stem}_{i + 1:05d}.fits"
                light = light0 + i if light0 >= 0 else -1
                plan.append(_Planned(name, kind, filt, exptime, t, key, first + i, light))
                t += _exp_ticks(exptime) + readout + int(rng.integers(0, _TICKS_PER_S // 20))
            t += gap

        def flats():
            for j, f in enumerate(s.filters):
                stem = f"flat_{f.lower()}_"
                run("flat", s.n_flats, s.flat_exptime, f"calibration/flats/{stem}", stem[:-1], f, j)

        run("bias", s.n_bias, s.bias_exptime, "calibration/bias/bias", "bias")
        for exp in sorted({s.light_exptime, s.flat_exptime}):
            folder = f"calibration/darks/darks_{_fmt_exp(exp)}"
            run("dark", s.n_darks, exp, folder, "darks", key=_exp_ticks(exp))
        if not self.flats_last:
            flats()
        done = dict.fromkeys(s.filters, 0)
        light = 0
        while any(done[f] < s.n_lights for f in s.filters):
            for j, f in enumerate(s.filters):
                n = min(s.lights_per_run, s.n_lights - done[f])
                obj = f"{s.target}_{f}_{_fmt_exp(s.light_exptime)}s"
                run(
                    "light", n, s.light_exptime, f"{s.target}/{obj}", s.target, f, j, done[f], light
                )
                done[f] += max(n, 0)
                light += max(n, 0)
        if self.flats_last:
            flats()
        self.plan = plan

    def _make_lights(self, rng):
        s = self.spec
        lights = [p for p in self.plan if p.kind == "light"]
        n = len(lights)
        k = np.arange(n, dtype=np.float64)
        self.dx = s.drift_px_per_frame[0] * k + rng.normal(0, s.jitter_px, n)
        self.dy = s.drift_px_per_frame[1] * k + rng.normal(0, s.jitter_px, n)
        if n:
            self.dx -= self.dx[0]
            self.dy -= self.dy[0]
        self.fwhm = s.fwhm * np.exp(rng.normal(0, s.fwhm_jitter, n))
        self.transparency = 1.0 + rng.normal(0, s.transparency_rms, n)
        self.transit_info = None
        self.rel_flux = np.ones(n)
        if s.transit is not None and n:
            tr = s.transit
            t0 = lights[0].start
            t1 = lights[-1].start + _exp_ticks(s.light_exptime)
            span = t1 - t0
            mid = t0 + round(tr.mid_frac * span)
            t14 = round(tr.duration_frac * span)
            ingress = round(tr.ingress_frac * t14)
            for i, p in enumerate(lights):
                sub = p.start + (np.arange(32) + 0.5) / 32 * _exp_ticks(p.exptime)
                self.rel_flux[i] = _trapezoid(sub, mid, t14, ingress, tr.depth).mean()
            self.transit_info = {
                "star_id": 0,
                "depth": tr.depth,
                "shape": "trapezoid" if ingress else "box",
                "mid_mjd": _mjd(mid),
                "mid_time": _iso(mid),
                "duration_s": t14 / _TICKS_PER_S,
                "ingress_s": ingress / _TICKS_PER_S,
                "rel_flux": "exposure-averaged relative flux of star_id, per light",
            }
        self._light_plan = lights

    # -- truth
    def _peak_adu(self, filt):
        s = self.spec
        sigma = s.fwhm * FWHM_TO_SIGMA
        frac = erf(0.5 / (math.sqrt(2) * sigma)) ** 2
        ix = np.clip(np.rint(self.star_x).astype(int), 0, s.shape[1] - 1)
        iy = np.clip(np.rint(self.star_y).astype(int), 0, s.shape[0] - 1)
        e = (self.star_flux[filt] * frac + s.sky(filt)) * self.flats[filt][iy, ix]
        return s.bias_adu + (e * s.light_exptime) / s.gain_e_per_adu

    def _truth(self):
        s = self.spec
        peaks = {f: self._peak_adu(f) for f in s.filters}
        stars = [
            {
                "id": i,
                "x": float(self.star_x[i]),
                "y": float(self.star_y[i]),
                "flux_e_per_s": {f: float(self.star_flux[f][i]) for f in s.filters},
                "peak_adu": {f: float(peaks[f][i]) for f in s.filters},
                "saturated": {f: bool(peaks[f][i] >= s.saturation_adu) for f in s.filters},
            }
            for i in range(self.star_x.size)
        ]
        flat_rate = {f: self._flat_rate(f) for f in s.filters}
        filters = {
            f: {
                "sky_e_per_s": s.sky(f),
                "sky_adu_per_light": s.sky(f) * s.light_exptime / s.gain_e_per_adu,
                "flat_path": f"truth/flat_{f}.fits.gz",
                "flat_normalisation": "median 1",
                "flat_lamp_e_per_s": flat_rate[f],
                "flat_level_adu": s.bias_adu + flat_rate[f] * s.flat_exptime / s.gain_e_per_adu,
                "dust": self.flat_info[f]["dust"],
            }
            for f in s.filters
        }
        calibration, lights = [], []
        for p in self.plan:
            row = {
                "path": p.relpath,
                "kind": p.kind,
                "filter": p.filt,
                "exptime": p.exptime,
                "date_obs": _iso(p.start),
                "mjd_mid": _mjd(p.start + _exp_ticks(p.exptime) // 2),
            }
            if p.kind != "light":
                calibration.append(row)
                continue
            i = p.light
            row.update(
                {
                    "index": i,
                    "dx": float(self.dx[i]),
                    "dy": float(self.dy[i]),
                    "fwhm": float(self.fwhm[i]),
                    "transparency": float(self.transparency[i]),
                    "transit_rel_flux": float(self.rel_flux[i]),
                    "cosmic_rays": self._cosmics(p),
                }
            )
            lights.append(row)
        lights.sort(key=lambda r: r["index"])
        return {
            "schema": TRUTH_SCHEMA,
            "units": {
                "flux": "e-/s above the atmosphere, before the flat and transparency",
                "adu": "stored 16-bit ADU (BZERO applied); adu = electrons / gain_e_per_adu",
                "coordinates": "0-based pixel (x = column, y = row) of the array astropy loads",
                "dx_dy": "pointing offset of a light: a star is at (x + dx, y + dy)",
                "times": "UTC; mjd_mid = exposure mid-time",
            },
            "spec": _jsonable(asdict(s)),
            "flats_last": self.flats_last,
            "camera": {
                "instrument": s.instrument,
                "shape": list(s.shape),
                "gain_setting": s.gain_setting,
                "gain_e_per_adu": s.gain_e_per_adu,
                "read_noise_e": s.read_noise_e,
                "read_noise_adu": s.read_noise_e / s.gain_e_per_adu,
                "bias_adu": s.bias_adu,
                "bias_map_path": "truth/bias_adu.fits.gz",
                "dark_e_per_s": s.dark_e_per_s,
                "dark_map_path": "truth/dark_e_per_s.fits.gz",
                "dark_median_e_per_s": float(np.median(self.dark_map)),
                "saturation_adu": s.saturation_adu,
                "adc_bits": s.adc_bits,
                "adu_step": s.adu_step,
                "ccd_temp": s.ccd_temp,
            },
            "hot_pixels": self.hot_pixels,
            "filters": filters,
            "stars": stars,
            "transit": self.transit_info,
            "calibration": calibration,
            "lights": lights,
        }

    def _flat_rate(self, filt):
        s = self.spec
        return (s.flat_level_adu - s.bias_adu) * s.gain_e_per_adu / s.flat_exptime

    # -- rendering
    def _rng(self, p):
        return np.random.default_rng([self.spec.seed, _KIND_CODE[p.kind], p.key, p.index])

    def _cosmics(self, p):
        """Cosmic-ray pixels ``[[x, y, electrons], ...]`` of a light (deterministic)."""
        s = self.spec
        rng = np.random.default_rng([s.seed, 9, p.key, p.index])
        ny, nx = s.shape
        hits = {}
        for _ in range(int(rng.poisson(s.cosmic_rays_per_frame))):
            x0, y0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
            length, angle = int(rng.integers(1, 7)), rng.uniform(0, np.pi)
            energy = float(rng.lognormal(np.log(3000.0), 0.6))
            for step in range(length):
                x = round(x0 + step * np.cos(angle))
                y = round(y0 + step * np.sin(angle))
                if 0 <= x < nx and 0 <= y < ny:
                    hits[(x, y)] = hits.get((x, y), 0.0) + energy
        return [[x, y, round(e, 1)] for (x, y), e in sorted(hits.items())]

    def expected_electrons(self, p):
        """Noise-free electrons of a planned frame (before bias, read noise, cosmics)."""
        s = self.spec
        t = p.exptime
        e = self.dark_map * t
        if p.kind == "flat":
            level = 1.0 + 0.01 * self._rng(p).normal()
            e = e + self.flats[p.filt] * (self._flat_rate(p.filt) * level * t)
        elif p.kind == "light":
            i = p.light
            flux = self.star_flux[p.filt] * (t * self.transparency[i])
            if self.transit_info is not None:
                flux = flux.copy()
                flux[0] *= self.rel_flux[i]
            stars = render_stars(
                s.shape, self.star_x + self.dx[i], self.star_y + self.dy[i], flux, self.fwhm[i]
            )
            e = e + self.flats[p.filt] * (stars + s.sky(p.filt) * t)
        return e

    def render(self, p):
        """Render a planned frame into a :class:`SimFrame` (uint16 pixels, SharpCap cards)."""
        s = self.spec
        rng = self._rng(p)
        e = self.expected_electrons(p)
        noisy = add_ccd_noise(e, read_noise_e=s.read_noise_e, rng=rng)
        if p.kind == "light":
            for x, y, q in self._cosmics(p):
                noisy[y, x] += q
        adu = self.bias_map + noisy / s.gain_e_per_adu
        step = s.adu_step
        adu = np.clip(np.rint(adu / step) * step, 0, s.saturation_adu).astype(np.uint16)
        temp = s.ccd_temp + s.ccd_temp_jitter * rng.standard_normal()
        obj = p.relpath.split("/")[-3]
        cards = sharpcap_cards(
            p.kind,
            exptime=p.exptime,
            date_obs=p.start,
            filt=p.filt,
            obj=obj,
            gain=s.gain_setting,
            ccd_temp=temp,
            instrument=s.instrument,
            pixel_um=s.pixel_um,
            utc_offset_hours=s.utc_offset_hours,
            software=s.software,
        )
        return SimFrame(p.relpath, p.kind, p.filt, p.exptime, p.start, adu, cards)

    def frames(self, *, workers=None) -> Iterator[SimFrame]:
        """Render the frames in delivery (= time) order.

        ``workers`` threads render a few frames ahead (numpy's noise generators release
        the GIL); default ``min(4, cpu_count)``. The output does not depend on it.
        """
        workers = workers or min(4, os.cpu_count() or 1)
        if workers <= 1:
            yield from (self.render(p) for p in self.plan)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="simulate") as pool:
            pending = deque()
            plan = iter(self.plan)
            try:
                for p in plan:
                    pending.append(pool.submit(self.render, p))
                    if len(pending) > workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()

    def truth_maps(self):
        """``{relative path: (float32 array, header cards)}`` of the truth FITS files."""
        maps = {
            "truth/bias_adu.fits.gz": (self.bias_map, [("BUNIT", "adu", "bias level")]),
            "truth/dark_e_per_s.fits.gz": (self.dark_map, [("BUNIT", "electron/s", "")]),
        }
        for f, flat in self.flats.items():
            maps[f"truth/flat_{f}.fits.gz"] = (
                flat,
                [("FILTER", f, ""), ("COMMENT", "relative response, median 1", "")],
            )
        return maps


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _write_truth(outdir, night):
    for rel, (array, cards) in night.truth_maps().items():
        hdu = fits.PrimaryHDU(np.asarray(array, dtype=np.float32))
        for key, value, comment in cards:
            hdu.header[key] = (value, comment) if key != "COMMENT" else value
        buf = io.BytesIO()
        hdu.writeto(buf)
        path = outdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1, mtime=0))
    tmp = outdir / "truth.json.tmp"
    tmp.write_text(json.dumps(night.truth, indent=1) + "\n")
    os.replace(tmp, outdir / "truth.json")


def simulate_night(
    outdir,
    spec=None,
    *,
    realtime=False,
    cadence=None,
    speed=1.0,
    chunk_bytes=None,
    chunk_pause=0.02,
    delivery="chunks",
    flats_last=False,
    staging_dir=None,
    overwrite=False,
    on_frame=None,
    workers=None,
):
    """Write a simulated night into ``outdir`` in SharpCap's layout; return the truth dict.

    ``truth.json`` and ``truth/*.fits.gz`` are written first, then the frames in time
    order: bias, darks, flats (after the lights with ``flats_last``), lights.

    Parameters
    ----------
    realtime : bool
        Deliver at camera cadence: ``cadence`` seconds between frames, or (``None``) the
        simulated time between frame ends; both divided by ``speed``. Chunks are
        separated by ``chunk_pause / speed`` s. Without it frames are written at once.
    chunk_bytes : int, optional
        Write each file this many bytes at a time (default whole; 256 KiB in realtime).
    delivery : {'chunks', 'rename', 'copy'}
        See :func:`write_frame`.
    overwrite : bool
        Allow a non-empty ``outdir`` (files of the same name are replaced).
    on_frame : callable, optional
        Called with ``(path, SimFrame)`` after each frame is in place.
    workers : int, optional
        Rendering threads (see :meth:`Night.frames`); the pixels do not depend on it.
    """
    if delivery not in DELIVERIES:
        raise ValueError(f"delivery must be one of {DELIVERIES}, got {delivery!r}")
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    outdir = Path(outdir)
    if outdir.exists() and any(outdir.iterdir()) and not overwrite:
        raise FileExistsError(f"{outdir} is not empty (use overwrite=True / --overwrite)")
    outdir.mkdir(parents=True, exist_ok=True)
    night = Night(spec or NightSpec(), flats_last=flats_last)
    _write_truth(outdir, night)
    if realtime and chunk_bytes is None:
        chunk_bytes = 256 * 1024
    pause = chunk_pause / speed if realtime else 0.0
    own_stage = delivery == "copy" and staging_dir is None
    stage = Path(tempfile.mkdtemp(prefix="reduxd-stage-")) if own_stage else staging_dir
    due = time.monotonic()
    prev_end = None
    try:
        for frame in night.frames(workers=workers):
            end = frame.start_ticks + _exp_ticks(frame.exptime)
            if realtime:
                if prev_end is not None:
                    gap = cadence if cadence is not None else (end - prev_end) / _TICKS_PER_S
                    due += gap / speed
                    time.sleep(max(0.0, due - time.monotonic()))
                prev_end = end
            path = write_frame(
                outdir / frame.relpath,
                frame.data,
                frame.cards,
                delivery=delivery,
                chunk_bytes=chunk_bytes,
                pause=pause,
                staging_dir=stage,
            )
            log.debug("simulate: wrote %s", path)
            if on_frame is not None:
                on_frame(path, frame)
    finally:
        if own_stage:
            shutil.rmtree(stage, ignore_errors=True)
    return night.truth


# ------------------------------------------------- a night of the held-out class


@dataclass(frozen=True)
class BareNight:
    """A night from a bare 12-bit camera: lights only, a header with almost nothing.

    The class of issue 10's held-out night: 12-bit ADC stored as BITPIX 16 with no
    BZERO and no SATURATE card (bright stars clip at 4095), no calibration frames,
    no IMAGETYP, OBJECT or INSTRUME card; the field drifts ~280 px and rotates 0.6
    degrees about the frame centre over the night; a transit on the target (star 0).
    Uncorrected detector effects stay in the lights: bias pedestal, warm pixels,
    mild vignetting and pixel response non-uniformity, cosmic rays.
    """

    n_lights: int = 142
    shape: tuple[int, int] = (500, 650)  # (ny, nx)
    n_stars: int = 800  # over the sky area the frames cover, target included
    exptime: float = 60.0
    cadence_s: float = 75.0
    start: str = "2024-03-10T02:00:00"
    gain_e_per_adu: float = 5.0
    read_noise_e: float = 9.0
    bias_adu: float = 100.0
    sky_e_per_s: float = 3.5
    target_xy: tuple[float, float] = (430.0, 300.0)  # first frame, 0-based
    target_e_per_s: float = 1700.0  # its peak near half the ADC range
    star_flux_min: float = 12.0  # e-/s, faintest field star
    star_flux_slope: float = 0.7  # N(>f) ~ f**-slope; a dozen stars clip at 4095
    drift_px: tuple[float, float] = (-250.0, -125.0)  # (dx, dy) first to last light
    rotation_deg: float = 0.6
    jitter_px: float = 0.6
    fwhm_range: tuple[float, float] = (2.4, 3.6)  # seeing wanders between these
    transparency_rms: float = 0.01
    vignetting: float = 0.01  # fractional loss in the corners
    prnu: float = 0.003
    n_warm: int = 60
    cosmic_rays_per_frame: float = 3.0
    transit: Transit = field(
        default_factory=lambda: Transit(
            depth=0.0239, mid_frac=0.5, duration_frac=0.45, ingress_frac=0.12, flux_e_per_s=1700.0
        )
    )
    seed: int = 7

    @property
    def saturation_adu(self):
        return 4095


def _bare_stars(spec, rng):
    """Sky positions (first-frame pixels) and e-/s of the target (0) and the field stars."""
    ny, nx = spec.shape
    dx, dy = spec.drift_px
    pad = 20.0
    x0, x1 = min(0.0, -dx) - pad, nx + max(0.0, -dx) + pad
    y0, y1 = min(0.0, -dy) - pad, ny + max(0.0, -dy) + pad
    n = spec.n_stars - 1
    x = rng.uniform(x0, x1, n)
    y = rng.uniform(y0, y1, n)
    flux = spec.star_flux_min * rng.uniform(0, 1, n) ** (-1.0 / spec.star_flux_slope)
    flux = np.minimum(flux, 400.0 * spec.target_e_per_s)
    tx, ty = spec.target_xy
    far = np.hypot(x - tx, y - ty) > 12.0  # the target is not blended
    x, y, flux = x[far], y[far], flux[far]
    return (np.concatenate([[tx], x]), np.concatenate([[ty], y]),
            np.concatenate([[spec.target_e_per_s], flux]))  # fmt: skip


def _bare_place(spec, k, x, y, rng):
    """Pixel positions in light ``k``: the first frame's, rotated about the centre, shifted."""
    ny, nx = spec.shape
    frac = k / max(spec.n_lights - 1, 1)
    angle = math.radians(spec.rotation_deg * frac)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    c, s = math.cos(angle), math.sin(angle)
    jx, jy = rng.normal(0.0, spec.jitter_px, 2)
    px = cx + c * (x - cx) - s * (y - cy) + spec.drift_px[0] * frac + jx
    py = cy + s * (x - cx) + c * (y - cy) + spec.drift_px[1] * frac + jy
    return px, py


def bare_night(outdir, spec=None):
    """Write the lights of a :class:`BareNight` into ``outdir``; return the truth dict.

    Files are ``outdir/light_NNN.fits`` (int16, BITPIX 16, no BZERO) with only
    ``EXPTIME`` and ``DATE-OBS`` (UTC) besides the structural cards. The truth has
    per light the transit's relative flux of the target, its position, the FWHM,
    the transparency, and which stars have a pixel at 4095.
    """
    spec = spec or BareNight()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    ny, nx = spec.shape
    x, y, flux = _bare_stars(spec, rng)
    yy, xx = np.mgrid[0:ny, 0:nx]
    r2 = ((xx - nx / 2) ** 2 + (yy - ny / 2) ** 2) / ((nx / 2) ** 2 + (ny / 2) ** 2)
    response = (1.0 - spec.vignetting * r2) * (1.0 + spec.prnu * rng.standard_normal((ny, nx)))
    warm = np.zeros((ny, nx))
    warm.flat[rng.choice(ny * nx, spec.n_warm, replace=False)] = rng.uniform(5, 200, spec.n_warm)
    start = datetime.fromisoformat(spec.start).replace(tzinfo=UTC)
    t = spec.transit
    n = spec.n_lights
    phase = (np.arange(n) + 0.5) / n  # mid-exposure as a fraction of the sequence
    rel = _trapezoid(phase, t.mid_frac, t.duration_frac, t.ingress_frac * t.duration_frac,
                     t.depth)  # fmt: skip
    seeing = np.interp(np.sin(np.linspace(0, 3 * math.pi, n)), [-1, 1], spec.fwhm_range)
    truth = {"spec": _jsonable(asdict(spec)), "lights": []}
    for k in range(n):
        frame_rng = np.random.default_rng((spec.seed, k))
        px, py = _bare_place(spec, k, x, y, frame_rng)
        fwhm = float(seeing[k] * (1 + 0.03 * frame_rng.standard_normal()))
        clear = float(1 + spec.transparency_rms * frame_rng.standard_normal())
        rates = flux * clear
        rates[0] *= rel[k]
        inside = (px > -15) & (px < nx + 15) & (py > -15) & (py < ny + 15)
        stars = render_stars((ny, nx), px[inside], py[inside], rates[inside] * spec.exptime, fwhm)
        electrons = (stars + spec.sky_e_per_s * clear * spec.exptime) * response
        electrons += warm * spec.exptime
        noisy = add_ccd_noise(electrons, read_noise_e=spec.read_noise_e, rng=frame_rng)
        for _ in range(frame_rng.poisson(spec.cosmic_rays_per_frame)):
            cy_, cx_ = frame_rng.integers(0, ny), frame_rng.integers(0, nx - 3)
            noisy[cy_, cx_ : cx_ + frame_rng.integers(1, 4)] += frame_rng.uniform(2000, 20000)
        adu = np.clip(np.round(noisy / spec.gain_e_per_adu + spec.bias_adu), 0, 4095)
        data = adu.astype(np.int16)
        stamp = start + timedelta(seconds=k * spec.cadence_s)
        header = fits.Header()
        header["EXPTIME"] = (spec.exptime, "[s]")
        header["DATE-OBS"] = (stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3], "UTC start")
        fits.PrimaryHDU(data, header).writeto(outdir / f"light_{k:03d}.fits", overwrite=True)
        clipped = sorted({int(i) for i in np.flatnonzero(inside)
                          if _peak(data, px[i], py[i]) >= 4095})  # fmt: skip
        truth["lights"].append({
            "file": f"light_{k:03d}.fits", "rel_flux": float(rel[k]), "fwhm": fwhm,
            "transparency": clear, "target_xy": [float(px[0]), float(py[0])],
            "saturated_stars": clipped,
        })  # fmt: skip
    truth["stars"] = {"x": x.tolist(), "y": y.tolist(), "e_per_s": flux.tolist()}
    (outdir / "truth.json").write_text(json.dumps(truth) + "\n")
    return truth


def _peak(data, x, y):
    """The largest pixel within 2 px of ``(x, y)`` (0 outside the frame)."""
    ny, nx = data.shape
    xi, yi = round(float(x)), round(float(y))
    box = data[max(yi - 2, 0) : max(min(yi + 3, ny), 0), max(xi - 2, 0) : max(min(xi + 3, nx), 0)]
    return int(box.max()) if box.size else 0


# --------------------------------------------------------------------------- CLI


def _shape_arg(text):
    try:
        nx, ny = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1608x1104: {text}") from None
    return ny, nx


def register(subparsers):
    """Add the ``simulate`` sub-command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "simulate",
        help="write a simulated SharpCap night with known truth",
        description="Write a realistic simulated observing night (SharpCap layout and headers) "
        "plus OUTDIR/truth.json and OUTDIR/truth/*.fits.gz.",
    )
    p.add_argument("outdir", help="folder to write the night into (created; must be empty)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--small", action="store_true", help="tiny night (384x256, few frames)")
    p.add_argument("--target", help="target name (default pg2213)")
    p.add_argument(
        "--start", help="UTC time of the first bias, e.g. 2024-07-03T00:50:00 (another night)"
    )
    p.add_argument("--filters", help="comma-separated filters (default V,R)")
    p.add_argument("--n-lights", type=int, help="lights per filter")
    p.add_argument("--exptime", type=float, help="light exposure time, s")
    p.add_argument("--n-bias", type=int, help="bias frames")
    p.add_argument("--n-darks", type=int, help="darks per exposure time")
    p.add_argument("--n-flats", type=int, help="flats per filter")
    p.add_argument("--n-stars", type=int, help="field stars")
    p.add_argument("--shape", type=_shape_arg, help="frame size WIDTHxHEIGHT, e.g. 1608x1104")
    p.add_argument(
        "--lights-per-run",
        type=int,
        help="lights per SharpCap capture run (one HH_MM_SS folder) before the filter changes",
    )
    p.add_argument(
        "--transit-depth", type=float, help="fractional depth of the target's transit (0.015)"
    )
    p.add_argument(
        "--transit-duration",
        type=float,
        help="transit duration as a fraction of the light sequence (0.5), centred on its middle",
    )
    p.add_argument("--target-flux", type=float, help="target's out-of-transit flux, e-/s (3000)")
    p.add_argument("--no-transit", action="store_true", help="no transiting target star")
    p.add_argument("--realtime", action="store_true", help="deliver frames at camera cadence")
    p.add_argument(
        "--cadence",
        type=float,
        help="seconds between frames in --realtime (default: the simulated camera timing)",
    )
    p.add_argument("--speed", type=float, default=1.0, help="speed-up factor for --realtime")
    p.add_argument("--chunk-bytes", type=int, help="write files in chunks of this many bytes")
    p.add_argument("--chunk-pause", type=float, default=0.02, help="sleep between chunks, s")
    p.add_argument(
        "--delivery",
        choices=DELIVERIES,
        default="chunks",
        help="chunks: in place; rename: .tmp then rename; copy: elsewhere then copy",
    )
    p.add_argument("--flats-last", action="store_true", help="deliver flats after the lights")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty OUTDIR")
    p.set_defaults(func=run)
    return p


def spec_from_args(args):
    """The :class:`NightSpec` described by parsed ``simulate`` arguments."""
    over = {"seed": args.seed}
    pairs = [
        ("target", "target"),
        ("n_lights", "n_lights"),
        ("light_exptime", "exptime"),
        ("n_bias", "n_bias"),
        ("n_darks", "n_darks"),
        ("n_flats", "n_flats"),
        ("n_stars", "n_stars"),
        ("shape", "shape"),
        ("start", "start"),
        ("lights_per_run", "lights_per_run"),
    ]
    for name, arg in pairs:
        if getattr(args, arg) is not None:
            over[name] = getattr(args, arg)
    if args.filters:
        over["filters"] = tuple(f.strip() for f in args.filters.split(",") if f.strip())
    transit = {
        "depth": args.transit_depth,
        "duration_frac": args.transit_duration,
        "flux_e_per_s": args.target_flux,
    }
    transit = {k: v for k, v in transit.items() if v is not None}
    if transit:
        over["transit"] = Transit(**transit)
    if args.no_transit:
        over["transit"] = None
    return NightSpec.small(**over) if args.small else NightSpec(**over)


def run(args):
    """Run ``reduxd simulate``; return the exit status."""
    try:
        spec = spec_from_args(args)
        t0 = time.monotonic()
        truth = simulate_night(
            args.outdir,
            spec,
            realtime=args.realtime,
            cadence=args.cadence,
            speed=args.speed,
            chunk_bytes=args.chunk_bytes,
            chunk_pause=args.chunk_pause,
            delivery=args.delivery,
            flats_last=args.flats_last,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as exc:
        print(f"reduxd simulate: error: {exc}")
        return 2
    n = len(truth["calibration"]) + len(truth["lights"])
    print(
        f"reduxd simulate: wrote {n} frames ({len(truth['lights'])} lights) to {args.outdir} "
        f"in {time.monotonic() - t0:.1f} s; truth in {Path(args.outdir) / 'truth.json'}"
    )
    return 0


__all__ = [
    "DELIVERIES",
    "Night",
    "NightSpec",
    "SimFrame",
    "Transit",
    "fits_bytes",
    "register",
    "run",
    "sharpcap_cards",
    "simulate_night",
    "spec_from_args",
    "write_frame",
]
