"""FITS products: master calibrations and calibrated lights.

Masters: a float32 primary image with the master's cards, and a BINTABLE
extension ``INPUTS`` (name, sha1, exptime, date_obs of every input frame).
Calibrated lights: the float32 image under the raw frame's cleaned header plus
the calibration cards, and the uint8 pixel mask as IMAGE extension ``MASK``.
Float data are written as they are (BITPIX=-32, no BZERO/BSCALE); every file is
written atomically with CHECKSUM/DATASUM (:func:`reduxd.fitsio.write_fits_atomic`;
calibrated lights, on the per-light path, with :func:`reduxd.fitsio.write_images_atomic`).
"""

import functools

import numpy as np
from astropy.io import fits

from reduxd import fitsio, maskbits
from reduxd.fitsio import file_checksum
from reduxd.frames import normalise_filter, parse_date
from reduxd.steps.masters import InputFile, MasterResult

_MASK_KEYS = {maskbits.BAD: "MASKBAD", maskbits.SATURATED: "MASKSAT", maskbits.NONFINITE: "MASKNAN",
              maskbits.REPAIRED: "MASKFIX"}  # fmt: skip


def master_hdul(result):
    """Return the HDUList of a master: float32 image with its cards + table ``INPUTS``.

    Examples
    --------
    >>> r = MasterResult('bias', np.zeros((2, 3), np.float32), (('RDXKIND', 'bias', ''),),
    ...                  (InputFile('b1.fits', 'ab12', 0.0, ''),), 'cam', (2, 3), (1, 1),
    ...                  None, 0.0, None, None, None, None, 'median')
    >>> hdul = master_hdul(r)
    >>> hdul[0].header['BITPIX'], hdul[0].header['RDXKIND'], hdul['INPUTS'].data['name'][0]
    (-32, 'bias', 'b1.fits')
    """
    header = fitsio.add_cards(fits.Header(), result.cards)
    primary = fits.PrimaryHDU(np.asarray(result.data, dtype=np.float32), header=header)
    table = fits.table_to_hdu(result.inputs_table())
    table.name = "INPUTS"
    table.header["COMMENT"] = "the raw frames combined into this master"
    hdus = [primary, table]
    if result.unstable is not None:
        image = fits.ImageHDU(result.unstable.astype(np.uint8), name="UNSTABLE")
        image.header["COMMENT"] = "1: pixel flickers between the darks (bad pixel)"
        image.header["RDXNUNST"] = (int(result.unstable.sum()), "unstable pixels")
        hdus.append(image)
    return fits.HDUList(hdus)


def write_master(path, result):
    """Write a master atomically; return the path.

    Examples
    --------
    >>> import tempfile, os
    >>> r = MasterResult('bias', np.zeros((2, 3), np.float32), (('RDXKIND', 'bias', ''),),
    ...                  (), 'cam', (2, 3), (1, 1), None, 0.0, None, None, None, None, 'median')
    >>> path = write_master(os.path.join(tempfile.mkdtemp(), 'bias.fits'), r)
    >>> fits.getval(path, 'RDXKIND')
    'bias'
    """
    return fitsio.write_fits_atomic(path, master_hdul(result))


@functools.cache  # the same cards for every light (image_hdu_bytes only reads them)
def _mask_header():
    header = fits.Header()
    for bit, key in _MASK_KEYS.items():
        header[key] = (bit, maskbits.DESCRIPTION[bit][:46])
    return header


def write_calibrated(path, calibrated, raw_header, *, durable=True):
    """Write a calibrated light (image + ``MASK`` extension) atomically; return the path.

    Parameters
    ----------
    path : str or Path
    calibrated : reduxd.steps.calibrate.Calibrated
    raw_header : astropy.io.fits.Header
        The raw frame's header: cleaned (:func:`reduxd.fitsio.clean_header`), then
        the calibration cards are added.
    durable : bool
        Fsync before returning (see :func:`reduxd.files.atomic_write`).

    Examples
    --------
    >>> import tempfile, os
    >>> from reduxd.steps.calibrate import Calibrated
    >>> cal = Calibrated(np.ones((2, 2), np.float32), np.zeros((2, 2), np.uint8),
    ...                  (('RDXDMODE', 'exact', ''),), 'exact', ())
    >>> raw = fits.Header({'BITPIX': 16, 'BZERO': 32768, 'OBJECT': 'M13'})
    >>> path = write_calibrated(os.path.join(tempfile.mkdtemp(), 'l.fits'), cal, raw)
    >>> with fits.open(path) as hdul:
    ...     h = hdul[0].header
    ...     (h['BITPIX'], 'BZERO' in h, h['OBJECT'], hdul['MASK'].header['BITPIX'])
    (-32, False, 'M13', 8)
    """
    header = fitsio.add_cards(fitsio.clean_header(raw_header), calibrated.cards)
    hdus = [
        (np.asarray(calibrated.data, dtype=np.float32), header, None),
        (np.asarray(calibrated.mask, dtype=np.uint8), _mask_header(), "MASK"),
    ]
    return fitsio.write_images_atomic(path, hdus, durable=durable)


def read_master(path, *, max_bytes):
    """Read a master written by :func:`write_master` back into a :class:`MasterResult`.

    ``path`` and ``checksum`` (SHA-1 of the file) are set, so masters made from it
    name it in their headers.
    """
    frame = fitsio.read_frame(path, max_bytes=max_bytes)
    h = frame.header
    with fits.open(path, memmap=False) as hdul:
        rows = hdul["INPUTS"].data if "INPUTS" in hdul else []
        unstable = np.asarray(hdul["UNSTABLE"].data, bool) if "UNSTABLE" in hdul else None
        inputs = tuple(
            InputFile(str(r["name"]), str(r["sha1"]), _finite(r["exptime"]), str(r["date_obs"]))
            for r in rows
        )
    cards = tuple((c.keyword, c.value, c.comment) for c in fitsio.clean_header(h).cards)
    return MasterResult(
        kind=str(h["RDXKIND"]),
        data=frame.data,
        cards=cards,
        inputs=inputs,
        instrument=str(h.get("INSTRUME", "")),
        shape=frame.data.shape,
        binning=(int(h.get("XBINNING", 1)), int(h.get("YBINNING", 1))),
        gain=_number(h.get("GAIN")),
        exptime=_number(h.get("EXPTIME")),
        filter=normalise_filter(h.get("FILTER"), {}),
        ccd_temp=_number(h.get("CCD-TEMP")),
        date_start=_date(h.get("RDXFIRST")),
        date_end=_date(h.get("RDXLAST")),
        method=str(h.get("RDXCOMB", "")),
        path=str(path),
        checksum=file_checksum(path),
        unstable=unstable,
    )


def _number(value):
    return None if value is None or isinstance(value, str) else float(value)


def _finite(value):
    value = float(value)
    return value if np.isfinite(value) else None


def _date(value):
    return parse_date(value) if value else None
