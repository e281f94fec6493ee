"""The photometry columns are defined once (reduxd/schema.py) and used everywhere."""

from pathlib import Path

from astropy.table import Table

from reduxd import schema
from reduxd.products import stacks, tables
from reduxd.steps.measure import describe

PACKAGE = Path(__file__).resolve().parents[1] / "reduxd"


def test_each_description_is_written_once():
    """No module but reduxd/schema.py spells a column's description (of 4 words or more:
    "exposure time" is also said elsewhere)."""
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "schema.py"}
    for col in [c for c in schema.PHOT_COLUMNS if len(c.description.split()) >= 4]:
        found = [p.name for p, text in sources.items() if f'"{col.description}"' in text]
        assert found == [], (col.name, found)


def test_users_take_the_schema():
    assert tables.PHOT_COLUMNS is schema.PHOT_COLUMNS
    assert stacks.STACK_PHOT_COLUMNS[5:-1] == schema.STAR_NAMES
    measured = describe(Table({"flux": [1.0], "star_id": [1]}))
    assert measured["flux"].description == schema.column("flux").description
    assert str(measured["flux"].unit) == schema.column("flux").unit
    assert measured["star_id"].description == schema.column("star_id").description
