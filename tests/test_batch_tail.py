"""The end of ``reduxd reduce --jobs N``: the light curves and the stacks side by side.

The main process builds the final light curves from the rows it kept, so their
ensembles are known here; a worker writes their tables and a process forked at the end
(matplotlib loaded) their plots, while this process measures the stacks and draws their
finder charts, which mark those ensembles.
"""

import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from test_curves import _batch_lights
from test_pipeline import field_a_pipeline

from reduxd import curves
from reduxd.products.finder import read_ensemble
from reduxd.products.stacks import CHUNK
from reduxd.simulate import NightSpec, simulate_night

WAIT = 15.0  # seconds the light curves' files wait for the finder chart to start


def wait_for(path, timeout=60.0):
    """A pool job that holds its worker until ``path`` exists."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_final_curves_built_in_the_pool_are_marked_before_their_files_are_written(tmp_path):
    """A curve whose rows were not kept here (committed by an earlier run, say) is built
    in the pool from the ledger. Once :meth:`Curves.marked` returns, its ensemble is known
    (what a finder chart marks) while its files are still to be written; ``close``
    waits for them, and the ECSV names the same ensemble."""
    ecsv = tmp_path / "lightcurve_A_V.ecsv"
    gates = [tmp_path / "gate1", tmp_path / "gate2"]
    with field_a_pipeline(tmp_path) as (pipeline, add), ProcessPoolExecutor(1) as pool:
        for i in range(12):
            add(i)
        curves = pipeline.lightcurves
        pool.submit(wait_for, str(gates[0]))  # the one worker: gate 1, the build,
        pipeline.update_curves(pool=pool)
        held = pool.submit(wait_for, str(gates[1]))  # gate 2, then the files' job
        gates[0].touch()
        marks = curves.marked(ecsv)  # waits for the build
        assert curves.ensembles[("A", "V")]["target_id"] == 1
        assert not ecsv.exists() and len(curves.writing) == 2 and not held.done()
        gates[1].touch()
        curves.close()
        assert curves.writing == [] and curves.final_pool is None
    assert marks[0] == 1 and len(marks[1]) >= 2
    assert read_ensemble(ecsv) == marks
    assert curves.marked(tmp_path / "lightcurve_B_R.ecsv") is None  # not built: read


def test_final_curves_files_are_written_as_soon_as_they_are_built(tmp_path):
    """Nobody needs to take a build in the pool (the stacks are busy) for the files to
    be written: they are sent to the pool once the curves are built."""
    ecsv = tmp_path / "lightcurve_A_V.ecsv"
    with field_a_pipeline(tmp_path) as (pipeline, add), ProcessPoolExecutor(1) as pool:
        for i in range(12):
            add(i)
        curves = pipeline.lightcurves
        pipeline.update_curves(pool=pool)
        wait_for(ecsv, timeout=120)
        assert ecsv.exists() and curves.running is not None  # written, not yet taken here
        curves.close()
    assert read_ensemble(ecsv) == curves.marks[ecsv]


def test_final_curves_of_kept_rows_are_built_here_and_written_in_the_pool(tmp_path):
    """A curve all of whose rows this process kept is built here: once ``update_curves``
    returns its ensemble is known (what a finder chart marks) while its files are still
    to be written in the pool; ``close`` waits for them, and the ECSV names the same
    ensemble."""
    ecsv = tmp_path / "lightcurve_A_V.ecsv"
    gate = tmp_path / "gate"
    with field_a_pipeline(tmp_path) as (pipeline, _add), ProcessPoolExecutor(1) as pool:
        curves = pipeline.lightcurves
        curves.keep_rows()
        _batch_lights(pipeline.ledger, pipeline, np.random.default_rng(3), range(12))
        held = pool.submit(wait_for, str(gate))  # the one worker: the gate, then the files
        pipeline.update_curves(pool=pool)
        marks = curves.marked(ecsv)
        assert curves.ensembles[("A", "V")]["target_id"] == 1 and curves.running is None
        assert not ecsv.exists() and len(curves.writing) == 2 and not held.done()
        gate.touch()
        curves.close()
        assert curves.writing == [] and curves.final_pool is None
    assert marks[0] == 1 and len(marks[1]) >= 2
    assert read_ensemble(ecsv) == marks
    assert curves.marked(tmp_path / "lightcurve_B_R.ecsv") is None  # not built: read


def test_final_curves_are_plotted_in_the_pool_given_for_the_plots(tmp_path):
    """``plots``: the plot is made there (it waits while that pool is held), the tables
    in ``pool``."""
    csv, png, gate = (tmp_path / n for n in ("lightcurve_A_V.csv", "lightcurve_A_V.png", "gate"))
    with (
        field_a_pipeline(tmp_path) as (pipeline, _add),
        ProcessPoolExecutor(1) as pool,
        ProcessPoolExecutor(1) as plots,
    ):
        pipeline.lightcurves.keep_rows()
        _batch_lights(pipeline.ledger, pipeline, np.random.default_rng(3), range(12))
        held = plots.submit(wait_for, str(gate))
        pipeline.update_curves(pool=pool, plots=plots)
        plot, tables = pipeline.lightcurves.writing  # lightcurve.CURVE_FILES
        tables.result()
        assert csv.exists() and not png.exists() and not held.done()
        gate.touch()
        pipeline.lightcurves.close()
        assert png.exists() and plot.done()


def test_final_curves_whose_files_cannot_be_written_are_logged(tmp_path, capfd):
    """A built curve whose files cannot be written is named in the log (by the pool's
    worker; ``close`` returns, the run goes on), and the other curves are written."""
    (tmp_path / "lightcurve_A_V.csv").mkdir()  # the CSV cannot replace a folder
    with field_a_pipeline(tmp_path) as (pipeline, add), ProcessPoolExecutor(1) as pool:
        for i in range(12):
            add(i)
        config, ledger = pipeline.config, pipeline.ledger
        pipeline.update_curves(pool=pool)
        pipeline.lightcurves.close()
        out = capfd.readouterr().out
        assert "lightcurve_not_written" in out and "object=A" in out
        assert not (tmp_path / "lightcurve_A_V.ecsv").exists()
        upto = ledger.last_reduction()
        *_, built = curves.rebuild_later(config, ledger.path, tmp_path, [("A", "V")], upto)
    (obj, _filt, lc) = built[0]
    curves.write_built(str(tmp_path), "", [*built, (obj, "R", lc)])  # V fails, R is written
    assert capfd.readouterr().out.count("lightcurve_not_written") == 1
    assert read_ensemble(tmp_path / "lightcurve_A_R.ecsv")[0] == 1


def reduce_night(night, outdir, jobs, *, script=""):
    """``reduxd reduce`` in a new process; ``script``: Python run first (instruments it)."""
    args = ["reduce", "-D", str(night / "pg2213"), "-C", str(night / "calibration"),
            "-O", str(outdir), "--jobs", str(jobs), "--level", "WARNING"]  # fmt: skip
    code = f"{script}\nfrom reduxd import cli\nraise SystemExit(cli.main({args!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=night.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# Run before reduxd: writing a light curve's tables (in a pool worker, forked later)
# waits up to WAIT s for a stack's finder chart to start, and says whether it had.
INSTRUMENT = """
import sys
import time
from pathlib import Path
from reduxd.products import lightcurve, stacks

FLAG, SAW, TAKEN, BUILT = Path({flag!r}), Path({saw!r}), Path({taken!r}), Path({built!r})
real_tables, real_finder = lightcurve._table_bytes, stacks.write_finder
real_take = stacks.EarlyRuns.take

def tables(lc):
    deadline = time.monotonic() + {wait}
    while not FLAG.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(SAW, "a") as fh:
        fh.write("yes\\n" if FLAG.exists() else "no\\n")
    return real_tables(lc)

def finder(*args, **kw):
    FLAG.touch()
    return real_finder(*args, **kw)

def take(self, items, versions):
    job = real_take(self, items, versions)
    with open(TAKEN, "a") as fh:
        fh.write(f"{{len(items)}}:{{'taken' if job is not None else 'sent'}}\\n")
    return job

real_built = lightcurve.write_built

def built(*args, parts, **kw):  # which files, and was matplotlib's Figure already loaded
    with open(BUILT, "a") as fh:
        fh.write(f"{{'+'.join(parts)}}:{{'matplotlib.figure' in sys.modules}}\\n")
    return real_built(*args, parts=parts, **kw)

lightcurve._table_bytes, stacks.write_finder = tables, finder
stacks.EarlyRuns.take = take
lightcurve.write_built = built
"""


@pytest.mark.slow
def test_finder_charts_are_drawn_while_the_curves_are_written_and_products_are_the_same(
    tmp_path,
):
    night = tmp_path / "night"
    simulate_night(night, NightSpec.small(n_lights=CHUNK + 1), workers=1)
    reduce_night(night, tmp_path / "one", 1)
    saw, taken, built = tmp_path / "saw", tmp_path / "taken", tmp_path / "built"
    script = INSTRUMENT.format(flag=str(tmp_path / "finder-started"), saw=str(saw), wait=WAIT,
                               taken=str(taken), built=str(built))  # fmt: skip
    reduce_night(night, tmp_path / "two", 2, script=script)

    assert saw.read_text().split() == ["yes", "yes"]  # V and R: written once a finder began
    # each filter's first run of CHUNK lights was stacked while the lights were reduced
    assert sorted(taken.read_text().split()) == ["1:sent"] * 2 + [f"{CHUNK}:taken"] * 2
    # the plots in the process forked at the end, matplotlib loaded; the tables in a worker
    assert sorted(built.read_text().split()) == ["plot:True"] * 2 + ["tables:False"] * 2
    one, two = tmp_path / "one", tmp_path / "two"
    curves = sorted(p.relative_to(one) for p in one.glob("*lightcurve*.*"))
    finders = sorted(p.relative_to(one) for p in one.glob("finder_*.png"))
    assert len(curves) == 6 and len(finders) == 2
    for rel in [*curves, *finders, *(p.relative_to(one) for p in (one / "stacks").glob("*.*"))]:
        if rel.suffix == ".fits":
            with fits.open(one / rel) as a, fits.open(two / rel) as b:
                for x, y in zip(a, b, strict=True):
                    assert x.data.tobytes() == y.data.tobytes(), rel
        else:
            assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
