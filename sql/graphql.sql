-- koherent: GraphQL-facing objects (PostGraphile and pg_graphql conventions): pg_graphql's
-- computed fields, and expose()/unexpose(), which generate per-table functions: <table>_provenance
-- (a row's history), <table>_by_provenance (rows filtered by their history) and the internal
-- koherent._filter_keys_<config id> behind it.

-- pg_graphql names: computed fields are functions _<field>(rec <type>).
-- pg_graphql gives a jsonb column as `col #>> '{}'`: a JSON string without its quotes, any other
-- value as JSON text, so the string "1" and the number 1 come back alike (seen with pg_graphql
-- 1.6.1). Its effectiveChanges therefore have the values as their JSON text (text columns):
-- oldValue "1" is the number 1, "\"1\"" the string "1", null a null; a client parses them.
CREATE VIEW koherent.effective_change_json AS
SELECT NULL::bigint AS history_id, NULL::text AS field, NULL::text AS old_value, NULL::text AS new_value
 WHERE false;
COMMENT ON VIEW koherent.effective_change_json IS
E'@omit\n@graphql({"primary_key_columns": ["history_id", "field"], "description": "koherent: a field a history entry changed, its old and new values as JSON text (a client parses them: \\"1\\" is a string, 1 a number)"})';
CREATE FUNCTION koherent._effective_changes(rec koherent.provenance_entry)
RETURNS SETOF koherent.effective_change_json LANGUAGE sql STABLE AS $$
    SELECT c.history_id, c.field, c.old_value::text, c.new_value::text
      FROM koherent.provenance_entry_effective_changes(rec) c
$$;
-- pg_graphql shows a node type's fields only to a role that may SELECT its columns. A reader may
-- not read koherent.provenance_entry (it is all history), so the provenance field that expose()
-- gives pg_graphql (_provenance(rec <table>)) returns rows of this view instead: the same columns,
-- never a row, readable by everyone (sql/grants.sql). The rows come from <table>_provenance(rec),
-- which shows a row's history only if the caller can read the row.
CREATE VIEW koherent.provenance_entry_node AS
SELECT NULL::bigint AS history_id, NULL::regclass AS table_name, NULL::jsonb AS row_key, NULL::text AS kind,
       NULL::timestamptz AS date, NULL::uuid AS context_id, NULL::text AS db_role, NULL::jsonb AS row_data,
       NULL::text AS task_id, NULL::text AS agent_client_id, NULL::text AS issuer, NULL::text AS changed_by,
       NULL::text AS table_ident, NULL::text AS effective_role, NULL::text AS organization,
       NULL::text AS app_user
 WHERE false;
COMMENT ON VIEW koherent.provenance_entry_node IS
E'@omit\n@graphql({"primary_key_columns": ["history_id"], "description": "koherent: a recorded change of a row, with its attribution"})';
CREATE FUNCTION koherent._effective_changes(rec koherent.provenance_entry_node)
RETURNS SETOF koherent.effective_change_json LANGUAGE sql STABLE AS $$
    SELECT * FROM koherent._effective_changes(ROW((rec).*)::koherent.provenance_entry)
$$;
COMMENT ON FUNCTION koherent._effective_changes(koherent.provenance_entry_node) IS E'@omit';
-- pg_graphql takes a to-one field only from a function returning a table's or view's row (not a
-- composite type's): the task field of its provenance entries returns rows of this view (never a
-- row, readable by everyone, like provenance_entry_node), null when the entry has no task or the
-- caller may not read the entry's row.
CREATE VIEW koherent.task_node AS
SELECT NULL::text AS issuer, NULL::text AS task_id, NULL::text AS parent_task_id, NULL::text AS root_task_id,
       NULL::text AS assigner_sub, NULL::text AS caller_sub, NULL::text AS agent_sub,
       NULL::text AS agent_client_id, NULL::text AS token_id, NULL::text AS args_hash,
       NULL::text AS args_hash_algorithm, NULL::jsonb AS claims, NULL::text AS token,
       NULL::timestamptz AS created_at, NULL::text AS organization, NULL::jsonb AS assigner_user
 WHERE false;
COMMENT ON VIEW koherent.task_node IS
E'@omit\n@graphql({"primary_key_columns": ["issuer", "task_id"], "description": "koherent: the verified task of a history entry (token only for auditors)"})';
CREATE FUNCTION koherent._task(rec koherent.provenance_entry_node) RETURNS koherent.task_node
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t koherent.task_info := koherent.provenance_entry_task(ROW((rec).*)::koherent.provenance_entry);
BEGIN
    IF t.task_id IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN ROW((t).*)::koherent.task_node;
END $$;
COMMENT ON FUNCTION koherent._task(koherent.provenance_entry_node) IS E'@omit';
CREATE FUNCTION koherent._task(rec koherent.provenance_entry) RETURNS koherent.task_info
LANGUAGE sql STABLE AS $$ SELECT koherent.provenance_entry_task(rec) $$;
COMMENT ON FUNCTION koherent._effective_changes(koherent.provenance_entry) IS E'@omit';
COMMENT ON FUNCTION koherent._task(koherent.provenance_entry) IS E'@omit';
REVOKE EXECUTE ON FUNCTION koherent._effective_changes(koherent.provenance_entry),
    koherent._effective_changes(koherent.provenance_entry_node),
    koherent._task(koherent.provenance_entry), koherent._task(koherent.provenance_entry_node) FROM PUBLIC;

-- PostGraphile 4 skips objects that belong to an extension (unless includeExtensionResources is
-- on, which also shows every other extension's objects) and takes a type's computed columns only
-- from functions in a schema it introspects. So the types that the exposed functions return to
-- PostGraphile, and their computed columns (effectiveChanges, task), live in koherent_graphql:
-- a schema expose() creates (it is no member of the extension: pg_dump dumps it like the
-- functions expose() makes), owned by koherent's owner: types without root fields (a view that
-- never has a row, `@omit all`, and composite types) and thin functions over koherent's readers,
-- which do every check themselves.
-- The shared objects are made once, under a lock (concurrent first calls of expose() wait
-- instead of failing), and checked on every call: the schema is koherent's owner's, nobody
-- else may create in it or owns anything in it, and the types have this release's columns.
CREATE FUNCTION koherent._graphql_schema() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp oid;
    owner oid;
    g record;
    want text;
    have text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('koherent.koherent_graphql'));
    SELECT n.oid, n.nspowner INTO nsp, owner FROM pg_namespace n WHERE n.nspname = 'koherent_graphql';
    IF NOT FOUND THEN
        CREATE SCHEMA koherent_graphql;
        nsp := 'koherent_graphql'::regnamespace;
        owner := current_user::regrole;
        -- what ALTER DEFAULT PRIVILEGES ... ON SCHEMAS may have given others, taken back
        FOR g IN SELECT DISTINCT a.grantee FROM pg_namespace n, aclexplode(n.nspacl) a
                  WHERE n.oid = nsp AND a.grantee <> owner LOOP
            EXECUTE format('REVOKE ALL ON SCHEMA koherent_graphql FROM %s',
                           CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END);
        END LOOP;
        COMMENT ON SCHEMA koherent_graphql IS
          'koherent: the types of the GraphQL-facing functions expose() makes, and their computed columns (PostGraphile introspects this schema beside the application''s).';
        GRANT USAGE ON SCHEMA koherent_graphql TO PUBLIC;
    ELSIF owner <> current_user::regrole THEN
        -- someone else's schema of that name: its functions would be shown as koherent's fields
        RAISE EXCEPTION 'koherent.expose: schema koherent_graphql belongs to role %, not to koherent''s owner %',
                        owner::regrole, current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'koherent creates this schema itself: drop or rename the one that is there.';
    END IF;
    SELECT string_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, ', ')
      INTO have FROM pg_namespace n, aclexplode(n.nspacl) a
     WHERE n.oid = nsp AND a.privilege_type = 'CREATE' AND a.grantee <> owner;
    IF have IS NOT NULL THEN
        RAISE EXCEPTION 'koherent.expose: roles other than koherent''s owner may create in schema koherent_graphql: %', have
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Their functions there would show as koherent''s GraphQL fields: REVOKE CREATE ON SCHEMA koherent_graphql FROM them.';
    END IF;
    SELECT string_agg(o.what, ', ') INTO have FROM (
        SELECT format('function %s of %s', p.oid::regprocedure, p.proowner::regrole) AS what
          FROM pg_proc p WHERE p.pronamespace = nsp AND p.proowner <> owner
        UNION ALL
        SELECT format('type %s of %s', t.oid::regtype, t.typowner::regrole)
          FROM pg_type t WHERE t.typnamespace = nsp AND t.typowner <> owner
        UNION ALL
        SELECT format('relation %s of %s', c.oid::regclass, c.relowner::regrole)
          FROM pg_class c WHERE c.relnamespace = nsp AND c.relowner <> owner
        UNION ALL
        SELECT format('operator %s of %s', o.oid::regoperator, o.oprowner::regrole)
          FROM pg_operator o WHERE o.oprnamespace = nsp AND o.oprowner <> owner) o;
    IF have IS NOT NULL THEN
        RAISE EXCEPTION 'koherent.expose: schema koherent_graphql holds objects of other roles: %', have
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only koherent makes objects there (they show as koherent''s GraphQL fields): drop them.';
    END IF;
    IF to_regtype('koherent_graphql.provenance_entry') IS NULL THEN
        -- a view over an extension's view (never a row), not a type of its own: DROP EXTENSION
        -- koherent CASCADE drops it, and with it the functions expose() made that return it
        -- (SECURITY DEFINER readers, which would otherwise outlive the extension with their
        -- grants and read a later install's history). @omit all: no root field.
        CREATE VIEW koherent_graphql.provenance_entry AS SELECT * FROM koherent.provenance_entry_node;
        COMMENT ON VIEW koherent_graphql.provenance_entry IS
          E'@omit all\nkoherent: a recorded change of a row, with its attribution';
        GRANT SELECT ON koherent_graphql.provenance_entry TO PUBLIC;
    END IF;
    IF to_regtype('koherent_graphql.effective_change') IS NULL THEN
        CREATE TYPE koherent_graphql.effective_change AS (
            history_id bigint, field text, old_value jsonb, new_value jsonb);
        COMMENT ON TYPE koherent_graphql.effective_change IS
          'koherent: a field a history entry changed, with its old and new values';
    END IF;
    IF to_regtype('koherent_graphql.task_info') IS NULL THEN
        CREATE TYPE koherent_graphql.task_info AS (
            issuer text, task_id text, parent_task_id text, root_task_id text, assigner_sub text,
            caller_sub text, agent_sub text, agent_client_id text, token_id text, args_hash text,
            args_hash_algorithm text, claims jsonb, token text, created_at timestamptz,
            organization text, assigner_user jsonb);
        COMMENT ON TYPE koherent_graphql.task_info IS
          'koherent: the verified task of a history entry (token only for auditors).';
    END IF;
    -- the functions below take rows by position: the types must have koherent's columns
    FOR g IN SELECT * FROM (VALUES ('koherent_graphql.provenance_entry'::regclass, 'koherent.provenance_entry'::regclass),
                                   ('koherent_graphql.effective_change', 'koherent.effective_change'),
                                   ('koherent_graphql.task_info', 'koherent.task_info')) v(mine, theirs) LOOP
        SELECT string_agg(c.col, ', ' ORDER BY c.attnum) FILTER (WHERE c.attrelid = g.mine),
               string_agg(c.col, ', ' ORDER BY c.attnum) FILTER (WHERE c.attrelid = g.theirs)
          INTO have, want
          FROM (SELECT a.attrelid, a.attnum, format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)) AS col
                  FROM pg_attribute a
                 WHERE a.attrelid IN (g.mine, g.theirs) AND a.attnum > 0 AND NOT a.attisdropped) c;
        IF have IS DISTINCT FROM want THEN
            RAISE EXCEPTION 'koherent.expose: type % has other columns than %', g.mine, g.theirs
                USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = format('%s: (%s); %s: (%s)', g.mine, have, g.theirs, want),
                      HINT = 'Made by another release of koherent: DROP SCHEMA koherent_graphql CASCADE, then expose() each exposed table again.';
        END IF;
    END LOOP;
    -- an entry of <table>_provenance(row) goes where koherent.provenance_entry went before 0.7.0
    -- (koherent.provenance_entry_effective_changes(entry), ..._task(entry)): an implicit cast
    IF to_regprocedure('koherent_graphql.as_koherent_entry(koherent_graphql.provenance_entry)') IS NULL THEN
        CREATE FUNCTION koherent_graphql.as_koherent_entry(e koherent_graphql.provenance_entry)
        RETURNS koherent.provenance_entry LANGUAGE sql IMMUTABLE STRICT
        SET search_path = pg_catalog, pg_temp AS $b$ SELECT ROW((e).*)::koherent.provenance_entry $b$;
        COMMENT ON FUNCTION koherent_graphql.as_koherent_entry(koherent_graphql.provenance_entry) IS E'@omit';
        CREATE CAST (koherent_graphql.provenance_entry AS koherent.provenance_entry)
          WITH FUNCTION koherent_graphql.as_koherent_entry(koherent_graphql.provenance_entry) AS IMPLICIT;
    END IF;
    CREATE OR REPLACE FUNCTION koherent_graphql.provenance_entry_effective_changes(e koherent_graphql.provenance_entry)
    RETURNS SETOF koherent_graphql.effective_change LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp AS $b$
        SELECT c.history_id, c.field, c.old_value, c.new_value
          FROM koherent.provenance_entry_effective_changes(ROW((e).*)::koherent.provenance_entry) c
    $b$;
    COMMENT ON FUNCTION koherent_graphql.provenance_entry_effective_changes(koherent_graphql.provenance_entry) IS
      'The fields this entry changed, with their old and new values (nothing unless the caller may read the entry''s row).';
    CREATE OR REPLACE FUNCTION koherent_graphql.provenance_entry_task(e koherent_graphql.provenance_entry)
    RETURNS koherent_graphql.task_info LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp AS $b$
    DECLARE
        t koherent.task_info := koherent.provenance_entry_task(ROW((e).*)::koherent.provenance_entry);
    BEGIN
        IF t.task_id IS NULL THEN
            RETURN NULL;
        END IF;
        RETURN ROW((t).*)::koherent_graphql.task_info;
    END $b$;
    COMMENT ON FUNCTION koherent_graphql.provenance_entry_task(koherent_graphql.provenance_entry) IS
      'The verified task this entry was made under (null when unattributed, or when the caller may not read the entry''s row); its token only for auditors.';
    REVOKE ALL ON FUNCTION koherent_graphql.provenance_entry_effective_changes(koherent_graphql.provenance_entry),
        koherent_graphql.provenance_entry_task(koherent_graphql.provenance_entry) FROM PUBLIC;
END $$;

-- GRANT EXECUTE on the function `sig` to each role the ACL `acl` gave EXECUTE (but its owner
-- `owner`, and PUBLIC), with the grant option it had; returns those roles. A function made again
-- (DROP and CREATE: a new return type) keeps its grants through it: expose() and the 0.7.0 upgrade.
CREATE FUNCTION koherent._regrant(acl aclitem[], owner oid, sig text) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT a.grantee::regrole::text AS grantee, a.is_grantable AS grantable FROM aclexplode(acl) a
              WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> owner LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s%s', sig, g.grantee,
                       CASE WHEN g.grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        RETURN NEXT g.grantee;
    END LOOP;
END $$;

-- expose() replaces the functions it made before (CREATE OR REPLACE keeps a function's owner
-- and grants): one of those names made by another role is refused, not taken over.
CREATE FUNCTION koherent._expose_owner_check(sig text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o oid;
BEGIN
    SELECT p.proowner INTO o FROM pg_proc p WHERE p.oid = to_regprocedure(sig);
    IF FOUND AND o <> current_user::regrole
       AND o <> (SELECT e.extowner FROM pg_extension e WHERE e.extname = 'koherent')
       AND NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = o) THEN
        RAISE EXCEPTION 'koherent.expose: function % exists and belongs to role %', sig, o::regrole
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'expose() makes this function itself; one of another role (neither koherent''s owner nor a superuser) is not taken over.',
                  HINT = 'Drop that function, then call koherent.expose again.';
    END IF;
END $$;

CREATE FUNCTION koherent.expose(tbl regclass, grant_to regrole DEFAULT NULL) RETURNS void
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
    acl aclitem[];
    acl_owner oid;
    grantee text;
    prov text;
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
    PERFORM koherent._graphql_schema();
    prov := format('%I.%I(%s)', nsp, rel || '_provenance', t);
    -- a function of these names that someone else made (a table owner, an application role
    -- with CREATE on the schema) is not replaced: its owner would keep it, and its grants
    PERFORM koherent._expose_owner_check(prov);
    PERFORM koherent._expose_owner_check(format('%I._provenance(%s)', nsp, t));
    PERFORM koherent._expose_owner_check(format('%I.%I%s', nsp, rel || '_by_provenance', filter_sig));
    PERFORM koherent._expose_owner_check(format('%I.%I(timestamptz)', nsp, rel || '_as_of'));
    -- made by an expose() before 0.7.0, it returns koherent.provenance_entry (the extension's,
    -- hidden from PostGraphile's defaults): made again, with the grants it had
    SELECT p.proacl, p.proowner INTO acl, acl_owner FROM pg_proc p
     WHERE p.oid = to_regprocedure(prov)
       AND p.prorettype = 'koherent.provenance_entry'::regtype AND p.prosecdef;
    IF FOUND THEN
        EXECUTE format('DROP FUNCTION %s', prov);
    END IF;
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$I.%2$I(rec %3$s) RETURNS SETOF koherent_graphql.provenance_entry
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
        BEGIN
            IF NOT koherent._visible_to_caller(%6$L, ROW(%7$s)) THEN
                RETURN;
            END IF;
            -- (and of those, what row-level security on the contexts lets the caller see)
            RETURN QUERY SELECT * FROM (%4$s WHERE %5$s AND %8$s
                AND (NOT (SELECT koherent._context_rls()) OR koherent._context_visible(h.history_context))) e
              ORDER BY 1;
        END $b$ $f$, nsp, rel || '_provenance', t, koherent._entry_select(cfg, 'provenance_entry'), keymatch,
        chk, (SELECT string_agg(format('rec.%I', k), ', ') FROM unnest(cfg.pk_columns) k),
        koherent._current_life(cfg, 'h', 'rec'));
    EXECUTE format('COMMENT ON FUNCTION %s IS %L', prov,
                   'koherent: every recorded change of this row, oldest first, with its attribution.');
    FOR grantee IN SELECT koherent._regrant(acl, acl_owner, prov) LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION koherent_graphql.provenance_entry_effective_changes(koherent_graphql.provenance_entry), '
                       'koherent_graphql.provenance_entry_task(koherent_graphql.provenance_entry) TO %s', grantee);
    END LOOP;
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$I._provenance(rec %2$s) RETURNS SETOF koherent.provenance_entry_node
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
                 AND %7$s
                 AND (NOT (SELECT koherent._context_rls()) OR koherent._context_visible(h.history_context))) k
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
                       'koherent._effective_changes(koherent.provenance_entry_node), '
                       'koherent._task(koherent.provenance_entry), koherent._task(koherent.provenance_entry_node), '
                       'koherent_graphql.provenance_entry_effective_changes(koherent_graphql.provenance_entry), '
                       'koherent_graphql.provenance_entry_task(koherent_graphql.provenance_entry) TO %s',
                       nsp, rel || '_provenance', t, nsp, t, nsp, rel || '_by_provenance', filter_sig,
                       '_filter_keys_' || cfg.id, filter_sig, grant_to);
    END IF;
    EXECUTE format('COMMENT ON FUNCTION %I.%I%s IS %L', nsp, rel || '_by_provenance', filter_sig,
                   'koherent: the current rows with at least one recorded change matching all given conditions (exact matches; changedSince inclusive, changedBefore exclusive).');
    PERFORM koherent._expose_as_of(tbl, grant_to);
END $$;
-- <table>_as_of(at) RETURNS SETOF <table>: the table as of a moment (koherent.as_of, with the
-- caller's rights), a query field for PostGraphile (itemAsOf(at: ...)) and pg_graphql.
CREATE FUNCTION koherent._expose_as_of(tbl regclass, grant_to regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp name;
    rel name;
BEGIN
    SELECT n.nspname, c.relname INTO nsp, rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl;
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$I.%2$I(at timestamptz) RETURNS SETOF %3$s
        LANGUAGE sql STABLE AS $b$
            SELECT * FROM koherent.as_of(NULL::%3$s, at)
        $b$ $f$, nsp, rel || '_as_of', format('%I.%I', nsp, rel));
    EXECUTE format('COMMENT ON FUNCTION %I.%I(timestamptz) IS %L', nsp, rel || '_as_of',
                   'koherent: the rows of this table as they were at a moment (changes count at their statement''s start time).');
    EXECUTE format('REVOKE ALL ON FUNCTION %I.%I(timestamptz) FROM PUBLIC', nsp, rel || '_as_of');
    IF grant_to IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION %I.%I(timestamptz) TO %s', nsp, rel || '_as_of', grant_to);
    END IF;
END $$;

COMMENT ON FUNCTION koherent.expose(regclass, regrole) IS
  'Create the GraphQL-facing functions of a tracked table: <table>_provenance, _provenance, <table>_by_provenance and <table>_as_of; adds the row index of its history table if missing.';

CREATE FUNCTION koherent.unexpose(tbl regclass) RETURNS void
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
    EXECUTE format('DROP FUNCTION IF EXISTS %I.%I(timestamptz)', nsp, rel || '_as_of');
END $$;

-- pg_graphql inflects names (task_id -> taskId) schema by schema: koherent's own objects, which
-- the exposed functions return, take the same names as the user's (inflected) schema.
COMMENT ON SCHEMA koherent IS
E'koherent: provenance-aware audit trail (tasks, contexts, history readers).\n@graphql({"inflect_names": true})';
