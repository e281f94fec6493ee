"""The compiled kernels (``reduxd/**/*.pyx``) are built, and from their current source."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = sorted(ROOT.glob("reduxd/**/*.pyx"))


@pytest.mark.parametrize("pyx", KERNELS, ids=[p.stem for p in KERNELS])
def test_every_kernel_is_built_from_its_current_source(pyx):
    name = ".".join(pyx.relative_to(ROOT).with_suffix("").parts)
    spec = importlib.util.find_spec(name)
    rebuild = "rebuild with `pip install -e .` (or `make venv`)"
    assert spec is not None and spec.origin.endswith(".so"), f"{pyx} is not built: {rebuild}"
    built = Path(spec.origin)
    assert built.stat().st_mtime >= pyx.stat().st_mtime, f"{pyx} is newer than {built}: {rebuild}"
