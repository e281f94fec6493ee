"""Stacked lights: per (object, filter, gain, exposure), the aligned mean of its lights."""

from collections import defaultdict

import numpy as np
from astropy.io import fits

from reduxd.fitsio import add_cards, clean_header, write_fits_atomic
from reduxd.log import get_logger
from reduxd.steps.stack import StackAccumulator

log = get_logger("reduxd.stacks")


def _name(part):
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in str(part)) or "none"


def stack_groups(ledger):
    """Group the current reduced lights by (object, filter, gain, exposure)."""
    groups = defaultdict(list)
    for row in ledger.frames(kind="light", state="done"):
        info = row.info
        if "excluded" in info or "offset" not in info:
            continue
        key = (info.get("object"), info.get("filter"), info.get("gain"), info.get("exptime"))
        groups[key].append(row)
    return groups


def write_stacks(pipeline):
    """Write one stacked FITS per group from the reduced lights; return the paths."""
    out = []
    reduced = pipeline.outdir / "reduced"
    for (obj, filt, gain, exptime), rows in sorted(
        stack_groups(pipeline.ledger).items(), key=lambda kv: str(kv[0])
    ):
        acc, header = StackAccumulator(), None
        for row in rows:
            path = reduced / row.relpath
            if not path.exists():
                continue
            with fits.open(path, memmap=False) as hdul:
                data = hdul[0].data.astype(np.float32)
                mask = hdul["MASK"].data if "MASK" in hdul else None
                header = header or clean_header(hdul[0].header)
            dx, dy = row.info["offset"]
            acc.add(data, mask, dx=dx, dy=dy)
        if acc.n_frames == 0:
            continue
        mean, count, cards = acc.result()
        name = f"stack_{_name(obj)}_{_name(filt)}_g{gain}_{exptime:g}s.fits"
        path = pipeline.outdir / "stacks" / name
        hdr = add_cards(header, list(cards))
        hdul = fits.HDUList([fits.PrimaryHDU(mean, hdr), fits.ImageHDU(count, name="COUNT")])
        write_fits_atomic(path, hdul)
        log.info("stack_written", file=str(path), nframes=acc.n_frames)
        out.append(path)
    return out
