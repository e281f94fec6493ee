"""Where ``reduxd reduce`` runs its work: this process, local processes, or Dask.

:func:`open_executor` gives a :class:`Workers`: ``pool`` is a
``concurrent.futures.Executor`` (or None: work in this process), the only thing
the pipeline sees. Three kinds:

``local``
    Today's pool: ``--jobs 1`` works in this process, more jobs in a
    ``ProcessPoolExecutor``. Dask is not imported.
``dask``
    An existing Dask cluster (``--scheduler tcp://HOST:8786``), e.g. workers
    started by ``dask-jobqueue`` on Slurm.
``dask-local``
    A Dask ``LocalCluster`` of ``--jobs`` worker processes on this machine.

With Dask the pool is the client's ``concurrent.futures`` executor
(``Client.get_executor``): each task is submitted with ``pure=False`` and
``retries``. A worker lost mid-run costs only its tasks: the scheduler gives
them to the other workers. The coordinating process alone writes the ledger and
the tables; the workers read the raw frames and write products under the output
folder, by the same absolute paths, so every worker must see them (checked when
the executor opens).
"""

import contextlib
import dataclasses
import fcntl
import importlib
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

EXECUTORS = ("local", "dask", "dask-local")
INSTALL_HINT = "pip install 'reduxd[cluster]'"
RETRIES = 2  # a task that raises (e.g. a network filesystem hiccup) runs up to 3 times
CONNECT_TIMEOUT = "30s"
# A local pool's pipes hold this much (Linux's limit for any process by default); 64 kB
# otherwise, less than a light's task (its bad-pixel mask) or its result (150 kB at 660 stars).
PIPE_BYTES = (1 << 20, 1 << 18)


class ExecutorError(Exception):
    """The executor cannot be used (exit status 2): Dask missing, scheduler unreachable."""


@dataclass
class Workers:
    """An open executor.

    Attributes
    ----------
    pool : concurrent.futures.Executor or None
        Where tasks are submitted; None: work in this process.
    description : str
        One line for the terminal, e.g. ``dask LocalCluster, 2 workers``.
    dashboard : str or None
        The Dask dashboard address, when there is one.
    client : distributed.Client or None
        The Dask client (Dask executors only).
    """

    pool: object
    description: str
    dashboard: str | None = None
    client: object = None


@contextlib.contextmanager
def open_executor(kind, *, jobs=1, scheduler=None, retries=RETRIES):
    """Open the executor ``kind`` (one of :data:`EXECUTORS`); yield :class:`Workers`.

    Raises
    ------
    ExecutorError
        Dask is not installed, ``--scheduler`` is missing, or the scheduler
        cannot be reached.
    """
    distributed = require(kind, scheduler)
    if distributed is None:
        with _local(jobs) as workers:
            yield workers
        return
    with _dask_client(distributed, kind, jobs, scheduler) as (client, what):
        pool = client.get_executor(pure=False, retries=retries)
        yield Workers(pool, what, dashboard_link(client), client)


@contextlib.contextmanager
def _local(jobs):
    if not is_local_pool("local", jobs):
        yield Workers(None, "local, this process")
        return
    with _process_pool(jobs) as pool:
        yield Workers(pool, f"local, {jobs} processes")


@contextlib.contextmanager
def _process_pool(jobs):
    """A local pool of ``jobs`` processes, its pipes widened (:func:`widen_pipes`)."""
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        widen_pipes(pool)
        yield pool


def widen_pipes(pool, sizes=PIPE_BYTES):
    """Let a process pool's task and result pipes hold the first of ``sizes`` (bytes) the
    system allows; return the size set (None: the default kept, e.g. not Linux).

    A worker's result is written to a pipe that this process reads when its thread for
    the pool gets its turn; a result larger than the pipe made the worker wait for that.
    On the 142-light benchmark a worker's hand-over of a result took 2.6 ms, 1.5 ms with
    1 MB pipes, and its time between lights fell from 0.25-0.3 s to 0.13-0.21 s.

    Examples
    --------
    >>> with ProcessPoolExecutor(max_workers=1) as pool:
    ...     widen_pipes(pool) in (None, *PIPE_BYTES)
    True
    """
    pipes = [pool._call_queue._reader, pool._result_queue._reader]
    for size in sizes:
        try:
            for pipe in pipes:
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, size)
            return size
        except (AttributeError, OSError):  # no F_SETPIPE_SZ, or over the system's limit
            continue
    return None


def start_workers(pool):
    """Fork a local pool's workers now, if not yet done (at its first task otherwise).

    After this no thread of this process is copied into a worker: one started now
    may import modules (see :class:`reduxd.batch.Preload`). Nothing to do for
    ``--jobs 1`` and Dask, whose workers are not forked from here.
    """
    if isinstance(pool, ProcessPoolExecutor):
        pool.submit(os.getpid)  # forks them all before it returns (not waiting for the task)


@contextlib.contextmanager
def forked_now(pool, jobs):
    """For a local process pool ``pool``: another pool of ``jobs`` processes, forked at once
    and closed on leaving; else ``pool`` itself (``--jobs 1``: None; Dask's workers are
    not forked from here).

    ``reduxd reduce`` combines the masters in it while this process imports the lights'
    modules (scipy and the steps, about 0.3 s): the workers of ``pool``, forked after
    that, have them and the masters, and the masters do not wait for the imports.

    Examples
    --------
    >>> with forked_now(None, 2) as pool:
    ...     pool is None
    True
    """
    if not isinstance(pool, ProcessPoolExecutor):
        yield pool
        return
    with _process_pool(jobs) as early:
        start_workers(early)
        yield early


def is_local_pool(kind, jobs):
    """Whether :func:`open_executor` gives a local process pool for ``kind`` and ``jobs``."""
    return kind == "local" and jobs > 1


@contextlib.contextmanager
def side_process(kind, jobs, initializer):
    """A one-process pool forked now that first runs ``initializer``, while this process
    goes on, when ``kind`` and ``jobs`` make a local process pool (else None).

    ``reduxd reduce`` plots its light curves there: the process imports matplotlib
    (about 0.3 s) on the core this one leaves idle while it reads the night's
    headers, instead of this process doing it while both cores reduce lights.

    Examples
    --------
    >>> with side_process("local", 1, None) as side:
    ...     side is None
    True
    """
    if not is_local_pool(kind, jobs):
        yield None
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=context, initializer=initializer) as side:
        start_workers(side)  # the task waits for the initializer there
        yield side


def broken(pool):
    """Whether a local process pool can take no more tasks (a worker died: killed, out of
    memory); False for anything else.

    Examples
    --------
    >>> broken(None)
    False
    """
    return isinstance(pool, ProcessPoolExecutor) and bool(pool._broken)


def require(kind, scheduler=None):
    """Check that executor ``kind`` can be used; return ``distributed`` (None for local).

    Called before any work, so that a missing Dask or ``--scheduler`` is said at once.

    Raises
    ------
    ExecutorError
        Unknown kind, Dask not installed (the message says how to install it),
        or ``--executor dask`` without ``--scheduler``.
    """
    if kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor {kind!r} (one of {', '.join(EXECUTORS)})")
    if kind == "local":
        return None
    try:
        distributed = importlib.import_module("distributed")
    except ImportError as exc:
        raise ExecutorError(
            f"--executor {kind} needs Dask distributed, which is not installed "
            f"({exc}); install it with: {INSTALL_HINT}"
        ) from None
    if kind == "dask" and not scheduler:
        raise ExecutorError("--executor dask needs --scheduler tcp://HOST:PORT")
    return distributed


@contextlib.contextmanager
def _dask_client(distributed, kind, jobs, scheduler):
    if kind == "dask":
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        with client:
            n = len(client.scheduler_info().get("workers", {}))
            yield client, f"dask cluster {scheduler}, {n} workers now"
        return
    n = max(int(jobs), 1)
    with (
        distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client, f"dask LocalCluster, {n} worker processes"


def dashboard_link(client):
    """The dashboard address of ``client``'s scheduler, or None when it has none."""
    services = client.scheduler_info().get("services", {})
    if "dashboard" not in services:  # bokeh not installed: no dashboard
        return None
    return client.dashboard_link


def check_paths(workers, paths):
    """Raise :class:`ExecutorError` when a Dask worker does not see one of ``paths``.

    Raw frames, masters and products are passed to the workers by absolute path;
    a worker whose filesystem has them elsewhere must have them mounted (or
    linked) at the same path (see the README, "Path mapping").
    """
    if workers.client is None:
        return
    paths = [os.fspath(p) for p in paths]
    seen = workers.client.run(_missing, paths)
    for worker, missing in sorted(seen.items()):
        if missing:
            raise ExecutorError(
                f"Dask worker {worker} does not see {missing[0]}: every worker must see "
                "the data folders and the output folder at the same absolute path"
            )


def _missing(paths):
    return [p for p in paths if not os.path.isdir(p)]


class InProcess:
    """The executor of ``--jobs 1``: ``submit`` runs the call at once, here.

    It returns a finished ``concurrent.futures.Future``, so callers treat this
    process like any pool (the future holds the exception if the call raised).

    Examples
    --------
    >>> InProcess().submit(divmod, 7, 2).result()
    (3, 1)
    >>> InProcess().submit(divmod, 1, 0).exception()
    ZeroDivisionError('integer division or modulo by zero')
    """

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


def worker_pids(client):
    """``{worker address: pid}`` of the Dask workers (used by the tests)."""
    return client.run(os.getpid)


def absolute_outdir(config):
    """``config`` with an absolute output folder (workers may run in another folder)."""
    outdir = os.path.abspath(config.paths.outdir)
    return dataclasses.replace(config, paths=dataclasses.replace(config.paths, outdir=outdir))
