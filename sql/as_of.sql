-- koherent: tables and rows as they were at a moment (as_of, as_of_task, row_as_of).
--
-- A change counts as made at its history date: the start time of the statement that made it
-- (strictly increasing within a session, src/running.rs). The rows of `tbl` as of `at` are its
-- rows now, rolled back through every entry dated after `at`: for each key those entries touch,
-- the first of them (in the order revert follows a row) gives the key's state at `at` (its "old"
-- image if it left the key, nothing if it arrived there). The history is read by the SECURITY
-- DEFINER helper koherent._as_of_rows, which hands out only what the caller may see; the rows
-- are built by the caller's own query (as_of is SECURITY INVOKER): privileges, row-level
-- security and the types' input functions all run as the caller.

-- The tracked table whose row type `typ` is, with its config (55000 when not tracked, 42809
-- when `typ` is no table's row type).
CREATE FUNCTION koherent._as_of_config(typ regtype) RETURNS koherent.tracked_config
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid;
    cfg koherent.tracked_config;
BEGIN
    SELECT t.typrelid INTO rel FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid
     WHERE t.oid = typ AND c.relkind IN ('r', 'p');
    IF rel IS NULL THEN
        RAISE EXCEPTION 'koherent: % is not the row type of a table', typ
            USING ERRCODE = 'wrong_object_type', HINT = 'Pass a null of the table''s type: koherent.as_of(NULL::public.item, ...).';
    END IF;
    SELECT * INTO cfg FROM koherent.tracked_config c WHERE c.relid = rel AND c.dropped_at IS NULL AND c.active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'koherent: % is not tracked', rel::regclass
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN cfg;
END $$;

-- The checks every as-of function makes first: the moment, the caller's SELECT privilege, the
-- moment within the table's history, a key's shape.
CREATE FUNCTION koherent._as_of_check(acting uuid, cfg koherent.tracked_config, at timestamptz, key jsonb) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tbl text := format('%I.%I', cfg.schema_name, cfg.table_name);
BEGIN
    IF at IS NULL THEN
        RAISE EXCEPTION 'koherent: the moment must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT has_table_privilege(koherent._acting_role(acting), cfg.relid, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for table %', cfg.table_name USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF at < cfg.tracked_since THEN
        RAISE EXCEPTION 'koherent: the history of % begins at %, after %', tbl, cfg.tracked_since, at
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Nothing is known of the table before koherent.track; ask for a moment since then.';
    END IF;
    -- the changes since the moment must all be there: none of them in a dropped partition
    IF EXISTS (SELECT 1 FROM koherent.retention_event e WHERE e.config_id = cfg.id AND e.entries > 0 AND e.range_to > at) THEN
        RAISE EXCEPTION 'koherent: the history of % before % was pruned, after %', tbl,
                        (SELECT max(e.range_to) FROM koherent.retention_event e WHERE e.config_id = cfg.id AND e.entries > 0), at
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'reason: history_pruned',
                  HINT = 'koherent.retention_event lists what koherent.prune() dropped; ask for a moment since.';
    END IF;
    IF key IS NOT NULL THEN
        IF jsonb_typeof(key) <> 'object'
           OR (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(key) k)
              IS DISTINCT FROM (SELECT array_agg(k::text ORDER BY k) FROM unnest(cfg.pk_columns) k) THEN
            RAISE EXCEPTION 'koherent: a row key of % is a JSON object of its primary key columns (%)', tbl,
                            array_to_string(cfg.pk_columns, ', ')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- (a primary key column is never null: such a key names no row, and is a null argument)
        IF EXISTS (SELECT 1 FROM jsonb_each(key) e WHERE jsonb_typeof(e.value) = 'null') THEN
            RAISE EXCEPTION 'koherent: the row key % of % has a null column', key, tbl
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
    END IF;
END $$;

-- Whether the key columns of `cfg`'s history are all of built-in types.
CREATE FUNCTION koherent._as_of_builtin_key(cfg koherent.tracked_config) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT bool_and(koherent._is_builtin_type(a.atttypid))
      FROM unnest(cfg.pk_columns) c
      JOIN pg_attribute a ON a.attrelid = format('koherent_history.%I', cfg.history_table)::regclass AND a.attname = c
$$;

-- A key of built-in types as a filter over history entries `h` (its own entries and the UPDATEs
-- that moved a row away from it), by the row and key-change indexes: `key_sql` is SQL giving the
-- key as jsonb (a literal, or a statement's parameter), converted by history's built-in input
-- functions.
CREATE FUNCTION koherent._as_of_key_filter(cfg koherent.tracked_config, key_sql text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('(%s OR (%s AND %s))',
                  string_agg(format('h.%I = (SELECT x.%I FROM jsonb_populate_record(NULL::%s, %s) x)', c, c, hist, key_sql), ' AND '),
                  string_agg(format('h.%I = (SELECT x.%I FROM jsonb_populate_record(NULL::%s, %s) x)', 'old:' || c, c, hist, key_sql), ' AND '),
                  koherent._key_change_predicate(cfg.pk_columns, 'h.'))
      FROM unnest(cfg.pk_columns) c, format('koherent_history.%I', cfg.history_table) hist
$$;

-- What every as-of lookup reads of an entry `h` (the order revert follows a row in, and the
-- row's state before the entry): id, dt, cmax (the greatest history id of its transaction among
-- the entries read), bkey (the key it left or changed in place: UPDATE, DELETE, TRUNCATE), akey
-- (the key it arrived at or changed in place: CREATE, UPDATE), before (the row's image before it).
CREATE FUNCTION koherent._as_of_entry_columns(cfg koherent.tracked_config) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format($c$h.history_id AS id, h.history_date AS dt,
                     max(h.history_id) OVER (PARTITION BY h.history_context) AS cmax,
                     CASE WHEN h.history_kind = 'UPDATE' THEN %1$s
                          WHEN h.history_kind IN ('DELETE', 'TRUNCATE') THEN %2$s END AS bkey,
                     CASE WHEN h.history_kind IN ('CREATE', 'UPDATE') THEN %2$s END AS akey,
                     CASE WHEN h.history_kind = 'UPDATE' THEN %3$s
                          WHEN h.history_kind IN ('DELETE', 'TRUNCATE') THEN %4$s END AS before$c$,
                  koherent._key_expr(cfg, 'old:', 'h'), koherent._key_expr(cfg, '', 'h'),
                  koherent._image_expr(cfg, 'old:', 'h'), koherent._image_expr(cfg, '', 'h'))
$$;

-- One key's filter over history entries `h`, as SQL (its own entries and the UPDATEs that moved
-- a row away from it), and the key as history's images show it. No value a client chose is
-- handled as a type here: a key of built-in types is converted from its JSON by built-in input
-- functions (history columns hold base types: no domain check) and looked up by the row and
-- key-change indexes; any other key is converted by the acting role's own statement
-- (koherent._as_caller: its domain checks, casts and input functions run as that role) into the
-- JSON history's images use, and compared as JSON.
CREATE FUNCTION koherent._as_of_key(acting uuid, cfg koherent.tracked_config, key jsonb,
                                    OUT filter text, OUT normalized jsonb)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    hist text := format('koherent_history.%I', cfg.history_table);
BEGIN
    IF koherent._as_of_builtin_key(cfg) THEN
        EXECUTE format('SELECT %s FROM jsonb_populate_record(NULL::%s, $1) x', koherent._key_expr(cfg, '', 'x'), hist)
           INTO normalized USING key;
        filter := koherent._as_of_key_filter(cfg, format('%L::jsonb', key));
    ELSE
        normalized := koherent._as_caller(acting, format(
            'SELECT jsonb_build_object(%s) FROM jsonb_populate_record(NULL::%I.%I, $1) x',
            (SELECT string_agg(format('%L, %s', c, koherent._json_of(koherent._base_type(a.atttypid), format('x.%I', c))), ', ')
               FROM unnest(cfg.pk_columns) c JOIN pg_attribute a ON a.attrelid = cfg.relid AND a.attname = c),
            cfg.schema_name, cfg.table_name), key, false);
        filter := format('(%s = %L::jsonb OR (%s = %L::jsonb AND %s))', koherent._key_expr(cfg, '', 'h'), normalized,
                         koherent._key_expr(cfg, 'old:', 'h'), normalized, koherent._key_change_predicate(cfg.pk_columns, 'h.'));
    END IF;
END $$;

-- For table `typ` as of `at` (entries dated after it are rolled back), or just before task
-- `task_id`'s first change (entries dated at it or after): {"pk": [key columns], "rows": [{"k": key, "b": image or null}, ...]}, one
-- element per key history touches after `at`; "b" null: no row had that key at `at`. Only keys
-- the caller may see: it needs SELECT on the table; under row-level security (and not an
-- auditor), only keys whose row it can read now. With `key`, that key only (index lookups).
CREATE FUNCTION koherent._as_of_rows(acting uuid, typ regtype, at timestamptz, task_id text, key jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET max_parallel_workers_per_gather = 0 SET jit = off AS $$
DECLARE
    cfg koherent.tracked_config := koherent._as_of_config(typ);
    caller oid := koherent._acting_role(acting);
    tbl text := format('%I.%I', cfg.schema_name, cfg.table_name);
    hist text := format('koherent_history.%I', cfg.history_table);
    keyfilter text := '';
    keymatch text;
    src text;
    rows jsonb;
    at_too boolean := false;
    kf record;
    knorm jsonb;
    visible jsonb;
BEGIN
    IF task_id IS NOT NULL THEN
        at := coalesce(koherent._task_started(task_id), 'infinity');
        at_too := true;
    END IF;
    PERFORM koherent._as_of_check(acting, cfg, at, key);
    IF key IS NOT NULL THEN
        -- index lookups: the row index (key, history_id) for the key's own entries, the
        -- key-change index for the UPDATEs that moved a row away from it
        kf := koherent._as_of_key(acting, cfg, key);
        keyfilter := ' AND ' || kf.filter;
        knorm := kf.normalized;
    END IF;
    EXECUTE format($q$
        WITH e AS MATERIALIZED (
            SELECT %2$s
              FROM %1$s h
             WHERE (h.history_date > $1 OR ($3 AND h.history_date = $1))%3$s
        ), ev AS (
            SELECT id, cmax, dt, bkey AS k, 0 AS role, before,
                   bkey IS DISTINCT FROM akey AS death FROM e WHERE bkey IS NOT NULL
            UNION ALL
            SELECT id, cmax, dt, akey, 1, NULL, false FROM e WHERE akey IS NOT NULL
        ), firsts AS (
            -- a statement's moves away from a key come before its moves to it (a key swap)
            SELECT DISTINCT ON (k) k, before AS b FROM ev ORDER BY k, cmax, dt, role, id
        ), deaths AS (
            SELECT DISTINCT k FROM ev WHERE death
        )
        SELECT jsonb_agg(jsonb_build_object('k', f.k, 'b', f.b, 'd', d.k IS NOT NULL))
          FROM firsts f LEFT JOIN deaths d ON d.k = f.k %4$s
        $q$, hist, koherent._as_of_entry_columns(cfg), keyfilter,
        CASE WHEN key IS NULL THEN '' ELSE format('WHERE f.k = %L::jsonb', knorm) END)
       INTO rows USING at, NULL::jsonb, at_too;
    rows := coalesce(rows, '[]');
    IF jsonb_array_length(rows) > 0 AND koherent._rls_active_for(cfg.relid, caller) THEN
        -- under row-level security (auditors too: the rows untouched since come from the table
        -- under the caller's policies): only the keys whose row the caller can read now, and of
        -- those, a key whose row was deleted or moved away since, a new row taking the key, shows
        -- nothing of its past (no row to check the policy against)
        SELECT string_agg(format('koherent_t.%I = (koherent_p.koherent_k).%I', c, c), ' AND ') INTO keymatch
          FROM unnest(cfg.pk_columns) c;
        -- the client's statement gets the keys only, never the images; it answers which it can read
        visible := koherent._as_caller(acting, format(
            'SELECT jsonb_agg(koherent_p.i) FROM (SELECT koherent_x.i, koherent_k FROM jsonb_array_elements($1) '
            'WITH ORDINALITY koherent_x(v, i), LATERAL jsonb_populate_record(NULL::%1$s, koherent_x.v) koherent_k) koherent_p '
            'WHERE EXISTS (SELECT 1 FROM %1$s koherent_t WHERE %2$s)',
            tbl, keymatch), (SELECT jsonb_agg(r->'k' ORDER BY n) FROM jsonb_array_elements(rows) WITH ORDINALITY AS e(r, n)), false);
        SELECT coalesce(jsonb_agg(CASE WHEN (r->>'d')::boolean THEN r || '{"b": null}' ELSE r END ORDER BY n), '[]') INTO rows
          FROM jsonb_array_elements(rows) WITH ORDINALITY AS e(r, n)
         WHERE n IN (SELECT (jsonb_array_elements_text(coalesce(visible, '[]')))::bigint);
    END IF;
    RETURN jsonb_build_object('pk', to_jsonb(cfg.pk_columns), 'table', tbl, 'rows', rows);
END $$;
COMMENT ON FUNCTION koherent._as_of_rows(uuid, regtype, timestamptz, text, jsonb) IS
  'Internal: the keys history touches after a moment and their images then (what the caller may see).';

-- The typed path of as_of and row_as_of, taken when the caller is not under row-level security
-- (or is an auditor) and no column of the table came or went since the moment: the entries
-- after the moment come typed from koherent._as_of_entries (SECURITY DEFINER, a set of records
-- with the history table's columns), and the caller's own query picks each key's first entry and
-- builds the rows, without row images as jsonb.

-- Whether the typed path applies, and the SQL it needs: null, or {"table", "pk", "coldefs"
-- (the column definition list of koherent._as_of_entries), "build" (the select list building a
-- row of the table from the first entry f and the row now c), "keymatch_t", "keymatch_c"}.
CREATE FUNCTION koherent._as_of_typed(acting uuid, typ regtype, at timestamptz, task_id text, key jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config := koherent._as_of_config(typ);
    caller oid := koherent._acting_role(acting);
    hist regclass := format('koherent_history.%I', cfg.history_table)::regclass;
    epoch bigint;
    first bigint;
    at_too boolean := false;
BEGIN
    IF task_id IS NOT NULL THEN
        at := coalesce(koherent._task_started(task_id), 'infinity');
        at_too := true;
    END IF;
    PERFORM koherent._as_of_check(acting, cfg, at, key);
    IF koherent._rls_active_for(cfg.relid, caller) THEN
        RETURN NULL;
    END IF;
    -- no column came or went since the moment: none since tracking began (no lookup), else
    -- none since the first entry after the moment (a row's lookup takes the other path then)
    SELECT max(greatest(c.live_from, coalesce(c.live_until, 0))), min(c.live_from) INTO epoch, first
      FROM koherent.tracked_column c WHERE c.config_id = cfg.id;
    IF epoch > first THEN
        IF key IS NOT NULL THEN
            RETURN NULL;
        END IF;
        EXECUTE format('SELECT min(h.history_id) FROM %s h WHERE h.history_date > $1 OR ($2 AND h.history_date = $1)', hist)
           INTO first USING at, at_too;
        IF first IS NOT NULL AND epoch > first THEN
            RETURN NULL;
        END IF;
    END IF;
    RETURN jsonb_build_object(
        'at', at, 'at_too', at_too,
        'table', format('%I.%I', cfg.schema_name, cfg.table_name),
        'pk', to_jsonb(cfg.pk_columns),
        'coldefs', 'history_id bigint, history_kind text, history_date timestamptz, cmax bigint, '
                   || (SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum)
                         FROM pg_attribute a WHERE a.attrelid = hist AND a.attnum > 0 AND NOT a.attisdropped
                          AND a.attname NOT IN ('history_id', 'history_kind', 'history_date', 'history_context')),
        'build', (SELECT string_agg(CASE WHEN t.column_name IS NOT NULL THEN format('f.%I::%s', 'b:' || s.attname,
                                                                                   format_type(s.atttypid, s.atttypmod))
                                         ELSE format('c.%I', s.attname) END, ', ' ORDER BY s.attnum)
                    FROM pg_attribute s
                    LEFT JOIN koherent.tracked_column t ON t.config_id = cfg.id AND t.live_until IS NULL AND t.attnum = s.attnum
                   WHERE s.attrelid = cfg.relid AND s.attnum > 0 AND NOT s.attisdropped),
        'before_cols', (SELECT string_agg(format('CASE WHEN h.history_kind = ''UPDATE'' THEN h.%I ELSE h.%I END AS %I',
                                                 'old:' || t.column_name, t.column_name, 'b:' || t.column_name), ', ' ORDER BY t.attnum)
                          FROM koherent.tracked_column t WHERE t.config_id = cfg.id AND t.live_until IS NULL),
        'before_names', (SELECT string_agg(format('%I', 'b:' || t.column_name), ', ' ORDER BY t.attnum)
                           FROM koherent.tracked_column t WHERE t.config_id = cfg.id AND t.live_until IS NULL),
        'kcols', (SELECT string_agg(format('%I', 'k:' || k), ', ') FROM unnest(cfg.pk_columns) k),
        -- the table's key columns as history's types (a domain's base type: the same index)
        'keymatch_t', (SELECT string_agg(format('t.%I::%s = f.%I', k, format_type(a.atttypid, a.atttypmod), 'k:' || k), ' AND ')
                         FROM unnest(cfg.pk_columns) k JOIN pg_attribute a ON a.attrelid = hist AND a.attname = k),
        'keycast', (SELECT jsonb_object_agg(k, format_type(a.atttypid, a.atttypmod))
                      FROM unnest(cfg.pk_columns) k JOIN pg_attribute a ON a.attrelid = hist AND a.attname = k),
        'kcols_f', (SELECT string_agg(format('f.%I', 'k:' || k), ', ') FROM unnest(cfg.pk_columns) k),
        'keymatch_c', (SELECT string_agg(format('c.%I::%s = f.%I', k, format_type(a.atttypid, a.atttypmod), 'k:' || k), ' AND ')
                         FROM unnest(cfg.pk_columns) k JOIN pg_attribute a ON a.attrelid = hist AND a.attname = k));
END $$;

-- The entries of `typ`'s history dated after `at` (with `at_too`, at it too), of key `key` if
-- given (index lookups), typed, as the history table has them. Only for a caller that may see
-- them all: SELECT on the table, and no row-level security in the way (or an auditor).
CREATE FUNCTION koherent._as_of_entries(acting uuid, typ regtype, at timestamptz, at_too boolean, key jsonb)
RETURNS SETOF record
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config := koherent._as_of_config(typ);
    caller oid := koherent._acting_role(acting);
    hist text := format('koherent_history.%I', cfg.history_table);
    keyfilter text := '';
BEGIN
    IF NOT has_table_privilege(caller, cfg.relid, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for table %', cfg.table_name USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF koherent._rls_active_for(cfg.relid, caller) THEN
        RAISE EXCEPTION 'koherent: % is under row-level security for this role', cfg.table_name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF key IS NOT NULL THEN
        keyfilter := ' AND ' || (koherent._as_of_key(acting, cfg, key)).filter;
    END IF;
    -- each entry with the greatest history id of its transaction in place of its context id
    -- (one key's: the moment's test taken by no index, see koherent._row_as_of_lookup)
    RETURN QUERY EXECUTE format('SELECT h.history_id, h.history_kind, h.history_date, '
                                'max(h.history_id) OVER (PARTITION BY h.history_context), %s '
                                'FROM %s h WHERE (h.history_date > $1 OR ($2 AND h.history_date = $1))%s%s',
                                (SELECT string_agg(format('h.%I', a.attname), ', ' ORDER BY a.attnum)
                                   FROM pg_attribute a WHERE a.attrelid = hist::regclass AND a.attnum > 0 AND NOT a.attisdropped
                                    AND a.attname NOT IN ('history_id', 'history_kind', 'history_date', 'history_context')),
                                hist, CASE WHEN keyfilter <> '' THEN ' IS TRUE' ELSE '' END, keyfilter)
                 USING at, at_too;
END $$;

-- The caller's query of the typed path: each key's first entry after the moment (in the order
-- revert follows rows), and from it the rows then. With `key`: that key's row only ($3, the
-- caller's own typed key row; $5 its JSON).
CREATE FUNCTION koherent._as_of_typed_select(info jsonb, typ regtype, key boolean) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH k AS (SELECT k, o FROM jsonb_array_elements_text(info->'pk') WITH ORDINALITY AS x(k, o))
    SELECT format($q$
        WITH e AS MATERIALIZED (
            SELECT h.history_id AS id, h.history_date AS dt, h.cmax, h.history_kind AS kind,
                   %4$s, %5$s, %6$s
              FROM koherent._as_of_entries($4, %2$L::regtype, $1, $2, $5) AS h(%3$s)
        ), ev AS (
            SELECT id, cmax, dt, 0 AS role, %7$s, %8$s FROM e WHERE kind <> 'CREATE'
            UNION ALL
            SELECT id, cmax, dt, 1 AS role, %9$s, %8$s FROM e WHERE kind IN ('CREATE', 'UPDATE')
        ), f AS (
            SELECT DISTINCT ON (%10$s) * FROM ev ORDER BY %10$s, cmax, dt, role, id
        )
        %11$s
        $q$,
        info->>'table', typ, info->>'coldefs',
        (SELECT string_agg(format('CASE WHEN h.history_kind = ''UPDATE'' THEN h.%I WHEN h.history_kind <> ''CREATE'' THEN h.%I END AS %I',
                                  'old:' || k, k, 'bk:' || k), ', ' ORDER BY o) FROM k),
        (SELECT string_agg(format('CASE WHEN h.history_kind IN (''CREATE'', ''UPDATE'') THEN h.%I END AS %I', k, 'ak:' || k), ', ' ORDER BY o) FROM k),
        info->>'before_cols',
        (SELECT string_agg(format('%I AS %I', 'bk:' || k, 'k:' || k), ', ' ORDER BY o) FROM k),
        info->>'before_names',
        (SELECT string_agg(format('%I AS %I', 'ak:' || k, 'k:' || k), ', ' ORDER BY o) FROM k),
        info->>'kcols',
        CASE WHEN key THEN format(
                 'SELECT %1$s FROM f LEFT JOIN %2$s c ON %3$s WHERE f.role = 0 AND (%4$s) = (%5$s) '
                 'UNION ALL SELECT t.* FROM %2$s t WHERE (%6$s) = (%5$s) AND NOT EXISTS (SELECT 1 FROM f WHERE (%4$s) = (%5$s))',
                 info->>'build', info->>'table', info->>'keymatch_c', info->>'kcols',
                 format('SELECT %s', (SELECT string_agg(format('($3).%I::%s', k, info->'keycast'->>k), ', ' ORDER BY o) FROM k)),
                 (SELECT string_agg(format('t.%I::%s', k, info->'keycast'->>k), ', ' ORDER BY o) FROM k))
             ELSE format('SELECT t.* FROM %1$s t WHERE NOT EXISTS (SELECT 1 FROM f WHERE %2$s) '
                         'UNION ALL SELECT %3$s FROM f LEFT JOIN %1$s c ON %4$s WHERE f.role = 0',
                         info->>'table', info->>'keymatch_t', info->>'build', info->>'keymatch_c') END)
$$;

-- The SELECT that builds the rows as of a moment from koherent._as_of_rows' answer ($1): the
-- rows history did not touch since, as they are, and the touched ones from their images
-- (merged over the row with the same key now, which gives the excluded columns).
CREATE FUNCTION koherent._as_of_select(info jsonb) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    -- (aliases no column of a table would be named: see koherent.row_as_of)
    SELECT format(
        'SELECT koherent_t.* FROM %1$s koherent_t WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements($1->''rows'') koherent_x(v), '
        'LATERAL jsonb_populate_record(NULL::%1$s, koherent_x.v->''k'') koherent_k WHERE %2$s) '
        'UNION ALL '
        'SELECT koherent_r.* FROM (SELECT koherent_x.v AS koherent_x, koherent_k FROM jsonb_array_elements($1->''rows'') koherent_x(v), '
        'LATERAL jsonb_populate_record(NULL::%1$s, koherent_x.v->''k'') koherent_k WHERE koherent_x.v->''b'' <> ''null'') koherent_p '
        'LEFT JOIN %1$s koherent_c ON %3$s CROSS JOIN LATERAL jsonb_populate_record(koherent_c, koherent_p.koherent_x->''b'') koherent_r',
        info->>'table',
        (SELECT string_agg(format('koherent_t.%I = koherent_k.%I', c, c), ' AND ') FROM jsonb_array_elements_text(info->'pk') c),
        (SELECT string_agg(format('koherent_c.%I = (koherent_p.koherent_k).%I', c, c), ' AND ') FROM jsonb_array_elements_text(info->'pk') c))
$$;

CREATE FUNCTION koherent.as_of(tbl anyelement, at timestamptz) RETURNS SETOF anyelement
-- no SET search_path: koherent._acting() records the caller's own; bitmap scans on whatever the
-- session says (the only way BRIN indexes are read: the entries since a moment or of a task)
LANGUAGE plpgsql STABLE SET enable_bitmapscan = on AS $$
DECLARE
    acting uuid := koherent._acting();  -- the role executing this function (SECURITY INVOKER)
    typed jsonb := koherent._as_of_typed(acting, pg_typeof(tbl)::regtype, at, NULL, NULL);
    info jsonb;
BEGIN
    IF typed IS NOT NULL THEN
        RETURN QUERY EXECUTE koherent._as_of_typed_select(typed, pg_typeof(tbl)::regtype, false)
                     USING at, false, tbl, acting, NULL::jsonb;
        RETURN;
    END IF;
    info := koherent._as_of_rows(acting, pg_typeof(tbl)::regtype, at, NULL, NULL);
    RETURN QUERY EXECUTE koherent._as_of_select(info) USING info;
END $$;
COMMENT ON FUNCTION koherent.as_of(anyelement, timestamptz) IS
  'The rows of a tracked table as they were at a moment: SELECT * FROM koherent.as_of(NULL::public.item, ''2026-12-01 10:00+00''). Changes count at their statement''s start time; excluded columns show what the table has now.';

-- The moment a task's first change was made (its earliest history date), or null.
CREATE FUNCTION koherent._task_started(task_id text) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ctx uuid[] := koherent._task_contexts(task_id, false);
    cfg koherent.tracked_config;
    t timestamptz;
    first timestamptz;
BEGIN
    IF task_id IS NULL THEN
        RAISE EXCEPTION 'koherent: task_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF ctx IS NULL THEN
        RAISE EXCEPTION 'koherent: no task "%" is recorded', task_id USING ERRCODE = 'no_data_found';
    END IF;
    FOR cfg IN SELECT * FROM koherent.tracked_config LOOP
        CONTINUE WHEN to_regclass(format('koherent_history.%I', cfg.history_table)) IS NULL;
        EXECUTE format('SELECT min(h.history_date) FROM koherent_history.%I h WHERE %s', cfg.history_table,
                       koherent._context_filter(cfg.id, ctx, '$1'))
           INTO t USING ctx;
        first := least(first, t);
    END LOOP;
    RETURN first;
END $$;

CREATE FUNCTION koherent.as_of_task(tbl anyelement, task_id text) RETURNS SETOF anyelement
-- no SET search_path: koherent._acting() records the caller's own; bitmap scans on whatever the
-- session says (the only way BRIN indexes are read: the entries since a moment or of a task)
LANGUAGE plpgsql STABLE SET enable_bitmapscan = on AS $$
DECLARE
    acting uuid := koherent._acting();
    info jsonb;
BEGIN
    IF task_id IS NULL THEN
        RAISE EXCEPTION 'koherent: task_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    info := koherent._as_of_typed(acting, pg_typeof(tbl)::regtype, NULL, task_id, NULL);
    IF info IS NOT NULL THEN
        RETURN QUERY EXECUTE koherent._as_of_typed_select(info, pg_typeof(tbl)::regtype, false)
                     USING (info->>'at')::timestamptz, true, tbl, acting, NULL::jsonb;
        RETURN;
    END IF;
    info := koherent._as_of_rows(acting, pg_typeof(tbl)::regtype, NULL, task_id, NULL);
    RETURN QUERY EXECUTE koherent._as_of_select(info) USING info;
END $$;
COMMENT ON FUNCTION koherent.as_of_task(anyelement, text) IS
  'The rows of a tracked table just before a task''s first change (the state its run started from).';

-- row_as_of's lookup, taken when the caller is not under row-level security and the key's types
-- are built in (null otherwise: the paths above answer): the key's first entry after the moment,
-- in the order revert follows rows (as koherent._as_of_rows finds it, for one key), by the row
-- and key-change indexes, with a plan kept per backend (koherent._kept_lookup). Returns
-- {"table", "pk", "s", "b"}: "s" is "now" (no entry since: the row now), "none" (the key's row
-- arrived after the moment: none then) or "then" ("b": its image then).
CREATE FUNCTION koherent._row_as_of_lookup(acting uuid, typ regtype, at timestamptz, key jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config := koherent._as_of_config(typ);
    hist text := format('koherent_history.%I', cfg.history_table);
    name text;
    first jsonb;
BEGIN
    PERFORM koherent._as_of_check(acting, cfg, at, key);
    IF koherent._rls_active_for(cfg.relid, koherent._acting_role(acting)) OR NOT koherent._as_of_builtin_key(cfg) THEN
        RETURN NULL;
    END IF;
    -- the statement's plan is kept per backend under a name that changes with its text: the
    -- table's config, its column epochs, the history table and its column types. (The moment's
    -- test is written so that no index takes it: BitmapAnd-ing the row index with the BRIN of
    -- history_date read every summary of the table, 0.4 of the 0.7 ms among 1.1M entries.)
    name := 'row_as_of:' || md5(cfg::text || hist::regclass::oid || (SELECT string_agg(concat_ws(':', c.attnum, c.live_from, c.live_until), ',' ORDER BY c.live_from, c.attnum)
                                                 FROM koherent.tracked_column c WHERE c.config_id = cfg.id)
                                || (SELECT string_agg(a.attname || ':' || a.atttypid, ',' ORDER BY a.attnum)
                                      FROM pg_attribute a WHERE a.attrelid = hist::regclass AND a.attnum > 0 AND NOT a.attisdropped));
    IF NOT koherent._kept(name) THEN
        -- $1 the moment, $2 whether entries at it count, $3 the key (history's types, built-in
        -- input functions)
        PERFORM koherent._keep(name, format($q$
            SELECT CASE WHEN r.role = 0 THEN jsonb_build_object('s', 'then', 'b', e.before) ELSE '{"s": "none"}' END
              FROM (SELECT %2$s
                      FROM %1$s h
                     WHERE (h.history_date > $1 OR ($2 AND h.history_date = $1)) IS TRUE AND %3$s) e
             CROSS JOIN LATERAL (VALUES (0), (1)) r(role)
             WHERE CASE r.role WHEN 0 THEN e.bkey ELSE e.akey END
                   = (SELECT %4$s FROM jsonb_populate_record(NULL::%1$s, $3) x)
             ORDER BY e.cmax, e.dt, r.role, e.id LIMIT 1
            $q$, hist, koherent._as_of_entry_columns(cfg), koherent._as_of_key_filter(cfg, '$3'),
            koherent._key_expr(cfg, '', 'x')));
    END IF;
    first := koherent._kept_lookup(name, at, false, key);
    RETURN jsonb_build_object('table', format('%I.%I', cfg.schema_name, cfg.table_name), 'pk', to_jsonb(cfg.pk_columns))
           || coalesce(first, '{"s": "now"}');
END $$;

CREATE FUNCTION koherent.row_as_of(tbl anyelement, row_key jsonb, at timestamptz) RETURNS anyelement
-- no SET search_path: koherent._acting() records the caller's own
LANGUAGE plpgsql STABLE AS $$
DECLARE
    acting uuid := koherent._acting();
    info jsonb;
    keymatch text;
    n bigint;
    keyrow record;
    image jsonb;
BEGIN
    IF row_key IS NULL THEN
        RAISE EXCEPTION 'koherent: row_key must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- the key's typed values, converted here with the caller's rights (its own query filters
    -- the typed path's entries by them)
    keyrow := jsonb_populate_record(tbl, row_key);
    info := koherent._row_as_of_lookup(acting, pg_typeof(tbl)::regtype, at, row_key);
    IF info->>'s' = 'none' THEN
        RETURN NULL;  -- no row had this key then
    ELSIF info IS NOT NULL THEN
        image := info->'b';  -- (null for "now")
    ELSE
        info := koherent._as_of_typed(acting, pg_typeof(tbl)::regtype, at, NULL, row_key);
        IF info IS NOT NULL THEN
            EXECUTE koherent._as_of_typed_select(info, pg_typeof(tbl)::regtype, true) INTO tbl USING at, false, keyrow, acting, row_key;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 0 THEN
                RETURN NULL;
            END IF;
            RETURN tbl;
        END IF;
        info := koherent._as_of_rows(acting, pg_typeof(tbl)::regtype, at, NULL, row_key);
        IF info->'rows'->0->'b' = 'null' THEN
            RETURN NULL;  -- no row had this key then
        END IF;
        image := info->'rows'->0->'b';
    END IF;
    SELECT string_agg(format('koherent_c.%I = koherent_k.%I', c, c), ' AND ') INTO keymatch
      FROM jsonb_array_elements_text(info->'pk') c;
    -- the row now (the caller's query: its rights), merged with its image then if it changed since
    -- (aliases no column of a table would be named: a whole-row reference by an alias that is
    -- also a column's name would be read as that column)
    EXECUTE format('SELECT koherent_r.* FROM jsonb_populate_record(NULL::%1$s, $1) koherent_k LEFT JOIN %1$s koherent_c ON %2$s '
                   'CROSS JOIN LATERAL jsonb_populate_record(koherent_c, $2) koherent_r '
                   'WHERE koherent_c.ctid IS NOT NULL OR $2 IS NOT NULL',
                   info->>'table', keymatch)
       INTO tbl USING row_key, image;  -- tbl: a variable of the table's row type
    GET DIAGNOSTICS n = ROW_COUNT;  -- (EXECUTE does not set FOUND)
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    RETURN tbl;
END $$;
COMMENT ON FUNCTION koherent.row_as_of(anyelement, jsonb, timestamptz) IS
  'One row of a tracked table as it was at a moment (null if no row had that key then): an index lookup.';
