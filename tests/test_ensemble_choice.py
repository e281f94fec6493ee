"""How the comparison ensemble is weighted and its radius chosen (issue 10b).

Real light-curve code on a synthetic field: the main radius is only left for a
clearly better one (a gain within the noise of the estimate is not a gain).
"""

import numpy as np
import pytest

from reduxd.products import lightcurve as lcmod


def _rows(noise, *, n_frames, seed, radii=None, reported=None):
    """Rows of a field: ``noise[s]`` relative noise of star s (one value, or one per radius).

    ``reported[s]`` is the relative error written in the rows (default: the true noise).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(n_frames):
        cloud = 10 ** (-0.4 * (0.3 if j % 7 == 3 else 0.0))
        for s, rel in noise.items():
            rel = np.atleast_1d(rel)
            err = np.atleast_1d((reported or {}).get(s, rel))
            flux = 1e5 * cloud * (1 + rng.normal(0, rel))
            row = dict(file=f"f{j:03d}.fits", mjd=60800.0 + 0.003 * j, star_id=s, x=50.0 * s,
                       y=50.0, exptime=1.0, flux=float(flux[0]), flux_err=float(1e5 * err[0]),
                       flags=0)  # fmt: skip
            if radii is not None:
                row["radius"] = radii[0]
                row["radius_ap"] = list(radii)
                row["flux_ap"] = [float(f) for f in flux]
                row["flux_err_ap"] = [float(1e5 * e) for e in err]
            rows.append(row)
    return rows


def test_main_radius_kept_unless_another_is_clearly_better():
    radii = (6.0, 4.0)
    slightly = {s: (0.010, 0.0092) for s in range(1, 9)}  # 8 % better at 4 px: noise
    lc = lcmod.build_lightcurve(_rows(slightly, n_frames=100, seed=4, radii=radii), target=[1.0])
    scatter = lc.meta["aperture"]["ensemble_scatter_by_radius"]
    assert scatter["4.00"] < scatter["6.00"]  # the estimate does prefer 4 px here ...
    assert lc.meta["aperture"]["radius_px"] == 6.0  # ... but not by more than its own noise
    clearly = {s: (0.010, 0.005) for s in range(1, 9)}  # 2x better at 4 px
    lc = lcmod.build_lightcurve(_rows(clearly, n_frames=100, seed=4, radii=radii), target=[1.0])
    assert lc.meta["aperture"]["radius_px"] == 4.0
    assert lcmod.radius_margin(80) > 0.25 and lcmod.radius_margin(142) < 0.2


def test_flag_summary_counts_each_flag_in_measured_frames_most_frequent_first():
    flags = np.array([0, 1, 1 | 4, lcmod.MISSING, 32, 1 | 32, 33, lcmod.MISSING, 4], np.int64)
    # SATURATED in 4 frames, BLEND in 3, BAD_PIXEL in 2, not measured in 2: the top three
    assert lcmod._flag_summary(flags) == "SATURATED in 4, BLEND in 3, BAD_PIXEL in 2"
    assert lcmod._flag_summary(np.array([lcmod.MISSING, 0], np.int64)) == "not measured in 1"
    assert lcmod._flag_summary(np.zeros(3, np.int64)) == ""


def test_a_grids_usable_frames_are_made_once_and_cannot_be_changed():
    rate = np.array([[1.0, np.nan, 2.0], [-1.0, 3.0, 4.0]])
    grid = lcmod._Grid(
        files=np.array(["a", "b"]), date_obs=np.array(["", ""]), mjd=np.array([1.0, 2.0]),
        star_ids=np.array([1, 2, 3]), present=np.array([[True, True, True], [True, True, False]]),
        rate=rate, rate_err=np.ones((2, 3)),
        flags=np.array([[0, 0, int(lcmod.Flag.LOW_SNR)], [0, int(lcmod.Flag.BLEND), 0]]),
        x=np.zeros((2, 3)), y=np.zeros((2, 3)), radius=np.ones(2),
    )  # fmt: skip
    # LOW_SNR is harmless; NaN and negative rates, BLEND and absent stars are not usable
    assert grid.usable.tolist() == [[True, False, True], [False, False, False]]
    assert grid.usable is grid.usable
    with pytest.raises(ValueError):
        grid.usable[0, 0] = False
