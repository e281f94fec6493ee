"""A light's rows as columns (reduxd.lightrows): every reader gets from them exactly what
it got from the list of dicts a worker sent before (pickled: shared text and lists one
object, floats copies), and the same dicts where it still reads dicts."""

import math
import pickle
from datetime import UTC, datetime

import numpy as np
import pytest
from astropy.table import Table

from reduxd import curves
from reduxd.fields import merge_new_stars
from reduxd.frames import FrameInfo
from reduxd.lightrows import LightRows, columns_fit, same_column, stamped
from reduxd.products import lightcurve, tables
from reduxd.reduce import contract_rows
from reduxd.rowblob import decode_rows, encode_rows
from reduxd.schema import STAR_NAMES, column
from reduxd.steps.match import FieldReference
from reduxd.store import _dumps


def _info(*, exptime, date_mid):
    return FrameInfo("a.fits", "light", "default", "V", exptime, 150.0, None, (1, 1), (10, 10),
                     None, None, "cam", None, None, date_mid, date_mid)  # fmt: skip


def star_table(n, *, seed=0, flags=None, fixed=()):
    """A photometry step's star table: the schema's columns, some odd values; ``fixed``:
    ``(name, value)`` of columns of one value."""
    rng = np.random.default_rng(seed)
    table = Table()
    for name in STAR_NAMES:
        if column(name).dtype == "i8":
            table[name] = np.arange(1, n + 1) if name == "star_id" else rng.integers(0, 4, n)
        else:
            table[name] = rng.normal(100, 300, n)
    if flags is not None:
        table["flags"] = flags
    for name, value in fixed:
        table[name] = np.full(n, value)
    if n > 5:
        table["x"][1], table["flux"][2], table["mag_inst"][3] = math.nan, math.inf, -0.0
        table["snr"][4] = 1e-7
    return table


def apertures(n, k=3, seed=1):
    rng = np.random.default_rng(seed)
    return {"radii": [6.70108, 3.35, 4.19][:k], "flux": rng.normal(1e5, 1e4, (n, k)),
            "flux_err": rng.normal(1e2, 1e1, (n, k))}  # fmt: skip


def rows_of(table, *, aps=True, exptime=15.0, place=None, relpath="pg2213_V/a_0001.fits"):
    mid = datetime(2024, 7, 2, 0, 56, 15, 586000, tzinfo=UTC)
    info = _info(exptime=exptime, date_mid=mid)
    place = {"pointing": None, "site": None, "site_source": "",
             "detector": [0.25, 4.0, "camera entry"]} if place is None else place  # fmt: skip
    return contract_rows(
        table, info=info, night="2024-07-01", relpath=relpath, obj="pg2213",
        calib="dark+flat", radius=6.701088141738262,
        apertures=apertures(len(table)) if aps else None, place=place,
    )  # fmt: skip


def old_rows(table, **kw):
    """The rows as contract_rows made them before (dicts), built from the columns."""
    rows = rows_of(table, **kw)
    base = dict(rows.shared)
    names = list(rows.columns)
    out = []
    for values in zip(*(rows.columns[k].tolist() for k in names), strict=True):
        row = base.copy()
        row.update(zip(names, values, strict=True))
        out.append(row)
    return out


def texts(rows):
    """Each row's keys and values as text (NaN equal to NaN, -0.0 not 0.0)."""
    return [repr(list(r.items())) for r in rows]


def sent(rows):
    """The rows as the coordinator got them from a worker (pickled)."""
    return pickle.loads(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))


CASES = {
    "plain": {},
    "flags all 0": {"flags": np.zeros(40, dtype=np.int64)},
    "no apertures": {"aps": False},
    "columns of one value": {"fixed": (("sky", 0.0), ("sky_err", 2.5), ("fwhm", math.nan))},
}


@pytest.mark.parametrize("case", list(CASES))
def test_contract_rows_are_columns_and_read_as_the_dicts(case):
    kw = dict(CASES[case])
    table = star_table(40, flags=kw.pop("flags", None), fixed=kw.pop("fixed", ()))
    rows = rows_of(table, **kw)
    assert isinstance(rows, LightRows)
    dicts = old_rows(table, **kw)
    assert texts(rows) == texts(dicts)  # values, types and key order
    assert texts([rows[3], rows[-1]]) == texts([dicts[3], dicts[-1]])
    got = sent(rows)
    assert isinstance(got, LightRows) and texts(got.dicts()) == texts(dicts)
    assert got[0]["detector"] is got[5]["detector"]  # one object, as pickled dicts had


@pytest.mark.parametrize("case", list(CASES))
def test_the_ledger_record_of_columns_is_the_dicts_record(case):
    kw = dict(CASES[case])
    table = star_table(40, flags=kw.pop("flags", None), fixed=kw.pop("fixed", ()))
    record = encode_rows(sent(rows_of(table, **kw)), _dumps)
    assert record == encode_rows(sent(old_rows(table, **kw)), _dumps)
    assert record == encode_rows(old_rows(table, **kw), _dumps)  # reduced in this process
    assert texts(decode_rows(record)) == texts(old_rows(table, **kw))


def test_table_lines_of_columns_are_the_dicts_lines():
    for flags in (None, np.zeros(40, dtype=np.int64)):
        table = star_table(40, flags=flags, fixed=(("sky_err", 2.5),))
        light = stamped(sent(rows_of(table)), 1)
        dicts = stamped(sent(old_rows(table)), 1)
        assert tables.row_line_pair(light) == tables.row_line_pair(dicts)
    table = star_table(40)
    table["y"][7] = -math.inf  # no % spec: the plain way
    assert tables.row_line_pair(stamped(rows_of(table), 2)) == tables.row_line_pair(
        stamped(old_rows(table), 2)
    )


def test_new_stars_get_the_same_ids_from_columns():
    table = star_table(12)
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    x[1] = 5.0  # no NaN position in a reference
    base = FieldReference.empty().extend(x[:10], y[:10], np.ones(10))  # reduced against this
    found = base.extend(x[10:], y[10:], np.ones(2))  # it found stars 11 and 12
    current = base.extend([x[11], 900.0], [y[11], 900.0], [1.0, 1.0])  # another light's
    rows, ref = merge_new_stars(current, base, found, rows_of(table), radius=3.0)
    dicts, ref2 = merge_new_stars(current, base, found, old_rows(table), radius=3.0)
    assert isinstance(rows, LightRows) and texts(rows) == texts(dicts)
    assert [r["star_id"] for r in rows][10:] == [13, 11]  # new, and the other light's
    assert ref.to_dict() == ref2.to_dict()


def light_set():
    """Lights of one field as a batch keeps them: with and without a target position,
    apertures of other widths, other detectors, a site."""
    site = {"pointing": [330.0, 5.1], "site": [39.25, -76.7, 80.0], "site_source": "header",
            "detector": [0.3, 3.0, "flats"]}  # fmt: skip
    return [
        (star_table(30, seed=1), {}),
        (star_table(25, seed=2), {"place": {**site, "target_xy": [12.5, 40.25]}}),
        (star_table(20, seed=3), {"place": {**site, "target_xy": None}}),
        (star_table(22, seed=4), {"relpath": "pg2213_V/a_much_longer_name_0004.fits"}),
    ]


def assert_same_table(a, b):
    assert a.colnames == b.colnames
    assert a.meta == b.meta
    for name in a.colnames:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype, name
        assert (x.unit, x.description, x.format) == (y.unit, y.description, y.format)
        if x.dtype.kind == "f":
            assert np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True), name
        else:
            assert np.array_equal(np.asarray(x), np.asarray(y)), name


@pytest.mark.parametrize("pick", [[0], [0, 1], [1, 2], [0, 1, 2, 3], [3, 0]])
def test_a_part_of_kept_lights_is_the_part_of_their_dicts(pick):
    lights = [light_set()[i] for i in pick]
    columns = lightcurve.CURVE_COLUMNS
    part = curves.light_part([stamped(sent(rows_of(t, **kw)), 1) for t, kw in lights], columns)
    dicts = [r for t, kw in lights for r in stamped(sent(old_rows(t, **kw)), 1)]
    assert_same_table(part, curves.table_part(dicts, columns))


def test_lights_of_other_aperture_counts_make_the_same_part():
    a = rows_of(star_table(10))
    b = contract_rows(
        star_table(8), info=_info(exptime=15.0, date_mid=datetime(2024, 7, 2, tzinfo=UTC)),
        night="2024-07-01", relpath="b.fits", obj="pg2213", calib="none", radius=3.0,
        apertures=apertures(8, k=2), place={"pointing": None, "site": None, "site_source": ""},
    )  # fmt: skip
    assert isinstance(b, LightRows)
    columns = lightcurve.CURVE_COLUMNS
    assert_same_table(curves.light_part([a, b], columns), curves.table_part([*a, *b], columns))


def test_kept_rows_give_the_table_of_the_dicts():
    kept, plain = curves.KeptRows(chunk=50), curves.KeptRows(chunk=50)
    for frame, (table, kw) in enumerate(light_set(), start=1):
        kept.add("f", stamped(sent(rows_of(table, **kw)), 1), 1, frame)
        plain.add("f", list(stamped(sent(old_rows(table, **kw)), 1)), 1, frame)
    found = [(f, 1) for f in range(1, 5)]
    assert_same_table(kept.table("f", found), plain.table("f", found))


def test_rows_that_do_not_fit_columns_stay_dicts():
    table = star_table(10)
    info = _info(exptime=15.0, date_mid=None)  # no time: MJD NaN, shared (not the same bits)
    rows = contract_rows(table, info=info, night="n", relpath="a.fits", obj="o", calib="none",
                         radius=3.0)  # fmt: skip
    assert type(rows) is list and math.isnan(rows[0]["mjd"])
    assert type(rows_of(star_table(1))) is list  # one row
    assert type(rows_of(star_table(10), exptime=0.0)) is list
    assert not columns_fit({"a": np.float64(2.0)}, {"x": np.zeros(3)})
    assert not columns_fit({}, {"x": np.zeros(3, dtype=np.float32)})
    assert not columns_fit({}, {"x": np.zeros((3, 0))})
    assert columns_fit({"a": 2.0, "b": [1], "c": None}, {"x": np.zeros(3)})


def test_same_column_is_same_value_of_the_python_values():
    from reduxd.rowtext import same_value

    for values in ([2, 2, 2], [1, 2], [0.0, 0.0], [-0.0, -0.0], [1.5, 1.5], [math.nan] * 2,
                   [math.inf] * 2, [1.5, 1.5, 2.0]):  # fmt: skip
        array = np.array(values)
        assert same_column(array) == same_value(array.tolist()), values
