"""What ``reduxd reduce`` imports before its first frame (on a batch's critical path)."""

import os
import subprocess
import sys

from reduxd import blas
from reduxd.products import tables


def _modules_after(code):
    script = f"import sys; {code}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_reduce_command_and_the_light_modules_do_not_import_photutils():
    # photutils (~0.4 s of imports) serves only fallbacks: apertures over non-finite
    # pixels, the radial fit's aperture weights, DAOStarFinder, the mesh sky
    code = (
        "import importlib, reduxd.cli, reduxd.batch; "
        "[m() if callable(m) else importlib.import_module(m) for m in reduxd.batch.LATER_MODULES]"
    )
    assert "photutils" not in _modules_after(code)


def test_the_reduce_command_imports_no_scipy_before_its_masters():
    # scipy (ndimage and spatial, ~0.25 s) serves the lights: imported while the masters
    # are combined, by workers forked before (reduxd.batch, executors.forked_now)
    modules = _modules_after("import reduxd.cli, reduxd.batch")
    assert not {m for m in modules if m.split(".")[0] == "scipy"}


def test_photutils_is_imported_when_a_fallback_needs_it():
    code = (
        "import numpy as np; from reduxd import phot_columns; "
        "phot_columns.aperture_sums(np.ones((9, 9)), [4.0], [4.0], 2.0)"
    )
    assert "photutils.aperture" in _modules_after(code)


def _blas_seen(env_value=None):
    """``OPENBLAS_NUM_THREADS`` and the thread count of a process that imported the
    command line and then numpy, with the variable unset or set to ``env_value``."""
    env = {k: v for k, v in os.environ.items() if k != blas.THREADS_VARIABLE}
    if env_value is not None:
        env[blas.THREADS_VARIABLE] = env_value
    script = (
        "import os, reduxd.cli, numpy; "
        f"print(os.environ[{blas.THREADS_VARIABLE!r}], len(os.listdir('/proc/self/task')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    value, threads = out.stdout.split()
    return value, int(threads)


def test_the_command_line_loads_numpy_with_one_blas_thread():
    # OpenBLAS starts a spinning thread per core when numpy loads: the variable must be
    # set before that, i.e. by the command line's first imports (reduxd.blas)
    assert _blas_seen() == ("1", 1)


def test_an_admins_blas_threads_are_kept():
    value, threads = _blas_seen("2")
    assert value == "2"
    assert threads == (2 if (os.cpu_count() or 1) >= 2 else 1)


def test_the_program_reads_astropys_card_settings_once():
    # as the reduxd program: heap.program_start() before the command's modules import
    script = (
        "from reduxd import heap; heap.program_start(); "
        "from reduxd import fitsio; from astropy.io.fits import card; "
        "print(type(card.conf).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["SettledConf"]
    # a library user's (or a test's) process keeps astropy's own lookups
    script = script.split("; ", 2)[2]  # no program_start
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Conf"]


def test_preload_calls_the_functions_it_is_given_and_imports_the_modules():
    from reduxd.batch import TAIL_PRELOAD, Preload

    called = []
    sys.modules.pop("tabnanny", None)
    Preload((lambda: called.append(1), "tabnanny")).join()
    assert called == [1] and "tabnanny" in sys.modules
    assert TAIL_PRELOAD[0] is tables.ecsv_header  # made while the first light is measured
