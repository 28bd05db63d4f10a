-- koherent 0.4.0 -> 0.5.0: one room per concern (issue #11). No behaviour change: internal
-- functions renamed for what they do, function bodies that call them replaced, the benchmark
-- helper no longer installed, and every tracked table's generated functions renamed
-- (koherent._trg_<id> -> koherent._truncate_copy_<id>, koherent._keys_<id> ->
-- koherent._filter_keys_<id>); and a history table with the row index gets the key-change index
-- (a row's provenance lookup no longer reads the whole history table). Generated from
-- sql/*.sql by copying the changed functions whole;
-- tests/test_upgrade.py checks the result against a fresh install, object for object.

DROP FUNCTION koherent._cold_verify_micros(text, integer);
DROP FUNCTION koherent._entry_select(koherent.tracked_config, boolean);
DROP FUNCTION koherent._free_name(integer, name);
DROP FUNCTION koherent._sync(integer);

-- from src/api.rs (the history date of the running statement, for the TRUNCATE copy)
CREATE FUNCTION "_history_date"() RETURNS timestamp with time zone
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', '_history_date_wrapper';
REVOKE EXECUTE ON FUNCTION koherent._history_date() FROM PUBLIC;

-- from sql/columns.sql
CREATE FUNCTION koherent._retire_column_name(cfg_id integer, col name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    hist text := (SELECT format('koherent_history.%I', history_table)
                    FROM koherent.tracked_config WHERE id = cfg_id);
    c koherent.tracked_column;
BEGIN
    SELECT * INTO c FROM koherent.tracked_column
     WHERE config_id = cfg_id AND column_name = col AND live_until IS NOT NULL;
    IF FOUND THEN
        PERFORM koherent._rename_column(cfg_id, hist, col, left(col, 40) || '@' || c.live_until);
    END IF;
END $$;

-- from sql/columns.sql
CREATE FUNCTION koherent._sync_history_columns(cfg_id integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    hist text;
    c koherent.tracked_column;
    a record;
    mark bigint := koherent._next_history_id();
BEGIN
    UPDATE koherent.tracked_config t
       SET schema_name = n.nspname, table_name = r.relname,
           pk_columns = coalesce(koherent._pk_columns(t.relid), t.pk_columns)
      FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace
     WHERE t.id = cfg_id AND r.oid = t.relid;
    SELECT * INTO cfg FROM koherent.tracked_config WHERE id = cfg_id;
    hist := format('koherent_history.%I', cfg.history_table);
    -- The views over all history tables depend on its columns' types: empty them until the
    -- caller rebuilds them (_rebuild_views), so that ALTER COLUMN TYPE can proceed.
    PERFORM koherent._rebuild_views(true);

    FOR c IN SELECT * FROM koherent.tracked_column
              WHERE config_id = cfg_id AND live_until IS NULL ORDER BY attnum LOOP
        SELECT * INTO a FROM koherent._source_columns(cfg.relid) s WHERE s.attnum = c.attnum;
        IF NOT FOUND OR a.attname = ANY (cfg.exclude) THEN
            -- dropped or newly excluded: keep what was recorded, write no more
            UPDATE koherent.tracked_column SET live_until = mark, attnum = NULL
             WHERE config_id = cfg_id AND column_name = c.column_name;
            CONTINUE;
        END IF;
        IF a.attname <> c.column_name THEN
            PERFORM koherent._retire_column_name(cfg_id, a.attname);
            PERFORM koherent._rename_column(cfg_id, hist, c.column_name, a.attname);
            c.column_name := a.attname;
        END IF;
        IF a.type_sql <> c.type_sql THEN
            -- Converting earlier values runs the cast between the two types as the extension
            -- owner: only when both are PostgreSQL's own (a cast between built-in types can only
            -- be created by a superuser). Any other type change keeps the earlier values under a
            -- retired name and starts a new column, so no cast a table owner wrote runs here.
            IF koherent._is_builtin_type(a.atttypid)
               AND koherent._is_builtin_type((SELECT h.atttypid FROM pg_attribute h
                                               WHERE h.attrelid = hist::regclass AND h.attname = c.column_name
                                                 AND NOT h.attisdropped)) THEN
                BEGIN
                    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING %I::%s, '
                                   'ALTER COLUMN %I TYPE %s USING %I::%s', hist,
                                   c.column_name, a.type_sql, c.column_name, a.type_sql,
                                   'old:' || c.column_name, a.type_sql, 'old:' || c.column_name, a.type_sql);
                    UPDATE koherent.tracked_column SET type_sql = a.type_sql
                     WHERE config_id = cfg_id AND column_name = c.column_name;
                    CONTINUE;
                EXCEPTION WHEN OTHERS THEN
                    NULL;  -- earlier values do not convert: retire them below
                END;
            END IF;
            UPDATE koherent.tracked_column SET live_until = mark, attnum = NULL
             WHERE config_id = cfg_id AND column_name = c.column_name;
        END IF;
    END LOOP;

    FOR a IN SELECT * FROM koherent._source_columns(cfg.relid) s
              WHERE NOT (s.attname = ANY (cfg.exclude))
                AND NOT EXISTS (SELECT 1 FROM koherent.tracked_column t
                                 WHERE t.config_id = cfg_id AND t.live_until IS NULL
                                   AND t.attnum = s.attnum) LOOP
        PERFORM koherent._retire_column_name(cfg_id, a.attname);
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s, ADD COLUMN %I %s', hist,
                       a.attname, a.type_sql, 'old:' || a.attname, a.type_sql);
        INSERT INTO koherent.tracked_column (config_id, column_name, attnum, type_sql, live_from)
        VALUES (cfg_id, a.attname, a.attnum, a.type_sql, mark);
    END LOOP;
    PERFORM koherent._no_owner_statistics(hist::regclass);
END $$;

-- from sql/views.sql
CREATE FUNCTION koherent._entry_select(cfg koherent.tracked_config, shape text)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    hist regclass := format('koherent_history.%I', cfg.history_table)::regclass;
    attributed boolean;
BEGIN
    IF shape NOT IN ('history_all', 'provenance_entry') THEN
        RAISE EXCEPTION 'koherent._entry_select: unknown shape %', shape USING ERRCODE = '22023';
    END IF;
    attributed := shape = 'provenance_entry';
    RETURN format(
        'SELECT h.history_id, %s AS table_name, jsonb_build_object(%s) AS row_key, '
        'h.history_kind AS kind, h.history_date AS date, h.history_context AS context_id, %s'
        '%s AS row_data, '
        '%s%L::text AS table_ident%s FROM koherent_history.%I h%s',
        koherent._table_literal(cfg, attributed),
        (SELECT string_agg(format('%L, %s', k, koherent._json_expr(hist, k)), ', ') FROM unnest(cfg.pk_columns) k),
        CASE WHEN attributed THEN 'c.db_role, ' ELSE '' END,
        koherent._row_data_expr(hist),
        CASE WHEN attributed THEN 'c.task_id, c.client_id AS agent_client_id, c.issuer, c.changed_by, ' ELSE '' END,
        format('%I.%I', cfg.schema_name, cfg.table_name),
        CASE WHEN attributed THEN ', c.effective_role' ELSE '' END,
        cfg.history_table,
        CASE WHEN attributed
             THEN ' LEFT JOIN koherent.transaction_auth_context c ON c.id = h.history_context' ELSE '' END);
END $$;

-- from sql/indexes.sql
CREATE FUNCTION koherent._key_change_predicate(pk name[], alias text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('%1$shistory_kind = ''UPDATE'' AND ROW(%2$s) IS DISTINCT FROM ROW(%3$s)', alias,
                  (SELECT string_agg(alias || format('%I', 'old:' || k), ', ') FROM unnest(pk) k),
                  (SELECT string_agg(alias || format('%I', k), ', ') FROM unnest(pk) k))
$$;

-- from sql/indexes.sql
CREATE FUNCTION koherent._key_change_index(hist regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.indexrelid::regclass
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
     WHERE i.indrelid = hist AND a.amname = 'btree' AND i.indnatts >= 2 AND i.indpred IS NOT NULL
       AND i.indkey[i.indnatts - 1] = (SELECT attnum FROM pg_attribute
                                        WHERE attrelid = hist AND attname = 'history_id')
       AND (SELECT attname FROM pg_attribute WHERE attrelid = hist AND attnum = i.indkey[0]) LIKE 'old:%'
     LIMIT 1
$$;

-- from sql/indexes.sql
CREATE OR REPLACE FUNCTION koherent._row_index(hist regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.indexrelid::regclass
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
     WHERE i.indrelid = hist AND a.amname = 'btree' AND i.indnatts >= 2 AND i.indpred IS NULL
       AND i.indkey[i.indnatts - 1] = (SELECT attnum FROM pg_attribute
                                        WHERE attrelid = hist AND attname = 'history_id')
     LIMIT 1
$$;

-- from sql/indexes.sql
CREATE OR REPLACE FUNCTION koherent._create_row_index(hist regclass, pk name[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF koherent._row_index(hist) IS NULL THEN
        EXECUTE format('CREATE INDEX ON %s (%s, history_id)', hist,
                       (SELECT string_agg(format('%I', k), ', ') FROM unnest(pk) k));
    END IF;
    IF koherent._key_change_index(hist) IS NULL THEN
        EXECUTE format('CREATE INDEX ON %s (%s, history_id) WHERE %s', hist,
                       (SELECT string_agg(format('%I', 'old:' || k), ', ') FROM unnest(pk) k),
                       koherent._key_change_predicate(pk, ''));
    END IF;
END $$;

-- from sql/readers.sql
CREATE OR REPLACE FUNCTION koherent._current_life(cfg koherent.tracked_config, entry text, keyexpr text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('%4$s.history_kind NOT IN (''DELETE'', ''TRUNCATE'') '
                  'AND NOT EXISTS (SELECT 1 FROM koherent_history.%1$I d WHERE %2$s AND %6$s '
                  'AND (d.history_kind IN (''CREATE'', ''DELETE'', ''TRUNCATE'') OR (%5$s))) '
                  'AND NOT EXISTS (SELECT 1 FROM koherent_history.%1$I d WHERE %5$s AND %3$s AND %6$s)',
                  cfg.history_table,
                  (SELECT string_agg(format('d.%I = %s.%I', k, keyexpr, k), ' AND ') FROM unnest(cfg.pk_columns) k),
                  (SELECT string_agg(format('d.%I = %s.%I', 'old:' || k, keyexpr, k), ' AND ') FROM unnest(cfg.pk_columns) k),
                  entry, koherent._key_change_predicate(cfg.pk_columns, 'd.'),
                  format('(CASE WHEN d.history_context = %1$s.history_context THEN d.history_date > %1$s.history_date '
                         'ELSE d.history_id > %1$s.history_id END)', entry))
$$;

-- from sql/triggers.sql
CREATE OR REPLACE FUNCTION koherent._install_triggers(cfg_id integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    hist text;
    fn text := format('koherent._truncate_copy_%s', cfg_id);
    pkeys text;
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
    -- the partition key columns of every level of a partitioned table (see koherent._merge_guard)
    SELECT string_agg(DISTINCT format('%L', CASE WHEN k.attnum = 0 THEN '*' ELSE a.attname::text END), ', ')
      INTO pkeys
      FROM pg_partition_tree(cfg.relid) t
      JOIN pg_partitioned_table p ON p.partrelid = t.relid
      CROSS JOIN LATERAL unnest(p.partattrs::int2[]) AS k(attnum)
      LEFT JOIN pg_attribute a ON a.attrelid = t.relid AND a.attnum = k.attnum;

    -- The TRUNCATE copy, koherent._truncate_copy_<config id>: one function per tracked table,
    -- fired BEFORE TRUNCATE on the table and on each partition. Two levels of format(): this
    -- one writes the function (%1$s its name, %2$L the INSERT below as a literal, %3$L
    -- require_task); the function's own format() puts the truncated table's schema and name
    -- into the INSERT's FROM (the %%I.%%I, escaped here, and any % in the history table's or
    -- columns' names doubled), so one function serves every partition. $1 and $2 of the INSERT
    -- are bound by USING: require_task and the table's oid for koherent._write_context.
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $body$
BEGIN
    -- TRUNCATE keeps every removed row: this table's rows are copied before they go. A table
    -- tracked with require_task needs a task for every TRUNCATE, an empty table's included.
    IF %3$L::boolean THEN
        PERFORM koherent._require_task(TG_RELID);
    END IF;
    EXECUTE format(%2$L, TG_TABLE_SCHEMA, TG_TABLE_NAME) USING %3$L::boolean, TG_RELID;
    RETURN NULL;
END
$body$;
$f$, fn, format(
        'INSERT INTO %s (history_id, history_kind, history_date, history_context, %s) '
        'SELECT koherent._next_history_id(), ''TRUNCATE'', koherent._history_date(), '
        '(SELECT koherent._write_context($1, $2)), %s FROM ONLY %%I.%%I o', replace(hist, '%', '%%'),
        replace(cols, '%', '%%'), replace(ocols, '%', '%%')),
        cfg.require_task);
    EXECUTE format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', fn);

    -- a partition detached since the last call keeps no trigger of this table (it would record
    -- its own writes as the parent's history)
    FOR rel IN
        SELECT DISTINCT g.tgrelid AS relid FROM pg_trigger g
         WHERE g.tgname IN ('koherent_history_insert', 'koherent_history_update',
                            'koherent_history_delete', 'koherent_history_truncate')
           AND (g.tgfoid = to_regprocedure(fn || '()')
                OR (g.tgnargs > 0 AND g.tgfoid = 'koherent._history_trigger()'::regprocedure
                    AND convert_from(substring(g.tgargs FROM 1 FOR position('\x00'::bytea IN g.tgargs) - 1), 'UTF8')
                        = cfg.history_table))
           AND g.tgrelid NOT IN (SELECT p.relid FROM pg_partition_tree(cfg.relid) p UNION SELECT cfg.relid)
    LOOP
        PERFORM koherent._drop_triggers(rel.relid);
    END LOOP;

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
        IF rel.relkind = 'r' AND rel.relid <> cfg.relid AND pkeys IS NOT NULL THEN
            EXECUTE format('CREATE TRIGGER koherent_merge_guard BEFORE UPDATE ON %s FOR EACH ROW '
                           'EXECUTE FUNCTION koherent._merge_guard(%L, %s)', rel.relid::regclass,
                           CASE WHEN cfg.require_task THEN 't' ELSE 'f' END, pkeys);
        END IF;
    END LOOP;
END $$;

-- from sql/views.sql
CREATE OR REPLACE FUNCTION koherent._rebuild_views(empty boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    entries text[] := '{}';
    changes text[] := '{}';
    vals text;
BEGIN
    FOR cfg IN SELECT * FROM koherent.tracked_config WHERE NOT empty ORDER BY id LOOP
        SELECT string_agg(format('(%L::text, %s, %s, %s::bigint, %s::bigint)',
                                 column_name,
                                 koherent._json_expr(format('koherent_history.%I', cfg.history_table)::regclass, column_name),
                                 koherent._json_expr(format('koherent_history.%I', cfg.history_table)::regclass, 'old:' || column_name),
                                 live_from, coalesce(live_until::text, 'NULL')), ', ' ORDER BY attnum NULLS LAST, column_name)
          INTO vals FROM koherent.tracked_column WHERE config_id = cfg.id;
        entries := entries || koherent._entry_select(cfg, 'history_all');
        IF vals IS NOT NULL THEN
            changes := changes || format(
                'SELECT h.history_id, f.field, '
                'CASE h.history_kind WHEN ''CREATE'' THEN NULL WHEN ''UPDATE'' THEN f.old ELSE f.cur END AS old_value, '
                'CASE WHEN h.history_kind IN (''DELETE'', ''TRUNCATE'') THEN NULL ELSE f.cur END AS new_value '
                'FROM koherent_history.%I h CROSS JOIN LATERAL (VALUES %s) AS f(field, cur, old, live_from, live_until) '
                'WHERE h.history_id >= f.live_from AND (f.live_until IS NULL OR h.history_id < f.live_until) '
                'AND (h.history_kind <> ''UPDATE'' OR f.cur::text IS DISTINCT FROM f.old::text)',
                cfg.history_table, vals);
        END IF;
    END LOOP;
    entries := entries || ('SELECT NULL::bigint AS history_id, NULL::regclass AS table_name, NULL::jsonb AS row_key, '
                           'NULL::text AS kind, NULL::timestamptz AS date, NULL::uuid AS context_id, '
                           'NULL::jsonb AS row_data, NULL::text AS table_ident WHERE false')::text;
    changes := changes || ('SELECT NULL::bigint AS history_id, NULL::text AS field, NULL::jsonb AS old_value, '
                           'NULL::jsonb AS new_value WHERE false')::text;
    EXECUTE 'CREATE OR REPLACE VIEW koherent._history_all AS ' || array_to_string(entries, E'\nUNION ALL\n');
    EXECUTE 'CREATE OR REPLACE VIEW koherent.effective_change AS ' || array_to_string(changes, E'\nUNION ALL\n');
END $$;

-- from sql/track.sql
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
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid
                WHERE i.inhparent = tbl AND NOT k.relispartition) THEN
        RAISE EXCEPTION 'koherent.track: % has inheritance children', tbl
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Rows written into an inheritance child do not fire the parent''s history triggers.',
                  HINT = 'Use a partitioned table (its partitions are tracked), or track the child tables themselves.';
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
    IF koherent._relink() THEN
        PERFORM koherent._rebuild_views();
    END IF;
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
    PERFORM koherent._sync_history_columns(cfg.id);
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
        IF koherent._key_change_index(hist) IS NOT NULL THEN
            EXECUTE format('DROP INDEX %s', koherent._key_change_index(hist));
        END IF;
    END IF;
    PERFORM koherent._install_triggers(cfg.id);
    PERFORM koherent._rebuild_views();
END $$;

-- from sql/track.sql
CREATE OR REPLACE FUNCTION koherent.untrack(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    rel oid;
BEGIN
    SELECT * INTO cfg FROM koherent.tracked_config WHERE relid = tbl AND dropped_at IS NULL AND active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'koherent.untrack: % is not tracked', tbl USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    FOR rel IN SELECT relid FROM pg_partition_tree(tbl) UNION SELECT tbl::oid LOOP
        PERFORM koherent._drop_triggers(rel);
    END LOOP;
    EXECUTE format('DROP FUNCTION IF EXISTS koherent._truncate_copy_%s()', cfg.id);
    UPDATE koherent.tracked_config SET active = false, untracked_at = now() WHERE id = cfg.id;
END $$;

-- from sql/ddl.sql
CREATE OR REPLACE FUNCTION koherent._on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd record;
    cfg_id integer;
    changed boolean := koherent._relink();
BEGIN
    FOR cmd IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
                WHERE classid = 'pg_class'::regclass AND object_type IN ('table', 'table column') LOOP
        SELECT c.id INTO cfg_id
          FROM koherent.tracked_config c
         WHERE c.dropped_at IS NULL AND c.active
           AND c.relid IN (SELECT cmd.objid UNION ALL SELECT relid FROM pg_partition_ancestors(cmd.objid));
        -- A dump being restored (pg_dump's output sets check_function_bodies off) creates the
        -- history triggers itself after the primary key: leave the table to it until then.
        IF cfg_id IS NOT NULL AND current_setting('check_function_bodies') = 'off'
           AND NOT EXISTS (SELECT 1 FROM pg_trigger t JOIN koherent.tracked_config c ON c.relid = t.tgrelid
                            WHERE c.id = cfg_id AND t.tgname LIKE 'koherent\_history\_%') THEN
            CONTINUE;
        END IF;
        IF cfg_id IS NOT NULL THEN
            PERFORM koherent._sync_history_columns(cfg_id);
            PERFORM koherent._install_triggers(cfg_id);
            changed := true;
        END IF;
    END LOOP;
    PERFORM koherent._refuse_inheritance();
    IF changed THEN
        PERFORM koherent._rebuild_views();
    END IF;
END $$;

-- from sql/ddl.sql
CREATE OR REPLACE FUNCTION koherent._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    changed boolean := false;
BEGIN
    FOR cfg IN SELECT c.* FROM koherent.tracked_config c
                 JOIN pg_event_trigger_dropped_objects() d ON d.objid = c.relid
                WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0
                  AND d.object_type = 'table' AND c.dropped_at IS NULL LOOP
        UPDATE koherent.tracked_config SET dropped_at = now(), active = false,
               untracked_at = coalesce(untracked_at, now())
         WHERE id = cfg.id;
        UPDATE koherent.tracked_column SET live_until = coalesce(live_until, koherent._next_history_id()),
               attnum = NULL
         WHERE config_id = cfg.id;
        EXECUTE format('DROP FUNCTION IF EXISTS koherent._truncate_copy_%s()', cfg.id);
        changed := true;
    END LOOP;
    IF changed THEN
        PERFORM koherent._rebuild_views();
    END IF;
END $$;

-- from sql/readers.sql
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
    -- summarize what is complete and still unsummarized (src/brin.rs), so that the lookups
    -- below read no long unsummarized tail
    PERFORM koherent._summarize(to_regclass(format('koherent_history.%I', cfg.history_table))::oid)
       FROM koherent.tracked_config cfg;
    SELECT string_agg(koherent._entry_select(cfg, 'provenance_entry') || ' WHERE h.history_context = ANY ($1)', E'\nUNION ALL\n')
      INTO branches FROM koherent.tracked_config cfg;
    RETURN QUERY EXECUTE 'SELECT * FROM (' || branches || ') e ORDER BY 1' USING ctx;
END $$;

-- from sql/graphql.sql
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
    chk text;
    -- the argument types of <table>_by_provenance and koherent._filter_keys_<id>
    filter_sig constant text := '(text, text, text, text, text, timestamptz, timestamptz)';
BEGIN
    IF koherent._relink() THEN
        PERFORM koherent._rebuild_views();
    END IF;
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

    -- computed column: <table>_provenance(<table>) (PostGraphile), _provenance(<table>) (pg_graphql).
    -- It shows the history of a row only if the caller can read that row itself: the row value
    -- passed in is not trusted (its key is looked up as the caller, with its privileges and
    -- row-level security).
    chk := koherent._visibility_check(tbl);
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$I.%2$I(rec %3$s) RETURNS SETOF koherent.provenance_entry
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
        BEGIN
            IF NOT koherent._visible_to_caller(%6$L, ROW(%7$s)) THEN
                RETURN;
            END IF;
            RETURN QUERY SELECT * FROM (%4$s WHERE %5$s AND %8$s) e ORDER BY 1;
        END $b$ $f$, nsp, rel || '_provenance', t, koherent._entry_select(cfg, 'provenance_entry'), keymatch,
        chk, (SELECT string_agg(format('rec.%I', k), ', ') FROM unnest(cfg.pk_columns) k),
        koherent._current_life(cfg, 'h', 'rec'));
    EXECUTE format('COMMENT ON FUNCTION %I.%I(%s) IS %L', nsp, rel || '_provenance', t,
                   'koherent: every recorded change of this row, oldest first, with its attribution.');
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$I._provenance(rec %2$s) RETURNS SETOF koherent.provenance_entry
        LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $b$ SELECT * FROM %1$I.%3$I(rec) $b$ $f$,
        nsp, t, rel || '_provenance');
    EXECUTE format('COMMENT ON FUNCTION %I._provenance(%s) IS %L', nsp, t, E'@omit');

    -- filter: <table>_by_provenance(...) RETURNS SETOF <table>. The history lookup runs with the
    -- extension owner's rights and returns only keys of rows the caller can read itself; the
    -- rows themselves are read with the caller's rights (and RLS).
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION koherent.%1$I(task_id text, agent_client_id text, issuer text,
            changed_by text, kind text, changed_since timestamptz, changed_before timestamptz)
        RETURNS TABLE (%2$s)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
            SELECT k.* FROM (
              SELECT DISTINCT %3$s FROM koherent_history.%4$I h
                LEFT JOIN koherent.transaction_auth_context c ON c.id = h.history_context
               WHERE ($1 IS NULL OR c.task_id = $1) AND ($2 IS NULL OR c.client_id = $2)
                 AND ($3 IS NULL OR c.issuer = $3) AND ($4 IS NULL OR c.changed_by = $4)
                 AND ($5 IS NULL OR h.history_kind = $5) AND ($6 IS NULL OR h.history_date >= $6)
                 AND ($7 IS NULL OR h.history_date < $7)
                 AND %7$s) k
             WHERE koherent._visible_to_caller(%5$L, ROW(%6$s))
        $b$ $f$, '_filter_keys_' || cfg.id, keytypes,
        (SELECT string_agg(format('h.%I', k), ', ') FROM unnest(cfg.pk_columns) k), cfg.history_table,
        chk, (SELECT string_agg(format('k.%I', k), ', ') FROM unnest(cfg.pk_columns) k),
        koherent._current_life(cfg, 'h', 'h'));
    EXECUTE format('COMMENT ON FUNCTION koherent.%I%s IS %L', '_filter_keys_' || cfg.id, filter_sig, E'@omit');
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$I.%2$I(task_id text DEFAULT NULL, agent_client_id text DEFAULT NULL,
            issuer text DEFAULT NULL, changed_by text DEFAULT NULL, kind text DEFAULT NULL,
            changed_since timestamptz DEFAULT NULL, changed_before timestamptz DEFAULT NULL)
        RETURNS SETOF %3$s LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $b$
            SELECT t.* FROM %3$s t
             WHERE (%4$s) IN (SELECT %4$s FROM koherent.%5$I($1, $2, $3, $4, $5, $6, $7))
        $b$ $f$, nsp, rel || '_by_provenance', t, keycols, '_filter_keys_' || cfg.id);
    -- History is readable only when granted: none of these is executable by PUBLIC.
    EXECUTE format('REVOKE ALL ON FUNCTION %I.%I(%s), %I._provenance(%s), %I.%I%s, koherent.%I%s FROM PUBLIC',
                   nsp, rel || '_provenance', t, nsp, t, nsp, rel || '_by_provenance', filter_sig,
                   '_filter_keys_' || cfg.id, filter_sig);
    IF grant_to IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION %I.%I(%s), %I._provenance(%s), %I.%I%s, koherent.%I%s, '
                       'koherent.provenance_entry_effective_changes(koherent.provenance_entry), '
                       'koherent.provenance_entry_task(koherent.provenance_entry), '
                       'koherent._effective_changes(koherent.provenance_entry), '
                       'koherent._task(koherent.provenance_entry) TO %s',
                       nsp, rel || '_provenance', t, nsp, t, nsp, rel || '_by_provenance', filter_sig,
                       '_filter_keys_' || cfg.id, filter_sig, grant_to);
    END IF;
    EXECUTE format('COMMENT ON FUNCTION %I.%I%s IS %L', nsp, rel || '_by_provenance', filter_sig,
                   'koherent: the current rows with at least one recorded change matching all given conditions (exact matches; changedSince inclusive, changedBefore exclusive).');
END $$;

-- from sql/graphql.sql
CREATE OR REPLACE FUNCTION koherent.unexpose(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp name;
    rel name;
    cfg_id integer;
    filter_sig constant text := '(text, text, text, text, text, timestamptz, timestamptz)';
BEGIN
    SELECT n.nspname, c.relname INTO nsp, rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl;
    SELECT id INTO cfg_id FROM koherent.tracked_config WHERE relid = tbl AND dropped_at IS NULL;
    EXECUTE format('DROP FUNCTION IF EXISTS %I.%I(%s)', nsp, rel || '_provenance', tbl);
    EXECUTE format('DROP FUNCTION IF EXISTS %I._provenance(%s)', nsp, tbl);
    EXECUTE format('DROP FUNCTION IF EXISTS %I.%I%s', nsp, rel || '_by_provenance', filter_sig);
    EXECUTE format('DROP FUNCTION IF EXISTS koherent.%I%s', '_filter_keys_' || cfg_id, filter_sig);
END $$;

COMMENT ON SCHEMA koherent IS
E'koherent: provenance-aware audit trail (tasks, contexts, history readers).\n@graphql({"inflect_names": true})';

REVOKE EXECUTE ON FUNCTION koherent._retire_column_name(integer, name),
    koherent._sync_history_columns(integer), koherent._entry_select(koherent.tracked_config, text),
    koherent._key_change_predicate(name[], text), koherent._key_change_index(regclass)
  FROM PUBLIC;

-- Every tracked table's TRUNCATE copy and every exposed table's functions under their new names.
-- Per-table objects are not extension members (an extension script makes what it creates a
-- member: they are dropped from it again), and the roles granted the exposed functions keep them.
DO $upgrade$
DECLARE
    cfg koherent.tracked_config;
    rel oid;
    fns text[];
    f text;
    grantees text[];
    g text;
    filter_sig constant text := '(text, text, text, text, text, timestamptz, timestamptz)';
BEGIN
    FOR cfg IN SELECT * FROM koherent.tracked_config WHERE active AND dropped_at IS NULL ORDER BY id LOOP
        FOR rel IN SELECT relid FROM pg_partition_tree(cfg.relid) UNION SELECT cfg.relid LOOP
            PERFORM koherent._drop_triggers(rel);
        END LOOP;
        EXECUTE format('DROP FUNCTION IF EXISTS koherent._trg_%s()', cfg.id);
        PERFORM koherent._install_triggers(cfg.id);
        EXECUTE format('ALTER EXTENSION koherent DROP FUNCTION koherent._truncate_copy_%s()', cfg.id);
        IF koherent._row_index(format('koherent_history.%I', cfg.history_table)::regclass) IS NOT NULL THEN
            PERFORM koherent._create_row_index(format('koherent_history.%I', cfg.history_table)::regclass,
                                               cfg.pk_columns);
        END IF;
        IF to_regprocedure(format('koherent.%I%s', '_keys_' || cfg.id, filter_sig)) IS NOT NULL THEN
            SELECT array_agg(DISTINCT a.grantee::regrole::text) INTO grantees
              FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
             WHERE p.oid = to_regprocedure(format('%I.%I(%s)', cfg.schema_name, cfg.table_name || '_provenance',
                                                  cfg.relid::regclass))
               AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner;
            PERFORM koherent.unexpose(cfg.relid::regclass);
            EXECUTE format('DROP FUNCTION koherent.%I%s', '_keys_' || cfg.id, filter_sig);
            PERFORM koherent.expose(cfg.relid::regclass);
            fns := ARRAY[format('%I.%I(%s)', cfg.schema_name, cfg.table_name || '_provenance', cfg.relid::regclass),
                         format('%I._provenance(%s)', cfg.schema_name, cfg.relid::regclass),
                         format('%I.%I%s', cfg.schema_name, cfg.table_name || '_by_provenance', filter_sig),
                         format('koherent.%I%s', '_filter_keys_' || cfg.id, filter_sig)];
            FOREACH f IN ARRAY fns LOOP
                EXECUTE format('ALTER EXTENSION koherent DROP FUNCTION %s', f);
            END LOOP;
            FOREACH g IN ARRAY coalesce(grantees, '{}') LOOP
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s, koherent.provenance_entry_effective_changes(koherent.provenance_entry), '
                               'koherent.provenance_entry_task(koherent.provenance_entry), '
                               'koherent._effective_changes(koherent.provenance_entry), '
                               'koherent._task(koherent.provenance_entry) TO %s', array_to_string(fns, ', '), g);
            END LOOP;
        END IF;
    END LOOP;
END
$upgrade$;
