"""Bad and unusual inputs: each gives its documented outcome and leaves the file untouched.

| input | outcome |
|---|---|
| 0 bytes, header without END yet, truncated data, header only | FrameIncomplete |
| text named .fits, 3-D cube, huge declared size, no image HDU | FrameRejected |
| .fits.fz, image in an extension, EXPTIME '30.0', no FILTER, 'r' | accepted |
"""

import hashlib
import pickle
import tracemalloc

import numpy as np
import pytest
from astropy.io import fits
from fitsverify import assert_valid

from reduxd import fitsio
from reduxd.errors import FrameIncomplete, FrameRejected
from reduxd.frames import classify

MAX_BYTES = 2 * 1024**3


def _header_bytes(cards):
    header = fits.Header()
    for key, value in cards:
        header[key] = value
    text = header.tostring(padding=True)
    return text.encode("ascii")


def _image(tmp_path, name="frame.fits", shape=(20, 30), **cards):
    data = (np.arange(np.prod(shape)) % 5000).reshape(shape).astype(np.uint16)
    header = fits.Header({"FRAMETYP": "Light", "EXPTIME": 10.0, "FILTER": "V", **cards})
    path = tmp_path / name
    fits.PrimaryHDU(data, header).writeto(path)
    return path, data


@pytest.fixture
def freeze():
    """Record files' bytes and mtime; after the test, check that none changed."""
    state = {}

    def record(*paths):
        for path in paths:
            state[path] = (hashlib.sha1(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)

    yield record
    for path, (digest, mtime) in state.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} mtime changed"
        assert hashlib.sha1(path.read_bytes()).hexdigest() == digest, f"{path} changed"


def _both(path, **kw):
    """Outcome of probe and of read_frame (they must agree)."""
    outcomes = []
    for func in (fitsio.probe, fitsio.read_frame):
        try:
            func(path, max_bytes=kw.get("max_bytes", MAX_BYTES))
            outcomes.append("accepted")
        except FrameIncomplete:
            outcomes.append("incomplete")
        except FrameRejected:
            outcomes.append("rejected")
    assert outcomes[0] == outcomes[1], outcomes
    return outcomes[0]


def test_empty_file_is_incomplete(tmp_path, freeze):
    path = tmp_path / "empty.fits"
    path.write_bytes(b"")
    freeze(path)
    assert _both(path) == "incomplete"


def test_text_named_fits_is_rejected(tmp_path, freeze):
    path = tmp_path / "notes.fits"
    path.write_text("observing log: clouds at 23:00\n" * 200)
    freeze(path)
    assert _both(path) == "rejected"
    with pytest.raises(FrameRejected, match="not a FITS file"):
        fitsio.probe(path, max_bytes=MAX_BYTES)


def test_truncated_data_is_incomplete(tmp_path, freeze):
    good, _ = _image(tmp_path)
    path = tmp_path / "truncated.fits"
    path.write_bytes(good.read_bytes()[: 2880 + 500])
    freeze(path, good)
    assert _both(path) == "incomplete"
    with pytest.raises(FrameIncomplete, match="truncated"):
        fitsio.read_frame(path, max_bytes=MAX_BYTES)


def test_header_only_is_incomplete(tmp_path, freeze):
    path = tmp_path / "header_only.fits"
    path.write_bytes(
        _header_bytes(
            [("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", 30), ("NAXIS2", 20)]
        )
    )
    partial = tmp_path / "partial_header.fits"
    partial.write_bytes(path.read_bytes()[:1600])  # no END card yet
    freeze(path, partial)
    assert _both(path) == "incomplete"
    assert _both(partial) == "incomplete"


def test_no_image_is_rejected(tmp_path, freeze):
    path = tmp_path / "empty_primary.fits"
    fits.PrimaryHDU().writeto(path)
    freeze(path)
    assert _both(path) == "rejected"


def test_huge_declared_size_allocates_nothing(tmp_path, freeze):
    path = tmp_path / "huge.fits"
    head = _header_bytes(
        [("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", 100000), ("NAXIS2", 100000)]
    )
    path.write_bytes(head + b"\0" * (6144 - len(head)))
    freeze(path)
    tracemalloc.start()
    for func in (fitsio.probe, fitsio.read_frame):
        with pytest.raises(FrameRejected, match="over the limit"):
            func(path, max_bytes=MAX_BYTES)
    # with a limit above the declared size it is merely incomplete, still nothing allocated
    with pytest.raises(FrameIncomplete):
        fitsio.read_frame(path, max_bytes=10**12)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1024**2, f"peak {peak} bytes"


def test_cube_is_rejected(tmp_path, freeze):
    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 10, 12), np.uint16)).writeto(path)
    freeze(path)
    assert _both(path) == "rejected"
    with pytest.raises(FrameRejected, match="3-D cube"):
        fitsio.probe(path, max_bytes=MAX_BYTES)


def test_compressed_fz_is_accepted(tmp_path, freeze):
    data = (np.arange(40 * 50) % 3000).reshape(40, 50).astype(np.uint16)
    path = tmp_path / "light.fits.fz"
    header = fits.Header({"FRAMETYP": "Light", "EXPTIME": 5.0, "FILTER": "R"})
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header)]).writeto(path)
    freeze(path)
    frame = fitsio.read_frame(path, max_bytes=MAX_BYTES)
    assert frame.layout.compressed and frame.layout.hdu_index == 1
    assert frame.data.dtype == np.float32
    np.testing.assert_array_equal(frame.data, data)
    np.testing.assert_array_equal(fitsio.read_rows(frame.layout, 3, 9), data[3:9])
    info = classify(frame.header, path)
    assert (info.kind, info.filter, info.shape) == ("light", "R", (40, 50))


def test_image_in_extension_is_accepted(tmp_path, freeze):
    data = (np.arange(30 * 20) % 4000).reshape(30, 20).astype(np.uint16)
    path = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI")]).writeto(path)
    freeze(path)
    frame = fitsio.read_frame(path, max_bytes=MAX_BYTES)
    assert frame.layout.hdu_index == 1
    np.testing.assert_array_equal(frame.data, data)
    np.testing.assert_array_equal(fitsio.read_rows(frame.layout, 10, 12), data[10:12])


def test_uint16_becomes_float32_without_wrapping(tmp_path, freeze):
    path, data = _image(tmp_path)
    freeze(path)
    frame = fitsio.read_frame(path, max_bytes=MAX_BYTES)
    assert frame.data.dtype == np.float32
    np.testing.assert_array_equal(frame.data, data)
    assert float((frame.data - 4999.0).min()) < 0  # no uint16 wrap-around


def test_pixels_are_converted_once_and_only_when_used(tmp_path, freeze):
    """A calibration frame's ingest needs its checksum and header, not float32 pixels."""
    path, data = _image(tmp_path)
    freeze(path)
    frame = fitsio.read_frame(path, max_bytes=MAX_BYTES)
    assert frame._data is None  # read and checked, not converted
    assert frame.checksum == hashlib.sha1(path.read_bytes()).hexdigest()
    assert frame.data is frame.data  # converted once
    np.testing.assert_array_equal(frame.data, fits.getdata(path).astype(np.float32))
    again = pickle.loads(pickle.dumps(fitsio.read_frame(path, max_bytes=MAX_BYTES)))
    np.testing.assert_array_equal(again.data, data)


def test_a_read_frame_parses_its_header_once_unless_the_file_changed(tmp_path, monkeypatch):
    path, data = _image(tmp_path, OBJECT="first")
    parsed = []
    parse = fitsio._parse_header
    monkeypatch.setattr(fitsio, "_parse_header", lambda *a: parsed.append(1) or parse(*a))
    frame = fitsio.read_frame(path, max_bytes=MAX_BYTES)
    assert frame.header["OBJECT"] == "first" and len(parsed) == 1  # the probe's
    # the file rewritten (same size, another header) between the probe and the read
    probed = fitsio._probe(path, max_bytes=MAX_BYTES)
    fits.PrimaryHDU(data, fits.Header({"OBJECT": "other", "EXPTIME": 10.0})).writeto(
        path, overwrite=True
    )
    assert path.stat().st_size == probed[0].file_size
    monkeypatch.setattr(fitsio, "_probe", lambda *a, **k: probed)
    frame = fitsio.read_frame(path, max_bytes=MAX_BYTES)
    assert frame.header["OBJECT"] == "other"
    assert frame.checksum == hashlib.sha1(path.read_bytes()).hexdigest()


def test_exptime_as_string_is_accepted(tmp_path, freeze):
    path, _ = _image(tmp_path, EXPTIME="30.0")
    freeze(path)
    info = classify(fitsio.probe(path, max_bytes=MAX_BYTES).header, path)
    assert info.exptime == 30.0


def test_bad_exptime_is_rejected(tmp_path, freeze):
    path, _ = _image(tmp_path, EXPTIME="thirty")
    freeze(path)
    with pytest.raises(FrameRejected, match="EXPTIME"):
        classify(fitsio.probe(path, max_bytes=MAX_BYTES).header, path)


def test_light_without_filter_and_lower_case_filter(tmp_path, freeze):
    none, _ = _image(tmp_path, "nofilter.fits")
    lower, _ = _image(tmp_path, "lower.fits", FILTER="r")
    freeze(none, lower)
    header = fitsio.probe(none, max_bytes=MAX_BYTES).header.copy()
    del header["FILTER"]
    assert classify(header, none).filter is None
    assert classify(fitsio.probe(lower, max_bytes=MAX_BYTES).header, lower).filter == "R"


def test_clean_header_makes_writing_safe(tmp_path, freeze):
    path, _ = _image(tmp_path)
    freeze(path)
    raw = fitsio.read_frame(path, max_bytes=MAX_BYTES)
    clean = fitsio.clean_header(raw.header)
    assert "BZERO" not in clean and "NAXIS1" not in clean and clean["FILTER"] == "V"
    out = fitsio.write_fits_atomic(
        tmp_path / "out" / "copy.fits", fits.HDUList([fits.PrimaryHDU(raw.data, clean)])
    )
    assert fits.getheader(out)["BITPIX"] == -32
    assert not list((tmp_path / "out").glob(".*tmp"))
    assert_valid(out)


def test_settled_card_settings_read_the_same_values(monkeypatch):
    from astropy.io.fits import card as fits_card

    real = fits_card.conf
    monkeypatch.setattr(fits_card, "conf", real)  # restored after the test
    image = "OBJECT  = 'pg2213  '           / name with trailing blanks".ljust(80)
    before = fits.Card.fromstring(image).value
    with real.set_temp("strip_header_whitespace", False):
        settled = fitsio.settle_card_settings()
        assert settled == {"strip_header_whitespace": False,
                           "enable_record_valued_keyword_cards": True}  # fmt: skip
        assert fits.Card.fromstring(image).value == "pg2213  "  # as set when settled
    assert fits_card.conf.extension_name_case_sensitive == real.extension_name_case_sensitive
    assert fitsio.settle_card_settings()["strip_header_whitespace"] is True  # read again
    assert fits.Card.fromstring(image).value == before == "pg2213"
