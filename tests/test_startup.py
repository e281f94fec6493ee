"""What ``reduxd reduce`` imports before its first frame (on a batch's critical path)."""

import subprocess
import sys


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
