"""End to end: simulate a night, run ``reduxd reduce`` with the old line, recover the truth.

The line is the old script's, exactly, run from inside the night folder; a
config file (``--config``) adds what the old flags cannot say: the camera's
e-/ADU and read noise (for the errors) and the light-curve target, by its
position (the simulator puts the transiting star at the field centre).

Truth (``truth.json``, ``truth/*.fits.gz``; see :mod:`reduxd.simulate`):
masters against the bias/dark/flat maps, instrumental magnitudes against the
true fluxes (one zero point, residuals in units of ``mag_err``), the transit
depth from the light curve, the stack's photometry against the single lights.
"""

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from reduxd.simulate import NightSpec, Transit, simulate_night

pytestmark = pytest.mark.slow

OLD_LINE = "reduce -D pg2213 -C calibration -O analysis -R 15 -L 25 -S 0 -x U B R I --save pg2213"
OLD_ARGS = OLD_LINE.split()  # the line as the old script's users type it
RADIUS = 15.0
# V and R lights alternate in runs of 4; R is excluded by -x. The transit (middle
# half of the night) covers the 2nd and 3rd V runs, the 1st and 4th are out of it.
SPEC = NightSpec.small(
    shape=(320, 480),
    n_lights=16,
    lights_per_run=4,
    n_stars=40,
    n_flats=8,
    transit=Transit(depth=0.02, flux_e_per_s=8000.0),
    seed=3,
)


def reduxd_command():
    """The installed ``reduxd`` script next to this interpreter, else ``python -m reduxd``."""
    script = Path(sys.executable).with_name("reduxd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reduxd"]


def run_reduxd(args, cwd, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [*reduxd_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def write_config(night, truth):
    target = truth["stars"][0]  # the transiting star (truth star id 0)
    cam = truth["camera"]
    (night / "reduxd.toml").write_text(
        f"""
[[calibration.cameras]]
instrument = "{cam["instrument"]}"
gain = {cam["gain_setting"]}
gain_e_per_adu = {cam["gain_e_per_adu"]}
read_noise_e = {cam["read_noise_e"]}
saturation_adu = {cam["saturation_adu"]}

[lightcurve]
target = [{target["x"]:.2f}, {target["y"]:.2f}]
"""
    )


def digest(folder):
    """{relative path: sha1} of every file under ``folder`` (the ledger, summaries and the
    per-run logs ``redux_<timestamp>.log`` excepted)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not p.name.startswith(("reduxd.sqlite", "redux_"))
        and "summary" not in p.name
    }


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e") / "night"
    truth = simulate_night(folder, SPEC)
    write_config(folder, truth)
    proc = run_reduxd([*OLD_ARGS, "--config", "reduxd.toml"], cwd=folder)
    return folder, truth, proc


@pytest.fixture(scope="module")
def products(night):
    folder, truth, proc = night
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = folder / "analysis"
    phot = Table.read(out / "pg2213_photometry.csv", format="ascii.csv")
    return out, truth, phot


def truth_map(night, rel):
    raw = gzip.decompress((night / rel).read_bytes())
    return fits.getdata(io.BytesIO(raw)).astype(np.float64)


def master(out, prefix):
    (path,) = [p for p in (out / "masters").rglob("*.fits") if p.name.startswith(prefix)]
    return fits.getdata(path).astype(np.float64), fits.getheader(path)


def blocks(image, size=16):
    ny, nx = (s // size * size for s in image.shape)
    return image[:ny, :nx].reshape(ny // size, size, nx // size, size).mean(axis=(1, 3))


def v_lights(truth):
    """Truth rows of the V lights, keyed by the path relative to the -D folder."""
    return {
        light["path"].split("/", 1)[1]: light for light in truth["lights"] if light["filter"] == "V"
    }


def matched(phot, truth, *, max_dist=1.5):
    """Photometry rows matched to truth stars: (row, truth star index, truth light)."""
    stars = truth["stars"]
    sx = np.array([s["x"] for s in stars])
    sy = np.array([s["y"] for s in stars])
    lights = v_lights(truth)
    out = []
    for row in phot:
        light = lights[row["file"]]
        dist = np.hypot(sx + light["dx"] - row["x"], sy + light["dy"] - row["y"])
        k = int(np.argmin(dist))
        if dist[k] <= max_dist:
            out.append((row, k, light))
    return out


def isolated(truth, radius):
    """Truth star indices with no other star (of any flux) within ``radius`` + 3 FWHM."""
    xy = np.array([[s["x"], s["y"]] for s in truth["stars"]])
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    return set(np.flatnonzero(d.min(axis=1) > radius + 3 * truth["spec"]["fwhm"]).tolist())


def hit_by_cosmic(light, x, y, radius):
    """True when a cosmic-ray pixel of this light falls in the aperture (from the truth)."""
    return any(np.hypot(cx - x, cy - y) <= radius + 1 for cx, cy, _ in light["cosmic_rays"])


# -- the run -----------------------------------------------------------------------


def test_old_line_reduces_the_night(night):
    folder, truth, proc = night
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((folder / "analysis" / "pg2213_summary.json").read_text())
    n_cal = len(truth["calibration"])
    assert summary["reduced"] == 16 and summary["excluded"] == 16
    assert summary["ingested"] == n_cal and summary["refused"] == []
    assert {m["kind"] for m in summary["masters"]} == {"bias", "dark", "dark_current", "flat"}
    assert "16 lights reduced" in proc.stdout and "16 excluded" in proc.stdout
    out = folder / "analysis"
    for name in ("pg2213_photometry.csv", "pg2213_photometry.ecsv", "pg2213_summary.txt",
                 "pg2213_lightcurve_V.csv", "pg2213_lightcurve_V.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "reduced").rglob("*.fits"))) == 16
    assert len(list((out / "quicklook").rglob("*.png"))) == 16
    # stderr is a pipe: plain progress lines, no carriage returns, the last one complete
    progress = [line for line in proc.stderr.splitlines() if line.startswith("progress:")]
    assert progress and "\r" not in proc.stderr
    total = n_cal + len(truth["lights"])
    assert progress[-1].startswith(f"progress: {total}/{total} frames (100%)")


def test_excluded_filter_lights_are_not_reduced(products):
    out, truth, phot = products
    assert set(phot["filter"]) == {"V"}
    assert not list((out / "reduced").rglob("*_R_*/**/*.fits"))
    assert not (out / "pg2213_lightcurve_R.csv").exists()
    assert len(set(phot["file"])) == len(v_lights(truth)) == 16


# -- masters ------------------------------------------------------------------------


def test_master_bias_matches_the_true_bias(products):
    out, truth, _ = products
    folder = out.parent
    bias, header = master(out, "bias_")
    true_bias = truth_map(folder, truth["camera"]["bias_map_path"])
    diff = bias - true_bias
    n = header["NCOMBINE"]
    # median of n frames: read noise (16 ADU) and the 16-ADU steps, times ~1.25
    expected = 1.2533 * np.hypot(truth["camera"]["read_noise_adu"], 16 / np.sqrt(12)) / np.sqrt(n)
    assert abs(np.mean(diff)) < 0.5
    assert 0.8 * expected < np.std(diff) < 1.25 * expected
    assert np.abs(blocks(diff)).max() < 3.0  # the column/pixel pattern is removed


def test_master_dark_current_matches_the_true_dark(products):
    out, truth, _ = products
    folder = out.parent
    gain = truth["camera"]["gain_e_per_adu"]
    true_dark = truth_map(folder, truth["camera"]["dark_map_path"])  # e-/s
    dark15, _ = master(out, "dark_ZWO_ASI432MM_480x320_bin1x1_g150_15s")
    bias, _ = master(out, "bias_")
    normal = true_dark < 2.0  # not hot
    measured = np.mean((dark15 - bias)[normal]) / 15.0  # ADU/s
    assert measured == pytest.approx(np.mean(true_dark[normal]) / gain, rel=0.05)
    rate, _ = master(out, "dark_current_ZWO_ASI432MM_480x320_bin1x1_g150_15s")
    hot = [h for h in truth["hot_pixels"] if h["dark_e_per_s"] * 15 / gain < 50000]
    assert len(hot) >= 5
    ratio = [rate[h["y"], h["x"]] / (h["dark_e_per_s"] / gain) for h in hot]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.02)
    assert np.all(np.abs(np.array(ratio) - 1) < 0.1)


def test_master_flat_matches_the_true_flat(products):
    out, truth, _ = products
    folder = out.parent
    flat, header = master(out, "flat_ZWO_ASI432MM_480x320_bin1x1_g150_V")
    true_flat = truth_map(folder, truth["filters"]["V"]["flat_path"])
    ratio = flat / true_flat
    assert np.median(ratio) == pytest.approx(1.0, abs=0.002)
    # per pixel: photon noise of the flats (~6000 e- each), median of n frames
    level_e = (truth["filters"]["V"]["flat_level_adu"] - truth["camera"]["bias_adu"]) * 0.25
    expected = 1.2533 / np.sqrt(level_e * header["NCOMBINE"])
    assert np.std(ratio) < 1.3 * expected
    # large scale (vignetting, dust donuts): 16x16 blocks agree to 0.3 %
    assert np.abs(blocks(flat) / blocks(true_flat) - 1).max() < 0.003


# -- photometry ---------------------------------------------------------------------


def test_magnitudes_agree_with_true_fluxes_within_mag_err(products):
    """mag_inst vs -2.5 log10(true e-/s * transparency * transit / gain): one zero point.

    The lights are flat-fielded, so the flat drops out. Used: unflagged, S/N > 30,
    isolated stars whose aperture no cosmic ray hit (truth lists them).
    """
    _, truth, phot = products
    gain = truth["camera"]["gain_e_per_adu"]
    alone = isolated(truth, RADIUS)
    res, err = [], []
    for row, k, light in matched(phot, truth):
        if row["flags"] != 0 or row["snr"] < 30 or k not in alone:
            continue
        if hit_by_cosmic(light, row["x"], row["y"], RADIUS):
            continue
        star = truth["stars"][k]
        rate = star["flux_e_per_s"]["V"] * light["transparency"] / gain
        if k == 0:
            rate *= light["transit_rel_flux"]
        res.append(row["mag_inst"] + 2.5 * np.log10(rate))
        err.append(row["mag_err"])
    res, err = np.array(res), np.array(err)
    assert len(res) >= 40
    w = err**-2
    zero_point = np.sum(w * res) / np.sum(w)
    chi = (res - zero_point) / err
    assert abs(zero_point) < 0.02  # a 15 px aperture holds all of a 3.5 px star
    assert abs(np.mean(chi)) < 0.4
    assert 0.7 < np.std(chi) < 1.4, np.std(chi)
    assert np.mean(np.abs(chi) > 4) < 0.01


def transit_fit(lc, truth):
    """Weighted fit of flux ratio = A (1 - depth * shape), shape from the truth (0..1)."""
    lights = v_lights(truth)
    depth_true = truth["transit"]["depth"]
    rel = np.array([lights[f]["transit_rel_flux"] for f in lc["file"]])
    shape = (1 - rel) / depth_true
    flux = 10 ** (-0.4 * np.asarray(lc["dmag"], dtype=float))
    ferr = flux * np.asarray(lc["dmag_err"], dtype=float) / 1.0857
    design = np.column_stack([np.ones_like(shape), -shape])
    w = ferr**-2
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    (a, b) = cov @ (design.T @ (w * flux))
    chi2 = float(np.sum(w * (flux - design @ [a, b]) ** 2) / (len(flux) - 2))
    return b / a, np.sqrt(cov[1, 1]) / a, chi2, shape


def test_transit_depth_is_recovered_from_the_light_curve(products):
    out, truth, phot = products
    lc = Table.read(out / "pg2213_lightcurve_V.ecsv")
    assert len(lc) == 16 and np.all(np.isfinite(lc["dmag"]))
    # the configured position named the simulator's transiting star
    target = [r for r, k, _ in matched(phot, truth) if k == 0]
    assert {int(r["star_id"]) for r in target} == {lc.meta["target_id"]}
    assert len(lc.meta["comparison_ids"]) >= 3
    assert lc.meta["target_id"] not in lc.meta["comparison_ids"]
    # no cosmic ray in the target's or a comparison's aperture (the truth lists them)
    lights = v_lights(truth)
    stars = [lc.meta["target_id"], *lc.meta["comparison_ids"]]
    keep = np.array([not hit_any(lights[f], phot, f, stars) for f in lc["file"]])
    assert keep.sum() >= 12
    depth, sigma, chi2, shape = transit_fit(lc[keep], truth)
    assert (shape > 0.9).sum() >= 4 and (shape == 0).sum() >= 4  # the test can tell
    sigma *= max(1.0, np.sqrt(chi2))
    assert sigma < truth["transit"]["depth"] / 3
    assert abs(depth - truth["transit"]["depth"]) < 3 * sigma, (depth, sigma, chi2)
    assert chi2 < 3.0
    checks = [v for v in lc.meta["check_chi2"].values() if np.isfinite(v)]
    assert checks and np.median(checks) < 3.0


def hit_any(light, phot, file, star_ids):
    rows = phot[(phot["file"] == file) & np.isin(phot["star_id"], star_ids)]
    return any(hit_by_cosmic(light, r["x"], r["y"], RADIUS) for r in rows)


def test_stack_has_its_own_photometry(products):
    """The stack's star fluxes are the mean of the single lights' (same stars, same IDs)."""
    out, truth, phot = products
    (stack_fits,) = (out / "stacks").glob("stack_pg2213_V_*.fits")
    header = fits.getheader(stack_fits)
    assert header["NCOMBINE"] == 16 and header["PHOTNST"] > 10
    table = Table.read(
        stack_fits.with_name(stack_fits.stem + "_photometry.csv"), format="ascii.csv"
    )
    assert set(table["star_id"]) <= set(phot["star_id"])
    assert set(table["nframes"]) == {16}
    clean = phot[phot["flags"] == 0]
    lights = v_lights(truth)
    compared = 0
    for star in table[(table["flags"] == 0) & (table["snr"] > 20)]:
        single = clean[clean["star_id"] == star["star_id"]]
        if len(single) < 16 or any(
            hit_by_cosmic(lights[r["file"]], r["x"], r["y"], RADIUS) for r in single
        ):
            continue  # flagged in some light, or a cosmic ray in a light's aperture
        compared += 1
        mean = np.mean(single["flux"])
        assert star["flux"] == pytest.approx(mean, abs=max(3 * star["flux_err"], 0.01 * mean))
        # errors of a mean of 16 lights: a quarter of a single light's
        expected_err = np.sqrt(np.mean(single["flux_err"] ** 2) / 16)
        assert star["flux_err"] == pytest.approx(expected_err, rel=0.25)
    assert compared >= 5


# -- again --------------------------------------------------------------------------


def test_running_again_changes_nothing(night, products):
    folder, truth, _ = night
    out = folder / "analysis"
    before = digest(out)
    proc = run_reduxd([*OLD_ARGS, "--config", "reduxd.toml"], cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert digest(out) == before
    summary = json.loads((out / "pg2213_summary.json").read_text())
    assert summary["reduced"] == 0 and summary["ingested"] == 0
    excluded = [lt for lt in truth["lights"] if lt["filter"] != "V"]  # -x U B R I
    assert summary["excluded"] == len(excluded)  # excluded, not counted as done
    assert summary["already_done"] == len(truth["calibration"]) + len(truth["lights"]) - len(
        excluded
    )
    assert len(summary["masters"]) == 6  # no flat for the excluded R
    phot = Table.read(out / "pg2213_photometry.csv", format="ascii.csv")
    keys = list(zip(phot["file"], phot["star_id"], phot["version"], strict=True))
    assert len(keys) == len(set(keys)) and set(phot["version"]) == {1}
