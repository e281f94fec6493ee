"""Make ``ledger_main_6aa1e13.sqlite``: a ledger written by main's store.py (commit 6aa1e13).

Run with main's reduxd installed: ``python tests/data/make_ledger_main.py OUT.sqlite``.
It records frames the way main's pipeline did: a light waiting for a master and an
incomplete frame (both ``seen``, the reason only in ``last_error``), a retry and a
done light. ``tests/test_ledger_migration.py`` opens it with this version.
"""

import sys


def main(out):
    from reduxd.store import Ledger

    root = "/data"
    with Ledger(out) as ledger:
        waiting = ledger.observe(root, "m51/light_1.fits", size=100, mtime_ns=1)
        ledger.begin(waiting.id)
        ledger.defer(waiting.id, "waiting for calibration: no flat in V")
        incomplete = ledger.observe(root, "m51/light_2.fits", size=50, mtime_ns=2)
        ledger.fail(incomplete.id, "incomplete: 1440 of 2880 bytes", max_tries=10**9)
        retry = ledger.observe(root, "m51/light_3.fits", size=100, mtime_ns=3)
        ledger.begin(retry.id)
        ledger.fail(retry.id, "ValueError: boom", max_tries=3)
        done = ledger.observe(root, "m51/light_4.fits", size=100, mtime_ns=4)
        ledger.begin(done.id)
        info = {"object": "m51", "filter": "V", "n_stars": 3, "version": 1}
        ledger.finish(done.id, kind="light", checksum="c4", night="2025-06-01", info=info)
        ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


if __name__ == "__main__":
    main(sys.argv[1])
