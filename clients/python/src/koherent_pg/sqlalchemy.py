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
the next transaction on the pooled connection. Two-phase transactions (``begin_twophase()``)
are attributed alike. An ``AsyncEngine`` is attributed through its ``sync_engine``.

A connection in ``isolation_level="AUTOCOMMIT"`` runs each statement as a transaction of its
own, which a task set at its "begin" would not reach: with a token set, beginning there raises
:class:`koherent_pg.TaskError` (nothing is written); use a transactional connection for work
under a task.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Optional

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from . import TaskError, set_task_query

__all__ = ["attribute", "current_token"]

current_token: ContextVar[Optional[str]] = ContextVar("koherent_token", default=None)


def attribute(engine: Engine, token_var: ContextVar[Optional[str]] = current_token) -> None:
    """Install the hook on `engine` (an Engine or an AsyncEngine; idempotent per engine and
    variable)."""
    engine = getattr(engine, "sync_engine", engine)
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
        if getattr(conn.connection.dbapi_connection, "autocommit", False):
            raise TaskError(
                "koherent_pg: this connection is in AUTOCOMMIT mode (isolation_level='AUTOCOMMIT'): "
                "each statement is a transaction of its own, which the task would not reach; "
                "run work under a task on a connection with transactions")
        conn.exec_driver_sql(query, tuple(params))

    event.listen(engine, "begin", _begin)

    # A two-phase transaction begins in the driver (tpc_begin) after its event, on an idle
    # connection: the task is set at its first statement, on the statement's cursor.
    pending = ("koherent_pg_twophase", id(token_var))

    def _begin_twophase(conn: Connection, xid: object) -> None:
        token = token_var.get()
        if token is not None:
            conn.info[pending] = (xid, token)

    def _first_statement(conn: Connection, cursor, statement, parameters, context, executemany) -> None:
        waiting = conn.info.pop(pending, None)
        if waiting is None or getattr(conn.get_transaction(), "xid", None) != waiting[0]:
            return
        query, params = set_task_query(waiting[1])
        cursor.execute(query, params)

    event.listen(engine, "begin_twophase", _begin_twophase)
    event.listen(engine, "before_cursor_execute", _first_statement)


