"""SQLAlchemy 2: every transaction begun while a token is set runs under its task.

::

    from koherent_pg.sqlalchemy import attribute, current_token

    engine = create_engine("postgresql+psycopg://...")
    attribute(engine)                      # once

    token_reset = current_token.set(token)  # once per task run (a contextvar: per thread / task)
    with engine.begin() as conn:            # or a Session: same engine
        conn.execute(...)

At the start of each transaction of the engine (its ``begin`` event, on the connection the
transaction uses), the hook calls ``koherent.set_task($1)`` with the token in
``current_token`` (or the ContextVar given to :func:`attribute`), as a bind parameter. With no
token set, it does nothing: the writes are unattributed, as without the hook (or refused on
``require_task`` tables). A token the database refuses raises at the transaction's start,
before anything is written. The task belongs to that one transaction: nothing carries over to
the next transaction on the pooled connection.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Optional

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from . import set_task_query

__all__ = ["attribute", "current_token"]

current_token: ContextVar[Optional[str]] = ContextVar("koherent_token", default=None)


def attribute(engine: Engine, token_var: ContextVar[Optional[str]] = current_token) -> None:
    """Install the hook on `engine` (idempotent per engine and variable)."""
    key = ("koherent_pg", id(token_var))
    marks = engine.__dict__.setdefault("_koherent_pg_hooks", set())
    if key in marks:
        return
    marks.add(key)

    def _begin(conn: Connection) -> None:
        token = token_var.get()
        if token is None:
            return
        query, params = set_task_query(token)
        conn.exec_driver_sql(query, tuple(params))

    event.listen(engine, "begin", _begin)


