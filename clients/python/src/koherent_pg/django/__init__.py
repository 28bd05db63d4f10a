"""Django: attribute every write of a request that carries a task token.

settings.py::

    INSTALLED_APPS = [..., "koherent_pg.django"]
    MIDDLEWARE = [..., "koherent_pg.django.TaskMiddleware"]
    KOHERENT_PG_HEADER = "Rekuest-Task"      # the default

The middleware takes the token from the request's header for the duration of the request. The
app installs a database hook (an execute wrapper on every PostgreSQL connection) that, while a
token is set, makes each transaction run under it: the first statement of a transaction is
preceded by ``koherent.set_task($1)`` (also in a transaction begun before the token was set, such
as an atomic block a middleware opened before TaskMiddleware: it fails clearly if that
transaction already wrote under no task or another one); a statement outside any transaction
(Django's autocommit) runs in a transaction of its own with ``set_task`` first. So atomic blocks, ``ATOMIC_REQUESTS``
and autocommit are attributed alike. A task lives only as long as its transaction: nothing
carries over to the next request on a persistent connection (``CONN_MAX_AGE``) or through
PgBouncer in transaction mode. A token the database refuses makes the write fail with
koherent's error (``django.db.utils.ProgrammingError`` or ``OperationalError`` whose
``__cause__`` has the SQLSTATE), and nothing of that transaction is written.

No header, no task: writes are recorded unattributed (or refused on ``require_task`` tables).
Work outside a request (management commands, websocket consumers, Celery tasks: there is no
header per operation over a websocket) runs under a token explicitly with ``using_task(token)``.

Reading: :mod:`koherent_pg.django.models` (unmanaged models over koherent's views) and
``provenance_of(obj_or_queryset)`` / ``effective_changes_of(...)``.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Optional

__all__ = ["TaskMiddleware", "using_task", "current_token", "provenance_of", "effective_changes_of"]


current_token: ContextVar[Optional[str]] = ContextVar("koherent_pg_django_token", default=None)


@contextmanager
def using_task(token: Optional[str]) -> Iterator[None]:
    """Run the block's database work under `token` (None: no task)."""
    reset = current_token.set(token)
    try:
        yield
    finally:
        current_token.reset(reset)


def _header_name() -> str:
    from django.conf import settings

    return getattr(settings, "KOHERENT_PG_HEADER", "Rekuest-Task")


class TaskMiddleware:
    """Sets the request's task token (header ``KOHERENT_PG_HEADER``) for its database work."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.header = _header_name()

    def __call__(self, request: Any) -> Any:
        token = request.headers.get(self.header) or None
        with using_task(token):
            return self.get_response(request)


def provenance_of(obj: Any) -> Any:
    from .reading import provenance_of as f

    return f(obj)


def effective_changes_of(obj: Any) -> Any:
    from .reading import effective_changes_of as f

    return f(obj)
