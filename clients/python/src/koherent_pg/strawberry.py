"""Strawberry (strawberry-graphql-django): the provenance of a Django model in a GraphQL API,
shaped as the original ``koherent`` Django app offered it.

::

    import strawberry, strawberry_django
    from koherent_pg.strawberry import ProvenanceEntry, ProvenanceFilterMixin, provenance_field

    @strawberry_django.filter_type(Book)
    class BookFilter(ProvenanceFilterMixin):
        title: strawberry.auto

    @strawberry_django.type(Book, filters=BookFilter)
    class BookType:
        id: strawberry.auto
        title: strawberry.auto
        provenance: list[ProvenanceEntry] = provenance_field()

``books(filters: {provenance: {taskId: "t-1", kind: CREATE}})`` keeps the books with at least
one change matching every given condition (on the same change); ``provenance`` lists a book's
changes, oldest first, each with its ``task`` and ``effectiveChanges``. The provenance of every
object in a list comes from one query (a DataLoader per request), effective changes from one
more. The table must be exposed (``koherent.expose('<table>', '<role>')``): the reads go through
its functions, which show the caller only rows it may read.

Where the original's semantics differ from the extension's, this adapter follows the original:
``changedBefore`` is inclusive (the extension's filter is exclusive), ``changedSince``
inclusive; CREATE entries list no effective changes (the extension's effective_change lists
every field of a CREATE). ``kind`` adds ``TRUNCATE`` (the original had none). ``user`` and
``client`` of the original (authentikate objects) are here the strings ``changedBy`` (act.sub)
and ``agentClientId``; ``oldValue`` / ``newValue`` are strings as in the original (a JSON string
as itself, other values as JSON text), ``oldValueJson`` / ``newValueJson`` the native values.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from enum import Enum
from typing import Any, Optional

import strawberry
import strawberry_django
from asgiref.sync import sync_to_async
from django.db import connections
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL
from strawberry.dataloader import DataLoader
from strawberry.scalars import JSON

from .django.reading import _function, effective_changes_rows, provenance_rows

__all__ = ["HistoryKind", "ModelChange", "Task", "ProvenanceEntry", "ProvenanceFilter",
           "ProvenanceFilterMixin", "provenance_field"]


@strawberry.enum(description="The type of change that was made.")
class HistoryKind(str, Enum):
    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TRUNCATE = "TRUNCATE"


@strawberry.type(description="A change made to a field.")
class ModelChange:
    field: str = strawberry.field(description="The field that was changed.")
    old_value: Optional[str] = strawberry.field(description="The old value of the field.")
    new_value: Optional[str] = strawberry.field(description="The new value of the field.")
    old_value_json: Optional[JSON] = strawberry.field(description="The old value, with its native JSON type.")
    new_value_json: Optional[JSON] = strawberry.field(description="The new value, with its native JSON type.")


@strawberry.type(description="A verified provenance task under which changes were made.")
class Task:
    task_id: str
    parent_task_id: Optional[str]
    root_task_id: str
    assigner_sub: str
    caller_sub: str
    agent_sub: str
    agent_client_id: str
    issuer: str
    token_id: str
    args_hash: str
    args_hash_algorithm: str
    created_at: datetime.datetime


@strawberry.type(description="A provenance event for a model.")
class ProvenanceEntry:
    id: strawberry.ID = strawberry.field(description="The ID of the history entry.")
    kind: HistoryKind = strawberry.field(description="The type of change that was made.")
    date: datetime.datetime = strawberry.field(description="The date of the change.")
    task_id: Optional[str]
    agent_client_id: Optional[str]
    issuer: Optional[str]
    changed_by: Optional[str] = strawberry.field(description="The sub of the user who made the change.")
    task: Optional[Task] = strawberry.field(description="The task during which the change occurred, if any.")

    _table: strawberry.Private[str]
    _history_id: strawberry.Private[int]

    @strawberry.field(description="The effective changes made to the model.")
    async def effective_changes(self, info: strawberry.Info) -> list[ModelChange]:
        if self.kind == HistoryKind.CREATE:
            return []   # as the original: a CREATE lists no effective changes
        return await _loader(info, "changes").load((self._table, self._history_id))


def _text(v: Any) -> Optional[str]:
    if v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v)


def _entry(e: Any, table: str) -> ProvenanceEntry:
    t = e.task_row
    return ProvenanceEntry(
        id=strawberry.ID(str(e.history_id)), kind=HistoryKind(e.kind), date=e.date, task_id=e.task_id,
        agent_client_id=e.agent_client_id, issuer=e.issuer, changed_by=e.changed_by,
        task=None if t is None else Task(**t), _table=table, _history_id=e.history_id)


def _loader(info: Any, what: str) -> DataLoader:
    """One DataLoader per request (on the context) and kind."""
    ctx = info.context
    store = ctx.setdefault("koherent_pg_loaders", {}) if isinstance(ctx, dict) else \
        ctx.__dict__.setdefault("koherent_pg_loaders", {})
    if what not in store:
        store[what] = DataLoader(load_fn=_load_provenance if what == "provenance" else _load_changes)
    return store[what]


async def _load_provenance(keys: list[tuple[Any, Any]]) -> list[list[ProvenanceEntry]]:
    """keys: (model, pk); one query per model for all its objects."""
    def fetch() -> dict[tuple[Any, Any], list[ProvenanceEntry]]:
        by_model: dict[Any, list[Any]] = defaultdict(list)
        for model, pk in keys:
            by_model[model].append(pk)
        out: dict[tuple[Any, Any], list[ProvenanceEntry]] = defaultdict(list)
        for model, pks in by_model.items():
            for e in provenance_rows(model._default_manager.filter(pk__in=pks)):
                out[(model, e.row_key[model._meta.pk.column])].append(_entry(e, model._meta.db_table))
        return out

    found = await sync_to_async(fetch)()
    return [found.get(k, []) for k in keys]


async def _load_changes(keys: list[tuple[str, int]]) -> list[list[ModelChange]]:
    def fetch() -> dict[tuple[str, int], list[ModelChange]]:
        out: dict[tuple[str, int], list[ModelChange]] = defaultdict(list)
        for table, history_id, field, old, new in effective_changes_rows(keys):
            out[(table, history_id)].append(ModelChange(
                field=field, old_value=_text(old), new_value=_text(new), old_value_json=old, new_value_json=new))
        return out

    found = await sync_to_async(fetch)()
    return [found.get(k, []) for k in keys]


def provenance_field(**kwargs: Any) -> Any:
    """A ``provenance: list[ProvenanceEntry]`` field for a strawberry_django type."""
    async def resolve(root: Any, info: strawberry.Info) -> list[ProvenanceEntry]:
        return await _loader(info, "provenance").load((type(root), root.pk))

    kwargs.setdefault("description", "The recorded changes of this object, oldest first.")
    return strawberry.field(resolver=resolve, **kwargs)


@strawberry.input(description="Filter a model by its provenance (exact matches, on one change).")
class ProvenanceFilter:
    task_id: Optional[str] = None
    agent_client_id: Optional[str] = None
    issuer: Optional[str] = None
    changed_by: Optional[str] = None
    kind: Optional[HistoryKind] = None
    changed_since: Optional[datetime.datetime] = strawberry.field(
        default=None, description="Only changes at or after this date.")
    changed_before: Optional[datetime.datetime] = strawberry.field(
        default=None, description="Only changes at or before this date.")


@strawberry.input(description="Filter a model by its provenance.")
class ProvenanceFilterMixin:
    @strawberry_django.filter_field
    def provenance(self, value: ProvenanceFilter, prefix: str, queryset: QuerySet) -> tuple[QuerySet, Q]:
        model = queryset.model
        conn = connections[queryset.db]
        before = value.changed_before + datetime.timedelta(microseconds=1) if value.changed_before else None
        sql = (f"SELECT t.{conn.ops.quote_name(model._meta.pk.column)} FROM "
               f"{_function(model, conn, '_by_provenance')}(%s, %s, %s, %s, %s, %s, %s) t")
        params = [value.task_id, value.agent_client_id, value.issuer, value.changed_by,
                  value.kind.value if value.kind else None, value.changed_since, before]
        return queryset, Q(**{f"{prefix}pk__in": RawSQL(sql, params)})
