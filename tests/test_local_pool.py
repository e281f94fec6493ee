"""The local process pool's pipes hold a light's task and result (``executors.widen_pipes``):
a worker hands its result on without waiting for the coordinator to read it. The pools a
batch forks besides it: one for the masters (``forked_now``), one for the plots
(``side_process``)."""

import fcntl
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial

import pytest

from reduxd import executors

GET_SIZE = getattr(fcntl, "F_GETPIPE_SZ", None)


def _pipe_bytes(queue):
    return fcntl.fcntl(queue._reader.fileno(), GET_SIZE)


def _bytes(n):
    return b"x" * n


@pytest.mark.skipif(GET_SIZE is None, reason="pipe sizes are a Linux feature")
def test_the_local_pools_pipes_hold_a_lights_task_and_result():
    with executors.open_executor("local", jobs=2) as workers:
        pool = workers.pool
        sizes = {_pipe_bytes(pool._call_queue), _pipe_bytes(pool._result_queue)}
        assert sizes == {executors.PIPE_BYTES[0]} or sizes == {executors.PIPE_BYTES[1]}
        assert min(sizes) >= 4 * 65536  # the default held less than a 650x500 light's mask
        assert len(pool.submit(_bytes, 600_000).result()) == 600_000


@pytest.mark.skipif(GET_SIZE is None, reason="pipe sizes are a Linux feature")
def test_a_pool_takes_the_largest_pipe_the_system_allows(monkeypatch):
    real = fcntl.fcntl

    def limited(fd, cmd, arg=0):  # as /proc/sys/fs/pipe-max-size = 256 kB, unprivileged
        if cmd == fcntl.F_SETPIPE_SZ and arg > 1 << 18:
            raise PermissionError(1, "Operation not permitted")
        return real(fd, cmd, arg)

    monkeypatch.setattr(executors.fcntl, "fcntl", limited)
    with ProcessPoolExecutor(max_workers=1) as pool:
        assert executors.widen_pipes(pool) == 1 << 18
        assert _pipe_bytes(pool._result_queue) == 1 << 18
        assert executors.widen_pipes(pool, sizes=(1 << 19,)) is None  # none allowed: kept
        assert _pipe_bytes(pool._result_queue) == 1 << 18
        assert pool.submit(_bytes, 10).result() == b"x" * 10


def _children():
    return {p.pid for p in multiprocessing.active_children()}


def test_forked_now_forks_another_pool_at_once_and_closes_it():
    with ProcessPoolExecutor(max_workers=2) as pool:
        before = _children()
        with executors.forked_now(pool, 2) as early:
            assert early is not pool
            forked = _children() - before
            assert len(forked) == 2  # before any task of ours
            assert early.submit(os.getpid).result() in forked
        assert not forked & _children()  # gone on leaving
        assert pool.submit(os.getpid).result() not in forked
    with ThreadPoolExecutor(2) as other, executors.forked_now(other, 2) as early:
        assert early is other  # as Dask's executor: that one itself
    with executors.forked_now(None, 2) as early:  # --jobs 1
        assert early is None


def test_a_side_process_is_forked_at_once_and_runs_its_initializer_first(tmp_path):
    started = tmp_path / "started"
    before = _children()
    with executors.side_process("local", 2, partial(started.write_text, "yes")) as side:
        assert len(_children() - before) == 1  # forked on entering, not at the first task
        assert side.submit(started.read_text).result() == "yes"
    assert not _children() - before
    for kind, jobs in (("local", 1), ("dask-local", 2), ("dask", 2)):
        with executors.side_process(kind, jobs, partial(started.write_text, "no")) as side:
            assert side is None
    assert started.read_text() == "yes"


def test_a_pool_whose_worker_died_is_broken():
    import signal
    import time

    with executors.side_process("local", 2, None) as side:
        pid = side.submit(os.getpid).result()
        assert not executors.broken(side)
        os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        for _ in range(100):
            if executors.broken(side):
                break
            time.sleep(0.05)
        assert executors.broken(side)  # reduxd reduce then plots in its pool
    assert not executors.broken(None)


def test_the_plots_process_leaves_ctrl_c_to_the_coordinator():
    import signal

    from reduxd import batch

    # Ctrl-C reaches the whole process group: the plots' process, waiting for its task,
    # would die with a traceback on the terminal
    with executors.side_process("local", 2, batch._plots_start) as side:
        pid = side.submit(os.getpid).result()
        os.kill(pid, signal.SIGINT)
        assert side.submit(os.getpid).result() == pid  # still there
        assert not executors.broken(side)
