"""The BLAS thread pool of the ``reduxd`` program: one thread per process.

numpy's OpenBLAS starts a thread per core when it loads, and after each call its
threads spin, waiting for more work. reduxd's work is not matrix algebra, and it
runs its own processes (``--jobs``): those threads only take CPU from them (on
the 2-core benchmark VM, ``import reduxd.cli, reduxd.batch`` took 0.88-1.13 s of
wall time and 1.04-1.30 s of CPU with them, 0.78-0.79 s and 0.70-0.74 s
without). Importing this module before numpy sets ``OPENBLAS_NUM_THREADS`` to 1
unless it is set already (an admin's own choice is kept); worker processes
inherit it. The command line imports it first (:mod:`reduxd.cli`).
"""

import os

THREADS_VARIABLE = "OPENBLAS_NUM_THREADS"

os.environ.setdefault(THREADS_VARIABLE, "1")
