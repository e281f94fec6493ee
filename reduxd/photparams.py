"""Photometry parameters from the config: :class:`~reduxd.steps.photometry.PhotParams`.

Every ``[photometry]`` option whose name is a field of ``PhotParams`` is passed on by
name, so a new option needs its config field and its ``PhotParams`` field only. The
camera gives the noise model; ``[output] profile_plots`` asks for the radial profiles.
Below the pipeline and the products (both build parameters), above the steps.
"""

import dataclasses

# [photometry] options held as lists in the config, as tuples or None in PhotParams
_EMPTY_IS_NONE = ("annulus", "sky_region")


def phot_params(config, camera):
    """Return the :class:`PhotParams` of a light from ``config`` and its camera entry."""
    from reduxd.steps.photometry import PhotParams  # heavy: see reduce.LIGHT_MODULES

    wanted = {f.name for f in dataclasses.fields(PhotParams)}
    values = {
        f.name: getattr(config.photometry, f.name)
        for f in dataclasses.fields(config.photometry)
        if f.name in wanted
    }
    for name in _EMPTY_IS_NONE:
        values[name] = tuple(values[name]) or None
    return PhotParams(
        **values,
        gain_e_per_adu=camera.gain_e_per_adu,
        read_noise_e=camera.read_noise_e,
        keep_profiles=config.output.profile_plots,
    )
