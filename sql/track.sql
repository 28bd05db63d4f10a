-- koherent: track() and untrack().

CREATE FUNCTION koherent.track(tbl regclass, exclude text[] DEFAULT '{}', require_task boolean DEFAULT false,
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
    IF NOT koherent._has_lookup_index(hist) THEN
        PERFORM koherent._create_lookup_indexes(hist);
    END IF;
    PERFORM koherent._create_range_index(hist);
    PERFORM koherent._unsummarize_empty(hist);
    -- row_index: true creates the row index, false drops it, NULL leaves an existing history
    -- table as it is and gives a new one (hname is set only when this call created it) the index.
    idx := koherent._row_index(hist);
    IF (row_index OR (row_index IS NULL AND hname IS NOT NULL)) AND idx IS NULL THEN
        PERFORM koherent._create_row_index(hist, cfg.pk_columns);
    ELSIF NOT row_index AND idx IS NOT NULL THEN
        EXECUTE format('DROP INDEX %s', idx);
        IF koherent._key_change_index(hist) IS NOT NULL THEN
            EXECUTE format('DROP INDEX %s', koherent._key_change_index(hist));
        END IF;
    END IF;
    PERFORM koherent._install_triggers(cfg.id);
    PERFORM koherent._rebuild_views();
    -- partitioned history (koherent.set_retention): the partitions writes need from now on
    PERFORM koherent._create_partitions(cfg.id);
END $$;

COMMENT ON FUNCTION koherent.track(regclass, text[], boolean, boolean) IS
  'Start recording every row change of a table (idempotent; a second call applies a changed exclude, require_task or row_index). row_index => true adds the (primary key, history_id) index of its history table, false drops it; by default a new history table gets it and an existing one is left as it is.';

CREATE FUNCTION koherent.untrack(tbl regclass) RETURNS void
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

COMMENT ON FUNCTION koherent.untrack(regclass) IS
  'Stop recording a table; its history stays readable.';
