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

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits import card as fits_card

from reduxd import heap
from reduxd.errors import FrameIncomplete, FrameRejected
from reduxd.files import atomic_write

BLOCK = 2880
CARD = 80
MAX_HEADER_BLOCKS = 2000
PROBE_MAX_BYTES = 32 * 1024 * 1024  # most bytes read to find an image's header
_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
STRUCTURAL = {
    "SIMPLE", "XTENSION", "BITPIX", "EXTEND", "PCOUNT", "GCOUNT", "BZERO", "BSCALE",
    "BLANK", "CHECKSUM", "DATASUM", "END", "ZIMAGE", "ZBITPIX", "ZCMPTYPE", "ZTENSION",
    "ZPCOUNT", "ZGCOUNT", "ZQUANTIZ", "ZDITHER0", "ZSIMPLE", "ZEXTEND", "ZBLANK",
    "ZSCALE", "ZZERO", "THEAP", "TFIELDS",
}  # fmt: skip


# astropy.io.fits' settings that every card read looks up (see settle_card_settings)
CARD_SETTINGS = ("strip_header_whitespace", "enable_record_valued_keyword_cards")


class SettledConf:
    """``conf`` with ``names`` read once; every other setting still looked up in ``conf``."""

    def __init__(self, conf, names):
        self._conf = conf
        for name in names:
            setattr(self, name, getattr(conf, name))

    def __getattr__(self, name):
        if name == "_conf":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self._conf, name)


def settle_card_settings():
    """Read the settings of astropy.io.fits' cards once, for the rest of the process.

    astropy looks its configuration up at every card value read and card parse
    (``Card.value``: 4.1 µs, of which 3.7 µs is that lookup; astropy/astropy#12491,
    where the maintainers found it dominating header reads); a 142-light night does
    it about 100,000 times. Their values come from the same configuration (a user's
    ``astropy.cfg`` included), read when this is called; reduxd never changes them
    while it runs. The ``reduxd`` program calls this when it first imports this
    module (:func:`reduxd.heap.in_program`); a library user's process is left as it
    is. Returns the settings as read.
    """
    real = getattr(fits_card.conf, "_conf", fits_card.conf)
    fits_card.conf = SettledConf(real, CARD_SETTINGS)
    return {name: getattr(fits_card.conf, name) for name in CARD_SETTINGS}


if heap.in_program():
    settle_card_settings()


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
    sha1: str | None = None  # of the whole file, when the caller already knows it


class RawFrame:
    """A raw frame read once: float32 pixels and its header.

    ``data`` may be given as the stored values (``stored``, e.g. big-endian
    uint16): they are converted to float32 physical values on first use, so a
    calibration frame, whose pixels the ingest never looks at, is not converted.
    """

    __slots__ = ("_data", "_stored", "checksum", "header", "layout")

    def __init__(self, data, header, layout, checksum, *, stored=None):
        self._data, self._stored = data, stored
        self.header = header
        self.layout = layout
        self.checksum = checksum  # SHA-1 of the file's bytes, as read

    @property
    def data(self):
        if self._data is None:
            self._data = _to_float32(self._stored, self.layout).reshape(self.layout.shape)
            self._stored = None
        return self._data


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
    return _probe(Path(path), max_bytes=max_bytes)[0]


def _probe(path, *, max_bytes):
    """:func:`probe`'s layout and the bytes it was read from (the file's first bytes)."""
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as fh:
            buf = fh.read(min(file_size, 64 * BLOCK))
            if len(buf) < file_size:
                return _probe_large(fh, buf, path, max_bytes=max_bytes, file_size=file_size)
    except OSError as exc:
        raise FrameIncomplete(path, f"cannot read: {exc.strerror or exc}") from exc
    return _layout_from_buffer(buf, path, max_bytes=max_bytes, file_size=file_size), buf


def _probe_large(fh, buf, path, *, max_bytes, file_size):
    try:
        return _layout_from_buffer(buf, path, max_bytes=max_bytes, file_size=file_size), buf
    except FrameIncomplete:
        # Headers of later HDUs lie beyond the first bytes read: read more, within a bound
        # (a crafted 'SIMPLE' followed by gigabytes without END must not be read whole).
        fh.seek(0)
        buf = fh.read(min(file_size, PROBE_MAX_BYTES))
        return _layout_from_buffer(buf, path, max_bytes=max_bytes, file_size=file_size), buf


def _to_float32(raw, layout):
    return _physical(raw, layout.bscale, layout.bzero)


def _physical(raw, bscale, bzero):
    """New float32 array of physical values ``raw * bscale + bzero``."""
    data = raw.astype(np.float32)
    if bscale != 1.0:
        data *= np.float32(bscale)
    if bzero != 0.0:
        data += np.float32(bzero)
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
        applied), so a uint16 frame holds 0..65535. It is converted on first use.

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
    except OSError as exc:
        raise FrameIncomplete(path, f"cannot read: {exc.strerror or exc}") from exc
    # signature, header and sizes before any data is read
    layout, head = _probe(path, max_bytes=max_bytes)
    try:
        with open(path, "rb") as fh:
            buf = fh.read()
    except OSError as exc:
        raise FrameIncomplete(path, f"cannot read: {exc.strerror or exc}") from exc
    end = layout.data_offset
    if len(buf) != layout.file_size or buf[:end] != head[:end]:  # changed since: parse again
        layout = _layout_from_buffer(buf, path, max_bytes=max_bytes, file_size=len(buf))
    checksum = hashlib.sha1(buf).hexdigest()
    if layout.compressed:
        return RawFrame(_read_compressed(path, layout), layout.header, layout, checksum)
    count = layout.shape[0] * layout.shape[1]
    raw = np.frombuffer(buf, dtype=_DTYPES[layout.bitpix], count=count, offset=layout.data_offset)
    return RawFrame(None, layout.header, layout, checksum, stored=raw)


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


def fits_text(text):
    r"""``text`` as printable ASCII, the only characters a FITS string may hold.

    Other characters (a newline or an accent in a file name) are escaped.

    Examples
    --------
    >>> print(fits_text("a b.fits"), fits_text("two\nlines.fits"), fits_text("é.fits"))
    a b.fits two\nlines.fits \xe9.fits
    """
    if text.isascii() and text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


def add_cards(header, cards):
    """Append ``(keyword, value, comment)`` cards (HISTORY/COMMENT allowed) to ``header``.

    A non-finite float (FITS cannot store NaN or inf, e.g. the saturation level of
    float data) is written as an undefined value; text goes through :func:`fits_text`.
    """
    for key, value, comment in cards:
        if isinstance(value, str):
            value = fits_text(value)
        if key in ("HISTORY", "COMMENT"):
            header.add_history(value) if key == "HISTORY" else header.add_comment(value)
        elif isinstance(value, float | np.floating) and not np.isfinite(value):
            header[key] = (None, f"{comment} ({value})".strip())
        else:
            header[key] = (value, _fitting(key, value, comment))
    return header


def _fitting(key, value, comment):
    """``comment`` cut to the room left beside ``value`` (astropy would cut it and warn).

    >>> raw = "pg2213/pg2213_R_15s/00_55_32/pg2213_00001.fits"
    >>> _fitting("RAWFILE", raw, "raw frame, relative to its data folder")
    'raw frame, relative'
    """
    if not comment or _short_card(key, value, comment):
        return comment
    used = len(fits.Card(key, value).image.rstrip())
    if used > 80:  # a long string goes on over CONTINUE cards, the comment on the last
        return comment
    return comment[: max(80 - used - 3, 0)]


def _short_card(key, value, comment):
    """Whether ``comment`` fits whole for sure: a keyword of up to 8 characters and a
    value of at most 20 (a number, a bool, or a string of up to 18 without quotes)
    leave 47 characters after ``" / "`` (no card need be built to know it)."""
    if len(key) > 8 or len(comment) > 47:
        return False
    if isinstance(value, str):
        return len(value) <= 18 and "'" not in value
    return value is None or isinstance(value, bool | int | float | np.integer | np.floating)


def write_fits_atomic(path, hdul, *, durable=True):
    """Write an HDUList atomically (see :func:`reduxd.files.atomic_write`), with checksums.

    CHECKSUM/DATASUM are added to every HDU; a card that is not FITS-legal raises
    before anything is renamed into place.
    """
    return atomic_write(
        path,
        lambda fh: hdul.writeto(fh, output_verify="exception", checksum=True),
        durable=durable,
    )


# -- images written without astropy's HDU machinery (the per-light hot path) -------

_BITPIX = {np.dtype(np.uint8): 8, np.dtype(np.int16): 16, np.dtype(np.int32): 32,
           np.dtype(np.float32): -32, np.dtype(np.float64): -64}  # fmt: skip
_EXCLUDE = frozenset(b":;<=>?@[\\]^_`")


def ones_complement_sum(buf, start=0):
    """32-bit ones' complement sum of ``buf`` (bytes-like) as big-endian words.

    The sum behind FITS ``DATASUM``/``CHECKSUM`` (FITS standard, appendix J);
    ``buf`` is zero-padded to a whole word.

    Examples
    --------
    >>> ones_complement_sum(b"\\xff\\xff\\xff\\xff\\x00\\x00\\x00\\x02")  # end-around carry
    2
    """
    words = np.frombuffer(buf, dtype=np.uint8)
    total = int(start)
    if extra := words.size % 4:
        total += int.from_bytes(words[-extra:].tobytes() + bytes(4 - extra), "big")
        words = words[:-extra]
    if words.size:
        total += int(words.view(">u4").sum(dtype=np.uint64))  # < 2**64 below 68 GB
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def encode_checksum(value):
    """The 16-character ASCII encoding of a 32-bit checksum (FITS standard, J.2).

    Examples
    --------
    >>> encode_checksum(0)
    '0000000000000000'
    """
    chars = bytearray(16)
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        q, r = byte // 4 + 0x30, byte % 4
        ch = [q + r, q, q, q]
        while any(c in _EXCLUDE for c in ch):
            for j in (0, 2):
                if ch[j] in _EXCLUDE or ch[j + 1] in _EXCLUDE:
                    ch[j] += 1
                    ch[j + 1] -= 1
        for j in range(4):
            chars[4 * j + i] = ch[j]
    return bytes(chars[-1:] + chars[:-1]).decode("ascii")  # rotated right by one


def image_hdu_bytes(data, header=None, *, primary, extend=False, name=None):
    """Return ``(header bytes, data array)`` of one image HDU, with DATASUM and CHECKSUM.

    Parameters
    ----------
    data : numpy.ndarray
        2-D image: uint8, int16, int32, float32 or float64 (written as is, big-endian).
    header : astropy.io.fits.Header, optional
        Descriptive cards; structural ones (BITPIX, NAXISn, BZERO, CHECKSUM...)
        are dropped and written from ``data``.
    primary : bool
        Primary HDU (``SIMPLE``) or IMAGE extension (``XTENSION``).
    extend : bool
        ``EXTEND = T`` in a primary HDU followed by extensions.
    name : str, optional
        ``EXTNAME``.

    The data array is C-contiguous big-endian: write it with ``fh.write(array)``
    and pad it with :func:`data_padding`.
    """
    data = np.asarray(data)
    if data.dtype.newbyteorder("=") not in _BITPIX:
        raise ValueError(f"cannot write {data.dtype} images (use uint8/int16/int32/float)")
    bitpix = _BITPIX[data.dtype.newbyteorder("=")]
    native = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("="))
    data = native.astype(native.dtype.newbyteorder(">"))
    images = [_card_image("SIMPLE", True, "conforms to FITS standard") if primary
              else _card_image("XTENSION", "IMAGE", "Image extension")]  # fmt: skip
    images.append(_card_image("BITPIX", bitpix, "array data type"))
    images.append(_card_image("NAXIS", data.ndim, "number of array dimensions"))
    for axis, length in enumerate(reversed(data.shape), start=1):
        images.append(_card_image(f"NAXIS{axis}", length))
    if primary and extend:
        images.append(_card_image("EXTEND", True))
    if not primary:
        images.append(_card_image("PCOUNT", 0, "number of parameters"))
        images.append(_card_image("GCOUNT", 1, "number of groups"))
    if name:
        images.append(_card_image("EXTNAME", name, "extension name"))
    for card in header.cards if header is not None else ():
        key = card.keyword
        if key in STRUCTURAL or key.startswith("NAXIS") or (name and key == "EXTNAME"):
            continue
        images.append(str(card))
    datasum = _datasum(native, data)
    images.append(_card_image("DATASUM", str(datasum), "data unit checksum"))
    images.append(_card_image("CHECKSUM", "0" * 16, "HDU checksum"))
    text = bytearray(_header_text(images).encode("ascii"))
    at = text.rfind(b"CHECKSUM= '") + len("CHECKSUM= '")  # the last card: its value's place
    checksum = encode_checksum(~ones_complement_sum(text, datasum) & 0xFFFFFFFF)
    text[at : at + 16] = checksum.encode("ascii")
    return bytes(text), data


@functools.lru_cache(maxsize=256, typed=True)
def _card_image(key, value, comment=None):
    """The image of ``fits.Card(key, value, comment)`` (what a header's
    ``tostring`` writes for it), made once per card."""
    return fits.Card(key, value, comment).image


def _header_text(images):
    """``Header.tostring()`` of the cards whose images (``str(card)``) are ``images``:
    their 80-character lines, the END card, blank to a whole block.

    Examples
    --------
    >>> header = fits.Header([("SIMPLE", True), ("OBJECT", "x" * 90, "long")])
    >>> _header_text([str(card) for card in header.cards]) == header.tostring()
    True
    """
    text = "".join(images) + "END".ljust(CARD)
    return text + " " * (-len(text) % BLOCK)


def _datasum(native, big_endian):
    """DATASUM of an image: 4-byte pixels are summed in native order, without a swap.

    The big-endian words of a 4-byte pixel's bytes are the pixel's own bit
    pattern, so the sum of ``native.view(uint32)`` is the sum over the file's words.
    """
    if native.dtype.itemsize == 4:
        total = int(native.reshape(-1).view(np.uint32).sum(dtype=np.uint64))
        return ones_complement_sum(b"", total)
    return ones_complement_sum(memoryview(big_endian).cast("B"))


def data_padding(nbytes):
    """Zero bytes that complete a data unit of ``nbytes`` to whole 2880-byte blocks."""
    return bytes(-nbytes % BLOCK)


def write_images_atomic(path, hdus, *, durable=True):
    """Write image HDUs atomically with checksums, without astropy's HDU writer.

    ``hdus`` is a list of ``(data, header, name)``: the first is the primary HDU,
    the others IMAGE extensions. About three times faster than ``HDUList.writeto``
    with ``checksum=True`` on a 1608x1104 float32 frame, with identical bytes in
    the data units and checksums that ``fitsverify`` and astropy accept.
    """
    parts = [
        image_hdu_bytes(data, header, primary=i == 0, extend=i == 0 and len(hdus) > 1, name=name)
        for i, (data, header, name) in enumerate(hdus)
    ]

    def write(fh):
        for head, data in parts:
            fh.write(head)
            fh.write(memoryview(data).cast("B"))
            fh.write(data_padding(data.nbytes))

    return atomic_write(path, write, durable=durable)


def read_images(path, *, max_bytes):
    """Read every HDU of an uncompressed FITS file with one read; return ``[(header, data)]``.

    The file is read once and each header parsed with the checks of
    :func:`read_frame`; no astropy HDU object is built. ``data`` is None for an
    HDU without an image (no pixels, or not an IMAGE extension); otherwise a new,
    writable, native-byte-order array, e.g. ``(ny, nx)``: floats keep their type,
    integers too unless BSCALE/BZERO are set (then float32 physical values, as
    :func:`read_frame`). Reads calibrated lights (float32 primary + uint8 ``MASK``,
    written by :func:`write_images_atomic` or by astropy) in about half the time
    of ``fits.open``.

    Parameters
    ----------
    path : str or Path
    max_bytes : int
        Largest data size (bytes) one HDU may declare; a file over twice that
        (plus header room) is refused before it is read.

    Raises
    ------
    FrameIncomplete, FrameRejected
        As :func:`read_frame`.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), 'l.fits')
    >>> image, mask = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 3), np.uint8)
    >>> _ = write_images_atomic(path, [(image, None, None), (mask, None, 'MASK')])
    >>> (h0, d0), (h1, d1) = read_images(path, max_bytes=1 << 20)
    >>> d0.dtype, float(d0[1, 2]), h1['EXTNAME'], d1.dtype, int(d1.sum())
    (dtype('float32'), 5.0, 'MASK', dtype('uint8'), 6)
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        if file_size > 2 * max_bytes + 512 * BLOCK:
            raise FrameRejected(path, f"file is {file_size} bytes, over the limit {max_bytes}")
        with open(path, "rb") as fh:
            buf = fh.read()
    except OSError as exc:
        raise FrameIncomplete(path, f"cannot read: {exc.strerror or exc}") from exc
    out, start = [], 0
    while start < len(buf):
        header, offset = _parse_header(buf, start, path)
        size = _data_bytes(header)
        if size > max_bytes:
            raise FrameRejected(
                path, f"HDU {len(out)} declares {size} bytes of data, over the limit"
            )
        if len(buf) < offset + size:
            raise FrameIncomplete(
                path, f"data truncated: {len(buf)} bytes, header declares {offset + size}"
            )
        data = None
        if not header.get("ZIMAGE", False) and _is_image(header, len(out)):
            bitpix = int(header["BITPIX"])
            if bitpix not in _DTYPES:
                raise FrameRejected(path, f"BITPIX={bitpix} is not a valid FITS value")
            shape = _declared_shape(header, False)
            raw = np.frombuffer(buf, _DTYPES[bitpix], count=int(np.prod(shape)), offset=offset)
            raw = raw.reshape(shape)
            bscale, bzero = float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0))
            if bscale != 1.0 or bzero != 0.0:
                data = _physical(raw, bscale, bzero)
            else:
                data = raw.astype(raw.dtype.newbyteorder("="))
        out.append((header, data))
        start = offset + (size + BLOCK - 1) // BLOCK * BLOCK
    return out
