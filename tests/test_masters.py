"""Master calibrations from synthetic SharpCap frames with known bias, dark current and flat."""

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from astropy.io import fits
from fitsverify import assert_valid

from reduxd import maskbits
from reduxd.config import Calibration, Camera
from reduxd.products.fitsout import read_master, write_master
from reduxd.steps import masters as M

SHAPE = (40, 56)
START = datetime(2024, 7, 2, 1, 0, tzinfo=UTC)
REQUIRED = (
    "RDXKIND",
    "FILTER",
    "EXPTIME",
    "NCOMBINE",
    "INSTRUME",
    "XBINNING",
    "YBINNING",
    "RDXSHAPE",
    "CCD-TEMP",
    "RDXFIRST",
    "RDXLAST",
    "RDXCOMB",
    "RDXVERS",
    "GAIN",
)


def write_sharpcap(path, data, *, frametyp, exptime, when, temp=-10.0, filt=None, gain=150):
    """Write a frame as SharpCap does: uint16 (BITPIX 16, BZERO 32768) and its header cards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = fits.Header()
    header["OBJECT"] = path.parent.parent.name
    header["GAIN"] = gain
    if filt is not None:
        header["FILTER"] = filt
    header["DATE-OBS"] = when.strftime("%Y-%m-%dT%H:%M:%S.%f0")
    header["SWCREATE"] = "SharpCap v4.0.9571.0, 64 bit"
    header["FRAMETYP"] = frametyp
    header["CCD-TEMP"] = temp
    header["XBINNING"] = 1
    header["BLKLEVEL"] = 0
    header["EXPTIME"] = exptime
    header["YBINNING"] = 1
    header["INSTRUME"] = "ZWO ASI432MM"
    raw = np.clip(np.round(data), 0, 65535).astype(np.uint16)
    fits.PrimaryHDU(raw, header).writeto(path)
    return raw


class Truth:
    """A camera with known bias, dark current (with hot pixels) and flat (with dead pixels)."""

    def __init__(self, shape=SHAPE, seed=3):
        self.rng = np.random.default_rng(seed)
        ny, nx = shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        self.shape = shape
        self.bias = 500.0 + 0.5 * xx + self.rng.normal(0, 4, shape)
        self.dark_current = np.full(shape, 2.0) + self.rng.normal(0, 0.05, shape)
        self.hot = [(3, 4), (20, 30), (35, 50)]
        for y, x in self.hot:
            self.dark_current[y, x] = 600.0
        r2 = ((yy - ny / 2) ** 2 + (xx - nx / 2) ** 2) / (nx / 2) ** 2
        self.flat = (1.0 - 0.25 * r2) * (1 + self.rng.normal(0, 0.01, shape))
        self.dead = [(10, 10), (30, 5)]
        for y, x in self.dead:
            self.flat[y, x] = 0.05
        self.read_noise = 3.0

    def frame(self, *, signal=0.0, exptime=0.0):
        """Raw counts L = (eps * I + T) * t + B, with Poisson and read noise (gain 1 e-/ADU)."""
        mean = (self.flat * signal + self.dark_current) * exptime + self.bias
        electrons = self.rng.poisson(np.clip(mean - self.bias, 0, None)).astype(float)
        return electrons + self.bias + self.rng.normal(0, self.read_noise, self.shape)


def write_set(root, truth, kind, count, *, exptimes, signal=0.0, filt=None, temp=-10.0):
    folder = {
        "Bias": "calibration/bias/bias_",
        "Dark": f"calibration/darks/darks_{exptimes[0]:g}",
        "Flat": f"calibration/flats/flat_{(filt or '').lower()}_",
    }[kind]
    paths, raws = [], []
    for i in range(count):
        t = exptimes[i % len(exptimes)]
        path = root / folder / "21_00_00" / f"{kind.lower()}_{i + 1:05d}.fits"
        when = START + timedelta(minutes=i)
        raws.append(
            write_sharpcap(
                path,
                truth.frame(signal=signal, exptime=t),
                frametyp=kind,
                exptime=t,
                when=when,
                temp=temp + 0.1 * i,
                filt=filt,
            )
        )
        paths.append(path)
    return paths, np.array(raws, dtype=np.float64)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharpcap")
    truth = Truth()
    sets = {
        "bias": write_set(root, truth, "Bias", 7, exptimes=[0.0]),
        "dark": write_set(root, truth, "Dark", 7, exptimes=[15.0]),
        "flat": write_set(
            root, truth, "Flat", 7, exptimes=[2.0, 2.5, 3.0], signal=8000.0, filt="v"
        ),
    }
    frames = {k: M.load_frames(paths, max_bytes=10**8) for k, (paths, _) in sets.items()}
    return root, truth, sets, frames


def _cards(result):
    return {key: value for key, value, _ in result.cards if key != "HISTORY"}


def test_bias_is_the_median(night):
    _, _, sets, frames = night
    bias = M.make_bias(frames["bias"])
    np.testing.assert_array_equal(bias.data, np.median(sets["bias"][1], axis=0))
    assert bias.data.dtype == np.float32
    cards = _cards(bias)
    assert all(len(key) <= 8 and key == key.upper() for key, _, _ in bias.cards)
    assert set(REQUIRED) <= set(cards)
    assert cards["RDXKIND"] == "bias" and cards["NCOMBINE"] == 7 and cards["FILTER"] == ""
    assert cards["CCD-TEMP"] == pytest.approx(-10.0 + 0.3)
    assert cards["RDXFIRST"].startswith("2024-07-02T01:00:00")
    assert cards["RDXLAST"].startswith("2024-07-02T01:06:00")
    assert (cards["GAIN"], cards["INSTRUME"], cards["RDXCOMB"]) == (150.0, "ZWO ASI432MM", "median")


def test_inputs_are_named_with_checksums(night):
    _, _, sets, frames = night
    bias = M.make_bias(frames["bias"])
    paths = sets["bias"][0]
    assert [f.name for f in bias.inputs] == [p.name for p in paths]
    assert [f.sha1 for f in bias.inputs] == [
        hashlib.sha1(p.read_bytes()).hexdigest() for p in paths
    ]
    history = [value for key, value, _ in bias.cards if key == "HISTORY"]
    assert any(paths[0].name in line and bias.inputs[0].sha1 in line for line in history)
    table = bias.inputs_table()
    assert list(table["name"]) == [p.name for p in paths]


def test_dark_and_dark_current(night):
    _, truth, sets, frames = night
    bias = M.make_bias(frames["bias"])
    dark = M.make_dark(frames["dark"])
    np.testing.assert_array_equal(dark.data, np.median(sets["dark"][1], axis=0))
    dc = M.make_dark_current(dark, bias)
    expected = (np.median(sets["dark"][1], axis=0) - np.median(sets["bias"][1], axis=0)) / 15.0
    np.testing.assert_allclose(dc.data, expected, rtol=1e-5, atol=1e-5)
    assert _cards(dc)["RDXKIND"] == "dark_current" and _cards(dc)["BUNIT"] == "adu/s"
    # within the noise of 7 frames, the truth
    assert abs(np.median(dc.data - truth.dark_current)) < 0.1
    for y, x in truth.hot:
        assert dc.data[y, x] == pytest.approx(600.0, rel=0.05)
    assert dc.ncombine == 14


def test_flat_subtracts_a_scaled_dark_frame_by_frame(night):
    _, truth, sets, frames = night
    bias = M.make_bias(frames["bias"])
    dark = M.make_dark(frames["dark"])
    dc = M.make_dark_current(dark, bias)
    flat = M.make_flat(frames["flat"], dark=dark, bias=bias, dark_current=dc)
    times = [info.exptime for info, _ in frames["flat"]]
    subtracted = [
        raw - bias.data - dc.data * t for raw, t in zip(sets["flat"][1], times, strict=True)
    ]
    combined = np.median([s / np.median(s) for s in subtracted], axis=0)  # scaled (default)
    np.testing.assert_allclose(flat.data, combined / np.median(combined), rtol=2e-6, atol=2e-6)
    assert np.median(flat.data) == pytest.approx(1.0)
    cards = _cards(flat)
    assert (cards["RDXKIND"], cards["FILTER"], cards["RDXFSUB"]) == (
        "flat",
        "V",
        "bias+dark_current*t",
    )
    assert cards["EXPTIME"] == pytest.approx(np.mean(times))
    # the dark current (hot pixels!) is gone: the flat follows the truth
    ratio = flat.data / (truth.flat / np.median(truth.flat))
    good = np.ones(SHAPE, bool)
    for y, x in truth.dead:
        good[y, x] = False
    assert np.abs(ratio[good] - 1).max() < 0.06
    for y, x in truth.hot:
        assert abs(ratio[y, x] - 1) < 0.06


def test_flat_without_dark_current_is_wrong_at_hot_pixels(night):
    """The same check fails when the dark current is not removed: the test can fail."""
    _, truth, _, frames = night
    bias = M.make_bias(frames["bias"])
    flat = M.make_flat(frames["flat"], bias=bias)
    assert _cards(flat)["RDXFSUB"] == "bias"
    ratio = flat.data / (truth.flat / np.median(truth.flat))
    assert max(abs(ratio[y, x] - 1) for y, x in truth.hot) > 0.06


def test_flat_with_exact_dark_and_median_scaling(tmp_path):
    truth = Truth(seed=5)
    paths, _ = write_set(tmp_path, truth, "Dark", 5, exptimes=[3.0])
    dark = M.make_dark(M.load_frames(paths, max_bytes=10**8))
    flat_paths = []
    for i, level in enumerate((4000.0, 8000.0, 12000.0)):  # twilight: each flat brighter
        p, _ = write_set(
            tmp_path / f"l{i}", truth, "Flat", 1, exptimes=[3.0], signal=level, filt="R"
        )
        flat_paths += p
    frames = M.load_frames(flat_paths, max_bytes=10**8)
    flat = M.make_flat(frames, dark=dark, flat_scale="median")
    assert _cards(flat)["RDXFSUB"] == "dark" and _cards(flat)["RDXFSCAL"] == "median"
    ratio = flat.data / (truth.flat / np.median(truth.flat))
    assert np.abs(np.median(ratio) - 1) < 0.01
    with pytest.raises(ValueError, match="flat_scale"):
        M.make_flat(frames, flat_scale="mode")


def test_sigma_clip_master(night):
    _, _, sets, frames = night
    bias = M.make_bias(frames["bias"], method="sigma_clip", clip_sigma=3.0)
    assert _cards(bias)["RDXCOMB"] == "sigma_clip" and _cards(bias)["RDXCLIP"] == 3.0
    assert np.abs(bias.data - sets["bias"][1].mean(axis=0)).max() < 10


def test_dark_current_of_sigma_clipped_darks_says_how_they_were_combined(night):
    _, _, _, frames = night
    bias = M.make_bias(frames["bias"], method="sigma_clip", clip_sigma=2.5)
    dark = M.make_dark(frames["dark"][:3], method="sigma_clip", clip_sigma=2.5)
    current = _cards(M.make_dark_current(dark, bias))
    assert current["RDXCOMB"] == "sigma_clip" and current["RDXCLIP"] == 2.5


def test_mixed_sets_are_refused(night, tmp_path):
    _, truth, _, frames = night
    with pytest.raises(ValueError, match="not bias"):
        M.make_bias(frames["bias"] + frames["dark"][:1])
    other, _ = write_set(tmp_path, truth, "Dark", 2, exptimes=[30.0])
    with pytest.raises(ValueError, match="differ"):
        M.make_dark(frames["dark"] + M.load_frames(other, max_bytes=10**8))
    with pytest.raises(ValueError, match=r"more than 0\.2 C"):
        M.make_dark(frames["dark"], temperature_tolerance=0.2)
    with pytest.raises(ValueError, match="no bias"):
        M.make_bias([])


def test_calibration_groups(night, tmp_path):
    _, truth, _, frames = night
    warm, _ = write_set(tmp_path, truth, "Dark", 2, exptimes=[15.0], temp=5.0)
    everything = [f for group in frames.values() for f in group]
    everything += M.load_frames(warm, max_bytes=10**8)
    groups = M.calibration_groups(everything, temperature_tolerance=3.0)
    sizes = sorted((g[0][0].kind, len(g)) for g in groups)
    assert sizes == [("bias", 7), ("dark", 2), ("dark", 7), ("flat", 7)]


def test_bad_pixel_mask_finds_hot_and_dead_pixels(night):
    _, truth, _, frames = night
    bias = M.make_bias(frames["bias"])
    dc = M.make_dark_current(M.make_dark(frames["dark"]), bias)
    flat = M.make_flat(frames["flat"], bias=bias, dark_current=dc)
    mask = M.bad_pixel_mask(dark_current=dc, flat=flat, hot_sigma=10.0, low_flat=0.5)
    assert mask.dtype == np.uint8
    assert set(zip(*np.nonzero(mask), strict=True)) == set(truth.hot) | set(truth.dead)
    assert set(np.unique(mask)) == {0, maskbits.BAD}
    with pytest.raises(ValueError):
        M.bad_pixel_mask(hot_sigma=10.0, low_flat=0.5)


def test_warm_pixels_removed_by_the_dark_are_not_bad_by_default(night):
    """Default hot_sigma = 0: only dead/low-flat (and non-finite) pixels are bad."""
    _, truth, _, frames = night
    bias = M.make_bias(frames["bias"])
    dc = M.make_dark_current(M.make_dark(frames["dark"]), bias)
    flat = M.make_flat(frames["flat"], bias=bias, dark_current=dc)
    hot_sigma = Calibration().hot_sigma
    mask = M.bad_pixel_mask(dark_current=dc, flat=flat, hot_sigma=hot_sigma, low_flat=0.5)
    assert set(zip(*np.nonzero(mask), strict=True)) == set(truth.dead)
    assert not any(mask[p] for p in truth.hot)


def test_saturation_level():
    header = fits.Header({"BITPIX": 16, "BZERO": 32768, "BSCALE": 1})
    assert M.saturation_level(header, None) == 65535.0
    assert M.saturation_level(header, Camera(saturation_adu=60000.0)) == 60000.0
    assert M.saturation_level(fits.Header({"BITPIX": 8})) == 255.0
    assert M.saturation_level(fits.Header({"BITPIX": -32})) == np.inf
    assert M.saturation_level(fits.Header({"ZBITPIX": 16, "BITPIX": 8, "ZZERO": 32768})) == 65535


def test_check_master(night):
    _, _, _, frames = night
    bias = M.make_bias(frames["bias"])
    assert M.check_master(bias, None, max_deviation=0.5)[0]
    assert M.check_master(bias, bias, max_deviation=0.5)[0]
    doubled = M.MasterResult(**{**bias.__dict__, "data": bias.data * 3})
    ok, reason = M.check_master(doubled, bias, max_deviation=0.5)
    assert not ok and "bias median" in reason
    dark = M.make_dark(frames["dark"])
    assert not M.check_master(dark, bias, max_deviation=0.5)[0]
    flat = M.make_flat(frames["flat"], bias=bias)
    assert M.check_master(flat, flat, max_deviation=0.1)[0]
    ramp = np.linspace(0.2, 2.0, flat.data.size, dtype=np.float32).reshape(flat.data.shape)
    assert not M.check_master(
        M.MasterResult(**{**flat.__dict__, "data": ramp}), flat, max_deviation=0.1
    )[0]


def test_write_and_read_master(night, tmp_path):
    _, _, _, frames = night
    bias = M.make_bias(frames["bias"])
    dark = M.make_dark(frames["dark"])
    dc = M.make_dark_current(dark, bias)
    paths = []
    for result in (bias, dark, dc, M.make_flat(frames["flat"], bias=bias, dark_current=dc)):
        path = write_master(tmp_path / "masters" / f"{result.kind}.fits", result)
        paths.append(path)
        with fits.open(path) as hdul:
            assert hdul[0].header["BITPIX"] == -32 and "BZERO" not in hdul[0].header
            assert hdul[0].header["RDXKIND"] == result.kind
            assert list(hdul["INPUTS"].data["sha1"]) == [f.sha1 for f in result.inputs]
        back = read_master(path, max_bytes=10**8)
        np.testing.assert_array_equal(back.data, result.data)
        assert (back.kind, back.exptime, back.filter, back.gain) == (
            result.kind,
            result.exptime,
            result.filter,
            result.gain,
        )
        assert back.date_start == result.date_start.replace(microsecond=0)
        assert back.inputs == result.inputs
        assert back.checksum == hashlib.sha1(path.read_bytes()).hexdigest()
        record = back.record(path, checksum=back.checksum, utc_offset_hours=-5.0)
        assert (record.night, record.ncombine, record.shape) == (
            "2024-07-01",
            result.ncombine,
            SHAPE,
        )
    for path in paths:
        assert_valid(path)


def test_raw_frames_are_not_changed(night):
    root, _, _, frames = night
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*.fits")}
    bias = M.make_bias(frames["bias"])
    M.make_flat(frames["flat"], bias=bias, flat_scale="median")
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*.fits")}
    assert after == before
