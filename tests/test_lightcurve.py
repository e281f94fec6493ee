"""Differential light curves on a synthetic field with known truth."""

import csv
import math
import os

import numpy as np
import pytest
from astropy.table import Table

from reduxd.errors import ReduxdError
from reduxd.products import lightcurve as lcmod
from reduxd.products.tables import NAMES, rows_to_table

N_FRAMES = 30
EXPTIME = 10.0
TARGET, VARIABLE, FLAGGED = 1, 7, 8
COMPS = [2, 3, 4, 5, 6]
DEPTH = 0.02
IN_TRANSIT = np.arange(N_FRAMES)[10:20]
# star_id: (count rate per s, x, y) on the first frame; stars >= 60 px apart
STARS = {
    1: (1.0e4, 100.0, 100.0),
    2: (2.0e4, 200.0, 100.0),
    3: (3.0e4, 300.0, 100.0),
    4: (4.0e4, 100.0, 200.0),
    5: (5.0e4, 200.0, 200.0),
    6: (6.0e4, 300.0, 200.0),
    7: (5.0e4, 100.0, 300.0),  # variable, as bright as the comparisons
    8: (8.0e4, 200.0, 300.0),  # brightest, but flagged in one frame
}
SKY_VAR = 2000.0  # counts^2 in the aperture besides the star's Poisson noise


def _signal(star, j):
    if star == TARGET and j in IN_TRANSIT:
        return DEPTH
    if star == VARIABLE:
        return 0.05 * math.sin(2 * math.pi * j / 12.0)
    return 0.0


def _airmass_trend(j):
    airmass = 1.0 + 0.8 * (j / (N_FRAMES - 1)) ** 2
    return 0.15 * (airmass - 1.0)  # mag, common to all stars


def _row(j, star, flux, flux_err, *, flags=0, current=1, version=1):
    _rate, x0, y0 = STARS[star]
    mjd = 60800.1 + j * 0.004
    row = dict.fromkeys(NAMES, 0)
    row.update(
        night="2025-06-01", file=f"lights/M 31_{j:03d}.fits", object="M 31", filter="V",
        exptime=EXPTIME, date_obs=f"2025-06-01T{2 + j // 10:02d}:{j % 10:02d}:00.000000",
        mjd=mjd, star_id=star, x=x0 + 0.7 * j, y=y0 - 0.4 * j, fwhm=3.0, sky=100.0,
        sky_err=1.0, flux=flux, flux_err=flux_err,
        mag_inst=-2.5 * math.log10(flux / EXPTIME) if flux > 0 else math.nan,
        mag_err=lcmod.MAG_ERR * flux_err / flux if flux > 0 else math.nan, snr=flux / flux_err,
        flags=flags, radius=10.0, calib="bias, dark, flat", version=version, current=current,
    )  # fmt: skip
    return row


def make_rows(seed=1, *, drop=()):
    """Rows of the synthetic field (shuffled, with superseded rows mixed in)."""
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(N_FRAMES):
        for star, (rate, _x, _y) in STARS.items():
            if (j, star) in drop:
                continue
            true = rate * EXPTIME * 10 ** (-0.4 * (_airmass_trend(j) + _signal(star, j)))
            err = math.sqrt(true + SKY_VAR)
            flags = 4 if (star == FLAGGED and j == 7) else 0
            rows.append(_row(j, star, true + rng.normal(0.0, err), err, flags=flags))
    # frame 3 was reduced twice: the first measurement (nonsense) is superseded
    for star in STARS:
        rows.append(_row(3, star, 1.0e3, 10.0, flags=1, current=0))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


@pytest.fixture(scope="module")
def table():
    return rows_to_table(make_rows())


def _weighted_chi2(value, err):
    w = 1.0 / err**2
    mean = np.sum(w * value) / np.sum(w)
    return float(np.sum(w * (value - mean) ** 2) / (len(value) - 1)), mean


def test_transit_depth_recovered_and_trend_removed(table):
    lc = lcmod.differential_lightcurve(table, target_id=TARGET, comparison_ids=COMPS)
    assert len(lc) == N_FRAMES
    assert np.all(np.diff(lc["mjd"]) > 0)
    assert np.all(lc["n_comp"] == len(COMPS))
    dmag, err = np.asarray(lc["dmag"]), np.asarray(lc["dmag_err"])
    inside = np.isin(np.arange(N_FRAMES), IN_TRANSIT)
    depth = dmag[inside].mean() - dmag[~inside].mean()
    sigma = math.sqrt(np.mean(err[inside] ** 2) / inside.sum() + np.mean(err[~inside] ** 2) / 20)
    assert sigma < DEPTH / 8
    assert abs(depth - DEPTH) < 4 * sigma

    # out of transit: flat within the errors (the 0.12 mag trend is gone) ...
    chi2, level = _weighted_chi2(dmag[~inside], err[~inside])
    assert 0.4 < chi2 < 2.0
    expected = -2.5 * math.log10(STARS[TARGET][0] / sum(STARS[c][0] for c in COMPS))
    assert abs(level - expected) < 4 * float(np.median(err)) / math.sqrt(20)
    # ... while the target's own magnitude carries it
    raw_chi2, _ = _weighted_chi2(
        np.asarray(lc["target_mag"])[~inside], np.asarray(lc["target_mag_err"])[~inside]
    )
    assert raw_chi2 > 100
    np.testing.assert_allclose(lc["dmag"], lc["target_mag"] - lc["ensemble_mag"], atol=1e-12)


def test_errors_match_the_noise_model(table):
    lc = lcmod.differential_lightcurve(table, target_id=TARGET, comparison_ids=COMPS)
    j = 0
    f_t = STARS[TARGET][0] * EXPTIME * 10 ** (-0.4 * _airmass_trend(j))
    f_c = [STARS[c][0] * EXPTIME * 10 ** (-0.4 * _airmass_trend(j)) for c in COMPS]
    t_err = lcmod.MAG_ERR * math.sqrt(f_t + SKY_VAR) / f_t
    e_err = lcmod.MAG_ERR * math.sqrt(sum(f + SKY_VAR for f in f_c)) / sum(f_c)
    assert lc["dmag_err"][j] == pytest.approx(math.hypot(t_err, e_err), rel=0.02)
    assert lc["dmag"].unit == "mag" and lc["mjd"].unit == "d"
    for name in ("dmag", "dmag_err", "target_mag", "ensemble_mag", "n_comp", "flags"):
        assert lc[name].description


def test_check_stars_flat_within_errors(table):
    lc = lcmod.differential_lightcurve(table, target_id=TARGET, comparison_ids=COMPS)
    chi2 = lcmod.flatness(lc)
    assert sorted(chi2) == COMPS
    for star, value in chi2.items():
        assert 0.35 < value < 2.2, (star, value)
    # a variable used as a comparison stands out (and spoils the others' ensembles)
    bad = lcmod.flatness(lcmod.check_stars(table, comparison_ids=[2, 3, 4, VARIABLE]))
    assert bad[VARIABLE] > 20
    assert bad[VARIABLE] == max(bad.values())


def test_automatic_comparisons_exclude_variable_and_target_keep_flagged_star(table):
    # star 8 is flagged in frame 7 only: it stays a member and drops out of that frame
    chosen = lcmod.choose_comparisons(table, target_id=TARGET, n=6)
    assert sorted(chosen) == sorted([*COMPS, FLAGGED])
    assert len(lcmod.choose_comparisons(table, target_id=TARGET, n=3)) == 3
    no_target = lcmod.choose_comparisons(table, target_id=None, n=8)
    assert VARIABLE not in no_target and TARGET in no_target
    assert 6 not in lcmod.choose_comparisons(table, target_id=TARGET, n=6, exclude=[6])
    lc = lcmod.build_lightcurve(table, target=[float(TARGET)])
    assert list(lc["n_comp"][6:9]) == [6, 5, 6]
    assert "noisy or variable" in lc.meta["dropped"][str(VARIABLE)]
    assert sorted(lc.meta["comparison_ids"]) == sorted([*COMPS, FLAGGED])
    assert sum(lc.meta["comparison_weights"]) == pytest.approx(1.0)


def _field(rates, *, errors=None, flags=None, signal=None, n_frames=40, seed=3):
    """Rows of a simple field: ``rates[s]`` counts per frame, relative errors, flags."""
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(n_frames):
        cloud = 10 ** (-0.4 * (0.3 if j % 7 == 3 else 0.0))
        for s, rate in rates.items():
            rel = (errors or {}).get(s, 0.005)
            extra = (signal or {}).get(s, lambda j: 0.0)(j)
            flux = rate * cloud * 10 ** (-0.4 * extra) * (1 + rng.normal(0, rel))
            row = _row(0, 1, flux, rel * flux, flags=(flags or {}).get((j, s), 0))
            row.update(file=f"f{j:03d}.fits", mjd=60800.0 + 0.003 * j, star_id=s,
                       x=50.0 * s, y=50.0, exptime=1.0)  # fmt: skip
            rows.append(row)
    return rows


def test_the_most_precise_star_is_not_rejected():
    # nine faint, noisy candidates and one bright precise star: the bright one is
    # the best comparison (the old test against the candidates' median dropped it)
    rates = {1: 1e5, **{s: 2e4 for s in range(2, 11)}, 11: 5e5}
    errors = {1: 0.002, **{s: 0.02 for s in range(2, 11)}, 11: 0.001}
    ens = lcmod.choose_comparisons(_field(rates, errors=errors), target_id=1, n=5)
    assert ens[0] == 11


def test_frame_with_every_comparison_flagged_is_not_nan():
    rates = {1: 1e5, 2: 1e5, 3: 2e5, 4: 1.5e5}
    flags = {(10, s): 32 for s in (2, 3, 4)}  # BLEND on all comparisons in frame 10
    lc = lcmod.build_lightcurve(_field(rates, flags=flags), target=[1.0])
    assert np.all(np.isfinite(lc["dmag"]))
    assert lc["n_comp"][10] == 3 and np.all(lc["n_comp"] == 3)


def test_saturated_and_sparse_candidates_are_dropped_with_reasons():
    rates = {1: 1e5, 2: 1e5, 3: 2e5, 4: 1.5e5, 5: 3e5, 6: 1.2e5}
    flags = {(4, 5): 1}  # star 5 saturated once: never a comparison
    flags.update({(j, 6): 2 for j in range(0, 40, 5)})  # NEAR_EDGE in 8 of 40 frames
    lc = lcmod.build_lightcurve(_field(rates, flags=flags), target=[1.0])
    assert sorted(lc.meta["comparison_ids"]) == [2, 3, 4]
    assert lc.meta["dropped"]["5"] == "saturated in 1 of 40 frames"
    assert lc.meta["dropped"]["6"].startswith("usable in 32 of 40 frames")
    assert "NEAR_EDGE in 8" in lc.meta["dropped"]["6"]


def test_aperture_chosen_from_the_comparisons():
    """Rows with three radii: the middle one is made the least noisy for the comparisons."""
    rows = _field({1: 1e5, 2: 1e5, 3: 2e5, 4: 1.5e5})
    rng = np.random.default_rng(5)
    for row in rows:
        noise = [0.02, 0.002, 0.01]
        if row["star_id"] == 1:
            noise = [0.001, 0.03, 0.001]  # the target would prefer another radius
        row["radius_ap"] = [2.0, 3.0, 4.0]
        row["flux_ap"] = [row["flux"] * (1 + rng.normal(0, n)) for n in noise]
        row["flux_err_ap"] = [row["flux"] * n for n in noise]
    lc = lcmod.build_lightcurve(lcmod.field_table(rows), target=[1.0])
    assert lc.meta["aperture"]["radius_px"] == 3.0
    assert np.all(lc["radius"] == 3.0)
    assert set(lc.meta["aperture"]["ensemble_scatter_by_radius"]) == {"2.00", "3.00", "4.00"}


def test_missing_comparison_keeps_ensemble_level():
    rows = make_rows(drop={(5, 3), (6, 3), (6, 6)})
    lc = lcmod.differential_lightcurve(rows, target_id=TARGET, comparison_ids=COMPS)
    assert list(lc["n_comp"][4:8]) == [5, 4, 3, 5]
    dmag, err = np.asarray(lc["dmag"]), np.asarray(lc["dmag_err"])
    out = np.setdiff1d(np.arange(N_FRAMES), np.r_[IN_TRANSIT, 5, 6])
    level = dmag[out].mean()
    # without the rescaling the level would jump by 2.5 log10(1 - 3/20) = 0.18 mag
    assert abs(dmag[5] - level) < 4 * err[5]
    assert abs(dmag[6] - level) < 4 * err[6]
    assert np.isfinite(lc["check_3"][4]) and np.isnan(lc["check_3"][5])


def test_missing_target_frame():
    rows = make_rows(drop={(12, TARGET)})
    lc = lcmod.differential_lightcurve(rows, target_id=TARGET, comparison_ids=COMPS)
    assert np.isnan(lc["dmag"][12]) and lc["flags"][12] == lcmod.MISSING
    assert np.isfinite(lc["dmag"][11])
    latest = lcmod.latest_target_mag(rows, TARGET)
    assert latest["file"].endswith(f"_{N_FRAMES - 1:03d}.fits")


def test_resolve_star(table):
    for star, (_rate, x, y) in STARS.items():
        assert lcmod.resolve_star(table, [x + 1.5, y - 1.0]) == star
        assert lcmod.resolve_star(table, [float(star)]) == star
    assert lcmod.resolve_star(table, 4) == 4
    # the position of star 4 on the LAST frame is 20 px away from it on the first one
    with pytest.raises(ReduxdError, match="no star within"):
        lcmod.resolve_star(table, [100.0 + 0.7 * 29, 200.0 - 0.4 * 29])
    with pytest.raises(ReduxdError, match="not in the photometry"):
        lcmod.resolve_star(table, [99])
    with pytest.raises(ReduxdError, match="integer"):
        lcmod.resolve_star(table, [2.5])


def test_superseded_rows_ignored_and_input_untouched(table):
    before = table.copy()
    lc = lcmod.differential_lightcurve(table, target_id=TARGET, comparison_ids=COMPS)
    assert np.all(lc["flags"] == 0)  # the superseded rows of frame 3 carry flags=1
    assert abs(lc["dmag"][3] - np.median(lc["dmag"][:10])) < 0.02
    assert len(table) == len(before)
    assert all(np.array_equal(table[c], before[c]) for c in ("flux", "current", "mag_inst"))
    # a list of dicts gives the same answer as the table
    lc2 = lcmod.differential_lightcurve(
        [dict(zip(table.colnames, r, strict=True)) for r in table.iterrows()],
        target_id=TARGET, comparison_ids=COMPS,
    )  # fmt: skip
    np.testing.assert_array_equal(lc["dmag"], lc2["dmag"])


def test_latest_target_mag(table):
    info = lcmod.latest_target_mag(table, TARGET, comparison_ids=COMPS)
    last = table[(table["star_id"] == TARGET) & (table["current"] == 1)]
    last = last[np.argmax(last["mjd"])]
    assert info["file"] == last["file"]
    assert info["mag"] == pytest.approx(-2.5 * math.log10(last["flux"] / EXPTIME))
    assert info["mag"] == pytest.approx(last["mag_inst"])
    assert info["n_comp"] == 5 and np.isfinite(info["dmag"])
    assert lcmod.latest_target_mag(table, 99) is None


def test_write_lightcurve_files(tmp_path, table):
    paths = lcmod.write_lightcurve(
        tmp_path, table, object="M 31", filter="V", target=[STARS[1][1], STARS[1][2]],
        n_comparisons=6, save="my night",
    )  # fmt: skip
    names = [p.name for p in paths]
    assert names == [
        "my_night_lightcurve_M_31_V.csv",
        "my_night_lightcurve_M_31_V.ecsv",
        "my_night_lightcurve_M_31_V.png",
    ]
    assert sorted(os.listdir(tmp_path)) == sorted(names)  # no temporary files left

    csv_path, ecsv_path, png_path = paths
    read = Table.read(csv_path, format="ascii.csv")
    assert len(read) == N_FRAMES
    assert read.colnames[:11] == [
        "mjd", "date_obs", "file", "dmag", "dmag_err", "target_mag", "target_mag_err",
        "ensemble_mag", "ensemble_mag_err", "n_comp", "flags",
    ]  # fmt: skip
    for star in STARS:  # per-star columns: in the photometry table, not in the curve's files
        assert not {f"mag_{star}", f"err_{star}", f"flags_{star}"} & set(read.colnames)
    for star in COMPS:
        assert f"check_{star}" in read.colnames
    assert "check_7" not in read.colnames  # the variable is not a comparison

    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_FRAMES
    assert rows[0]["file"] == "lights/M 31_000.fits"
    chosen = [*COMPS, FLAGGED]  # flagged in one frame only: a member
    lc = lcmod.differential_lightcurve(table, target_id=TARGET, comparison_ids=chosen)
    np.testing.assert_allclose([float(r["dmag"]) for r in rows], lc["dmag"], atol=1e-5)
    np.testing.assert_allclose([float(r["mjd"]) for r in rows], lc["mjd"], atol=1e-8)

    ecsv = Table.read(ecsv_path, format="ascii.ecsv")
    assert ecsv["dmag"].unit == "mag" and ecsv["mjd"].unit == "d"
    assert ecsv["target_mag"].unit == "mag"
    assert ecsv.meta["target_id"] == TARGET
    assert sorted(ecsv.meta["comparison_ids"]) == sorted(chosen)
    assert ecsv.meta["object"] == "M 31"
    assert ecsv.colnames == read.colnames
    assert ecsv["file"][0] == "lights/M 31_000.fits" and ecsv["flags"].dtype.kind == "i"
    np.testing.assert_allclose(ecsv["dmag"], lc["dmag"], atol=1e-5)
    np.testing.assert_allclose(ecsv["mjd"], lc["mjd"], atol=1e-8)

    png = png_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from matplotlib.image import imread

    assert imread(png_path).shape[0] > 300


def test_write_without_target(tmp_path, table):
    csv_path, ecsv_path, png_path = lcmod.write_lightcurve(
        tmp_path, table, object="M31", filter="R", comparisons=[[2], [3], [200.5, 199.0], [3]]
    )
    assert csv_path.name == "lightcurve_M31_R.csv"
    read = Table.read(ecsv_path)
    assert "dmag" not in read.colnames
    assert {"check_2", "check_3", "check_5"} <= set(read.colnames)
    assert "mag_1" not in read.colnames
    assert read.meta["target_id"] is None and read.meta["comparison_ids"] == [2, 3, 5]
    assert png_path.read_bytes().startswith(b"\x89PNG")


def test_write_rejects_target_as_comparison(tmp_path, table):
    with pytest.raises(ReduxdError, match="both the target and a comparison"):
        lcmod.write_lightcurve(
            tmp_path, table, object="M31", filter="V", target=[1], comparisons=[[1], [2]]
        )
    assert lcmod.write_lightcurve(tmp_path, [], object="M31", filter="V") == []


def test_safe_name():
    assert lcmod.safe_name("NGC 7000 / α") == "NGC_7000"
    assert lcmod.safe_name("../etc") == "etc"


def test_awkward_strings_round_trip(tmp_path):
    names = ["#1.fits", 'a "q", b.fits', "plain.fits"]
    rows = [
        dict(file=name, mjd=60000.0 + i, date_obs="", star_id=s, x=10.0 * s, y=0.0,
             flux=1000.0 * s, flux_err=10.0, flags=0, exptime=EXPTIME, current=1)
        for i, name in enumerate(names) for s in (1, 2, 3)
    ]  # fmt: skip
    csv_path, ecsv_path, _ = lcmod.write_lightcurve(
        tmp_path, rows, object="x", filter="V", target=[1]
    )
    for table in (Table.read(ecsv_path), Table.read(csv_path, format="ascii.csv")):
        assert list(table["file"]) == names
        np.testing.assert_allclose(table["dmag"], -2.5 * math.log10(1 / 5), atol=1e-5)
    # empty strings are written as "" (astropy, like its own writer, reads them as masked)
    assert len(Table.read(ecsv_path)["date_obs"]) == 3


def test_lightcurve_file_width_does_not_grow_with_the_stars(tmp_path):
    """A crowded field's curve has the columns of a sparse one: per-star data is long format."""
    rows = make_rows()
    crowd = []
    for r in rows:
        if r["star_id"] == TARGET:  # 300 faint neighbours around the target, in every frame
            for k in range(300):
                faint = dict(r, star_id=1000 + k, x=r["x"] + 20 + k % 20, y=r["y"] + 20 + k // 20)
                crowd.append(dict(faint, flux=500.0, flux_err=30.0))
    common = dict(object="M 31", filter="V", target=[TARGET], comparisons=[[c] for c in COMPS])
    sparse = lcmod.write_lightcurve(tmp_path / "sparse", rows, **common)
    crowded = lcmod.write_lightcurve(tmp_path / "crowded", rows + crowd, **common)
    sparse_names = Table.read(sparse[0], format="ascii.csv").colnames
    crowded_names = Table.read(crowded[0], format="ascii.csv").colnames
    assert crowded_names == sparse_names
    assert len(crowded_names) < 40
    assert sparse[0].stat().st_size == pytest.approx(crowded[0].stat().st_size, rel=0.01)
    wide = lcmod.build_lightcurve(rows + crowd, **{k: common[k] for k in ("target", "comparisons")})
    assert "mag_1299" in wide.colnames  # still available in memory (per_star=True)


def test_append_lightcurve_adds_frames_against_the_frozen_ensemble(tmp_path):
    """Frames after a build are appended (earlier rows untouched), as a rebuild would give them."""
    rows = [r for r in make_rows() if r["current"] == 1]
    frames = sorted({r["file"] for r in rows})
    first = [r for r in rows if r["file"] in frames[:20]]
    kept = {}
    common = dict(object="M 31", filter="V", target=[TARGET])
    csv_path, ecsv_path, _ = lcmod.write_lightcurve(tmp_path, first, keep=kept, **common)
    frozen = lcmod.frozen_of(kept["lightcurve"])
    assert frozen["frames"] == 20
    before = csv_path.read_bytes()
    for name in frames[20:]:
        frame = [r for r in rows if r["file"] == name]
        assert lcmod.append_lightcurve(tmp_path, frame, frozen, object="M 31", filter="V")
    after = csv_path.read_bytes()
    assert after.startswith(before)  # nothing rewritten
    appended = Table.read(csv_path, format="ascii.csv")
    assert len(appended) == N_FRAMES and len(Table.read(ecsv_path)) == N_FRAMES
    ensemble = lcmod.ensemble_of(kept["lightcurve"])
    for name, dmag in zip(appended["file"][20:], appended["dmag"][20:], strict=True):
        expected = lcmod.frame_dmag([r for r in rows if r["file"] == name], ensemble)
        assert dmag == pytest.approx(expected, abs=1e-4)
    assert np.all(np.isfinite([appended[f"check_{c}"][20:] for c in frozen["ids"]]))
    pinned = lcmod.build_lightcurve(rows, target=[TARGET], comparisons=[[c] for c in frozen["ids"]])
    np.testing.assert_allclose(appended["dmag"], pinned["dmag"], atol=3e-3)  # medians moved
    late = [r for r in rows if r["file"] == frames[5]]  # older than the last row: rebuild
    assert not lcmod.append_lightcurve(tmp_path, late, frozen, object="M 31", filter="V")
    assert csv_path.read_bytes() == after


def test_the_ensemble_of_a_curve_is_read_from_its_header_once_while_frames_are_appended(
    tmp_path,
):
    """What a light's finder chart marks (the daemon asks for every light): the curve's
    target and comparisons, as the whole ECSV gives them; appending frames leaves the
    header as it was, so it is not parsed again; a rebuild on other comparisons is read
    anew."""
    from reduxd.products import finder

    rows = [r for r in make_rows() if r["current"] == 1]
    frames = sorted({r["file"] for r in rows})
    first = [r for r in rows if r["file"] in frames[:20]]
    kept, common = {}, dict(object="M 31", filter="V", target=[TARGET])
    _csv, ecsv_path, _ = lcmod.write_lightcurve(tmp_path, first, keep=kept, **common)
    whole = lcmod.ensemble_ids(Table.read(ecsv_path, format="ascii.ecsv").meta)
    assert whole[0] == TARGET and len(whole[1]) >= 2
    assert finder.read_ensemble(ecsv_path) == whole
    parsed = finder._ensemble.cache_info().misses
    frozen = lcmod.frozen_of(kept["lightcurve"])
    for name in frames[20:]:
        frame = [r for r in rows if r["file"] == name]
        assert lcmod.append_lightcurve(tmp_path, frame, frozen, object="M 31", filter="V")
        assert finder.read_ensemble(ecsv_path) == whole
    assert finder._ensemble.cache_info().misses == parsed
    lcmod.write_lightcurve(tmp_path, rows, comparisons=[[c] for c in COMPS[:2]], **common)
    assert finder.read_ensemble(ecsv_path) == (TARGET, tuple(COMPS[:2]))
    assert finder.read_ensemble(tmp_path / "none.ecsv") == (None, [])
