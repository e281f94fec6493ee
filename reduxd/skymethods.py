"""The sky methods, registered in one place: name -> estimator.

Config validation (``[photometry] sky_method``), the photometry step, the run
plan and the settings fingerprint all read :data:`METHODS`. The module imports
nothing heavy, as the config is loaded at every command's start: an estimator is
named ``"module:function"`` and imported when a frame is first measured.

Every estimator has the same call signature::

    estimator(data, x, y, *, mask, region, annulus, size, fwhm, fit_quality, box,
              radius, keep) -> SkyEstimate

and ignores the options it does not use (``**_``). Adding a method touches its
estimator's module (steps/sky.py for the built-in ones), one :func:`register`
entry (here, or a call at run time as tests/test_sky_registry.py does), and the
name and its options in ``config.toml``; nothing else names a method.

Examples
--------
>>> names()
('global', 'annulus', 'radial', 'mesh')
>>> get("radial").options
('annulus', 'subframe', 'fit_quality')
>>> get("magic")
Traceback (most recent call last):
...
ValueError: unknown sky method 'magic'; expected one of global, annulus, radial, mesh
"""

from dataclasses import dataclass
from importlib import import_module

DEFAULT = "annulus"  # the sky method of the config and of PhotParams


@dataclass(frozen=True)
class SkyMethod:
    """One sky method.

    Attributes
    ----------
    name : str
        The name in ``[photometry] sky_method``.
    estimator : str or callable
        ``"module:function"`` (imported when first used) or the function itself.
    options : tuple of str
        The ``[photometry]`` options it reads besides the aperture; they are part
        of the settings fingerprint only when this method is used.
    text : str
        How it measures the sky, for the run plan; may use ``{annulus}``,
        ``{region}``, ``{subframe}`` and ``{box}``.
    """

    name: str
    estimator: object
    options: tuple[str, ...] = ()
    text: str = ""

    def resolve(self):
        """Return the estimator function."""
        if callable(self.estimator):
            return self.estimator
        module, _, function = self.estimator.partition(":")
        return getattr(import_module(module), function)


METHODS: dict[str, SkyMethod] = {}


def register(method):
    """Add ``method`` (a :class:`SkyMethod`) to :data:`METHODS`; return it."""
    METHODS[method.name] = method
    return method


def names():
    """The registered method names, in registration order."""
    return tuple(METHODS)


def get(name):
    """Return the :class:`SkyMethod` called ``name``; ValueError listing the names if none."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        expected = ", ".join(METHODS)
        raise ValueError(f"unknown sky method {name!r}; expected one of {expected}") from None


register(
    SkyMethod(
        "global",
        "reduxd.steps.sky:global_estimator",
        options=("sky_region",),
        text="one sigma-clipped median of {region}",
    )
)
register(
    SkyMethod(
        "annulus",
        "reduxd.steps.sky:annulus_estimator",
        options=("annulus",),
        text="median in an annulus {annulus} around each star",
    )
)
register(
    SkyMethod(
        "radial",
        "reduxd.steps.sky:radial_estimator",
        options=("annulus", "subframe", "fit_quality"),  # the annulus is its fallback
        text="fit of each star's radial profile in a {subframe} px subframe (-L);"
        " annulus {annulus} where the fit is poor",
    )
)
register(
    SkyMethod(
        "mesh",
        "reduxd.steps.sky:mesh_estimator",
        options=("mesh_box",),
        text="smooth 2-D background in {box} px boxes",
    )
)
