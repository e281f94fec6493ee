"""The photometry tables kept equal to the ledger's rows (the coordinator's side).

:mod:`reduxd.products.tables` writes the files; this module decides what goes in
them: a light's first rows are appended, a re-reduction rewrites both tables from
the ledger, and at start the tables are checked against the ledger
(:meth:`PhotTables.sync`).
"""

from reduxd.errors import OutputUnavailable, is_transient
from reduxd.log import get_logger
from reduxd.products import tables

log = get_logger("reduxd.pipeline")


class PhotTables:
    """The photometry tables of one output folder, fed from one ledger."""

    def __init__(self, outdir, *, ledger, save, durable):
        self.outdir = outdir
        self.ledger = ledger
        self.save = save
        self.durable = durable
        self.stale = False  # rows in the ledger missing from the tables (disk full)

    def add(self, rows, version, rel):
        """Write a committed light's rows (its first version appended, else all rewritten).

        Raises
        ------
        OutputUnavailable
            The disk refused the write; the tables are rewritten by :meth:`repair`.
        """
        try:
            if version == 1:
                tables.append_rows(self.outdir, rows, save=self.save, durable=self.durable)
            else:
                self.rewrite()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.stale = True  # the ledger has the rows
            raise OutputUnavailable(f"{rel}: photometry table: {exc}") from exc

    def repair(self):
        """Rewrite the tables if a write error left them behind the ledger."""
        if self.stale:
            self.sync()
            self.stale = False

    def rewrite(self):
        """Rewrite the photometry tables from the ledger (all versions, marked)."""
        tables.rewrite_rows(self.outdir, self.ledger_rows(), save=self.save)

    def sync(self):
        """At start: make the tables hold exactly the ledger's rows; return what was done.

        Rows the ledger does not know (a fresh or different ledger on an existing
        output folder) are never dropped: both tables are first renamed aside
        (logged with their new names). A torn last line is repaired by the rewrite.
        Returns None (in sync), ``"rewritten"`` or ``"set aside"``.
        """
        csv_path, ecsv_path = tables.table_paths(self.outdir, self.save)
        rows = self.ledger_rows()
        found = tables.read_keys(csv_path)
        if found is None:
            if rows:
                tables.rewrite_rows(self.outdir, rows, save=self.save)
            return "rewritten" if rows else None
        keys, n_rows, torn = found
        known = {tables.row_key(r) for r in rows}
        unknown = keys - known
        if unknown:
            aside = tables.set_aside([csv_path, ecsv_path])
            log.warning(
                "tables_set_aside",
                files=[str(p) for p in aside],
                reason=f"{len(unknown)} of {n_rows} rows of {csv_path} are not in the ledger "
                f"{self.ledger.path} (a new or different ledger?): kept under the new names",
            )
        elif keys == known and n_rows == len(rows) and not torn and self._current_ok(rows):
            return None
        else:
            log.warning(
                "tables_rewritten",
                file=str(csv_path),
                reason=f"{n_rows} rows{' and a torn last line' if torn else ''}; "
                f"the ledger has {len(rows)}",
            )
        tables.rewrite_rows(self.outdir, rows, save=self.save)
        return "set aside" if unknown else "rewritten"

    def _current_ok(self, rows):
        """The table of current rows exists whenever there are rows."""
        return not rows or tables.current_path(self.outdir, self.save).exists()

    def ledger_rows(self):
        return [
            {**m.row, "version": m.version, "current": int(not m.superseded)}
            for m in self.ledger.measurements(current_only=False)
        ]
