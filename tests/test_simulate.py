"""Tests of the night simulator (reduxd.simulate): layout, headers, truth, delivery."""

import argparse
import contextlib
import json
import re
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from reduxd import simulate
from reduxd.frames import classify
from reduxd.simulate import Night, NightSpec, Transit, fits_bytes, simulate_night, write_frame
from reduxd.synth import render_stars

SHARPCAP_KEYS = [
    "SIMPLE",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "OBJECT",
    "GAIN",
    "FILTER",
    "DATE-AVG",
    "DATE-END",
    "DATE-OBS",
    "SWCREATE",
    "FRAMETYP",
    "CCD-TEMP",
    "XBINNING",
    "BLKLEVEL",
    "YPIXSZ",
    "XPIXSZ",
    "EXPTIME",
    "ROWORDER",
    "BSCALE",
    "BZERO",
    "EXTEND",
    "YBINNING",
    "INSTRUME",
]
LAYOUT = {
    "light": re.compile(r"^pg2213/pg2213_(V|R)_15s/\d\d_\d\d_\d\d/pg2213_\d{5}\.fits$"),
    "bias": re.compile(r"^calibration/bias/bias/\d\d_\d\d_\d\d/bias_\d{5}\.fits$"),
    "dark": re.compile(r"^calibration/darks/darks_(15|2)/\d\d_\d\d_\d\d/darks_\d{5}\.fits$"),
    "flat": re.compile(r"^calibration/flats/flat_(v|r)_/\d\d_\d\d_\d\d/flat_(v|r)_\d{5}\.fits$"),
}


def _fits_files(root):
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*.fits"))


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("night")
    truth = simulate_night(out, NightSpec.small(seed=11))
    return out, truth


def _load(root, rel):
    with fits.open(Path(root) / rel, memmap=False) as hdul:
        return hdul[0].data.astype(np.float64), hdul[0].header.copy()


# --------------------------------------------------------------------------- seeding


def test_same_seed_identical_bytes_different_seed_differs(tmp_path):
    spec = NightSpec.small(n_lights=2, n_bias=2, n_darks=1, n_flats=1, seed=5)
    t1 = simulate_night(tmp_path / "a", spec, workers=1)
    t2 = simulate_night(tmp_path / "b", spec, workers=3, delivery="rename")
    t3 = simulate_night(
        tmp_path / "c", NightSpec.small(n_lights=2, n_bias=2, n_darks=1, n_flats=1, seed=6)
    )
    files = _fits_files(tmp_path / "a")
    assert files == _fits_files(tmp_path / "b")
    assert len(files) == 2 + 2 + 2 + 4
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert t1 == t2
    rows1, rows3 = (t["calibration"] + t["lights"] for t in (t1, t3))
    assert len(rows1) == len(rows3) == len(files)
    for r1, r3 in zip(rows1, rows3, strict=True):
        assert r1["kind"] == r3["kind"]
        a, c = _load(tmp_path / "a", r1["path"])[0], _load(tmp_path / "c", r3["path"])[0]
        assert not np.array_equal(a, c), r1["path"]
    assert t1["stars"] != t3["stars"]


# --------------------------------------------------------------------------- layout, headers


def test_layout_matches_truth_and_sharpcap(night):
    root, truth = night
    files = _fits_files(root)
    listed = [row["path"] for row in truth["calibration"] + truth["lights"]]
    assert sorted(listed) == files  # every frame is in the truth, truth maps are not .fits
    assert (root / "truth.json").is_file()
    assert json.loads((root / "truth.json").read_text()) == truth
    for row in truth["calibration"] + truth["lights"]:
        assert LAYOUT[row["kind"]].match(row["path"]), row["path"]
    kinds = [row["kind"] for row in truth["calibration"]]
    assert kinds == ["bias"] * 5 + ["dark"] * 6 + ["flat"] * 6
    for filt in ("V", "R"):
        assert (root / truth["filters"][filt]["flat_path"]).is_file()
    # SharpCap numbers files from 00001 in each capture-run (HH_MM_SS) folder
    runs = {}
    for row in truth["lights"]:
        runs.setdefault(row["path"].rsplit("/", 1)[0], []).append(row["path"][-10:-5])
    assert all(v == [f"{i + 1:05d}" for i in range(len(v))] for v in runs.values())
    assert len(runs) == 4


def test_headers_are_sharpcap_style(night):
    root, truth = night
    types = {"light": "Light", "bias": "Bias", "dark": "Dark", "flat": "Flat"}
    for row in truth["calibration"] + truth["lights"]:
        path = root / row["path"]
        raw = path.read_bytes()
        assert raw[:80].startswith(b"SIMPLE  =                    T / C# FITS: ")
        assert len(raw) % 2880 == 0
        with fits.open(path, memmap=False) as hdul:
            header, data = hdul[0].header.copy(), hdul[0].data
            hdul.verify("exception")  # (moves EXTEND up, as for the real SharpCap files)
        assert data.dtype == np.uint16 and data.shape == (256, 384)
        assert header["BITPIX"] == 16 and header["BZERO"] == 32768 and header["BSCALE"] == 1
        expected = [k for k in SHARPCAP_KEYS if k != "FILTER" or row["kind"] in ("light", "flat")]
        assert list(header.keys()) == expected
        assert header["FRAMETYP"] == types[row["kind"]]
        assert isinstance(header["EXPTIME"], int | float)
        assert header["EXPTIME"] == pytest.approx(row["exptime"])
        assert header["GAIN"] == 150 and header["INSTRUME"] == "ZWO ASI432MM"
        start = datetime.fromisoformat(header["DATE-OBS"])
        mid = datetime.fromisoformat(header["DATE-AVG"])
        end = datetime.fromisoformat(header["DATE-END"])
        assert (mid - start).total_seconds() == pytest.approx(row["exptime"] / 2, abs=1e-6)
        assert (end - start).total_seconds() == pytest.approx(row["exptime"], abs=1e-6)
        assert header["DATE-OBS"] == row["date_obs"] and len(header["DATE-OBS"]) == 27
        assert Time(header["DATE-AVG"], scale="utc").mjd == pytest.approx(row["mjd_mid"], abs=1e-8)
        if row["kind"] in ("light", "flat"):
            assert header["FILTER"] == row["filter"]
        info = classify(header, str(path))
        assert info.kind == row["kind"] and info.kind_rule.startswith("header:FRAMETYP")
        assert info.filter == row["filter"]
    starts = [row["date_obs"] for row in truth["calibration"] + truth["lights"]]
    assert starts == sorted(starts)  # delivery order is time order


def test_header_card_order_matches_real_sharpcap_file(umbc_dir, night):
    root, truth = night
    real = fits.getheader(umbc_dir / "blaze_v_15s_00001.fits")
    ours = fits.getheader(root / truth["lights"][0]["path"])
    assert list(ours.keys()) == list(real.keys())
    for key in ("BITPIX", "BZERO", "BSCALE", "GAIN", "FRAMETYP", "INSTRUME", "ROWORDER"):
        assert ours[key] == real[key]


def test_fits_bytes_round_trip_and_checks(tmp_path):
    data = np.array([[0, 1, 32767], [32768, 65534, 65535]], dtype=np.uint16)
    path = write_frame(tmp_path / "x" / "a.fits", data, [("OBJECT", "t", ""), ("EXPTIME", 1, "")])
    with fits.open(path) as hdul:
        assert hdul[0].header["BZERO"] == 32768 and hdul[0].header["BITPIX"] == 16
        np.testing.assert_array_equal(hdul[0].data, data)
        assert hdul[0].data.dtype == np.uint16
    with pytest.raises(ValueError, match="uint16"):
        fits_bytes(data.astype(np.float32))
    with pytest.raises(ValueError, match="BZERO"):
        fits_bytes(data, [("BZERO", 0, "")])
    with pytest.raises(ValueError, match="delivery"):
        write_frame(tmp_path / "b.fits", data, delivery="ftp")


# --------------------------------------------------------------------------- truth consistency


def test_bias_frames_match_truth_bias(night):
    root, truth = night
    cam = truth["camera"]
    stack = np.array(
        [_load(root, r["path"])[0] for r in truth["calibration"] if r["kind"] == "bias"]
    )
    n = len(stack)
    rn_adu = cam["read_noise_adu"]
    # the step of a 12-bit camera adds step**2 / 12 of variance
    sigma = np.hypot(rn_adu, cam["adu_step"] / np.sqrt(12))
    assert abs(np.median(stack.mean(axis=0)) - cam["bias_adu"]) < rn_adu / np.sqrt(n)
    assert abs(stack.mean() - cam["bias_adu"]) < 5 * sigma / np.sqrt(stack.size) + 0.05
    assert np.sqrt(stack.var(axis=0, ddof=1).mean()) == pytest.approx(sigma, rel=0.05)
    assert np.all(stack % cam["adu_step"] == 0)  # SharpCap stores 12-bit ADU * 16
    bias_map = fits.getdata(root / cam["bias_map_path"])
    assert np.mean(bias_map) == pytest.approx(cam["bias_adu"], abs=1e-3)


def _truth_maps(root, truth, filt):
    cam = truth["camera"]
    bias = fits.getdata(root / cam["bias_map_path"]).astype(np.float64)
    dark = fits.getdata(root / cam["dark_map_path"]).astype(np.float64)
    flat = fits.getdata(root / truth["filters"][filt]["flat_path"]).astype(np.float64)
    return bias, dark, flat


def _isolated_stars(truth, filt, fwhm, *, flux_min):
    stars = truth["stars"]
    xy = np.array([[s["x"], s["y"]] for s in stars])
    flux = np.array([s["flux_e_per_s"][filt] for s in stars])
    ny, nx = truth["camera"]["shape"]
    out = []
    for s in stars:
        dist = np.hypot(*(xy - [s["x"], s["y"]]).T)
        neighbours = (dist > 0) & (dist < 8 * fwhm) & (flux > 0.001 * s["flux_e_per_s"][filt])
        edge = min(s["x"], s["y"], nx - 1 - s["x"], ny - 1 - s["y"]) > 6 * fwhm + 40
        if (
            edge
            and not neighbours.any()
            and not s["saturated"][filt]
            and s["flux_e_per_s"][filt] >= flux_min
        ):
            out.append(s)
    return out


@pytest.mark.parametrize("index", [0, 1, -1])
def test_star_flux_and_position_match_truth(night, index):
    """Analytic check: sum of (raw - bias - dark - sky) over a box = flux * t * flat / gain."""
    root, truth = night
    cam, light = truth["camera"], truth["lights"][index]
    filt, t, gain = light["filter"], light["exptime"], cam["gain_e_per_adu"]
    data, _ = _load(root, light["path"])
    bias, dark, flat = _truth_maps(root, truth, filt)
    sky = truth["filters"][filt]["sky_e_per_s"]
    stars = _isolated_stars(truth, filt, light["fwhm"], flux_min=1000.0)
    assert stars, "the small night should have a bright isolated unsaturated star"
    cosmics = {(x, y) for x, y, _ in light["cosmic_rays"]}
    checked = 0
    for s in stars:
        x, y = s["x"] + light["dx"], s["y"] + light["dy"]
        half = int(np.ceil(4 * light["fwhm"]))
        ys = slice(round(y) - half, round(y) + half + 1)
        xs = slice(round(x) - half, round(x) + half + 1)
        if any(xs.start <= cx < xs.stop and ys.start <= cy < ys.stop for cx, cy in cosmics):
            continue
        flux = s["flux_e_per_s"][filt] * t * light["transparency"]
        if s["id"] == truth["transit"]["star_id"]:
            flux *= light["transit_rel_flux"]
        star_e = render_stars(data.shape, [x], [y], [flux], light["fwhm"])[ys, xs] * flat[ys, xs]
        background_e = flat[ys, xs] * sky * t + dark[ys, xs] * t
        measured = np.sum(data[ys, xs] - bias[ys, xs]) - background_e.sum() / gain
        expected = star_e.sum() / gain
        npix = star_e.size
        variance = (
            (star_e.sum() + background_e.sum()) / gain**2
            + npix * cam["read_noise_adu"] ** 2
            + npix * cam["adu_step"] ** 2 / 12
        )
        assert measured == pytest.approx(expected, abs=5 * np.sqrt(variance)), s["id"]
        # the star is where the truth says: pointing offset has the documented sign
        stamp = data[ys, xs] - bias[ys, xs] - background_e / gain
        yy, xx = np.mgrid[ys, xs]
        cx, cy = (stamp * xx).sum() / stamp.sum(), (stamp * yy).sum() / stamp.sum()
        assert cx == pytest.approx(x, abs=0.15) and cy == pytest.approx(y, abs=0.15)
        checked += 1
    assert checked >= 1


def test_pointing_drifts_tens_of_px_over_the_default_night():
    night = Night(NightSpec(seed=2))
    lights = night.truth["lights"]
    steps = np.hypot(np.diff([r["dx"] for r in lights]), np.diff([r["dy"] for r in lights]))
    total = np.hypot(lights[-1]["dx"], lights[-1]["dy"])
    assert lights[0]["dx"] == lights[0]["dy"] == 0.0
    assert 0.5 < np.median(steps) < 5.0  # a few px per frame
    assert 15.0 < total < 100.0  # tens of px over the night


def test_flat_frames_follow_truth_flat(night):
    root, truth = night
    cam = truth["camera"]
    for filt in ("V", "R"):
        rows = [r for r in truth["calibration"] if r["kind"] == "flat" and r["filter"] == filt]
        bias, dark, flat = _truth_maps(root, truth, filt)
        frames = [_load(root, r["path"])[0] for r in rows]
        signal = np.mean(frames, axis=0) - bias - dark * rows[0]["exptime"] / cam["gain_e_per_adu"]
        ratio = signal / np.median(signal)
        good = np.ones(flat.shape, bool)
        good[tuple(zip(*[(h["y"], h["x"]) for h in truth["hot_pixels"]], strict=True))] = False
        assert np.median(np.mean(frames, axis=0)) == pytest.approx(25000, rel=0.03)
        assert np.median(np.abs(ratio - flat)[good]) < 0.01
        assert flat[:8, :8].mean() < 0.85 * flat[120:136, 180:200].mean()  # vignetting
        dust = truth["filters"][filt]["dust"]
        assert len(dust) == 3 and all(0.0 < d["depth"] < 0.1 for d in dust)


def test_hot_pixels_stable_in_darks_and_lights_cosmics_in_lights_only(night):
    root, truth = night
    cam = truth["camera"]
    hot = [h for h in truth["hot_pixels"] if h["dark_e_per_s"] > 100]
    assert hot
    darks = [r for r in truth["calibration"] if r["kind"] == "dark" and r["exptime"] == 15]
    for row in [*darks, truth["lights"][0], truth["lights"][-1]]:
        data, _ = _load(root, row["path"])
        for h in hot:
            level = cam["bias_adu"] + h["dark_e_per_s"] * 15 / cam["gain_e_per_adu"]
            assert data[h["y"], h["x"]] > min(0.7 * level, 0.9 * cam["saturation_adu"])
    assert all("cosmic_rays" not in r for r in truth["calibration"])
    hits = [(r, c) for r in truth["lights"] for c in r["cosmic_rays"]]
    assert hits
    for row, (x, y, e) in hits[:10]:
        data, _ = _load(root, row["path"])
        assert data[y, x] > cam["bias_adu"] + 0.5 * e / cam["gain_e_per_adu"]


def test_transit_truth_and_saturated_stars():
    spec = NightSpec(transit=Transit(depth=0.02, ingress_frac=0.0), seed=4)
    truth = Night(spec).truth
    tr = truth["transit"]
    rel = np.array([r["transit_rel_flux"] for r in truth["lights"]])
    mjd = np.array([r["mjd_mid"] for r in truth["lights"]])
    assert tr["shape"] == "box" and tr["star_id"] == 0
    assert rel.min() == pytest.approx(0.98) and rel.max() == 1.0
    inside = np.abs(mjd - tr["mid_mjd"]) * 86400 < tr["duration_s"] / 2 - 15
    outside = np.abs(mjd - tr["mid_mjd"]) * 86400 > tr["duration_s"] / 2 + 15
    assert inside.any() and outside.any()
    assert np.allclose(rel[inside], 0.98) and np.allclose(rel[outside], 1.0)
    sat = [s for s in truth["stars"] if s["saturated"]["V"]]
    assert 1 <= len(sat) <= len(truth["stars"]) // 5  # a few saturate, most do not
    assert Night(NightSpec(transit=None)).truth["transit"] is None


def test_flats_last_delivers_flats_after_lights(tmp_path):
    order = []
    simulate_night(
        tmp_path,
        NightSpec.small(n_lights=2, n_bias=1, n_darks=1, n_flats=2),
        flats_last=True,
        on_frame=lambda path, frame: order.append(frame.kind),
    )
    assert order == ["bias", "dark", "dark"] + ["light"] * 4 + ["flat"] * 4


# --------------------------------------------------------------------------- delivery


def _watch_sizes(root, stop, seen):
    while not stop.is_set():
        for path in Path(root).rglob("*"):
            if path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    seen.add((path.name, path.stat().st_size))
        time.sleep(0.002)


def test_write_frame_in_chunks_grows_the_file(tmp_path):
    data = np.arange(256 * 384, dtype=np.uint16).reshape(256, 384)
    blob = fits_bytes(data)
    seen, stop = set(), threading.Event()
    watcher = threading.Thread(target=_watch_sizes, args=(tmp_path, stop, seen))
    watcher.start()
    t0 = time.monotonic()
    try:
        write_frame(tmp_path / "a.fits", blob, chunk_bytes=40000, pause=0.03)
    finally:
        stop.set()
        watcher.join()
    assert time.monotonic() - t0 >= 0.03 * (len(blob) // 40000) - 0.01
    # one write per chunk (a stat during a write may also see part of a chunk)
    partial = {size for name, size in seen if name == "a.fits" and 0 < size < len(blob)}
    assert len(partial & set(range(40000, len(blob), 40000))) >= 2
    assert (tmp_path / "a.fits").read_bytes() == blob


@pytest.mark.parametrize("delivery", ["chunks", "rename", "copy"])
def test_realtime_delivery(tmp_path, delivery):
    spec = NightSpec.small(n_lights=1, n_bias=1, n_darks=1, n_flats=1, seed=3)
    out, stage = tmp_path / "night", tmp_path / "stage"
    seen, stop = set(), threading.Event()
    out.mkdir()
    watcher = threading.Thread(target=_watch_sizes, args=(out, stop, seen))
    watcher.start()
    t0 = time.monotonic()
    try:
        truth = simulate_night(
            out,
            spec,
            realtime=True,
            cadence=0.1,
            speed=2.0,
            chunk_bytes=65536,
            chunk_pause=0.02,
            delivery=delivery,
            staging_dir=stage if delivery == "copy" else None,
        )
    finally:
        stop.set()
        watcher.join()
    elapsed = time.monotonic() - t0
    files = _fits_files(out)
    n = len(truth["calibration"]) + len(truth["lights"])
    assert len(files) == n == 7
    assert elapsed >= (n - 1) * 0.1 / 2.0  # cadence / speed between frames
    size = (out / files[0]).stat().st_size
    partial = {s for name, s in seen if name.endswith(".fits") and 0 < s < size}
    temps = {name for name, _ in seen if name.endswith(".tmp") and name != "truth.json.tmp"}
    assert not list(out.rglob("*.fits.tmp"))
    if delivery == "chunks":
        assert partial  # the files grew under their final names
    elif delivery == "rename":
        assert not partial  # never incomplete under the final name
    assert bool(temps) == (delivery == "rename")
    if delivery == "copy":
        assert stage.is_dir() and not list(stage.iterdir())
    for rel in files:
        with fits.open(out / rel) as hdul:
            assert hdul[0].data.shape == (256, 384)


def test_refuses_non_empty_outdir(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(FileExistsError):
        simulate_night(tmp_path, NightSpec.small(n_lights=1))


# --------------------------------------------------------------------------- CLI, speed


def _cli(argv):
    parser = argparse.ArgumentParser(prog="reduxd")
    simulate.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, capsys):
    out = tmp_path / "n"
    argv = [
        "simulate",
        str(out),
        "--small",
        "--seed",
        "7",
        "--filters",
        "V",
        "--n-lights",
        "2",
        "--shape",
        "200x100",
        "--no-transit",
        "--n-bias",
        "2",
    ]
    assert _cli(argv) == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["camera"]["shape"] == [100, 200] and truth["transit"] is None
    assert truth["spec"]["seed"] == 7 and list(truth["filters"]) == ["V"]
    assert len(truth["lights"]) == 2
    assert fits.getdata(out / truth["lights"][0]["path"]).shape == (100, 200)
    assert "wrote" in capsys.readouterr().out
    assert _cli(argv) == 2  # not empty any more
    assert "not empty" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _cli(["simulate", str(out), "--shape", "big"])


def test_small_night_is_fast(tmp_path):
    t0 = time.monotonic()
    truth = simulate_night(tmp_path, NightSpec.small())
    assert time.monotonic() - t0 < 5.0
    assert len(truth["lights"]) == 12
