-- koherent: following DDL on tracked tables (event triggers): ALTER TABLE, DROP TABLE,
-- inheritance, and a restore into another database.

-- After a dump is restored into another database, tracked tables have new oids: find each
-- still-live configuration's table again by its recorded name. Returns whether anything moved
-- (the caller then rebuilds the views). Called by the DDL event trigger (a restore's post-data
-- ALTER TABLE ... ADD CONSTRAINT of every tracked table's primary key fires it), by track() and
-- by expose().
CREATE FUNCTION koherent._relink() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    moved integer;
BEGIN
    UPDATE koherent.tracked_config c
       SET relid = to_regclass(format('%I.%I', c.schema_name, c.table_name))
     WHERE c.dropped_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace
                        WHERE r.oid = c.relid AND n.nspname = c.schema_name AND r.relname = c.table_name)
       AND to_regclass(format('%I.%I', c.schema_name, c.table_name)) IS NOT NULL;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved > 0;
END $$;

-- Plain inheritance children of a tracked table (not partitions): their rows would escape
-- history, so koherent refuses them.
CREATE FUNCTION koherent._refuse_inheritance(rel oid DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad record;
BEGIN
    SELECT c.relid::regclass AS parent, i.inhrelid::regclass AS child INTO bad
      FROM koherent.tracked_config c
      JOIN pg_inherits i ON i.inhparent = c.relid
      JOIN pg_class k ON k.oid = i.inhrelid
     WHERE c.dropped_at IS NULL AND c.active AND NOT k.relispartition
       AND (rel IS NULL OR c.relid = rel)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'koherent: tracked table % cannot have inheritance child %', bad.parent, bad.child
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Rows written into an inheritance child do not fire the parent''s history triggers.',
                  HINT = 'Use a partitioned table (its partitions are tracked), or track the child tables themselves.';
    END IF;
    -- nor become one, nor a partition (ATTACH PARTITION): a write through the parent fires only
    -- the parent's statement triggers, so changes of the tracked table's rows made that way
    -- would escape history (track the parent instead)
    SELECT i.inhparent::regclass AS parent, c.relid::regclass AS child INTO bad
      FROM koherent.tracked_config c
      JOIN pg_inherits i ON i.inhrelid = c.relid
     WHERE c.dropped_at IS NULL AND c.active
       AND (rel IS NULL OR c.relid = rel)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'koherent: tracked table % cannot inherit from %', bad.child, bad.parent
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Changes made through the parent do not fire the tracked table''s statement triggers.';
    END IF;
END $$;

CREATE FUNCTION koherent._on_ddl_end() RETURNS event_trigger
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

CREATE FUNCTION koherent._on_sql_drop() RETURNS event_trigger
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

-- Before DDL on a tracked table runs (src/ddl.rs): ALTER COLUMN ... TYPE ... USING an expression
-- is refused (it would rewrite the rows' values without history); the rows of a partition
-- attached, detached or dropped are recorded (koherent._record_partition_rows). The C function
-- runs as the client (the type names of a USING are the client's); it records as the owner.
CREATE FUNCTION koherent._on_ddl_start() RETURNS event_trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'koherent_on_ddl_start';
CREATE EVENT TRIGGER koherent_ddl_start ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'DROP TABLE', 'ALTER TYPE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION koherent._on_ddl_start();

-- The rows of partition `part` as entries of the tracked table that `parent` is (or is a
-- partition of), `kind` CREATE (attached) or TRUNCATE (detached, dropped), in the current
-- transaction's context, as TRUNCATE's copy records the rows it removes (a require_task table
-- needs a task). Called before the statement that attaches, detaches or drops it (src/ddl.rs);
-- not executable by anyone but the extension owner.
CREATE FUNCTION koherent._record_partition_rows(parent oid, part oid, kind text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    cfg koherent.tracked_config;
    cols text;
    ocols text;
BEGIN
    IF kind NOT IN ('CREATE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'koherent._record_partition_rows: unknown kind %', kind USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c.* INTO cfg FROM koherent.tracked_config c
     WHERE c.dropped_at IS NULL AND c.active
       AND c.relid IN (SELECT a.relid FROM pg_partition_ancestors(parent) a)
     ORDER BY c.id LIMIT 1;
    IF NOT FOUND OR to_regclass(format('koherent_history.%I', cfg.history_table)) IS NULL THEN
        RETURN;
    END IF;
    SELECT string_agg(format('%I', column_name), ', ' ORDER BY attnum),
           string_agg(format('o.%I', column_name), ', ' ORDER BY attnum)
      INTO cols, ocols
      FROM koherent.tracked_column WHERE config_id = cfg.id AND live_until IS NULL;
    IF cfg.require_task THEN
        PERFORM koherent._require_task(part);
    END IF;
    EXECUTE format('INSERT INTO koherent_history.%I (history_id, history_kind, history_date, history_context, %s) '
                   'SELECT koherent._next_history_id(), %L, koherent._history_date(), '
                   '(SELECT koherent._write_context($1, $2)), %s FROM %s o',
                   cfg.history_table, cols, kind, ocols, part::regclass)
      USING cfg.require_task, part;
END $$;
REVOKE ALL ON FUNCTION koherent._record_partition_rows(oid, oid, text) FROM PUBLIC;
CREATE EVENT TRIGGER koherent_ddl_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE')
    EXECUTE FUNCTION koherent._on_ddl_end();
CREATE EVENT TRIGGER koherent_sql_drop ON sql_drop
    EXECUTE FUNCTION koherent._on_sql_drop();

-------------------------------------------------------------------------------------------------
