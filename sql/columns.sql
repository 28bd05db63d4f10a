-- koherent: a history table's columns, kept in step with its source table (after track() and
-- every ALTER TABLE): data columns and their "old:" twins, renamed and retired columns, and
-- the statistics ANALYZE may not compute.

-- The columns of a table as history stores them: domains by their base type.
CREATE FUNCTION koherent._source_columns(rel oid)
RETURNS TABLE (attnum smallint, attname name, type_sql text, atttypid oid)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- every level of a domain resolved: history never stores a domain, so no domain CHECK runs
    -- when earlier values are converted or copied (they run with the extension owner's rights)
    SELECT a.attnum, a.attname, koherent._base_type_sql(a.atttypid, a.atttypmod),
           koherent._base_type(a.atttypid)
      FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attnum
$$;

CREATE FUNCTION koherent._pk_columns(rel oid) RETURNS name[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT array_agg(a.attname ORDER BY k.ord)
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = rel AND i.indisprimary
$$;

-- Rename a history column: its data column and its "old:" twin, and its catalog row.
CREATE FUNCTION koherent._rename_column(cfg_id integer, hist text, col name, newname name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', hist, col, newname);
    EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', hist, 'old:' || col, 'old:' || newname);
    UPDATE koherent.tracked_column SET column_name = newname
     WHERE config_id = cfg_id AND column_name = col;
END $$;

-- Give a retired history column a name of its own so that a new live column can take its name.
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

-- Bring a history table's columns in line with its source table (after track, ALTER TABLE).
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
            -- With a ledger block sealed, converting recorded values would change what was
            -- sealed: the values stay as they were, under a retired name, below.
            IF koherent._is_builtin_type(a.atttypid)
               AND NOT EXISTS (SELECT 1 FROM koherent.ledger_block)
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

-- No statistics on history columns of types outside pg_catalog: ANALYZE (autovacuum's too) runs
-- as the history table's owner, the extension owner, and a range type's subtype_diff, which
-- whoever owns the range type writes, is called to compute them. History is looked up by its
-- indexes, not by estimates on these columns.
CREATE FUNCTION koherent._no_owner_statistics(hist regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col name;
BEGIN
    FOR col IN SELECT a.attname FROM pg_attribute a
                WHERE a.attrelid = hist AND a.attnum > 0 AND NOT a.attisdropped
                  AND a.attstattarget <> 0 AND NOT koherent._is_builtin_type(a.atttypid) LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET STATISTICS 0', hist, col);
    END LOOP;
END $$;
