"""Make ``ledger_main_f55142a.sqlite``: a ledger written by main's store.py (commit f55142a).

Run with main's reduxd on the path:
``PYTHONPATH=/work/main /work/main/.venv/bin/python tests/data/make_ledger_main_f55142a.py OUT``.
That version keeps a waiting light and an incomplete frame as ``seen`` with the
typed column ``frames.wait``; it also records a retry, a done light with its
metadata and an excluded light. ``tests/test_ledger_migration.py`` opens it with
this version, which makes ``waiting`` and ``incomplete`` states of their own.
"""

import sys


def main(out):
    from reduxd.store import Ledger

    root = "/data"
    with Ledger(out) as ledger:
        waiting = ledger.observe(root, "m51/light_1.fits", size=100, mtime_ns=1)
        ledger.begin(waiting.id)
        ledger.defer(waiting.id, "waiting for calibration: no flat in V", wait="calibration")
        incomplete = ledger.observe(root, "m51/light_2.fits", size=50, mtime_ns=2)
        ledger.fail(
            incomplete.id, "incomplete: 1440 of 2880 bytes", max_tries=10**9, wait="incomplete"
        )
        retry = ledger.observe(root, "m51/light_3.fits", size=100, mtime_ns=3)
        ledger.begin(retry.id)
        ledger.fail(retry.id, "ValueError: boom", max_tries=3)
        done = ledger.observe(root, "m51/light_4.fits", size=100, mtime_ns=4)
        ledger.begin(done.id)
        info = {"object": "m51", "filter": "V", "exptime": 30.0, "n_stars": 3, "master_id": None}
        ledger.finish(done.id, kind="light", checksum="c4", night="2025-06-01", info=info)
        excluded = ledger.observe(root, "m51/light_5.fits", size=100, mtime_ns=5)
        ledger.begin(excluded.id)
        ledger.exclude(
            excluded.id, checksum="c5", night="2025-06-01", info={"excluded": "filter R"}
        )
        ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


if __name__ == "__main__":
    main(sys.argv[1])
