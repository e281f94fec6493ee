"""The garbage collector of the ``reduxd`` program: its long-lived objects are frozen.

The modules ``reduxd`` imports (numpy, astropy, scipy, matplotlib: about 140,000
objects) live as long as the process. Each full collection of the cyclic
garbage collector walks all of them (about 70 ms each time), in the main process
and in every worker forked from it, where it also writes to the inherited pages.
The program therefore imports with the collector off (:func:`program_start`) and
freezes what exists after its imports and before it forks workers
(:func:`settle`): collections then look at newer objects only (Python's recipe,
see :func:`gc.freeze`); it also collects its young objects less often
(:data:`YOUNG_THRESHOLD`). A garbage cycle left at that moment is kept, not freed:
:func:`settle` collects first, except after the imports (about 1,400 small
objects of garbage there; collecting them would cost 0.06 s, more than the
collector's pause saves).

A process that calls :func:`reduxd.cli.main` with arguments (the tests) keeps
its collector as it is: :func:`settle` does nothing there.
"""

import gc

_program = False
# Allocations between two collections of the youngest objects (Python's default: 700).
# A batch's coordinator holds big lists (rows, table text) for a moment at each light and
# a collection walks them: in a 142-light run about 200 collections took 0.14-0.18 s of its
# CPU at 700, 60-67 took 0.04-0.06 s at 10,000.
YOUNG_THRESHOLD = 10_000


def program_start():
    """Called once by the ``reduxd`` program before its imports: collector off until
    :func:`settle`."""
    global _program
    _program = True
    gc.disable()


def in_program():
    """Whether this process is the ``reduxd`` program (or a worker forked from it).

    Examples
    --------
    >>> in_program()  # a test, or a library user's process
    False
    """
    return _program


def settle(*, collect=True):
    """In the program: free the garbage cycles there are (``collect``), freeze every object
    left and turn the collector on; return whether it did (False outside the program).
    (Not the count of frozen objects: ``gc.get_freeze_count`` walks them, ~9 ms for 94,000.)

    Examples
    --------
    >>> settle()  # not the program: the collector is left alone
    False
    """
    if not _program:
        return False
    if collect:
        gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    gc.enable()
    return True
