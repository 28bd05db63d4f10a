-- koherent: the history readers (SECURITY DEFINER): what a client may see of history. A reader
-- sees the history of exactly the rows it may read itself (privileges and row-level security,
-- checked as the client), and a token only when it is an auditor.

-- The check that a client may read one row of a tracked table itself: `SELECT 1 FROM <table> t
-- WHERE <key column> OPERATOR(<the primary key's own equality>) $n ...`, and the types of its
-- parameters (the key columns' base types). koherent._visible_to_caller runs it as the client.
CREATE FUNCTION koherent._visibility_check(tbl regclass) RETURNS text
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

-- The entries of the row a key names now: its current life. A life begins at a birth of the key
-- (a CREATE, or an UPDATE that moved a row there from another key) and ends at a death (a
-- DELETE or TRUNCATE, or an UPDATE that moved the row to another key). An entry belongs to the
-- current life when no birth or death of its key comes after it. "After": within one
-- transaction (same context), a later history_date: every statement, nested ones included,
-- records its entries with its own start time, strictly increasing (src/running.rs), while
-- history ids do not order a statement and the nested statements its triggers run (those write
-- their history first); across transactions, a later history id (writers of the same key are
-- serialized by its row lock or its unique index). Entries of one statement share a date: a key
-- swap's moves never end each other's life. A key used again by a new row (another tenant's,
-- say) does not open the earlier rows' history. Deaths are not part of any life. The lookups are
-- index scans: the row index finds the key's own entries, the key-change index its moves away.
CREATE FUNCTION koherent._current_life(cfg koherent.tracked_config, entry text, keyexpr text) RETURNS text
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

-- Whether role `r` is an auditor (SELECT on koherent.task's token: README, "Who reads history").
CREATE FUNCTION koherent._is_auditor(r oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.has_column_privilege(r, 'koherent.task'::regclass, 'token', 'SELECT')
$$;

-- An auditor may read every entry and the signed tokens: a role with SELECT on koherent.task's
-- token column (granted by an administrator; see README, "Who reads history").
CREATE FUNCTION koherent._caller_is_auditor() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._is_auditor(koherent._caller())
$$;

-- Whether the client may see history entry `history_id` of `table_name` (it exists there and
-- the client can read its row now, or is an auditor), and the entry's real context. The
-- readers below take an entry value from the client: nothing in it but these two fields is
-- used, and neither is trusted.
CREATE FUNCTION koherent._visible_entry(history_id bigint, table_name regclass,
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
    visible := coalesce(visible, false) AND koherent._context_visible(context_id);
    IF NOT visible THEN
        context_id := NULL;
    END IF;
END $$;

CREATE FUNCTION koherent.provenance_entry_effective_changes(e koherent.provenance_entry)
RETURNS SETOF koherent.effective_change
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT (koherent._visible_entry(e.history_id, e.table_name)).visible THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT c.* FROM koherent.effective_change c WHERE c.history_id = e.history_id ORDER BY c.field;
END $$;
COMMENT ON FUNCTION koherent.provenance_entry_effective_changes(koherent.provenance_entry) IS
  'The fields this entry changed, with their old and new values (nothing unless the caller may read the entry''s row).';

-- A task as readers see it: koherent.task's columns, the token null for all but auditors (a
-- type of its own, so GraphQL types the token as nullable).
CREATE TYPE koherent.task_info AS (
    issuer text, task_id text, parent_task_id text, root_task_id text, assigner_sub text,
    caller_sub text, agent_sub text, agent_client_id text, token_id text, args_hash text,
    args_hash_algorithm text, claims jsonb, token text, created_at timestamptz,
    organization text, assigner_user jsonb);
COMMENT ON TYPE koherent.task_info IS
  'koherent: the verified task of a history entry (token only for auditors).';

CREATE FUNCTION koherent.provenance_entry_task(e koherent.provenance_entry) RETURNS koherent.task_info
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
COMMENT ON FUNCTION koherent.provenance_entry_task(koherent.provenance_entry) IS
  'The verified task this entry was made under (null when unattributed, or when the caller may not read the entry''s row); its token only for auditors.';


-- The contexts (transactions) of a task, or of the task and its subtasks (parent_task_id and
-- root_task_id, as task_changes follows them), under every issuer that used the id. Null when
-- the task id is unknown, and (row-level security on the contexts) when the caller may see none
-- of its contexts: every reader by task (task_changes, as_of_task, revert_plan, revert_task, the
-- audit export) then answers as for an unknown task.
CREATE FUNCTION koherent._task_contexts(task_id text, include_subtasks boolean) RETURNS uuid[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE tasks(task_id, issuer) AS (
        SELECT t.task_id, t.issuer FROM koherent.task t WHERE t.task_id = _task_contexts.task_id
        UNION
        SELECT t.task_id, t.issuer FROM koherent.task t JOIN tasks p
            ON (t.parent_task_id = p.task_id OR t.root_task_id = p.task_id) AND t.issuer = p.issuer
         WHERE include_subtasks
    ), ids AS (
        SELECT CASE WHEN EXISTS (SELECT 1 FROM tasks) THEN coalesce(array_agg(c.id), '{}') END AS ids
          FROM tasks t CROSS JOIN LATERAL (
                SELECT x.id FROM koherent.transaction_auth_context x
                 WHERE x.task_id = t.task_id AND x.issuer = t.issuer OFFSET 0) c
    )
    SELECT CASE WHEN NOT (SELECT koherent._context_rls()) THEN i.ids
                ELSE (SELECT array_agg(u) FROM unnest(i.ids) u WHERE koherent._context_visible(u)) END
      FROM ids i
$$;

-- Everything one task changed, across all tables, in order: the task's contexts first (index on
-- transaction_auth_context.task_id); the entries of the sealed ones by the history id ranges the
-- ledger lists for each table (koherent._sealed_conditions, read through the range index: what the
-- task wrote, not what history holds), the others by the history_context bloom of each history
-- table's lookup index. VOLATILE: it may summarize BRIN ranges (koherent._summarize) first.
CREATE FUNCTION koherent.task_changes(task_id text, include_subtasks boolean DEFAULT false,
                                      organization text DEFAULT NULL)
RETURNS SETOF koherent.provenance_entry
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- index lookups: parallel workers and JIT compilation cost more than they save (a task with
-- many contexts makes estimates large enough to trigger both); and no sequential scan of a
-- history table: a task's ids lie beyond what its statistics know (or it has none yet), no
-- btree on history_id lets the planner look further, so it expects no rows and would read all
-- history rather than the ranges (1M entries, a 10k-change task: 166 ms vs 34 ms); bitmap scans
-- on whatever the session says: they are the only way BRIN indexes are read
SET max_parallel_workers_per_gather = 0 SET jit = off SET enable_seqscan = off SET enable_bitmapscan = on AS $$
DECLARE
    ctx uuid[];
    unsealed uuid[];
    sealed uuid[];
    branches text;
    since timestamptz;
BEGIN
    ctx := koherent._task_contexts(task_id, include_subtasks);
    IF ctx IS NULL OR cardinality(ctx) = 0 THEN
        RETURN;
    END IF;
    -- only the transactions of that organization (_task_contexts keeps only those the caller
    -- may see, under row-level security on the contexts)
    IF task_changes.organization IS NOT NULL THEN
        ctx := ARRAY(SELECT x.id FROM koherent.transaction_auth_context x
                      WHERE x.id = ANY (ctx) AND x.organization = task_changes.organization);
    END IF;
    unsealed := ARRAY(SELECT u FROM unnest(ctx) u
                       WHERE NOT EXISTS (SELECT 1 FROM koherent.ledger_context l WHERE l.context_id = u));
    -- the ranges branch takes only the sealed contexts: an unsealed one's entries can lie inside
    -- a sealed range (a transaction that committed after a seal), and come from the other branch
    sealed := ARRAY(SELECT u FROM unnest(ctx) u WHERE NOT (u = ANY (unsealed)));
    since := koherent._contexts_since(unsealed);
    -- summarize what is complete and still unsummarized (src/brin.rs), so that the lookups
    -- below read no long unsummarized tail
    PERFORM koherent._summarize(to_regclass(format('koherent_history.%I', cfg.history_table))::oid)
       FROM koherent.tracked_config cfg;
    -- (the context test is written so that no index takes it: the ranges pick the blocks)
    SELECT string_agg(b, E'\nUNION ALL\n') INTO branches FROM (
        SELECT koherent._entry_select(cfg, 'provenance_entry', '$4')
               || ' WHERE (h.history_context = ANY ($1)) IS TRUE AND ' || r.cond AS b
          FROM koherent._sealed_conditions(sealed) r JOIN koherent.tracked_config cfg ON cfg.id = r.config_id
        UNION ALL
        SELECT koherent._entry_select(cfg, 'provenance_entry', '$4') || ' WHERE '
               || koherent._unsealed_condition(format('koherent_history.%I', cfg.history_table)::regclass, '$2', since, '$3')
          FROM koherent.tracked_config cfg WHERE cardinality(unsealed) > 0) x;
    IF branches IS NULL THEN
        RETURN;
    END IF;
    -- (unsealed contexts: their entries are dated at or after the oldest one began, see
    -- koherent._contexts_since)
    RETURN QUERY EXECUTE 'SELECT * FROM (' || branches || ') e ORDER BY 1'
      USING sealed, unsealed, since, ctx;
END $$;
COMMENT ON FUNCTION koherent.task_changes(text, boolean, text) IS
  'Every change one task made, across all tracked tables, in order; include_subtasks follows parent_task_id and root_task_id; organization keeps the transactions written in that organization.';
