"""reduxd.readahead: frames read a few files ahead, in order, and read again if changed."""

import os
import threading

import numpy as np
import pytest
from astropy.io import fits

from reduxd.errors import FrameRejected
from reduxd.fitsio import read_frame
from reduxd.readahead import ReadAhead


class CountingRead:
    """``read_frame`` that records which paths it read, and in which thread."""

    def __init__(self):
        self.calls = []

    def __call__(self, path):
        self.calls.append((path.name, threading.current_thread().name))
        return read_frame(path, max_bytes=10**8)


def write_frames(folder, n):
    paths = []
    for i in range(n):
        path = folder / f"bias_{i:03d}.fits"
        fits.PrimaryHDU(np.full((8, 8), 100 + i, np.uint16)).writeto(path)
        paths.append(path)
    return paths


def test_frames_after_the_one_asked_for_are_read_in_the_thread(tmp_path):
    paths = write_frames(tmp_path, 5)
    read = CountingRead()
    with ReadAhead(paths, read, depth=2) as ahead:
        assert ahead.take(paths[0]) is None  # the first is the caller's to read
        for i, path in enumerate(paths[1:], start=1):
            frame = ahead.take(path)
            assert frame.checksum == read_frame(path, max_bytes=10**8).checksum
            assert float(frame.data[0, 0]) == 100 + i
    assert [name for name, _ in read.calls] == [p.name for p in paths[1:]]
    assert all(thread.startswith("reduxd-read-ahead") for _, thread in read.calls)


def test_a_frame_changed_after_it_was_read_is_left_to_the_caller(tmp_path):
    paths = write_frames(tmp_path, 3)
    with ReadAhead(paths, CountingRead(), depth=2) as ahead:
        ahead.take(paths[0])
        ahead._ahead[paths[1]].result()  # read ahead, then rewritten
        fits.PrimaryHDU(np.full((8, 8), 7, np.uint16)).writeto(paths[1], overwrite=True)
        st = paths[1].stat()
        os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert ahead.take(paths[1]) is None
        assert float(ahead.take(paths[2]).data[0, 0]) == 102


def test_what_reading_raised_is_raised_in_the_callers_turn(tmp_path):
    paths = write_frames(tmp_path, 2)
    paths[1].write_bytes(b"not a FITS file at all" * 200)
    with ReadAhead(paths, CountingRead()) as ahead:
        ahead.take(paths[0])
        with pytest.raises(FrameRejected) as info:
            ahead.take(paths[1])
    assert paths[1].name in str(info.value)


def test_frames_passed_over_are_dropped_and_only_asked_for_ones_read_ahead(tmp_path):
    """A re-run asks for few frames (the rest are done): at most ``depth`` after each is read."""
    paths = write_frames(tmp_path, 10)
    read = CountingRead()
    with ReadAhead(paths, read, depth=2) as ahead:
        ahead.take(paths[5])  # frames 0-4 done: never read
        assert ahead.take(paths[7]).checksum  # 6 passed over
        assert set(ahead._ahead) == {paths[8], paths[9]}
    assert {name for name, _ in read.calls} <= {p.name for p in paths[6:]}
    assert ahead._ahead == {}


def test_a_path_it_was_not_given_is_the_callers(tmp_path):
    paths = write_frames(tmp_path, 2)
    with ReadAhead(paths[:1], CountingRead()) as ahead:
        assert ahead.take(paths[1]) is None
