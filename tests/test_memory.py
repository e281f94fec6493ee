"""The daemon hands the C heap's free pages back between lights (glibc malloc_trim)."""

from pathlib import Path

import pytest

from reduxd.memory import release_free_memory


def _rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    pytest.skip("no /proc/self/status")


def test_freed_heap_memory_goes_back_to_the_system():
    """200 MB of small blocks freed under a block still in use stay resident (glibc only
    shrinks the top of its heap by itself) until release_free_memory."""
    blocks = [bytes(1000) + bytes([i % 256]) for i in range(200_000)]  # malloc'd, not mmap'd
    pin = bytes(1000) + b"pin"  # above them in the heap
    before = _rss_mb()
    del blocks
    kept = _rss_mb()
    if not release_free_memory():
        pytest.skip("not glibc: nothing to release")
    after = _rss_mb()
    assert before - kept < 50  # freed, but still resident
    assert kept - after > 100, (before, kept, after)
    assert pin
