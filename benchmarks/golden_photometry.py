"""Photometry results kept identical: save them with one version of reduxd, check another.

Usage::

    .venv/bin/python benchmarks/golden_photometry.py save /tmp/golden.pkl   # before a change
    .venv/bin/python benchmarks/golden_photometry.py check /tmp/golden.pkl  # after it

To save with another checkout, put it first on the path:
``PYTHONPATH=/path/to/checkout .venv/bin/python benchmarks/golden_photometry.py save ...``.

Cases (44): the blaze frame (UMBC SharpCap) and its copy cut 7 rows and 5 columns
off, two ARCSAT XO-1 lights, and a simulated crowded pair (1,000 stars); the
first frame of each pair and the next one (matched to the first's reference);
skies annulus with the config's default radii, annulus at r = 15, radial and
global; without and with a mask (400 random BAD pixels, SATURATED above the
99.95th percentile). ``check`` asserts the same star IDs and flags, and every
measured column and multi-aperture flux within 1e-6 relative, and prints the
largest relative difference.
"""

import glob
import os
import pickle
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

from reduxd import maskbits
from reduxd.config import Camera, load_config
from reduxd.reduce import phot_params
from reduxd.steps.photometry import PhotParams, photometer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_photometry import crowded_frames

DATA = Path(os.environ.get("REDUXD_TEST_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
COLUMNS = ("x", "y", "fwhm", "sky", "sky_err", "flux", "flux_err", "mag_inst", "snr")
CROWD = 1000


def frames():
    xo = sorted(glob.glob(str(DATA / "arcsat-20250601/XO1-b_z_*.fits")))
    blaze = fits.getdata(DATA / "umbc-sharpcap/blaze_v_15s_00001.fits").astype(np.float32)
    crowd0, crowd1 = crowded_frames(CROWD)
    return {
        "blaze": (blaze, np.ascontiguousarray(blaze[7:, 5:])),
        "xo1": tuple(fits.getdata(p).astype(np.float32) for p in xo[:2]),
        "crowd": (crowd0, crowd1),
    }


def mask_for(img):
    m = np.zeros(img.shape, np.uint8)
    rng = np.random.default_rng(5)
    iy, ix = rng.integers(0, img.shape[0], 400), rng.integers(0, img.shape[1], 400)
    m[iy, ix] = maskbits.BAD
    m[img > np.percentile(img, 99.95)] |= maskbits.SATURATED
    return m


def configs():
    camera = Camera(instrument="ZWO ASI432MM", gain_e_per_adu=0.25, read_noise_e=4.0)
    base = dict(radius=0.0, annulus=None, sky_method="annulus", gain_e_per_adu=0.25,
                read_noise_e=4.0)  # fmt: skip
    return {
        "defaults": phot_params(load_config(), camera),
        "r15annulus": PhotParams(radius=15.0, sky_method="annulus"),
        "radial": PhotParams(radius=8.0, sky_method="radial", subframe=41),
        "global": PhotParams(**{**base, "sky_method": "global"}),
    }


def results():
    out = {}
    for name, (a, b) in frames().items():
        for cname, params in configs().items():
            if cname == "radial" and name == "crowd":
                continue  # a fit per star: minutes, and not the default
            for masked in (False, True):
                ma, mb = (mask_for(a), mask_for(b)) if masked else (None, None)
                r1 = photometer(a, mask=ma, exptime=15.0, params=params)
                r2 = photometer(b, mask=mb, exptime=15.0, params=params, reference=r1.reference)
                for which, r in (("first", r1), ("next", r2)):
                    table = {c: np.asarray(r.table[c]) for c in r.table.colnames}
                    ap = r.apertures and {k: np.asarray(v) for k, v in r.apertures.items()}
                    out[(name, cname, masked, which)] = (table, ap)
    return out


def relative(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    both = np.isfinite(a) & np.isfinite(b) & (a != 0)
    return float(np.max(np.abs(a - b)[both] / np.abs(a[both]), initial=0.0))


def check(ref, new):
    worst = 0.0
    for key, (t, ap) in ref.items():
        t2, ap2 = new[key]
        assert np.array_equal(t["star_id"], t2["star_id"]), (key, "star_id")
        assert np.array_equal(t["flags"], t2["flags"]), (key, "flags")
        pairs = [(t[c], t2[c], c) for c in COLUMNS]
        if ap:
            pairs += [(ap[c], ap2[c], f"apertures {c}") for c in ("flux", "flux_err")]
        for a, b, c in pairs:
            assert np.isclose(a, b, rtol=1e-6, atol=0, equal_nan=True).all(), (key, c)
            worst = max(worst, relative(a, b))
    return worst


if __name__ == "__main__":
    action, path = sys.argv[1], Path(sys.argv[2])
    out = results()
    if action == "save":
        path.write_bytes(pickle.dumps(out))
        print(f"saved {len(out)} cases to {path}")
    else:
        worst = check(pickle.loads(path.read_bytes()), out)
        print(f"all {len(out)} cases: same star IDs and flags; worst relative diff {worst:.1e}")
