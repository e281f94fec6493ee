"""Quicklook PNGs: the finder chart of a frame and per-star radial profiles.

matplotlib's object API on the Agg canvas (no pyplot, no global state), so it
is safe in the daemon's worker thread. Files are written atomically: a
temporary file in the same folder, then ``os.replace``.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np
from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from reduxd.files import atomic_write
from reduxd.steps.sky import ring_profile

MAX_SIDE = 1600  # display pixels; larger frames are shown block-averaged


def _save_atomic(fig, path):
    return atomic_write(path, lambda fh: FigureCanvasAgg(fig).print_png(fh))


def _display(data):
    """Block-average big frames for display; returns (image, factor)."""
    factor = max(1, int(np.ceil(max(data.shape) / MAX_SIDE)))
    if factor == 1:
        return np.asarray(data, dtype=np.float32), 1
    ny, nx = (s // factor * factor for s in data.shape)
    blocks = np.asarray(data[:ny, :nx], dtype=np.float32).reshape(
        ny // factor, factor, nx // factor, factor
    )
    return np.nanmean(blocks, axis=(1, 3)), factor


def _default_radius(table, factor):
    fwhm = np.asarray(table["fwhm"], dtype=float) if "fwhm" in table.colnames else np.zeros(0)
    fwhm = fwhm[np.isfinite(fwhm)]
    return max(6.0 * factor, 3.0 * float(np.median(fwhm)) if fwhm.size else 0.0)


def _label(row):
    mag = row["mag_inst"]
    text = f"{int(row['star_id'])}"
    return text + (f" {mag:.2f}" if np.isfinite(mag) else "")


def write_quicklook(path, data, table, *, title="", mask=None, radius=None):
    """Write a finder chart PNG: the frame (zscale, asinh), each star circled and labelled.

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG (written atomically).
    data : numpy.ndarray
        The calibrated frame.
    table : astropy.table.Table
        Photometry rows (``star_id``, ``x``, ``y``, ``mag_inst``, ``flags``).
    title : str
        Figure title.
    mask : numpy.ndarray, optional
        Non-zero pixels are shown in red.
    radius : float, optional
        Circle radius in frame pixels (default: 3x the median FWHM, at least
        6 display pixels).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile
    >>> from astropy.table import Table
    >>> t = Table({"star_id": [1], "x": [20.0], "y": [30.0], "mag_inst": [-7.5], "flags": [0]})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = write_quicklook(Path(d) / "q.png", np.random.rand(64, 64), t)
    ...     out.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    image, factor = _display(data)
    finite = image[np.isfinite(image)]
    norm = ImageNormalize(
        finite if finite.size else np.zeros(1), interval=ZScaleInterval(), stretch=AsinhStretch()
    )
    ny, nx = image.shape
    height = 10 * ny / nx
    fig = Figure(figsize=(10, height + 0.5), dpi=100)
    ax = fig.add_axes((0, 0, 1, height / (height + 0.5)))
    ax.imshow(
        np.nan_to_num(image),
        origin="lower",
        cmap="gray",
        norm=norm,
        extent=(-0.5, nx * factor - 0.5, -0.5, ny * factor - 0.5),
    )
    if mask is not None and np.any(mask):
        shown, _ = _display((np.asarray(mask) != 0).astype(np.float32))
        overlay = np.ma.masked_less_equal(shown, 0)
        ax.imshow(
            overlay,
            origin="lower",
            cmap="autumn",
            alpha=0.6,
            vmin=0,
            vmax=1,
            extent=(-0.5, nx * factor - 0.5, -0.5, ny * factor - 0.5),
        )
    r = radius or _default_radius(table, factor)
    for row in table:
        colour = "lime" if int(row["flags"]) == 0 else "orange"
        ax.add_patch(Circle((row["x"], row["y"]), r, fill=False, color=colour, lw=0.8))
        ax.annotate(_label(row), (row["x"] + 0.8 * r, row["y"] + 0.8 * r), color=colour, fontsize=8)
    ax.set_xlim(-0.5, nx * factor - 0.5)
    ax.set_ylim(-0.5, ny * factor - 0.5)
    ax.set_axis_off()
    fig.suptitle(title or f"{len(table)} stars (green: clean, orange: flagged)", fontsize=10)
    return _save_atomic(fig, path)


def write_profile_plot(path, profile, *, radius=None, title=""):
    """Write one star's radial profile, the fitted ``A f(r; mu, sigma) + G`` and the aperture.

    ``profile`` is an entry of ``PhotResult.profiles`` (keys ``r``, ``values``,
    ``params``, ``ok``, ``reason``, ``r2``, optionally ``star_id``).

    Examples
    --------
    >>> import tempfile
    >>> prof = {"r": np.arange(10.0), "values": 5 * np.exp(-np.arange(10.0) ** 2 / 8) + 1,
    ...         "params": (5.0, 0.0, 2.0, 1.0), "ok": True, "reason": "", "r2": 1.0}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_profile_plot(Path(d) / "p.png", prof, radius=6).stat().st_size > 0
    True
    """
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    r, values = np.asarray(profile["r"]), np.asarray(profile["values"])
    ax.plot(r, values, ".", ms=2, color="0.4", label="pixels")
    if profile.get("params") is not None:
        grid = np.linspace(0, r.max() if r.size else 1, 200)
        amp, mu, sigma, sky = profile["params"]
        ax.plot(
            grid,
            ring_profile(grid, amp, mu, sigma, sky),
            color="C0",
            label=f"fit, R$^2$={profile.get('r2', np.nan):.3f}",
        )
        ax.axhline(sky, color="C2", ls="--", lw=1, label=f"sky G={sky:.1f}")
    if radius:
        ax.axvline(radius, color="C3", ls=":", lw=1, label=f"aperture R={radius:g}")
    verdict = "accepted" if profile.get("ok") else f"rejected: {profile.get('reason', '')}"
    star = profile.get("star_id")
    ax.set_title(title or (f"star {star}: " if star is not None else "") + verdict, fontsize=9)
    ax.set_xlabel("r [pix]")
    ax.set_ylabel("ADU")
    ax.legend(fontsize=7)
    return _save_atomic(fig, path)
