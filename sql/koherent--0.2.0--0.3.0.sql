-- koherent 0.2.0 -> 0.3.0
--
-- A new history table starts without the row index (the btree on (primary key, history_id)):
-- track(..., row_index) now defaults to NULL, "leave it as it is", and expose() creates it,
-- since <table>_provenance(row) looks rows up by key. Tables tracked before keep their row index
-- (nothing is dropped here); track(t, row_index => false) drops it.
-- BRIN summarization leaves the write path: VACUUM and readers (task_changes, through the new
-- koherent._summarize) summarize complete ranges. The Rust side (same SQL signatures): the
-- context row is written without SPI once its task is known, set_task returns a jsonb flattened
-- once per verified token, the writer keeps a plan per trigger.

\echo Use "ALTER EXTENSION koherent UPDATE TO '0.3.0'" to load this file. \quit

-- The row index: a btree on (primary key, history_id) of a history table. It makes one row's
-- provenance an index lookup, and it is the largest part of what history costs a bulk write
-- (every entry is one more btree descent). expose() creates it; track(..., row_index) sets it.
CREATE FUNCTION koherent._create_row_index(hist regclass, pk name[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF koherent._row_index(hist) IS NULL THEN
        EXECUTE format('CREATE INDEX ON %s (%s, history_id)', hist,
                       (SELECT string_agg(format('%I', k), ', ') FROM unnest(pk) k));
    END IF;
END $$;
REVOKE ALL ON FUNCTION koherent._create_row_index(regclass, name[]) FROM PUBLIC;

-- Same signature, new default for row_index: CREATE OR REPLACE keeps the function's grants.
CREATE OR REPLACE FUNCTION koherent.track(tbl regclass, exclude text[] DEFAULT '{}', require_task boolean DEFAULT false,
                               row_index boolean DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r pg_class;
    nsp name;
    pk name[];
    cfg koherent.tracked_config;
    hname name;
    hist regclass;
    idx regclass;
    bad text;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'koherent.track: table must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO r FROM pg_class WHERE oid = tbl;
    nsp := (SELECT nspname FROM pg_namespace WHERE oid = r.relnamespace);
    IF r.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'koherent.track: % is not a table', tbl
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = format('Its kind is %s; only ordinary and partitioned tables can be tracked.',
                                  CASE r.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                                       WHEN 'f' THEN 'foreign table' WHEN 'S' THEN 'sequence'
                                       WHEN 'i' THEN 'index' ELSE r.relkind::text END);
    END IF;
    IF nsp IN ('pg_catalog', 'information_schema', 'pg_toast', 'koherent', 'koherent_history') THEN
        RAISE EXCEPTION 'koherent.track: % is a system or koherent table and cannot be tracked', tbl
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF r.relpersistence = 't' THEN
        RAISE EXCEPTION 'koherent.track: % is a temporary table and cannot be tracked', tbl
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = tbl) THEN
        RAISE EXCEPTION 'koherent.track: % is a partition or child table', tbl
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Track the partitioned table itself; its partitions are covered.';
    END IF;
    pk := koherent._pk_columns(tbl);
    IF pk IS NULL THEN
        RAISE EXCEPTION 'koherent.track: table % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'History identifies rows by their primary key; add one first.';
    END IF;
    exclude := coalesce(exclude, '{}');
    SELECT string_agg(x, ', ') INTO bad FROM unnest(exclude) x
     WHERE NOT EXISTS (SELECT 1 FROM koherent._source_columns(tbl) s WHERE s.attname = x);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'koherent.track: % has no column(s) %', tbl, bad USING ERRCODE = 'undefined_column';
    END IF;
    SELECT string_agg(x, ', ') INTO bad FROM unnest(exclude) x WHERE x = ANY (pk);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'koherent.track: primary key column(s) % cannot be excluded', bad
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(s.attname, ', ') INTO bad FROM koherent._source_columns(tbl) s
     WHERE s.attname IN ('history_id', 'history_kind', 'history_date', 'history_context')
        OR s.attname LIKE 'old:%' OR s.attname LIKE '%@%';
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'koherent.track: column name(s) % are reserved by koherent history tables', bad
            USING ERRCODE = 'duplicate_column';
    END IF;

    LOCK TABLE koherent.tracked_config IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO cfg FROM koherent.tracked_config WHERE relid = tbl AND dropped_at IS NULL;
    IF FOUND THEN
        IF cfg.active AND cfg.exclude = exclude AND cfg.require_task = track.require_task
           AND (track.row_index IS NULL
                OR (koherent._row_index(format('koherent_history.%I', cfg.history_table)::regclass) IS NOT NULL)
                   = track.row_index) THEN
            RETURN;  -- already tracked exactly so
        END IF;
        UPDATE koherent.tracked_config
           SET exclude = track.exclude, require_task = track.require_task, active = true,
               untracked_at = NULL
         WHERE id = cfg.id;
    ELSE
        hname := CASE WHEN nsp = 'public' THEN r.relname::text ELSE nsp || '__' || r.relname END;
        IF length(hname) > 50 OR EXISTS (SELECT 1 FROM koherent.tracked_config WHERE history_table = hname)
           OR to_regclass(format('koherent_history.%I', hname)) IS NOT NULL THEN
            hname := left(hname, 50) || '_' || tbl::oid;
        END IF;
        INSERT INTO koherent.tracked_config (relid, schema_name, table_name, history_table, pk_columns,
                                             exclude, require_task)
        VALUES (tbl, nsp, r.relname, hname, pk, exclude, require_task)
        RETURNING * INTO cfg;
        EXECUTE format('CREATE TABLE koherent_history.%I (history_id bigint NOT NULL, '
                       'history_kind text NOT NULL, history_date timestamptz NOT NULL, '
                       'history_context uuid)', hname);
        EXECUTE format('COMMENT ON TABLE koherent_history.%I IS %L', hname,
                       format('koherent: history of %s. history_kind is CREATE, UPDATE, DELETE or TRUNCATE; '
                              'the data columns hold the row after the change (before it for DELETE and '
                              'TRUNCATE); "old:<column>" holds the value before an UPDATE.', tbl));
    END IF;
    PERFORM koherent._sync(cfg.id);
    hist := format('koherent_history.%I', cfg.history_table)::regclass;
    IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                     JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = hist AND a.amname = 'brin') THEN
        PERFORM koherent._create_lookup_indexes(hist);
    END IF;
    -- row_index: true creates the row index, false drops it, NULL leaves it as it is (a new
    -- history table starts without; expose() creates it).
    idx := koherent._row_index(hist);
    IF row_index AND idx IS NULL THEN
        PERFORM koherent._create_row_index(hist, cfg.pk_columns);
    ELSIF NOT row_index AND idx IS NOT NULL THEN
        EXECUTE format('DROP INDEX %s', idx);
    END IF;
    PERFORM koherent._install_triggers(cfg.id);
    PERFORM koherent._rebuild_views();
END $$;

COMMENT ON FUNCTION koherent.track(regclass, text[], boolean, boolean) IS
  'Start recording every row change of a table (idempotent; a second call applies a changed exclude, require_task or row_index). row_index => true adds the (primary key, history_id) index of its history table, false drops it; by default it is left as it is (none for a new table; expose() adds it).';

CREATE OR REPLACE FUNCTION koherent.expose(tbl regclass, grant_to regrole DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    t text := tbl::text;
    nsp name;
    rel name;
    keymatch text;
    keycols text;
    keytypes text;
BEGIN
    SELECT * INTO cfg FROM koherent.tracked_config WHERE relid = tbl AND dropped_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'koherent.expose: % is not tracked', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Call koherent.track first.';
    END IF;
    SELECT n.nspname, c.relname INTO nsp, rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl;
    -- <table>_provenance(row) looks a row up by its key: that needs the row index.
    PERFORM koherent._create_row_index(format('koherent_history.%I', cfg.history_table)::regclass,
                                       cfg.pk_columns);
    SELECT string_agg(format('h.%I = rec.%I', k, k), ' AND '),
           string_agg(format('%I', k), ', '),
           string_agg(format('%I %s', k, (SELECT s.type_sql FROM koherent._source_columns(tbl) s WHERE s.attname = k)), ', ')
      INTO keymatch, keycols, keytypes FROM unnest(cfg.pk_columns) k;

    -- computed column: <table>_provenance(<table>) (PostGraphile), _provenance(<table>) (pg_graphql)
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$I.%2$I(rec %3$s) RETURNS SETOF koherent.provenance_entry
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
            SELECT * FROM (%4$s WHERE %5$s) e ORDER BY 1
        $b$ $f$, nsp, rel || '_provenance', t, koherent._entry_select(cfg), keymatch);
    EXECUTE format('COMMENT ON FUNCTION %I.%I(%s) IS %L', nsp, rel || '_provenance', t,
                   'koherent: every recorded change of this row, oldest first, with its attribution.');
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$I._provenance(rec %2$s) RETURNS SETOF koherent.provenance_entry
        LANGUAGE sql STABLE AS $b$ SELECT * FROM %1$I.%3$I(rec) $b$ $f$, nsp, t, rel || '_provenance');
    EXECUTE format('COMMENT ON FUNCTION %I._provenance(%s) IS %L', nsp, t, E'@omit');

    -- filter: <table>_by_provenance(...) RETURNS SETOF <table>. The history lookup runs with the
    -- extension owner's rights; the rows themselves are read with the caller's rights (and RLS).
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION koherent.%1$I(task_id text, agent_client_id text, issuer text,
            changed_by text, kind text, changed_since timestamptz, changed_before timestamptz)
        RETURNS TABLE (%2$s)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
            SELECT DISTINCT %3$s FROM koherent_history.%4$I h
              LEFT JOIN koherent.transaction_auth_context c ON c.id = h.history_context
             WHERE ($1 IS NULL OR c.task_id = $1) AND ($2 IS NULL OR c.client_id = $2)
               AND ($3 IS NULL OR c.issuer = $3) AND ($4 IS NULL OR c.changed_by = $4)
               AND ($5 IS NULL OR h.history_kind = $5) AND ($6 IS NULL OR h.history_date >= $6)
               AND ($7 IS NULL OR h.history_date < $7)
        $b$ $f$, '_keys_' || cfg.id, keytypes,
        (SELECT string_agg(format('h.%I', k), ', ') FROM unnest(cfg.pk_columns) k), cfg.history_table);
    EXECUTE format('COMMENT ON FUNCTION koherent.%I(text, text, text, text, text, timestamptz, timestamptz) IS %L',
                   '_keys_' || cfg.id, E'@omit');
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$I.%2$I(task_id text DEFAULT NULL, agent_client_id text DEFAULT NULL,
            issuer text DEFAULT NULL, changed_by text DEFAULT NULL, kind text DEFAULT NULL,
            changed_since timestamptz DEFAULT NULL, changed_before timestamptz DEFAULT NULL)
        RETURNS SETOF %3$s LANGUAGE sql STABLE AS $b$
            SELECT t.* FROM %3$s t
             WHERE (%4$s) IN (SELECT %4$s FROM koherent.%5$I($1, $2, $3, $4, $5, $6, $7))
        $b$ $f$, nsp, rel || '_by_provenance', t, keycols, '_keys_' || cfg.id);
    -- History is readable only when granted: none of these is executable by PUBLIC.
    EXECUTE format('REVOKE ALL ON FUNCTION %I.%I(%s), %I._provenance(%s), '
                   '%I.%I(text, text, text, text, text, timestamptz, timestamptz), '
                   'koherent.%I(text, text, text, text, text, timestamptz, timestamptz) FROM PUBLIC',
                   nsp, rel || '_provenance', t, nsp, t, nsp, rel || '_by_provenance', '_keys_' || cfg.id);
    IF grant_to IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION %I.%I(%s), %I._provenance(%s), '
                       '%I.%I(text, text, text, text, text, timestamptz, timestamptz), '
                       'koherent.%I(text, text, text, text, text, timestamptz, timestamptz), '
                       'koherent.provenance_entry_effective_changes(koherent.provenance_entry), '
                       'koherent.provenance_entry_task(koherent.provenance_entry), '
                       'koherent._effective_changes(koherent.provenance_entry), '
                       'koherent._task(koherent.provenance_entry) TO %s',
                       nsp, rel || '_provenance', t, nsp, t, nsp, rel || '_by_provenance', '_keys_' || cfg.id,
                       grant_to);
    END IF;
    EXECUTE format('COMMENT ON FUNCTION %I.%I(text, text, text, text, text, timestamptz, timestamptz) IS %L',
                   nsp, rel || '_by_provenance',
                   'koherent: the current rows with at least one recorded change matching all given conditions (exact matches; changedSince inclusive, changedBefore exclusive).');
END $$;
COMMENT ON FUNCTION koherent.expose(regclass, regrole) IS
  'Create the GraphQL-facing functions of a tracked table: <table>_provenance, _provenance and <table>_by_provenance; adds the row index of its history table if missing.';

-- Readers summarize BRIN ranges the writer left (see src/writer.rs, summarize_history).
CREATE FUNCTION koherent._summarize(history_table oid) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '_summarize_wrapper';
REVOKE ALL ON FUNCTION koherent._summarize(oid) FROM PUBLIC;

-- VOLATILE: it may summarize BRIN ranges (koherent._summarize) before it reads.
CREATE OR REPLACE FUNCTION koherent.task_changes(task_id text, include_subtasks boolean DEFAULT false)
RETURNS SETOF koherent.provenance_entry
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- index lookups: parallel workers and JIT compilation cost more than they save (a task with
-- many contexts makes estimates large enough to trigger both)
SET max_parallel_workers_per_gather = 0 SET jit = off AS $$
DECLARE
    ctx uuid[];
    branches text;
BEGIN
    WITH RECURSIVE tasks(task_id, issuer) AS (
        SELECT t.task_id, t.issuer FROM koherent.task t WHERE t.task_id = task_changes.task_id
        UNION
        SELECT t.task_id, t.issuer FROM koherent.task t JOIN tasks p
            ON (t.parent_task_id = p.task_id OR t.root_task_id = p.task_id) AND t.issuer = p.issuer
         WHERE include_subtasks
    )
    -- One index probe per task: a join would be planned as a hash join over every context of
    -- the database (OFFSET 0 keeps the LATERAL subquery from being flattened into one).
    SELECT array_agg(c.id) INTO ctx
      FROM tasks t CROSS JOIN LATERAL (
            SELECT x.id FROM koherent.transaction_auth_context x
             WHERE x.task_id = t.task_id AND x.issuer = t.issuer OFFSET 0) c;
    IF ctx IS NULL THEN
        RETURN;
    END IF;
    -- The writer leaves BRIN summarization to VACUUM and to readers: summarize what is complete
    -- and still unsummarized, so that the lookups below read no long unsummarized tail.
    PERFORM koherent._summarize(to_regclass(format('koherent_history.%I', cfg.history_table))::oid)
       FROM koherent.tracked_config cfg;
    SELECT string_agg(koherent._entry_select(cfg) || ' WHERE h.history_context = ANY ($1)', E'\nUNION ALL\n')
      INTO branches FROM koherent.tracked_config cfg;
    RETURN QUERY EXECUTE 'SELECT * FROM (' || branches || ') e ORDER BY 1' USING ctx;
END $$;
