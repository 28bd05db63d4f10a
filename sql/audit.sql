-- koherent: what an audit package holds (format koherent-audit-v1; docs/audit-package.md).
--
-- `koherent audit export` calls koherent.audit_export() in one REPEATABLE READ, read-only
-- transaction and writes the package from its rows; `koherent audit verify` checks the package
-- offline. The records are the ledger's own (koherent._ledger_records_sql and friends): what
-- the export ships is what seal hashed, so a package verifies against the blocks and digests
-- the database sealed.

-- The contexts a package holds: a task's (with its subtasks: the task tree), or those begun in
-- [since, until); each with its place in the ledger (null block: not sealed yet), in the order
-- the ledger holds them (block, position), unsealed ones last in the order they began.
CREATE FUNCTION koherent._audit_contexts(task_id text, include_subtasks boolean, since timestamptz,
                                         until timestamptz)
RETURNS TABLE (id uuid, block bigint, pos integer, ord bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ctx uuid[];
BEGIN
    IF (task_id IS NULL) = (since IS NULL AND until IS NULL) THEN
        RAISE EXCEPTION 'koherent: an audit package holds one task''s changes or a time window''s, not both or neither'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give task_id (and include_subtasks), or since and until.';
    END IF;
    IF task_id IS NOT NULL THEN
        ctx := koherent._task_contexts(task_id, coalesce(include_subtasks, false));
        IF ctx IS NULL THEN
            RAISE EXCEPTION 'koherent: no task %', task_id
                USING ERRCODE = 'no_data_found', HINT = 'koherent.task lists the tasks that wrote tracked rows.';
        END IF;
    ELSE
        IF since IS NULL OR until IS NULL OR until < since THEN
            RAISE EXCEPTION 'koherent: a time window needs since <= until'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT coalesce(array_agg(x.id), '{}') INTO ctx
          FROM koherent.transaction_auth_context x WHERE x.created_at >= since AND x.created_at < until;
    END IF;
    RETURN QUERY
        SELECT x.id, l.block, l.position,
               row_number() OVER (ORDER BY l.block NULLS LAST, l.position, x.created_at, x.id)
          FROM koherent.transaction_auth_context x
          LEFT JOIN koherent.ledger_context l ON l.context_id = x.id
         WHERE x.id = ANY (ctx);
END $$;

-- An audit package's contents, as (kind, data) rows in the package's order:
--   'meta'    {database, database_name, digest, selection, extension_version, exported_at}
--   'schema'  {record} (the last block's schema record), then per config {config, name, schema_name,
--             table_name, key, history_table, tracked_since} and per column {column_id, config, name,
--             type, live_from, live_until}
--   'key'     an issuer key as the database knows it
--   'task'    {record} (the task's ledger record), by issuer and task id
--   'context' {id, block, position, fields, task, entries_root, entries, configs, ids, prefixes}
--             (configs and ids comma-separated text, prefixes the entries' 8-byte hash prefixes
--             as one hex text: the client splits them)
--   'entries' the name of an open cursor over the entries: rows (kind 'entry', data {table,
--             record}: the entry's ledger record), by context, then config, history id. A
--             cursor, not rows of this function: a set-returning function's rows are all
--             computed and stored before the first is sent (200k entries: 0.7 s and 75 MB
--             spilled), a cursor's are sent as they are made, while the client writes them.
--   'block'   {record, hash} (every block: the chain from block 1, so that the package proves it
--             extends any digest an auditor kept), with 'leaves' {block, hashes} (its contexts' hashes, for the proofs) where
--             the block holds a selected context
-- Call it in a REPEATABLE READ (or SERIALIZABLE) transaction, read-only if you like, and fetch
-- the cursor in the same transaction: it sets TimeZone, DateStyle, IntervalStyle,
-- extra_float_digits, bytea_output and lc_monetary for the rest of that transaction to what
-- seal renders values under (the cursor's rows are made when fetched).
CREATE FUNCTION koherent.audit_export(task_id text DEFAULT NULL, include_subtasks boolean DEFAULT false,
                                      since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL)
RETURNS TABLE (kind text, data text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET max_parallel_workers_per_gather = 0 SET jit = off
SET enable_bitmapscan = on AS $$
DECLARE
    keys text;
    records text;
    ids uuid[];
    blocks bigint[];
    poss integer[];
    unsealed uuid[];
    cur refcursor;
BEGIN
    IF current_setting('transaction_isolation') NOT IN ('repeatable read', 'serializable') THEN
        RAISE EXCEPTION 'koherent: audit_export needs one snapshot for all it reads: call it in a REPEATABLE READ transaction'
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT * FROM koherent.audit_export(...); FETCH ... ; COMMIT (what koherent audit export does).';
    END IF;
    -- (for the rest of the transaction: the cursor's rows are rendered when fetched)
    PERFORM set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true),
            set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '1', true),
            set_config('bytea_output', 'hex', true), set_config('lc_monetary', 'C', true);
    -- (arrays, not a temporary table: the export runs in a read-only transaction, on a standby too)
    SELECT coalesce(array_agg(c.id ORDER BY c.ord), '{}'), coalesce(array_agg(c.block ORDER BY c.ord), '{}'),
           coalesce(array_agg(c.pos ORDER BY c.ord), '{}')
      INTO ids, blocks, poss
      FROM koherent._audit_contexts(task_id, include_subtasks, since, until) c;

    RETURN QUERY SELECT 'meta'::text, jsonb_build_object(
        'database', (SELECT m.database_id::text FROM koherent.ledger_meta m), 'database_name', current_database(),
        'digest', koherent.digest(),
        'selection', CASE WHEN audit_export.task_id IS NOT NULL
                          THEN jsonb_build_object('task_id', audit_export.task_id,
                                                  'include_subtasks', coalesce(include_subtasks, false))
                          ELSE jsonb_build_object('since', koherent._ledger_time(since), 'until', koherent._ledger_time(until)) END,
        'extension_version', (SELECT e.extversion FROM pg_extension e WHERE e.extname = 'koherent'),
        'exported_at', koherent._ledger_time(clock_timestamp()),
        'contexts', cardinality(ids), 'unsealed', cardinality(ids) - cardinality(array_remove(blocks, NULL)))::text;

    -- what names the tables and columns (the last block's schema record covers types and epochs)
    RETURN QUERY SELECT 'schema'::text, jsonb_build_object('record', b.schema)::text
                   FROM koherent.ledger_block b ORDER BY b.block DESC LIMIT 1;
    RETURN QUERY SELECT 'schema'::text, jsonb_build_object(
                     'config', c.id, 'name', format('%I.%I', c.schema_name, c.table_name), 'schema_name', c.schema_name,
                     'table_name', c.table_name, 'key', to_jsonb(c.pk_columns),
                     'history_table', c.history_table, 'tracked_since', koherent._ledger_time(c.tracked_since))::text
                   FROM koherent.tracked_config c ORDER BY c.id;
    RETURN QUERY SELECT 'schema'::text, jsonb_build_object(
                     'column_id', t.column_id, 'config', t.config_id, 'name', t.column_name, 'type', t.type_sql,
                     'live_from', t.live_from, 'live_until', t.live_until)::text
                   FROM koherent.tracked_column t ORDER BY t.column_id;

    RETURN QUERY SELECT 'key'::text, jsonb_build_object(
                     'issuer', k.issuer, 'kid', k.kid, 'alg', k.alg,
                     'x', rtrim(translate(encode(k.public_key, 'base64'), '+/', '-_'), '='),
                     'added_at', koherent._ledger_time(k.added_at),
                     'revoked_at', CASE WHEN k.revoked_at IS NOT NULL THEN koherent._ledger_time(k.revoked_at) END)::text
                   FROM koherent.issuer_key_store k ORDER BY k.issuer, k.kid;

    RETURN QUERY SELECT 'task'::text, jsonb_build_object('record', koherent._ledger_task_record(t))::text
                   FROM koherent.task t
                  WHERE EXISTS (SELECT 1 FROM koherent.transaction_auth_context x WHERE x.id = ANY (ids)
                                   AND x.task_id = t.task_id AND x.issuer = t.issuer)
                  ORDER BY t.issuer, t.task_id;

    RETURN QUERY SELECT 'context'::text, jsonb_build_object(
                     'id', a.id, 'block', a.block, 'position', a.pos, 'fields', koherent._ledger_context_fields(x),
                     'task', encode(l.task_hash, 'hex'), 'entries_root', encode(l.entries_root, 'hex'),
                     'entries', l.entries, 'configs', array_to_string(l.entry_configs, ','),
                     'ids', array_to_string(l.entry_ids, ','), 'prefixes', encode(l.entry_hashes, 'hex'))::text
                   FROM unnest(ids, blocks, poss) WITH ORDINALITY a(id, block, pos, ord)
                   JOIN koherent.transaction_auth_context x ON x.id = a.id
                   LEFT JOIN koherent.ledger_context l ON l.context_id = a.id
                  ORDER BY a.ord;

    -- the entries: sorted by their keys (and where they are), each record made after the sort
    -- from its row (a sort of the records themselves spills them all). Sealed contexts' entries
    -- are found by the history id ranges the ledger lists (koherent._sealed_conditions, through the
    -- range index: the subquery keeps the context join from choosing the lookup index), the
    -- others' by context.
    unsealed := ARRAY(SELECT u.id FROM unnest(ids, blocks) u(id, block) WHERE u.block IS NULL);
    SELECT string_agg(format('SELECT a.ord, %s AS config, h.history_id, h.tid FROM (SELECT h.history_id, '
                             'h.history_context, h.ctid AS tid FROM koherent_history.%I h WHERE %s OFFSET 0) h '
                             'JOIN unnest($1) WITH ORDINALITY a(id, ord) ON a.id = h.history_context%s',
                             c.id, c.history_table, w.cond,
                             -- (an unsealed context's entries inside a sealed range: from the other part)
                             CASE WHEN w.part = 0 THEN ' AND NOT (a.id = ANY ($2))' ELSE '' END),
                      ' UNION ALL ' ORDER BY c.id, w.part)
      INTO keys
      FROM koherent.tracked_config c
      JOIN (SELECT r.config_id, 0 AS part, r.cond
              FROM koherent._sealed_conditions(ARRAY(SELECT u FROM unnest(ids) u WHERE NOT (u = ANY (unsealed)))) r
            UNION ALL
            SELECT x.id, 1, koherent._unsealed_condition(format('koherent_history.%I', x.history_table)::regclass, '$2',
                                                         s.since, koherent._timestamptz_literal(s.since))
              FROM koherent.tracked_config x, koherent._contexts_since(unsealed) s(since)
             WHERE cardinality(unsealed) > 0
               AND to_regclass(format('koherent_history.%I', x.history_table)) IS NOT NULL) w ON w.config_id = c.id
     WHERE to_regclass(format('koherent_history.%I', c.history_table)) IS NOT NULL;
    SELECT string_agg(format('WHEN %s THEN (SELECT %L || r.record || ''}'' FROM (%s) r)', c.id,
                             '{"table":' || to_json(format('%I.%I', c.schema_name, c.table_name))::text || ',"record":',
                             koherent._ledger_records_sql(c, 'h.ctid = s.tid')), ' ' ORDER BY c.id)
      INTO records
      FROM koherent.tracked_config c WHERE to_regclass(format('koherent_history.%I', c.history_table)) IS NOT NULL;
    OPEN cur NO SCROLL FOR EXECUTE format(
        'SELECT ''entry''::text AS kind, CASE s.config %s END AS data '
        'FROM (SELECT * FROM (%s) k ORDER BY k.ord, k.config, k.history_id OFFSET 0) s',
        coalesce(records, 'WHEN NULL THEN NULL'), coalesce(keys, 'SELECT 0::bigint AS ord, 0 AS config, 0::bigint AS history_id, NULL::tid AS tid WHERE false'))
      USING ids, unsealed;
    RETURN QUERY SELECT 'entries'::text, cur::text;

    RETURN QUERY SELECT 'block'::text, jsonb_build_object(
                     'record', koherent._ledger_block_record(b),
                     'hash', encode(b.hash, 'hex'),
                     'leaves', CASE WHEN b.block = ANY (blocks)
                                    THEN (SELECT jsonb_agg(encode(l.hash, 'hex') ORDER BY l.position)
                                            FROM koherent.ledger_context l WHERE l.block = b.block) END)::text
                   FROM koherent.ledger_block b ORDER BY b.block;
END $$;
COMMENT ON FUNCTION koherent.audit_export(text, boolean, timestamptz, timestamptz) IS
  'What an audit package of a task (or of the contexts begun in [since, until)) holds, as (kind, data) rows: `koherent audit export` writes the package from them (docs/audit-package.md).';
