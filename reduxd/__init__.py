"""reduxd: live data reduction for small observatories."""

__version__ = "0.1.0"
