"""Build reduxd's compiled kernels: every ``reduxd/**/*.pyx`` (Cython).

Everything else about the package is in pyproject.toml.
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import setup

KERNELS = sorted(str(p) for p in Path("reduxd").rglob("*.pyx"))

setup(ext_modules=cythonize(KERNELS, language_level=3, quiet=True) if KERNELS else [])
