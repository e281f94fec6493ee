"""The ``reduxd`` program imports with the garbage collector off and freezes its long-lived
objects before it forks workers (:mod:`reduxd.heap`): a worker's collections then skip
them. Checked in a real ``reduxd reduce --jobs 2`` run on a small simulated night."""

import gc
import json
import subprocess
import sys

import pytest

from reduxd import heap
from reduxd.simulate import NightSpec, simulate_night

# Runs the program as the ``reduxd`` script does (``main()``, no arguments), with two
# probes that write what they see to a file: the collector while the command's modules
# import, and the frozen objects in the worker that combines the bias.
PROGRAM = """
import atexit, gc, json, os, sys
from reduxd import cli, lightjob
from reduxd.products import lightcurve
from reduxd.steps import masters

out = sys.argv.pop(1)
build_parser, make_bias = cli.build_parser, masters.make_bias
plot_lightcurve, compute_light = lightcurve.plot_lightcurve, lightjob.compute_light

def note(**seen):
    with open(out, "a") as fh:
        fh.write(json.dumps(seen) + "\\n")

def probed_parser(*a, **k):
    note(main=os.getpid(), importing_with_collector=gc.isenabled())
    return build_parser(*a, **k)

def probed_bias(*a, **k):
    note(worker=os.getpid(), frozen=gc.get_freeze_count(), collector=gc.isenabled(),
         young=gc.get_threshold()[0], scipy="scipy" in sys.modules)
    return make_bias(*a, **k)

def probed_light(*a, **k):
    note(light_worker=os.getpid(), frozen=gc.get_freeze_count())
    return compute_light(*a, **k)

def probed_plot(*a, **k):
    from matplotlib.figure import Figure
    note(plotter=os.getpid(), parent=os.getppid(),
         figure_walked=any(o is Figure for o in gc.get_objects()))
    return plot_lightcurve(*a, **k)

def at_exit(main=os.getpid()):
    if os.getpid() == main:
        note(main_end=main, matplotlib="matplotlib" in sys.modules)

cli.build_parser, masters.make_bias = probed_parser, probed_bias
lightcurve.plot_lightcurve, lightjob.compute_light = probed_plot, probed_light
atexit.register(at_exit)
sys.argv = ["reduxd", *sys.argv[1:]]
sys.exit(cli.main())
"""


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    folder = tmp_path_factory.mktemp("night")
    simulate_night(folder, NightSpec.small(), workers=1)
    return folder


def test_workers_are_forked_with_the_imported_modules_frozen(tmp_path, night):
    seen = tmp_path / "seen.jsonl"
    args = ["-D", str(night), "-O", str(tmp_path / "out"), "--jobs", "2"]
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(seen), "reduce", *args],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [json.loads(line) for line in seen.read_text().splitlines()]
    assert notes[0]["importing_with_collector"] is False
    main = notes[0]["main"]
    workers = [n for n in notes if "worker" in n]
    assert len(workers) == 1 and workers[0]["worker"] != main  # the bias, in a worker
    assert workers[0]["frozen"] > 50_000  # numpy, astropy... not walked again
    assert workers[0]["collector"] is True
    assert workers[0]["young"] == heap.YOUNG_THRESHOLD
    # the masters' workers are forked before the lights' modules (scipy) are imported, the
    # lights' workers after: other processes, with those modules frozen too
    assert workers[0]["scipy"] is False
    lights = [n for n in notes if "light_worker" in n]
    assert lights and workers[0]["worker"] not in {n["light_worker"] for n in lights}
    assert min(n["frozen"] for n in lights) > workers[0]["frozen"] + 20_000
    # the plots' process is forked from the coordinator as the run starts and imports
    # matplotlib, frozen there (a collection there would walk it); the coordinator never
    # imports it
    plotters = [n for n in notes if "plotter" in n]
    assert plotters and not any(n["figure_walked"] for n in plotters)
    assert {n["parent"] for n in plotters} == {main}
    assert [n["matplotlib"] for n in notes if "main_end" in n] == [False]


def test_a_process_calling_main_with_arguments_keeps_its_collector():
    frozen = gc.get_freeze_count()
    assert heap.settle() is False
    assert gc.get_freeze_count() == frozen and gc.isenabled()
