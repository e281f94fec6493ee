"""Make ``ledger_main_857cd46.sqlite``: a ledger with photometry rows, written by main 857cd46.

Run from outside the repository with that commit's reduxd on the path, e.g.
``git worktree add --detach /tmp/base 857cd46`` then, from /tmp,
``PYTHONPATH=/tmp/base .venv/bin/python tests/data/make_ledger_main_857cd46.py OUT``.
That version (schema 1) stores each photometry row as one JSON text
(``measurements``). Two fields: A in V (lights 1-3, light 2 reduced twice) and B
in R (light 4), rows shaped as a light's (:func:`light_rows`: values shared by
every row, float and int columns, float lists, NaN, infinities, -0.0, None,
text). ``tests/test_ledger_rows.py`` opens it with this version.
"""

import math
import sys


def light_rows(i, n, obj, filt, version=1):
    """The ``n`` rows of light ``i`` (the same for the same arguments)."""
    night, radii = "2025-06-01", [4.0, 2.0, 6.0]
    detector = [0.25, 4.0, "camera entry ZWO ASI432MM"]
    rows = []
    for k in range(n):
        x = 10.0 * k + i / 3.0 + version
        flux = [x * 100.0 + j / 7.0 for j in range(3)]
        rows.append({
            "night": night, "file": f"{obj}_{i:03d}.fits", "object": obj, "filter": filt,
            "exptime": 30.0, "date_obs": f"2025-06-02T01:0{i}:00", "mjd": 60828.0 + i / 1e3,
            "radius": 4.0, "pointing": None, "detector": detector, "radius_ap": radii,
            "x": x, "y": -0.0 if k == 0 else x / 2.0, "sky": math.nan if k == 1 else 100.5,
            "flux": math.inf if k == 2 else flux[0], "mag_inst": -2.5 * math.log10(x),
            "star_id": k + 1, "flags": 0 if k else 4, "flux_ap": flux,
            "note": None if k % 2 else "edge",
        })  # fmt: skip
    return rows


def main(out):
    from reduxd.store import Ledger

    with Ledger(out) as ledger:
        for i, (obj, filt) in enumerate([("A", "V"), ("A", "V"), ("A", "V"), ("B", "R")], 1):
            row = ledger.observe("/data", f"{obj}_{i:03d}.fits", size=100, mtime_ns=i)
            ledger.begin(row.id)
            ledger.add_measurements(row.id, light_rows(i, 5, obj, filt), calib="dark+flat",
                                    master_ids=[], fingerprint={"radius": 4.0})  # fmt: skip
            if i == 2:  # reduced again: version 2, version 1 superseded
                rows = light_rows(i, 4, obj, filt, version=2)
                ledger.add_measurements(row.id, rows, calib="bias+dark+flat", master_ids=[])
            info = {"object": obj, "filter": filt, "n_stars": 5}
            ledger.finish(row.id, kind="light", checksum=f"c{i}", night="2025-06-01", info=info)
        ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


if __name__ == "__main__":
    main(sys.argv[1])
