"""Quicklook PNGs: the finder chart of a frame and per-star radial profiles.

The finder chart is on the per-light hot path, so it is drawn straight into a
Pillow image (zscale + asinh in numpy, circles and labels with ImageDraw): about
a tenth of the time matplotlib takes. Profile plots use matplotlib's object API
on the Agg canvas (no pyplot, no global state). Files are written atomically.
Pillow comes with matplotlib (a dependency of it), so nothing is added.
"""

import numpy as np
from astropy.visualization import AsinhStretch, ZScaleInterval
from PIL import Image, ImageDraw, ImageFont

from reduxd.files import atomic_write
from reduxd.steps.sky import ring_profile

MAX_SIDE = 1600  # display pixels; larger frames are shown block-averaged
MIN_WIDTH = 800  # smaller frames are shown enlarged
TITLE_HEIGHT = 24
FONT_SIZE = 14
# palette: GREYS grey levels, then the colours drawn on top
GREYS = 250
CLEAN, FLAGGED, MASKED, BLACK, WHITE = range(GREYS, GREYS + 5)
PALETTE = [v for g in range(GREYS) for v in (g * 255 // (GREYS - 1),) * 3] + [
    0, 255, 0,  # clean star: green
    255, 165, 0,  # flagged star: orange
    255, 0, 0,  # masked pixel: red
    0, 0, 0,
    255, 255, 255,
]  # fmt: skip


def _save_atomic(fig, path):
    png = {"compress_level": 1}
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # only profile plots need it

    return atomic_write(path, lambda fh: FigureCanvasAgg(fig).print_png(fh, pil_kwargs=png))


def _display(data):
    """Frame as shown: block-averaged if big, repeated if small; returns (image, scale).

    ``scale`` is display pixels per frame pixel.
    """
    factor = max(1, int(np.ceil(max(data.shape) / MAX_SIDE)))
    if factor == 1:
        zoom = max(1, -(-MIN_WIDTH // data.shape[1]))  # ceil
        image = np.asarray(data, dtype=np.float32)
        return (image.repeat(zoom, 0).repeat(zoom, 1) if zoom > 1 else image), float(zoom)
    ny, nx = (s // factor * factor for s in data.shape)
    blocks = np.asarray(data[:ny, :nx], dtype=np.float32).reshape(
        ny // factor, factor, nx // factor, factor
    )
    mean = blocks.mean(axis=(1, 3))
    if not np.isfinite(mean).all():  # only then pay for nanmean
        mean = np.nanmean(blocks, axis=(1, 3))
    return mean, 1.0 / factor


def _default_radius(table, scale):
    """Circle radius in frame pixels: 3 FWHM, and at least 6 display pixels."""
    fwhm = np.asarray(table["fwhm"], dtype=float) if "fwhm" in table.colnames else np.zeros(0)
    fwhm = fwhm[np.isfinite(fwhm)]
    return max(6.0 / scale, 3.0 * float(np.median(fwhm)) if fwhm.size else 0.0)


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
    >>> from pathlib import Path
    >>> from astropy.table import Table
    >>> t = Table({"star_id": [1], "x": [20.0], "y": [30.0], "mag_inst": [-7.5], "flags": [0]})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = write_quicklook(Path(d) / "q.png", np.random.rand(64, 64), t)
    ...     out.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    image, scale = _display(data)
    pixels = (_stretch(image).astype(np.uint16) * GREYS // 256).astype(np.uint8)
    if mask is not None and np.any(mask):
        shown, _ = _display((np.asarray(mask) != 0).astype(np.float32))
        pixels[shown > 0] = MASKED
    canvas = Image.new("P", (image.shape[1], image.shape[0] + TITLE_HEIGHT), WHITE)
    canvas.putpalette(PALETTE)
    canvas.paste(Image.fromarray(pixels[::-1], mode="L"), (0, TITLE_HEIGHT))  # row 0 at bottom
    draw = ImageDraw.Draw(canvas)
    font = _font()
    r = (radius or _default_radius(table, scale)) * scale
    top = TITLE_HEIGHT + image.shape[0] - 1
    for row in table:
        colour = CLEAN if int(row["flags"]) == 0 else FLAGGED
        x, y = (row["x"] + 0.5) * scale - 0.5, top - ((row["y"] + 0.5) * scale - 0.5)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=1)
        draw.text((x + 0.8 * r, y - 0.8 * r - FONT_SIZE), _label(row), fill=colour, font=font)
    caption = title or f"{len(table)} stars (green: clean, orange: flagged)"
    draw.text((6, 4), caption, fill=BLACK, font=font)
    # an 8-bit palette image, zlib level 1: a fraction of the time of RGB at level 6
    return atomic_write(path, lambda fh: canvas.save(fh, format="PNG", compress_level=1))


def _stretch(image):
    """zscale limits, asinh stretch, to uint8 (as DS9's zscale + asinh)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape, np.uint8)
    lo, hi = ZScaleInterval().get_limits(finite)
    scaled = np.clip((np.nan_to_num(image, nan=lo) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return (255.0 * AsinhStretch()(scaled, clip=True)).astype(np.uint8)


def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (OSError, TypeError):  # Pillow without FreeType: its small bitmap font
        return ImageFont.load_default()


def write_profile_plot(path, profile, *, radius=None, title=""):
    """Write one star's radial profile, the fitted ``A f(r; mu, sigma) + G`` and the aperture.

    ``profile`` is an entry of ``PhotResult.profiles`` (keys ``r``, ``values``,
    ``params``, ``ok``, ``reason``, ``r2``, optionally ``star_id``).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> prof = {"r": np.arange(10.0), "values": 5 * np.exp(-np.arange(10.0) ** 2 / 8) + 1,
    ...         "params": (5.0, 0.0, 2.0, 1.0), "ok": True, "reason": "", "r2": 1.0}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_profile_plot(Path(d) / "p.png", prof, radius=6).stat().st_size > 0
    True
    """
    from matplotlib.figure import Figure  # imported here: ~0.5 s the finder chart does not need

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
