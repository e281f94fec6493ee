"""Sky methods are registered in one place (skymethods.py): config validation,
photometry, the run plan and the settings fingerprint read that registry, so a new
method needs its estimator, its registration and config.toml, nothing else."""

import subprocess
import sys

import numpy as np
import pytest

from reduxd import skymethods
from reduxd.config import load_config
from reduxd.errors import ConfigError
from reduxd.fingerprint import run_settings
from reduxd.photparams import phot_params
from reduxd.runplan import sky_text
from reduxd.steps import sky
from reduxd.steps.photometry import PhotParams, photometer
from reduxd.synth import render_stars

CALLS = []


def flat_sky(data, x, y, *, mask, box, **_):
    """A test estimator: the sky is 100 everywhere, with the box size as its pixel count."""
    CALLS.append(np.size(x))
    n = np.size(x)
    one = np.ones(n)
    return sky.SkyEstimate(100.0 * one, 3.0 * one, box * one, 0.1 * one, np.zeros(n, bool), "flat")


@pytest.fixture
def flat(monkeypatch):
    method = skymethods.SkyMethod("flat", flat_sky, options=("mesh_box",), text="100 ({box} px)")
    monkeypatch.setitem(skymethods.METHODS, "flat", method)
    CALLS.clear()
    return method


def _config(tmp_path, name):
    path = tmp_path / "config.toml"
    path.write_text(f'[photometry]\nsky_method = "{name}"\nradius = 6.0\nannulus = [10, 15]\n')
    return load_config(path)


def test_a_registered_method_is_accepted_by_the_config_and_used_by_photometry(tmp_path, flat):
    config = _config(tmp_path, "flat")
    assert config.photometry.sky_method == "flat"
    rng = np.random.default_rng(5)
    xy = rng.uniform(30, 170, (2, 6))
    img = render_stars((200, 200), xy[0], xy[1], np.full(6, 2e4), 3.0)
    img = (img + rng.normal(100, 3, img.shape)).astype(np.float32)
    params = phot_params(config, config.camera("", None))
    result = photometer(img, exptime=10.0, params=params)
    assert CALLS and CALLS[0] == len(result.table) > 0
    assert np.all(np.asarray(result.table["sky"]) == 100.0)
    assert dict((k, v) for k, v, _ in result.cards)["PHOTSKY"] == "flat"
    assert sky_text(config.photometry) == "flat: 100 (64 px)"
    settings = run_settings(config)
    assert settings["mesh_box"] == 64 and "annulus" not in settings


def test_the_config_refuses_an_unknown_method_listing_the_registry(tmp_path, flat):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, "magic")
    message = str(err.value)
    assert "photometry.sky_method" in message and "config.toml" in message
    assert "one of global, annulus, radial, mesh, flat, got 'magic'" in message
    with pytest.raises(ValueError, match="expected one of global, annulus, radial, mesh, flat"):
        sky.estimate_sky(np.zeros((9, 9)), [4.0], [4.0], method="magic")


def test_one_default_sky_method():
    assert load_config().photometry.sky_method == skymethods.DEFAULT
    assert PhotParams().sky_method == skymethods.DEFAULT
    assert skymethods.DEFAULT in skymethods.names()


def test_reading_the_config_imports_no_numerical_library():
    code = "import sys, reduxd.config; print(sorted({'numpy', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
