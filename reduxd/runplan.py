"""What a run will do, in one line: calibration, sky method and why, aperture, skips.

``reduxd reduce`` and ``reduxd watch`` log it at start (event ``run_plan``), and
a flag that cannot act with the other settings (``-L`` without the radial sky
fit) gets a warning saying why (event ``flag_unused``).
"""

from reduxd import skymethods


def sky_text(p):
    """How the sky is measured, and why, as text."""
    if p.annulus:
        annulus = "{:g}-{:g} px".format(*p.annulus)
    else:
        annulus = "r+5 to r+15 px (r: the largest aperture)"
    region = f"the region {list(p.sky_region)}" if p.sky_region else "the whole frame"
    why = skymethods.get(p.sky_method).text.format(
        annulus=annulus, region=region, subframe=p.subframe, box=p.mesh_box
    )
    default = ", the default method" if p.sky_method == skymethods.DEFAULT else ""
    return f"{p.sky_method}: {why}{default}"


def calibration_text(cal):
    """Which corrections are applied and what the missing-master policy is."""
    steps = ["bias"] + ([] if cal.no_dark else ["dark"]) + ([] if cal.no_flat else ["flat"])
    text = "+".join(steps)
    if cal.force:
        text += ", lights without a master reduced anyway (--force)"
    else:
        text += ", lights without a master wait for it"
    return text


def skipped_text(cal):
    """What this run leaves out on purpose ('nothing' when it leaves out nothing)."""
    out = []
    if cal.exclude_filters:
        out.append(f"lights and flats in {' '.join(cal.exclude_filters)} (-x)")
    if cal.no_dark:
        out.append("darks (--no-dark)")
    if cal.no_flat:
        out.append("flats (--no-flat)")
    return "; ".join(out) or "nothing"


def run_plan(config):
    """The ``run_plan`` log fields of a run.

    Examples
    --------
    >>> from reduxd.config import load_config
    >>> plan = run_plan(load_config(overrides={"calibration": {"no_flat": True}}))
    >>> plan["calibration"], plan["skipped"]
    ('bias+dark, lights without a master wait for it', 'flats (--no-flat)')
    >>> plan["aperture"].split(":")[0]
    'from the seeing'
    """
    p = config.photometry
    if p.radius_fwhm > 0:
        aperture = f"radius {p.radius_fwhm:g} x each frame's FWHM (radius_fwhm)"
    elif p.radius > 0:
        aperture = f"radius {p.radius:g} px"
    else:
        aperture = (
            "from the seeing: 1-3 x the FWHM of each frame, the radius chosen per field from the "
            "comparisons"
        )
    return {
        "calibration": calibration_text(config.calibration),
        "sky": sky_text(p),
        "aperture": aperture,
        "skipped": skipped_text(config.calibration),
    }


def unused_flags(config, typed):
    """Warnings for flags that cannot act with the other settings.

    ``typed`` maps a flag's destination (``'length'``) to the flag as typed
    (``'-L 25'``); flags not given are absent.

    Examples
    --------
    >>> from reduxd.config import load_config
    >>> unused_flags(load_config(), {"length": "-L 25"})[0]["flag"]
    '-L 25'
    """
    out = []
    method = config.photometry.sky_method
    if "length" in typed and "subframe" not in skymethods.get(method).options:
        out.append(
            {
                "flag": typed["length"],
                "reason": f"-L sets the subframe of the radial sky fit, and the sky method is"
                f' {method!r}; set [photometry] sky_method = "radial" in the config to use it',
            }
        )
    return out
