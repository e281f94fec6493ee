"""What to open after ``make demo``: ``python -m reduxd.demo OUTDIR`` prints the products.

Light curves (PNG), the newest finder chart, the current photometry table (pandas,
TOPCAT), the newest reduced light with its DS9 regions, and the run's log.
"""

import sys
from pathlib import Path


def _newest(paths):
    paths = [p for p in paths if p.is_file()]
    return max(paths, key=lambda p: p.stat().st_mtime_ns) if paths else None


def files_to_open(outdir):
    """``[(what, text)]`` of the products worth opening under ``outdir``, in that order."""
    outdir = Path(outdir)
    out = [("light curve", str(p)) for p in sorted(outdir.glob("*lightcurve_*.png"))]
    out += [("finder chart of a stack", str(p)) for p in sorted(outdir.glob("finder_*.png"))]
    chart = _newest(outdir.glob("quicklook/**/*.png"))
    if chart is not None:
        out.append(("finder chart of the last light", str(chart)))
    out += [("photometry, current rows", str(p)) for p in sorted(outdir.glob("*_current.csv"))]
    fits = _newest(outdir.glob("reduced/**/*.fits"))
    if fits is not None:
        regions = fits.with_suffix(".reg")
        out.append(("last reduced light in DS9", f"ds9 {fits} -regions {regions}"))
    log = _newest(outdir.glob("redux_*.log"))
    if log is not None:
        out.append(("log of the last reduxd reduce run", str(log)))
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    outdir = Path(argv[0] if argv else "demo/analysis")
    items = files_to_open(outdir)
    if not items:
        print(f"no products under {outdir}")
        return 1
    print("Open these files:")
    width = max(len(what) for what, _ in items)
    for what, text in items:
        print(f"  {what:<{width}}  {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
