-- koherent: undoing a task or a transaction (revert_plan, revert_task, revert_context), and the
-- history images both revert and as-of read.
--
-- The functions that read history are SECURITY DEFINER (clients hold no privilege on history).
-- Everything they do to the client's tables, reading current rows, taking row locks, writing,
-- runs as the client through koherent._as_caller (src/revert/mod.rs): GRANTs and row-level
-- security apply as if the client had sent the statements itself.

CREATE FUNCTION koherent._as_caller(acting uuid, query text, arg jsonb, callers_path boolean) RETURNS jsonb
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'koherent_as_caller';
COMMENT ON FUNCTION koherent._as_caller(uuid, text, jsonb, boolean) IS
  'Internal: run one generated statement as the role a capability from koherent._acting() names, with its search_path (owner only).';

-- A row image of history entries as jsonb: the data columns (prefix '') or their "old:" twins
-- (prefix 'old:') of entry `alias`, named as the table's columns are named now, with exactly the
-- columns that were recorded when the entry was: a column added later is absent, not null. A
-- column retired by a type change that history could not convert is named as its successor
-- (the value converts when it is written back); a dropped column keeps its history name, which
-- no longer names a column of the table (the revert reports it as column_dropped).
CREATE FUNCTION koherent._image_expr(cfg koherent.tracked_config, prefix text, alias text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    hist regclass := format('koherent_history.%I', cfg.history_table)::regclass;
    marks bigint[];
    lo bigint;
    hi bigint;
    branches text := '';
    obj text;
    i integer;
BEGIN
    SELECT array_agg(DISTINCT m ORDER BY m) INTO marks
      FROM (SELECT live_from AS m FROM koherent.tracked_column WHERE config_id = cfg.id
            UNION SELECT live_until FROM koherent.tracked_column WHERE config_id = cfg.id AND live_until IS NOT NULL) s;
    IF marks IS NULL THEN
        RETURN '''{}''::jsonb';
    END IF;
    -- one object per interval between marks: the columns live in it
    FOR i IN 1 .. array_length(marks, 1) LOOP
        lo := marks[i];
        hi := marks[i + 1];  -- null for the last interval
        SELECT koherent._object_expr(array_agg(x.target::text ORDER BY x.n), array_agg(format('%s.%I', alias, x.col) ORDER BY x.n),
                                     array_agg(x.typ ORDER BY x.n))
          INTO obj
          FROM (SELECT (prefix || c.column_name)::name AS col, a.atttypid AS typ,
                       coalesce((SELECT s.column_name FROM koherent.tracked_column s
                                  WHERE s.config_id = cfg.id AND c.live_until IS NOT NULL
                                    AND s.live_from = c.live_until AND s.live_until IS NULL
                                    AND (s.column_name = c.column_name
                                         OR c.column_name = left(s.column_name, 40) || '@' || c.live_until)),
                                c.column_name) AS target,
                       row_number() OVER (ORDER BY c.attnum NULLS LAST, c.column_name) AS n
                  FROM koherent.tracked_column c
                  JOIN pg_attribute a ON a.attrelid = hist AND a.attname = (prefix || c.column_name)::name AND NOT a.attisdropped
                 WHERE c.config_id = cfg.id AND c.live_from <= lo AND (c.live_until IS NULL OR c.live_until > lo)) x;
        IF hi IS NULL AND i = 1 THEN
            RETURN obj;  -- no column came or went
        ELSIF hi IS NULL THEN
            branches := branches || format(' ELSE %s END', obj);
        ELSE
            branches := branches || format(' WHEN %s.history_id < %s THEN %s', alias, hi, obj);
        END IF;
    END LOOP;
    RETURN '(CASE' || branches || ')';
END $$;

-- A current row of a tracked table as jsonb, built as history builds its images (see
-- koherent._json_expr): its columns except the excluded ones. Runs as the client.
CREATE FUNCTION koherent._source_json_expr(cfg koherent.tracked_config, alias text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._object_expr(array_agg(a.attname::text ORDER BY a.attnum),
                                 array_agg(format('%s.%I', alias, a.attname) ORDER BY a.attnum),
                                 array_agg(a.atttypid ORDER BY a.attnum))
      FROM pg_attribute a
     WHERE a.attrelid = cfg.relid AND a.attnum > 0 AND NOT a.attisdropped AND NOT (a.attname = ANY (cfg.exclude))
$$;

-- Whether row-level security filters the rows of `tbl` for role `r` (row_security_active asks
-- for the current user; inside SECURITY DEFINER that is the owner).
CREATE FUNCTION koherent._rls_active_for(tbl regclass, r oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.relrowsecurity
           AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE oid = r)
           AND NOT (pg_has_role(r, c.relowner, 'USAGE') AND NOT c.relforcerowsecurity)
      FROM pg_class c WHERE c.oid = tbl
$$;

-- The rows a set of contexts changed in one history table, one per table row: the row is
-- followed through the entries of those contexts (a key change moves it to its new key; a
-- DELETE and a later CREATE of the same key continue it), from its state before their first
-- change ("before", null when they created it) to their last ("after", null when they deleted
-- it). Order within the contexts: one transaction's entries by statement date, then id;
-- different transactions' entries of one row by the greatest history id each wrote (a row's
-- writers are serialized by its row lock, so every id of the earlier one is smaller).
-- Parameter $1: the context ids; `entries`: the condition that picks their entries (made by
-- koherent._context_filter: sealed contexts by the ledger's id ranges, so that a table the
-- contexts did not write is not read at all). Columns: head (first entry id), bkey, akey,
-- before, after.
CREATE FUNCTION koherent._revert_threads_sql(cfg koherent.tracked_config, entries text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format($q$
        WITH RECURSIVE e AS MATERIALIZED (
            SELECT h.history_id AS id, h.history_kind AS kind, h.history_date AS dt,
                   max(h.history_id) OVER (PARTITION BY h.history_context) AS cmax,
                   CASE WHEN h.history_kind = 'UPDATE' THEN %2$s
                        WHEN h.history_kind IN ('DELETE', 'TRUNCATE') THEN %3$s END AS bkey,
                   CASE WHEN h.history_kind IN ('CREATE', 'UPDATE') THEN %3$s END AS akey,
                   CASE WHEN h.history_kind = 'UPDATE' THEN %4$s
                        WHEN h.history_kind IN ('DELETE', 'TRUNCATE') THEN %5$s END AS before,
                   CASE WHEN h.history_kind IN ('CREATE', 'UPDATE') THEN %5$s END AS after
              FROM koherent_history.%1$I h
             WHERE %6$s
        ),
        -- each entry leaves its old key (role 0) and arrives at its new one (role 1); in one
        -- key's order, a leave right after an arrival continues that arrival's row; within a
        -- statement, its moves away from a key come before its moves to it (a key swap)
        ev AS (
            SELECT id, cmax, dt, bkey AS k, 0 AS role FROM e WHERE bkey IS NOT NULL
            UNION ALL
            SELECT id, cmax, dt, akey, 1 FROM e WHERE akey IS NOT NULL
        ),
        lk AS (
            SELECT id, role, lag(role) OVER w AS prole, lag(id) OVER w AS pid,
                   lead(role) OVER w AS nrole, lead(id) OVER w AS nid
              FROM ev WINDOW w AS (PARTITION BY k ORDER BY cmax, dt, role, id)
        ),
        link AS (
            SELECT e.id, lp.pid AS pred, ln.nid AS nxt
              FROM e
              LEFT JOIN lk lp ON lp.id = e.id AND lp.role = 0 AND lp.prole = 1
              LEFT JOIN lk ln ON ln.id = e.id AND ln.role = 1 AND ln.nrole = 0
        ),
        chain AS (
            SELECT l.id AS head, l.id, l.nxt, 0 AS depth FROM link l WHERE l.pred IS NULL
            UNION ALL
            SELECT c.head, l.id, l.nxt, c.depth + 1 FROM chain c JOIN link l ON l.id = c.nxt
        ),
        ends AS (
            SELECT DISTINCT ON (head) head, id AS tail FROM chain ORDER BY head, depth DESC
        )
        SELECT h.id AS head, h.bkey, t.akey, h.before, t.after
          FROM ends x JOIN e h ON h.id = x.head JOIN e t ON t.id = x.tail
         WHERE h.before IS NOT NULL OR t.after IS NOT NULL
        $q$, cfg.history_table,
        koherent._key_expr(cfg, 'old:', 'h'), koherent._key_expr(cfg, '', 'h'),
        koherent._image_expr(cfg, 'old:', 'h'), koherent._image_expr(cfg, '', 'h'), entries)
$$;

-- Tables in foreign key order: a table after every table it references (cycles: by oid).
CREATE FUNCTION koherent._fk_order(tbls oid[]) RETURNS oid[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done oid[] := '{}';
    rest oid[] := tbls;
    pick oid;
BEGIN
    WHILE array_length(rest, 1) > 0 LOOP
        SELECT r INTO pick FROM unnest(rest) r
         WHERE NOT EXISTS (SELECT 1 FROM pg_constraint f
                            WHERE f.contype = 'f' AND f.conrelid = r AND f.confrelid <> r
                              AND f.confrelid = ANY (rest))
         ORDER BY r LIMIT 1;
        IF pick IS NULL THEN
            SELECT min(r) INTO pick FROM unnest(rest) r;
        END IF;
        done := done || pick;
        rest := array_remove(rest, pick);
    END LOOP;
    RETURN done;
END $$;

-- The typed path. Most reverts are of tasks that changed each row once, kept its key, and ran
-- after the table's last column change: then a row's plan is its one entry, and everything is
-- done on typed values in single statements: no row images as jsonb (the general path above
-- builds two per entry and passes them through the client's statements as jsonb). The entries
-- are shown to the client's statements by a temporary view over the history table, owned by the
-- extension owner and granted to the client for the length of the call (a view reads with its
-- owner's rights; the client reads nothing else of history, and the view is gone when the call
-- returns or fails).

-- Whether two values of type `typ` (a history column's, a base type) are the same, as SQL: the
-- same answer the row-by-row path and effective_change give (their JSON text is the same).
CREATE FUNCTION koherent._same_expr(typ oid, a text, b text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        -- types whose equality is identity: compared as they are (fast)
        WHEN typ IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'bool'::regtype, 'text'::regtype,
                     'varchar'::regtype, 'name'::regtype, 'uuid'::regtype, 'date'::regtype, 'timestamp'::regtype,
                     'timestamptz'::regtype, 'bytea'::regtype, 'oid'::regtype, '"char"'::regtype)
             THEN format('(%s IS NOT DISTINCT FROM %s)', a, b)
        -- numeric: its JSON text is its output text (a number, or a string for NaN and the
        -- infinities), which is fixed by the value and the display scale: 1.0 and 1.00 differ.
        -- Compared as such, without printing either (NaN equals NaN, each infinity itself; their
        -- scale is null)
        WHEN typ = 'numeric'::regtype
             THEN format('(%1$s IS NOT DISTINCT FROM %2$s AND scale(%1$s) IS NOT DISTINCT FROM scale(%2$s))', a, b)
        -- any other: as history shows it, the JSON text of the value (interval '1 day' and
        -- '24 hours', char padding differ; float -0 and 0 do not; see koherent._json_of)
        ELSE format('(%s::text IS NOT DISTINCT FROM %s::text)', koherent._json_of(typ, a), koherent._json_of(typ, b))
    END
$$;

-- The typed path's view of table `cfg`'s entries in contexts `ctx`, when they qualify: its name
-- (pg_temp.koherent_revert_<config id>), else null. One row per table row the contexts changed,
-- as one entry would show it: head (the first entry's history id), kind, "k:<key column>",
-- "n:<column>" (the row after the contexts; a reinsert's row for DELETE and TRUNCATE),
-- "o:<column>" (an UPDATE's row before the contexts), for the columns history records now.
-- The entries qualify when no key changed, no column came or went since the first, and every
-- key's entries are one thread: a CREATE only first, a DELETE or TRUNCATE only last (what the
-- row-by-row path, koherent._revert_threads_sql, makes of them then: the first entry's row
-- before, the last one's after). A key changed once is its entry; a key changed more than once
-- is the first and last of its entries (window functions over the key, one sort), and is left
-- out when the contexts created and deleted it.
-- (no sequential scan of the history table for the count: see koherent.task_changes)
CREATE FUNCTION koherent._revert_fast_view(acting uuid, cfg koherent.tracked_config, ctx uuid[]) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET enable_seqscan = off SET enable_bitmapscan = on AS $$
DECLARE
    hist text := format('koherent_history.%I', cfg.history_table);
    name text := 'koherent_revert_' || cfg.id;
    keycols text := (SELECT string_agg(format('h.%I', k), ', ') FROM unnest(cfg.pk_columns) k);
    filter text := koherent._context_filter(cfg.id, ctx, quote_literal(ctx::text) || '::uuid[]');
    first bigint;
    n bigint;
    keys bigint;
    moved boolean;
    broken boolean;
    epoch bigint;
    -- a row's entries in the order its versions followed each other, as the row-by-row path and
    -- as_of order them: by transaction (the order of their last entries: a transaction writing
    -- a row another one wrote waited for its commit), then by date within one (a statement
    -- nested in another, an AFTER ROW trigger's UPDATE of its own row, is dated later but
    -- written first, so its entry's id is smaller)
    ordered text := CASE WHEN cardinality(ctx) = 1 THEN 'h.history_date, h.history_id'
                         ELSE 'h."koherent:cmax", h.history_date, h.history_id' END;
    entries text;
BEGIN
    -- the view shows the caller every entry of the task in this table: only to a caller who may
    -- see them all (SELECT on the table, and no row-level security in the way, or an auditor)
    IF NOT cfg.active OR cfg.dropped_at IS NOT NULL OR pg_is_in_recovery()
       OR current_setting('transaction_read_only')::boolean
       OR NOT has_table_privilege(koherent._acting_role(acting), cfg.relid, 'SELECT')
       OR (koherent._rls_active_for(cfg.relid, koherent._acting_role(acting)) AND NOT koherent._is_auditor(koherent._acting_role(acting))) THEN
        RETURN NULL;
    END IF;
    -- (one key column counted as itself: sorting its datums is much cheaper than rows)
    -- (sealed contexts by the ledger's id ranges, koherent._context_filter)
    EXECUTE format('SELECT min(h.history_id), count(*), count(DISTINCT %s), coalesce(bool_or(%s), false) '
                   'FROM %s h WHERE %s',
                   CASE WHEN cardinality(cfg.pk_columns) = 1 THEN keycols ELSE format('ROW(%s)', keycols) END,
                   koherent._key_change_predicate(cfg.pk_columns, 'h.'), hist, koherent._context_filter(cfg.id, ctx, '$1'))
       INTO first, n, keys, moved USING ctx;
    SELECT max(greatest(c.live_from, coalesce(c.live_until, 0))) INTO epoch
      FROM koherent.tracked_column c WHERE c.config_id = cfg.id;
    IF n = 0 OR moved OR epoch > first THEN
        RETURN NULL;
    END IF;
    IF n <> keys THEN
        -- (the task's entries of this table, alias h, with the last id of each one's transaction
        -- when the task has more than one)
        entries := CASE WHEN cardinality(ctx) = 1 THEN format('%s h WHERE %s', hist, filter)
                        ELSE format('(SELECT h.*, max(h.history_id) OVER (PARTITION BY h.history_context) AS "koherent:cmax" '
                                    'FROM %s h WHERE %s) h', hist, filter) END;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM (SELECT h.history_kind AS kind, lag(h.history_id) OVER w AS prev, '
                       'lead(h.history_id) OVER w AS next FROM %s '
                       'WINDOW w AS (PARTITION BY %s ORDER BY %s)) x '
                       'WHERE (x.kind = ''CREATE'' AND x.prev IS NOT NULL) '
                       'OR (x.kind IN (''DELETE'', ''TRUNCATE'') AND x.next IS NOT NULL))',
                       entries, keycols, ordered)
           INTO broken;
        IF broken THEN
            RETURN NULL;
        END IF;
    END IF;
    IF to_regclass(format('pg_temp.%I', name)) IS NOT NULL THEN  -- (a view a failed call left)
        EXECUTE format('DROP VIEW pg_temp.%I', name);
    END IF;
    IF n = keys THEN
        EXECUTE format('CREATE TEMP VIEW %I AS SELECT h.history_id AS head, h.history_kind AS kind, %s, %s, %s '
                       'FROM %s h WHERE %s', name,
                       (SELECT string_agg(format('h.%I AS %I', k, 'k:' || k), ', ') FROM unnest(cfg.pk_columns) k),
                       (SELECT string_agg(format('h.%I AS %I', c.column_name, 'n:' || c.column_name), ', ' ORDER BY c.attnum)
                          FROM koherent.tracked_column c WHERE c.config_id = cfg.id AND c.live_until IS NULL),
                       (SELECT string_agg(format('h.%I AS %I', 'old:' || c.column_name, 'o:' || c.column_name), ', ' ORDER BY c.attnum)
                          FROM koherent.tracked_column c WHERE c.config_id = cfg.id AND c.live_until IS NULL),
                       hist, filter);
    ELSE
        -- per key, the last entry (x."h:id", x."h:kind", its row x."c:<column>") with the first
        -- one's id, kind and rows beside it (x."f:id", x."f:kind", x."f:n:<column>",
        -- x."f:o:<column>"; every name prefixed, so no column's name can take another's); kind
        -- as one entry would have it: CREATE when the first created the row, DELETE/TRUNCATE
        -- when the last removed it (its row: the one before the first), UPDATE otherwise
        EXECUTE format($v$CREATE TEMP VIEW %1$I AS
            SELECT x."f:id" AS head,
                   CASE WHEN x."f:kind" = 'CREATE' THEN 'CREATE'
                        WHEN x."h:kind" IN ('DELETE', 'TRUNCATE') THEN x."h:kind" ELSE 'UPDATE' END AS kind,
                   %2$s, %3$s, %4$s
              FROM (SELECT h.history_id AS "h:id", h.history_kind AS "h:kind", %5$s,
                           first_value(h.history_id) OVER w AS "f:id", first_value(h.history_kind) OVER w AS "f:kind",
                           last_value(h.history_id) OVER w AS "l:id", %6$s
                      FROM %7$s
                    WINDOW w AS (PARTITION BY %8$s ORDER BY %9$s ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) x
             WHERE x."h:id" = x."l:id" AND NOT (x."f:kind" = 'CREATE' AND x."h:kind" IN ('DELETE', 'TRUNCATE'))$v$,
            name,
            (SELECT string_agg(format('x.%I', 'k:' || k), ', ') FROM unnest(cfg.pk_columns) k),
            (SELECT string_agg(format($c$CASE WHEN x."h:kind" NOT IN ('DELETE', 'TRUNCATE') THEN x.%1$I
                                              WHEN x."f:kind" = 'UPDATE' THEN x.%3$I ELSE x.%2$I END AS %4$I$c$,
                                      'c:' || c.column_name, 'f:n:' || c.column_name, 'f:o:' || c.column_name,
                                      'n:' || c.column_name),
                               ', ' ORDER BY c.attnum)
               FROM koherent.tracked_column c WHERE c.config_id = cfg.id AND c.live_until IS NULL),
            (SELECT string_agg(format($c$CASE WHEN x."f:kind" = 'UPDATE' THEN x.%I END AS %I$c$,
                                      'f:o:' || c.column_name, 'o:' || c.column_name), ', ' ORDER BY c.attnum)
               FROM koherent.tracked_column c WHERE c.config_id = cfg.id AND c.live_until IS NULL),
            (SELECT string_agg(format('h.%I AS %I', k, 'k:' || k), ', ') FROM unnest(cfg.pk_columns) k)
              || coalesce(', ' || (SELECT string_agg(format('h.%I AS %I', c.column_name, 'c:' || c.column_name), ', ' ORDER BY c.attnum)
                                     FROM koherent.tracked_column c WHERE c.config_id = cfg.id AND c.live_until IS NULL), ''),
            (SELECT string_agg(format('first_value(h.%I) OVER w AS %I, first_value(h.%I) OVER w AS %I',
                                      c.column_name, 'f:n:' || c.column_name, 'old:' || c.column_name, 'f:o:' || c.column_name),
                               ', ' ORDER BY c.attnum)
               FROM koherent.tracked_column c WHERE c.config_id = cfg.id AND c.live_until IS NULL),
            entries, keycols, ordered);
    END IF;
    EXECUTE format('GRANT SELECT ON pg_temp.%I TO %I', name, (SELECT rolname FROM pg_roles WHERE oid = koherent._acting_role(acting)));
    RETURN 'pg_temp.' || quote_ident(name);
END $$;

-- The SQL pieces of the typed path for table `cfg` (view alias v, the current row t, LEFT
-- JOINed on the key): as jsonb {"table", "join", "changed" (per column: whether the UPDATE
-- changed it), "any_changed", "conflict" (the conflict code, as revert_plan's), "row_key",
-- "current", "restored", "cols" (the columns an INSERT writes), "required_missing"}.
CREATE FUNCTION koherent._revert_fast_sql(acting uuid, cfg koherent.tracked_config, view text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller oid := koherent._acting_role(acting);
    auditor boolean := koherent._is_auditor(koherent._acting_role(acting));
    rls boolean := koherent._rls_active_for(cfg.relid, caller);
    hist regclass := format('koherent_history.%I', cfg.history_table)::regclass;
    tbl text := format('%I.%I', cfg.schema_name, cfg.table_name);
    c record;
    changed jsonb := '{}';
    later_upd text[] := '{}';
    later_del text[] := '{}';
    r_keys text[] := '{}';
    r_exprs text[] := '{}';
    i_exprs text[] := '{}';
    typs oid[] := '{}';
    cols text[] := '{}';
    required_missing boolean;
    conflict text;
BEGIN
    FOR c IN
        SELECT t.column_name AS col, a.atttypid AS typ,
               coalesce((SELECT s.attgenerated <> '' FROM pg_attribute s
                          WHERE s.attrelid = cfg.relid AND s.attname = t.column_name AND NOT s.attisdropped), false) AS gen
          FROM koherent.tracked_column t
          JOIN pg_attribute a ON a.attrelid = hist AND a.attname = t.column_name AND NOT a.attisdropped
         WHERE t.config_id = cfg.id AND t.live_until IS NULL ORDER BY t.attnum
    LOOP
        later_del := later_del || format('NOT %s', koherent._same_expr(c.typ, format('t.%I', c.col), format('v.%I', 'n:' || c.col)));
        CONTINUE WHEN c.gen;
        changed := changed || jsonb_build_object(c.col,
            format('NOT %s', koherent._same_expr(c.typ, format('v.%I', 'o:' || c.col), format('v.%I', 'n:' || c.col))));
        later_upd := later_upd || format('(%s AND NOT %s)', changed->>c.col,
            koherent._same_expr(c.typ, format('t.%I', c.col), format('v.%I', 'n:' || c.col)));
        -- (a null key leaves its pair out: the restored image holds the columns that changed)
        r_keys := r_keys || format('CASE WHEN %s THEN %L::text END', changed->>c.col, c.col);
        r_exprs := r_exprs || format('v.%I', 'o:' || c.col);
        i_exprs := i_exprs || format('v.%I', 'n:' || c.col);
        typs := typs || c.typ;
        cols := cols || c.col::text;
    END LOOP;
    -- a reinsert gets defaults for what history does not hold: a NOT NULL column without one blocks it
    SELECT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = cfg.relid AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull
                      AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
                      AND NOT (a.attname::text = ANY (cols)))
      INTO required_missing;
    conflict := format($c$CASE
        WHEN %1$s AND ((v.kind IN ('CREATE', 'UPDATE') AND t.ctid IS NULL) OR (v.kind IN ('DELETE', 'TRUNCATE') AND NOT %2$s))
             THEN 'not_visible'
        WHEN v.kind IN ('DELETE', 'TRUNCATE') AND %3$s THEN 'excluded_required'
        WHEN v.kind IN ('CREATE', 'UPDATE') AND t.ctid IS NULL THEN 'deleted_later'
        WHEN v.kind IN ('DELETE', 'TRUNCATE') AND t.ctid IS NOT NULL THEN 'key_exists'
        WHEN v.kind = 'UPDATE' AND (%4$s) THEN 'changed_later'
        WHEN v.kind = 'CREATE' AND (%5$s) THEN 'changed_later'
    END$c$, rls::text, auditor::text, required_missing::text,
        coalesce(nullif(array_to_string(later_upd, ' OR '), ''), 'false'),
        coalesce(nullif(array_to_string(later_del, ' OR '), ''), 'false'));
    RETURN jsonb_build_object(
        'table', tbl, 'view', view, 'rls', rls, 'auditor', auditor, 'required_missing', required_missing,
        'keymatch', (SELECT string_agg(format('t.%I = v.%I', k, 'k:' || k), ' AND ') FROM unnest(cfg.pk_columns) k),
        'changed', changed,
        'any_changed', coalesce((SELECT string_agg(value #>> '{}', ' OR ') FROM jsonb_each(changed)), 'false'),
        'conflict', conflict,
        'row_key', (SELECT koherent._object_expr(array_agg(k::text ORDER BY o), array_agg(format('v.%I', 'k:' || k) ORDER BY o),
                                                 array_agg(a.atttypid ORDER BY o))
                      FROM unnest(cfg.pk_columns) WITH ORDINALITY u(k, o) JOIN pg_attribute a ON a.attrelid = hist AND a.attname = k),
        'current', koherent._source_json_expr(cfg, 't'),
        'restored_update', koherent._object_expr(r_keys, r_exprs, typs, keys_sql => true),
        'restored_insert', koherent._object_expr(cols, i_exprs, typs),
        'cols', to_jsonb(cols));
END $$;

-- revert_plan's rows of a table on the typed path: the SELECT (the client's own) that gives them,
-- in revert_plan's columns, in history order.
CREATE FUNCTION koherent._revert_fast_plan_sql(acting uuid, cfg koherent.tracked_config, view text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q jsonb := koherent._revert_fast_sql(acting, cfg, view);
BEGIN
    -- the conflict computed once per row, in the join (OFFSET 0 keeps the planner from copying
    -- it into every expression that uses it); what a non-auditor may not see is masked; the row
    -- now only for a row of the task's (an INSERT's key may hold another row: key_exists, and
    -- current_data null, as on the row-by-row path)
    RETURN format($s$
        SELECT %10$s::oid::regclass,
               CASE WHEN m.masked THEN NULL ELSE %3$s END,
               CASE v.kind WHEN 'CREATE' THEN 'DELETE' WHEN 'UPDATE' THEN 'UPDATE' ELSE 'INSERT' END,
               CASE WHEN m.masked THEN NULL ELSE v.cur END,
               CASE WHEN m.masked THEN NULL
                    WHEN v.kind = 'UPDATE' THEN %6$s
                    WHEN v.kind IN ('DELETE', 'TRUNCATE') THEN %7$s END,
               v.w
          FROM (SELECT v.*, CASE WHEN t.ctid IS NOT NULL AND v.kind IN ('CREATE', 'UPDATE') THEN %4$s END AS cur, %5$s AS w
                  FROM %1$s v LEFT JOIN %2$s t ON %8$s
                 WHERE v.kind <> 'UPDATE' OR %9$s OFFSET 0) v
         CROSS JOIN LATERAL (SELECT v.w = 'not_visible' AND NOT %11$s) m(masked)
        $s$, view, q->>'table', q->>'row_key', q->>'current', q->>'conflict',
        q->>'restored_update', q->>'restored_insert', q->>'keymatch', q->>'any_changed', cfg.relid, q->>'auditor');
END $$;

-- revert_plan and revert_context_plan run the typed path's SELECTs themselves (with the client's
-- rights, straight into their result): these two SECURITY DEFINER helpers prepare the views and
-- give the SELECTs, then plan the other tables row by row and drop the views. Each checks that
-- the client may call the plan functions.
CREATE FUNCTION koherent._revert_plan_check(acting uuid) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT (has_function_privilege(koherent._acting_role(acting), 'koherent.revert_plan(text, boolean)', 'EXECUTE')
            OR has_function_privilege(koherent._acting_role(acting), 'koherent.revert_context_plan(uuid)', 'EXECUTE')
            OR has_function_privilege(koherent._acting_role(acting), 'koherent.revert_task(text, boolean, text)', 'EXECUTE')
            OR has_function_privilege(koherent._acting_role(acting), 'koherent.revert_context(uuid, text)', 'EXECUTE')) THEN
        RAISE EXCEPTION 'permission denied for function revert_plan' USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;

CREATE FUNCTION koherent._revert_plan_prepare(acting uuid, ctx uuid[]) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    view text;
    fast jsonb := '[]';
BEGIN
    PERFORM koherent._revert_plan_check(acting);
    PERFORM koherent._pruned_check(ctx, 'revert');
    FOR cfg IN SELECT * FROM koherent.tracked_config c ORDER BY c.id LOOP
        CONTINUE WHEN to_regclass(format('koherent_history.%I', cfg.history_table)) IS NULL;
        PERFORM koherent._summarize(to_regclass(format('koherent_history.%I', cfg.history_table))::oid);
        view := koherent._revert_fast_view(acting, cfg, ctx);
        IF view IS NOT NULL THEN
            fast := fast || jsonb_build_object('cfg', cfg.id, 'sql', koherent._revert_fast_plan_sql(acting, cfg, view));
        END IF;
    END LOOP;
    RETURN fast;
END $$;

CREATE FUNCTION koherent._revert_plan_rest(acting uuid, ctx uuid[], skip integer[])
RETURNS TABLE (table_name regclass, row_key jsonb, action text, current_data jsonb, restored_data jsonb,
               conflict text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id integer;
BEGIN
    PERFORM koherent._revert_plan_check(acting);
    FOREACH id IN ARRAY skip LOOP
        IF to_regclass(format('pg_temp.%I', 'koherent_revert_' || id)) IS NOT NULL THEN
            EXECUTE format('DROP VIEW pg_temp.%I', 'koherent_revert_' || id);
        END IF;
    END LOOP;
    RETURN QUERY SELECT r.table_name, r.row_key, r.action, r.current_data, r.restored_data, r.conflict
                   FROM koherent._revert_rows(acting, ctx, false, skip) r;
END $$;

-- The plan (revert_plan, revert_context_plan): the typed path's tables, then the others.
-- (no sequential scan of history: see koherent.task_changes; the plan of a 100k-row task,
-- whose rows are then read by their keys, costs the same. The typed path's SELECT may run in
-- parallel, as the planner decides (max_parallel_workers_per_gather): it reads and builds in
-- parallel workers what a large task's plan returns, 1.3x faster on two cores for 100k rows)
CREATE FUNCTION koherent._revert_plan(acting uuid, ctx uuid[])
RETURNS TABLE (table_name regclass, row_key jsonb, action text, current_data jsonb, restored_data jsonb,
               conflict text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
SET jit = off SET enable_seqscan = off SET enable_bitmapscan = on AS $$
DECLARE
    fast jsonb := koherent._revert_plan_prepare(acting, ctx);
    f jsonb;
BEGIN
    FOR f IN SELECT * FROM jsonb_array_elements(fast) LOOP
        RETURN QUERY EXECUTE f->>'sql';
    END LOOP;
    RETURN QUERY SELECT * FROM koherent._revert_plan_rest(acting, ctx,
        (SELECT coalesce(array_agg((x->>'cfg')::int), '{}') FROM jsonb_array_elements(fast) x));
END $$;

-- The typed path of revert_task for one table: lock the rows the plan writes (as the client),
-- then find the conflicts and count the writes per action. Returns {"cfg", "sql", "conflicts",
-- "counts": {"<action>:<conflict or ok>": n}}.
CREATE FUNCTION koherent._revert_fast_prepare(acting uuid, cfg koherent.tracked_config, view text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q jsonb := koherent._revert_fast_sql(acting, cfg, view);
    res jsonb;
BEGIN
    PERFORM koherent._as_caller(acting, format(
        'SELECT to_jsonb(count(*)) FROM (SELECT 1 FROM %2$s t JOIN %1$s v ON %3$s '
        'WHERE v.kind IN (''CREATE'', ''UPDATE'') FOR UPDATE OF t) x', view, q->>'table', q->>'keymatch'), NULL, false);
    res := koherent._as_caller(acting, format($s$
        SELECT jsonb_build_object(
            'conflicts', coalesce(jsonb_agg(jsonb_build_object('table_name', %3$L, 'row_key', x.k, 'action', x.a,
                                                               'conflict', x.w) ORDER BY x.head)
                                  FILTER (WHERE x.w IS NOT NULL), '[]'),
            'counts', jsonb_build_object(
                'DELETE:ok', count(*) FILTER (WHERE x.a = 'DELETE' AND x.w IS NULL),
                'DELETE:changed_later', count(*) FILTER (WHERE x.a = 'DELETE' AND x.w = 'changed_later'),
                'UPDATE:ok', count(*) FILTER (WHERE x.a = 'UPDATE' AND x.w IS NULL),
                'UPDATE:changed_later', count(*) FILTER (WHERE x.a = 'UPDATE' AND x.w = 'changed_later'),
                'UPDATE:deleted_later', count(*) FILTER (WHERE x.a = 'UPDATE' AND x.w = 'deleted_later'),
                'INSERT:ok', count(*) FILTER (WHERE x.a = 'INSERT' AND x.w IS NULL)))
          FROM (SELECT v.head,
                       CASE v.kind WHEN 'CREATE' THEN 'DELETE' WHEN 'UPDATE' THEN 'UPDATE' ELSE 'INSERT' END AS a,
                       CASE WHEN v.w IS NULL OR (v.w = 'not_visible' AND NOT %8$s) THEN NULL ELSE %4$s END AS k,
                       v.w
                  FROM (SELECT v.*, %5$s AS w FROM %1$s v LEFT JOIN %2$s t ON %6$s
                         WHERE v.kind <> 'UPDATE' OR %7$s OFFSET 0) v) x
        $s$, view, q->>'table', cfg.relid::regclass::text, q->>'row_key', q->>'conflict', q->>'keymatch',
        q->>'any_changed', q->>'auditor'), NULL, false);
    RETURN jsonb_build_object('cfg', cfg.id, 'sql', q, 'conflicts', res->'conflicts', 'counts', res->'counts');
END $$;

-- One step of the typed path's writes ('delete', 'update', 'insert'), as the client; the rows
-- it writes must be those counted by koherent._revert_fast_prepare (42501 otherwise: a policy
-- hides some of them from the write). Returns how many rows it wrote.
CREATE FUNCTION koherent._revert_fast_write(acting uuid, info jsonb, step text, on_conflict text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q jsonb := info->'sql';
    view text := q->>'view';
    tbl text := q->>'table';
    counts jsonb := info->'counts';
    -- under skip, only rows without a conflict; otherwise every row (a blocking conflict was
    -- raised before, and overwrite writes over changed_later)
    keep text := CASE WHEN on_conflict = 'skip' THEN format('AND (%s) IS NULL', q->>'conflict') ELSE '' END;
    mask text;
    m text;
    keys text[];
    cols text;
    ncols text;
    ocols text;
    total bigint := 0;
    expected bigint;
BEGIN
    SELECT string_agg(format('%I', c), ', '), string_agg(format('v.%I', 'n:' || c), ', '),
           string_agg(format('v.%I', 'o:' || c), ', ') INTO cols, ncols, ocols
      FROM jsonb_array_elements_text(q->'cols') c;
    IF step = 'delete' THEN
        expected := coalesce((counts->>'DELETE:ok')::bigint, 0)
                    + CASE WHEN on_conflict = 'skip' THEN 0 ELSE coalesce((counts->>'DELETE:changed_later')::bigint, 0) END;
        IF expected > 0 THEN
            PERFORM koherent._revert_write(acting, format('DELETE FROM %s t USING %s v WHERE %s AND v.kind = ''CREATE'' %s',
                                                  tbl, view, q->>'keymatch', keep), NULL, expected, 'delete', tbl);
        END IF;
        RETURN expected;
    ELSIF step = 'update' THEN
        expected := coalesce((counts->>'UPDATE:ok')::bigint, 0)
                    + CASE WHEN on_conflict = 'skip' THEN 0 ELSE coalesce((counts->>'UPDATE:changed_later')::bigint, 0) END;
        IF expected > 0 THEN
            -- one statement per set of changed columns, each writing only those: the set as a
            -- string of 0s and 1s, one per column in the order of `changed`'s keys
            SELECT array_agg(key ORDER BY n), string_agg(format('CASE WHEN %s THEN ''1'' ELSE ''0'' END', value #>> '{}'), ' || ' ORDER BY n)
              INTO keys, mask
              FROM jsonb_each(q->'changed') WITH ORDINALITY AS e(key, value, n);
            FOR m IN EXECUTE format('SELECT DISTINCT %s FROM %s v WHERE v.kind = ''UPDATE'' AND (%s)', mask, view, q->>'any_changed') LOOP
                CONTINUE WHEN strpos(m, '1') = 0;
                total := total + (koherent._as_caller(acting, format(
                    'UPDATE %s t SET %s FROM %s v WHERE %s AND v.kind = ''UPDATE'' AND %s = %L %s', tbl,
                    (SELECT string_agg(format('%I = v.%I', keys[i], 'o:' || keys[i]), ', ')
                       FROM generate_series(1, length(m)) i WHERE substr(m, i, 1) = '1'),
                    view, q->>'keymatch', mask, m, keep), NULL, true))::text::bigint;
            END LOOP;
            IF total <> expected THEN
                RAISE EXCEPTION 'koherent: the revert could update only % of % rows of %; nothing was written', total, expected, tbl
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'A row-level security policy of the reverting role hides the others from its writes.';
            END IF;
        END IF;
        RETURN expected;
    ELSE
        expected := coalesce((counts->>'INSERT:ok')::bigint, 0);
        IF expected > 0 THEN
            PERFORM koherent._revert_write(acting, format(
                'INSERT INTO %1$s (%2$s) OVERRIDING SYSTEM VALUE SELECT %3$s FROM %4$s v LEFT JOIN %1$s t ON %5$s '
                'WHERE v.kind IN (''DELETE'', ''TRUNCATE'') AND (%6$s) IS NULL',
                tbl, cols, ncols, view, q->>'keymatch', q->>'conflict'), NULL, expected, 'insert', tbl);
        END IF;
        -- overwrite: a row the task changed and someone deleted since is written back whole
        IF on_conflict = 'overwrite' AND coalesce((counts->>'UPDATE:deleted_later')::bigint, 0) > 0 THEN
            PERFORM koherent._revert_write(acting, format(
                'INSERT INTO %1$s (%2$s) OVERRIDING SYSTEM VALUE SELECT %3$s FROM %4$s v '
                'WHERE v.kind = ''UPDATE'' AND (%5$s) AND NOT EXISTS (SELECT 1 FROM %1$s t WHERE %6$s)',
                tbl, cols, ocols, view, q->>'any_changed', q->>'keymatch'),
                NULL, (counts->>'UPDATE:deleted_later')::bigint, 'insert', tbl);
            expected := expected + (counts->>'UPDATE:deleted_later')::bigint;
        END IF;
        RETURN expected;
    END IF;
END $$;

-- The plan to undo the changes of a set of contexts: per table row, the write that restores it
-- and why it may not (conflict). With `lock`, the rows are locked first (SELECT ... FOR UPDATE
-- as the client), so that no writer changes them between the plan and the revert's writes.
-- Columns beyond revert_plan's: the config, the key of the row now (`at_key`), the columns an
-- UPDATE or INSERT writes (`fields`), the full image before (`before_data`).
CREATE FUNCTION koherent._revert_rows(acting uuid, ctx uuid[], lock boolean, skip integer[] DEFAULT '{}')
RETURNS TABLE (cfg_id integer, table_name regclass, row_key jsonb, action text, current_data jsonb,
               restored_data jsonb, conflict text, at_key jsonb, fields text[], before_data jsonb, head bigint)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
SET max_parallel_workers_per_gather = 0 SET jit = off AS $$
DECLARE
    cfg koherent.tracked_config;
    caller oid := koherent._acting_role(acting);
    auditor boolean := koherent._is_auditor(koherent._acting_role(acting));
    hist regclass;
    threads jsonb;
    cur jsonb;
    occ jsonb;
    tbl text;
    keymatch text;
    restorable text[];
    generated text[];
    required text[];
    readable boolean;
    rls boolean;
    keys jsonb;
BEGIN
    FOR cfg IN SELECT * FROM koherent.tracked_config c WHERE NOT (c.id = ANY (skip)) ORDER BY c.id LOOP
        hist := to_regclass(format('koherent_history.%I', cfg.history_table));
        CONTINUE WHEN hist IS NULL;
        PERFORM koherent._summarize(hist::oid);
        EXECUTE format('SELECT jsonb_agg(to_jsonb(x) ORDER BY x.head) FROM (%s) x',
                       koherent._revert_threads_sql(cfg, koherent._context_filter(cfg.id, ctx, '$1')))
           INTO threads USING ctx;
        CONTINUE WHEN threads IS NULL;

        IF NOT cfg.active OR cfg.dropped_at IS NOT NULL OR to_regclass(cfg.relid::regclass::text) IS NULL THEN
            RETURN QUERY
            SELECT cfg.id, cfg.relid::regclass,
                   CASE WHEN auditor THEN coalesce(t.v->'akey', t.v->'bkey') END,
                   CASE WHEN t.v->'before' IS NULL OR t.v->'before' = 'null' THEN 'DELETE'
                        WHEN t.v->'after' IS NULL OR t.v->'after' = 'null' THEN 'INSERT' ELSE 'UPDATE' END,
                   NULL::jsonb, CASE WHEN auditor THEN t.v->'before' END, 'not_tracked'::text,
                   NULL::jsonb, NULL::text[], NULL::jsonb, (t.v->>'head')::bigint
              FROM jsonb_array_elements(threads) t(v);
            CONTINUE;
        END IF;

        tbl := format('%I.%I', cfg.schema_name, cfg.table_name);
        readable := has_table_privilege(caller, cfg.relid, 'SELECT');
        rls := koherent._rls_active_for(cfg.relid, caller);
        SELECT array_agg(a.attname::text) FILTER (WHERE a.attgenerated = '' AND NOT (a.attname = ANY (cfg.exclude))),
               array_agg(a.attname::text) FILTER (WHERE a.attgenerated <> ''),
               array_agg(a.attname::text) FILTER (WHERE a.attnotnull AND NOT a.atthasdef AND a.attidentity = ''
                                                   AND a.attgenerated = '')
          INTO restorable, generated, required
          FROM pg_attribute a WHERE a.attrelid = cfg.relid AND a.attnum > 0 AND NOT a.attisdropped;
        restorable := coalesce(restorable, '{}');
        generated := coalesce(generated, '{}');
        required := coalesce(required, '{}');
        SELECT string_agg(format('t.%I = koherent_k.%I', c, c), ' AND ') INTO keymatch FROM unnest(cfg.pk_columns) c;

        cur := NULL;
        occ := NULL;
        IF readable THEN
            -- the client's statements get the keys only, never the rows' past images
            SELECT jsonb_agg(jsonb_build_object('akey', t.v->'akey', 'bkey', t.v->'bkey') ORDER BY t.i) INTO keys
              FROM jsonb_array_elements(threads) WITH ORDINALITY AS t(v, i);
            -- as the client: lock the rows at their keys now, then read them and whether the
            -- keys a revert would move or reinsert rows to are taken
            IF lock THEN
                PERFORM koherent._as_caller(acting, format(
                    'SELECT to_jsonb(count(*)) FROM (SELECT 1 FROM %1$s t, jsonb_array_elements($1) koherent_p(v), '
                    'LATERAL jsonb_populate_record(NULL::%1$s, coalesce(nullif(koherent_p.v->''akey'', ''null''), ''{}'')) koherent_k '
                    'WHERE %2$s FOR UPDATE OF t) x', tbl, keymatch), keys, false);
            END IF;
            cur := koherent._as_caller(acting, format(
                'SELECT jsonb_agg(CASE WHEN t.ctid IS NOT NULL THEN %3$s END ORDER BY p.i) '
                'FROM (SELECT p.i, koherent_k FROM jsonb_array_elements($1) WITH ORDINALITY p(v, i), '
                'LATERAL jsonb_populate_record(NULL::%1$s, coalesce(nullif(p.v->''akey'', ''null''), ''{}'')) koherent_k) p '
                'LEFT JOIN %1$s t ON %2$s', tbl, replace(keymatch, 'koherent_k.', '(p.koherent_k).'), koherent._source_json_expr(cfg, 't')), keys, false);
            occ := koherent._as_caller(acting, format(
                'SELECT jsonb_agg(t.ctid IS NOT NULL ORDER BY p.i) '
                'FROM (SELECT p.i, koherent_k FROM jsonb_array_elements($1) WITH ORDINALITY p(v, i), '
                'LATERAL jsonb_populate_record(NULL::%1$s, CASE WHEN p.v->''bkey'' IS DISTINCT FROM p.v->''akey'' '
                'THEN coalesce(nullif(p.v->''bkey'', ''null''), ''{}'') ELSE ''{}'' END) koherent_k) p '
                'LEFT JOIN %1$s t ON %2$s', tbl, replace(keymatch, 'koherent_k.', '(p.koherent_k).')), keys, false);
        END IF;

        RETURN QUERY
        WITH z AS (
            SELECT z.t, nullif(z.c, 'null') AS c, coalesce((z.o)::text::boolean, false) AS o, z.i
              FROM ROWS FROM (jsonb_array_elements(threads),
                              jsonb_array_elements(coalesce(cur, '[]')),
                              jsonb_array_elements(coalesce(occ, '[]'))) WITH ORDINALITY AS z(t, c, o, i)
        ), p AS (
            SELECT z.*, nullif(z.t->'before', 'null') AS b, nullif(z.t->'after', 'null') AS a,
                   nullif(z.t->'bkey', 'null') AS bk, nullif(z.t->'akey', 'null') AS ak
              FROM z
        ), q AS (
            SELECT p.*,
                   CASE WHEN p.b IS NULL THEN 'DELETE' WHEN p.a IS NULL THEN 'INSERT' ELSE 'UPDATE' END AS act,
                   -- the fields an UPDATE writes: those the contexts changed
                   (SELECT array_agg(f ORDER BY f) FROM jsonb_object_keys(p.b) f
                     WHERE p.a IS NOT NULL AND (p.b->f)::text IS DISTINCT FROM (p.a->f)::text AND NOT (f = ANY (generated))) AS changed
              FROM p
        ), r AS (
            SELECT q.*,
                   CASE q.act
                        WHEN 'UPDATE' THEN (SELECT jsonb_object_agg(f, q.b->f) FROM unnest(q.changed) f)
                        WHEN 'INSERT' THEN (SELECT jsonb_object_agg(f, v) FROM jsonb_each(q.b) x(f, v)
                                             WHERE f = ANY (restorable))
                   END AS restored
              FROM q
             WHERE q.act <> 'UPDATE' OR q.changed IS NOT NULL
        ), freed AS (  -- keys this revert empties: rows it deletes or moves away
            SELECT r.ak FROM r WHERE r.act = 'DELETE' OR (r.act = 'UPDATE' AND r.ak IS DISTINCT FROM r.bk)
        ), s AS (
            SELECT r.*,
                   CASE
                     WHEN NOT readable THEN 'not_visible'
                     WHEN r.a IS NOT NULL AND r.c IS NULL AND rls THEN 'not_visible'
                     WHEN r.a IS NULL AND rls AND NOT auditor THEN 'not_visible'
                     WHEN r.act = 'UPDATE' AND EXISTS (SELECT 1 FROM unnest(r.changed) f WHERE NOT (f = ANY (restorable)))
                          THEN 'column_dropped'
                     WHEN r.act = 'INSERT' AND EXISTS (SELECT 1 FROM unnest(required) f WHERE NOT (r.restored ? f))
                          THEN 'excluded_required'
                     WHEN r.a IS NOT NULL AND r.c IS NULL THEN 'deleted_later'
                     WHEN (r.act = 'INSERT' OR (r.act = 'UPDATE' AND r.ak IS DISTINCT FROM r.bk)) AND r.o
                          AND NOT EXISTS (SELECT 1 FROM freed WHERE freed.ak = r.bk) THEN 'key_exists'
                     WHEN r.act = 'UPDATE' AND EXISTS (SELECT 1 FROM unnest(r.changed) f
                                                        WHERE r.c ? f AND (r.c->f)::text IS DISTINCT FROM (r.a->f)::text)
                          THEN 'changed_later'
                     WHEN r.act = 'DELETE' AND EXISTS (SELECT 1 FROM jsonb_each(r.a) x(f, v)
                                                        WHERE r.c ? f AND (r.c->f)::text IS DISTINCT FROM v::text)
                          THEN 'changed_later'
                   END AS why
              FROM r
        )
        SELECT cfg.id, cfg.relid::regclass,
               CASE WHEN s.why = 'not_visible' AND NOT auditor THEN NULL
                    WHEN s.act = 'INSERT' THEN s.bk ELSE s.ak END,
               s.act,
               CASE WHEN s.why = 'not_visible' AND NOT auditor THEN NULL ELSE s.c END,
               CASE WHEN s.why = 'not_visible' AND NOT auditor THEN NULL ELSE s.restored END,
               s.why, s.ak,
               CASE s.act WHEN 'UPDATE' THEN s.changed
                          WHEN 'INSERT' THEN (SELECT array_agg(f ORDER BY f) FROM jsonb_object_keys(s.restored) f) END,
               CASE WHEN s.why = 'not_visible' AND NOT auditor THEN NULL
                    ELSE (SELECT jsonb_object_agg(f, v) FROM jsonb_each(s.b) x(f, v) WHERE f = ANY (restorable)) END,
               (s.t->>'head')::bigint
          FROM s ORDER BY s.i;
    END LOOP;
END $$;

CREATE FUNCTION koherent._revert_check_args(on_conflict text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF on_conflict IS NULL OR on_conflict NOT IN ('abort', 'skip', 'overwrite') THEN
        RAISE EXCEPTION 'koherent: on_conflict must be ''abort'', ''skip'' or ''overwrite'', not %',
                        coalesce(quote_literal(on_conflict), 'null')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

CREATE FUNCTION koherent._revert_task_contexts(acting uuid, task_id text, include_subtasks boolean) RETURNS uuid[]
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ctx uuid[];
BEGIN
    PERFORM koherent._revert_plan_check(acting);
    IF task_id IS NULL THEN
        RAISE EXCEPTION 'koherent: task_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    ctx := koherent._task_contexts(task_id, coalesce(include_subtasks, false));
    IF ctx IS NULL THEN
        RAISE EXCEPTION 'koherent: no task "%" is recorded', task_id
            USING ERRCODE = 'no_data_found', HINT = 'koherent.task lists the tasks that wrote tracked rows.';
    END IF;
    -- never the reverting transaction's own writes
    RETURN array_remove(ctx, koherent.current_context_id());
END $$;

CREATE FUNCTION koherent.revert_plan(task_id text, include_subtasks boolean DEFAULT false)
RETURNS TABLE (table_name regclass, row_key jsonb, action text, current_data jsonb, restored_data jsonb,
               conflict text)
LANGUAGE plpgsql VOLATILE
SET jit = off SET enable_seqscan = off SET enable_bitmapscan = on AS $$
DECLARE
    acting uuid := koherent._acting();  -- the role executing this function (SECURITY INVOKER)
    ctx uuid[] := koherent._revert_task_contexts(acting, task_id, include_subtasks);
    fast jsonb := koherent._revert_plan_prepare(acting, ctx);
    f jsonb;
BEGIN
    -- (the body of koherent._revert_plan, here so that the rows are not copied once more)
    FOR f IN SELECT * FROM jsonb_array_elements(fast) LOOP
        RETURN QUERY EXECUTE f->>'sql';
    END LOOP;
    RETURN QUERY SELECT * FROM koherent._revert_plan_rest(acting, ctx,
        (SELECT coalesce(array_agg((x->>'cfg')::int), '{}') FROM jsonb_array_elements(fast) x));
END $$;
COMMENT ON FUNCTION koherent.revert_plan(text, boolean) IS
  'What reverting a task would write: one row per table row it changed (DELETE, INSERT or UPDATE; in no particular order), the row now, the values restored, and a conflict code or null. Changes nothing.';

CREATE FUNCTION koherent.revert_context_plan(context_id uuid)
RETURNS TABLE (table_name regclass, row_key jsonb, action text, current_data jsonb, restored_data jsonb,
               conflict text)
LANGUAGE plpgsql VOLATILE SET enable_bitmapscan = on AS $$  -- (as revert_plan)
DECLARE
    acting uuid := koherent._acting();
BEGIN
    PERFORM koherent._revert_context_check(acting, context_id);
    RETURN QUERY SELECT * FROM koherent._revert_plan(acting, ARRAY[context_id]);
END $$;

CREATE FUNCTION koherent._revert_context_check(acting uuid, context_id uuid) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM koherent._revert_plan_check(acting);
    IF context_id IS NULL THEN
        RAISE EXCEPTION 'koherent: context_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM koherent.transaction_auth_context c WHERE c.id = context_id) THEN
        RAISE EXCEPTION 'koherent: no context % is recorded', context_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'A context is recorded by the first tracked write of a transaction (provenance_entry.context_id).';
    END IF;
    IF context_id = koherent.current_context_id() THEN
        RAISE EXCEPTION 'koherent: a transaction cannot revert its own writes' USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Roll back to a savepoint instead.';
    END IF;
END $$;
COMMENT ON FUNCTION koherent.revert_context_plan(uuid) IS
  'What reverting one transaction''s changes would write (as revert_plan). Changes nothing.';

-- Apply a plan (revert_task, revert_context): lock, check, write as the client, mark the context.
CREATE FUNCTION koherent._revert_apply(acting uuid, ctx uuid[], on_conflict text, what jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
SET max_parallel_workers_per_gather = 0 SET jit = off AS $$
DECLARE
    plan jsonb;
    blocking jsonb;
    conflicts jsonb;
    tables oid[];
    cfgs integer[];
    cfg_id integer;
    ks jsonb;
    moves jsonb;
    wave jsonb;
    cycle boolean;
    fast jsonb := '{}';
    view text;
    tc koherent.tracked_config;
    tbl text;
    pk name[];
    keymatch text;
    g record;
    n bigint;
    deleted bigint := 0;
    inserted bigint := 0;
    updated bigint := 0;
    skipped bigint := 0;
BEGIN
    PERFORM koherent._pruned_check(ctx, 'revert');
    PERFORM koherent._revert_check_args(on_conflict);
    -- the tables on the typed path: locked and checked there; the others planned row by row
    FOR tc IN SELECT * FROM koherent.tracked_config x ORDER BY x.id LOOP
        CONTINUE WHEN to_regclass(format('koherent_history.%I', tc.history_table)) IS NULL;
        PERFORM koherent._summarize(to_regclass(format('koherent_history.%I', tc.history_table))::oid);
        view := koherent._revert_fast_view(acting, tc, ctx);
        IF view IS NOT NULL THEN
            fast := fast || jsonb_build_object(tc.id::text, koherent._revert_fast_prepare(acting, tc, view));
        END IF;
    END LOOP;
    SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.cfg_id, r.head), '[]') INTO plan
      FROM koherent._revert_rows(acting, ctx, true, (SELECT coalesce(array_agg(k::int), '{}') FROM jsonb_object_keys(fast) k)) r;
    SELECT coalesce(jsonb_agg(jsonb_build_object('table_name', p->>'table_name', 'row_key', p->'row_key',
                                                 'action', p->>'action', 'conflict', p->>'conflict')), '[]')
      INTO conflicts FROM jsonb_array_elements(plan) p WHERE p->>'conflict' IS NOT NULL;
    SELECT conflicts || coalesce(jsonb_agg(x), '[]') INTO conflicts
      FROM jsonb_each(fast) f, jsonb_array_elements(f.value->'conflicts') x;
    -- what no mode can write: under abort every conflict, under overwrite those it cannot resolve
    SELECT jsonb_agg(c) INTO blocking FROM jsonb_array_elements(conflicts) c
     WHERE on_conflict = 'abort'
        OR (on_conflict = 'overwrite' AND c->>'conflict' IN ('not_tracked', 'not_visible', 'key_exists', 'excluded_required'));
    IF blocking IS NOT NULL THEN
        RAISE EXCEPTION 'koherent: the revert has % conflict(s); nothing was written', jsonb_array_length(blocking)
            USING ERRCODE = 'integrity_constraint_violation',
                  DETAIL = (SELECT string_agg(format('%s %s %s: %s', c->>'table_name', c->>'action',
                                                     coalesce(c->>'row_key', '(hidden)'), c->>'conflict'), '; ')
                              FROM (SELECT c FROM jsonb_array_elements(blocking) c LIMIT 5) x),
                  HINT = 'koherent.revert_plan shows every conflict; on_conflict => ''skip'' reverts the other rows, ''overwrite'' overwrites later changes.';
    END IF;
    IF on_conflict = 'skip' THEN
        skipped := jsonb_array_length(conflicts);
        SELECT coalesce(jsonb_agg(p), '[]') INTO plan FROM jsonb_array_elements(plan) p WHERE p->>'conflict' IS NULL;
    ELSE
        -- overwrite: a row deleted since is written back whole; a row the task created and
        -- someone deleted since needs nothing
        SELECT coalesce(jsonb_agg(CASE WHEN p->>'conflict' = 'deleted_later' AND p->>'action' = 'UPDATE'
                                       THEN p || jsonb_build_object('action', 'INSERT', 'restored_data', p->'before_data',
                                                 'fields', (SELECT jsonb_agg(f ORDER BY f) FROM jsonb_object_keys(p->'before_data') f))
                                       ELSE p END), '[]')
          INTO plan FROM jsonb_array_elements(plan) p
         WHERE p->>'conflict' IS DISTINCT FROM 'deleted_later' OR p->>'action' <> 'DELETE';
    END IF;

    SELECT array_agg(DISTINCT (p->>'cfg_id')::int) || (SELECT array_agg(k::int) FROM jsonb_object_keys(fast) k)
      INTO cfgs FROM jsonb_array_elements(plan) p;
    SELECT koherent._fk_order(array_agg(c.relid)) INTO tables FROM koherent.tracked_config c
     WHERE c.id = ANY (cfgs) AND c.dropped_at IS NULL;
    tables := coalesce(tables, '{}');
    -- deletes, children first
    FOR i IN REVERSE coalesce(array_length(tables, 1), 0) .. 1 LOOP
        SELECT c.id, format('%I.%I', c.schema_name, c.table_name), c.pk_columns INTO cfg_id, tbl, pk
          FROM koherent.tracked_config c WHERE c.relid = tables[i] AND c.dropped_at IS NULL;
        IF fast ? cfg_id::text THEN
            deleted := deleted + koherent._revert_fast_write(acting, fast->(cfg_id::text), 'delete', on_conflict);
            CONTINUE;
        END IF;
        SELECT string_agg(format('t.%I = koherent_k.%I', c, c), ' AND ') INTO keymatch FROM unnest(pk) c;
        SELECT jsonb_agg(p->'at_key'), count(*) INTO ks, n FROM jsonb_array_elements(plan) p
         WHERE (p->>'cfg_id')::int = cfg_id AND p->>'action' = 'DELETE';
        IF n > 0 THEN
            PERFORM koherent._revert_write(acting, format(
                'DELETE FROM %1$s t USING jsonb_array_elements($1) koherent_p(v), '
                'LATERAL jsonb_populate_record(NULL::%1$s, koherent_p.v) koherent_k WHERE %2$s',
                tbl, keymatch), ks, n, 'delete', tbl);
            deleted := deleted + n;
        END IF;
    END LOOP;
    -- updates, then inserts (parents first); one statement per set of columns written
    FOR i IN 1 .. coalesce(array_length(tables, 1), 0) LOOP
        SELECT c.id, format('%I.%I', c.schema_name, c.table_name), c.pk_columns INTO cfg_id, tbl, pk
          FROM koherent.tracked_config c WHERE c.relid = tables[i] AND c.dropped_at IS NULL;
        IF fast ? cfg_id::text THEN
            updated := updated + koherent._revert_fast_write(acting, fast->(cfg_id::text), 'update', on_conflict);
            inserted := inserted + koherent._revert_fast_write(acting, fast->(cfg_id::text), 'insert', on_conflict);
            CONTINUE;
        END IF;
        SELECT string_agg(format('t.%I = koherent_k.%I', c, c), ' AND ') INTO keymatch FROM unnest(pk) c;
        -- updates that keep the key, then those that move rows back to their old keys, in
        -- waves: a row moves once no row still waiting to move holds its old key (a cycle, a
        -- key swap, is written as it stands: a unique key then needs to be DEFERRABLE)
        moves := coalesce((SELECT jsonb_agg(p) FROM jsonb_array_elements(plan) p
                            WHERE (p->>'cfg_id')::int = cfg_id AND p->>'action' = 'UPDATE'
                              AND (SELECT bool_or(p->'restored_data' ? c) FROM unnest(pk) c)), '[]');
        wave := coalesce((SELECT jsonb_agg(p) FROM jsonb_array_elements(plan) p
                           WHERE (p->>'cfg_id')::int = cfg_id AND p->>'action' = 'UPDATE'
                             AND NOT (SELECT bool_or(p->'restored_data' ? c) FROM unnest(pk) c)), '[]');
        cycle := false;
        LOOP
            -- (a cycle's rows are one group, one statement, whatever columns each restores: each
            -- is matched at its key before any of them moves; a column a row does not restore
            -- keeps its value)
            FOR g IN SELECT x.fields, jsonb_agg(x.kr) AS rows, count(*) AS n
                       FROM (SELECT CASE WHEN cycle THEN (SELECT jsonb_agg(DISTINCT f ORDER BY f) FROM jsonb_array_elements(wave) w,
                                                                 jsonb_array_elements_text(w->'fields') f)
                                        ELSE p->'fields' END AS fields,
                                   jsonb_build_object('k', p->'at_key', 'r', p->'restored_data') AS kr
                              FROM jsonb_array_elements(wave) p) x
                      GROUP BY x.fields ORDER BY x.fields::text LOOP
                PERFORM koherent._revert_write(acting, format(
                    'UPDATE %1$s t SET %3$s FROM jsonb_array_elements($1) koherent_p(v), '
                    'LATERAL jsonb_populate_record(NULL::%1$s, koherent_p.v->''k'') koherent_k, '
                    'LATERAL jsonb_populate_record(NULL::%1$s, koherent_p.v->''r'') koherent_r WHERE %2$s', tbl, keymatch,
                    (SELECT string_agg(CASE WHEN cycle
                                            THEN format('%1$I = CASE WHEN koherent_p.v->''r'' ? %2$L THEN koherent_r.%1$I ELSE t.%1$I END', f, f)
                                            ELSE format('%I = koherent_r.%I', f, f) END, ', ')
                       FROM jsonb_array_elements_text(g.fields) f)),
                    g.rows, g.n, 'update', tbl,
                    -- (rows that moved: all of them now at their old keys, as restored, is the
                    -- revert done, whichever write moved them)
                    CASE WHEN (SELECT bool_or(g.fields ? c) FROM unnest(pk) c) THEN format(
                        'SELECT to_jsonb(count(*)) FROM jsonb_array_elements($1) koherent_p(v), '
                        'LATERAL jsonb_populate_record(NULL::%1$s, (koherent_p.v->''k'') || (koherent_p.v->''r'')) koherent_k, '
                        'LATERAL jsonb_populate_record(NULL::%1$s, koherent_p.v->''r'') koherent_r '
                        'WHERE EXISTS (SELECT 1 FROM %1$s t WHERE %2$s AND %3$s)', tbl, keymatch,
                        (SELECT string_agg(format('(NOT koherent_p.v->''r'' ? %L OR %s)', f,
                                                  koherent._same_expr(a.atttypid, format('t.%I', f), format('koherent_r.%I', f))), ' AND ')
                           FROM jsonb_array_elements_text(g.fields) f
                           JOIN pg_attribute a ON a.attrelid = tbl::regclass AND a.attname = f AND NOT a.attisdropped)) END);
                updated := updated + g.n;
            END LOOP;
            EXIT WHEN jsonb_array_length(moves) = 0;
            -- the next wave: moves whose old key no waiting row holds now
            SELECT coalesce(jsonb_agg(m), '[]') INTO wave FROM jsonb_array_elements(moves) m
             WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(moves) o
                                WHERE o->'at_key' = (SELECT jsonb_object_agg(c, coalesce(m->'restored_data'->c, m->'at_key'->c)) FROM unnest(pk) c)
                                  AND o <> m);
            cycle := jsonb_array_length(wave) = 0;
            IF cycle THEN
                wave := moves;  -- a cycle
            END IF;
            SELECT coalesce(jsonb_agg(m), '[]') INTO moves FROM jsonb_array_elements(moves) m
             WHERE NOT (m IN (SELECT w FROM jsonb_array_elements(wave) w));
        END LOOP;
        FOR g IN SELECT p->'fields' AS fields, jsonb_agg(p->'restored_data') AS rows, count(*) AS n
                   FROM jsonb_array_elements(plan) p
                  WHERE (p->>'cfg_id')::int = cfg_id AND p->>'action' = 'INSERT'
                  GROUP BY p->'fields' ORDER BY (p->'fields')::text LOOP
            PERFORM koherent._revert_write(acting, format(
                'INSERT INTO %1$s (%2$s) OVERRIDING SYSTEM VALUE SELECT %3$s FROM jsonb_array_elements($1) koherent_p(v), '
                'LATERAL jsonb_populate_record(NULL::%1$s, koherent_p.v) koherent_r', tbl,
                (SELECT string_agg(format('%I', f), ', ') FROM jsonb_array_elements_text(g.fields) f),
                (SELECT string_agg(format('koherent_r.%I', f), ', ') FROM jsonb_array_elements_text(g.fields) f)),
                g.rows, g.n, 'insert', tbl);
            inserted := inserted + g.n;
        END LOOP;
    END LOOP;
    FOR view IN SELECT f.value->'sql'->>'view' FROM jsonb_each(fast) f LOOP
        EXECUTE 'DROP VIEW ' || view;
    END LOOP;
    PERFORM koherent._mark_revert(what);
    RETURN jsonb_build_object('deleted', deleted, 'inserted', inserted, 'updated', updated,
                              'skipped', skipped, 'conflicts', conflicts);
END $$;

-- One of the revert's writes, as the client; it must write exactly the rows it was given (a
-- row-level security policy the client is under may hide some from it: then nothing is written).
-- `settled` (an UPDATE's): a query, as the client, of how many of the rows given are now as the
-- revert restores them; when all are, fewer written is right (an earlier write of the revert
-- moved them already: a parent's key moved back through ON UPDATE CASCADE into the children's
-- keys). A key the revert writes back that a concurrent transaction took while the revert
-- waited for it (its INSERT was not committed when the plan was made) is the plan's
-- `key_exists`, reported as the plan's conflicts are.
CREATE FUNCTION koherent._revert_write(acting uuid, query text, rows jsonb, expected bigint, verb text, tbl text,
                                       settled text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
    con text;
    sch text;
    rel text;
    det text;
BEGIN
    BEGIN
        n := (koherent._as_caller(acting, query, rows, true))::text::bigint;
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS con = CONSTRAINT_NAME, sch = SCHEMA_NAME, rel = TABLE_NAME, det = PG_EXCEPTION_DETAIL;
        IF NOT koherent._is_key_index(tbl::regclass, sch, rel, con) THEN
            RAISE;
        END IF;
        RAISE EXCEPTION 'koherent: the revert has 1 conflict(s); nothing was written'
            USING ERRCODE = 'integrity_constraint_violation',
                  DETAIL = format('%s %s %s: key_exists (taken by a transaction that committed while the revert waited for it)',
                                  tbl, upper(verb), coalesce(substring(det FROM '^Key (.*) already exists'), '(hidden)')),
                  HINT = 'Run the revert again: its plan shows the conflict; on_conflict => ''skip'' reverts the other rows.';
    END;
    IF n <> expected AND settled IS NOT NULL
       AND (koherent._as_caller(acting, settled, rows, false))::text::bigint = expected THEN
        RETURN;
    END IF;
    IF n <> expected THEN
        RAISE EXCEPTION 'koherent: the revert could % only % of % rows of %; nothing was written', verb, n, expected, tbl
            USING ERRCODE = 'insufficient_privilege',
                  HINT = CASE WHEN (SELECT relrowsecurity FROM pg_class WHERE oid = tbl::regclass)
                              THEN 'A row-level security policy of the reverting role hides the others from its writes.'
                              ELSE 'The others were changed by a trigger or a foreign key action of the revert''s own writes.' END;
    END IF;
END $$;

-- Whether the unique index `idx` of relation `sch`.`rel` (a unique violation's constraint,
-- schema and table) is tracked table `tbl`'s key (or a partition's copy of it).
CREATE FUNCTION koherent._is_key_index(tbl regclass, sch text, rel text, idx text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_index i
          JOIN pg_class x ON x.oid = i.indexrelid
          JOIN pg_class r ON r.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = r.relnamespace
          JOIN koherent.tracked_config c ON c.relid = tbl AND c.dropped_at IS NULL
         WHERE x.relname = idx AND r.relname = rel AND n.nspname = sch AND i.indisunique AND i.indpred IS NULL
           AND (i.indrelid = tbl OR i.indrelid IN (SELECT t.relid FROM pg_partition_tree(tbl) t))
           AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                 WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey))
               = (SELECT array_agg(k::text ORDER BY k::text) FROM unnest(c.pk_columns) k))
$$;

-- revert_task and revert_context are SECURITY INVOKER: koherent._acting() records the role that
-- executes them, and the definer functions below act for that role (src/revert/mod.rs).
CREATE FUNCTION koherent._revert_apply_check(acting uuid) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT (has_function_privilege(koherent._acting_role(acting), 'koherent.revert_task(text, boolean, text)', 'EXECUTE')
            OR has_function_privilege(koherent._acting_role(acting), 'koherent.revert_context(uuid, text)', 'EXECUTE')) THEN
        RAISE EXCEPTION 'permission denied for function revert_task' USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;

CREATE FUNCTION koherent._revert_task(acting uuid, task_id text, include_subtasks boolean, on_conflict text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM koherent._revert_apply_check(acting);
    PERFORM koherent._revert_check_args(on_conflict);
    RETURN koherent._revert_apply(acting, koherent._revert_task_contexts(acting, task_id, include_subtasks), on_conflict,
                                  jsonb_build_object('task_id', task_id, 'include_subtasks', coalesce(include_subtasks, false),
                                                     'on_conflict', on_conflict));
END $$;

CREATE FUNCTION koherent.revert_task(task_id text, include_subtasks boolean DEFAULT false,
                                     on_conflict text DEFAULT 'abort') RETURNS jsonb
-- no SET search_path: koherent._acting() records the caller's own, which the writes use; bitmap
-- scans on whatever the session says (BRIN indexes are read by them alone)
LANGUAGE sql VOLATILE SET enable_bitmapscan = on AS $$
    SELECT koherent._revert_task(koherent._acting(), task_id, include_subtasks, on_conflict)
$$;
COMMENT ON FUNCTION koherent.revert_task(text, boolean, text) IS
  'Undo a task''s changes, all or nothing, with the caller''s rights; on_conflict abort (default), skip or overwrite. Recorded like any write; the context''s metadata.reverts names what was reverted.';

CREATE FUNCTION koherent._revert_context(acting uuid, context_id uuid, on_conflict text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM koherent._revert_apply_check(acting);
    PERFORM koherent._revert_check_args(on_conflict);
    PERFORM koherent._revert_context_check(acting, context_id);
    RETURN koherent._revert_apply(acting, ARRAY[context_id], on_conflict,
                                  jsonb_build_object('context_id', context_id, 'on_conflict', on_conflict));
END $$;

CREATE FUNCTION koherent.revert_context(context_id uuid, on_conflict text DEFAULT 'abort') RETURNS jsonb
LANGUAGE sql VOLATILE SET enable_bitmapscan = on AS $$  -- (as revert_task)
    SELECT koherent._revert_context(koherent._acting(), context_id, on_conflict)
$$;
COMMENT ON FUNCTION koherent.revert_context(uuid, text) IS
  'Undo one transaction''s changes (as revert_task).';
