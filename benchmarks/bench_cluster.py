"""Benchmark: ``reduxd reduce`` on several nights, one process against Dask workers.

Usage::

    .venv/bin/python benchmarks/bench_cluster.py                 # 4 nights of 20 lights
    .venv/bin/python benchmarks/bench_cluster.py --nights 2 --lights 10

Nights are simulated first (not timed; ``reduxd.simulate``, each its own date,
target and calibration: 10 bias, 5 darks per exposure, 5 flats per filter,
``--lights`` lights in V and R, ``--shape`` pixels), in one folder of night
folders. Then, on the same files, ``reduxd reduce -D archive`` as a subprocess
(wall time, start-up included):

- ``--executor local --jobs 1``: the baseline, everything in one process;
- ``--executor dask --scheduler ...`` against a Dask ``LocalCluster`` of 1 and
  then 2 worker processes started here (not timed) whose scheduler records
  every task (``Client.get_task_stream``): the compute time of each kind of
  task (masters, lights, stack runs) is printed.

The scheduler's own overhead is measured with 2000 empty tasks submitted one by
one through the same ``concurrent.futures`` executor reduxd uses. Last, the
numbers behind the README's estimate for 100 nights on 50 workers: the
coordinator's serial time per night (the baseline's wall time less the tasks'
compute time) and the tasks' compute time per night.

The ratio printed is the 1-worker time over the 2-worker time (ideal 2 on two
free cores; this machine's two cores are shared).
"""

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reduxd.simulate import NightSpec, simulate_night  # noqa: E402

try:
    from dask.utils import key_split
except ImportError:
    raise SystemExit("this benchmark needs Dask: pip install 'reduxd[cluster]'") from None


def reduxd_command():
    script = Path(sys.executable).with_name("reduxd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reduxd"]


def simulate(base, n_nights, n_lights, shape):
    for k in range(1, n_nights + 1):
        spec = NightSpec.small(
            shape=shape, n_lights=n_lights // 2, lights_per_run=5, n_bias=10, n_darks=5,
            n_flats=5, n_stars=40, target=f"field{k}", seed=k,
            start=f"2024-07-{k:02d}T00:50:00",
        )  # fmt: skip
        night = base / "archive" / f"night{k}"
        simulate_night(night, spec)
        shutil.rmtree(night / "truth")


def run_reduce(base, out, *extra):
    """Wall and CPU seconds of ``reduxd reduce`` (the CPU of the coordinating process only)."""
    cmd = [*reduxd_command(), "reduce", "-D", "archive", "-O", out, "--progress-every", "1e9"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, *extra], cwd=base, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # Dask workers are still alive
    if proc.returncode != 0:
        raise SystemExit(f"reduxd reduce failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu


def task_times(client, since):
    """Compute seconds of each task finished since ``since``, by function name."""
    out = defaultdict(list)
    for record in client.get_task_stream(start=since):
        prefix = key_split(record["key"])
        compute = [s for s in record["startstops"] if s["action"] == "compute"]
        out[prefix] += [s["stop"] - s["start"] for s in compute]
    return dict(out)


def on_cluster(distributed, base, n_workers):
    """Wall time of a run on a fresh LocalCluster of ``n_workers``, and its task times."""
    with (
        distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.get_task_stream(start=time.time())  # the scheduler starts recording
        since = time.time()
        seconds, cpu = run_reduce(
            base, f"dask{n_workers}", "--executor", "dask", "--scheduler", cluster.scheduler_address
        )
        return seconds, cpu, task_times(client, since)


def _noop(i):
    return i


def scheduler_overhead(distributed, n=2000):
    """Seconds per empty task through the client's executor, submitted one by one."""
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                 dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        pool = client.get_executor(pure=False, retries=2)
        pool.submit(_noop, 0).result()
        t0 = time.perf_counter()
        futures = [pool.submit(_noop, i) for i in range(n)]
        for f in futures:
            f.result()
        return (time.perf_counter() - t0) / n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=4, help="nights (default 4)")
    parser.add_argument("--lights", type=int, default=20, help="lights per night (default 20)")
    parser.add_argument("--shape", default="804x552", help="WIDTHxHEIGHT (default 804x552)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    import distributed

    nx, ny = (int(v) for v in args.shape.split("x"))
    base = Path(tempfile.mkdtemp(prefix="reduxd-bench-cluster-"))
    try:
        simulate(base, args.nights, args.lights, (ny, nx))
        print(f"{args.nights} nights x {args.lights} lights {args.shape}, under {base}")
        local, _cpu = run_reduce(base, "local1", "--executor", "local", "--jobs", "1")
        one, _cpu1, tasks1 = on_cluster(distributed, base, 1)
        two, cpu2, _tasks2 = on_cluster(distributed, base, 2)
        overhead = scheduler_overhead(distributed)
        report(args, (local, one, two), tasks1, overhead, cpu2)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def report(args, walls, tasks, overhead, coordinator_cpu):
    local, one, two = walls
    print(f"{'run':<38} {'wall s':>8}")
    print(f"{'--executor local --jobs 1 (baseline)':<38} {local:8.1f}")
    print(f"{'--executor dask, 1 worker':<38} {one:8.1f}")
    print(f"{'--executor dask, 2 workers':<38} {two:8.1f}")
    print(f"ratio 1 worker / 2 workers: {one / two:.2f} (ideal 2.0)")
    print(f"ratio baseline / 2 workers: {local / two:.2f}")
    print("task compute times (1-worker run; a worker's first task includes its imports):")
    total = 0.0
    for name, times in sorted(tasks.items()):
        total += sum(times)
        print(
            f"  {name:<14} n={len(times):4d}  median {statistics.median(times):6.3f} s  "
            f"total {sum(times):6.1f} s"
        )
    print(f"scheduler overhead per task (empty tasks, one by one): {overhead * 1e3:.2f} ms")
    print(
        f"per night: {total / args.nights:.1f} s of task compute; coordinator CPU "
        f"{coordinator_cpu / args.nights:.1f} s (2-worker run, {coordinator_cpu:.1f} s in all, "
        "start-up included)"
    )


if __name__ == "__main__":
    main()
