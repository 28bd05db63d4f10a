"""A model instance's (or a queryset's) provenance in one query, through the functions
``koherent.expose('<table>', <role>)`` creates (they check, as the caller, that the caller may
read each row, and show only its current life)."""

from __future__ import annotations

import json
from typing import Any, List

from django.db import connections
from django.db.models import Model, QuerySet

from .models import EffectiveChange, ProvenanceEntry


def _rows(target: Any) -> tuple[QuerySet, str]:
    if isinstance(target, Model):
        qs = type(target)._default_manager.filter(pk=target.pk)
    elif isinstance(target, QuerySet):
        qs = target
    else:
        raise TypeError("provenance_of() takes a model instance or a queryset")
    return qs, qs.db


def _function(model: Any, conn: Any, suffix: str = "_provenance") -> str:
    table = model._meta.db_table
    schema, _, name = table.rpartition(".")
    qn = conn.ops.quote_name
    fn = qn(name + suffix)
    return f"{qn(schema)}.{fn}" if schema else fn


def _entries_sql(qs: QuerySet, select: str, joins: str, order: str) -> tuple[str, list]:
    """SELECT <select> FROM <table> t, LATERAL <table>_provenance(t) p <joins> for the rows of
    `qs`: one query whatever the number of rows."""
    conn = connections[qs.db]
    inner, params = qs.values("pk").query.sql_with_params()
    table = conn.ops.quote_name(qs.model._meta.db_table)
    pk = conn.ops.quote_name(qs.model._meta.pk.column)
    sql = (f"SELECT {select} FROM {table} t, LATERAL {_function(qs.model, conn)}(t) p{joins} "
           f"WHERE t.{pk} IN ({inner}) ORDER BY {order}")
    return sql, list(params)


def provenance_of(target: Any) -> List[ProvenanceEntry]:
    """Every recorded change of the instance (or of each row of the queryset), oldest first."""
    qs, alias = _rows(target)
    sql, params = _entries_sql(qs, "p.*", "", "p.history_id")
    return list(ProvenanceEntry.objects.using(alias).raw(sql, params))


def effective_changes_of(target: Any) -> List[EffectiveChange]:
    """The fields each recorded change changed, for the instance (or queryset), in order."""
    qs, alias = _rows(target)
    sql, params = _entries_sql(qs, "c.history_id, c.field, c.old_value, c.new_value",
                               ", LATERAL koherent.provenance_entry_effective_changes(p) c",
                               "c.history_id, c.field")
    with connections[alias].cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    # Django's psycopg backend hands jsonb over as its text (JSONField parses it itself)
    return [EffectiveChange(history_id=h, field=f, old_value=_json(o), new_value=_json(n)) for h, f, o, n in rows]


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


_TASK_COLUMNS = ("task_id", "parent_task_id", "root_task_id", "assigner_sub", "caller_sub", "agent_sub",
                 "agent_client_id", "issuer", "token_id", "args_hash", "args_hash_algorithm", "created_at")


def provenance_rows(qs: QuerySet) -> List[ProvenanceEntry]:
    """provenance_of(queryset), each entry with its task (`task_row`: a dict, or None) from the
    same query."""
    cols = ", ".join(f"k.{c} AS k_{c}" for c in _TASK_COLUMNS)
    sql, params = _entries_sql(qs, f"p.*, {cols}", ", LATERAL koherent.provenance_entry_task(p) k", "p.history_id")
    out = []
    for e in ProvenanceEntry.objects.using(qs.db).raw(sql, params):
        e.task_row = None if e.k_task_id is None else {c: getattr(e, "k_" + c) for c in _TASK_COLUMNS}
        out.append(e)
    return out


def effective_changes_rows(keys: Any, using: str = "default") -> List[tuple]:
    """(table, history_id, field, old, new) of the entries (table, history_id) given, in one
    query, through koherent.provenance_entry_effective_changes (which reads only an entry's
    history_id and table, and checks that the caller may read its row)."""
    keys = list(keys)
    if not keys:
        return []
    conn = connections[using]
    values = ", ".join(["(%s::text, %s::bigint)"] * len(keys))
    params: List[Any] = [x for k in keys for x in k]
    # (the entry made by name, the rest null: whatever columns a later release adds)
    sql = (f"SELECT k.t, k.h, c.field, c.old_value, c.new_value FROM (VALUES {values}) k(t, h), "
           f"LATERAL koherent.provenance_entry_effective_changes(jsonb_populate_record("
           f"NULL::koherent.provenance_entry, jsonb_build_object('history_id', k.h, 'table_name', k.t::regclass))) c "
           f"ORDER BY k.h, c.field")
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return [(t, h, f, _json(o), _json(n)) for t, h, f, o, n in cur.fetchall()]
