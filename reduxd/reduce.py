"""The per-light hot path: calibrate, measure, build contract rows.

Nothing here touches the ledger, so the same code runs in the daemon's worker
and in the batch command's worker processes. A light is read once; masters come
from a small in-process cache keyed by path and checksum.

Photometry, finder charts and times are imported on first use (``LIGHT_MODULES``,
about a second; :func:`load_light_modules`): a process busy with calibration frames
does not wait for them, and ``reduxd reduce`` imports them in a thread while it
reads the calibration frames.
"""

import dataclasses
import importlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from reduxd.fields import field_key
from reduxd.fitsio import read_frame
from reduxd.lightrows import LightRows, columns_fit
from reduxd.log import get_logger
from reduxd.photparams import phot_params
from reduxd.products.fitsout import write_calibrated
from reduxd.products.naming import quicklook_path, reduced_path, regions_path
from reduxd.products.regions import write_regions
from reduxd.schema import STAR_NAMES, column
from reduxd.steps.calibrate import calibrate_light
from reduxd.steps.saturation import saturation
from reduxd.steps.sharp import repair_sharp

log = get_logger("reduxd.reduce")
_UNKNOWN_CAMERAS = set()  # (instrument, gain) already warned about in this process


def detector_cards(detector):
    """FITS cards: the gain and read noise used for the errors, and where they came from.

    ``detector`` is a :class:`reduxd.steps.gain.Detector`.
    """
    return [
        ("RDXGAIN", round(float(detector.gain), 4), "[e-/adu] gain used for the errors"),
        ("RDXRDNS", round(float(detector.read_noise), 3), "[e-] read noise used for the errors"),
        ("RDXGAINS", detector.source, "source of RDXGAIN, RDXRDNS"),
    ]


def detector_for(config, info, header=None, measured=None):
    """Return ``(camera, detector)`` of a light: its camera entry with the gain and read
    noise :func:`reduxd.steps.gain.choose_detector` picks, and that choice.

    ``measured``: the :class:`~reduxd.steps.gain.Detector` of the light's master flat
    (photon transfer), if any. With no camera entry, one warning per process and
    camera names what was assumed.
    """
    from reduxd.steps.gain import choose_detector

    camera = config.camera(info.instrument, info.gain)
    known = any(camera is entry for entry in config.calibration.cameras)
    detector = choose_detector(
        entry=camera if known else None,
        header=header,
        measured=measured,
        default=(camera.gain_e_per_adu, camera.read_noise_e),
    )
    key = (info.instrument, info.gain)
    if not known and key not in _UNKNOWN_CAMERAS:
        _UNKNOWN_CAMERAS.add(key)
        log.warning(
            "camera_unknown",
            instrument=info.instrument,
            gain=info.gain,
            assumed=(
                f"no [[calibration.cameras]] entry matches: gain {detector.gain:.4g} e-/ADU, "
                f"read noise {detector.read_noise:.4g} e- ({detector.source}); saturation "
                "from SATURATE/DATAMAX, else the data's ADC ceiling, else the file type (x 0.95)"
            ),
        )
    camera = dataclasses.replace(
        camera, gain_e_per_adu=detector.gain, read_noise_e=detector.read_noise
    )
    return camera, detector


def camera_for(config, info, header=None, measured=None):
    """Return the camera of a light, gain and read noise as :func:`detector_for` chooses them."""
    return detector_for(config, info, header, measured)[0]


@dataclass(frozen=True)
class LightResult:
    """What reducing one light produced (arrays stay in memory; nothing written)."""

    data: np.ndarray
    mask: np.ndarray
    header: fits.Header
    cards: list
    phot: object  # reduxd.steps.photometry.PhotResult
    rows: list
    calib: str


LIGHT_MODULES = (
    "reduxd.steps.photometry",
    "reduxd.products.quicklook",
    "reduxd.steps.times",
    "astropy.time",
)


def load_light_modules():
    """Import ``LIGHT_MODULES`` and make the finder chart's per-process caches
    (:func:`reduxd.products.quicklook.prepare`), so that neither the first light nor
    a worker forked after this waits for them."""
    for name in LIGHT_MODULES:
        importlib.import_module(name)
    from reduxd.products import quicklook

    quicklook.prepare()


class MasterCache:
    """Keep the last few master images in memory (masters are reused by every light)."""

    def __init__(self, *, size=8):
        self.size = size
        self._items = OrderedDict()

    def get(self, record):
        if record is None:
            return None
        key = (record.path, record.checksum)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        with fits.open(record.path, memmap=False) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float32)
        return self.put(record.path, record.checksum, data)

    def put(self, path, checksum, data):
        """Keep the image of the master written to ``path`` (a read-only view); return it.

        A master just built goes in as it was written (float32 written as is: the
        pixels a read would give), so it is not read back.
        """
        data = np.asarray(data, dtype=np.float32).view()
        data.setflags(write=False)
        self._items[(str(path), checksum)] = data
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return data

    def share_with_workers(self):
        """Put these images in the cache of worker processes forked from now on."""
        if self is not _WORKER_CACHE:
            for (path, checksum), data in self._items.items():
                _WORKER_CACHE.put(path, checksum, data)


def calib_label(plan):
    """Return the short text of the ``calib`` column: what was applied."""
    parts = []
    if plan.dark is not None:
        parts.append("dark")
    elif plan.dark_current is not None:
        parts.extend(["bias", "scaled dark"])
    elif plan.bias is not None:
        parts.append("bias")
    if plan.flat is not None:
        parts.append("flat")
    return "+".join(parts) or "none"


def calibrate(raw, info, plan, *, cache, config, camera):
    """Calibrate a raw light following ``plan`` (masters loaded through ``cache``).

    The saturation level comes from :func:`reduxd.steps.saturation.saturation`;
    its source is the ``RDXSATSR`` card. A light from which no dark was
    subtracted keeps its hot pixels: its sharp outliers (those and cosmic rays)
    are repaired (:func:`reduxd.steps.sharp.repair_sharp`, card ``RDXNSHRP``).
    """
    cal = config.calibration
    level, source = saturation(raw.header, camera, raw.data)
    result = calibrate_light(
        raw.data,
        info,
        dark=cache.get(plan.dark),
        bias=cache.get(plan.bias),
        dark_current=cache.get(plan.dark_current),
        flat=cache.get(plan.flat),
        bad_pixels=plan.bad_pixels,
        saturation=level,
        no_dark=cal.no_dark,
        no_flat=cal.no_flat,
        force=cal.force,
        sources=plan.sources(),
    )
    cards = [("RDXSATSR", source, "where RDXSATUR comes from")]
    if result.dark_mode in ("none", "bias"):
        data, mask, n = repair_sharp(result.data, result.mask)
        cards.append(("RDXNSHRP", n, "sharp pixels repaired (no dark)"))
        result = dataclasses.replace(result, data=data, mask=mask)
    return dataclasses.replace(result, cards=(*result.cards, *cards))


def frame_place(header, config):
    """Return ``{pointing, site, site_source}`` of a light for its rows (BJD_TDB, airmass)."""
    from reduxd.steps.times import pointing, site  # see LIGHT_MODULES

    where, source = site(header), "header"
    s = config.site
    if where is None and s.latitude_deg is not None and s.longitude_deg is not None:
        where, source = (s.latitude_deg, s.longitude_deg, s.elevation_m), "config [site]"
    radec = pointing(header)
    return {
        "pointing": list(radec) if radec else None,
        "site": list(where) if where else None,
        "site_source": source if where else "",
    }


def target_pixel(header, config, obj):
    """``{'target_xy': [x, y] or None}`` when field ``obj``'s target is given as RA/Dec.

    0-based pixel position from the header's WCS; None when the header has none.
    Empty dict when the target is not given as RA/Dec.
    """
    from reduxd.products.lightcurve import field_target

    _, _, radec = field_target(config.lightcurve, obj)
    if radec is None:
        return {}
    if not (header.get("CTYPE1") and header.get("CTYPE2")):
        return {"target_xy": None}
    import warnings

    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MaxIm's RADECSYS and similar: astropy fixes them
        wcs = WCS(header).celestial
    x, y = wcs.all_world2pix(radec[0], radec[1], 0)
    return {"target_xy": [float(x), float(y)]}


def contract_rows(table, *, info, night, relpath, obj, calib, radius, apertures=None, place=None):
    """Return the photometry contract rows for one light's star table.

    A :class:`reduxd.lightrows.LightRows` (a sequence of the same dicts) when the
    rows fit one, else a list of dicts.

    With ``apertures`` (multi-aperture photometry) each row also has
    ``radius_ap``, ``flux_ap`` and ``flux_err_ap`` (lists, one value per radius):
    kept in the ledger for the light curve, not written to the photometry tables.
    ``place`` (:func:`frame_place`) is kept the same way.
    """
    mid = info.date_mid
    date_obs = mid.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] if mid else ""
    from astropy.time import Time  # see LIGHT_MODULES

    mjd = float(Time(mid).mjd) if mid else math.nan
    base = {
        "night": night,
        "file": relpath,
        "object": obj,
        "filter": info.filter or "",
        "exptime": float(info.exptime),
        "date_obs": date_obs,
        "mjd": mjd,
        "calib": calib,
    }
    # the step's columns (reduxd.schema), floats first: the rows' key order in the ledger
    kinds = ("f8", "i8")
    arrays = {
        name: np.asarray(table[name], dtype=dtype)
        for dtype in kinds
        for name in STAR_NAMES
        if column(name).dtype == dtype
    }
    base["radius"] = float(radius)
    base.update(place or {})
    if apertures is not None:
        base["radius_ap"] = [round(float(r), 4) for r in apertures["radii"]]
        arrays["flux_ap"] = np.asarray(apertures["flux"])
        arrays["flux_err_ap"] = np.asarray(apertures["flux_err"])
    if columns_fit(base, arrays):  # as columns: what the commit reads (reduxd.lightrows)
        return LightRows(base, arrays, [*base, *arrays])
    columns = {name: values.tolist() for name, values in arrays.items()}
    names, rows = list(columns), []
    for values in zip(*columns.values(), strict=True):  # a row per star (the ledger's rows)
        row = base.copy()
        row.update(zip(names, values, strict=True))
        rows.append(row)
    return rows


def reduce_light(raw, info, plan, *, cache, config, camera, reference, night, relpath, field=None,
                 detector=None):  # fmt: skip
    """Calibrate and measure one light; return a :class:`LightResult` (nothing written).

    Parameters
    ----------
    raw : reduxd.fitsio.RawFrame
        The light, read once.
    info : reduxd.frames.FrameInfo
    plan : reduxd.steps.select.Plan
        Which masters to use (from :func:`reduxd.steps.select.calibration_plan`).
    cache : MasterCache
    config : reduxd.config.Config
    camera : reduxd.config.Camera
    reference : FieldReference or None
        The field's star catalogue; None for the first light of a field.
    night, relpath : str
        For the contract rows.
    field : str, optional
        The light's field (the ``object`` column); default :func:`reduxd.fields.field_key`.
    detector : reduxd.steps.gain.Detector, optional
        Where ``camera``'s gain and read noise came from (:func:`detector_for`);
        default: said to be the camera entry's.
    """
    from reduxd.steps.gain import choose_detector
    from reduxd.steps.photometry import photometer  # see LIGHT_MODULES
    from reduxd.steps.times import time_cards

    if detector is None:
        detector = choose_detector(entry=camera)
    cal = calibrate(raw, info, plan, cache=cache, config=config, camera=camera)
    params = phot_params(config, camera)
    phot = photometer(
        cal.data, mask=cal.mask, exptime=info.exptime, params=params, reference=reference
    )
    label = calib_label(plan)
    obj = field_key(info, relpath) if field is None else field
    rows = contract_rows(
        phot.table,
        info=info,
        night=night,
        relpath=relpath,
        obj=obj,
        calib=label,
        radius=phot.radius,
        apertures=phot.apertures,
        place={
            **frame_place(raw.header, config),
            **target_pixel(raw.header, config, obj),
            "detector": [detector.gain, detector.read_noise, detector.source],
        },
    )
    header = raw.header
    source = [
        ("RAWFILE", relpath, "raw frame, relative to its data folder"),
        ("RAWSHA1", raw.checksum, "SHA-1 of the raw file"),
    ]
    cards = source + list(cal.cards) + list(phot.cards) + time_cards(info, raw.header)
    cards += detector_cards(detector)
    return LightResult(cal.data, cal.mask, header, cards, phot, rows, label)


@dataclass(frozen=True)
class Measured:
    """What the ledger needs from a reduced light: small and picklable (for workers)."""

    rows: list
    reference: object  # FieldReference after this light
    offset: tuple
    fwhm: float
    calib: str
    checksum: str


def measured(result, checksum):
    """Return the :class:`Measured` part of a :class:`LightResult`."""
    phot = result.phot
    offset = tuple(float(v) for v in phot.offset)
    return Measured(result.rows, phot.reference, offset, float(phot.fwhm), result.calib, checksum)


def write_products(outdir, rel, result, output, *, durable=True):
    """Write the calibrated light and its finder chart (as ``output`` config asks).

    ``durable``: fsync each file (the daemon); ``reduxd reduce`` does not, and
    redoes on its next run any light whose products are missing or empty.
    """
    from reduxd.products.quicklook import write_profile_plot, write_quicklook  # LIGHT_MODULES

    outdir = Path(outdir)
    if output.reduced:
        write_calibrated(reduced_path(outdir, rel), result, result.header, durable=durable)
    if output.quicklook:
        write_quicklook(
            quicklook_path(outdir, rel),
            result.data,
            result.phot.table,
            title=rel,
            mask=result.mask,
            roles=chart_roles(outdir, result.rows, output.save),
            durable=durable,
        )
    if output.reduced:
        write_regions(
            regions_path(outdir, rel),
            result.phot.table,
            radius=result.phot.radius,
            title=rel,
            durable=durable,
        )
    for profile in result.phot.profiles or ():
        folder = quicklook_path(outdir, rel).with_suffix("")
        write_profile_plot(
            folder / f"star_{profile['star_id']:04d}.png",
            profile,
            radius=result.phot.radius,
            title=f"{rel} star {profile['star_id']}",
        )


def chart_roles(outdir, rows, save):
    """``star_id -> role`` of the field's light-curve target and comparisons (as last written)."""
    from reduxd.products import finder
    from reduxd.products.lightcurve import lightcurve_paths

    if not rows:
        return {}
    obj, filt = rows[0]["object"], rows[0]["filter"]
    _csv, ecsv, _png = lightcurve_paths(outdir, object=obj, filter=filt, save=save)
    return finder.chart_roles(*finder.read_ensemble(ecsv))


_WORKER_CACHE = MasterCache()


def compute_light(path, rel, info, plan, reference, config, *, night, field, durable=True,
                  raw=None, cache=None):  # fmt: skip
    """Reduce one light: read it (unless ``raw`` is given), calibrate, measure, write its
    products; return :class:`Measured`.

    The one body of work of a light, in this process or in a worker (module level,
    plain arguments). The ledger stays with the caller, which commits the result
    after the products are written (a light the ledger calls done has them).
    """
    raw = read_light(path, config) if raw is None else raw
    camera, detector = detector_for(config, info, raw.header, plan.detector)
    result = reduce_light(
        raw,
        info,
        plan,
        cache=_WORKER_CACHE if cache is None else cache,
        config=config,
        camera=camera,
        reference=reference,
        night=night,
        relpath=rel,
        field=field,
        detector=detector,
    )
    write_products(config.paths.outdir, rel, result, config.output, durable=durable)
    return measured(result, raw.checksum)


def read_light(path, config):
    """Read a light once (see :func:`reduxd.fitsio.read_frame`)."""
    return read_frame(path, max_bytes=config.reading.max_bytes)
