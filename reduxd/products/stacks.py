"""Stacked lights: per (object, filter, gain, exposure), the aligned mean of its lights.

Each stack has its own photometry: the field's stars measured on the stack with
the same photometry step and options as single lights, against the field's
reference (so star IDs are the field's). The stack is the *mean* of N lights,
so its fluxes and ``mag_inst`` are per light (comparable with single frames);
the errors use the effective gain ``N * gain`` and read noise ``sqrt(N) * rn``
of a mean of N frames.

Files, under ``<outdir>/stacks/``::

    stack_<object>_<filter>_g<gain>_<exptime>s.fits             mean (primary), COUNT
    stack_<object>_<filter>_g<gain>_<exptime>s_photometry.csv   one row per star

A stack is rewritten only when its lights (their reduction versions and
offsets) or the photometry options changed (``RDXSTSIG`` card), so running
``reduxd reduce`` again leaves the files as they are.
"""

import csv
import dataclasses
import hashlib
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from astropy.io import fits

from reduxd import maskbits
from reduxd.files import atomic_write
from reduxd.fitsio import add_cards, clean_header, write_fits_atomic
from reduxd.log import get_logger
from reduxd.reduce import phot_params
from reduxd.steps.photometry import photometer
from reduxd.steps.stack import StackAccumulator

log = get_logger("reduxd.stacks")

STACK_PHOT_COLUMNS = (
    "object", "filter", "gain", "exptime", "nframes", "star_id", "x", "y", "fwhm", "sky",
    "sky_err", "flux", "flux_err", "mag_inst", "mag_err", "snr", "flags", "radius",
)  # fmt: skip
_FORMAT = {"x": ".3f", "y": ".3f"}


def _name(part):
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in str(part)) or "none"


def stack_name(obj, filt, gain, exptime):
    """Base name (no extension) of the stack of one group."""
    return f"stack_{_name(obj)}_{_name(filt)}_g{gain}_{exptime:g}s"


def photometry_path(fits_path):
    """The photometry CSV written next to a stack FITS."""
    fits_path = Path(fits_path)
    return fits_path.with_name(fits_path.name.removesuffix(".fits") + "_photometry.csv")


def stack_groups(ledger):
    """Group the current reduced lights by (object, filter, gain, exposure)."""
    groups = defaultdict(list)
    for row in ledger.frames(kind="light", state="done"):
        info = row.info
        if "excluded" in info or "offset" not in info:
            continue
        key = (info.get("object"), info.get("filter"), info.get("gain"), info.get("exptime"))
        groups[key].append(row)
    return groups


def _signature(rows, params):
    members = sorted(
        (r.relpath, r.info.get("version"), [round(float(v), 3) for v in r.info["offset"]])
        for r in rows
    )
    text = json.dumps([members, repr(params)], default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def _unchanged(path, signature):
    if not path.exists() or not photometry_path(path).exists():
        return False
    try:
        return fits.getheader(path).get("RDXSTSIG") == signature
    except (OSError, ValueError):
        return False


def write_stacks(pipeline):
    """Write one stacked FITS and its photometry per group; return the FITS paths."""
    out = []
    reduced = pipeline.outdir / "reduced"
    for (obj, filt, gain, exptime), rows in sorted(
        stack_groups(pipeline.ledger).items(), key=lambda kv: str(kv[0])
    ):
        rows = [r for r in rows if (reduced / r.relpath).exists()]
        if not rows:
            continue
        path = pipeline.outdir / "stacks" / f"{stack_name(obj, filt, gain, exptime)}.fits"
        header = _first_header(reduced / rows[0].relpath)
        camera = pipeline.config.camera(str(header.get("INSTRUME", "")).strip(), gain)
        base = phot_params(pipeline.config, camera)
        signature = _signature(rows, base)
        if _unchanged(path, signature):
            out.append(path)
            continue
        acc = StackAccumulator()
        for row in rows:
            with fits.open(reduced / row.relpath, memmap=False) as hdul:
                data = hdul[0].data.astype(np.float32)
                mask = hdul["MASK"].data if "MASK" in hdul else None
            dx, dy = row.info["offset"]
            acc.add(data, mask, dx=dx, dy=dy)
        if acc.n_frames == 0:
            continue
        mean, count, cards = acc.result()
        phot = stack_photometry(
            mean, count, n_frames=acc.n_frames, exptime=exptime, params=base,
            reference=pipeline.reference(obj),
        )  # fmt: skip
        cards = [*cards, *phot.cards, ("RDXSTSIG", signature, "sha1 of the inputs")]
        hdr = add_cards(header, cards)
        hdul = fits.HDUList([fits.PrimaryHDU(mean, hdr), fits.ImageHDU(count, name="COUNT")])
        write_fits_atomic(path, hdul)
        meta = {"object": obj, "filter": filt, "gain": gain, "exptime": exptime}
        radius = dict((k, v) for k, v, _ in phot.cards).get("PHOTRAD", base.radius)
        write_stack_photometry(
            photometry_path(path), phot.table, nframes=acc.n_frames, radius=radius, **meta
        )
        log.info("stack_written", file=str(path), nframes=acc.n_frames, n_stars=len(phot.table))
        out.append(path)
    return out


def _first_header(path):
    with fits.open(path, memmap=False) as hdul:
        return clean_header(hdul[0].header)


def stack_photometry(mean, count, *, n_frames, exptime, params, reference):
    """Measure a stack (the mean of ``n_frames`` lights) like a single light.

    Pixels no light covered (``count == 0``) or non-finite are masked. The noise
    terms are those of a mean of ``n_frames`` frames: gain ``n * g`` (e-/ADU) and
    read noise ``sqrt(n) * rn``.

    Returns
    -------
    reduxd.steps.photometry.PhotResult
    """
    mean = np.asarray(mean, dtype=np.float32)
    mask = np.zeros(mean.shape, dtype=np.uint8)
    mask[count == 0] |= maskbits.BAD
    bad = ~np.isfinite(mean)
    mask[bad] |= maskbits.NONFINITE
    data = mean
    if bad.any():
        data = mean.copy()
        data[bad] = np.median(mean[~bad]) if (~bad).any() else 0.0
    n = max(int(n_frames), 1)
    params = dataclasses.replace(
        params,
        gain_e_per_adu=params.gain_e_per_adu * n,
        read_noise_e=params.read_noise_e * math.sqrt(n),
    )
    if reference is not None and len(reference) == 0:
        reference = None
    return photometer(data, mask=mask, exptime=exptime, params=params, reference=reference)


def write_stack_photometry(path, table, *, object, filter, gain, exptime, nframes, radius):
    """Write a stack's star table as CSV (atomically); return the path."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(STACK_PHOT_COLUMNS)
    fixed = {"object": object, "filter": filter or "", "gain": gain, "exptime": exptime,
             "nframes": nframes, "radius": radius}  # fmt: skip
    for star in table:
        values = {**fixed, **{name: star[name] for name in STACK_PHOT_COLUMNS[5:-1]}}
        writer.writerow([_fmt(name, values[name]) for name in STACK_PHOT_COLUMNS])
    return atomic_write(path, lambda fh: fh.write(buf.getvalue().encode("utf-8")))


def _fmt(name, value):
    if value is None:
        return ""
    if isinstance(value, np.integer | int) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, np.floating | float):
        value = float(value)
        if not math.isfinite(value):
            return "nan"
        return format(value, _FORMAT.get(name, ".6g"))
    return str(value)
