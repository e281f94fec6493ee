"""Photometry on real frames (skipped when the shared test data are absent).

Raw frames are used as they are (no calibration); the SATURATED mask bit is
set where the raw value is 65535, as the calibration engine would.
"""

import numpy as np
import pytest
from astropy.io import fits

from reduxd import maskbits
from reduxd.steps.measure import Flag
from reduxd.steps.photometry import PhotParams, photometer


def load(path):
    data = fits.getdata(path).astype(np.float32)
    return data, np.where(data >= 65535, maskbits.SATURATED, 0).astype(np.uint8)


# The real stars of blaze_v_15s_00001 (x, y), and some of its hot pixels (65000 ADU
# single pixels, 80+ of them: DAOStarFinder at 5 sigma reports them as stars).
BLAZE_STARS = [(782.3, 362.9), (274.9, 734.5), (900.8, 995.5), (233.3, 306.6), (653.6, 1033.3)]
BLAZE_HOT = [
    (1128, 784),
    (149, 247),
    (1093, 657),
    (1158, 699),
    (740, 851),
    (1100, 855),
    (484, 798),
    (1442, 683),
    (1034, 94),
    (392, 60),
]


def near(table, x, y, radius):
    return np.hypot(np.asarray(table["x"]) - x, np.asarray(table["y"]) - y) < radius


def test_blaze_stars_measured_and_hot_pixels_ignored(umbc_dir):
    data, mask = load(umbc_dir / "blaze_v_15s_00001.fits")
    result = photometer(data, mask=mask, exptime=15.0, params=PhotParams(sky_method="radial"))
    table = result.table
    for x, y in BLAZE_STARS:
        row = near(table, x, y, 2.0)
        assert row.sum() == 1, (x, y)
        assert np.isfinite(table["mag_inst"][row][0])
    for x, y in BLAZE_HOT:
        assert not near(table, x, y, 3.0).any(), (x, y)
    # ~7 stars stand 5 sigma above this frame's (correlated) noise; nothing else may
    assert len(table) <= 12
    assert 9.0 < result.fwhm < 14.0


@pytest.mark.parametrize("frame", ["theta_herc_00001", "theta_herc_00002", "theta_herc_00003"])
def test_theta_herc_text_is_not_a_star_and_the_defocused_star_is_measured(umbc_dir, frame):
    data, mask = load(umbc_dir / f"{frame}.fits")
    for m in (mask, None):
        table = photometer(data, mask=m, exptime=2.0, params=PhotParams(sky_method="radial")).table
        assert not np.any((np.asarray(table["y"]) < 20) & (np.asarray(table["x"]) < 200))
        donut = near(table, 583.0, 191.0, 5.0)
        assert donut.sum() == 1
        row = table[donut][0]
        assert np.isfinite(row["mag_inst"]) and row["snr"] > 100
        assert row["fwhm"] > 15.0  # defocused: measured with its large FWHM


def test_xo1_sequence_keeps_star_ids_despite_the_drift(arcsat_dir):
    files = sorted(arcsat_dir.glob("XO1-b_z_*.fits"))
    assert len(files) == 6
    # offsets of frames 2..6 from frame 1 by cross-correlation (median-filtered frames)
    expected = [(9, -10), (-11, -8), (8, -15), (15, -24), (25, -38)]
    params = PhotParams(sky_method="radial")
    reference, seen = None, {}
    for k, path in enumerate(files):
        data, mask = load(path)
        result = photometer(data, mask=mask, exptime=60.0, params=params, reference=reference)
        if k:
            assert result.offset == pytest.approx(expected[k - 1], abs=1.5)
        table = result.table
        assert len(table) >= 25
        good = np.asarray(table["snr"]) > 10
        for sid, x, y in zip(
            table["star_id"][good], table["x"][good], table["y"][good], strict=True
        ):
            # a star's position minus the frame's offset is the same in every frame
            seen.setdefault(int(sid), []).append((x - result.offset[0], y - result.offset[1]))
        reference = result.reference
    tracked = {sid: np.array(p) for sid, p in seen.items() if len(p) >= 2}
    assert len(tracked) >= 10
    for sid, positions in tracked.items():
        spread = np.hypot(*(positions - np.median(positions, axis=0)).T)
        assert spread.max() < 1.0, (sid, positions)
    assert sum(len(p) == 6 for p in tracked.values()) >= 8


def test_xo1_flags_and_header_cards(arcsat_dir):
    data, mask = load(next(iter(sorted(arcsat_dir.glob("XO1-b_z_*.fits")))))
    result = photometer(
        data, mask=mask, exptime=60.0, params=PhotParams(radius_fwhm=3.0, sky_method="radial")
    )
    cards = {key: value for key, value, _ in result.cards}
    assert cards["PHOTSKY"] == "radial"
    assert cards["PHOTRAD"] == pytest.approx(3.0 * result.fwhm, rel=1e-3)
    assert result.radius == pytest.approx(3.0 * result.fwhm)
    assert all(len(key) <= 8 and key.isupper() for key, _, _ in result.cards)
    flags = np.asarray(result.table["flags"])
    assert np.all(flags < 256)
    assert np.any(flags & Flag.SKY_FIT_REJECTED) and np.any(flags == 0)
