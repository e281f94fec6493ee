"""Configuration: the shipped config.toml loads; bad files fail naming file, key and expectation."""

import tomllib
from pathlib import Path

import pytest

from reduxd.config import load_config
from reduxd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_shipped_config_loads():
    path = ROOT / "config.toml"
    config = load_config(path)
    assert config.source.endswith("config.toml")
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    # every value in the file arrives, typed
    for section, values in raw.items():
        for key, value in values.items():
            if not isinstance(value, dict | list):
                assert getattr(getattr(config, section), key) == value, f"{section}.{key}"
    cameras = raw["calibration"].get("cameras", [])
    assert len(config.calibration.cameras) == len(cameras)
    for cam, table in zip(config.calibration.cameras, cameras, strict=True):
        assert {k: getattr(cam, k) for k in table} == table
    assert config.camera("no such camera", 1.0).saturation_adu == 0.0


def test_defaults_without_a_file():
    config = load_config()
    assert config.calibration.combine == "median"
    assert config.calibration.flat_scale == "median"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[calibration]\ncombin = 'median'\n", "calibration.combin", "known:"),
        ("[calibrations]\n", "calibrations", "known:"),
        ("[calibration]\nclip_sigma = 'three'\n", "calibration.clip_sigma", "a number"),
        ("[calibration]\nforce = 1\n", "calibration.force", "true or false"),
        ("[calibration]\ncombine = 'mean'\n", "calibration.combine", "one of median, sigma_clip"),
        ("[calibration]\nflat_scale = 'mode'\n", "calibration.flat_scale", "one of none, median"),
        ("[calibration]\nlow_flat = 1.5\n", "calibration.low_flat", "between 0 and 1"),
        ("[calibration]\nmax_memory_mb = 0\n", "calibration.max_memory_mb", "a number > 0"),
        ("[photometry]\nradius = -3.0\n", "photometry.radius", "a number >= 0"),
        ("[photometry]\nsky_method = 'magic'\n", "photometry.sky_method", "one of global"),
        ("[photometry]\nannulus = [30.0, 20.0]\n", "photometry.annulus", "0 < r_in < r_out"),
        (
            "[[calibration.cameras]]\ngain_e_per_adu = -1\n",
            "calibration.cameras.gain_e_per_adu",
            "a number > 0",
        ),
        ("[classify]\ndefault_kind = 'science'\n", "classify.default_kind", "one of"),
    ],
)
def test_bad_values_name_file_key_and_expectation(tmp_path, text, key, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert key in message
    assert expected in message


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[calibration\n"))


def test_overrides_are_checked_too():
    with pytest.raises(ConfigError, match=r"calibration\.clip_sigma"):
        load_config(overrides={"calibration": {"clip_sigma": -1.0}})
    assert load_config(overrides={"calibration": {"force": True}}).calibration.force
