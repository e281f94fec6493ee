"""StabilityTracker with a fake monotonic clock and real files."""

import os

from reduxd.watch.stability import StabilityTracker


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def _tracker(settle=5.0):
    clock = FakeClock()
    return StabilityTracker(settle_seconds=settle, clock=clock), clock


def test_file_reported_once_after_settle_time(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(b"x" * 2880)
    tracker, clock = _tracker()
    tracker.touch(path)
    assert tracker.poll() == []
    clock.advance(4.9)
    assert tracker.poll() == []
    clock.advance(0.1)
    assert tracker.poll() == [path]
    assert tracker.poll() == []  # handed on once
    assert len(tracker) == 0


def test_growing_file_restarts_the_timer(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(b"x" * 2880)
    tracker, clock = _tracker()
    tracker.touch(path)
    for _ in range(5):  # a slow writer: one chunk every 4 s
        clock.advance(4.0)
        with open(path, "ab") as f:
            f.write(b"y" * 2880)
        assert tracker.poll() == []
    clock.advance(4.9)
    assert tracker.poll() == []
    clock.advance(0.1)
    assert tracker.poll() == [path]


def test_mtime_change_with_same_size_restarts_the_timer(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(b"x" * 2880)
    tracker, clock = _tracker()
    tracker.touch(path)
    clock.advance(4.0)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert tracker.poll() == []
    clock.advance(4.0)
    assert tracker.poll() == []
    clock.advance(1.0)
    assert tracker.poll() == [path]


def test_touch_on_unchanged_file_does_not_restart_the_timer(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(b"x" * 2880)
    tracker, clock = _tracker()
    tracker.touch(path)
    clock.advance(3.0)
    tracker.touch(path)  # e.g. a closed event after the last write, or a rescan
    clock.advance(2.0)
    assert tracker.poll() == [path]


def test_vanished_file_is_forgotten(tmp_path):
    path = tmp_path / "a.fits.tmp"
    path.write_bytes(b"x" * 2880)
    tracker, clock = _tracker()
    tracker.touch(path)
    path.rename(tmp_path / "a.fits")
    clock.advance(10.0)
    assert tracker.poll() == []
    assert path not in tracker
    tracker.touch(tmp_path / "never-existed.fits")
    assert tracker.poll() == []
    assert len(tracker) == 0


def test_empty_file_is_not_reported_until_it_has_data(tmp_path):
    path = tmp_path / "a.fits"
    path.touch()
    tracker, clock = _tracker()
    tracker.touch(path)
    clock.advance(60.0)
    assert tracker.poll() == []
    path.write_bytes(b"x" * 2880)
    assert tracker.poll() == []
    clock.advance(5.0)
    assert tracker.poll() == [path]


def test_several_files_sorted_and_independent(tmp_path):
    tracker, clock = _tracker(settle=1.0)
    paths = [tmp_path / f"{name}.fits" for name in ("c", "a", "b")]
    for p in paths:
        p.write_bytes(b"x")
        tracker.touch(p)
    clock.advance(0.5)
    late = tmp_path / "d.fits"
    late.write_bytes(b"x")
    tracker.touch(late)
    clock.advance(0.5)
    assert tracker.poll() == sorted(paths)
    clock.advance(0.5)
    assert tracker.poll() == [late]


def test_forget(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(b"x")
    tracker, _clock = _tracker(settle=0.0)
    tracker.touch(path)
    tracker.forget(path)
    tracker.forget(tmp_path / "unknown.fits")
    assert tracker.poll() == []
