"""The local process pool's pipes hold a light's task and result (``executors.widen_pipes``):
a worker hands its result on without waiting for the coordinator to read it."""

import fcntl

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
    from concurrent.futures import ProcessPoolExecutor

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
