"""Safe FITS reading and atomic writing.

Raw frames are read with plain file I/O, never memory-mapped: the headers are
parsed and checked (complete through END, declared data size below a limit,
file long enough) before a single pixel is allocated. Pixel data become float32
before any arithmetic (uint16 frames are stored as int16 + BZERO=32768).

Outcome for unusual inputs (tests/test_fitsio.py):

===============================================  ================================
input                                            outcome
===============================================  ================================
0 bytes; header without END yet                  FrameIncomplete (retry later)
truncated data; header declaring data, no data   FrameIncomplete (retry later)
text named .fits (no SIMPLE card)                FrameRejected (quarantine)
declared data size above ``max_bytes``           FrameRejected, nothing allocated
3-D cube (NAXIS3 > 1); no image HDU at all       FrameRejected
``.fits.fz`` (image in extension 1)              accepted
uncompressed image in an IMAGE extension         accepted
EXPTIME '30.0' (a string); no FILTER; 'r'        accepted by ``frames.classify``
===============================================  ================================
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from reduxd.errors import FrameIncomplete, FrameRejected
from reduxd.files import atomic_write

BLOCK = 2880
CARD = 80
MAX_HEADER_BLOCKS = 2000
_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
STRUCTURAL = {
    "SIMPLE", "XTENSION", "BITPIX", "EXTEND", "PCOUNT", "GCOUNT", "BZERO", "BSCALE",
    "BLANK", "CHECKSUM", "DATASUM", "END", "ZIMAGE", "ZBITPIX", "ZCMPTYPE", "ZTENSION",
    "ZPCOUNT", "ZGCOUNT", "ZQUANTIZ", "ZDITHER0", "ZSIMPLE", "ZEXTEND", "ZBLANK",
    "ZSCALE", "ZZERO", "THEAP", "TFIELDS",
}  # fmt: skip


@dataclass(frozen=True)
class FitsLayout:
    """Where the first image of a FITS file lives and how it is stored."""

    path: str
    hdu_index: int
    header: fits.Header
    data_offset: int
    shape: tuple[int, ...]  # numpy order (ny, nx)
    bitpix: int
    bscale: float
    bzero: float
    compressed: bool
    file_size: int


@dataclass(frozen=True)
class RawFrame:
    """A raw frame read once: float32 pixels and its header."""

    data: np.ndarray
    header: fits.Header
    layout: FitsLayout
    checksum: str  # SHA-1 of the file's bytes, as read


def file_checksum(path):
    """Return the SHA-1 (hex) of a file's bytes, read in 1 MB chunks.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as fh:
    ...     _ = fh.write(b'abc'); fh.flush()
    ...     file_checksum(fh.name)[:8]
    'a9993e36'
    """
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _declared_shape(header, compressed):
    prefix = "ZNAXIS" if compressed else "NAXIS"
    naxis = int(header.get(prefix, 0))
    return tuple(int(header.get(f"{prefix}{i}", 0)) for i in range(naxis, 0, -1))


def _data_bytes(header):
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    count = 1
    for i in range(1, naxis + 1):
        count *= int(header.get(f"NAXIS{i}", 0))
    groups = int(header.get("GCOUNT", 1))
    return abs(int(header["BITPIX"])) // 8 * groups * (int(header.get("PCOUNT", 0)) + count)


def _parse_header(buf, start, path):
    """Return (header, offset just after the header) for the HDU starting at ``start``."""
    if start == 0 and not buf.startswith(b"SIMPLE  ="):
        if len(buf) == 0:
            raise FrameIncomplete(path, "file is empty (0 bytes)")
        raise FrameRejected(path, "not a FITS file: no SIMPLE card at the start")
    for block in range(MAX_HEADER_BLOCKS):
        end = start + (block + 1) * BLOCK
        if end > len(buf):
            raise FrameIncomplete(path, f"header not complete: no END card in {len(buf)} bytes")
        chunk = buf[end - BLOCK : end]
        for i in range(0, BLOCK, CARD):
            if chunk[i : i + 8] == b"END     ":
                text = buf[start:end].decode("ascii", errors="replace")
                try:
                    return fits.Header.fromstring(text), end
                except Exception as exc:
                    raise FrameRejected(path, f"header does not parse: {exc}") from exc
    raise FrameRejected(path, f"no END card within {MAX_HEADER_BLOCKS} header blocks")


def _is_image(header, index):
    if header.get("ZIMAGE", False):
        return True
    if index > 0 and str(header.get("XTENSION", "")).strip() != "IMAGE":
        return False
    return int(header.get("NAXIS", 0)) >= 2


def _layout_from_buffer(buf, path, *, max_bytes, file_size):
    start, index = 0, 0
    while True:
        header, offset = _parse_header(buf, start, path)
        size = _data_bytes(header)
        if size > max_bytes:
            raise FrameRejected(path, f"HDU {index} declares {size} bytes of data, over the limit")
        if _is_image(header, index):
            return _make_layout(header, index, offset, size, path, file_size)
        start = offset + (size + BLOCK - 1) // BLOCK * BLOCK
        index += 1
        if start >= file_size:
            raise FrameRejected(path, "no image HDU in the file")


def _make_layout(header, index, offset, size, path, file_size):
    compressed = bool(header.get("ZIMAGE", False))
    shape = _declared_shape(header, compressed)
    bitpix = int(header["ZBITPIX" if compressed else "BITPIX"])
    if bitpix not in _DTYPES:
        raise FrameRejected(path, f"BITPIX={bitpix} is not a valid FITS value")
    if len(shape) > 2 and any(n > 1 for n in shape[:-2]):
        raise FrameRejected(path, f"{len(shape)}-D cube {shape} (one 2-D image per file expected)")
    shape = shape[-2:]
    if len(shape) < 2 or min(shape) <= 0:
        raise FrameRejected(path, f"image has no pixels (shape {shape})")
    if file_size < offset + size:
        raise FrameIncomplete(
            path, f"data truncated: {file_size} bytes, header declares {offset + size}"
        )
    return FitsLayout(
        path=str(path), hdu_index=index, header=header, data_offset=offset, shape=shape,
        bitpix=bitpix, bscale=float(header.get("BSCALE", 1.0)),
        bzero=float(header.get("BZERO", 0.0)), compressed=compressed, file_size=file_size,
    )  # fmt: skip


def _read_head(path, file_size):
    # Enough bytes for headers; a compressed or extension image may need more, read lazily.
    with open(path, "rb") as fh:
        return fh.read(file_size)


def probe(path, *, max_bytes):
    """Check that ``path`` is a complete FITS image within limits, without reading pixels.

    Parameters
    ----------
    path : str or Path
        The file.
    max_bytes : int
        Largest data size (bytes) an image may declare.

    Returns
    -------
    FitsLayout

    Raises
    ------
    FrameIncomplete
        The file is still too short for what its header declares (retry later).
    FrameRejected
        The file is not a usable 2-D FITS image (quarantine).
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as fh:
            buf = fh.read(min(file_size, 64 * BLOCK))
            if len(buf) < file_size:
                return _probe_large(fh, buf, path, max_bytes=max_bytes, file_size=file_size)
    except OSError as exc:
        raise FrameIncomplete(path, f"cannot read: {exc.strerror or exc}") from exc
    return _layout_from_buffer(buf, path, max_bytes=max_bytes, file_size=file_size)


def _probe_large(fh, buf, path, *, max_bytes, file_size):
    try:
        return _layout_from_buffer(buf, path, max_bytes=max_bytes, file_size=file_size)
    except FrameIncomplete:
        # Headers of later HDUs lie beyond the first bytes read: read the whole file once.
        fh.seek(0)
        return _layout_from_buffer(fh.read(), path, max_bytes=max_bytes, file_size=file_size)


def _to_float32(raw, layout):
    data = raw.astype(np.float32)
    if layout.bscale != 1.0:
        data *= np.float32(layout.bscale)
    if layout.bzero != 0.0:
        data += np.float32(layout.bzero)
    return data


def read_frame(path, *, max_bytes):
    """Read a raw frame once, check it, and return float32 pixels with its header.

    Parameters
    ----------
    path : str or Path
        A FITS file (``.fits``, ``.fit``, ``.fts`` or tile-compressed ``.fits.fz``).
    max_bytes : int
        Largest data size (bytes) an image may declare; larger files are refused
        before anything is allocated.

    Returns
    -------
    RawFrame
        ``data`` is a new float32 array ``(ny, nx)``; physical values (BSCALE/BZERO
        applied), so a uint16 frame holds 0..65535.

    Raises
    ------
    FrameIncomplete, FrameRejected
        See :func:`probe`.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        if file_size > max_bytes + 512 * BLOCK:
            raise FrameRejected(path, f"file is {file_size} bytes, over the limit {max_bytes}")
        with open(path, "rb") as fh:
            buf = fh.read()
    except OSError as exc:
        raise FrameIncomplete(path, f"cannot read: {exc.strerror or exc}") from exc
    layout = _layout_from_buffer(buf, path, max_bytes=max_bytes, file_size=len(buf))
    checksum = hashlib.sha1(buf).hexdigest()
    if layout.compressed:
        return RawFrame(_read_compressed(path, layout), layout.header, layout, checksum)
    count = layout.shape[0] * layout.shape[1]
    raw = np.frombuffer(buf, dtype=_DTYPES[layout.bitpix], count=count, offset=layout.data_offset)
    data = _to_float32(raw, layout).reshape(layout.shape)
    return RawFrame(data, layout.header, layout, checksum)


def _read_compressed(path, layout):
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            hdu = hdul[layout.hdu_index]
            data = np.asarray(hdu.data, dtype=np.float32)
    except Exception as exc:
        raise FrameRejected(path, f"compressed image does not decompress: {exc}") from exc
    return data.reshape(layout.shape)


def read_rows(layout, y0, y1):
    """Read rows ``y0:y1`` of the image described by ``layout`` as float32.

    Only the bytes of those rows are read (one seek, one read); a tile-compressed
    image has to be decompressed whole, so it is read whole and sliced.
    """
    if layout.compressed:
        return _read_compressed(layout.path, layout)[y0:y1]
    nx = layout.shape[1]
    itemsize = abs(layout.bitpix) // 8
    with open(layout.path, "rb") as fh:
        fh.seek(layout.data_offset + y0 * nx * itemsize)
        raw = np.frombuffer(fh.read((y1 - y0) * nx * itemsize), dtype=_DTYPES[layout.bitpix])
    return _to_float32(raw, layout).reshape(y1 - y0, nx)


def clean_header(header):
    """Return a new header with the raw frame's descriptive cards only.

    Structural cards (BITPIX, NAXIS*, BZERO, ...) are dropped (astropy writes its
    own), and so is any card that is not FITS-legal, so that writing never fails
    after the work is done.
    """
    out = fits.Header()
    for card in header.cards:
        key = card.keyword
        if key in STRUCTURAL or key.startswith("NAXIS") or key.startswith("ZNAXIS"):
            continue
        if key.startswith("ZTILE") or key.startswith("ZNAME") or key.startswith("ZVAL"):
            continue
        try:
            card.verify("exception")
            out.append(fits.Card(card.keyword, card.value, card.comment), end=True)
        except Exception:
            continue
    return out


def add_cards(header, cards):
    """Append ``(keyword, value, comment)`` cards (HISTORY/COMMENT allowed) to ``header``.

    A non-finite float (FITS cannot store NaN or inf, e.g. the saturation level of
    float data) is written as an undefined value.
    """
    for key, value, comment in cards:
        if key in ("HISTORY", "COMMENT"):
            header.add_history(value) if key == "HISTORY" else header.add_comment(value)
        elif isinstance(value, float | np.floating) and not np.isfinite(value):
            header[key] = (None, f"{comment} ({value})".strip())
        else:
            header[key] = (value, comment)
    return header


def write_fits_atomic(path, hdul):
    """Write an HDUList atomically (see :func:`reduxd.files.atomic_write`), with checksums.

    CHECKSUM/DATASUM are added to every HDU; a card that is not FITS-legal raises
    before anything is renamed into place.
    """
    return atomic_write(path, lambda fh: hdul.writeto(fh, output_verify="exception", checksum=True))
