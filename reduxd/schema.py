"""The photometry columns, defined once: name, numpy dtype, unit, description.

Measurement (:mod:`reduxd.steps.measure`), the photometry tables
(:mod:`reduxd.products.tables`), the stacks' tables (:mod:`reduxd.products.stacks`),
the rows of a reduced light (:mod:`reduxd.reduce`) and the light curves
(:mod:`reduxd.products.lightcurve`) all take their columns from here. Other tools
(TOPCAT, pandas, the old script's users) read these files: a change here changes
the contract. Units are FITS/astropy unit strings.

Examples
--------
>>> column("flux").unit, column("flux").dtype
('adu', 'f8')
>>> STAR_NAMES[:3]
('star_id', 'x', 'y')
"""

from typing import NamedTuple


class Column(NamedTuple):
    name: str
    dtype: str  # numpy dtype
    unit: str | None
    description: str


PHOT_COLUMNS = tuple(
    Column(*c)
    for c in (
        ("night", "U10", None, "observing night (local date at the evening's start)"),
        ("file", "U256", None, "raw frame, path relative to the data root"),
        ("object", "U64", None, "OBJECT card, or the target folder"),
        ("filter", "U16", None, "filter, normalised"),
        ("exptime", "f8", "s", "exposure time"),
        ("date_obs", "U26", None, "mid-exposure time, ISO 8601 UTC"),
        ("mjd", "f8", "d", "mid-exposure time, MJD (UTC)"),
        ("star_id", "i8", None, "star identifier, stable across the frames of a field"),
        ("x", "f8", "pix", "0-based column of the star in the calibrated frame"),
        ("y", "f8", "pix", "0-based row of the star in the calibrated frame"),
        ("fwhm", "f8", "pix", "full width at half maximum of the star"),
        ("sky", "f8", "adu", "sky level per pixel"),
        ("sky_err", "f8", "adu", "uncertainty of the sky level per pixel"),
        ("flux", "f8", "adu", "sky-subtracted counts in the aperture"),
        ("flux_err", "f8", "adu", "1-sigma uncertainty of flux (CCD equation)"),
        ("mag_inst", "f8", "mag", "instrumental magnitude -2.5 log10(flux / exptime)"),
        ("mag_err", "f8", "mag", "1-sigma uncertainty of mag_inst"),
        ("snr", "f8", None, "signal-to-noise ratio flux / flux_err"),
        ("flags", "i8", None, "bitmask, see reduxd.steps.measure.Flag"),
        ("radius", "f8", "pix", "aperture radius"),
        ("calib", "U64", None, "calibration applied: bias, dark, scaled dark, flat, or none"),
        ("version", "i8", None, "reduction number of this frame (1 = first)"),
        ("current", "i8", None, "1 = the frame's current measurement, 0 = superseded"),
    )
)
NAMES = tuple(c.name for c in PHOT_COLUMNS)
_BY_NAME = {c.name: c for c in PHOT_COLUMNS}
# what the measurement step gives per star (star_id .. flags)
STAR_NAMES = NAMES[NAMES.index("star_id") : NAMES.index("flags") + 1]
# a stack's photometry: the group, the number of frames, then the stars
STACK_NAMES = ("object", "filter", "gain", "exptime", "nframes", *STAR_NAMES, "radius")


def column(name):
    """The :class:`Column` called ``name``."""
    return _BY_NAME[name]
