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

The organization and the user a request acts for, from the application's own authentication,
go with it the same way (``koherent.organization``, ``koherent.app_user``: README, "Local users
and organizations"), set in each of its transactions before set_task::

    KOHERENT_PG_ORGANIZATION = "myapp.auth.organization_of"   # (request) -> str | None
    KOHERENT_PG_APP_USER = lambda request: request.user.get_username() if request.user.is_authenticated else None

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
# (organization, application user) of the current request
current_identity: ContextVar[tuple] = ContextVar("koherent_pg_django_identity", default=(None, None))


@contextmanager
def using_task(token: Optional[str], organization: Optional[str] = None,
               app_user: Optional[str] = None) -> Iterator[None]:
    """Run the block's database work under `token` (None: no task), in `organization`, for
    `app_user` (the application's own word for both; None: not said)."""
    reset = current_token.set(token)
    reset_identity = current_identity.set((organization or None, app_user or None))
    try:
        yield
    finally:
        current_identity.reset(reset_identity)
        current_token.reset(reset)


def _of_request(name: str) -> Optional[Callable[[Any], Any]]:
    """The callable a setting names (a callable or a dotted path), or None."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    f = getattr(settings, name, None)
    return import_string(f) if isinstance(f, str) else f


def _header_name() -> str:
    from django.conf import settings

    return getattr(settings, "KOHERENT_PG_HEADER", "Rekuest-Task")


class TaskMiddleware:
    """Sets the request's task token (header ``KOHERENT_PG_HEADER``) for its database work."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.header = _header_name()
        self.organization = _of_request("KOHERENT_PG_ORGANIZATION")
        self.app_user = _of_request("KOHERENT_PG_APP_USER")

    def __call__(self, request: Any) -> Any:
        token = request.headers.get(self.header) or None
        org = self.organization(request) if self.organization else None
        user = self.app_user(request) if self.app_user else None
        with using_task(token, None if org is None else str(org), None if user is None else str(user)):
            return self.get_response(request)


def provenance_of(obj: Any) -> Any:
    from .reading import provenance_of as f

    return f(obj)


def effective_changes_of(obj: Any) -> Any:
    from .reading import effective_changes_of as f

    return f(obj)
