"""Calibrating lights: synthetic SharpCap night with known truth; selection and policy."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from astropy.io import fits
from fitsverify import assert_valid

from reduxd import fitsio, maskbits
from reduxd.config import Calibration
from reduxd.errors import MissingCalibration
from reduxd.frames import FrameInfo
from reduxd.products.fitsout import read_master, write_calibrated, write_master
from reduxd.steps import masters as M
from reduxd.steps.calibrate import calibrate_light
from reduxd.steps.select import MasterRecord, calibration_plan, select_master
from reduxd.synth import render_stars

SHAPE = (64, 80)
NIGHT = datetime(2024, 7, 2, 1, 0, tzinfo=UTC)  # evening of 2024-07-01 at UTC-5
MAX_BYTES = 10**8


class Camera:
    """Known bias, dark current, flat; raw = (eps * I + T) * t + B + noise (gain 1 e-/ADU)."""

    read_noise = 3.0

    def __init__(self, seed=11):
        self.rng = np.random.default_rng(seed)
        ny, nx = SHAPE
        yy, xx = np.mgrid[0:ny, 0:nx]
        self.bias = 300.0 + 0.3 * yy + self.rng.normal(0, 3, SHAPE)
        self.dark_current = 1.5 + self.rng.exponential(0.2, SHAPE)
        self.dark_current[7, 9] = self.dark_current[40, 60] = 400.0  # hot pixels
        self.flat = (1.0 - 0.3 * ((xx - nx / 2) ** 2 + (yy - ny / 2) ** 2) / (nx / 2) ** 2) * (
            1 + self.rng.normal(0, 0.02, SHAPE)
        )
        self.flat[20, 20] = 0.02  # dead
        stars = render_stars(SHAPE, [20.3, 55.7, 60.1], [30.2, 12.9, 50.5], [1e3, 3e3, 8e3], 3.0)
        self.sky_stars = 40.0 + stars  # I, counts per second before the flat

    def raw(self, *, signal, exptime):
        mean = (self.flat * signal + self.dark_current) * exptime
        counts = self.rng.poisson(np.clip(mean, 0, None)) + self.bias
        return counts + self.rng.normal(0, self.read_noise, SHAPE)


def write_sharpcap(path, data, *, frametyp, exptime, minute, filt=None, temp=-10.0):
    """A SharpCap frame: uint16 stored as BITPIX 16 + BZERO 32768, SharpCap's header cards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    when = NIGHT + timedelta(minutes=minute)
    header = fits.Header()
    for key, value in [
        ("OBJECT", path.parent.parent.name),
        ("GAIN", 150),
        ("FILTER", filt),
        ("DATE-OBS", when.strftime("%Y-%m-%dT%H:%M:%S.%f0")),
        ("SWCREATE", "SharpCap v4.0.9571.0, 64 bit"),
        ("FRAMETYP", frametyp),
        ("CCD-TEMP", temp),
        ("XBINNING", 1),
        ("BLKLEVEL", 0),
        ("EXPTIME", exptime),
        ("YBINNING", 1),
        ("INSTRUME", "ZWO ASI432MM"),
    ]:
        if value is not None:
            header[key] = value
    fits.PrimaryHDU(np.clip(np.round(data), 0, 65535).astype(np.uint16), header).writeto(path)
    return path


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Write the night in SharpCap's layout and build every master from it."""
    root = tmp_path_factory.mktemp("night")
    cam = Camera()
    paths = []
    for i in range(9):
        paths.append(
            write_sharpcap(
                root / f"calibration/bias/bias_/21_00_00/bias_{i:05d}.fits",
                cam.raw(signal=0, exptime=0),
                frametyp="Bias",
                exptime=0.0,
                minute=i,
            )
        )
        for t in (15.0, 60.0):
            folder = root / f"calibration/darks/darks_{t:g}/21_10_00"
            paths.append(
                write_sharpcap(
                    folder / f"dark_{i:05d}.fits",
                    cam.raw(signal=0, exptime=t),
                    frametyp="Dark",
                    exptime=t,
                    minute=10 + i,
                )
            )
        t = (2.0, 2.5, 3.0)[i % 3]
        paths.append(
            write_sharpcap(
                root / f"calibration/flats/flat_v_/21_30_00/flat_{i:05d}.fits",
                cam.raw(signal=9000.0, exptime=t),
                frametyp="Flat",
                exptime=t,
                minute=30 + i,
                filt="V",
            )
        )
    frames = M.load_frames(paths, max_bytes=MAX_BYTES)
    made = {}
    for group in M.calibration_groups(frames, temperature_tolerance=3.0):
        info = group[0][0]
        if info.kind == "bias":
            made["bias"] = M.make_bias(group)
        elif info.kind == "dark":
            made[f"dark{info.exptime:g}"] = M.make_dark(group)
    made["dark_current"] = M.make_dark_current(made["dark15"], made["bias"])
    made["flat"] = M.make_flat(
        [g for g in frames if g[0].kind == "flat"],
        bias=made["bias"],
        dark_current=made["dark_current"],
    )
    masters = {}
    for name, result in made.items():
        path = write_master(root / "analysis/masters" / f"{name}.fits", result)
        masters[name] = read_master(path, max_bytes=MAX_BYTES)
    records = [m.record(m.path, checksum=m.checksum, utc_offset_hours=-5) for m in masters.values()]
    return root, cam, masters, records


def _light(root, cam, *, exptime, filt="V", minute=60, name="target"):
    path = root / f"{name}/{name}_{filt}_/22_00_00/{name}_{exptime:g}s_00001.fits"
    write_sharpcap(
        path,
        cam.raw(signal=cam.sky_stars, exptime=exptime),
        frametyp="Light",
        exptime=exptime,
        minute=minute,
        filt=filt,
    )
    ((info, _),) = M.load_frames([path], max_bytes=MAX_BYTES)
    return info, fitsio.read_frame(path, max_bytes=MAX_BYTES)


def _apply(plan, masters, raw, info, **kw):
    used = {
        "exact": {"dark": plan.dark},
        "scaled": {"bias": plan.bias, "dark_current": plan.dark_current},
        "bias": {"bias": plan.bias},
    }
    arrays = {}
    for name, record in used.get(plan.dark_mode, {}).items():
        arrays[name] = next(m for m in masters.values() if m.path == record.path)
    if plan.flat is not None:
        arrays["flat"] = next(m for m in masters.values() if m.path == plan.flat.path)
    return calibrate_light(
        raw.data,
        info,
        **arrays,
        saturation=M.saturation_level(raw.header),
        sources=plan.sources(),
        **kw,
    )


def _pulls(cal, cam, exptime, mask):
    """Residuals against the truth in units of the expected noise, unmasked pixels only.

    The master flat is normalised to median 1, so the truth is ``I * t * median(eps)``.
    """
    level = np.median(cam.flat)
    truth = cam.sky_stars * exptime * level
    variance = cam.flat * cam.sky_stars * exptime + cam.dark_current * exptime + cam.read_noise**2
    pulls = (cal - truth) / (np.sqrt(variance * 1.2) / cam.flat * level)  # masters add ~20 %
    return pulls[mask == 0]


@pytest.mark.parametrize(("exptime", "mode"), [(15.0, "exact"), (60.0, "exact"), (25.0, "scaled")])
def test_calibrated_light_equals_truth_within_noise(night, tmp_path, exptime, mode):
    root, cam, masters, records = night
    info, raw = _light(root, cam, exptime=exptime)
    before = raw.data.copy()
    plan = calibration_plan(records, info, Calibration(), utc_offset_hours=-5)
    assert (plan.dark_mode, plan.ok, plan.missing) == (mode, True, ())
    bpm = M.bad_pixel_mask(
        dark_current=masters["dark_current"], flat=masters["flat"], hot_sigma=10.0, low_flat=0.5
    )
    cal = _apply(plan, masters, raw, info, bad_pixels=bpm)
    np.testing.assert_array_equal(raw.data, before)  # the raw frame is not modified
    assert cal.data.dtype == np.float32 and cal.mask.dtype == np.uint8
    pulls = _pulls(cal.data, cam, exptime, cal.mask)
    assert abs(pulls.mean()) < 0.1
    assert 0.7 < pulls.std() < 1.2
    assert np.abs(pulls).max() < 6
    assert cal.mask[7, 9] & maskbits.BAD and cal.mask[20, 20] & maskbits.BAD
    # the uncalibrated frame fails the same check (the test can fail)
    assert abs(_pulls(raw.data, cam, exptime, cal.mask).mean()) > 1
    cards = dict((k, v) for k, v, _ in cal.cards if k != "HISTORY")
    assert cards["RDXDSCAL"] is (mode == "scaled") and cards["RDXDMODE"] == mode
    out = write_calibrated(tmp_path / "reduced" / "light.fits", cal, raw.header)
    with fits.open(out) as hdul:
        header = hdul[0].header
        assert header["BITPIX"] == -32 and "BZERO" not in header and "BSCALE" not in header
        assert header["FRAMETYP"] == "Light" and header["RDXDMODE"] == mode
        assert header["RDXFLAT"] == "flat.fits" and header["RDXFLATC"] == masters["flat"].checksum
        dark_key = "RDXDARK" if mode == "exact" else "RDXDCUR"
        assert dark_key in header
        assert any("flat" in line for line in header["HISTORY"])
        assert hdul["MASK"].header["BITPIX"] == 8
        np.testing.assert_array_equal(hdul["MASK"].data, cal.mask)
        np.testing.assert_array_equal(hdul[0].data, cal.data)
    assert_valid(out)


def test_masters_pass_fitsverify(night):
    _, _, masters, _ = night
    for master in masters.values():
        assert_valid(master.path)


def test_saturated_and_nonfinite_pixels_are_flagged(night):
    root, cam, masters, _ = night
    info, raw = _light(root, cam, exptime=15.0, name="bright")
    data = raw.data.copy()
    data[3, 3] = 65535.0
    flat = masters["flat"].data.copy()
    flat[5, 5] = 0.0
    cal = calibrate_light(data, info, dark=masters["dark15"], flat=flat, saturation=65535.0)
    assert cal.mask[3, 3] == maskbits.SATURATED
    assert cal.mask[5, 5] == maskbits.NONFINITE
    assert np.count_nonzero(cal.mask) == 2


def test_missing_flat_is_refused_by_default(night):
    root, cam, masters, records = night
    info, raw = _light(root, cam, exptime=15.0, filt="B", name="blue")
    plan = calibration_plan(records, info, Calibration(), utc_offset_hours=-5)
    assert not plan.ok and plan.missing == ("flat",) and "filter B" in plan.reason
    with pytest.raises(MissingCalibration, match="no master flat for filter B"):
        calibrate_light(raw.data, info, dark=masters["dark15"], saturation=65535.0)
    forced = calibrate_light(raw.data, info, dark=masters["dark15"], saturation=65535.0, force=True)
    cards = dict((k, v) for k, v, _ in forced.cards if k != "HISTORY")
    assert cards["RDXFORCE"] is True and cards["RDXMISS"] == "flat"
    skipped = calibrate_light(
        raw.data, info, dark=masters["dark15"], saturation=65535.0, no_flat=True
    )
    cards = dict((k, v) for k, v, _ in skipped.cards if k != "HISTORY")
    assert cards["RDXSKIP"] == "flat" and cards["RDXFORCE"] is False
    np.testing.assert_allclose(skipped.data, raw.data - masters["dark15"].data)
    assert calibration_plan(records, info, Calibration(no_flat=True)).ok


def test_missing_dark_policy(night):
    root, cam, masters, records = night
    info, raw = _light(root, cam, exptime=15.0, name="nodark")
    no_darks = [r for r in records if r.kind not in ("dark", "dark_current")]
    plan = calibration_plan(no_darks, info, Calibration())
    assert (plan.ok, plan.missing, plan.dark_mode) == (False, ("dark",), "none")
    with pytest.raises(MissingCalibration, match=r"no master dark for 15\.0 s"):
        calibrate_light(
            raw.data, info, bias=masters["bias"], flat=masters["flat"], saturation=65535.0
        )
    plan = calibration_plan(no_darks, info, Calibration(force=True))
    assert (plan.ok, plan.dark_mode, plan.bias.kind) == (True, "bias", "bias")
    plan = calibration_plan(no_darks, info, Calibration(no_dark=True))
    assert (plan.ok, plan.skipped, plan.dark_mode) == (True, ("dark",), "bias")
    cal = calibrate_light(
        raw.data, info, bias=masters["bias"], flat=masters["flat"], saturation=65535.0, no_dark=True
    )
    cards = dict((k, v) for k, v, _ in cal.cards if k != "HISTORY")
    assert (cards["RDXDMODE"], cards["RDXSKIP"], cards["RDXDSCAL"]) == ("bias", "dark", False)


def test_masters_of_another_shape_are_refused(night):
    root, cam, masters, _ = night
    info, raw = _light(root, cam, exptime=15.0, name="shape")
    with pytest.raises(ValueError, match="shape"):
        calibrate_light(
            raw.data,
            info,
            dark=np.zeros((3, 3), np.float32),
            flat=masters["flat"],
            saturation=65535.0,
        )


# --- selection -------------------------------------------------------------------------


def _info(**kw):
    values = dict(
        path="l.fits",
        kind="light",
        kind_rule="default",
        filter="V",
        exptime=30.0,
        gain=150.0,
        offset=None,
        binning=(1, 1),
        shape=(10, 10),
        ccd_temp=-10.0,
        set_temp=None,
        instrument="cam",
        readout_mode=None,
        object=None,
        date_obs=datetime(2024, 7, 2, 3, 0, tzinfo=UTC),
        date_mid=None,
    )
    return FrameInfo(**{**values, **kw})


def _rec(path, kind="dark", *, days=0.0, **kw):
    when = datetime(2024, 7, 2, 1, 0, tzinfo=UTC) - timedelta(days=days)
    values = dict(
        kind=kind,
        path=path,
        checksum="x",
        instrument="cam",
        shape=(10, 10),
        binning=(1, 1),
        gain=150.0,
        exptime=30.0,
        filter=None,
        ccd_temp=-10.0,
        date_start=when,
        date_end=when,
        ncombine=5,
        night=(when - timedelta(hours=17)).date().isoformat(),
    )
    return MasterRecord(**{**values, **kw})


def _select(cands, kind="dark", info=None, **kw):
    args = dict(temperature_tolerance=3.0, max_age_days=30.0, utc_offset_hours=-5.0)
    found = select_master(cands, kind=kind, info=info or _info(), **{**args, **kw})
    return None if found is None else found.path


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("instrument", "other"),
        ("shape", (10, 11)),
        ("binning", (2, 2)),
        ("gain", 0.0),
        ("exptime", 60.0),
        ("ccd_temp", -5.0),
        ("kind", "bias"),
    ],
)
def test_select_refuses_a_mismatch(field, value):
    assert _select([_rec("good.fits")]) == "good.fits"
    assert _select([_rec("bad.fits", **{field: value})]) is None


def test_select_skips_temperature_check_when_unknown():
    assert _select([_rec("a.fits", ccd_temp=None)]) == "a.fits"
    assert _select([_rec("a.fits", ccd_temp=20.0)], info=_info(ccd_temp=None)) == "a.fits"


def test_select_prefers_tonight_then_nearest_within_max_age():
    cands = [_rec("old.fits", days=3), _rec("tonight.fits"), _rec("older.fits", days=10)]
    assert _select(cands) == "tonight.fits"
    assert _select(cands[::2]) == "old.fits"
    assert _select(cands[::2], max_age_days=2.0) is None
    later = _rec("tomorrow.fits", days=-1.5)
    assert _select([later, _rec("old.fits", days=3)]) == "tomorrow.fits"


def test_select_flat_by_filter_and_bias_for_any_exposure():
    flats = [_rec("r.fits", "flat", filter="R"), _rec("v.fits", "flat", filter="V")]
    assert _select(flats, "flat") == "v.fits"
    assert _select(flats, "flat", filter="R") == "r.fits"
    assert _select([_rec("b.fits", "bias", exptime=0.0)], "bias") == "b.fits"
    assert _select([_rec("d.fits", exptime=60.0)], exptime=60.0) == "d.fits"
