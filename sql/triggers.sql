-- koherent: the triggers koherent puts on a tracked table and its partitions: the Rust history
-- writer, the partition guard, and the generated TRUNCATE copy.

-- The history writer (Rust, src/writer/): an AFTER ... FOR EACH STATEMENT trigger over the
-- statement's transition tables that inserts history tuples in batches, as COPY does. Its
-- arguments: history table name, require_task (t/f), the recorded columns' names.
CREATE FUNCTION koherent._history_trigger() RETURNS trigger
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'koherent_history_trigger';
REVOKE ALL ON FUNCTION koherent._history_trigger() FROM PUBLIC;

-- On the partitions of a tracked partitioned table: refuses a top-level MERGE that changes a
-- partition key column (PostgreSQL 15 hands the statement trigger of a MERGE that moves rows
-- between partitions no rows: the move would be neither recorded nor checked), and checks a task
-- for every row any statement moves on a require_task table. Its arguments: t/f (require_task),
-- then the partition key columns of every level ('*': an expression key).
CREATE FUNCTION koherent._merge_guard() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'koherent_merge_guard';
REVOKE ALL ON FUNCTION koherent._merge_guard() FROM PUBLIC;

-- Put a tracked table's triggers on the table and on every partition: the Rust writer for
-- INSERT / UPDATE / DELETE (its arguments carry the recorded columns, so this runs again after
-- every DDL that changes them), and a generated PL/pgSQL function that copies every row before
-- TRUNCATE removes it.
CREATE FUNCTION koherent._install_triggers(cfg_id integer) RETURNS void
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

CREATE FUNCTION koherent._drop_triggers(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t name;
BEGIN
    -- by name, and by function whatever they are called now (an owner may rename one: left in
    -- place, it would record every change a second time beside the one made again)
    FOR t IN SELECT g.tgname FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid
              WHERE g.tgrelid = rel AND NOT g.tgisinternal
                AND (g.tgname IN ('koherent_history_insert', 'koherent_history_update', 'koherent_history_delete',
                                  'koherent_history_truncate', 'koherent_merge_guard')
                     OR (p.pronamespace = 'koherent'::regnamespace
                         AND (p.proname IN ('_history_trigger', '_merge_guard') OR p.proname LIKE '\_truncate\_copy\_%')))
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t, rel::regclass);
    END LOOP;
END $$;
