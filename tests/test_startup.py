"""What ``reduxd reduce`` imports before its first frame (on a batch's critical path)."""

import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

from reduxd.batch import early_pool
from reduxd.config import load_config
from reduxd.pipeline import Pipeline
from reduxd.simulate import NightSpec, simulate_night
from reduxd.store import Ledger


def _modules_after(code):
    script = f"import sys; {code}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_reduce_command_and_the_light_modules_do_not_import_photutils():
    # photutils (~0.4 s of imports) serves only fallbacks: apertures over non-finite
    # pixels, the radial fit's aperture weights, DAOStarFinder, the mesh sky
    code = (
        "import importlib, reduxd.cli, reduxd.batch; "
        "[importlib.import_module(m) for m in reduxd.batch.LATER_MODULES]"
    )
    assert "photutils" not in _modules_after(code)


def test_photutils_is_imported_when_a_fallback_needs_it():
    code = (
        "import numpy as np; from reduxd import phot_columns; "
        "phot_columns.aperture_sums(np.ones((9, 9)), [4.0], [4.0], 2.0)"
    )
    assert "photutils.aperture" in _modules_after(code)


def _cached_paths():
    from reduxd import reduce

    return sorted(path for path, _checksum in reduce._WORKER_CACHE._items)


def test_the_masters_pool_forks_at_once_and_the_lights_pool_inherits_its_masters(tmp_path):
    simulate_night(tmp_path / "night", NightSpec.small(), workers=1)
    config = load_config(None, {"paths": {"outdir": str(tmp_path / "out")}})
    with ProcessPoolExecutor(max_workers=2) as lights_pool, Ledger(tmp_path / "l.sqlite") as ledger:
        before = len(multiprocessing.active_children())
        with early_pool(lights_pool, 2) as masters_pool:
            # forked on entry: before the light path is imported in a thread beside it
            assert len(multiprocessing.active_children()) == before + 2
            pipeline = Pipeline(config, ledger=ledger, durable=False)
            for path in sorted((tmp_path / "night" / "calibration").rglob("*.fits")):
                assert pipeline.handle(path, tmp_path / "night").status == "ingested"
            pipeline.flush(pool=masters_pool)
        pipeline.cache.share_with_workers()  # as batch.run: the lights' pool forks after it
        cached = lights_pool.submit(_cached_paths).result()
        assert cached == sorted(m.path for m in ledger.masters())
    with early_pool(None, 2) as none, early_pool(ProcessPoolExecutor(1), 1) as one:
        assert none is None and one is None  # --jobs 1, Dask: no pool of its own
