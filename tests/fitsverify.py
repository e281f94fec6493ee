"""Run the HEASARC ``fitsverify`` binary on a file and count its errors (test helper).

Tests call :func:`assert_valid`; when the binary is missing they skip with a
reason (install it with ``apt-get install fitsverify``).
"""

import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest

_SUMMARY = re.compile(r"Verification found (\d+) warning\(s\) and (\d+) error\(s\)")


@dataclass(frozen=True)
class Verification:
    warnings: int
    errors: int
    output: str


def run_fitsverify(path):
    """Return the warning and error counts of ``fitsverify path`` (skip if not installed).

    A fatal error (the file cannot even be opened) counts as one error.
    """
    binary = shutil.which("fitsverify")
    if binary is None:
        pytest.skip("fitsverify not installed (apt-get install fitsverify)")
    proc = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    match = _SUMMARY.search(output)
    if match is None:
        return Verification(warnings=0, errors=max(1, output.count("*** Error")), output=output)
    return Verification(warnings=int(match[1]), errors=int(match[2]), output=output)


def assert_valid(path):
    """Fail unless fitsverify reports 0 errors for ``path``."""
    result = run_fitsverify(path)
    assert result.errors == 0, (
        f"fitsverify found {result.errors} error(s) in {path}:\n" + (result.output[-3000:])
    )
    return result
