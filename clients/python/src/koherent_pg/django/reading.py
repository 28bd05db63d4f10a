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


def _function(model: Any, conn: Any) -> str:
    table = model._meta.db_table
    schema, _, name = table.rpartition(".")
    qn = conn.ops.quote_name
    fn = qn(name + "_provenance")
    return f"{qn(schema)}.{fn}" if schema else fn


def provenance_of(target: Any) -> List[ProvenanceEntry]:
    """Every recorded change of the instance (or of each row of the queryset), oldest first."""
    qs, alias = _rows(target)
    conn = connections[alias]
    inner, params = qs.values("pk").query.sql_with_params()
    table = conn.ops.quote_name(qs.model._meta.db_table)
    sql = (f"SELECT p.* FROM {table} t, LATERAL {_function(qs.model, conn)}(t) p "
           f"WHERE t.{conn.ops.quote_name(qs.model._meta.pk.column)} IN ({inner}) ORDER BY p.history_id")
    return list(ProvenanceEntry.objects.using(alias).raw(sql, params))


def effective_changes_of(target: Any) -> List[EffectiveChange]:
    """The fields each recorded change changed, for the instance (or queryset), in order."""
    qs, alias = _rows(target)
    conn = connections[alias]
    inner, params = qs.values("pk").query.sql_with_params()
    table = conn.ops.quote_name(qs.model._meta.db_table)
    sql = (f"SELECT c.history_id, c.field, c.old_value, c.new_value FROM {table} t, "
           f"LATERAL {_function(qs.model, conn)}(t) p, LATERAL koherent.provenance_entry_effective_changes(p) c "
           f"WHERE t.{conn.ops.quote_name(qs.model._meta.pk.column)} IN ({inner}) ORDER BY c.history_id, c.field")
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    # Django's psycopg backend hands jsonb over as its text (JSONField parses it itself)
    return [EffectiveChange(history_id=h, field=f, old_value=_json(o), new_value=_json(n)) for h, f, o, n in rows]


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v
