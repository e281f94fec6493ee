"""``reduxd`` run as a program freezes its heap at the end (a quicker exit); ``main(argv)``
called from Python (tests, scripts) leaves the garbage collector alone."""

import gc
import subprocess
import sys

import pytest

from reduxd.cli import main

PROGRAM = (
    "import atexit, gc, sys\n"
    "from reduxd.cli import main\n"
    "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
    "sys.argv = ['reduxd', 'reduce', '-D', sys.argv[1], '-O', sys.argv[2]]\n"
    "sys.exit(main())\n"
)


def test_the_program_freezes_its_heap_before_exiting(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(empty), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # nothing to reduce: still frozen at the end
    assert "frozen True" in done.stdout


def test_main_called_with_arguments_does_not_freeze(capsys):
    before = gc.get_freeze_count()
    with pytest.raises(SystemExit):
        main(["reduce", "--version"])
    assert "reduxd" in capsys.readouterr().out
    assert gc.get_freeze_count() == before
