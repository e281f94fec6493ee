"""reduxd's file errors cross process boundaries intact (batch worker pools)."""

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from reduxd.errors import FrameIncomplete, FrameRejected, MissingCalibration


@pytest.mark.parametrize("cls", [FrameIncomplete, FrameRejected, MissingCalibration])
def test_file_errors_pickle_with_path_and_reason(cls):
    err = cls("night/a.fits", "data truncated: 10 bytes")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.path, back.reason, str(back)) == (err.path, err.reason, str(err))


def _reject(path):
    raise FrameRejected(path, "not a FITS file: no SIMPLE card at the start")


def test_a_worker_raising_a_file_error_does_not_break_the_pool():
    with ProcessPoolExecutor(max_workers=1) as pool:
        with pytest.raises(FrameRejected) as caught:
            pool.submit(_reject, "bad.fits").result()
        assert caught.value.reason.startswith("not a FITS file")
        assert pool.submit(abs, -3).result() == 3  # still usable
