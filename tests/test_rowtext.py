"""A light's rows as text (ledger JSON, table lines) and finder-chart labels: the
fast ways give exactly what the plain ways give."""

import json
import math

import numpy as np
import pytest

from reduxd import rowtext
from reduxd.products import _rowtext, labels, tables
from reduxd.schema import NAMES
from reduxd.store import _dumps


def light_rows(n=40, *, seed=0, file="pg2213_V/00_56_08/pg2213_00001.fits", filt="V"):
    """Rows as reduxd.reduce.contract_rows makes them: shared values are one object."""
    rng = np.random.default_rng(seed)
    base = {
        "night": "2024-07-01", "file": file, "object": "pg2213", "filter": filt,
        "exptime": 15.0, "date_obs": "2024-07-02T00:56:15.586", "mjd": 60493.03906929073,
        "calib": "dark+flat", "radius": 6.701088141738262, "pointing": None, "site": None,
        "site_source": "", "detector": [0.25, 4.0, "camera entry"],
        "radius_ap": [6.7011, 3.3505, 4.1882],
    }  # fmt: skip
    rows = []
    for i in range(n):
        star = {name: float(rng.normal(100, 300)) for name in NAMES[8:18]}
        star.update(star_id=i + 1, flags=int(rng.integers(0, 4)))
        star["flux_ap"] = rng.normal(1e5, 1e4, 3).tolist()
        star["flux_err_ap"] = rng.normal(1e2, 1e1, 3).tolist()
        rows.append({**base, **star})
    if n > 5:
        rows[1]["x"], rows[2]["flux"], rows[3]["mag_inst"] = math.nan, math.inf, -0.0
        rows[4]["flux_ap"][1], rows[5]["snr"] = -math.inf, 1e-7
    version = 2
    for r in rows:
        r["version"], r["current"] = version, 1
    return rows


@pytest.mark.parametrize(
    "kw", [{}, {"file": 'a b,"c%d".fits', "filt": ""}, {"n": 1}, {"file": "é ü.fits"}]
)
def test_json_rows_are_json_dumps_of_each_row(kw):
    rows = light_rows(**kw)
    assert rowtext.shared_prefix(rows) == 14 or len(rows) == 1
    assert rowtext.json_rows(rows, _dumps) == [_dumps(r) for r in rows]
    if len(rows) > 2:
        assert json.loads(rowtext.json_rows(rows, _dumps)[2])["flux"] == math.inf


def test_json_rows_of_rows_sharing_nothing_or_with_other_keys():
    rows = light_rows(5)
    rows[2] = {**rows[2], "file": "other.fits"}  # another object: not shared from there on
    rows[3] = dict(reversed(list(rows[3].items())))
    assert rowtext.json_rows(rows, _dumps) == [_dumps(r) for r in rows]
    assert rowtext.json_rows([], _dumps) == []


@pytest.mark.parametrize("delimiter", [",", " "])
@pytest.mark.parametrize("kw", [{}, {"file": 'a b,"c%d".fits', "filt": ""}, {"n": 1}])
def test_row_lines_are_the_csv_module_lines(delimiter, kw):
    rows = light_rows(**kw)
    expected = tables._lines(tables._fields(rows), delimiter)
    assert tables.row_lines(rows, delimiter) == expected
    rows[0] = {**rows[0], "star_id": np.int64(7)}  # not a plain int: that row the plain way
    assert tables.row_lines(rows, delimiter) == tables._lines(tables._fields(rows), delimiter)


@pytest.mark.parametrize(
    "kw", [{}, {"file": 'a b,"c%d".fits', "filt": ""}, {"file": "x%%y z.fits"}, {"n": 1}]
)
def test_row_line_pair_is_the_csv_and_ecsv_lines(kw):
    rows = light_rows(**kw)
    expected = tuple(tables._lines(tables._fields(rows), d) for d in (",", " "))
    assert tables.row_line_pair(rows) == expected
    rows[-1] = {**rows[-1], "calib": "bias"}  # own values on both sides of a shared one
    assert tables.row_line_pair(rows) == tuple(
        tables._lines(tables._fields(rows), d) for d in (",", " ")
    )


def test_rows_from_a_worker_share_their_equal_values():
    """A worker's rows come pickled: floats no longer one object. Equal values that are
    written alike still count as shared (one run of own values: the fast lines), and
    the lines are the csv module's."""
    import pickle

    rows = pickle.loads(pickle.dumps(light_rows(60)))
    assert rows[0]["exptime"] is not rows[1]["exptime"]
    assert rowtext.shared_value(rows, "exptime") and rowtext.shared_value(rows, "mjd")
    for r in rows[:30]:
        r["calib"] = "dark+flat"  # equal text, another object
    assert rowtext.shared_value(rows, "calib")
    expected = tuple(tables._lines(tables._fields(rows), d) for d in (",", " "))
    assert tables.row_line_pair(rows) == expected
    assert not rowtext.same_value([0.0, -0.0]) and not rowtext.same_value([math.nan, -math.nan])
    assert not rowtext.same_value([1, 1.0]) and not rowtext.same_value([True, 1])
    assert rowtext.same_value([None, None]) and not rowtext.same_value([])


@pytest.mark.parametrize(
    "column, values",
    [
        ("x", [1.5, None, 2.0]),  # None among floats: value by value
        ("flags", [1, True, 2]),  # a bool is not an int
        ("flux_ap", [[1.0, 2.0], [3.0], [4.0, 5.0]]),  # lists of other lengths
        ("flux_ap", [[1.0, math.nan], [1e300, 1e300], [-0.0, 2]]),  # an int in a list
        ("snr", [1e308, 1e308, -math.inf]),  # a sum that overflows, an infinity
        ("star_id", [np.int64(1), 2, 3]),
    ],
)
def test_json_rows_of_columns_of_mixed_values(column, values):
    rows = light_rows(3)
    for row, value in zip(rows, values, strict=True):
        row[column] = value
    assert rowtext.json_rows(rows, _dumps) == [_dumps(r) for r in rows]


def test_json_rows_with_options_that_change_the_text():
    rows = light_rows(8)
    strict = lambda v: json.dumps(v, allow_nan=False)  # noqa: E731
    with pytest.raises(ValueError):  # a NaN in the rows (light_rows puts one in x)
        rowtext.json_rows(rows, strict)
    for dumps in (
        lambda v: json.dumps(v, sort_keys=True, allow_nan=True),
        lambda v: json.dumps(v, separators=(",", ":")),
    ):
        assert rowtext.json_rows(rows, dumps) == [dumps(r) for r in rows]


def test_labels_of_a_crowded_chart_as_one_star_at_a_time():
    """660 stars on a 1300 x 1000 chart (the 650x500, 800-star night, enlarged twice):
    most stars have no free place at all."""
    rng = np.random.default_rng(12)
    stars = [(i, float(rng.uniform(0, 1300)), float(rng.uniform(0, 1000)), f"{i + 1} -13.{i:02d}")
             for i in range(660)]  # fmt: skip
    kw = dict(radius=21.0, char_width=8.4, height=16)
    got = labels.place_labels(stars, **kw)
    assert got == first_fit_loop(stars, **kw)
    assert 20 < len(got) < 330


def first_fit_loop(stars, *, radius, char_width, height):
    """The labels placed one star at a time, every pair looked at (the definition)."""
    cx = np.array([s[1] for s in stars], float)
    cy = np.array([s[2] for s in stars], float)
    widths = np.array([char_width * max(len(s[3]), 1) for s in stars], float)
    boxes = labels._candidates(cx, cy, widths, height, radius + 0.25 * height)
    out, placed = {}, []
    for i, (key, *_rest) in enumerate(stars):
        for box in boxes[i]:
            nx = np.clip(cx, box[0], box[2])
            ny = np.clip(cy, box[1], box[3])
            if ((nx - cx) ** 2 + (ny - cy) ** 2 < radius**2).any():
                continue
            if any(p[0] < box[2] and box[0] < p[2] and p[1] < box[3] and box[1] < p[3]
                   for p in placed):  # fmt: skip
                continue
            placed.append(box)
            out[key] = tuple(float(v) for v in box)
            break
    return out


@pytest.mark.parametrize("radius", [0.5, 7.0, 40.0, 300.0])
def test_labels_of_stars_on_grid_lines_as_one_star_at_a_time(radius):
    """Stars on whole and half pixels, many on the search grid's cell borders, in
    clumps and spread wide; circles small and larger than the labels."""
    rng = np.random.default_rng(int(radius * 10))
    xy = rng.integers(0, 60, (2, 300)) * rng.choice([0.5, 8.0, 25.0]) - 40.0
    stars = [(i, float(xy[0, i]), float(xy[1, i]), f"{i + 1}" * (1 + i % 3)) for i in range(300)]
    kw = dict(radius=radius, char_width=8.4, height=16)
    assert labels.place_labels(stars, **kw) == first_fit_loop(stars, **kw)


def test_labels_refuse_positions_that_are_not_finite():
    with pytest.raises(ValueError, match="finite"):
        labels.place_labels([(1, 5.0, float("nan"), "1")], radius=3, char_width=4, height=6)
    stars = [(1, 50.0, 50.0, "1"), (2, 58.0, 50.0, "2")]
    for radius in (float("nan"), float("inf")):  # no place is known to be free
        assert labels.place_labels(stars, radius=radius, char_width=4, height=6) == {}


@pytest.mark.parametrize("seed", range(6))
def test_labels_placed_by_the_grid_search_as_one_star_at_a_time(seed):
    rng = np.random.default_rng(seed)
    n, side = int(rng.integers(50, 400)), float(rng.uniform(150, 900))
    stars = [
        (i, float(rng.uniform(0, side)), float(rng.uniform(0, side * 0.7)),
         f"{i + 1} -12.{i % 100:02d}" if rng.random() < 0.7 else f"{i + 1}")
        for i in range(n)
    ]  # fmt: skip
    kw = dict(radius=float(rng.uniform(3, 20)), char_width=8.4, height=16)
    got = labels.place_labels(stars, **kw)
    assert got == first_fit_loop(stars, **kw)
    assert list(got) == sorted(got)  # in placing order
    assert 0 < len(got) < n


def test_compiled_row_text_is_what_percent_formatting_writes():
    # the kernel calls the function behind Python's "%": the same text for any value
    rng = np.random.default_rng(3)
    special = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e300, -1e-300, 5e-324, 0.5, 2.5,
               1234567.5, 0.0001234565, 9.9999995, -13.4380001]  # fmt: skip
    floats = np.r_[special, rng.normal(0, 1e4, 200), 10.0 ** rng.uniform(-12, 12, 200)]
    ints = rng.integers(-(2**62), 2**62, floats.size)
    ints[:3] = [0, -1, 2**63 - 1]
    specs = ["%d", "%.3f", "%.8f", "%.6g", "%d"]
    columns = [ints, floats, floats[::-1].copy(), floats * 3.3, ints // 7]
    out, codes, precisions = tables._kernel_columns(specs, columns)
    lists = [c.tolist() for c in columns]
    expected = "\n".join(",".join(specs) % row for row in zip(*lists, strict=True))
    assert _rowtext.format_rows(out, codes, precisions, ",") == expected
    assert _rowtext.format_rows([], b"", [], ",") == ""
