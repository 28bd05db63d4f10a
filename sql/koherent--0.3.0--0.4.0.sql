-- koherent 0.3.0 -> 0.4.0: hardening (see CHANGELOG.md, 0.4.0, and SECURITY.md).
-- Generated once from 0.4.0's install script and sql/history.sql (functions replaced whole), then
-- the migration of existing installations at the end. Upgrade scripts repeat function bodies.

\echo Use "ALTER EXTENSION koherent UPDATE TO '0.4.0'" to load this file. \quit

-- Context rows record the role SET ROLE chose.
ALTER TABLE koherent.transaction_auth_context ADD COLUMN effective_role text;
COMMENT ON TABLE koherent.transaction_auth_context IS
  'koherent: one row per transaction that wrote tracked rows: its task (or none), agent, issuer, database role (session user, and effective_role: the role SET ROLE chose) and client.';

-- A restored dump continues the sequences.
SELECT pg_catalog.pg_extension_config_dump('koherent.history_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.tracked_config_id_seq', '');

-- JSON from clients is parsed from text (22023 for malformed or too deep input, never a panic).
DROP FUNCTION koherent._parse_jwks(jsonb);
DROP FUNCTION koherent._parse_public_key(text);
-- A JWK's alg binds the key to tokens of that alg.
ALTER TABLE koherent.issuer_key_store ADD COLUMN alg text CHECK (alg IN ('Ed25519', 'EdDSA'));
-- _source_columns returns the base type's oid too.
DROP FUNCTION koherent._source_columns(oid);

-- Optional: the database roles that may present the tokens of an agent (per issuer and agent
-- client id, act.cid). With a binding in place, a token of that agent presented by any other
-- role is refused (28000, presenter_not_bound); an agent without one is presented by anyone.
CREATE TABLE koherent.agent_binding_store (
    issuer     text NOT NULL CHECK (issuer <> ''),
    client_id  text NOT NULL CHECK (client_id <> ''),
    role_name  text NOT NULL,
    added_at   timestamptz NOT NULL DEFAULT now(),
    added_by   text NOT NULL DEFAULT current_user,
    PRIMARY KEY (issuer, client_id, role_name)
);
COMMENT ON TABLE koherent.agent_binding_store IS
  'koherent: roles allowed to present the tokens of an agent (issuer, act.cid). Write through bind_agent / unbind_agent.';
SELECT pg_catalog.pg_extension_config_dump('koherent.agent_binding_store', '');

CREATE VIEW koherent.agent_binding AS
SELECT issuer, client_id, role_name, added_at, added_by FROM koherent.agent_binding_store;
COMMENT ON VIEW koherent.agent_binding IS 'koherent: which roles may present which agents'' tokens.';
CREATE TRIGGER koherent_bindings_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON koherent.agent_binding_store FOR EACH STATEMENT EXECUTE FUNCTION koherent._keys_changed();

-- Readers return a task without its token for all but auditors, typed nullable.
DROP FUNCTION koherent._task(koherent.provenance_entry);
DROP FUNCTION koherent.provenance_entry_task(koherent.provenance_entry);
CREATE TYPE koherent.task_info AS (
    issuer text, task_id text, parent_task_id text, root_task_id text, assigner_sub text,
    caller_sub text, agent_sub text, agent_client_id text, token_id text, args_hash text,
    args_hash_algorithm text, claims jsonb, token text, created_at timestamptz);
COMMENT ON TYPE koherent.task_info IS
  'koherent: the verified task of a history entry (token only for auditors).';

-- New functions in Rust.
-- src/lib.rs:44
-- koherent::_set_task_args
CREATE  FUNCTION "_set_task_args"(
	"token" TEXT, /* Option < & str > */
	"args" TEXT /* Option < & str > */
) RETURNS jsonb /* context :: FlatJsonb */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_set_task_args_wrapper';

-- src/lib.rs:91
-- koherent::_set_context
CREATE  FUNCTION "_set_context"(
	"metadata" TEXT /* & str */
) RETURNS void
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_set_context_wrapper';

-- src/lib.rs:111
-- koherent::_canonical_args
CREATE  FUNCTION "_canonical_args"(
	"args" TEXT /* & str */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_canonical_args_wrapper';

-- src/lib.rs:117
-- koherent::_args_hash
CREATE  FUNCTION "_args_hash"(
	"args" TEXT /* Option < & str > */
) RETURNS TEXT /* String */
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_args_hash_wrapper';

-- src/lib.rs:124
-- koherent::_require_task
CREATE  FUNCTION "_require_task"(
	"relid" oid /* pg_sys :: Oid */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_require_task_wrapper';

-- src/lib.rs:130
-- koherent::_next_history_id
CREATE  FUNCTION "_next_history_id"() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_next_history_id_wrapper';

-- src/lib.rs:137
-- koherent::_text_out
CREATE  FUNCTION "_text_out"(
	"value" anyelement /* pgrx :: AnyElement */
) RETURNS TEXT /* String */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_text_out_wrapper';

-- src/lib.rs:150
-- koherent::_is_builtin_type
CREATE  FUNCTION "_is_builtin_type"(
	"typ" oid /* pg_sys :: Oid */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_is_builtin_type_wrapper';

-- src/lib.rs:156
-- koherent::_base_type
CREATE  FUNCTION "_base_type"(
	"typ" oid /* pg_sys :: Oid */
) RETURNS oid /* pg_sys :: Oid */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_base_type_wrapper';

-- src/lib.rs:178
-- koherent::_base_type_sql
CREATE  FUNCTION "_base_type_sql"(
	"typ" oid, /* pg_sys :: Oid */
	"typmod" INT /* i32 */
) RETURNS TEXT /* String */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_base_type_sql_wrapper';

-- src/lib.rs:162
-- koherent::_caller
CREATE  FUNCTION "_caller"() RETURNS oid /* pg_sys :: Oid */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_caller_wrapper';

-- src/lib.rs:172
-- koherent::_visible_to_caller
CREATE  FUNCTION "_visible_to_caller"(
	"query" TEXT, /* & str */
	"key" anyelement /* pgrx :: AnyElement */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_visible_to_caller_wrapper';

-- src/lib.rs:213
-- koherent::_parse_jwks
CREATE  FUNCTION "_parse_jwks"(
	"jwks" TEXT /* & str */
) RETURNS TABLE (
	"kid" TEXT,  /* String */
	"x" bytea,  /* Vec < u8 > */
	"alg" TEXT  /* Option < String > */
)
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_parse_jwks_text_wrapper';

-- src/lib.rs:189
-- koherent::_parse_public_key
CREATE  FUNCTION "_parse_public_key"(
	"public_key" TEXT /* & str */
) RETURNS TABLE (
	"kid" TEXT,  /* Option < String > */
	"x" bytea,  /* Vec < u8 > */
	"alg" TEXT  /* Option < String > */
)
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_parse_public_key_bound_wrapper';

-- Every function of sql/history.sql, as 0.4.0 defines it.
CREATE OR REPLACE FUNCTION koherent._source_columns(rel oid)
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

CREATE OR REPLACE FUNCTION koherent._pk_columns(rel oid) RETURNS name[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT array_agg(a.attname ORDER BY k.ord)
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = rel AND i.indisprimary
$$;

CREATE OR REPLACE FUNCTION koherent._rename_column(cfg_id integer, hist text, col name, newname name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', hist, col, newname);
    EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', hist, 'old:' || col, 'old:' || newname);
    UPDATE koherent.tracked_column SET column_name = newname
     WHERE config_id = cfg_id AND column_name = col;
END $$;

CREATE OR REPLACE FUNCTION koherent._free_name(cfg_id integer, col name) RETURNS void
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

CREATE OR REPLACE FUNCTION koherent._sync(cfg_id integer) RETURNS void
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
            PERFORM koherent._free_name(cfg_id, a.attname);
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
        PERFORM koherent._free_name(cfg_id, a.attname);
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s, ADD COLUMN %I %s', hist,
                       a.attname, a.type_sql, 'old:' || a.attname, a.type_sql);
        INSERT INTO koherent.tracked_column (config_id, column_name, attnum, type_sql, live_from)
        VALUES (cfg_id, a.attname, a.attnum, a.type_sql, mark);
    END LOOP;
    PERFORM koherent._no_owner_statistics(hist::regclass);
END $$;

CREATE OR REPLACE FUNCTION koherent._no_owner_statistics(hist regclass) RETURNS void
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

CREATE OR REPLACE FUNCTION koherent._history_trigger() RETURNS trigger
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'koherent_history_trigger';

CREATE OR REPLACE FUNCTION koherent._merge_guard() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'koherent_merge_guard';

CREATE OR REPLACE FUNCTION koherent._install_triggers(cfg_id integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    hist text;
    fn text := format('koherent._trg_%s', cfg_id);
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
    -- the partition key columns of every level of a partitioned table (see _merge_guard)
    SELECT string_agg(DISTINCT format('%L', CASE WHEN k.attnum = 0 THEN '*' ELSE a.attname::text END), ', ')
      INTO pkeys
      FROM pg_partition_tree(cfg.relid) t
      JOIN pg_partitioned_table p ON p.partrelid = t.relid
      CROSS JOIN LATERAL unnest(p.partattrs::int2[]) AS k(attnum)
      LEFT JOIN pg_attribute a ON a.attrelid = t.relid AND a.attnum = k.attnum;

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
        'SELECT koherent._next_history_id(), ''TRUNCATE'', statement_timestamp(), '
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

CREATE OR REPLACE FUNCTION koherent._drop_triggers(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t name;
BEGIN
    FOREACH t IN ARRAY ARRAY['koherent_history_insert', 'koherent_history_update',
                             'koherent_history_delete', 'koherent_history_truncate',
                             'koherent_merge_guard']::name[] LOOP
        IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = t) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', t, rel::regclass);
        END IF;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION koherent._json_expr(hist regclass, col name, alias text DEFAULT 'h') RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN koherent._is_builtin_type(a.atttypid)
                THEN format('to_jsonb(%s.%I)', alias, col)
                ELSE format('to_jsonb(koherent._text_out(%s.%I))', alias, col) END
      FROM pg_attribute a WHERE a.attrelid = hist AND a.attname = col AND NOT a.attisdropped
$$;

CREATE OR REPLACE FUNCTION koherent._row_data_expr(hist regclass) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols name[];
    safe boolean;
    parts text[] := '{}';
    i integer;
BEGIN
    SELECT array_agg(a.attname ORDER BY a.attnum), bool_and(koherent._is_builtin_type(a.atttypid))
      INTO cols, safe
      FROM pg_attribute a
     WHERE a.attrelid = hist AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname NOT IN ('history_id', 'history_kind', 'history_date', 'history_context')
       AND a.attname NOT LIKE 'old:%';
    IF cols IS NULL THEN
        RETURN '''{}''::jsonb';
    END IF;
    IF safe THEN  -- every column built-in: the whole row at once (fast)
        RETURN format('(to_jsonb(h) - ARRAY[''history_id'', ''history_kind'', ''history_date'', ''history_context''%s])',
                      coalesce((SELECT ', ' || string_agg(format('%L', a.attname), ', ')
                                  FROM pg_attribute a
                                 WHERE a.attrelid = hist AND a.attname LIKE 'old:%' AND NOT a.attisdropped), ''));
    END IF;
    -- jsonb_build_object takes at most 100 arguments: 50 columns per call, joined by ||
    FOR i IN 0 .. (array_length(cols, 1) - 1) / 50 LOOP
        parts := parts || (SELECT format('jsonb_build_object(%s)',
                                         string_agg(format('%L, %s', c, koherent._json_expr(hist, c)), ', ' ORDER BY o))
                             FROM unnest(cols[i * 50 + 1 : i * 50 + 50]) WITH ORDINALITY AS u(c, o));
    END LOOP;
    RETURN '(' || array_to_string(parts, ' || ') || ')';
END $$;

CREATE OR REPLACE FUNCTION koherent._table_literal(cfg koherent.tracked_config, by_name boolean) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN by_name AND cfg.dropped_at IS NULL
                THEN format('%L::regclass', format('%I.%I', cfg.schema_name, cfg.table_name))
                ELSE format('%s::oid::regclass', cfg.relid) END
$$;

CREATE OR REPLACE FUNCTION koherent._entry_select(cfg koherent.tracked_config, attributed boolean DEFAULT true)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    hist regclass := format('koherent_history.%I', cfg.history_table)::regclass;
BEGIN
    RETURN format(
        'SELECT h.history_id, %s AS table_name, jsonb_build_object(%s) AS row_key, '
        'h.history_kind AS kind, h.history_date AS date, h.history_context AS context_id, %s'
        '%s AS row_data, '
        '%s%L::text AS table_ident%s FROM koherent_history.%I h%s',
        koherent._table_literal(cfg, attributed),  -- unattributed: the view _history_all
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
        entries := entries || koherent._entry_select(cfg, false);
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

CREATE OR REPLACE FUNCTION koherent._create_lookup_indexes(hist regclass) RETURNS void
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

CREATE OR REPLACE FUNCTION koherent._row_index(hist regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.indexrelid::regclass
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
     WHERE i.indrelid = hist AND a.amname = 'btree' AND i.indnatts >= 2
       AND i.indkey[i.indnatts - 1] = (SELECT attnum FROM pg_attribute
                                        WHERE attrelid = hist AND attname = 'history_id')
     LIMIT 1
$$;

CREATE OR REPLACE FUNCTION koherent._create_row_index(hist regclass, pk name[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF koherent._row_index(hist) IS NULL THEN
        EXECUTE format('CREATE INDEX ON %s (%s, history_id)', hist,
                       (SELECT string_agg(format('%I', k), ', ') FROM unnest(pk) k));
    END IF;
END $$;

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
    PERFORM koherent._sync(cfg.id);
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
    END IF;
    PERFORM koherent._install_triggers(cfg.id);
    PERFORM koherent._rebuild_views();
END $$;

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
    EXECUTE format('DROP FUNCTION IF EXISTS koherent._trg_%s()', cfg.id);
    UPDATE koherent.tracked_config SET active = false, untracked_at = now() WHERE id = cfg.id;
END $$;

CREATE OR REPLACE FUNCTION koherent._relink() RETURNS boolean
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

CREATE OR REPLACE FUNCTION koherent._refuse_inheritance(rel oid DEFAULT NULL) RETURNS void
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
            PERFORM koherent._sync(cfg_id);
            PERFORM koherent._install_triggers(cfg_id);
            changed := true;
        END IF;
    END LOOP;
    PERFORM koherent._refuse_inheritance();
    IF changed THEN
        PERFORM koherent._rebuild_views();
    END IF;
END $$;

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
        EXECUTE format('DROP FUNCTION IF EXISTS koherent._trg_%s()', cfg.id);
        changed := true;
    END LOOP;
    IF changed THEN
        PERFORM koherent._rebuild_views();
    END IF;
END $$;

CREATE OR REPLACE FUNCTION koherent.current_task() RETURNS koherent.task
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ROW(c->>'iss', c->>'tsk', c->>'ptk', c->>'rtk', c->>'rcb', c->>'sub',
               c->'act'->>'sub', c->'act'->>'cid', c->>'jti', c->>'ahs', c->>'aha',
               c - '__token', c->>'__token', NULL)::koherent.task
      FROM koherent._current_task_claims() c
     WHERE c IS NOT NULL
$$;

CREATE OR REPLACE FUNCTION koherent.set_task(token text, args jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._set_task_args(token, args::text)
$$;

CREATE OR REPLACE FUNCTION koherent.set_context(metadata jsonb) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._set_context(metadata::text)
$$;

CREATE OR REPLACE FUNCTION koherent.canonical_args(args jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._canonical_args(args::text)
$$;

CREATE OR REPLACE FUNCTION koherent.args_hash(args jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._args_hash(args::text)
$$;

CREATE OR REPLACE FUNCTION koherent.add_issuer_jwks(issuer text, jwks jsonb) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    IF coalesce(issuer, '') = '' THEN
        RAISE EXCEPTION 'koherent.add_issuer_jwks: issuer must be a non-empty text' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO koherent.issuer_key_store AS s (issuer, kid, public_key, alg)
    SELECT add_issuer_jwks.issuer, k.kid, k.x, k.alg FROM koherent._parse_jwks(jwks::text) k
    ON CONFLICT ON CONSTRAINT issuer_key_store_pkey DO UPDATE
       SET public_key = EXCLUDED.public_key, alg = EXCLUDED.alg, revoked_at = NULL, added_at = now(),
           added_by = current_user;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION koherent.add_issuer_key(issuer text, kid text, public_key text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF coalesce(issuer, '') = '' OR coalesce(kid, '') = '' THEN
        RAISE EXCEPTION 'koherent.add_issuer_key: issuer and kid must be non-empty texts' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO koherent.issuer_key_store AS s (issuer, kid, public_key, alg)
    SELECT add_issuer_key.issuer, add_issuer_key.kid, k.x, k.alg FROM koherent._parse_public_key(public_key) k
    ON CONFLICT ON CONSTRAINT issuer_key_store_pkey DO UPDATE
       SET public_key = EXCLUDED.public_key, alg = EXCLUDED.alg, revoked_at = NULL, added_at = now(),
           added_by = current_user;
END $$;

CREATE OR REPLACE FUNCTION koherent.revoke_issuer_key(issuer text, kid text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    UPDATE koherent.issuer_key_store s SET revoked_at = now()
     WHERE s.issuer = revoke_issuer_key.issuer AND s.kid = revoke_issuer_key.kid AND s.revoked_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'koherent.revoke_issuer_key: no active key "%" for issuer "%"', kid, issuer
            USING ERRCODE = 'undefined_object';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION koherent._keys_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM koherent._invalidate_keys(TG_RELID);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION koherent.bind_agent(issuer text, client_id text, role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF coalesce(issuer, '') = '' OR coalesce(client_id, '') = '' OR role IS NULL THEN
        RAISE EXCEPTION 'koherent.bind_agent: issuer, client_id and role must be given' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO koherent.agent_binding_store (issuer, client_id, role_name)
    VALUES (bind_agent.issuer, bind_agent.client_id, (SELECT rolname::text FROM pg_roles WHERE oid = bind_agent.role))
    ON CONFLICT DO NOTHING;
END $$;

CREATE OR REPLACE FUNCTION koherent.unbind_agent(issuer text, client_id text, role regrole DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    DELETE FROM koherent.agent_binding_store s
     WHERE s.issuer = unbind_agent.issuer AND s.client_id = unbind_agent.client_id
       AND (unbind_agent.role IS NULL
            OR s.role_name = (SELECT rolname::text FROM pg_roles WHERE oid = unbind_agent.role));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION koherent._visibility_check(tbl regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('SELECT 1 FROM %I.%I t WHERE %s', n.nspname, r.relname,
                  string_agg(format('t.%I OPERATOR(%I.%s) $%s', a.attname, opn.nspname, o.oprname, k.ord),
                             ' AND ' ORDER BY k.ord))
      FROM pg_index x
      JOIN pg_class r ON r.oid = x.indrelid
      JOIN pg_namespace n ON n.oid = r.relnamespace
      CROSS JOIN LATERAL unnest(x.indkey::int2[], x.indclass::oid[]) WITH ORDINALITY AS k(attnum, opclass, ord)
      JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
      JOIN pg_opclass oc ON oc.oid = k.opclass
      JOIN pg_amop ao ON ao.amopfamily = oc.opcfamily AND ao.amoplefttype = oc.opcintype
                     AND ao.amoprighttype = oc.opcintype AND ao.amopstrategy = 3
      JOIN pg_operator o ON o.oid = ao.amopopr
      JOIN pg_namespace opn ON opn.oid = o.oprnamespace
     WHERE x.indrelid = tbl AND x.indisprimary
     GROUP BY n.nspname, r.relname
$$;

CREATE OR REPLACE FUNCTION koherent._current_life(cfg koherent.tracked_config, entry text, keyexpr text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- the life of a key ends at its DELETE or TRUNCATE, or at an UPDATE that gave the row another
    -- key (its "old:" key is this one, its new key is not)
    SELECT format('NOT EXISTS (SELECT 1 FROM koherent_history.%1$I d WHERE d.history_id >= %4$s.history_id '
                  'AND ((d.history_kind IN (''DELETE'', ''TRUNCATE'') AND %2$s) '
                  'OR (d.history_kind = ''UPDATE'' AND %3$s AND NOT (%2$s))))',
                  cfg.history_table,
                  (SELECT string_agg(format('d.%I = %s.%I', k, keyexpr, k), ' AND ') FROM unnest(cfg.pk_columns) k),
                  (SELECT string_agg(format('d.%I = %s.%I', 'old:' || k, keyexpr, k), ' AND ') FROM unnest(cfg.pk_columns) k),
                  entry)
$$;

CREATE OR REPLACE FUNCTION koherent._caller_is_auditor() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.has_column_privilege(koherent._caller(), 'koherent.task'::regclass, 'token', 'SELECT')
$$;

CREATE OR REPLACE FUNCTION koherent._visible_entry(history_id bigint, table_name regclass,
                                        OUT visible boolean, OUT context_id uuid)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    auditor boolean := koherent._caller_is_auditor();
    caller oid := koherent._caller();
BEGIN
    visible := false;
    SELECT * INTO cfg FROM koherent.tracked_config c WHERE c.relid = _visible_entry.table_name
     ORDER BY c.dropped_at IS NULL DESC LIMIT 1;
    IF NOT FOUND OR to_regclass(format('koherent_history.%I', cfg.history_table)) IS NULL THEN
        RETURN;
    END IF;
    IF NOT auditor THEN
        -- no privilege to read the table's keys: nothing, and no error that would tell which
        -- history ids belong to it
        IF cfg.dropped_at IS NOT NULL
           OR NOT (has_table_privilege(caller, cfg.relid, 'SELECT')
                   OR (SELECT bool_and(has_column_privilege(caller, cfg.relid, k, 'SELECT'))
                         FROM unnest(cfg.pk_columns) k)) THEN
            RETURN;
        END IF;
    END IF;
    EXECUTE format('SELECT h.history_context, $3 OR (%s AND koherent._visible_to_caller($2, ROW(%s))) '
                   'FROM koherent_history.%I h WHERE h.history_id = $1',
                   koherent._current_life(cfg, 'h', 'h'),
                   (SELECT string_agg(format('h.%I', k), ', ') FROM unnest(cfg.pk_columns) k),
                   cfg.history_table)
       INTO context_id, visible
      USING _visible_entry.history_id, koherent._visibility_check(cfg.relid), auditor;
    visible := coalesce(visible, false);
    IF NOT visible THEN
        context_id := NULL;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION koherent.provenance_entry_effective_changes(e koherent.provenance_entry)
RETURNS SETOF koherent.effective_change
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT (koherent._visible_entry(e.history_id, e.table_name)).visible THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT c.* FROM koherent.effective_change c WHERE c.history_id = e.history_id ORDER BY c.field;
END $$;

CREATE OR REPLACE FUNCTION koherent.provenance_entry_task(e koherent.provenance_entry) RETURNS koherent.task_info
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ctx uuid := (koherent._visible_entry(e.history_id, e.table_name)).context_id;
    t koherent.task_info;
BEGIN
    IF ctx IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT k.* INTO t FROM koherent.task k
      JOIN koherent.transaction_auth_context c ON c.task_id = k.task_id AND c.issuer = k.issuer
     WHERE c.id = ctx;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- the signed token is a bearer credential until it expires: auditors only
    IF NOT koherent._caller_is_auditor() THEN
        t.token := NULL;
    END IF;
    RETURN t;
END $$;

CREATE OR REPLACE FUNCTION koherent._effective_changes(rec koherent.provenance_entry)
RETURNS SETOF koherent.effective_change LANGUAGE sql STABLE AS $$
    SELECT * FROM koherent.provenance_entry_effective_changes(rec)
$$;

CREATE OR REPLACE FUNCTION koherent._task(rec koherent.provenance_entry) RETURNS koherent.task_info
LANGUAGE sql STABLE AS $$ SELECT koherent.provenance_entry_task(rec) $$;

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
    -- The writer leaves BRIN summarization to VACUUM and to readers: summarize what is complete
    -- and still unsummarized, so that the lookups below read no long unsummarized tail.
    PERFORM koherent._summarize(to_regclass(format('koherent_history.%I', cfg.history_table))::oid)
       FROM koherent.tracked_config cfg;
    SELECT string_agg(koherent._entry_select(cfg) || ' WHERE h.history_context = ANY ($1)', E'\nUNION ALL\n')
      INTO branches FROM koherent.tracked_config cfg;
    RETURN QUERY EXECUTE 'SELECT * FROM (' || branches || ') e ORDER BY 1' USING ctx;
END $$;

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
        END $b$ $f$, nsp, rel || '_provenance', t, koherent._entry_select(cfg), keymatch,
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
        $b$ $f$, '_keys_' || cfg.id, keytypes,
        (SELECT string_agg(format('h.%I', k), ', ') FROM unnest(cfg.pk_columns) k), cfg.history_table,
        chk, (SELECT string_agg(format('k.%I', k), ', ') FROM unnest(cfg.pk_columns) k),
        koherent._current_life(cfg, 'h', 'h'));
    EXECUTE format('COMMENT ON FUNCTION koherent.%I(text, text, text, text, text, timestamptz, timestamptz) IS %L',
                   '_keys_' || cfg.id, E'@omit');
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$I.%2$I(task_id text DEFAULT NULL, agent_client_id text DEFAULT NULL,
            issuer text DEFAULT NULL, changed_by text DEFAULT NULL, kind text DEFAULT NULL,
            changed_since timestamptz DEFAULT NULL, changed_before timestamptz DEFAULT NULL)
        RETURNS SETOF %3$s LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $b$
            SELECT t.* FROM %3$s t
             WHERE (%4$s) IN (SELECT %4$s FROM koherent.%5$I($1, $2, $3, $4, $5, $6, $7))
        $b$ $f$, nsp, rel || '_by_provenance', t, keycols, '_keys_' || cfg.id);
    -- History is readable only when granted: none of these is executable by PUBLIC.
    EXECUTE format('REVOKE ALL ON FUNCTION %I.%I(%s), %I._provenance(%s), '
                   '%I.%I(text, text, text, text, text, timestamptz, timestamptz), '
                   'koherent.%I(text, text, text, text, text, timestamptz, timestamptz) FROM PUBLIC',
                   nsp, rel || '_provenance', t, nsp, t, nsp, rel || '_by_provenance', '_keys_' || cfg.id);
    IF grant_to IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION %I.%I(%s), %I._provenance(%s), '
                       '%I.%I(text, text, text, text, text, timestamptz, timestamptz), '
                       'koherent.%I(text, text, text, text, text, timestamptz, timestamptz), '
                       'koherent.provenance_entry_effective_changes(koherent.provenance_entry), '
                       'koherent.provenance_entry_task(koherent.provenance_entry), '
                       'koherent._effective_changes(koherent.provenance_entry), '
                       'koherent._task(koherent.provenance_entry) TO %s',
                       nsp, rel || '_provenance', t, nsp, t, nsp, rel || '_by_provenance', '_keys_' || cfg.id,
                       grant_to);
    END IF;
    EXECUTE format('COMMENT ON FUNCTION %I.%I(text, text, text, text, text, timestamptz, timestamptz) IS %L',
                   nsp, rel || '_by_provenance',
                   'koherent: the current rows with at least one recorded change matching all given conditions (exact matches; changedSince inclusive, changedBefore exclusive).');
END $$;

CREATE OR REPLACE FUNCTION koherent.unexpose(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp name;
    rel name;
    cfg_id integer;
BEGIN
    SELECT n.nspname, c.relname INTO nsp, rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl;
    SELECT id INTO cfg_id FROM koherent.tracked_config WHERE relid = tbl AND dropped_at IS NULL;
    EXECUTE format('DROP FUNCTION IF EXISTS %I.%I(%s)', nsp, rel || '_provenance', tbl);
    EXECUTE format('DROP FUNCTION IF EXISTS %I._provenance(%s)', nsp, tbl);
    EXECUTE format('DROP FUNCTION IF EXISTS %I.%I(text, text, text, text, text, timestamptz, timestamptz)',
                   nsp, rel || '_by_provenance');
    EXECUTE format('DROP FUNCTION IF EXISTS koherent.%I(text, text, text, text, text, timestamptz, timestamptz)',
                   '_keys_' || cfg_id);
END $$;

CREATE OR REPLACE VIEW koherent.provenance_entry AS
SELECT e.history_id, e.table_name, e.row_key, e.kind, e.date, e.context_id, c.db_role, e.row_data,
       c.task_id, c.client_id AS agent_client_id, c.issuer, c.changed_by, e.table_ident,
       c.effective_role
  FROM koherent._history_all e
  LEFT JOIN koherent.transaction_auth_context c ON c.id = e.context_id;

CREATE OR REPLACE VIEW koherent.issuer_key AS
SELECT issuer, kid,
       jsonb_strip_nulls(jsonb_build_object('kty', 'OKP', 'crv', 'Ed25519', 'kid', kid, 'use', 'sig', 'alg', alg,
                          'x', translate(rtrim(encode(public_key, 'base64'), '='), '+/', '-_'))) AS jwk,
       added_at, added_by, revoked_at, revoked_at IS NULL AS active
  FROM koherent.issuer_key_store;

COMMENT ON FUNCTION koherent.track(regclass, text[], boolean, boolean) IS
  'Start recording every row change of a table (idempotent; a second call applies a changed exclude, require_task or row_index). row_index => true adds the (primary key, history_id) index of its history table, false drops it; by default it is left as it is (none for a new table; expose() adds it).';
COMMENT ON FUNCTION koherent.untrack(regclass) IS
  'Stop recording a table; its history stays readable.';
COMMENT ON FUNCTION koherent.current_task() IS
  'The verified task of the current transaction (null when none); created_at is null until its row is written.';
COMMENT ON FUNCTION koherent.set_task(text, jsonb) IS
  'As set_task(token), and refuse the token unless its ahs claim is the sha256-canonical-v1 hash of args.';
COMMENT ON FUNCTION koherent.set_context(jsonb) IS
  'Add free-form metadata (a JSON object, merged) to the current transaction''s auth context.';
COMMENT ON FUNCTION koherent.canonical_args(jsonb) IS
  'The sha256-canonical-v1 canonical JSON text of task arguments.';
COMMENT ON FUNCTION koherent.args_hash(jsonb) IS
  'The sha256-canonical-v1 hash of task arguments (what a token''s ahs claim holds; null hashes as {}).';
COMMENT ON FUNCTION koherent.add_issuer_jwks(text, jsonb) IS
  'Trust the Ed25519 keys of a JWKS for an issuer; returns the number of keys added or replaced.';
COMMENT ON FUNCTION koherent.add_issuer_key(text, text, text) IS
  'Trust one Ed25519 public key (a JWK JSON text or an SPKI PEM) for an issuer under a kid.';
COMMENT ON FUNCTION koherent.revoke_issuer_key(text, text) IS
  'Stop trusting a key; tokens it signed are refused from the next transaction on, in every session.';
COMMENT ON FUNCTION koherent.bind_agent(text, text, regrole) IS
  'Allow role (and roles with its privileges) to present the tokens of agent client_id of issuer; once an agent has a binding, no other role may.';
COMMENT ON FUNCTION koherent.unbind_agent(text, text, regrole) IS
  'Remove a binding (all of the agent''s when role is null); returns how many were removed.';
COMMENT ON FUNCTION koherent.provenance_entry_effective_changes(koherent.provenance_entry) IS
  'The fields this entry changed, with their old and new values (nothing unless the caller may read the entry''s row).';
COMMENT ON FUNCTION koherent.provenance_entry_task(koherent.provenance_entry) IS
  'The verified task this entry was made under (null when unattributed, or when the caller may not read the entry''s row); its token only for auditors.';
COMMENT ON FUNCTION koherent._effective_changes(koherent.provenance_entry) IS E'@omit';
COMMENT ON FUNCTION koherent._task(koherent.provenance_entry) IS E'@omit';
COMMENT ON FUNCTION koherent.task_changes(text, boolean) IS
  'Every change one task made, across all tracked tables, in order; include_subtasks follows parent_task_id and root_task_id.';
COMMENT ON FUNCTION koherent.expose(regclass, regrole) IS
  'Create the GraphQL-facing functions of a tracked table: <table>_provenance, _provenance and <table>_by_provenance; adds the row index of its history table if missing.';

-- Privileges, as a fresh install sets them.
GRANT USAGE ON SCHEMA koherent TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA koherent FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA koherent FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA koherent FROM PUBLIC;
-- Public keys are public: set_task reads them with the caller's rights.
GRANT SELECT ON koherent.issuer_key_store, koherent.issuer_key TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    koherent.set_task(text), koherent.set_task(text, jsonb), koherent._set_task_args(text, text),
    koherent.verify_token(text), koherent.current_task(), koherent._current_task_claims(),
    koherent.current_context_id(), koherent.set_context_id(uuid), koherent.set_context(jsonb),
    koherent._set_context(text), koherent.canonical_args(jsonb), koherent._canonical_args(text),
    koherent.args_hash(jsonb), koherent._args_hash(text),
    -- called by the views with the reader's rights: a value's text by its output function
    koherent._text_out(anyelement)
  TO PUBLIC;

REVOKE EXECUTE ON FUNCTION koherent.expose(regclass, regrole), koherent.unexpose(regclass),
    koherent.task_changes(text, boolean), koherent.provenance_entry_effective_changes(koherent.provenance_entry),
    koherent.provenance_entry_task(koherent.provenance_entry), koherent._entry_select(koherent.tracked_config, boolean),
    koherent._visibility_check(regclass), koherent._caller_is_auditor(), koherent._visible_entry(bigint, regclass),
    koherent._current_life(koherent.tracked_config, text, text)
  FROM PUBLIC;

-- Existing installations: regenerate every tracked table's triggers (the TRUNCATE copy checks
-- require_task and allocates ids under the allocation lock), every exposed table's functions
-- (gated by the caller's visibility, names instead of oids, cast-free JSON), and the views.
DO $upgrade$
DECLARE
    cfg koherent.tracked_config;
    rel oid;
    fns text[];
    f text;
    grantees text[];
    g text;
BEGIN
    FOR cfg IN SELECT * FROM koherent.tracked_config WHERE active AND dropped_at IS NULL ORDER BY id LOOP
        -- Per-table objects are not extension members, and an extension script may not replace
        -- what it does not own: drop, create again, and keep them out of the extension.
        FOR rel IN SELECT relid FROM pg_partition_tree(cfg.relid) UNION SELECT cfg.relid LOOP
            PERFORM koherent._drop_triggers(rel);
        END LOOP;
        EXECUTE format('DROP FUNCTION IF EXISTS koherent._trg_%s()', cfg.id);
        PERFORM koherent._install_triggers(cfg.id);
        EXECUTE format('ALTER EXTENSION koherent DROP FUNCTION koherent._trg_%s()', cfg.id);
        PERFORM koherent._no_owner_statistics(format('koherent_history.%I', cfg.history_table)::regclass);
        IF to_regprocedure(format('koherent.%I(text, text, text, text, text, timestamptz, timestamptz)',
                                  '_keys_' || cfg.id)) IS NOT NULL THEN
            fns := ARRAY[format('%I.%I(%s)', cfg.schema_name, cfg.table_name || '_provenance', cfg.relid::regclass),
                         format('%I._provenance(%s)', cfg.schema_name, cfg.relid::regclass),
                         format('%I.%I(text, text, text, text, text, timestamptz, timestamptz)',
                                cfg.schema_name, cfg.table_name || '_by_provenance'),
                         format('koherent.%I(text, text, text, text, text, timestamptz, timestamptz)', '_keys_' || cfg.id)];
            -- who was granted the exposed functions keeps them
            SELECT array_agg(DISTINCT a.grantee::regrole::text) INTO grantees
              FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
             WHERE p.oid = to_regprocedure(fns[1]) AND a.privilege_type = 'EXECUTE'
               AND a.grantee <> 0 AND a.grantee <> p.proowner;
            PERFORM koherent.unexpose(cfg.relid::regclass);
            PERFORM koherent.expose(cfg.relid::regclass);
            FOREACH f IN ARRAY fns LOOP
                EXECUTE format('ALTER EXTENSION koherent DROP FUNCTION %s', f);
            END LOOP;
            FOREACH g IN ARRAY coalesce(grantees, '{}') LOOP
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s, koherent.provenance_entry_task(koherent.provenance_entry), '
                               'koherent._task(koherent.provenance_entry) TO %s', array_to_string(fns, ', '), g);
            END LOOP;
        END IF;
    END LOOP;
    PERFORM koherent._rebuild_views();
END
$upgrade$;
