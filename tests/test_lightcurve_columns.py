"""Column-wise statistics of the light curve's ensemble choice, against numpy column by column."""

import math

import numpy as np
import pytest

from reduxd.products.lightcurve import _p2p_columns, column_medians, p2p_scatter


def median_per_column(values, use):
    """The code column_medians replaced: np.median of each column's used values."""
    return np.array(
        [np.median(values[use[:, j], j]) if use[:, j].any() else np.nan
         for j in range(use.shape[1])]
    )  # fmt: skip


def p2p_one_column(values):
    """The code p2p_scatter was: 1.4826 x MAD of successive differences / sqrt(2)."""
    values = values[np.isfinite(values)]
    if values.size < 3:
        return math.nan
    diff = np.diff(values)
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / math.sqrt(2.0))


def random_columns(rng, trial):
    nf, ns = int(rng.integers(0, 12)), int(rng.integers(1, 7))
    values = rng.normal(size=(nf, ns)) * 10.0 ** rng.integers(-5, 5, size=(nf, ns))
    if nf and trial % 3 == 0:
        values[rng.integers(0, nf), rng.integers(0, ns)] = rng.choice([np.nan, np.inf, -np.inf])
    if nf and trial % 5 == 0:
        values[:, 0] = values[0, 0]  # ties
    return values, rng.random((nf, ns)) < 0.7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_column_medians_are_numpys_median_of_each_column(seed):
    rng = np.random.default_rng(seed)
    for trial in range(1500):
        values, use = random_columns(rng, trial)
        expected = median_per_column(values, use)
        got = column_medians(values, use)
        assert np.array_equal(got, expected, equal_nan=True), (values, use)


@pytest.mark.parametrize("seed", [3, 4])
def test_p2p_of_all_columns_is_each_columns(seed):
    rng = np.random.default_rng(seed)
    for trial in range(1500):
        values, holes = random_columns(rng, trial)
        values[~holes] = np.nan  # missing frames
        expected = [p2p_one_column(values[:, k]) for k in range(values.shape[1])]
        assert np.array_equal(_p2p_columns(values), expected, equal_nan=True), values
        first = p2p_scatter(values[:, 0])
        assert first == expected[0] or (math.isnan(first) and math.isnan(expected[0]))
