-- koherent 0.1.0 -> 0.2.0
--
-- The history writer becomes a C-level (Rust) statement trigger, koherent._history_trigger, and
-- history tables trade their btree on history_context for one BRIN index (min-max history_id,
-- bloom history_context) that the writer summarizes. Every tracked table gets the new triggers
-- and indexes here; history tables of untracked or dropped tables keep theirs (no more writes).
-- The function bodies below are those of sql/history.sql at 0.2.0.

\echo Use "ALTER EXTENSION koherent UPDATE TO '0.2.0'" to load this file. \quit

CREATE FUNCTION koherent._history_trigger() RETURNS trigger
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'koherent_history_trigger';
REVOKE ALL ON FUNCTION koherent._history_trigger() FROM PUBLIC;

CREATE OR REPLACE FUNCTION koherent._install_triggers(cfg_id integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    hist text;
    fn text := format('koherent._trg_%s', cfg_id);
    cols text;
    ocols text;
    args text;
    rel record;
BEGIN
    SELECT * INTO cfg FROM koherent.tracked_config WHERE id = cfg_id;
    hist := format('koherent_history.%I', cfg.history_table);
    SELECT string_agg(format('%I', column_name), ', ' ORDER BY attnum),
           string_agg(format('o.%I', column_name), ', ' ORDER BY attnum),
           string_agg(format('%L', column_name), ', ' ORDER BY attnum)
      INTO cols, ocols, args
      FROM koherent.tracked_column WHERE config_id = cfg_id AND live_until IS NULL;
    args := concat_ws(', ', format('%L, %L', cfg.history_table,
                                   CASE WHEN cfg.require_task THEN 't' ELSE 'f' END), args);

    EXECUTE format($f$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $body$
BEGIN
    -- TRUNCATE keeps every removed row: this table's rows are copied before they go.
    EXECUTE format(%2$L, TG_TABLE_SCHEMA, TG_TABLE_NAME) USING %3$L::boolean, TG_RELID;
    RETURN NULL;
END
$body$;
$f$, fn, format(
        'INSERT INTO %s (history_id, history_kind, history_date, history_context, %s) '
        'SELECT nextval(''koherent.history_id_seq''), ''TRUNCATE'', statement_timestamp(), '
        '(SELECT koherent._write_context($1, $2)), %s FROM ONLY %%I.%%I o', hist, cols, ocols),
        cfg.require_task);
    EXECUTE format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', fn);

    FOR rel IN
        SELECT t.relid, t.isleaf,
               (SELECT c.relkind FROM pg_class c WHERE c.oid = t.relid) AS relkind
          FROM pg_partition_tree(cfg.relid) t
        UNION ALL
        SELECT cfg.relid, true, 'r'
         WHERE NOT EXISTS (SELECT 1 FROM pg_partition_tree(cfg.relid))
    LOOP
        PERFORM koherent._drop_triggers(rel.relid);
        EXECUTE format('CREATE TRIGGER koherent_history_insert AFTER INSERT ON %s '
                       'REFERENCING NEW TABLE AS koherent_new FOR EACH STATEMENT '
                       'EXECUTE FUNCTION koherent._history_trigger(%s)', rel.relid::regclass, args);
        EXECUTE format('CREATE TRIGGER koherent_history_update AFTER UPDATE ON %s '
                       'REFERENCING OLD TABLE AS koherent_old NEW TABLE AS koherent_new '
                       'FOR EACH STATEMENT EXECUTE FUNCTION koherent._history_trigger(%s)',
                       rel.relid::regclass, args);
        EXECUTE format('CREATE TRIGGER koherent_history_delete AFTER DELETE ON %s '
                       'REFERENCING OLD TABLE AS koherent_old FOR EACH STATEMENT '
                       'EXECUTE FUNCTION koherent._history_trigger(%s)', rel.relid::regclass, args);
        IF rel.relkind = 'r' THEN
            EXECUTE format('CREATE TRIGGER koherent_history_truncate BEFORE TRUNCATE ON %s '
                           'FOR EACH STATEMENT EXECUTE FUNCTION %s()', rel.relid::regclass, fn);
        END IF;
    END LOOP;
END $$;


CREATE FUNCTION koherent._create_lookup_indexes(hist regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE format('CREATE INDEX ON %s USING brin '
                       '(history_id, history_context uuid_bloom_ops (n_distinct_per_range = 1000)) '
                       'WITH (pages_per_range = 8, autosummarize = on)', hist);
    ELSE  -- no bloom opclass before 14
        EXECUTE format('CREATE INDEX ON %s USING brin (history_id) '
                       'WITH (pages_per_range = 8, autosummarize = on)', hist);
        EXECUTE format('CREATE INDEX ON %s (history_context)', hist);
    END IF;
END $$;

-- track() gains row_index: a new signature, so the old function goes.
DROP FUNCTION koherent.track(regclass, text[], boolean);
CREATE FUNCTION koherent._row_index(hist regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.indexrelid::regclass
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
     WHERE i.indrelid = hist AND a.amname = 'btree' AND i.indnatts >= 2
       AND i.indkey[i.indnatts - 1] = (SELECT attnum FROM pg_attribute
                                        WHERE attrelid = hist AND attname = 'history_id')
     LIMIT 1
$$;

CREATE FUNCTION koherent.track(tbl regclass, exclude text[] DEFAULT '{}', require_task boolean DEFAULT false,
                               row_index boolean DEFAULT true)
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
           AND (koherent._row_index(format('koherent_history.%I', cfg.history_table)::regclass) IS NOT NULL)
               = coalesce(track.row_index, true) THEN
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
    -- The row index makes a row's provenance an index lookup; it is also the largest part of
    -- what history costs a bulk write. row_index => false leaves it out (write-mostly tables).
    idx := koherent._row_index(hist);
    IF coalesce(row_index, true) AND idx IS NULL THEN
        EXECUTE format('CREATE INDEX ON %s (%s, history_id)', hist,
                       (SELECT string_agg(format('%I', k), ', ') FROM unnest(pk) k));
    ELSIF NOT coalesce(row_index, true) AND idx IS NOT NULL THEN
        EXECUTE format('DROP INDEX %s', idx);
    END IF;
    PERFORM koherent._install_triggers(cfg.id);
    PERFORM koherent._rebuild_views();
END $$;


CREATE OR REPLACE FUNCTION koherent.task_changes(task_id text, include_subtasks boolean DEFAULT false)
RETURNS SETOF koherent.provenance_entry
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
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
    SELECT string_agg(koherent._entry_select(cfg) || ' WHERE h.history_context = ANY ($1)', E'\nUNION ALL\n')
      INTO branches FROM koherent.tracked_config cfg;
    RETURN QUERY EXECUTE 'SELECT * FROM (' || branches || ') e ORDER BY 1' USING ctx;
END $$;

COMMENT ON FUNCTION koherent.track(regclass, text[], boolean, boolean) IS
  'Start recording every row change of a table (idempotent; a second call applies a changed exclude, require_task or row_index).';
COMMENT ON FUNCTION koherent.task_changes(text, boolean) IS
  'Every change one task made, across all tracked tables, in order; include_subtasks follows parent_task_id and root_task_id.';
REVOKE EXECUTE ON FUNCTION koherent._create_lookup_indexes(regclass), koherent._install_triggers(integer), koherent._row_index(regclass), koherent.track(regclass, text[], boolean, boolean),
    koherent.task_changes(text, boolean) FROM PUBLIC;

CREATE OR REPLACE VIEW koherent.tracked_table AS
SELECT c.relid::regclass AS table_name, c.exclude, c.tracked_since, c.require_task,
       format('koherent_history.%I', c.history_table)::regclass AS history_table,
       c.pk_columns, c.id AS config_id,
       koherent._row_index(format('koherent_history.%I', c.history_table)::regclass) IS NOT NULL AS row_index
  FROM koherent.tracked_config c
 WHERE c.active AND c.dropped_at IS NULL;

DO $migrate$
DECLARE
    cfg koherent.tracked_config;
    hist regclass;
    idx regclass;
    rel oid;
BEGIN
    FOR cfg IN SELECT * FROM koherent.tracked_config WHERE active AND dropped_at IS NULL ORDER BY id LOOP
        hist := format('koherent_history.%I', cfg.history_table)::regclass;
        -- 0.1.0's BRIN (history_id) and btree (history_context); the (pk, history_id) btree stays
        FOR idx IN
            SELECT i.indexrelid::regclass FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              JOIN pg_am a ON a.oid = c.relam
             WHERE i.indrelid = hist
               AND (a.amname = 'brin'
                    OR (i.indnatts = 1 AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                                                           WHERE attrelid = hist AND attname = 'history_context')))
        LOOP
            EXECUTE format('DROP INDEX %s', idx);
        END LOOP;
        PERFORM koherent._create_lookup_indexes(hist);
        -- 0.1.0's per-table trigger function is not an extension member, so it cannot be
        -- replaced from this script: drop it with its triggers, let _install_triggers create the
        -- new ones, and keep the new function out of the extension, as track() leaves it.
        FOR rel IN SELECT relid FROM pg_partition_tree(cfg.relid) UNION SELECT cfg.relid LOOP
            PERFORM koherent._drop_triggers(rel);
        END LOOP;
        EXECUTE format('DROP FUNCTION IF EXISTS koherent._trg_%s()', cfg.id);
        PERFORM koherent._install_triggers(cfg.id);
        EXECUTE format('ALTER EXTENSION koherent DROP FUNCTION koherent._trg_%s()', cfg.id);
    END LOOP;
END
$migrate$;
