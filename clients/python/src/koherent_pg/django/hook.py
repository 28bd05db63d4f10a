"""The execute wrapper that puts each transaction under the current token (see the package).

The wrapper remembers which (token, organization, user) it set in the open transaction, so that
it calls set_task once per transaction, not once per statement. The server's state follows
savepoints (``ROLLBACK TO SAVEPOINT`` undoes a ``set_task`` made after the savepoint), so the
remembered state does too: each savepoint keeps the state it was made under, and rolling back
to it restores that state. COPY through Django's cursor (``cursor.copy()``, which bypasses
execute wrappers) is put under the task the same way.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import psycopg
from django.db import transaction
from psycopg import pq

from .. import set_task_query
from . import current_identity, current_token

# the savepoint statements Django writes (ops.savepoint_*_sql), and the same written by hand
_SAVEPOINT = re.compile(r"\s*(SAVEPOINT|RELEASE(?:\s+SAVEPOINT)?|ROLLBACK\s+TO(?:\s+SAVEPOINT)?)\s+(\S+?)\s*;?\s*$",
                        re.I | re.S)


def install(sender: Any, connection: Any, **kwargs: Any) -> None:
    """connection_created: add the wrapper to PostgreSQL connections (once each)."""
    if connection.vendor != "postgresql" or getattr(connection, "_koherent_pg", False):
        return
    connection._koherent_pg = True
    connection.execute_wrappers.append(_Wrapper(connection))
    create_cursor = connection.create_cursor

    def create_cursor_with_copy(name: Any = None) -> Any:
        cursor = create_cursor(name)
        copy = getattr(cursor, "copy", None)
        if copy is not None:  # psycopg 3
            cursor.copy = lambda statement, params=None, **kw: _copy(connection, copy, statement, params, **kw)
        return cursor

    connection.create_cursor = create_cursor_with_copy


def _state() -> tuple:
    org, user = current_identity.get()
    return (current_token.get(), org, user)


def _forget_if_idle(conn: Any) -> None:
    raw = conn.connection
    if raw is None or raw.info.transaction_status == pq.TransactionStatus.IDLE:
        conn._koherent_pg_task = None       # the transaction the token was set in has ended
        conn._koherent_pg_savepoints = []


def _follow_savepoint(conn: Any, sql: Any) -> None:
    """Keep the remembered state as the server keeps its own across savepoints."""
    m = _SAVEPOINT.match(sql) if isinstance(sql, str) else None
    if m is None:
        return
    verb, name = m.group(1).split()[0].upper(), m.group(2)
    marks = conn.__dict__.setdefault("_koherent_pg_savepoints", [])
    at = next((i for i in range(len(marks) - 1, -1, -1) if marks[i][0] == name), None)
    if verb == "SAVEPOINT":
        marks.append((name, getattr(conn, "_koherent_pg_task", None)))
    elif at is not None and verb == "ROLLBACK":
        # back to what the savepoint was made under (the savepoint stays)
        conn._koherent_pg_task = marks[at][1]
        del marks[at + 1:]
    elif at is not None:  # RELEASE: the savepoint and those after it go, their state stays
        del marks[at:]


class _Wrapper:
    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def __call__(self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any) -> Any:
        conn = self.connection
        state = _state()
        _forget_if_idle(conn)
        if state == (None, None, None) or _is_savepoint(sql):
            # (a savepoint statement runs as it is: one made, released or rolled back to under
            # another state than the current one must not set this one first)
            result = execute(sql, params, many, context)
            _follow_savepoint(conn, sql)
            return result
        if conn.get_autocommit():
            # a statement outside any transaction: give it one, under the task
            with transaction.atomic(using=conn.alias):
                _begin(conn, *state)
                conn._koherent_pg_task = state
                return execute(sql, params, many, context)
        _ensure(conn, state)
        return execute(sql, params, many, context)


def _is_savepoint(sql: Any) -> bool:
    return isinstance(sql, str) and _SAVEPOINT.match(sql) is not None


def _ensure(conn: Any, state: tuple) -> None:
    """In an open transaction: set the state unless this transaction already runs under it."""
    if getattr(conn, "_koherent_pg_task", None) != state:
        # the transaction's first statement under this token: psycopg begins the transaction
        # with set_task when it is idle; a transaction begun before the token was set (an
        # atomic block opened before the middleware ran) gets it now, or fails clearly if it
        # already wrote under no task or another one
        _begin(conn, *state)
        conn._koherent_pg_task = state


@contextmanager
def _copy(conn: Any, copy: Callable[..., Any], statement: Any, params: Any = None, **kw: Any) -> Iterator[Any]:
    """cursor.copy() under the current task: in the open transaction, or (autocommit) in a
    transaction of its own around the COPY block."""
    state = _state()
    _forget_if_idle(conn)
    if state == (None, None, None):
        with conn.wrap_database_errors, copy(statement, params, **kw) as c:
            yield c
        return
    if conn.get_autocommit():
        with transaction.atomic(using=conn.alias):
            _begin(conn, *state)
            conn._koherent_pg_task = state
            with conn.wrap_database_errors, copy(statement, params, **kw) as c:
                yield c
        return
    _ensure(conn, state)
    with conn.wrap_database_errors, copy(statement, params, **kw) as c:
        yield c


def _begin(conn: Any, token: Any, org: Any, user: Any) -> None:
    """The request's organization and user (transaction-local settings), then its task."""
    settings = [(k, v) for k, v in (("koherent.organization", org), ("koherent.app_user", user)) if v is not None]
    if settings:
        with conn.wrap_database_errors:
            with psycopg.Cursor(conn.connection) as cur:
                cur.execute("SELECT " + ", ".join("pg_catalog.set_config(%s, %s, true)" for _ in settings),
                            [x for kv in settings for x in kv])
    if token is not None:
        _set_task(conn, token)


def _set_task(conn: Any, token: str) -> None:
    """set_task on the raw psycopg connection, with server-side binding (Django's own cursors
    bind on the client: the token would be in the query text other sessions can see)."""
    query, params = set_task_query(token)
    with conn.wrap_database_errors:
        with psycopg.Cursor(conn.connection) as cur:
            cur.execute(query, params)
