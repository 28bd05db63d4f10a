"""Unmanaged models over koherent's views: reading them directly takes SELECT on them (an
auditor's grant); :func:`koherent_pg.django.provenance_of` needs only the exposed functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import models


class ProvenanceEntry(models.Model):
    history_id = models.BigIntegerField(primary_key=True)
    table_name = models.TextField()
    row_key = models.JSONField()
    kind = models.TextField()
    date = models.DateTimeField()
    context_id = models.UUIDField(null=True)
    db_role = models.TextField(null=True)
    effective_role = models.TextField(null=True)
    row_data = models.JSONField(null=True)
    task_id = models.TextField(null=True)
    agent_client_id = models.TextField(null=True)
    issuer = models.TextField(null=True)
    changed_by = models.TextField(null=True)
    table_ident = models.TextField()

    class Meta:
        managed = False
        db_table = 'koherent"."provenance_entry'
        ordering = ["history_id"]
        app_label = "koherent_pg"


class Task(models.Model):
    task_id = models.TextField(primary_key=True)
    issuer = models.TextField()
    parent_task_id = models.TextField(null=True)
    root_task_id = models.TextField()
    assigner_sub = models.TextField()
    caller_sub = models.TextField()
    agent_sub = models.TextField()
    agent_client_id = models.TextField()
    token_id = models.TextField()
    args_hash = models.TextField()
    args_hash_algorithm = models.TextField()
    claims = models.JSONField()
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = 'koherent"."task'
        app_label = "koherent_pg"


@dataclass(frozen=True)
class EffectiveChange:
    """One field one history entry changed (koherent.effective_change)."""

    history_id: int
    field: str
    old_value: Any
    new_value: Any
