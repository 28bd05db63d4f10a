-- koherent: the tamper-evident ledger (koherent-ledger-v1; docs/ledger.md has the format).
--
-- koherent.seal() closes a block over every committed context not sealed yet: each of their
-- history entries is hashed (every stored column: kind, date, context, row image, old values),
-- the entries' hashes combine into their context's hash with the context row and its task row
-- (claims and the signed token), the contexts' hashes into the block's, and each block names the
-- previous block's hash and the tracked columns' epochs. koherent.digest() is what a user keeps
-- outside the database; koherent.verify_history() recomputes everything sealed and names what
-- does not match (and, given digests kept outside, what no longer extends them).
--
-- Images in the ledger are keyed by a tracked column's column_id (it keeps it through renames),
-- with the columns live at the entry's epoch, and rendered under fixed settings (UTC, ISO
-- dates, hex bytea, shortest exact floats): the same bytes on every server and session. With a
-- block sealed, a column's type change starts a new history column instead of converting the
-- recorded values (koherent._sync_history_columns), which would change what was sealed.

-- One row, written by the first seal (not by CREATE EXTENSION: a restored dump brings its own)
CREATE TABLE koherent.ledger_meta (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    database_id uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE koherent.ledger_meta IS
  'koherent ledger: the database''s identity in its digests (one row, made by the first seal; a restored dump keeps it).';

CREATE TABLE koherent.ledger_block (
    block         bigint PRIMARY KEY,
    format        text NOT NULL,
    prev_hash     bytea,
    contexts_root bytea NOT NULL,
    contexts      bigint NOT NULL,
    entries       bigint NOT NULL,
    schema_hash   bytea NOT NULL,
    schema        jsonb NOT NULL,
    sealed_at     timestamptz NOT NULL,
    hash          bytea NOT NULL
);
COMMENT ON TABLE koherent.ledger_block IS
  'koherent ledger: one row per sealed block; hash covers the block''s fields, its contexts'' Merkle root and the previous block''s hash.';

CREATE TABLE koherent.ledger_context (
    context_id    uuid PRIMARY KEY,
    block         bigint NOT NULL,
    position      integer NOT NULL,
    task_hash     bytea,
    entries_root  bytea NOT NULL,
    entries       bigint NOT NULL,
    hash          bytea NOT NULL,
    -- where each sealed entry is, so that verify_history can name it: the entries in the order
    -- their hashes were combined, and the first 8 bytes of each hash
    entry_configs integer[] NOT NULL,
    entry_ids     bigint[] NOT NULL,
    entry_hashes  bytea NOT NULL
);
CREATE UNIQUE INDEX ledger_context_block_idx ON koherent.ledger_context (block, position);
COMMENT ON TABLE koherent.ledger_context IS
  'koherent ledger: one row per sealed context (transaction): its hash, its place in its block and an index of its entries.';

SELECT pg_catalog.pg_extension_config_dump('koherent.ledger_meta', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.ledger_block', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.ledger_context', '');

-- A moment as the ledger writes it: RFC 3339, UTC, microseconds (" BC" after a year before 1;
-- infinity and -infinity as those words). Inlined where it is called (no SET clause: every
-- name in it is schema-qualified instead), which makes it about ten times cheaper per call.
CREATE FUNCTION koherent._ledger_time(ts timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN NOT pg_catalog.isfinite(ts) THEN pg_catalog.textin(pg_catalog.timestamptz_out(ts))
                ELSE pg_catalog.concat(
                         pg_catalog.to_char(pg_catalog.timezone('UTC'::text, ts), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'::text),
                         CASE WHEN pg_catalog.timestamp_lt(pg_catalog.timezone('UTC'::text, ts), '0001-01-01 00:00'::timestamp)
                              THEN ' BC'::text ELSE ''::text END) END
$$;

-- The members of an entry image's JSON object, `"<column_id>":<value>,...` (koherent._ledger_fields,
-- src/ledger/record.rs): per value, what to_jsonb gives for the types whose JSON loses nothing
-- (integers, numeric with NaN and the infinities as strings, text, varchar, boolean, uuid,
-- jsonb), the oid of a reg* value (renaming what it names changes nothing), and the output text
-- (a JSON string) of every other type: json keeps its own text, arrays their bounds, floats -0,
-- timestamps their era (under the settings seal, verify and the audit export fix). One C call
-- per image, each argument's type looked up once per call site: built per value in SQL (a cast,
-- to_json, coalesce and concatenations) a record cost 3.7 us; jsonb_build_object and to_jsonb,
-- which look up every argument's type on every call, 33 us.
CREATE FUNCTION koherent._ledger_fields(keys text, VARIADIC "any") RETURNS text
LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'koherent_ledger_fields';

-- An entry's image in the ledger (prefix '' the row, 'old:' an UPDATE's old values), as JSON
-- text: an object of the columns live at its epoch, keyed by column_id, values as history
-- shows them.
CREATE FUNCTION koherent._ledger_image_expr(cfg koherent.tracked_config, prefix text, alias text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    marks bigint[];
    branches text := '';
    obj text;
    hi bigint;
BEGIN
    SELECT array_agg(DISTINCT m ORDER BY m) INTO marks
      FROM (SELECT live_from AS m FROM koherent.tracked_column WHERE config_id = cfg.id
            UNION SELECT live_until FROM koherent.tracked_column WHERE config_id = cfg.id AND live_until IS NOT NULL) s;
    IF marks IS NULL THEN
        RETURN '''{}''';
    END IF;
    FOR i IN 1 .. array_length(marks, 1) LOOP
        hi := marks[i + 1];
        -- (at most 90 values a call: a function takes 100 arguments)
        SELECT CASE WHEN count(*) = 0 THEN '''{}'''
                    ELSE format('(''{'' || %s || ''}'')', string_agg(p, ' || '','' || ' ORDER BY g)) END
          INTO obj
          FROM (SELECT g, format('koherent._ledger_fields(%L, %s)', string_agg(c.column_id::text, ',' ORDER BY c.column_id),
                                 string_agg(format('%s.%I', alias, prefix || c.column_name), ', ' ORDER BY c.column_id)) AS p
                  FROM (SELECT c.*, (row_number() OVER (ORDER BY c.column_id) - 1) / 90 AS g
                          FROM koherent.tracked_column c
                         WHERE c.config_id = cfg.id AND c.live_from <= marks[i]
                           AND (c.live_until IS NULL OR c.live_until > marks[i])) c
                 GROUP BY g) s;
        IF hi IS NULL AND i = 1 THEN
            RETURN obj;
        ELSIF hi IS NULL THEN
            branches := branches || format(' ELSE %s END', obj);
        ELSE
            branches := branches || format(' WHEN %s.history_id < %s THEN %s', alias, hi, obj);
        END IF;
    END LOOP;
    -- entries before the first mark (none are written so) have no columns
    RETURN format('(CASE WHEN %s.history_id < %s THEN ''{}''', alias, marks[1]) || branches || ')';
END $$;

-- The SELECT of the ledger records of a history table's entries: (config, history_id, context,
-- record: JSON text), for the entries `filter` (SQL over alias h) lets through. Seal and verify
-- hash these records; the audit export ships them.
CREATE FUNCTION koherent._ledger_records_sql(cfg koherent.tracked_config, filter text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format($q$
        SELECT %1$s AS config, h.history_id, h.history_context,
               '{"config":%1$s,"id":' || h.history_id || ',"kind":' || to_json(h.history_kind::text)::text
               || ',"date":' || coalesce('"' || koherent._ledger_time(h.history_date) || '"', 'null')
               || ',"context":' || coalesce('"' || h.history_context::text || '"', 'null')
               || ',"row":' || %3$s || ',"old":' || %4$s || '}' AS record
          FROM %2$s h WHERE %5$s
        $q$, cfg.id, format('koherent_history.%I', cfg.history_table),
        koherent._ledger_image_expr(cfg, '', 'h'), koherent._ledger_image_expr(cfg, 'old:', 'h'), filter)
$$;

-- The SELECT of the ledger hashes of a history table's entries: (config, history_id, context,
-- hash), for the entries `filter` (SQL over alias h) lets through.
CREATE FUNCTION koherent._ledger_entries_sql(cfg koherent.tracked_config, filter text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('SELECT r.config, r.history_id, r.history_context, koherent._ledger_hash_text(''entry'', r.record) FROM (%s) r',
                  koherent._ledger_records_sql(cfg, filter))
$$;

-- A task row's ledger record: every column.
CREATE FUNCTION koherent._ledger_task_record(t koherent.task) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'issuer', t.issuer, 'task_id', t.task_id, 'parent_task_id', t.parent_task_id,
        'root_task_id', t.root_task_id, 'assigner_sub', t.assigner_sub, 'caller_sub', t.caller_sub,
        'agent_sub', t.agent_sub, 'agent_client_id', t.agent_client_id, 'token_id', t.token_id,
        'args_hash', t.args_hash, 'args_hash_algorithm', t.args_hash_algorithm, 'claims', t.claims,
        'token', t.token, 'created_at', koherent._ledger_time(t.created_at))
        -- (0.7.0's columns only where they hold something: records without them hash as before)
        || CASE WHEN t.organization IS NULL THEN '{}' ELSE jsonb_build_object('organization', t.organization) END
        || CASE WHEN t.assigner_user IS NULL THEN '{}' ELSE jsonb_build_object('assigner_user', t.assigner_user) END
$$;

-- A task row's hash (null for no task: an outer join's row of nulls).
CREATE FUNCTION koherent._ledger_task_hash(t koherent.task) RETURNS bytea
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN t.task_id IS NOT NULL THEN koherent._ledger_hash('task', koherent._ledger_task_record(t)) END
$$;

-- A context row's ledger fields: every column.
CREATE FUNCTION koherent._ledger_context_fields(c koherent.transaction_auth_context) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'id', c.id, 'txid', c.txid::text, 'task_id', c.task_id, 'issuer', c.issuer,
        'changed_by', c.changed_by, 'client_id', c.client_id, 'db_role', c.db_role,
        'effective_role', to_jsonb(c) -> 'effective_role', 'application_name', c.application_name,
        'client_addr', c.client_addr::text, 'backend_pid', c.backend_pid,
        'created_at', koherent._ledger_time(c.created_at), 'metadata', c.metadata)
        || jsonb_strip_nulls(jsonb_build_object('organization', to_jsonb(c) -> 'organization',
                                                'app_user', to_jsonb(c) -> 'app_user'))
$$;

-- The hash of a context's entry index (where each entry is: configs, ids, hash prefixes).
CREATE FUNCTION koherent._ledger_index_hash(configs integer[], ids bigint[], prefixes bytea) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT encode(sha256(convert_to(array_to_string(configs, ',') || '|' || array_to_string(ids, ',') || '|'
                                    || encode(prefixes, 'hex'), 'UTF8')), 'hex')
$$;

-- The context's hash from its parts (see koherent-token's ledger::context_record).
CREATE FUNCTION koherent._ledger_context_hash(fields jsonb, task_hash bytea, entries_root bytea, entries bigint,
                                              index text) RETURNS bytea
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._ledger_hash('context', jsonb_build_object(
        'fields', fields, 'task', encode(task_hash, 'hex'), 'entries_root', encode(entries_root, 'hex'),
        'entries', entries, 'index', index))
$$;

-- What the tracked columns' history is now: the configs (id, history table, since) and the
-- columns (column_id, config, name, type, epochs), in id order.
CREATE FUNCTION koherent._ledger_schema() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'configs', coalesce((SELECT jsonb_agg(jsonb_build_object('id', c.id, 'history_table', c.history_table,
                                                                 'tracked_since', koherent._ledger_time(c.tracked_since)) ORDER BY c.id)
                               FROM koherent.tracked_config c), '[]'),
        'columns', coalesce((SELECT jsonb_agg(jsonb_build_object('column_id', t.column_id, 'config', t.config_id,
                                                                 'type', t.type_sql, 'live_from', t.live_from,
                                                                 'live_until', t.live_until) ORDER BY t.column_id)
                               FROM koherent.tracked_column t), '[]'))
$$;

-- The Merkle root of a block's contexts' hashes, in their order.
CREATE FUNCTION koherent._ledger_contexts_root(blk bigint) RETURNS bytea
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._ledger_merkle(coalesce(array_agg(l.hash ORDER BY l.position), '{}'))
      FROM koherent.ledger_context l WHERE l.block = blk
$$;

-- A block's ledger record (what its hash covers).
CREATE FUNCTION koherent._ledger_block_record(b koherent.ledger_block) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'format', b.format, 'database', (SELECT m.database_id::text FROM koherent.ledger_meta m),
        'block', b.block, 'prev', encode(b.prev_hash, 'hex'), 'contexts_root', encode(b.contexts_root, 'hex'),
        'contexts', b.contexts, 'entries', b.entries, 'schema', encode(b.schema_hash, 'hex'),
        'sealed_at', koherent._ledger_time(b.sealed_at))
$$;

CREATE FUNCTION koherent._ledger_block_hash(b koherent.ledger_block) RETURNS bytea
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._ledger_hash('block', koherent._ledger_block_record(b))
$$;

CREATE FUNCTION koherent.digest() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'format', b.format, 'database', (SELECT m.database_id::text FROM koherent.ledger_meta m),
        'database_name', current_database(), 'block', b.block, 'hash', encode(b.hash, 'hex'),
        'contexts', (SELECT sum(x.contexts) FROM koherent.ledger_block x WHERE x.block <= b.block),
        'entries', (SELECT sum(x.entries) FROM koherent.ledger_block x WHERE x.block <= b.block),
        'sealed_at', koherent._ledger_time(b.sealed_at))
      FROM koherent.ledger_block b ORDER BY b.block DESC LIMIT 1
$$;
COMMENT ON FUNCTION koherent.digest() IS
  'The latest block''s digest (null before the first seal): keep it outside the database; verify_history(digests) proves the chain still extends it.';

-- Lock every history table in `mode` (ACCESS SHARE: writers go on; a change of a tracked
-- table's columns in progress, which renames, retypes or retires its history table's columns,
-- or a prune() dropping partitions, commits first). The statements after it read the columns,
-- their epochs and the partitions as they are then. A history table dropped meanwhile is left
-- out. All at once without waiting; when one is busy, none is held while waiting for each busy
-- one alone (a transaction altering two tracked tables would otherwise deadlock with a seal
-- holding the first while it waits for the second), then all again.
CREATE FUNCTION koherent._lock_history(mode text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tables text[];
    t text;
BEGIN
    IF mode IS DISTINCT FROM 'ACCESS SHARE' THEN
        RAISE EXCEPTION 'koherent._lock_history: unknown mode %', mode USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        SELECT array_agg(format('koherent_history.%I', c.history_table) ORDER BY c.id) INTO tables
          FROM koherent.tracked_config c WHERE to_regclass(format('koherent_history.%I', c.history_table)) IS NOT NULL;
        IF tables IS NULL THEN
            RETURN;
        END IF;
        BEGIN
            EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE NOWAIT', array_to_string(tables, ', '));
            RETURN;
        EXCEPTION WHEN lock_not_available OR undefined_table THEN
            NULL;  -- (the subtransaction's locks are released)
        END;
        FOREACH t IN ARRAY tables LOOP
            BEGIN
                EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE', t);
                RAISE EXCEPTION USING ERRCODE = 'P0004';  -- waited for it: let it go again
            EXCEPTION WHEN assert_failure OR undefined_table THEN
                NULL;
            END;
        END LOOP;
    END LOOP;
END $$;

-- Seal every committed context not sealed yet into a new block (none when there is nothing to
-- seal). The extension owner's (EXECUTE is not granted to anyone else); one sealer at a time.
-- (jit = off in seal, verify_history and audit_export: their generated statements over every
-- history table look costly to the planner, and compiling them took longer than running them:
-- verify_history of one entry 2.6 s with JIT, 21 ms without; of 200k entries 4.2 s and 2.4 s)
CREATE FUNCTION koherent.seal() RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres' SET extra_float_digits = 1 SET bytea_output = 'hex' SET lc_monetary = 'C'
SET max_parallel_workers_per_gather = 0 SET jit = off SET enable_bitmapscan = on AS $$
DECLARE
    ctxs uuid[];
    since timestamptz;
    cfg koherent.tracked_config;
    blk bigint;
    b koherent.ledger_block;
    n_entries bigint;
    pruned jsonb;
    events bigint[];
BEGIN
    -- the contexts are read after the lock: a snapshot older than it could miss a block sealed
    -- meanwhile and seal its contexts again
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'koherent: seal() runs in a READ COMMITTED transaction, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Call it in a READ COMMITTED transaction: BEGIN ISOLATION LEVEL READ COMMITTED; SELECT koherent.seal(); COMMIT (also where default_transaction_isolation is stricter).';
    END IF;
    LOCK TABLE koherent.ledger_block IN EXCLUSIVE MODE;
    -- and every history table (ACCESS SHARE: writers go on): a change of a tracked table's
    -- columns in progress (its history table's columns renamed, retyped, retired) is committed
    -- first, and what follows reads the columns and their epochs as they are then
    PERFORM koherent._lock_history('ACCESS SHARE');
    -- the committed contexts this snapshot sees that no block holds (never this transaction's
    -- own: it has not committed), in the order they began
    SELECT array_agg(c.id ORDER BY c.created_at, c.id), min(c.created_at) INTO ctxs, since
      FROM koherent.transaction_auth_context c
     WHERE NOT EXISTS (SELECT 1 FROM koherent.ledger_context l WHERE l.context_id = c.id)
       AND c.id IS DISTINCT FROM koherent.current_context_id();
    -- retention events (koherent.prune) not sealed yet: the block's schema lists them
    SELECT jsonb_agg(koherent._ledger_retention_record(e) ORDER BY e.id), array_agg(e.id)
      INTO pruned, events
      FROM koherent.retention_event e
     WHERE e.block IS NULL  -- (and none a block holds already: each is sealed once)
       AND NOT EXISTS (SELECT 1 FROM koherent.ledger_block x, jsonb_array_elements(coalesce(x.schema->'pruned', '[]')) s
                        WHERE s->>'id' = e.id::text);
    IF ctxs IS NULL AND events IS NULL THEN
        RETURN coalesce(koherent.digest(), '{}') || '{"sealed": 0}';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM koherent.ledger_block) THEN
        -- the first block: the database's identity (a restored dump keeps its blocks and its
        -- identity; a database copied from a template without blocks gets one of its own)
        DELETE FROM koherent.ledger_meta;
        INSERT INTO koherent.ledger_meta (database_id) VALUES (gen_random_uuid());
    END IF;
    CREATE TEMP TABLE koherent_seal (config integer, history_id bigint, context uuid, hash bytea) ON COMMIT DROP;
    -- an entry is dated at or after its transaction began: the BRIN index's date column keeps
    -- the scan to the history since the oldest of these contexts began
    FOR cfg IN SELECT * FROM koherent.tracked_config WHERE ctxs IS NOT NULL ORDER BY id LOOP
        CONTINUE WHEN to_regclass(format('koherent_history.%I', cfg.history_table)) IS NULL;
        EXECUTE 'INSERT INTO pg_temp.koherent_seal ' ||
                koherent._ledger_entries_sql(cfg, 'h.history_date >= $1 AND h.history_context = ANY ($2)')
          USING since, ctxs;
    END LOOP;
    blk := coalesce((SELECT max(x.block) FROM koherent.ledger_block x), 0) + 1;
    INSERT INTO koherent.ledger_context (context_id, block, position, task_hash, entries_root, entries, hash,
                                         entry_configs, entry_ids, entry_hashes)
    SELECT c.id, blk, c.pos, th.h, coalesce(e.root, koherent._ledger_merkle('{}'::bytea[])), coalesce(e.n, 0),
           koherent._ledger_context_hash(koherent._ledger_context_fields(x), th.h,
                                         coalesce(e.root, koherent._ledger_merkle('{}'::bytea[])), coalesce(e.n, 0),
                                         koherent._ledger_index_hash(coalesce(e.configs, '{}'), coalesce(e.ids, '{}'),
                                                                     coalesce(e.h8, ''))),
           coalesce(e.configs, '{}'), coalesce(e.ids, '{}'), coalesce(e.h8, '')
      FROM unnest(ctxs) WITH ORDINALITY AS c(id, pos)
      JOIN koherent.transaction_auth_context x ON x.id = c.id
      LEFT JOIN koherent.task t ON t.task_id = x.task_id AND t.issuer = x.issuer
      CROSS JOIN LATERAL (SELECT koherent._ledger_task_hash(t) AS h) th
      LEFT JOIN (SELECT s.context, koherent._ledger_merkle(array_agg(s.hash ORDER BY s.config, s.history_id)) AS root,
                        count(*) AS n, array_agg(s.config ORDER BY s.config, s.history_id) AS configs,
                        array_agg(s.history_id ORDER BY s.config, s.history_id) AS ids,
                        string_agg(substring(s.hash FROM 1 FOR 8), ''::bytea ORDER BY s.config, s.history_id) AS h8
                   FROM pg_temp.koherent_seal s GROUP BY s.context) e ON e.context = c.id;
    SELECT count(*) INTO n_entries FROM pg_temp.koherent_seal;
    DROP TABLE pg_temp.koherent_seal;
    b.block := blk;
    b.format := 'koherent-ledger-v1';
    b.prev_hash := (SELECT x.hash FROM koherent.ledger_block x WHERE x.block = blk - 1);
    b.contexts_root := koherent._ledger_contexts_root(blk);
    b.contexts := coalesce(cardinality(ctxs), 0);
    b.entries := n_entries;
    b.schema := koherent._ledger_schema();
    IF events IS NOT NULL THEN
        b.schema := b.schema || jsonb_build_object('pruned', pruned);
        UPDATE koherent.retention_event SET block = blk WHERE id = ANY (events);
    END IF;
    b.schema_hash := koherent._ledger_hash('schema', b.schema);
    b.sealed_at := clock_timestamp();
    b.hash := koherent._ledger_block_hash(b);
    INSERT INTO koherent.ledger_block SELECT b.*;
    RETURN koherent.digest() || jsonb_build_object('sealed', b.contexts, 'sealed_entries', b.entries);
END $$;
COMMENT ON FUNCTION koherent.seal() IS
  'Seal every committed, not yet sealed context (with its entries and task) into a new block; returns the new digest.';

-- Recompute everything sealed: no rows means intact. Problems: entry_changed, entry_missing,
-- entry_added, entry_moved, unsealed, context_missing, context_changed, task_changed,
-- task_missing, entries_changed, block_changed, block_missing, chain_broken, schema_changed,
-- digest_mismatch, pruned_unsealed, retention_changed, retention_missing, pruned_mismatch; and one row `pruned`
-- (not a problem) per history partition koherent.prune() dropped (README, "The ledger").
-- A sealed entry no longer in history whose id a sealed retention event of its table lists
-- was pruned, not deleted; the entries root of its context cannot be recomputed (the ledger
-- keeps 8 bytes of each entry's hash), its other entries are checked one by one.
CREATE FUNCTION koherent.verify_history(digests jsonb DEFAULT NULL)
RETURNS TABLE (problem text, table_name text, history_id bigint, context_id uuid, detail text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres' SET extra_float_digits = 1 SET bytea_output = 'hex' SET lc_monetary = 'C'
SET max_parallel_workers_per_gather = 0 SET jit = off AS $$
DECLARE
    entries text;
BEGIN
    IF digests IS NOT NULL AND jsonb_typeof(digests) <> 'array' THEN
        RAISE EXCEPTION 'koherent: digests must be a JSON array of what koherent.digest() returned'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- a change of columns or a prune() in progress commits first; in READ COMMITTED the
    -- statements below then see it (in REPEATABLE READ the transaction's snapshot may predate it)
    PERFORM koherent._lock_history('ACCESS SHARE');
    -- one read-only statement (it runs in a read-only transaction and on a standby): every
    -- entry's hash (v), every sealed entry's place (i), then the problems
    SELECT coalesce(string_agg(koherent._ledger_entries_sql(c, 'true'), ' UNION ALL ' ORDER BY c.id),
                    'SELECT NULL::integer, NULL::bigint, NULL::uuid, NULL::bytea WHERE false')
      INTO entries
      FROM koherent.tracked_config c WHERE to_regclass(format('koherent_history.%I', c.history_table)) IS NOT NULL;
    RETURN QUERY EXECUTE format($q$
    WITH v (config, history_id, context, hash) AS MATERIALIZED (%s),
    i AS MATERIALIZED (
        SELECT l.context_id AS context, u.config, u.history_id,
               substring(l.entry_hashes FROM ((u.i - 1) * 8 + 1)::integer FOR 8) AS h8
          FROM koherent.ledger_context l, unnest(l.entry_configs, l.entry_ids) WITH ORDINALITY AS u(config, history_id, i)),
    names AS (SELECT c.id, format('%%I.%%I', c.schema_name, c.table_name) AS name FROM koherent.tracked_config c),
    -- retention events that koherent.prune() could have written: a partition wholly in the past
    -- when dropped, of a table whose history is partitioned (set_retention); only those explain
    -- a missing entry
    pe AS MATERIALIZED (
        SELECT e.id FROM koherent.retention_event e
         WHERE e.range_to <= e.dropped_at AND (e.range_from IS NULL OR e.range_from < e.range_to)
           AND EXISTS (SELECT 1 FROM koherent.tracked_config c
                         JOIN pg_catalog.pg_class r ON r.oid = to_regclass(format('koherent_history.%%I', c.history_table))
                        WHERE c.id = e.config_id AND r.relkind = 'p')),
    ev AS MATERIALIZED (SELECT e.id, e.config_id, e.range_from, e.range_to, r AS ids
                          FROM koherent.retention_event e, unnest(e.id_ranges) r WHERE e.id IN (SELECT pe.id FROM pe)),
    -- retention events as the blocks sealed them
    sev AS MATERIALIZED (SELECT (s->>'id')::bigint AS id, b.block, s AS rec
                           FROM koherent.ledger_block b, jsonb_array_elements(coalesce(b.schema->'pruned', '[]')) s),
    -- entries: each sealed one as it was sealed, and in its context (moved: where it is now);
    -- event: the retention event that dropped a missing one
    ep0 AS MATERIALIZED (
        SELECT CASE WHEN v.history_id IS NULL THEN 'entry_missing'
                    WHEN i.history_id IS NULL THEN 'entry_added'
                    WHEN v.context IS DISTINCT FROM i.context THEN 'entry_moved'
                    ELSE 'entry_changed' END AS problem,
               (SELECT n.name FROM names n WHERE n.id = coalesce(v.config, i.config)) AS table_name,
               coalesce(v.history_id, i.history_id) AS history_id, coalesce(i.context, v.context) AS context_id,
               CASE WHEN v.history_id IS NULL THEN 'a sealed entry is no longer in history'
                    WHEN i.history_id IS NULL THEN 'an entry of a sealed context that its block does not hold'
                    WHEN v.context IS DISTINCT FROM i.context THEN format('sealed in context %%s, now in %%s', i.context, v.context)
                    ELSE 'its recorded values differ from what was sealed' END AS detail,
               v.context AS other_context, coalesce(v.config, i.config) AS config,
               CASE WHEN v.history_id IS NULL
                    -- (an entry is dated at or after its context began, and before the block that
                    -- sealed it: a partition that ended before the one or began after the other
                    -- cannot have held it)
                    THEN (SELECT min(x.id) FROM ev x WHERE x.config_id = i.config AND x.ids @> i.history_id
                             AND x.range_to > (SELECT t.created_at FROM koherent.transaction_auth_context t
                                                WHERE t.id = i.context)
                             AND (x.range_from IS NULL
                                  OR x.range_from <= (SELECT b.sealed_at FROM koherent.ledger_context l
                                                        JOIN koherent.ledger_block b ON b.block = l.block
                                                       WHERE l.context_id = i.context))) END AS event
          FROM (SELECT * FROM v
                 WHERE EXISTS (SELECT 1 FROM koherent.ledger_context l WHERE l.context_id = v.context)
                    OR EXISTS (SELECT 1 FROM i WHERE i.config = v.config AND i.history_id = v.history_id)) v
          FULL JOIN i ON i.config = v.config AND i.history_id = v.history_id
         WHERE v.history_id IS NULL OR i.history_id IS NULL OR v.context IS DISTINCT FROM i.context
            OR substring(v.hash FROM 1 FOR 8) <> i.h8),
    ep AS MATERIALIZED (SELECT * FROM ep0 WHERE ep0.event IS NULL),
    -- retention events: each sealed by the block it names, as it is now; each sealed one still there
    rp AS (
        SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM sev WHERE sev.id = e.id) THEN 'pruned_unsealed'
                    -- sealed once, by the block it names, as it is now
                    WHEN (SELECT count(*) FROM sev WHERE sev.id = e.id) > 1
                      OR e.block IS DISTINCT FROM (SELECT min(sev.block) FROM sev WHERE sev.id = e.id)
                      OR NOT EXISTS (SELECT 1 FROM sev WHERE sev.id = e.id AND sev.block = e.block
                                        AND sev.rec = koherent._ledger_retention_record(e))
                         THEN 'retention_changed'
                    -- prune() could have written it (pe); it covers no more sealed entries than
                    -- it dropped, and no partition of its range is still there
                    WHEN NOT EXISTS (SELECT 1 FROM pe WHERE pe.id = e.id)
                      OR (SELECT count(*) FROM ep0 q WHERE q.event = e.id) > e.entries
                      OR EXISTS (SELECT 1 FROM koherent.tracked_config c,
                                        koherent._partitions(to_regclass(format('koherent_history.%%I', c.history_table))) p
                                  WHERE c.id = e.config_id AND to_regclass(format('koherent_history.%%I', c.history_table)) IS NOT NULL
                                    AND (p.lo IS NULL OR p.lo < e.range_to) AND (e.range_from IS NULL OR p.hi > e.range_from))
                         THEN 'pruned_mismatch'
                    ELSE 'pruned' END::text,
               (SELECT n.name FROM names n WHERE n.id = e.config_id), NULL::bigint, NULL::uuid,
               format('partition %%s [%%s, %%s) dropped at %%s by %%s: %%s entries, %%s of them sealed; retention event %%s, %%s',
                      e.partition_name, coalesce(e.range_from::text, 'MINVALUE'), e.range_to, e.dropped_at,
                      e.dropped_by, e.entries, (SELECT count(*) FROM ep0 q WHERE q.event = e.id), e.id,
                      coalesce('block ' || e.block, 'not sealed yet'))
          FROM koherent.retention_event e
        UNION ALL
        SELECT 'retention_missing', NULL, NULL, NULL, format('block %%s sealed retention event %%s, which is gone', b.block, s->>'id')
          FROM koherent.ledger_block b, jsonb_array_elements(coalesce(b.schema->'pruned', '[]')) s
         WHERE NOT EXISTS (SELECT 1 FROM koherent.retention_event e WHERE e.id::text = s->>'id')),
    -- entries of contexts no block holds (and that no block holds under another context)
    un AS (
        SELECT 'unsealed'::text, (SELECT n.name FROM names n WHERE n.id = v.config), NULL::bigint, v.context,
               format('%%s entries not sealed yet', count(*))
          FROM v
         WHERE NOT EXISTS (SELECT 1 FROM koherent.ledger_context l WHERE l.context_id = v.context)
           AND NOT EXISTS (SELECT 1 FROM i WHERE i.config = v.config AND i.history_id = v.history_id)
         GROUP BY v.config, v.context),
    -- contexts: their rows, tasks and entries as sealed
    cp AS (
        SELECT p.problem, NULL::text, NULL::bigint, p.context_id, p.detail
          FROM (SELECT l.context_id,
                       CASE WHEN x.id IS NULL THEN 'context_missing'
                            WHEN l.task_hash IS NOT NULL AND t.task_id IS NULL THEN 'task_missing'
                            WHEN l.task_hash IS DISTINCT FROM koherent._ledger_task_hash(t) THEN 'task_changed'
                            WHEN l.hash <> koherent._ledger_context_hash(koherent._ledger_context_fields(x), l.task_hash,
                                                                         l.entries_root, l.entries,
                                                                         koherent._ledger_index_hash(l.entry_configs, l.entry_ids,
                                                                                                     l.entry_hashes))
                                 THEN 'context_changed'
                            WHEN l.entries_root <> coalesce(e.root, koherent._ledger_merkle('{}'::bytea[]))
                                 AND NOT EXISTS (SELECT 1 FROM ep q WHERE l.context_id IN (q.context_id, q.other_context))
                                 AND NOT EXISTS (SELECT 1 FROM ep0 q WHERE q.event IS NOT NULL AND q.context_id = l.context_id)
                                 THEN 'entries_changed'
                       END AS problem,
                       CASE WHEN x.id IS NULL THEN format('sealed in block %%s; no context row now', l.block)
                            WHEN l.task_hash IS NOT NULL AND t.task_id IS NULL THEN format('task %%s of issuer %%s is gone', x.task_id, x.issuer)
                            ELSE format('block %%s', l.block) END AS detail
                  FROM koherent.ledger_context l
                  LEFT JOIN koherent.transaction_auth_context x ON x.id = l.context_id
                  LEFT JOIN koherent.task t ON t.task_id = x.task_id AND t.issuer = x.issuer
                  LEFT JOIN (SELECT v.context, koherent._ledger_merkle(array_agg(v.hash ORDER BY v.config, v.history_id)) AS root
                               FROM v GROUP BY v.context) e ON e.context = l.context_id) p
         WHERE p.problem IS NOT NULL),
    -- blocks: numbered 1.., each covering its contexts, chained to the one before
    bp AS (
        SELECT 'block_missing'::text, NULL::text, NULL::bigint, NULL::uuid, format('block %%s', g)
          FROM generate_series(1, (SELECT max(b.block) FROM koherent.ledger_block b)) g
         WHERE NOT EXISTS (SELECT 1 FROM koherent.ledger_block b WHERE b.block = g)
        UNION ALL
        SELECT 'block_missing', NULL, NULL, l.context_id, format('block %%s of this context', l.block)
          FROM koherent.ledger_context l WHERE NOT EXISTS (SELECT 1 FROM koherent.ledger_block b WHERE b.block = l.block)
        UNION ALL
        SELECT 'block_changed', NULL, NULL, NULL, format('block %%s: %%s', b.block, c.w)
          FROM koherent.ledger_block b
         CROSS JOIN LATERAL (SELECT CASE
                  WHEN b.format <> 'koherent-ledger-v1' THEN 'unknown format ' || b.format
                  WHEN b.hash <> koherent._ledger_block_hash(b) THEN 'its hash does not match its fields'
                  WHEN b.schema_hash <> koherent._ledger_hash('schema', b.schema) THEN 'its schema does not match its hash'
                  WHEN b.contexts_root IS DISTINCT FROM koherent._ledger_contexts_root(b.block)
                       OR b.contexts <> (SELECT count(*) FROM koherent.ledger_context l WHERE l.block = b.block)
                       THEN 'its contexts differ from what was sealed'
                  WHEN b.entries <> (SELECT coalesce(sum(l.entries), 0) FROM koherent.ledger_context l WHERE l.block = b.block)
                       THEN 'its entry count differs from the sum of its contexts' END AS w) c
         WHERE c.w IS NOT NULL
        UNION ALL
        SELECT 'chain_broken', NULL, NULL, NULL, format('block %%s does not name block %%s''s hash', b.block, b.block - 1)
          FROM koherent.ledger_block b LEFT JOIN koherent.ledger_block p ON p.block = b.block - 1
         WHERE (b.block = 1 AND b.prev_hash IS NOT NULL) OR (b.block > 1 AND p.block IS NOT NULL AND b.prev_hash IS DISTINCT FROM p.hash)),
    -- the tracked columns' history: what the last block recorded still holds (epochs only end,
    -- and columns only come)
    last AS (SELECT b.schema FROM koherent.ledger_block b ORDER BY b.block DESC LIMIT 1),
    sp AS (
        SELECT 'schema_changed'::text, NULL::text, NULL::bigint, NULL::uuid,
               format('tracked column %%s (config %%s): %%s', s->>'column_id', s->>'config',
                      CASE WHEN t.column_id IS NULL THEN 'gone' ELSE 'its type or epoch changed' END)
          FROM last, jsonb_array_elements(last.schema->'columns') s
          LEFT JOIN koherent.tracked_column t ON t.column_id = (s->>'column_id')::bigint
         WHERE t.column_id IS NULL OR t.config_id <> (s->>'config')::int OR t.type_sql <> s->>'type'
            OR t.live_from <> (s->>'live_from')::bigint
            OR (s->'live_until' <> 'null' AND t.live_until IS DISTINCT FROM (s->>'live_until')::bigint)
        UNION ALL
        SELECT 'schema_changed', NULL, NULL, NULL, format('config %%s: %%s', s->>'id',
                   CASE WHEN c.id IS NULL THEN 'gone' ELSE 'its history table or start changed' END)
          FROM last, jsonb_array_elements(last.schema->'configs') s
          LEFT JOIN koherent.tracked_config c ON c.id = (s->>'id')::int
         WHERE c.id IS NULL OR c.history_table <> s->>'history_table'
            OR koherent._ledger_time(c.tracked_since) <> s->>'tracked_since'),
    -- digests kept outside: the chain must still hold each
    dp AS (
        SELECT 'digest_mismatch'::text, NULL::text, NULL::bigint, NULL::uuid, format('digest of block %%s: %%s', d->>'block', x.w)
          FROM jsonb_array_elements(coalesce($1, '[]')) d
         CROSS JOIN LATERAL (SELECT CASE
                  WHEN d->>'database' IS DISTINCT FROM (SELECT m.database_id::text FROM koherent.ledger_meta m)
                       THEN 'another database''s'
                  WHEN NOT EXISTS (SELECT 1 FROM koherent.ledger_block b WHERE b.block::text = d->>'block')
                       THEN 'no such block'
                  WHEN (SELECT encode(b.hash, 'hex') FROM koherent.ledger_block b WHERE b.block::text = d->>'block')
                       IS DISTINCT FROM d->>'hash'
                       THEN 'the block''s hash is not the digest''s'
                  WHEN (SELECT encode(koherent._ledger_block_hash(b), 'hex') FROM koherent.ledger_block b
                         WHERE b.block::text = d->>'block') IS DISTINCT FROM d->>'hash'
                       THEN 'the block no longer hashes to the digest' END AS w) x
         WHERE x.w IS NOT NULL)
    SELECT * FROM (SELECT ep.problem, ep.table_name, ep.history_id, ep.context_id, ep.detail FROM ep
                   UNION ALL SELECT * FROM un UNION ALL SELECT * FROM cp UNION ALL SELECT * FROM bp
                   UNION ALL SELECT * FROM sp UNION ALL SELECT * FROM dp UNION ALL SELECT * FROM rp) r (problem, table_name, history_id, context_id, detail)
     ORDER BY 1, 2 NULLS FIRST, 3 NULLS FIRST, 4 NULLS FIRST, 5
    $q$, entries) USING digests;
END $$;
COMMENT ON FUNCTION koherent.verify_history(jsonb) IS
  'Recompute every sealed entry, context, task and block (and check digests kept outside): one row per problem; none means intact.';

-- Where the entries of sealed contexts are, per history table (config id): history id ranges
-- from the ledger's index of each context's entries (ledger_context.entry_configs/entry_ids,
-- covered by the context's hash), each context's span in each table, spans merged where they
-- are less than max(10000, the table's whole span / 32) ids apart (so at most 33 ranges per
-- table). The readers by task look these up through the range index (koherent._range_index);
-- contexts not sealed yet are not here, and are looked up by context.
CREATE FUNCTION koherent._sealed_ranges(ctx uuid[]) RETURNS TABLE (config_id integer, lo bigint, hi bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH c AS (
        -- (koherent._entry_spans: min and max per table without a row per entry)
        SELECT u.cfg, u.lo, u.hi
          FROM koherent.ledger_context l CROSS JOIN LATERAL koherent._entry_spans(l.entry_configs, l.entry_ids) AS u
         WHERE l.context_id = ANY (ctx)
    ), s AS (
        SELECT c.cfg, c.lo, c.hi,
               max(c.hi) OVER (PARTITION BY c.cfg ORDER BY c.lo, c.hi
                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach,
               greatest(10000, (max(c.hi) OVER (PARTITION BY c.cfg) - min(c.lo) OVER (PARTITION BY c.cfg)) / 32) AS gap
          FROM c
    ), g AS (
        SELECT s.cfg, s.lo, s.hi,
               count(*) FILTER (WHERE s.reach IS NULL OR s.lo > s.reach + s.gap)
                   OVER (PARTITION BY s.cfg ORDER BY s.lo, s.hi) AS grp
          FROM s
    )
    SELECT g.cfg, min(g.lo), max(g.hi) FROM g GROUP BY g.cfg, g.grp
$$;

-- The ranges of koherent._sealed_ranges as one condition per history table (alias h):
-- "(h.history_id BETWEEN lo AND hi OR ...)".
CREATE FUNCTION koherent._sealed_conditions(ctx uuid[]) RETURNS TABLE (config_id integer, cond text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.config_id, '(' || string_agg(format('h.history_id BETWEEN %s AND %s', r.lo, r.hi), ' OR ' ORDER BY r.lo) || ')'
      FROM koherent._sealed_ranges(ctx) r GROUP BY r.config_id
$$;

-- The condition that finds the entries of contexts `ctx` in one history table (alias h), for
-- the readers by task: by the ledger's id ranges of that table (through the range index) when
-- every context is sealed, `false` when sealed contexts wrote nothing there, by context
-- otherwise. `ctx_sql` is how the statement names the array (a parameter or a literal).
-- The moment the oldest of these contexts began: every entry of theirs is dated at or after it
-- (a statement's date is never before its transaction's start), so a lookup of unsealed
-- contexts by the bloom of the lookup index can add `history_date >= since`, which lets the
-- planner read only the history written since (through the range index) when that is less.
CREATE FUNCTION koherent._contexts_since(ctx uuid[]) RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(min(c.created_at), '-infinity') FROM koherent.transaction_auth_context c WHERE c.id = ANY (ctx)
$$;

-- A moment as SQL text that reads back as the same moment in any session: ISO digits in UTC
-- (the session's DateStyle may write a zone abbreviation that input reads as another zone).
CREATE FUNCTION koherent._timestamptz_literal(t timestamptz) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN t IS NULL THEN 'NULL::timestamptz'
                WHEN NOT isfinite(t) THEN format('%L::timestamptz', t::text)
                ELSE format('%L::timestamptz', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00') END
$$;

-- The condition (alias h) that finds the entries of unsealed contexts `ctx_sql` that began at
-- `since` or later in history table `hist`. When the history since then is a short tail of the
-- table (koherent._recent_history), through the range index by date alone (the context test
-- written so that no index takes it); otherwise by the bloom filters of the lookup index alone
-- (the date test so written: the planner, which knows nothing of the ids and dates of entries
-- written since the last ANALYZE, would read all history from `since` on through the range
-- index); partitioned history by both, so that its partitions are pruned by date. `since_sql`:
-- how the statement names the moment (a parameter or a literal).
CREATE FUNCTION koherent._unsealed_condition(hist regclass, ctx_sql text, since timestamptz, since_sql text)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = hist AND c.relkind = 'p')
                THEN format('h.history_context = ANY (%s) AND h.history_date >= %s', ctx_sql, since_sql)
                WHEN koherent._recent_history(hist, since)
                THEN format('(h.history_context = ANY (%s)) IS TRUE AND h.history_date >= %s', ctx_sql, since_sql)
                ELSE format('h.history_context = ANY (%s) AND (h.history_date >= %s) IS TRUE', ctx_sql, since_sql) END
$$;

CREATE FUNCTION koherent._context_filter(config_id integer, ctx uuid[], ctx_sql text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM unnest(ctx) u(id)
                      WHERE NOT EXISTS (SELECT 1 FROM koherent.ledger_context l WHERE l.context_id = u.id))
        THEN (SELECT koherent._unsealed_condition(format('koherent_history.%I', c.history_table)::regclass, ctx_sql, s.since,
                                                  koherent._timestamptz_literal(s.since))
                FROM koherent.tracked_config c, koherent._contexts_since(ctx) s(since)
               WHERE c.id = _context_filter.config_id)
        ELSE coalesce((SELECT format('(h.history_context = ANY (%s)) IS TRUE AND %s', ctx_sql, r.cond)
                         FROM koherent._sealed_conditions(ctx) r WHERE r.config_id = _context_filter.config_id), 'false')
    END
$$;
