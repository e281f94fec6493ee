"""The light-curve plot is drawn once and has the bytes ``savefig`` wrote (issue 12)."""

import io

import pytest
from test_lightcurve import make_rows

from reduxd.products import lightcurve as lcmod
from reduxd.products.tables import rows_to_table


def savefig_png(lc, *, title=""):
    """The plot as it was written before: its figure saved by ``savefig``."""
    buf = io.BytesIO()
    lcmod.lightcurve_figure(lc, title=title).savefig(buf, format="png", dpi=100)
    return buf.getvalue()


@pytest.fixture(scope="module")
def table():
    return rows_to_table(make_rows())


def curves(table):
    """Light curves of every shape the plot has: target and check stars (some target points
    flagged), target only, check stars only, neither."""
    with_flags = lcmod.build_lightcurve(table, target=[1.0], per_star=False)
    with_flags["flags"][[3, 7, 8]] = 4
    return {
        "target and checks": lcmod.build_lightcurve(table, target=[1.0], per_star=False),
        "flagged target points": with_flags,
        "target, one comparison": lcmod.build_lightcurve(
            table, target=[1.0], comparisons=[[2]], per_star=False
        ),
        "checks only": lcmod.build_lightcurve(table, comparisons=[[2], [3], [5]], per_star=False),
        "neither": lcmod.build_lightcurve(table, comparisons=[[2]], per_star=False),
    }


@pytest.mark.parametrize("title", ["M 31  V", ""])
def test_plot_has_the_bytes_savefig_wrote(table, title):
    for name, lc in curves(table).items():
        assert lcmod.plot_lightcurve(lc, title=title) == savefig_png(lc, title=title), name


def test_plot_is_drawn_once(table, monkeypatch):
    """``savefig`` drew a constrained-layout figure twice (a dry draw to lay it out)."""
    from matplotlib.figure import Figure

    draws = []
    draw = Figure.draw

    def counted(self, renderer):
        draws.append(renderer)
        return draw(self, renderer)

    monkeypatch.setattr(Figure, "draw", counted)
    lcmod.plot_lightcurve(curves(table)["target and checks"], title="M 31  V")
    assert len(draws) == 1
