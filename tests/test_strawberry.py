"""koherent_pg.strawberry with strawberry-graphql-django: a model's provenance field, its task
and effective changes (batched: one query for a list of objects, one more for their changes),
the flat ProvenanceFilter with the original koherent's semantics (changedBefore inclusive,
CREATE without effective changes); exact JSON."""

import asyncio
import datetime

import pytest

from conftest import mint
from test_django import post

strawberry = pytest.importorskip("strawberry")
strawberry_django = pytest.importorskip("strawberry_django")


def make_schema():
    from djangoapp.models import Book

    from koherent_pg.strawberry import ProvenanceEntry, ProvenanceFilterMixin, provenance_field

    @strawberry_django.filter_type(Book)
    class BookFilter(ProvenanceFilterMixin):
        title: strawberry.auto

    @strawberry_django.type(Book, filters=BookFilter)
    class BookType:
        id: strawberry.auto
        title: strawberry.auto
        provenance: list[ProvenanceEntry] = provenance_field()

    @strawberry.type
    class Query:
        books: list[BookType] = strawberry_django.field()

    return strawberry.Schema(query=Query)


def run(schema, query):
    result = asyncio.run(schema.execute(query, context_value={}))
    assert result.errors is None, result.errors
    return result.data


def test_provenance_task_and_effective_changes_batched(project, monkeypatch):
    from django.test import Client

    import koherent_pg.strawberry as ks

    client = Client()
    b1 = post(client, mint("t-gql"), title="One", author="A", atomic=True)["book"]
    b2 = post(client, mint("t-gql2"), title="Two", author="B")["book"]
    calls = {"provenance": 0, "changes": 0}
    real_p, real_c = ks.provenance_rows, ks.effective_changes_rows

    def count_p(qs):
        calls["provenance"] += 1
        return real_p(qs)

    def count_c(keys):
        calls["changes"] += 1
        return real_c(keys)

    monkeypatch.setattr(ks, "provenance_rows", count_p)
    monkeypatch.setattr(ks, "effective_changes_rows", count_c)
    data = run(make_schema(), """{ books { id title provenance { kind taskId changedBy
        task { taskId rootTaskId agentClientId } effectiveChanges { field oldValue newValue newValueJson } } } }""")
    books = sorted(data["books"], key=lambda b: int(b["id"]))
    assert books == [
        {"id": str(b1), "title": "One (edited)", "provenance": [
            {"kind": "CREATE", "taskId": "t-gql", "changedBy": "agent-user-3",
             "task": {"taskId": "t-gql", "rootTaskId": "t-gql", "agentClientId": "agent-client-9"},
             "effectiveChanges": []},
            {"kind": "UPDATE", "taskId": "t-gql", "changedBy": "agent-user-3",
             "task": {"taskId": "t-gql", "rootTaskId": "t-gql", "agentClientId": "agent-client-9"},
             "effectiveChanges": [{"field": "title", "oldValue": "One", "newValue": "One (edited)",
                                   "newValueJson": "One (edited)"}]}]},
        {"id": str(b2), "title": "Two", "provenance": [
            {"kind": "CREATE", "taskId": "t-gql2", "changedBy": "agent-user-3",
             "task": {"taskId": "t-gql2", "rootTaskId": "t-gql2", "agentClientId": "agent-client-9"},
             "effectiveChanges": []}]}]
    assert calls == {"provenance": 1, "changes": 1}


def test_the_provenance_filter(project):
    from django.test import Client

    from djangoapp.models import Book

    client = Client()
    b1 = post(client, mint("t-f1"), title="One", author="A", atomic=True)["book"]
    b2 = post(client, mint("t-f2"), title="Two", author="B")["book"]
    schema = make_schema()

    def ids(flt):
        data = run(schema, "{ books(filters: {provenance: {%s}}) { id } }" % flt)
        return sorted(int(b["id"]) for b in data["books"])

    assert ids('taskId: "t-f1"') == [b1]
    assert ids('taskId: "t-f2", kind: CREATE') == [b2]
    assert ids('taskId: "t-f2", kind: UPDATE') == []
    assert ids('agentClientId: "agent-client-9", kind: UPDATE') == [b1]
    assert ids('changedBy: "nobody"') == []
    # changedBefore is inclusive, as in the original koherent
    from koherent_pg.django import provenance_of

    created = [e.date for e in provenance_of(Book.objects.get(pk=b2)) if e.kind == "CREATE"][0]
    at = created.astimezone(datetime.timezone.utc).isoformat()
    assert b2 in ids(f'taskId: "t-f2", changedBefore: "{at}"')
    assert b2 in ids(f'taskId: "t-f2", changedSince: "{at}"')
