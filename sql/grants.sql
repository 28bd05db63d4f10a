-- koherent: privileges, loaded last. Application roles may call the task functions; nothing
-- else by default. History, keys and contexts are written only by koherent itself.

GRANT USAGE ON SCHEMA koherent TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA koherent FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA koherent FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA koherent FROM PUBLIC;
-- Public keys are public: set_task reads them with the caller's rights.
GRANT SELECT ON koherent.issuer_key_store, koherent.issuer_key TO PUBLIC;
-- Types for pg_graphql, views that never have a row (sql/graphql.sql).
GRANT SELECT ON koherent.provenance_entry_node, koherent.effective_change_json, koherent.task_node TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    koherent.set_task(text), koherent.set_task(text, jsonb), koherent._set_task_args(text, text),
    koherent.verify_token(text), koherent.current_task(), koherent._current_task_claims(),
    koherent.current_context_id(), koherent.set_context_id(uuid), koherent.set_context(jsonb),
    koherent._set_context(text), koherent.canonical_args(jsonb), koherent._canonical_args(text),
    koherent.args_hash(jsonb), koherent._args_hash(text),
    -- called by the views with the reader's rights: a value's text by its output function
    koherent._text_out(anyelement),
    -- and the images they build (src/image.rs: built-in types' conversions only)
    koherent._jsonb_object("any"),
    -- folded by the planner in the views (loads the library and its planner hook; returns its argument)
    koherent._relid(oid),
    -- revert and as-of: who the helpers act for (src/revert/mod.rs)
    koherent._acting(),
    -- a table as of a moment: what the caller may SELECT of it (checked by the helpers, which
    -- act for the role koherent._acting() names)
    koherent.as_of(anyelement, timestamptz), koherent.as_of_task(anyelement, text),
    koherent.row_as_of(anyelement, jsonb, timestamptz),
    koherent._as_of_rows(uuid, regtype, timestamptz, text, jsonb), koherent._as_of_select(jsonb),
    koherent._as_of_typed(uuid, regtype, timestamptz, text, jsonb),
    koherent._as_of_entries(uuid, regtype, timestamptz, boolean, jsonb), koherent._as_of_typed_select(jsonb, regtype, boolean),
    koherent._row_as_of_lookup(uuid, regtype, timestamptz, jsonb),
    -- the plan and revert functions (SECURITY INVOKER; granted by an administrator) call these,
    -- which check that the role they act for may call them
    koherent._revert_plan(uuid, uuid[]), koherent._revert_plan_prepare(uuid, uuid[]),
    koherent._revert_plan_rest(uuid, uuid[], integer[]), koherent._revert_task_contexts(uuid, text, boolean),
    koherent._revert_context_check(uuid, uuid), koherent._revert_task(uuid, text, boolean, text),
    koherent._revert_context(uuid, uuid, text),
    -- called by provenance_entry with the reader's rights: whether row-level security on the
    -- contexts lets the reader see an entry's transaction (it asks as the reader)
    koherent._context_rls(), koherent._context_visible(uuid)
  TO PUBLIC;


REVOKE EXECUTE ON FUNCTION koherent.expose(regclass, regrole), koherent.unexpose(regclass), koherent._graphql_schema(), koherent._expose_owner_check(text),
    koherent._regrant(aclitem[], oid, text),
    koherent.task_changes(text, boolean, text), koherent.provenance_entry_effective_changes(koherent.provenance_entry),
    koherent.provenance_entry_task(koherent.provenance_entry), koherent._entry_select(koherent.tracked_config, text, text),
    koherent._visibility_check(regclass), koherent._caller_is_auditor(), koherent._visible_entry(bigint, regclass),
    koherent._current_life(koherent.tracked_config, text, text)
  FROM PUBLIC;
