-- koherent: the views over all history tables (koherent._history_all, provenance_entry,
-- effective_change, tracked_table) and the SQL that builds them: each view is one UNION ALL
-- branch per history table, generated again after every track, untrack and DDL.

-- A value of type `typ` as history's images show it: to_jsonb of a built-in type, else the JSON
-- string of its output function's text (why: koherent._json_expr).
CREATE FUNCTION koherent._json_of(typ oid, expr text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN koherent._is_builtin_type(typ) THEN format('to_jsonb(%s)', expr)
                ELSE format('to_jsonb(koherent._text_out(%s))', expr) END
$$;

-- The same as an argument of jsonb_build_object, which converts its arguments as to_jsonb does:
-- a built-in type's value as it is (no jsonb built and read again), any other's output text.
CREATE FUNCTION koherent._json_arg(typ oid, expr text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN koherent._is_builtin_type(typ) THEN expr
                ELSE format('koherent._text_out(%s)', expr) END
$$;

-- A history column as jsonb, without running code a non-superuser can define. to_jsonb
-- consults casts to json for types outside pg_catalog (and for such fields of composites and
-- elements of arrays), and whoever owns a type may create such a cast: it would run as the reader,
-- or as the extension owner inside koherent's SECURITY DEFINER readers. Built-in types go
-- through to_jsonb (only built-in code); every other type is shown as the JSON string of its
-- output function's text (koherent._text_out; output functions are C, written by superusers).
CREATE FUNCTION koherent._json_expr(hist regclass, col name, alias text DEFAULT 'h') RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._json_of(a.atttypid, format('%s.%I', alias, col))
      FROM pg_attribute a WHERE a.attrelid = hist AND a.attname = col AND NOT a.attisdropped
$$;

-- A history entry's key as jsonb ({"id": 7}): of its data columns (prefix '') or of its "old:"
-- columns (prefix 'old:'), named as the key columns are.
CREATE FUNCTION koherent._key_expr(cfg koherent.tracked_config, prefix text, alias text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('jsonb_build_object(%s)',
                  string_agg(format('%L, %s', k, koherent._json_expr(format('koherent_history.%I', cfg.history_table)::regclass,
                                                                     (prefix || k)::name, alias)), ', '))
      FROM unnest(cfg.pk_columns) k
$$;

-- jsonb_build_object for images, each value's conversion looked up once per call site
-- (src/image.rs): the same object for the types koherent._jsonb_object_takes.
CREATE FUNCTION koherent._jsonb_object(VARIADIC "any") RETURNS jsonb
LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'koherent_jsonb_object';

-- The jsonb object of (key, expression of type typ) pairs, each value as koherent._json_arg
-- gives it (a built-in type's value as it is, any other's output text): koherent._jsonb_object
-- of the values it takes, jsonb_build_object of the others (the same object: to_jsonb's
-- conversions), 50 pairs per call (a call takes at most 100 arguments), joined by ||.
-- keys_sql: the keys are SQL text expressions (a null one leaves its pair out, see src/image.rs).
CREATE FUNCTION koherent._object_expr(keys text[], exprs text[], typs oid[], keys_sql boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fast text[] := '{}';
    slow text[] := '{}';
    parts text[] := '{}';
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(keys), 0) LOOP
        IF NOT koherent._is_builtin_type(typs[i]) OR koherent._jsonb_object_takes(typs[i]) THEN
            fast := fast || format('%s, %s', CASE WHEN keys_sql THEN keys[i] ELSE format('%L::text', keys[i]) END,
                                   koherent._json_arg(typs[i], exprs[i]));
        ELSIF keys_sql THEN  -- (jsonb_build_object refuses a null key)
            slow := slow || format('CASE WHEN %s IS NOT NULL THEN jsonb_build_object(%s, %s) ELSE ''{}''::jsonb END',
                                   keys[i], keys[i], exprs[i]);
        ELSE
            slow := slow || format('%L::text, %s', keys[i], exprs[i]);
        END IF;
    END LOOP;
    FOR i IN 0 .. (cardinality(fast) + 49) / 50 - 1 LOOP
        parts := parts || format('koherent._jsonb_object(%s)', array_to_string(fast[i * 50 + 1 : i * 50 + 50], ', '));
    END LOOP;
    IF keys_sql THEN
        parts := parts || slow;
    ELSE
        FOR i IN 0 .. (cardinality(slow) + 49) / 50 - 1 LOOP
            parts := parts || format('jsonb_build_object(%s)', array_to_string(slow[i * 50 + 1 : i * 50 + 50], ', '));
        END LOOP;
    END IF;
    IF cardinality(parts) = 0 THEN
        RETURN '''{}''::jsonb';
    END IF;
    RETURN '(' || array_to_string(parts, ' || ') || ')';
END $$;

-- row_data of a history table's entries: its data columns (live and retired) as one jsonb
-- object (koherent._object_expr). (to_jsonb(h) minus the other keys gives the same object but
-- converts every "old:" column too: 3x the time for a 6-column table.)
CREATE FUNCTION koherent._row_data_expr(hist regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._object_expr(array_agg(a.attname::text ORDER BY a.attnum),
                                 array_agg(format('h.%I', a.attname) ORDER BY a.attnum),
                                 array_agg(a.atttypid ORDER BY a.attnum))
      FROM pg_attribute a
     WHERE a.attrelid = hist AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname NOT IN ('history_id', 'history_kind', 'history_date', 'history_context')
       AND a.attname NOT LIKE 'old:%'
$$;

-- The same key as koherent._object_expr builds it (the same jsonb in about a fifth of the time:
-- 10k keys of a bigint 10.4 -> 1.9 ms), for the readers that find entries by something else
-- than their key (task_changes). The views keep _key_expr's form, which the planner hook reads
-- (`row_key = '{...}'`, src/planner.rs).
CREATE FUNCTION koherent._key_object_expr(cfg koherent.tracked_config) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._object_expr(array_agg(u.k::text ORDER BY u.o), array_agg(format('h.%I', u.k) ORDER BY u.o),
                                 array_agg(a.atttypid ORDER BY u.o))
      FROM unnest(cfg.pk_columns) WITH ORDINALITY u(k, o)
      JOIN pg_attribute a ON a.attrelid = format('koherent_history.%I', cfg.history_table)::regclass
                         AND a.attname = u.k AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- How generated SQL names a tracked table. Function bodies (the exposed functions, dumped as
-- text and restored elsewhere, where the table has another oid) name it, while it exists. Views
-- use its oid, converted at run time: a regclass constant would make the view (an extension
-- member) depend on the table and block DROP TABLE; the views are rebuilt after a restore.
CREATE FUNCTION koherent._table_literal(cfg koherent.tracked_config, by_name boolean) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN by_name AND cfg.dropped_at IS NULL
                THEN format('%L::regclass', format('%I.%I', cfg.schema_name, cfg.table_name))
                ELSE format('koherent._relid(%s::oid)::regclass', cfg.relid) END
$$;

-- The SELECT of one history table's entries, in the shape of koherent._history_all (shape
-- 'history_all': the table named by oid, as the views need) or of koherent.provenance_entry
-- ('provenance_entry': joined with its context row, the table named by name, as the readers'
-- function bodies need). The one place that knows how row_key, row_data and table_ident are made.
-- `contexts` (provenance_entry only): an SQL expression of a uuid[] that holds the context of
-- every entry selected: the attribution join then reads only those contexts (task_changes: a
-- task's entries, whose count the planner cannot know, joined to its few contexts).
CREATE FUNCTION koherent._entry_select(cfg koherent.tracked_config, shape text, contexts text DEFAULT NULL)
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
        'SELECT h.history_id, %s AS table_name, %s AS row_key, '
        'h.history_kind AS kind, h.history_date AS date, h.history_context AS context_id, %s'
        '%s AS row_data, '
        '%s%L::text AS table_ident%s FROM koherent_history.%I h%s',
        koherent._table_literal(cfg, attributed),
        -- (the readers by task, which name their contexts, take the faster form)
        CASE WHEN contexts IS NULL THEN koherent._key_expr(cfg, '', 'h') ELSE koherent._key_object_expr(cfg) END,
        CASE WHEN attributed THEN 'c.db_role, ' ELSE '' END,
        koherent._row_data_expr(hist),
        CASE WHEN attributed THEN 'c.task_id, c.client_id AS agent_client_id, c.issuer, c.changed_by, ' ELSE '' END,
        format('%I.%I', cfg.schema_name, cfg.table_name),
        CASE WHEN attributed THEN ', c.effective_role, c.organization, c.app_user' ELSE '' END,
        cfg.history_table,
        CASE WHEN attributed
             THEN ' LEFT JOIN koherent.transaction_auth_context c ON c.id = h.history_context'
                  || CASE WHEN contexts IS NOT NULL THEN format(' AND c.id = ANY (%s)', contexts) ELSE '' END
             ELSE '' END);
END $$;

-- Rebuild the views over all history tables (after track, untrack, ALTER TABLE, DROP TABLE).
CREATE FUNCTION koherent._rebuild_views(empty boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    entries text[] := '{}';
    changes text[] := '{}';
    vals text;
BEGIN
    FOR cfg IN SELECT * FROM koherent.tracked_config WHERE NOT empty ORDER BY id LOOP
        -- (a field changed when its values' binary images differ, as the writer compares them:
        -- float 0 and -0, or json text that differs only in spacing, are equal as jsonb)
        SELECT string_agg(format('(%L::text, %s, %s, %s::bigint, %s::bigint, NOT record_image_eq(ROW(h.%I), ROW(h.%I)))',
                                 column_name,
                                 koherent._json_expr(format('koherent_history.%I', cfg.history_table)::regclass, column_name),
                                 koherent._json_expr(format('koherent_history.%I', cfg.history_table)::regclass, 'old:' || column_name),
                                 live_from, coalesce(live_until::text, 'NULL'), column_name, 'old:' || column_name),
                          ', ' ORDER BY attnum NULLS LAST, column_name)
          INTO vals FROM koherent.tracked_column WHERE config_id = cfg.id;
        entries := entries || koherent._entry_select(cfg, 'history_all');
        IF vals IS NOT NULL THEN
            changes := changes || format(
                'SELECT h.history_id, f.field, '
                'CASE h.history_kind WHEN ''CREATE'' THEN NULL WHEN ''UPDATE'' THEN f.old ELSE f.cur END AS old_value, '
                'CASE WHEN h.history_kind IN (''DELETE'', ''TRUNCATE'') THEN NULL ELSE f.cur END AS new_value '
                'FROM koherent_history.%I h CROSS JOIN LATERAL (VALUES %s) AS f(field, cur, old, live_from, live_until, differs) '
                'WHERE h.history_id >= f.live_from AND (f.live_until IS NULL OR h.history_id < f.live_until) '
                'AND (h.history_kind <> ''UPDATE'' OR f.differs)',
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


CREATE VIEW koherent._history_all AS
SELECT NULL::bigint AS history_id, NULL::regclass AS table_name, NULL::jsonb AS row_key,
       NULL::text AS kind, NULL::timestamptz AS date, NULL::uuid AS context_id,
       NULL::jsonb AS row_data, NULL::text AS table_ident
 WHERE false;

CREATE VIEW koherent.effective_change AS
SELECT NULL::bigint AS history_id, NULL::text AS field, NULL::jsonb AS old_value,
       NULL::jsonb AS new_value
 WHERE false;
-- (the @graphql tags give pg_graphql the primary keys of these views)
COMMENT ON VIEW koherent.effective_change IS
E'koherent: one row per field a history entry changed (CREATE: every field, old null; DELETE/TRUNCATE: every field, new null; UPDATE: the fields whose value changed).\n@graphql({"primary_key_columns": ["history_id", "field"]})';

-- Whether the client may see what transaction `ctx` wrote: yes, unless row-level security is on
-- for koherent.transaction_auth_context (an administrator's policies, for example one that keeps
-- each organization's history to itself: README, "Organizations"); then only if the client
-- itself can read that context row (the client then needs SELECT on the table). Every history
-- reader asks it, as the client.
CREATE FUNCTION koherent._context_visible(ctx uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT koherent._context_rls() THEN
        RETURN true;
    END IF;
    RETURN ctx IS NOT NULL
       AND koherent._visible_to_caller('SELECT 1 FROM koherent.transaction_auth_context t WHERE t.id = $1', ROW(ctx));
END $$;

-- Whether row-level security is on for koherent.transaction_auth_context.
CREATE FUNCTION koherent._context_rls() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.relrowsecurity FROM pg_catalog.pg_class c WHERE c.oid = 'koherent.transaction_auth_context'::regclass
$$;

CREATE VIEW koherent.provenance_entry AS
SELECT e.history_id, e.table_name, e.row_key, e.kind, e.date, e.context_id, c.db_role, e.row_data,
       c.task_id, c.client_id AS agent_client_id, c.issuer, c.changed_by, e.table_ident,
       c.effective_role, c.organization, c.app_user
  FROM koherent._history_all e
  LEFT JOIN koherent.transaction_auth_context c ON c.id = e.context_id
 -- (row-level security on the contexts: only what the reader may see; README, "Organizations".
 -- Without it, the first test is true once per query and nothing is asked per entry)
 WHERE NOT (SELECT koherent._context_rls()) OR koherent._context_visible(e.context_id);
COMMENT ON VIEW koherent.provenance_entry IS
E'koherent: one row per recorded change across all tracked tables, with its attribution.\n@graphql({"primary_key_columns": ["history_id"]})';

CREATE VIEW koherent.tracked_table AS
SELECT c.relid::regclass AS table_name, c.exclude, c.tracked_since, c.require_task,
       format('koherent_history.%I', c.history_table)::regclass AS history_table,
       c.pk_columns, c.id AS config_id,
       koherent._row_index(format('koherent_history.%I', c.history_table)::regclass) IS NOT NULL AS row_index
  FROM koherent.tracked_config c
 WHERE c.active AND c.dropped_at IS NULL;
COMMENT ON VIEW koherent.tracked_table IS 'koherent: the tables being recorded now.';

-------------------------------------------------------------------------------------------------
