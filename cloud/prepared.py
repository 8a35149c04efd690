"""Statements compiled once per dialect and run on the DB-API cursor of a SQLAlchemy connection.

The lookup path runs three statements per request; SQLAlchemy's per-execution work (cache key,
parameter processing, result objects) cost more than SQLite itself. A `Prepared` statement keeps
SQLAlchemy for what it is good at (writing the SQL for each dialect, the pool, the transaction)
and hands the driver the finished SQL string, so psycopg can also prepare it server-side.
Only for statements whose parameters and results need no type processing (strings, floats,
bytes).
"""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import Connection
from sqlalchemy.sql import ClauseElement


class Prepared:
    def __init__(self, statement: ClauseElement | Callable[[str], ClauseElement]):
        """`statement`, or a function of the dialect name that makes it (for dialect constructs)."""
        self.statement = statement
        self._by_dialect: dict[str, tuple[str, dict, tuple | None]] = {}

    def _compiled(self, conn: Connection) -> tuple[str, dict, tuple | None]:
        name = conn.dialect.name
        hit = self._by_dialect.get(name)
        if hit is None:
            stmt = self.statement if isinstance(self.statement, ClauseElement) else self.statement(name)
            c = stmt.compile(dialect=conn.dialect)
            order = tuple(c.positiontup) if c.positional else None
            hit = self._by_dialect[name] = (c.string, dict(c.construct_params(_check=False)), order)
        return hit

    def run(self, conn: Connection, **params: Any):
        """Execute with `params` (named as the statement's bind parameters); returns the cursor."""
        sql, defaults, order = self._compiled(conn)
        values = {**defaults, **params}
        cur = conn.connection.dbapi_connection.cursor()
        cur.execute(sql, tuple(values[k] for k in order) if order is not None else values)
        return cur

    def first(self, conn: Connection, **params: Any) -> tuple | None:
        cur = self.run(conn, **params)
        try:
            return cur.fetchone()
        finally:
            cur.close()
