"""Quicklook PNGs: the finder chart of a frame and per-star radial profiles.

The finder chart is on the per-light hot path, so it is drawn straight into a
Pillow image (zscale + asinh in numpy, circles and labels with ImageDraw): about
a tenth of the time matplotlib takes. Profile plots use matplotlib's object API
on the Agg canvas (no pyplot, no global state). Files are written atomically.
Pillow comes with matplotlib (a dependency of it), so nothing is added.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reduxd.files import atomic_write
from reduxd.products._quicklook import (
    block_sums,
    glyph_origins,
    stamp,
    stretch_levels,
)
from reduxd.products.labels import place_labels
from reduxd.steps.sky import ring_profile

MAX_SIDE = 1600  # display pixels; larger frames are shown block-averaged
MIN_WIDTH = 800  # smaller frames are shown enlarged
LINE_HEIGHT = 22
TITLE_HEIGHT = 2 * LINE_HEIGHT  # the title, then the legend
FONT_SIZE = 14
# palette: GREYS grey levels, then the colours drawn on top
GREYS = 248
CLEAN, FLAGGED, MASKED, BLACK, WHITE, TARGET, COMPARISON = range(GREYS, GREYS + 7)
PALETTE = [v for g in range(GREYS) for v in (g * 255 // (GREYS - 1),) * 3] + [
    0, 255, 0,  # clean star: green
    255, 165, 0,  # flagged star: orange
    255, 0, 0,  # masked pixel: red
    0, 0, 0,
    255, 255, 255,
    255, 0, 255,  # the light curve's target: magenta
    0, 170, 255,  # its comparison stars: blue
]  # fmt: skip
LEGEND = (
    ("target", TARGET),
    ("comparison", COMPARISON),
    ("star", CLEAN),
    ("flagged star", FLAGGED),
    ("masked pixels", MASKED),
)


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
    mean, finite = _block_mean(np.asarray(data, dtype=np.float32), factor)
    if not finite:  # only then pay for nanmean
        ny, nx = (s // factor * factor for s in data.shape)
        blocks = np.asarray(data[:ny, :nx], dtype=np.float32)
        mean = np.nanmean(blocks.reshape(ny // factor, factor, nx // factor, factor), axis=(1, 3))
    return mean, 1.0 / factor


def _display_grey(data, mask=None):
    """``(grey, zoom, scale)``: the frame as shown is ``grey`` enlarged ``zoom`` times
    (:func:`_enlarged`): grey levels (:func:`_grey_levels` of :func:`_display`), its
    masked pixels (``mask`` non-zero) in MASKED; ``scale`` is display pixels per frame
    pixel. A small frame is turned into grey levels and masked before it is enlarged:
    the same pixels, a fraction of the work."""
    masked = mask is not None and np.any(mask)
    factor = max(1, int(np.ceil(max(data.shape) / MAX_SIDE)))
    zoom = max(1, -(-MIN_WIDTH // data.shape[1])) if factor == 1 else 1
    if zoom == 1:
        image, scale = _display(data)
        grey = _grey_levels(image)
        if masked:
            grey[_display_mask(mask, scale)] = MASKED
        return grey, 1, scale
    grey = _grey_levels(np.asarray(data, dtype=np.float32), zoom=zoom)
    if masked:
        grey[np.asarray(mask) != 0] = MASKED
    return grey, zoom, float(zoom)


def _enlarged(grey, zoom, out=None):
    """``grey.repeat(zoom, 0).repeat(zoom, 1)``, by ``zoom`` strided copies of the frame
    and then of its widened rows (numpy's repeat goes pixel by pixel); into ``out``
    (an array of that shape, e.g. a view of a bigger one) if given."""
    ny, nx = grey.shape
    out = np.empty((ny * zoom, nx * zoom), grey.dtype) if out is None else out
    if zoom == 1:
        out[...] = grey
        return out
    wide = np.empty((ny, nx, zoom), grey.dtype)
    for k in range(zoom):
        wide[..., k] = grey
    wide = wide.reshape(ny, nx * zoom)
    for k in range(zoom):
        out[k::zoom] = wide
    return out


def _block_mean(data, factor):
    """``(mean, finite)``: ``_bin(data, factor, np.add) * np.float32(1 / factor**2)`` and
    whether all of it is finite; one compiled pass
    (:func:`reduxd.products._quicklook.block_sums`, the same float32 sums in the same
    order) for a C-contiguous float32 frame."""
    scale = np.float32(1.0 / factor**2)
    if data.dtype != np.float32 or data.ndim != 2 or not data.flags.c_contiguous:
        mean = _bin(data, factor, np.add) * scale
        return mean, bool(np.isfinite(mean).all())
    out = np.empty((data.shape[0] // factor, data.shape[1] // factor), np.float32)
    finite = block_sums(data, factor, scale, out)
    return out, bool(finite)


def _bin(data, factor, combine):
    """Combine ``factor`` x ``factor`` blocks with ``combine`` (a ufunc) over strided views.

    A handful of whole-array operations: several times faster than a
    ``reshape(...).mean(axis=(1, 3))``, which walks the blocks element by element.
    """
    ny, nx = (s // factor * factor for s in data.shape)
    out = None
    for i in range(factor):
        for j in range(factor):
            part = data[i:ny:factor, j:nx:factor]
            out = part.copy() if out is None else combine(out, part, out=out)
    return out


def _default_radius(table, scale):
    """Circle radius in frame pixels: 3 FWHM, and at least 6 display pixels."""
    fwhm = np.asarray(table["fwhm"], dtype=float) if "fwhm" in table.colnames else np.zeros(0)
    fwhm = fwhm[np.isfinite(fwhm)]
    return max(6.0 / scale, 3.0 * float(np.median(fwhm)) if fwhm.size else 0.0)


def write_quicklook(
    path, data, table, *, title="", mask=None, radius=None, roles=None, magnitudes=True,
    durable=True,
):  # fmt: skip
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
    roles : dict, optional
        ``star_id -> 'target' | 'comparison'``: drawn in their colours and labelled
        first. Labels never overlap each other or a circle; one that fits nowhere
        is left out.
    magnitudes : bool
        Label each star with its ID and magnitude (default), or with its ID alone
        (a stack's chart: more labels fit).
    durable : bool
        Fsync before returning (see :func:`reduxd.files.atomic_write`).

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
    grey, zoom, scale = _display_grey(data, mask)
    height, width = grey.shape[0] * zoom + TITLE_HEIGHT, grey.shape[1] * zoom
    canvas = np.empty((height, width), dtype=np.uint8)
    canvas[:TITLE_HEIGHT] = WHITE
    _enlarged(grey[::-1], zoom, out=canvas[TITLE_HEIGHT:])  # row 0 of the frame at the bottom
    r = (radius or _default_radius(table, scale)) * scale
    top = height - 1
    x, y, colours, texts = _chart_stars(table, scale, top, roles or {}, magnitudes=magnitudes)
    glyphs = _glyphs()
    labels = place_labels(
        list(zip(range(len(texts)), x, y, texts, strict=True)),
        radius=r,
        char_width=0.6 * FONT_SIZE,
        height=FONT_SIZE + 2,
    )
    glyphs.draw_many(
        canvas,
        [
            (x0, y0, texts[i], colours[i])
            for i, (x0, y0, _, _) in labels.items()
            if y0 >= TITLE_HEIGHT
        ],
    )
    glyphs.draw(canvas, 6, 4, title or f"{len(table)} stars", BLACK)
    _legend(canvas, glyphs)
    draw_rings(canvas, x, y, r, colours)
    picture = Image.frombytes("P", (width, height), canvas)  # its buffer: no copy made
    picture.putpalette(PALETTE)
    # zlib level 0: the sky noise barely compresses (-15 % at level 1), and
    # level 1 costs 10 ms a frame on the per-light path
    return atomic_write(
        path, lambda fh: picture.save(fh, format="PNG", compress_level=0), durable=durable
    )


def draw_rings(canvas, x, y, radius, values):
    """Draw circle outlines into ``canvas`` (uint8) as Pillow draws them, a star at a time:
    ``ImageDraw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=value,
    width=1)`` for each star in order (a later circle over an earlier one).

    Pillow draws an ellipse from its box cut to whole pixels (``int``) and the same
    outline for boxes of the same size, so each size is drawn once by Pillow and
    then stamped at every star's place by one compiled loop
    (:func:`reduxd.products._quicklook.stamp`): a tenth of the time of a Pillow call
    per star, the same pixels. A star whose position is not finite is not drawn; a
    radius that is not finite, negative (Pillow refuses it) or over the canvas size is
    drawn by Pillow star by star.

    Examples
    --------
    >>> canvas = np.zeros((9, 9), np.uint8)
    >>> draw_rings(canvas, [4.0], [4.0], 3.0, [7])
    >>> picture = Image.new("L", (9, 9), 0)
    >>> ImageDraw.Draw(picture).ellipse((1.0, 1.0, 7.0, 7.0), outline=7, width=1)
    >>> bool((np.asarray(picture) == canvas).all()), int((canvas == 7).sum()) > 0
    (True, True)
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.all():
        x, y, values = x[keep], y[keep], np.asarray(values)[keep]
    if x.size == 0:
        return
    if not 0 <= radius <= max(canvas.shape):  # NaN, negative or huge: Pillow, star by star
        return _rings_by_pillow(canvas, x, y, radius, values)
    x0, y0, x1, y1 = (
        np.trunc(v).astype(np.int64) for v in (x - radius, y - radius, x + radius, y + radius)
    )
    sizes, shape = np.unique(np.stack([x1 - x0, y1 - y0], axis=1), axis=0, return_inverse=True)
    outlines = [_ring(int(w), int(h)) for w, h in sizes]
    starts = np.cumsum([0] + [len(dy) for dy, _ in outlines], dtype=np.int64)
    stamp(canvas, x0, y0, shape.reshape(-1).astype(np.int64), starts,
          np.concatenate([dy for dy, _ in outlines]), np.concatenate([dx for _, dx in outlines]),
          np.asarray(values, dtype=np.uint8))  # fmt: skip


def _rings_by_pillow(canvas, x, y, radius, values):
    """:func:`draw_rings` by a Pillow call per star (for radii it does not stamp)."""
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for xi, yi, value in zip(x.tolist(), y.tolist(), np.asarray(values).tolist(), strict=True):
        draw.ellipse((xi - radius, yi - radius, xi + radius, yi + radius), outline=int(value))
    canvas[...] = np.asarray(picture)


_RINGS = {}  # (width, height) -> (dy, dx) of the outline's pixels, as Pillow draws it


def _ring(width, height):
    """``(dy, dx)`` (int64) of the pixels of Pillow's outline of the box ``(0, 0, w, h)``."""
    if (width, height) not in _RINGS:
        picture = Image.new("L", (width + 1, height + 1), 0)
        ImageDraw.Draw(picture).ellipse((0, 0, width, height), outline=1, width=1)
        _RINGS[width, height] = tuple(v.astype(np.int64) for v in np.nonzero(np.asarray(picture)))
    return _RINGS[width, height]


def _legend(canvas, glyphs):
    """The colour key on the second title line."""
    x = 6.0
    for text, colour in LEGEND:
        glyphs.draw(canvas, x, LINE_HEIGHT + 2, text, colour if colour != CLEAN else BLACK)
        canvas[LINE_HEIGHT + 4 : LINE_HEIGHT + 16, int(x) - 4 : int(x) - 2] = colour
        x += 0.6 * FONT_SIZE * len(text) + 28


def _display_mask(mask, scale):
    """Masked pixels on the display grid: a block is masked if any of its pixels is."""
    bad = np.asarray(mask) != 0
    if scale < 1:
        return _bin(bad, round(1.0 / scale), np.logical_or)
    zoom = int(scale)
    return bad.repeat(zoom, 0).repeat(zoom, 1) if zoom > 1 else bad


def _chart_stars(table, scale, top, roles, *, magnitudes=True):
    """``(x, y, colour, label)`` lists of the stars in canvas coordinates, in labelling
    order: the target, the comparisons, then the others brightest first (a star without
    a finite magnitude last; a stable sort, so ties keep the table's order); a star
    without a finite position is left out. A label is the star's ID and magnitude, or
    with ``magnitudes=False`` its ID."""
    if len(table) == 0:
        return [], [], [], []
    colour_of = {"target": TARGET, "comparison": COMPARISON}
    x = (np.asarray(table["x"], dtype=float) + 0.5) * scale - 0.5
    y = top - ((np.asarray(table["y"], dtype=float) + 0.5) * scale - 0.5)
    flags = np.asarray(table["flags"], dtype=np.int64)
    ids = np.asarray(table["star_id"], dtype=np.int64)
    mags = np.asarray(table["mag_inst"], dtype=float)
    colours = np.where(flags == 0, CLEAN, FLAGGED)
    if roles:
        role = np.array([colour_of.get(roles.get(sid), 0) for sid in ids.tolist()])
        colours = np.where(role > 0, role, colours)
    rank = np.where(colours == TARGET, 0, np.where(colours == COMPARISON, 1, 2))
    finite = np.isfinite(mags)
    order = np.lexsort((np.where(finite, mags, np.inf), rank))  # stable
    order = order[np.isfinite(x[order]) & np.isfinite(y[order])]
    labels = [
        f"{sid} {mag:.2f}" if ok and magnitudes else f"{sid}"
        for sid, mag, ok in zip(
            ids[order].tolist(), mags[order].tolist(), finite[order].tolist(), strict=True
        )
    ]
    return x[order].tolist(), y[order].tolist(), colours[order].tolist(), labels


LUT_SIZE = 4096
# DS9-style asinh (astropy's AsinhStretch, a=0.1) of 0..1, in grey levels 0..GREYS-1
_ASINH_LUT = (
    np.arcsinh(np.linspace(0.0, 1.0, LUT_SIZE) / 0.1) / np.arcsinh(1.0 / 0.1) * (GREYS - 1) + 0.5
).astype(np.uint8)


def _grey_levels(image, *, zoom=1):
    """zscale limits, asinh stretch, as palette grey levels (as DS9's zscale + asinh).

    The limits come from a subsample (zscale samples 1000 pixels anyway); the
    stretch is a lookup table: three passes over the image instead of a dozen.
    ``zoom``: the limits are those of the image enlarged ``zoom`` times (each pixel
    a ``zoom`` x ``zoom`` block), whose subsample is taken here.
    """
    rows, cols = (np.arange(0, n * zoom, max(1, n * zoom // 256)) // zoom for n in image.shape[:2])
    sample = _zscale_sample(image, rows, cols)
    if sample.size == 0:
        return np.zeros(image.shape, np.uint8)
    lo, hi = zscale_limits(sample)
    return stretched(image, np.float32(lo), np.float32((LUT_SIZE - 1) / max(hi - lo, 1e-12)))


ZSCALE_SAMPLES = 1000  # astropy's default


def zscale_limits(values, *, n_samples=ZSCALE_SAMPLES, contrast=0.25, max_reject=0.5,
                  min_npixels=5, krej=2.5, max_iterations=5):  # fmt: skip
    """IRAF's zscale display limits ``(vmin, vmax)`` of the finite ``values``.

    The algorithm and numbers of astropy's ``ZScaleInterval.get_limits`` (its
    defaults, the same numpy calls: the same limits), written here because
    ``astropy.visualization`` imports matplotlib (0.13 s), which a light's chart
    does not use. Adapted from astropy (BSD-3-Clause, Copyright (c) Astropy
    Developers).

    Examples
    --------
    >>> from astropy.visualization import ZScaleInterval
    >>> values = np.random.default_rng(1).normal(100.0, 5.0, 3000)
    >>> zscale_limits(values) == ZScaleInterval().get_limits(values)
    True
    """
    values = np.asarray(values).ravel()
    values = values[np.isfinite(values)]
    stride = int(max(1.0, values.size / n_samples))
    samples = values[::stride][:n_samples]
    samples.sort()
    npix = len(samples)
    vmin, vmax = samples[0], samples[-1]
    minpix = max(min_npixels, int(npix * max_reject))
    x = np.arange(npix)
    ngoodpix, last_ngoodpix = npix, npix + 1
    badpix = np.zeros(npix, dtype=bool)
    kernel = np.ones(max(1, int(npix * 0.01)), dtype=bool)  # grows the rejected runs
    for _ in range(max_iterations):
        if ngoodpix >= last_ngoodpix or ngoodpix < minpix:
            break
        fit = np.polyfit(x, samples, deg=1, w=(~badpix).astype(int))
        flat = samples - np.poly1d(fit)(x)
        threshold = krej * flat[~badpix].std()
        badpix[(flat < -threshold) | (flat > threshold)] = True
        badpix = np.convolve(badpix, kernel, mode="same")
        last_ngoodpix, ngoodpix = ngoodpix, np.sum(~badpix)
    if ngoodpix >= minpix:
        slope = fit[0] / contrast if contrast > 0 else fit[0]
        center_pixel = (npix - 1) // 2
        median = np.median(samples)
        vmin = max(vmin, median - (center_pixel - 1) * slope)
        vmax = min(vmax, median + (npix - center_pixel) * slope)
    return vmin, vmax


def _zscale_sample(image, rows, cols):
    """The finite values of ``image[np.ix_(rows, cols)]`` as :func:`zscale_limits` samples
    them: every ``stride``-th of the flattened grid, at most :data:`ZSCALE_SAMPLES`. An
    image with no NaN or inf gives those values picked from it directly (the same
    values, in the same order, without the ~90,000-value grid); otherwise the grid's
    finite values, which :func:`zscale_limits` then samples itself.

    Examples
    --------
    >>> img = np.arange(300.0 * 400).reshape(300, 400)
    >>> rows, cols = np.arange(0, 300, 2), np.arange(0, 400, 3)
    >>> grid = img[np.ix_(rows, cols)].ravel()
    >>> stride = grid.size // ZSCALE_SAMPLES
    >>> bool(np.array_equal(_zscale_sample(img, rows, cols), grid[::stride][:ZSCALE_SAMPLES]))
    True
    """
    if not np.isfinite(image).all():
        sample = image[np.ix_(rows, cols)]
        return sample[np.isfinite(sample)]
    size = rows.size * cols.size
    stride = int(max(1.0, size / ZSCALE_SAMPLES))  # as zscale_limits
    k = np.arange(0, size, stride)[:ZSCALE_SAMPLES]
    return image[rows[k // cols.size], cols[k % cols.size]]


def stretched(image, lo, scale):
    """``_ASINH_LUT`` of ``(image - lo) * scale`` (float32) clipped to the table, NaN at 0.

    One compiled pass (:mod:`reduxd.products._quicklook`) over a float32 image;
    numpy's way, kept for other images, takes five.

    Examples
    --------
    >>> image = np.array([[0.0, 1.0, np.nan, 9.0]], dtype=np.float32)
    >>> stretched(image, np.float32(0.0), np.float32(LUT_SIZE - 1)).tolist()
    [[0, 247, 0, 247]]
    """
    lo, scale = np.float32(lo), np.float32(scale)
    if image.dtype == np.float32 and image.ndim == 2 and image.flags.c_contiguous:
        out = np.empty(image.shape, np.uint8)
        stretch_levels(image, lo, scale, _ASINH_LUT, out)
        return out
    scaled = (image - lo) * scale
    np.clip(scaled, 0, LUT_SIZE - 1, out=scaled)  # NaN stays NaN
    if not np.isfinite(scaled).all():
        scaled[np.isnan(scaled)] = 0.0
    return _ASINH_LUT[scaled.astype(np.uint16)]


def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (OSError, TypeError):  # Pillow without FreeType: its small bitmap font
        return ImageFont.load_default()


class Glyphs:
    """Text drawn straight into a uint8 array from glyphs rendered once.

    Pillow renders a label in about 60 us; a chart has a label per star, so the
    glyph of each character is rendered once (per process) and labels are
    composed from boolean masks. No kerning, which the labels (digits) do not need.

    Examples
    --------
    >>> canvas = np.zeros((20, 60), np.uint8)
    >>> Glyphs(_font()).draw(canvas, 2, 0, "12 -7.50", 9)
    >>> bool((canvas == 9).any()), bool((canvas[:, 55:] == 0).all())
    (True, True)
    """

    def __init__(self, font):
        self.font = font
        self._cache = {}
        self._ascii = None  # see _ascii_table

    def glyph(self, char):
        """``(mask, left, top, advance)`` of one character."""
        if char not in self._cache:
            left, top, right, bottom = self.font.getbbox(char)
            advance = self.font.getlength(char)
            mask = np.zeros((0, 0), dtype=bool)
            if right > left and bottom > top:
                img = Image.new("1", (right - left, bottom - top), 0)
                ImageDraw.Draw(img).text((-left, -top), char, fill=1, font=self.font)
                mask = np.asarray(img, dtype=bool)
            self._cache[char] = (mask, left, top, advance)
        return self._cache[char]

    def draw(self, canvas, x, y, text, value):
        """Set the pixels of ``text`` (origin ``x, y``, as Pillow's) to ``value``."""
        height, width = canvas.shape
        pen = float(x)
        for char in text:
            mask, left, top, advance = self.glyph(char)
            x0, y0 = round(pen) + left, round(y) + top
            pen += advance
            h, w = mask.shape
            if h == 0 or x0 >= width or y0 >= height or x0 + w <= 0 or y0 + h <= 0:
                continue
            cx0, cy0 = max(x0, 0), max(y0, 0)
            cx1, cy1 = min(x0 + w, width), min(y0 + h, height)
            part = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            canvas[cy0:cy1, cx0:cx1][part] = value

    def draw_many(self, canvas, texts):
        """:meth:`draw` each ``(x, y, text, value)`` of ``texts``, in order.

        Printable ASCII texts are placed by one compiled loop
        (:func:`reduxd.products._quicklook.glyph_origins`: the pen moves as in
        :meth:`draw`) and their glyphs stamped by another
        (:func:`reduxd.products._quicklook.stamp`); the same pixels as a
        :meth:`draw` per text.

        Examples
        --------
        >>> one, many = np.zeros((40, 90), np.uint8), np.zeros((40, 90), np.uint8)
        >>> items = [(2.0, 0.0, "12 -7.50", 9), (30.4, 8.6, "345", 4), (-5.0, 30.0, "6", 2)]
        >>> for x, y, text, value in items:
        ...     Glyphs(_font()).draw(one, x, y, text, value)
        >>> Glyphs(_font()).draw_many(many, items)
        >>> bool((one == many).all()), bool(many.any())
        (True, True)
        """
        text = "".join(t for _, _, t, _ in texts)
        if not (text.isascii() and text.isprintable()):
            for x, y, t, value in texts:
                self.draw(canvas, x, y, t, value)
            return
        left, top, advance, starts, dy, dx = self._ascii_table()
        codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)
        lengths = np.array([len(t) for _, _, t, _ in texts], dtype=np.int64)
        start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        x = np.array([float(t[0]) for t in texts], dtype=np.float64)
        y = np.array([float(t[1]) for t in texts], dtype=np.float64)
        x0, y0 = np.empty(codes.size, np.int64), np.empty(codes.size, np.int64)
        glyph_origins(codes, start, x, y, left, top, advance, x0, y0)
        values = np.repeat(np.array([t[3] for t in texts], dtype=np.uint8), lengths)
        stamp(canvas, x0, y0, codes, starts, dy, dx, values)

    def _ascii_table(self):
        """``left, top, advance, starts, dy, dx`` of the printable ASCII glyphs, by code:
        glyph ``c``'s pixels are ``(dy, dx)[starts[c]:starts[c + 1]]`` from its origin."""
        if self._ascii is None:
            codes = range(128)
            glyphs = [self.glyph(chr(c)) if 32 <= c < 127 else None for c in codes]
            left = np.array([g[1] if g else 0 for g in glyphs], dtype=np.int64)
            top = np.array([g[2] if g else 0 for g in glyphs], dtype=np.int64)
            advance = np.array([g[3] if g else 0.0 for g in glyphs], dtype=np.float64)
            pixels = [np.nonzero(g[0]) if g else (np.zeros(0), np.zeros(0)) for g in glyphs]
            starts = np.cumsum([0] + [len(p[0]) for p in pixels]).astype(np.int64)
            dy = np.concatenate([p[0] for p in pixels]).astype(np.int64)
            dx = np.concatenate([p[1] for p in pixels]).astype(np.int64)
            self._ascii = (left, top, advance, starts, dy, dx)
        return self._ascii


_GLYPHS = None


def prepare():
    """Make this process's glyphs and load Pillow's image writers (about 20 ms, done once
    in a process; a worker forked after it inherits them).

    Examples
    --------
    >>> prepare()
    >>> _glyphs()._ascii is not None
    True
    """
    Image.preinit()  # what the first save would import
    _glyphs()._ascii_table()


def _glyphs():
    global _GLYPHS
    if _GLYPHS is None:
        _GLYPHS = Glyphs(_font())
    return _GLYPHS


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
