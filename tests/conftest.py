import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("REDUXD_TEST_DATA", ROOT.parent / "shared" / "data"))


def _data_dir(name):
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path} (set REDUXD_TEST_DATA)")
    return path


@pytest.fixture(scope="session")
def arcsat_dir():
    """The ARCSAT night (MaxIm DL headers): bias, dark, flat z, lights z."""
    return _data_dir("arcsat-20250601")


@pytest.fixture(scope="session")
def umbc_dir():
    """Real SharpCap/ZWO lights from the UMBC Observatory."""
    return _data_dir("umbc-sharpcap")
