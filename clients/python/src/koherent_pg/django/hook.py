"""The execute wrapper that puts each transaction under the current token (see the package)."""

from __future__ import annotations

from typing import Any, Callable

import psycopg
from django.db import transaction
from psycopg import pq

from .. import set_task_query
from . import current_identity, current_token


def install(sender: Any, connection: Any, **kwargs: Any) -> None:
    """connection_created: add the wrapper to PostgreSQL connections (once each)."""
    if connection.vendor != "postgresql" or getattr(connection, "_koherent_pg", False):
        return
    connection._koherent_pg = True
    connection.execute_wrappers.append(_Wrapper(connection))


class _Wrapper:
    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def __call__(self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any) -> Any:
        conn = self.connection
        token = current_token.get()
        org, user = current_identity.get()
        state = (token, org, user)
        raw = conn.connection
        idle = raw is None or raw.info.transaction_status == pq.TransactionStatus.IDLE
        if idle:
            conn._koherent_pg_task = None   # the transaction the token was set in has ended
        if state == (None, None, None):
            return execute(sql, params, many, context)
        if conn.get_autocommit():
            # a statement outside any transaction: give it one, under the task
            with transaction.atomic(using=conn.alias):
                _begin(conn, *state)
                conn._koherent_pg_task = state
                return execute(sql, params, many, context)
        if getattr(conn, "_koherent_pg_task", None) != state:
            # the transaction's first statement under this token: psycopg begins the transaction
            # with set_task when it is idle; a transaction begun before the token was set (an
            # atomic block opened before the middleware ran) gets it now, or fails clearly if it
            # already wrote under no task or another one
            _begin(conn, *state)
            conn._koherent_pg_task = state
        return execute(sql, params, many, context)


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
