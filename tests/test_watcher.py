"""The watch layer with real watchdog observers on real temporary folders."""

import contextlib
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from reduxd.fsinfo import NETWORK_FS, is_network_fs, mount_fstype, parse_mountinfo
from reduxd.watch.stability import StabilityTracker
from reduxd.watch.watcher import FileFilter, Watcher, WatchError, scan, wanted

KINDS = ["polling", "inotify"]
POLL = 0.1


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "raw"
    path.mkdir()
    return path


@pytest.fixture(params=KINDS)
def watcher(request, root):
    w = Watcher([root], observer=request.param, poll_interval=POLL)
    w.start()
    yield w
    w.stop()


def drain(q):
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


def wait_for(q, expected, timeout=5.0):
    """Collect queued paths until ``expected`` are all seen (or timeout); return all seen."""
    seen = set()
    deadline = time.monotonic() + timeout
    while not set(expected) <= seen and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            seen.add(q.get(timeout=0.05))
    return seen


def settle_events(q, quiet=3 * POLL + 0.2):
    """Wait for the observers to go quiet, then return what was queued."""
    time.sleep(quiet)
    return set(drain(q))


# -- which files ----------------------------------------------------------------------


def test_wanted_default_patterns():
    assert wanted("n/M51_0001.fits")
    assert wanted("n/M51_0001.FIT")
    assert wanted("n/M51_0001.fts")
    assert wanted("n/M51_0001.fits.fz")
    assert wanted(Path("M51.Fits"))
    for name in (
        "M51.fits.tmp",
        "M51.fits.part",
        "M51.fits~",
        ".M51.fits.swp",
        ".M51.fits",
        "M51.txt",
        "M51.fz",
        "M51.fits.bak",
        "M51.TMP",
    ):
        assert not wanted(f"n/{name}"), name


def test_wanted_checks_folders_below_root_only():
    f = FileFilter()
    assert f.wanted("/srv/.hidden-parent/raw/n1/a.fits", root="/srv/.hidden-parent/raw")
    assert not f.wanted("/data/raw/.Trash-1000/a.fits", root="/data/raw")
    assert not f.wanted("/elsewhere/a.fits", root="/data/raw")
    custom = FileFilter(ignore_patterns=("*_bad*",), extensions=(".FIT",))
    assert custom.wanted("a.fit") and not custom.wanted("a_bad.fit")
    assert not custom.wanted("a.fits")
    assert custom.wanted(".a.fit")  # '.*' is not in this filter


def test_scan_recursive_filtered_sorted(root):
    (root / "2025-06-01" / "M51").mkdir(parents=True)
    (root / ".sync").mkdir()
    (root / "outside-link").symlink_to(root.parent, target_is_directory=True)
    files = ["2025-06-01/M51/b.fits", "2025-06-01/M51/a.FIT", "z.fits.fz", "2025-06-01/f.fts"]
    for rel in [*files, "2025-06-01/M51/c.fits.tmp", ".sync/d.fits", "notes.txt", ".e.fits"]:
        (root / rel).write_bytes(b"x")
    got = [p.relative_to(root).as_posix() for p in scan(root)]
    assert got == ["2025-06-01/M51/a.FIT", "2025-06-01/M51/b.fits", "2025-06-01/f.fts", "z.fits.fz"]
    assert all(isinstance(p, Path) and p.is_absolute() for p in scan(root))


def test_scan_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(scan(tmp_path / "nope"))


# -- filesystem type -------------------------------------------------------------------

FAKE_MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:44 / /mnt/nas rw,relatime shared:5 - nfs4 nas:/export rw,vers=4.2
41 27 0:45 / /mnt/win\\040share rw,relatime - cifs //pc/SharpCap rw
42 40 0:46 / /mnt/nas/local rw - ext4 /dev/sdb1 rw
43 27 0:47 / /mnt/stacked rw - ext4 /dev/sdc1 rw
44 27 0:48 / /mnt/stacked rw - fuse.sshfs host:/raw rw
45 27 0:49 / /mnt/nasty rw - xfs /dev/sdd1 rw
garbage line without separator
"""


def test_parse_mountinfo_fake_text():
    mounts = parse_mountinfo(FAKE_MOUNTINFO)
    assert ("/mnt/win share", "cifs") in mounts
    assert mounts[1] == ("/mnt/nas", "nfs4")
    assert len(mounts) == 7


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/mnt/nas/2025/a.fits", "nfs4"),
        ("/mnt/nas", "nfs4"),
        ("/mnt/nas/local/db.sqlite", "ext4"),  # local disk mounted below a share
        ("/mnt/win share/x", "cifs"),
        ("/mnt/stacked/x", "fuse.sshfs"),  # the later mount hides the earlier one
        ("/mnt/nasty/x", "xfs"),  # '/mnt/nas' is not a prefix of '/mnt/nasty'
        ("/var/lib/reduxd/ledger.sqlite", "ext4"),
    ],
)
def test_mount_fstype_fake_text(path, fstype):
    assert mount_fstype(path, mountinfo=FAKE_MOUNTINFO) == fstype
    assert is_network_fs(path, mountinfo=FAKE_MOUNTINFO) == (fstype in NETWORK_FS)


def test_mount_fstype_on_real_mountinfo(tmp_path):
    assert mount_fstype("/proc/self") == "proc"
    findmnt = shutil.which("findmnt")
    if findmnt is None:
        pytest.skip("findmnt not installed: cannot cross-check")
    for path in (tmp_path, "/", "/proc", "/dev/shm", "/sys"):
        if not os.path.exists(path):
            continue
        expected = subprocess.run(
            [findmnt, "-n", "-o", "FSTYPE", "-T", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
        assert mount_fstype(path) == expected, path


def test_auto_observer_follows_filesystem(root):
    expected = "polling" if is_network_fs(root) else "inotify"
    assert Watcher([root], observer="auto").kinds() == {str(root): expected}
    assert Watcher([root], observer="polling").kinds() == {str(root): "polling"}
    with pytest.raises(ValueError, match="observer"):
        Watcher([root], observer="fsevents")


def test_split_relpath(root, tmp_path):
    other = tmp_path / "other"
    w = Watcher([root, other, root / "nested"], observer="polling")
    assert w.split(root / "n1" / "a.fits") == (str(root), "n1/a.fits")
    assert w.split(root / "nested" / "a.fits") == (str(root / "nested"), "a.fits")
    with pytest.raises(ValueError):
        w.split(tmp_path / "rawx" / "a.fits")


# -- events from real observers ---------------------------------------------------------


def test_catch_up_scan_reports_files_present_at_start(root, request):
    for kind in KINDS:
        (root / f"before-{kind}.fits").write_bytes(b"x")
        w = Watcher([root], observer=kind, poll_interval=POLL)
        try:
            assert w.start() == len(list(scan(root)))
            assert root / f"before-{kind}.fits" in set(drain(w.queue))
        finally:
            w.stop()


def test_chunked_write_copy_and_cp(watcher, root, tmp_path):
    chunked = root / "chunked.fits"
    with open(chunked, "wb") as f:
        for _ in range(5):
            f.write(b"x" * 2880)
            f.flush()
    src = tmp_path / "src.fits"
    src.write_bytes(b"y" * 2880 * 3)
    shutil.copy(src, root / "copied.fits")
    subprocess.run(["cp", str(src), str(root / "cp.fits")], check=True)
    expected = {chunked, root / "copied.fits", root / "cp.fits"}
    assert wait_for(watcher.queue, expected) >= expected


def test_moves_and_renames(watcher, root, tmp_path):
    outside = tmp_path / "outside.fits"
    outside.write_bytes(b"x" * 2880)
    time.sleep(2 * POLL)
    outside.rename(root / "moved-in.fits")  # inotify: created only
    tmp = root / "renamed.fits.tmp"
    tmp.write_bytes(b"y" * 2880)
    tmp.rename(root / "renamed.fits")  # inotify: moved only
    (root / "sub" / "deeper").mkdir(parents=True)  # mkdir -p then a file at once
    (root / "sub" / "deeper" / "new.fits").write_bytes(b"z")
    expected = {root / "moved-in.fits", root / "renamed.fits", root / "sub/deeper/new.fits"}
    seen = wait_for(watcher.queue, expected) | settle_events(watcher.queue)
    assert seen >= expected
    assert tmp not in seen


def test_folder_moved_in_reports_its_files(watcher, root, tmp_path):
    night = tmp_path / "2025-06-01"
    night.mkdir()
    for i in range(3):
        (night / f"L{i}.fits").write_bytes(b"x")
    time.sleep(2 * POLL)
    night.rename(root / "2025-06-01")
    expected = {root / "2025-06-01" / f"L{i}.fits" for i in range(3)}
    assert wait_for(watcher.queue, expected) >= expected


def test_ignored_files_never_queued(watcher, root):
    for name in (".hidden.fits", "a.fits.part", "a.txt", "a.fits~", "a.swp"):
        (root / name).write_bytes(b"x")
    (root / ".sync").mkdir()
    (root / ".sync" / "x.fits").write_bytes(b"x")
    (root / "good.fits").write_bytes(b"x")
    seen = wait_for(watcher.queue, {root / "good.fits"}) | settle_events(watcher.queue)
    assert seen == {root / "good.fits"}


def _slow_writer(path, chunks, pause):
    with open(path, "wb") as f:
        for _ in range(chunks):
            f.write(b"x" * 2880)
            f.flush()
            time.sleep(pause)


def test_slow_chunked_write_not_stable_until_complete(watcher, root):
    path = root / "slow.fits"
    writer = threading.Thread(target=_slow_writer, args=(path, 8, 0.15))
    tracker = StabilityTracker(settle_seconds=0.5)
    writer.start()
    stable_at = None
    deadline = time.monotonic() + 8
    while stable_at is None and time.monotonic() < deadline:
        for p in drain(watcher.queue):
            tracker.touch(p)
        if path in tracker.poll():
            stable_at = (writer.is_alive(), path.stat().st_size)
        time.sleep(0.02)
    writer.join()
    assert stable_at == (False, 8 * 2880)


@pytest.mark.parametrize("kind", KINDS)
def test_burst_of_2000_files_none_missed(kind, root):
    w = Watcher([root], observer=kind, poll_interval=POLL)
    w.start()
    try:
        t0 = time.perf_counter()
        expected = set()
        for i in range(2000):
            path = root / f"burst_{i:05d}.fits"
            path.write_bytes(b"x" * 64)
            expected.add(path)
        written = time.perf_counter() - t0
        seen = wait_for(w.queue, expected, timeout=20)
        elapsed = time.perf_counter() - t0
        lag = elapsed - written
        print(f"\n{kind}: 2000 files written in {written:.2f} s, all queued {lag:.2f} s later")
        assert seen >= expected  # events alone, no scan needed
        assert set(scan(root)) == expected
    finally:
        w.stop()


# -- supervision ------------------------------------------------------------------------


def _wait_unhealthy(w, timeout=3.0):
    deadline = time.monotonic() + timeout
    while w.healthy() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not w.healthy()


def test_root_removed_and_recreated(watcher, root):
    assert watcher.healthy()
    (root / "a.fits").write_bytes(b"x")
    assert root / "a.fits" in wait_for(watcher.queue, {root / "a.fits"})
    shutil.rmtree(root)  # the share drops out
    assert _wait_unhealthy(watcher)  # emitter dead while observer thread lives on
    for _ in range(watcher.max_failures + 3):  # waiting for a missing root never gives up
        assert watcher.check_and_restart() is False
    root.mkdir()  # the share comes back, with a file written in between
    (root / "gap.fits").write_bytes(b"x")
    assert watcher.check_and_restart() is True
    assert watcher.healthy()
    assert root / "gap.fits" in set(drain(watcher.queue))  # catch-up scan on restart
    (root / "new.fits").write_bytes(b"x")
    assert root / "new.fits" in wait_for(watcher.queue, {root / "new.fits"})


def test_root_replaced_by_new_folder_is_rewatched(watcher, root, tmp_path):
    # a share mounted over the mount point looks like this: same path, new folder
    replacement = tmp_path / "replacement"
    replacement.mkdir()
    (replacement / "on-share.fits").write_bytes(b"x")
    root.rename(tmp_path / "old")
    replacement.rename(root)
    assert _wait_unhealthy(watcher)
    assert watcher.check_and_restart() is True
    assert root / "on-share.fits" in set(drain(watcher.queue))
    (root / "new.fits").write_bytes(b"x")
    assert root / "new.fits" in wait_for(watcher.queue, {root / "new.fits"})


def test_missing_root_at_start_is_watched_when_it_appears(tmp_path):
    root = tmp_path / "share"
    w = Watcher([root], observer="polling", poll_interval=POLL)
    try:
        assert w.start() == 0
        assert not w.healthy()
        assert w.rescan() == 0
        root.mkdir()
        (root / "a.fits").write_bytes(b"x")
        assert w.check_and_restart() is True
        assert drain(w.queue) == [root / "a.fits"]
        assert w.rescan() == 1
    finally:
        w.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_gives_up_when_root_cannot_be_watched(kind, tmp_path):
    root = tmp_path / "raw"
    root.write_text("not a folder")
    w = Watcher([root], observer=kind, poll_interval=POLL, max_failures=3)
    try:
        w.start()
        for _ in range(3):
            assert w.check_and_restart() is False
        with pytest.raises(WatchError, match="giving up"):
            w.check_and_restart()
    finally:
        w.stop()


def test_failure_count_resets_when_healthy(root):
    w = Watcher([root], observer="polling", poll_interval=POLL, max_failures=1)
    w.start()
    try:
        for _ in range(3):  # one failure at a time, healthy in between: never gives up
            for emitter in list(w._roots[0].observer.emitters):
                emitter.stop()  # what the polling emitter does to itself on an error
            assert _wait_unhealthy(w)
            assert w.check_and_restart() is True
            assert w.check_and_restart() is True
    finally:
        w.stop()
