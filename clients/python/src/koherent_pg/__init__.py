"""koherent-pg: attribute database writes to verified koherent tasks.

psycopg 3::

    with koherent_pg.task(conn, token) as conn:
        conn.execute("UPDATE item SET qty = 2 WHERE id = 1")

runs the block as one transaction under the task: ``BEGIN`` and ``koherent.set_task($1)`` go to
the server in one round trip (a pipeline), the token as a bind parameter (never in the query
text other sessions see in ``pg_stat_activity``). The transaction commits when the block ends
and rolls back when it raises; the connection is idle again afterwards, its ``autocommit``
setting as before (inside the block it is in autocommit mode with the transaction open, so
that ``conn.transaction()`` makes savepoints; do not call ``commit()`` there). A token the database refuses raises koherent's error (``psycopg.errors.
InvalidAuthorizationSpecification``, SQLSTATE 28000, or ``InvalidParameterValue``, 22023) before
the block runs, and nothing is written. ``atask`` is the same for ``psycopg.AsyncConnection``.

SQLAlchemy 2: see :mod:`koherent_pg.sqlalchemy`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator, Iterator, Mapping, Optional, TypeVar

import psycopg
from psycopg import IsolationLevel, pq
from psycopg.types.json import Jsonb

__all__ = ["task", "atask", "set_task_query", "TaskError"]
__version__ = "0.1.0"

C = TypeVar("C", bound=psycopg.Connection)
AC = TypeVar("AC", bound=psycopg.AsyncConnection)


class TaskError(psycopg.ProgrammingError):
    """koherent_pg was used where it cannot work (e.g. inside an open transaction)."""


def set_task_query(token: str, args: Optional[Mapping[str, Any]] = None) -> tuple[str, list[Any]]:
    """The statement and parameters that make `token` the transaction's task; with `args`, the
    task's arguments are checked against the token's args hash."""
    if not isinstance(token, str) or not token:
        raise TaskError("koherent_pg: the token must be a non-empty string")
    if args is None:
        return "SELECT koherent.set_task(%s)", [token]
    return "SELECT koherent.set_task(%s, %s)", [token, Jsonb(dict(args))]


def _check_idle(status: pq.TransactionStatus) -> None:
    if status != pq.TransactionStatus.IDLE:
        raise TaskError(
            "koherent_pg.task() runs its block as a transaction of its own: the connection is "
            f"already in one ({status.name}); commit or roll back first"
        )


def _begin_sql(conn: Any) -> str:
    """BEGIN with the connection's transaction characteristics."""
    parts = ["BEGIN"]
    if conn.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + IsolationLevel(conn.isolation_level).name.replace("_", " "))
    if conn.read_only is not None:
        parts.append("READ ONLY" if conn.read_only else "READ WRITE")
    if conn.deferrable is not None:
        parts.append("DEFERRABLE" if conn.deferrable else "NOT DEFERRABLE")
    return " ".join(parts)


_IDLE = pq.TransactionStatus.IDLE
_INERROR = pq.TransactionStatus.INERROR
_FAILED_INSIDE = "the transaction failed inside the koherent_pg.task() block (an error was caught there); it was rolled back"
_ENDED_INSIDE = "the transaction of the koherent_pg.task() block was ended inside it (commit() or rollback()); statements after that ran without the task"


@contextmanager
def task(conn: C, token: str, args: Optional[Mapping[str, Any]] = None) -> Iterator[C]:
    """Run the block as one transaction of `conn` under the task of `token` (see the module).

    Inside the block the connection is in autocommit mode with the transaction open: use
    ``conn.transaction()`` for savepoints, not ``commit()`` or ``rollback()``."""
    query, params = set_task_query(token, args)
    _check_idle(conn.info.transaction_status)
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        try:
            with conn.pipeline():  # one round trip: BEGIN, set_task, Sync
                conn.execute(_begin_sql(conn))
                conn.execute(query, params)
        except BaseException:
            if conn.info.transaction_status != _IDLE and not conn.closed:
                conn.execute("ROLLBACK")
            raise
        try:
            yield conn
        except BaseException:
            if conn.info.transaction_status != _IDLE and not conn.closed:
                conn.execute("ROLLBACK")
            raise
        status = conn.info.transaction_status
        if status == _INERROR:
            conn.execute("ROLLBACK")
            raise TaskError(_FAILED_INSIDE)
        if status == _IDLE:
            raise TaskError(_ENDED_INSIDE)
        conn.execute("COMMIT")
    finally:
        if not conn.closed and conn.info.transaction_status == _IDLE:
            conn.autocommit = autocommit


@asynccontextmanager
async def atask(aconn: AC, token: str, args: Optional[Mapping[str, Any]] = None) -> AsyncIterator[AC]:
    """`task` for an AsyncConnection."""
    query, params = set_task_query(token, args)
    _check_idle(aconn.info.transaction_status)
    autocommit = aconn.autocommit
    await aconn.set_autocommit(True)
    try:
        try:
            async with aconn.pipeline():
                await aconn.execute(_begin_sql(aconn))
                await aconn.execute(query, params)
        except BaseException:
            if aconn.info.transaction_status != _IDLE and not aconn.closed:
                await aconn.execute("ROLLBACK")
            raise
        try:
            yield aconn
        except BaseException:
            if aconn.info.transaction_status != _IDLE and not aconn.closed:
                await aconn.execute("ROLLBACK")
            raise
        status = aconn.info.transaction_status
        if status == _INERROR:
            await aconn.execute("ROLLBACK")
            raise TaskError(_FAILED_INSIDE)
        if status == _IDLE:
            raise TaskError(_ENDED_INSIDE)
        await aconn.execute("COMMIT")
    finally:
        if not aconn.closed and aconn.info.transaction_status == _IDLE:
            await aconn.set_autocommit(autocommit)
