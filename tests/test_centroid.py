"""Re-centring kernel (``_centroid.refine`` behind ``detect.refine_stars``).

The kernel replaced a batched numpy implementation; that code is kept below,
unchanged but for its names, as the reference: every star must come out with
the same position (1e-9 px), the same NaN results, and FWHM, elongation and
windowed flux equal to 1e-9 relative, on Gaussian stars at random sub-pixel
offsets, blends, stars at and just beyond the frame edges, saturated, NaN and
masked pixels, and junk candidates that never converge.
"""

import warnings

import numpy as np
import pytest

from reduxd import maskbits
from reduxd.steps import detect
from reduxd.steps.sky import row_order
from reduxd.synth import render_stars

FWHM_PER_SIGMA = detect.FWHM_PER_SIGMA
IGNORED = detect.IGNORED
MIN_BATCH = 32

# ---- reference: the numpy code of reduxd/steps/detect.py at 857cd46 ------------------------


def square_stamps(image, x0, y0, side):
    """The ``side x side`` stamps with corners ``(x0, y0)`` (sky.square_stamps at 857cd46)."""
    (ny, nx), (sy, sx) = image.shape, image.strides
    shape = (ny - side + 1, nx - side + 1, side, side)  # sliding_window_view, less checking
    if image.flags.c_contiguous:  # a view of its buffer: built in ~1 us, as_strided in ~10
        windows = np.ndarray(shape, image.dtype, image, 0, (sy, sx, sy, sx))
    else:
        windows = np.lib.stride_tricks.as_strided(image, shape, (sy, sx, sy, sx), writeable=False)
    return windows[y0, x0]


def _box(shape, x, y, half):
    ny, nx = shape
    xc, yc = round(float(x)), round(float(y))
    return (
        slice(max(yc - half, 0), min(yc + half + 1, ny)),
        slice(max(xc - half, 0), min(xc + half + 1, nx)),
    )


def _weighted_moments(stamp, sl, x, y, sigma_w):
    yy, xx = np.ogrid[sl[0], sl[1]]
    dx, dy = xx - x, yy - y
    wi = np.exp(-0.5 * (dx * dx + dy * dy) / sigma_w**2) * stamp
    total = wi.sum()
    if not total > 0:
        return None
    mx, my = (wi * dx).sum() / total, (wi * dy).sum() / total
    mxx = (wi * dx * dx).sum() / total - mx * mx
    myy = (wi * dy * dy).sum() / total - my * my
    mxy = (wi * dx * dy).sum() / total - mx * my
    return total, mx, my, mxx, myy, mxy


def _batch_moments(resid, x, y, sigma_w, half, background, mask, own=None):
    """``_weighted_moments`` of stars whose boxes (same ``half``) lie inside the frame.

    ``own``: each star's smaller half size, if any (the window is 0 outside it).

    Stamps ``(n, 2 * half + 1, 2 * half + 1)`` are gathered at once (``square_stamps``);
    the moments are those of ``_weighted_moments`` (equal to ~1e-15), with the
    Gaussian window as a product of its x and y factors, so the window's sums
    along x and along y are (batched) matrix products with the stamps, and the
    first and second moments come from those row and column sums.
    Returns ``(total, mx, my, mxx, myy, mxy)`` arrays (total may be <= 0).
    """
    offsets = np.arange(-half, half + 1)
    xc, yc = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    side = 2 * half + 1
    stamp = np.subtract(square_stamps(resid, xc - half, yc - half, side),
                        background[:, None, None], dtype=np.float64)  # fmt: skip
    if mask is not None:
        ignored = square_stamps(mask, xc - half, yc - half, side) & IGNORED
        np.copyto(stamp, 0.0, where=ignored != 0)
    if not np.isfinite(stamp).all():
        np.nan_to_num(stamp, copy=False)
    dx, dy = (xc[:, None] + offsets) - x[:, None], (yc[:, None] + offsets) - y[:, None]  # (n, b)
    sw2 = (sigma_w**2)[:, None]
    # the window is separable: exp(-(dx² + dy²) / 2s²) = exp(-dx² / 2s²) exp(-dy² / 2s²)
    wy, wx = np.exp(-0.5 * dy * dy / sw2), np.exp(-0.5 * dx * dx / sw2)  # (n, b)
    if own is not None:
        outside = np.abs(offsets) > own[:, None]
        np.copyto(wx, 0.0, where=outside)
        np.copyto(wy, 0.0, where=outside)
    both = np.empty((*wx.shape, 2))
    both[:, :, 0] = wx
    np.multiply(wx, dx, out=both[:, :, 1])
    along_x = np.matmul(stamp, both)  # (n, b, 2): sums over x of the window and of it x dx
    rows = wy * along_x[:, :, 0]  # (n, b): the weighted stamp summed along x
    cols = wx * np.matmul(wy[:, None, :], stamp)[:, 0, :]  # summed along y

    total = rows.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = np.einsum("nb,nb->n", cols, dx) / total
        my = np.einsum("nb,nb->n", rows, dy) / total
        mxx = np.einsum("nb,nb->n", cols, dx * dx) / total - mx * mx
        myy = np.einsum("nb,nb->n", rows, dy * dy) / total - my * my
        mxy = np.einsum("nb,nb->n", wy * dy, along_x[:, :, 1]) / total - mx * my
    return total, mx, my, mxx, myy, mxy


def _moments(resid, x, y, sigma_w, background, mask):
    """Windowed moments of several stars (box half size ``ceil(3 sigma_w) + 1``).

    Stars with boxes inside the frame are measured in batches of equal box
    size, the sizes fewer than ``MIN_BATCH`` stars have together in one batch
    of the largest of them (each star's window cut to its own box; the
    per-batch cost is mostly fixed); a box cut by the frame edge goes through
    ``_weighted_moments``. Returns six arrays; ``total`` is NaN where the
    moments are undefined.
    """
    ny, nx = resid.shape
    half = np.ceil(3 * sigma_w).astype(np.int64) + 1
    xc, yc = np.rint(x), np.rint(y)
    inside = (xc - half >= 0) & (xc + half < nx) & (yc - half >= 0) & (yc + half < ny)
    if x.size and inside.all() and (half == half[0]).all():  # one batch: all
        out = np.array(_batch_moments(resid, x, y, sigma_w, int(half[0]), background, mask))
        out[:, ~(out[0] > 0)] = np.nan
        return out
    out = np.full((6, x.size), np.nan)
    sizes = half[inside]
    values, counts = np.unique(sizes, return_counts=True)
    rest = inside.copy()
    rare = inside & np.isin(half, values[counts < MIN_BATCH])
    if rare.any():  # one batch of the largest box for the rare sizes, where it fits
        top = half[rare].max()
        sel = np.flatnonzero(rare & (xc - top >= 0) & (xc + top < nx) & (yc - top >= 0)
                             & (yc + top < ny))  # fmt: skip
        if sel.size:
            sub = x[sel], y[sel], sigma_w[sel], int(top), background[sel]
            out[:, sel] = _batch_moments(resid, *sub, mask, own=half[sel])
            rest[sel] = False
    for h in np.unique(half[rest]):
        sel = np.flatnonzero(rest & (half == h))
        sub = x[sel], y[sel], sigma_w[sel], int(h), background[sel]
        out[:, sel] = _batch_moments(resid, *sub, mask)
    for i in np.flatnonzero(~inside):
        sl = _box(resid.shape, x[i], y[i], int(half[i]))
        stamp = resid[sl] - background[i]
        if mask is not None:
            stamp = np.where(mask[sl] & IGNORED, 0.0, stamp)
        moments = _weighted_moments(np.nan_to_num(stamp), sl, x[i], y[i], sigma_w[i])
        if moments is not None:
            out[:, i] = moments
    out[:, ~(out[0] > 0)] = np.nan
    return out


def reference_refine_stars(
    resid, x, y, *, fwhm, background=0.0, max_fwhm=None, mask=None, iters=12
):
    """The old ``refine_stars``: all stars iterate together, moments in batches."""
    x0 = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y0 = np.atleast_1d(np.asarray(y, dtype=np.float64))
    fwhm = np.broadcast_to(np.asarray(fwhm, dtype=np.float64), x0.shape)
    bkg = np.broadcast_to(np.asarray(background, dtype=np.float64), x0.shape)
    top = np.broadcast_to(np.asarray(4 * fwhm if max_fwhm is None else max_fwhm, float), x0.shape)
    order = row_order(y0)  # each star on its own; in row order the stamps come from cache
    x0, y0, fwhm, bkg, top = (v[order] for v in (x0, y0, fwhm, bkg, top))
    x, y = x0.copy(), y0.copy()
    sigma_w = np.maximum(fwhm / FWHM_PER_SIGMA, 0.6)
    sigma_max = np.maximum(top / FWHM_PER_SIGMA, sigma_w)
    sigma_s = np.full(x0.size, np.nan)
    result = np.full((4, x0.size), np.nan)  # mxx, myy, mxy, total of the last narrowing step
    has_result = np.zeros(x0.size, bool)
    failed = np.zeros(x0.size, bool)
    active = np.ones(x0.size, bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(iters):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            sw, xi, yi, smax = sigma_w[idx], x[idx], y[idx], sigma_max[idx]
            total, mx, my, mxx, myy, mxy = _moments(resid, xi, yi, sw, bkg[idx], mask)
            nx_, ny_ = xi + 2 * mx, yi + 2 * my
            reach = 6 * sw + 3
            bad = ~(total > 0) | (np.abs(nx_ - x0[idx]) > reach) | (np.abs(ny_ - y0[idx]) > reach)
            x[idx] = np.where(bad, xi, nx_)
            y[idx] = np.where(bad, yi, ny_)
            sw2 = sw**2
            m = 0.5 * (mxx + myy)
            widen = ~bad & (m >= 0.9 * sw2) & (sw < smax)
            narrow = ~bad & ~widen
            sigma_w[idx[widen]] = np.minimum(2 * sw[widen], smax[widen])
            m = np.minimum(m, 0.9 * sw2)
            new = np.where(m > 0, np.sqrt(m * sw2 / (sw2 - m)), np.nan)
            new2 = new**2
            new = np.where(new2 > 1 / 6, np.sqrt(new2 - 1 / 12), np.nan)
            converged = (np.abs(new - sigma_s[idx]) < 0.01 * new) & (np.abs(mx) + np.abs(my) < 0.01)
            k = idx[narrow]
            result[:, k] = mxx[narrow], myy[narrow], mxy[narrow], total[narrow]
            has_result[k] = True
            new_k = new[narrow]
            sigma_s[k] = new_k
            sigma_w[k] = np.minimum(np.maximum(new_k, 0.6), smax[narrow])  # np.clip, less overhead
            failed[idx[bad]] = True
            active[idx[bad | (narrow & (converged | ~np.isfinite(new)))]] = False
        failed |= ~has_result | ~np.isfinite(sigma_s)
        mxx, myy, mxy, total = result
        half_diff = np.hypot(0.5 * (mxx - myy), mxy)
        lam1, lam2 = 0.5 * (mxx + myy) + half_diff, 0.5 * (mxx + myy) - half_diff
        elong = np.where(lam2 > 0, np.sqrt(lam1 / lam2), np.inf)
    nan = np.full(x0.size, np.nan)
    out = np.empty((5, x0.size))
    out[:, order] = (
        np.where(failed, x0, x),
        np.where(failed, y0, y),
        np.where(failed, nan, FWHM_PER_SIGMA * sigma_s),
        np.where(failed, nan, elong),
        np.where(failed, nan, 2 * total),
    )
    return tuple(out)


# ---- tests -----------------------------------------------------------------------------------

SHAPE = (120, 150)


def assert_same(got, ref):
    """Same positions (1e-9 px), same NaNs, FWHM, elongation and flux to 1e-9 relative."""
    gx, gy, gf, ge, gw = got
    rx, ry, rf, re, rw = ref
    np.testing.assert_allclose(gx, rx, rtol=0, atol=1e-9)
    np.testing.assert_allclose(gy, ry, rtol=0, atol=1e-9)
    for a, b in ((gf, rf), (ge, re), (gw, rw)):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=0, equal_nan=True)


def compare(image, x, y, **kwargs):
    """Kernel and reference on the same stars; returns the kernel's result."""
    got = detect.refine_stars(image, x, y, **kwargs)
    assert_same(got, reference_refine_stars(image, x, y, **kwargs))
    return got


def field(rng, n, *, fwhm=3.0, shape=SHAPE, margin=8.0, sky=100.0, noise=3.0):
    """Gaussian stars at random sub-pixel positions on a noisy sky; (image, x, y)."""
    x = rng.uniform(margin, shape[1] - 1 - margin, n)
    y = rng.uniform(margin, shape[0] - 1 - margin, n)
    flux = 10 ** rng.uniform(3.0, 5.0, n)
    image = render_stars(shape, x, y, flux, fwhm) + rng.normal(sky, noise, shape)
    return image.astype(np.float32), x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_stars_match_the_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    fwhm = rng.uniform(1.5, 6.0)
    image, x, y = field(rng, 40, fwhm=fwhm)
    start_x, start_y = x + rng.uniform(-1.5, 1.5, x.size), y + rng.uniform(-1.5, 1.5, x.size)
    got = compare(image, start_x, start_y, fwhm=fwhm, background=100.0)
    assert np.isfinite(got[2]).mean() > 0.8  # most stars measured: the comparison is not vacuous


def test_per_star_windows_backgrounds_and_dtypes_match_the_reference():
    rng = np.random.default_rng(4)
    image, x, y = field(rng, 50, fwhm=2.5)
    fwhm = rng.uniform(1.0, 8.0, x.size)  # many box sizes: batched and rare sizes in the reference
    bkg = rng.normal(100.0, 2.0, x.size)
    top = rng.uniform(4.0, 40.0, x.size)
    for img in (image, image.astype(np.float64), np.clip(image, 0, None).astype(np.uint16)):
        compare(img, x + 0.7, y - 0.4, fwhm=fwhm, background=bkg, max_fwhm=top)


def test_blends_match_the_reference():
    rng = np.random.default_rng(5)
    cx, cy = rng.uniform(20, 130, 15), rng.uniform(20, 100, 15)
    angle = rng.uniform(0, 2 * np.pi, 15)
    gap = rng.uniform(2.0, 6.0, 15)  # companions 2-6 px away: merged to barely split
    x = np.concatenate([cx, cx + gap * np.cos(angle)])
    y = np.concatenate([cy, cy + gap * np.sin(angle)])
    flux = np.concatenate([np.full(15, 2e4), rng.uniform(2e3, 2e4, 15)])
    image = render_stars(SHAPE, x, y, flux, 3.5) + rng.normal(50.0, 2.0, SHAPE)
    compare(image.astype(np.float32), x, y, fwhm=3.5, background=50.0)
    mid_x, mid_y = cx + 0.5 * gap * np.cos(angle), cy + 0.5 * gap * np.sin(angle)
    compare(image.astype(np.float32), mid_x, mid_y, fwhm=3.5, background=50.0)


def test_starts_in_a_bright_wing_match_the_reference():
    # started 5-14 px from a bright star, a candidate walks towards it: it is taken
    # there, or fails when it would end farther than 6 sigma_w + 3 from its start
    rng = np.random.default_rng(10)
    image = render_stars(SHAPE, [75.0], [60.0], [1e6], 3.0) + rng.normal(0.0, 1.0, SHAPE)
    angle, dist = rng.uniform(0, 2 * np.pi, 60), np.linspace(5.0, 14.0, 60)
    x, y = 75.0 + dist * np.cos(angle), 60.0 + dist * np.sin(angle)
    got = compare(image, x, y, fwhm=3.0)
    assert 5 < np.isnan(got[2]).sum() < 55  # both outcomes are compared


def test_stars_at_and_beyond_the_edges_match_the_reference():
    rng = np.random.default_rng(6)
    ny, nx = SHAPE
    along_x = rng.uniform(0, nx - 1, 12)
    along_y = rng.uniform(0, ny - 1, 12)
    near = rng.uniform(-2.0, 4.0, 12)  # the box is cut by the frame, some centres outside it
    x = np.concatenate([near, nx - 1 - near, along_x, along_x])
    y = np.concatenate([along_y, along_y, near, ny - 1 - near])
    image = render_stars(SHAPE, x, y, np.full(x.size, 3e4), 4.0) + rng.normal(100, 3, SHAPE)
    image = image.astype(np.float32)
    got = compare(image, x + 0.4, y - 0.3, fwhm=4.0, background=100.0)
    assert np.isfinite(got[2]).sum() > 20
    corners_x, corners_y = (
        np.array([0.0, nx - 1.0, 1.2, nx - 2.6]),
        np.array([0.0, ny - 1.0, 1.0, 0.4]),
    )
    compare(image, corners_x, corners_y, fwhm=4.0, background=100.0)


def test_saturated_nan_and_masked_pixels_match_the_reference():
    rng = np.random.default_rng(7)
    image, x, y = field(rng, 40, fwhm=4.0)
    image = np.minimum(image, 3000.0)  # flat-topped (saturated) cores
    iy, ix = rng.integers(0, SHAPE[0], 400), rng.integers(0, SHAPE[1], 400)
    image[iy[:200], ix[:200]] = np.nan
    cores = np.rint(y[:10]).astype(int), np.rint(x[:10]).astype(int)
    image[cores] = np.nan  # NaN at the peak itself
    mask = np.zeros(SHAPE, np.uint8)
    mask[iy[200:], ix[200:]] = rng.choice(
        [maskbits.BAD, maskbits.NONFINITE, maskbits.SATURATED], 200
    )
    mask[image >= 3000.0] |= maskbits.SATURATED  # not ignored: these pixels still count
    for m in (None, mask):
        compare(image, x - 0.6, y + 0.9, fwhm=4.0, background=100.0, mask=m)
    with_mask = detect.refine_stars(image, x - 0.6, y + 0.9, fwhm=4.0, background=100.0, mask=mask)
    without = detect.refine_stars(image, x - 0.6, y + 0.9, fwhm=4.0, background=100.0)
    assert not np.allclose(with_mask[0], without[0], rtol=0, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("iters", [1, 3, 12, 30])
def test_junk_candidates_that_do_not_converge_match_the_reference(iters):
    rng = np.random.default_rng(8)
    image = rng.normal(0.0, 5.0, SHAPE)  # background removed: noise only
    hot = rng.integers(10, 110, 8), rng.integers(10, 140, 8)
    image[hot] += 500.0  # hot pixels (sharper than any window)
    image[60:66, 20:60] -= 200.0  # a black box
    ring = render_stars(SHAPE, [100.0], [40.0], [4e5], 16.0) - render_stars(
        SHAPE, [100.0], [40.0], [3.5e5], 9.0
    )  # a defocused "donut": the window keeps growing
    image = (image + ring).astype(np.float32)
    x = np.concatenate([rng.uniform(5, 145, 30), hot[1], [40.0, 100.0, 101.5]])
    y = np.concatenate([rng.uniform(5, 115, 30), hot[0], [63.0, 40.0, 38.2]])
    got = compare(image, x, y, fwhm=3.0, max_fwhm=64.0, iters=iters)
    compare(image, x, y, fwhm=3.0, iters=iters)
    if iters == 12:
        assert np.isnan(got[2]).sum() >= 5  # failures are compared too


def test_unmeasurable_star_keeps_its_position_and_gets_nan():
    image = np.zeros((40, 40))
    out = detect.refine_stars(image, [20.3, -30.0], [19.6, 10.0], fwhm=3.0)
    assert out[0].tolist() == [20.3, -30.0] and out[1].tolist() == [19.6, 10.0]
    assert np.isnan(np.array(out[2:])).all()


def image_at(cx, cy):
    """One circular Gaussian star (FWHM 3) centred at (cx, cy)."""
    return render_stars((60, 70), [cx], [cy], [1e5], 3.0)


def test_symmetric_star_converges_to_its_true_centre():
    # a circular Gaussian is symmetric about its centre; the box (around the rounded
    # position) is symmetric too when the centre is on a pixel
    for cx, cy in ((30.0, 25.0), (30.5, 25.0), (30.5, 24.5)):
        image = image_at(cx, cy)
        x, y, fwhm, elong, _ = detect.refine_stars(image, [cx + 0.45], [cy - 0.35], fwhm=2.0)
        assert abs(x[0] - cx) < 1e-3 and abs(y[0] - cy) < 1e-3
        assert fwhm[0] == pytest.approx(3.0, rel=0.02)
        assert elong[0] == pytest.approx(1.0, abs=1e-4)
    # started on a pixel-centred star, every step is zero: exactly the centre, round
    x, y, fwhm, elong, _ = detect.refine_stars(image_at(30.0, 25.0), [30.0], [25.0], fwhm=3.0)
    assert abs(x[0] - 30.0) < 1e-12 and abs(y[0] - 25.0) < 1e-12
    assert elong[0] == pytest.approx(1.0, abs=1e-9)


def test_mirrored_image_gives_mirrored_positions():
    rng = np.random.default_rng(9)
    image, x, y = field(rng, 30, fwhm=3.0)
    ny, nx = image.shape
    x0, y0 = x + rng.uniform(-1, 1, x.size), y + rng.uniform(-1, 1, y.size)
    x0, y0 = x0 + 0.013, y0 + 0.007  # no start exactly on a half pixel (rounding is not mirrored)
    a = detect.refine_stars(image, x0, y0, fwhm=3.0, background=100.0)
    b = detect.refine_stars(image[::-1, ::-1], nx - 1 - x0, ny - 1 - y0, fwhm=3.0, background=100.0)
    np.testing.assert_allclose(nx - 1 - b[0], a[0], atol=1e-9)
    np.testing.assert_allclose(ny - 1 - b[1], a[1], atol=1e-9)
    np.testing.assert_allclose(b[2], a[2], rtol=1e-9)


def test_arguments_are_checked():
    image = np.zeros((20, 20))
    with pytest.raises(ValueError, match="fwhm"):
        detect.refine_stars(image, [5.0], [5.0], fwhm=np.nan)
    with pytest.raises(ValueError, match="max_fwhm"):
        detect.refine_stars(image, [5.0, 6.0], [5.0, 6.0], fwhm=3.0, max_fwhm=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="mask shape"):
        detect.refine_stars(image, [5.0], [5.0], fwhm=3.0, mask=np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        detect.refine_stars(np.zeros(20), [5.0], [5.0], fwhm=3.0)
    empty = detect.refine_stars(image, [], [], fwhm=3.0)
    assert [v.size for v in empty] == [0] * 5


def reference_local_background(image, x, y, half, mask=None):
    """Per star: ``np.median`` of the usable pixels (in the frame, finite, not ignored)
    on the border of the square around the rounded position; NaN for none."""
    ny, nx = image.shape
    out = []
    for cx, cy in zip(np.rint(x).astype(int), np.rint(y).astype(int), strict=True):
        values = []
        for jy in range(cy - half, cy + half + 1):
            for jx in range(cx - half, cx + half + 1):
                inside = 0 <= jx < nx and 0 <= jy < ny
                if max(abs(jx - cx), abs(jy - cy)) != half or not inside:
                    continue
                if np.isfinite(image[jy, jx]) and (mask is None or not mask[jy, jx] & IGNORED):
                    values.append(float(image[jy, jx]))
        out.append(np.median(values) if values else np.nan)
    return np.array(out)


@pytest.mark.parametrize("half", [0, 1, 2, 5, 12])
def test_local_background_is_the_median_of_the_usable_border_pixels(half):
    rng = np.random.default_rng(20 + half)
    ny, nx = 60, 70
    noisy = rng.normal(100.0, 5.0, (ny, nx))
    integer = np.rint(rng.normal(100.0, 2.0, (ny, nx)))  # many ties
    bad = rng.integers(0, ny, 150), rng.integers(0, nx, 150)
    mask = np.zeros((ny, nx), np.uint8)
    mask[bad] = rng.choice([maskbits.BAD, maskbits.NONFINITE, maskbits.SATURATED], 150)
    x = np.concatenate([rng.uniform(-half - 2, nx + half + 1, 80), [30.0, 30.5, -40.0, np.nan]])
    y = np.concatenate([rng.uniform(-half - 2, ny + half + 1, 80), [20.0, 20.5, 10.0, 5.0]])
    for image in (noisy.astype(np.float32), noisy, integer.astype(np.uint16), integer):
        image = image.copy()
        if image.dtype.kind == "f":
            image[bad[0][:50], bad[1][:50]] = [np.nan, np.inf, -np.inf, 7.0, 1e30][:5] * 10
        for m in (None, mask):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # rint(NaN) cast
                expected = reference_local_background(image, x, y, half, m)
            got = detect.local_background(image, x, y, half=half, mask=m)
            np.testing.assert_array_equal(got, expected)  # exactly, NaN where none is usable
    all_masked = np.ones((ny, nx), np.uint8) * maskbits.BAD
    assert np.isnan(detect.local_background(noisy, [30.0], [20.0], half=3, mask=all_masked)).all()
    with pytest.raises(ValueError, match="half"):
        detect.local_background(noisy, [30.0], [20.0], half=-1)


def reference_bin_image(data, factor):
    """The old numpy ``detect.bin_image`` (857cd46): strided float32 sums."""
    ny, nx = (s // factor * factor for s in data.shape)
    rows = data[0:ny:factor, :nx].astype(np.float32)
    for k in range(1, factor):
        rows += data[k:ny:factor, :nx]
    out = rows[:, 0::factor].copy()
    for k in range(1, factor):
        out += rows[:, k::factor]
    return out / np.float32(factor * factor)


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 5])
def test_bin_image_equals_the_numpy_sums_bit_for_bit(factor):
    rng = np.random.default_rng(30 + factor)
    base = rng.normal(1000.0, 300.0, (103, 118)) * rng.uniform(0.1, 1e4)  # ragged borders
    base[rng.integers(0, 103, 20), rng.integers(0, 118, 20)] = [np.nan, np.inf, -np.inf, 3e38] * 5
    with np.errstate(all="ignore"):  # float16 overflows to inf: kept
        small = base.astype(np.float16)
    images = [
        base.astype(np.float32),
        base,  # float64: each float32 sum rounded from float64 (numpy's loop)
        np.clip(np.nan_to_num(base), 0, 65535).astype(np.uint16),
        np.clip(np.nan_to_num(base), -2e9, 2e9).astype(np.int32),
        small,
        np.asfortranarray(base.astype(np.float32)),
        base.astype(np.float32)[::2, 1:],  # a strided view
    ]
    for image in images:
        with np.errstate(all="ignore"):
            expected = reference_bin_image(image, factor)
            got = detect.bin_image(image, factor)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected, strict=True)
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), image.dtype


def reference_peak_position(data, x, y, *, half):
    """The old per-position loop of ``detect.peak_position`` (857cd46)."""
    px, py = np.zeros(np.size(x), int), np.zeros(np.size(x), int)
    for i, (xi, yi) in enumerate(zip(np.atleast_1d(x), np.atleast_1d(y), strict=True)):
        sl = _box(data.shape, xi, yi, half)
        stamp = np.nan_to_num(data[sl], nan=-np.inf)
        jy, jx = np.unravel_index(np.argmax(stamp), stamp.shape)
        px[i], py[i] = sl[1].start + jx, sl[0].start + jy
    return px, py


@pytest.mark.parametrize("half", [0, 1, 2, 4])
def test_peak_position_equals_the_old_loop(half):
    rng = np.random.default_rng(40 + half)
    ny, nx = 50, 60
    noisy = rng.normal(0.0, 1.0, (ny, nx))
    noisy[rng.integers(0, ny, 60), rng.integers(0, nx, 60)] = [np.nan, np.inf, -np.inf] * 20
    noisy[10:14, 20:24] = np.nan  # a box with no finite pixel: its first pixel
    ties = np.rint(rng.normal(5, 1, (ny, nx))).astype(np.uint16)
    images = [noisy, noisy.astype(np.float32), ties]
    x = np.concatenate([rng.uniform(-half, nx - 1 + half, 200), [21.0, 21.5, 22.5, 0.0]])
    y = np.concatenate([rng.uniform(-half, ny - 1 + half, 200), [11.0, 11.5, 12.5, 49.0]])
    for image in images:  # ties in the integer image: the first in row-major order
        got = detect.peak_position(image, x, y, half=half)
        expected = reference_peak_position(image, x, y, half=half)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    with pytest.raises(ValueError, match="no pixel"):
        detect.peak_position(noisy, [-10.0], [5.0], half=half)


def test_peak_position_ranks_nan_lowest_and_inf_as_the_largest_finite():
    for dtype in (np.float32, np.float64):
        img = np.full((5, 5), np.nan, dtype)
        img[3, 4] = -np.inf  # above NaN
        assert [int(v[0]) for v in detect.peak_position(img, [2.0], [2.0], half=2)] == [4, 3]
        img[1, 1], img[2, 2] = np.finfo(dtype).max, np.inf  # +inf ranks as the largest finite
        assert [int(v[0]) for v in detect.peak_position(img, [2.0], [2.0], half=2)] == [1, 1]
