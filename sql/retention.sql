-- koherent: partitioned history and retention (set_retention, create_partitions, prune).
--
-- A tracked table's history can be partitioned by history_date (range partitions of a fixed
-- width, aligned in UTC: whole months since January 2000 for a width in months, multiples of
-- the width since 2000-01-01 00:00 UTC otherwise). The writer routes each statement's entries to
-- the partition of the statement's date (src/insert/mod.rs, as COPY does). Partitions are made
-- ahead of time, by koherent.create_partitions() (called by the sealer worker, by set_retention
-- and by prune), as plain tables ATTACHed to the history table: ATTACH PARTITION takes a SHARE
-- UPDATE EXCLUSIVE lock on it, which no writer waits for. koherent.prune() drops whole
-- partitions older than their table's keep, and records each as a retention event that the next
-- block of the ledger seals: verify_history then reports the dropped entries as pruned.

-- Per tracked table whose history is partitioned: how wide a partition is, how long history is
-- kept (NULL: nothing is pruned), how many partitions are kept ready ahead of the current one.
CREATE TABLE koherent.retention (
    config_id          integer PRIMARY KEY REFERENCES koherent.tracked_config ON DELETE CASCADE,
    keep               interval,
    partition_interval interval NOT NULL,
    ahead              integer NOT NULL DEFAULT 3,
    since              timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE koherent.retention IS
  'koherent: tracked tables whose history is partitioned by date (koherent.set_retention): partition width, how long history is kept (NULL: forever), partitions made ahead.';

-- One row per dropped partition. id_ranges: the history ids the partition held, as inclusive
-- ranges [lo, hi] that hold no entry of the table kept in another partition (so that
-- verify_history can tell a pruned entry from a deleted one); block: the ledger block that
-- sealed the event (NULL until the next seal).
CREATE TABLE koherent.retention_event (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    config_id      integer NOT NULL,
    partition_name name NOT NULL,
    range_from     timestamptz,
    range_to       timestamptz NOT NULL,
    entries        bigint NOT NULL,
    id_ranges      int8range[] NOT NULL,
    dropped_at     timestamptz NOT NULL,
    dropped_by     name NOT NULL,
    block          bigint
);
COMMENT ON TABLE koherent.retention_event IS
  'koherent: one row per history partition koherent.prune() dropped: its date range, entry count and history id ranges; sealed by the ledger block named.';
SELECT pg_catalog.pg_extension_config_dump('koherent.retention', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.retention_event', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.retention_event_id_seq', '');

-- The width of a partition as (months, seconds): exactly one of them non-zero. A width mixing
-- months with days or time, or shorter than a second, is refused.
CREATE FUNCTION koherent._partition_width(step interval) RETURNS TABLE (months integer, seconds bigint)
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m integer := (extract(year FROM step) * 12 + extract(month FROM step))::integer;
    s numeric := extract(epoch FROM step - make_interval(months => m));
BEGIN
    IF step IS NULL OR (m <> 0 AND s <> 0) OR m < 0 OR s < 0 OR (m = 0 AND s < 1) OR s <> floor(s) THEN
        RAISE EXCEPTION 'koherent: a history partition''s width must be whole months, or whole seconds (at least one), not %', step
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example ''1 month'', ''3 months'', ''7 days'' or ''1 hour''.';
    END IF;
    RETURN QUERY SELECT m, s::bigint;
END $$;

-- The start of the partition that holds ts.
CREATE FUNCTION koherent._partition_start(ts timestamptz, step interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN w.months > 0 THEN
                timezone('UTC', timestamp '2000-01-01'
                    + make_interval(months => (floor(((extract(year FROM timezone('UTC', ts)) - 2000) * 12
                                                      + extract(month FROM timezone('UTC', ts)) - 1) / w.months)
                                               * w.months)::integer))
           ELSE to_timestamp(946684800 + floor((extract(epoch FROM ts) - 946684800) / w.seconds) * w.seconds) END
      FROM koherent._partition_width(step) w
$$;

-- The start of the partition after the one that starts at (or holds) lo.
CREATE FUNCTION koherent._partition_next(lo timestamptz, step interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._partition_start(timezone('UTC', timezone('UTC', lo) + step), step)
$$;

-- The longest prefix of t of at most `bytes` bytes (names are cut in bytes, not characters).
CREATE FUNCTION koherent._name_prefix(t text, bytes integer) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT left(t, n) FROM generate_series(least(length(t), bytes), 0, -1) n
     WHERE octet_length(left(t, n)) <= bytes LIMIT 1
$$;

-- The partitions of a history table and their bounds (lo NULL: from MINVALUE), read from their
-- bound expressions under fixed settings (a session's DateStyle and TimeZone abbreviations must
-- not move them).
CREATE FUNCTION koherent._partitions(hist regclass)
RETURNS TABLE (part regclass, lo timestamptz, hi timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
    SELECT c.oid::regclass,
           (substring(b.e FROM 'FROM \(''([^'']*)''\)'))::timestamptz,
           (substring(b.e FROM 'TO \(''([^'']*)''\)'))::timestamptz
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS e) b
     WHERE i.inhparent = hist
$$;

-- Partitions of one partitioned history table from the one holding now() to `ahead` more;
-- returns how many it made. Each is made as a table of its own and attached (SHARE UPDATE
-- EXCLUSIVE on the history table: writers go on); ATTACH builds the history table's indexes on
-- it. It gets the history table's owner.
CREATE FUNCTION koherent._create_partitions(cfg_id integer) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    cfg koherent.tracked_config;
    ret koherent.retention;
    hist regclass;
    lo timestamptz;
    hi timestamptz;
    top timestamptz;
    pname name;
    made integer := 0;
BEGIN
    SELECT * INTO cfg FROM koherent.tracked_config WHERE id = cfg_id;
    SELECT * INTO ret FROM koherent.retention WHERE config_id = cfg_id;
    hist := to_regclass(format('koherent_history.%I', cfg.history_table));
    IF hist IS NULL OR ret.config_id IS NULL OR (SELECT relkind FROM pg_class WHERE oid = hist) <> 'p' THEN
        RETURN 0;
    END IF;
    -- one maker at a time (create_partitions, track, set_retention, prune)
    LOCK TABLE koherent.retention IN EXCLUSIVE MODE;
    top := koherent._partition_start(now(), ret.partition_interval);
    FOR i IN 1..ret.ahead + 1 LOOP
        top := koherent._partition_next(top, ret.partition_interval);
    END LOOP;
    lo := greatest((SELECT max(p.hi) FROM koherent._partitions(hist) p),
                   koherent._partition_start(now(), ret.partition_interval));
    WHILE lo < top LOOP
        hi := koherent._partition_next(lo, ret.partition_interval);
        pname := format('%s_%s_p%s', koherent._name_prefix(cfg.history_table, 35), cfg.id,
                        to_char(timezone('UTC', lo), 'YYYYMMDD"_"HH24MISS'));
        EXECUTE format('CREATE TABLE koherent_history.%I (LIKE %s INCLUDING DEFAULTS INCLUDING STORAGE)', pname, hist);
        EXECUTE format('ALTER TABLE koherent_history.%I OWNER TO %I', pname,
                       (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = hist));
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION koherent_history.%I FOR VALUES FROM (%L) TO (%L)',
                       hist, pname, lo, hi);
        PERFORM koherent._unsummarize_empty(format('koherent_history.%I', pname)::regclass);
        made := made + 1;
        lo := hi;
    END LOOP;
    RETURN made;
END $$;

-- Partitions ahead for every partitioned history table of a tracked table (made in one
-- transaction at a time: the lock on koherent.retention). Returns how many it made.
CREATE FUNCTION koherent.create_partitions() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    made integer := 0;
    c integer;
BEGIN
    LOCK TABLE koherent.retention IN EXCLUSIVE MODE;
    FOR c IN SELECT r.config_id FROM koherent.retention r JOIN koherent.tracked_config t ON t.id = r.config_id
              WHERE t.active AND t.dropped_at IS NULL ORDER BY 1 LOOP
        made := made + koherent._create_partitions(c);
    END LOOP;
    RETURN made;
END $$;
COMMENT ON FUNCTION koherent.create_partitions() IS
  'Make the history partitions each partitioned history table needs, from the current one to koherent.retention.ahead more; returns how many it made.';

-- An existing history table becomes the first partition (FROM MINVALUE to the end of the
-- current period) of a partitioned history table of the same name: one scan of it (ATTACH
-- checks its dates) under an ACCESS EXCLUSIVE lock, once. Its indexes become the partitions of
-- the new table's.
CREATE FUNCTION koherent._partition_history(cfg koherent.tracked_config, step interval) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    hist regclass := format('koherent_history.%I', cfg.history_table)::regclass;
    oldname name := format('%s_%s_p0', koherent._name_prefix(cfg.history_table, 35), cfg.id);
    newhist regclass;
    had_lookup boolean;
    had_row boolean;
    hi timestamptz;
BEGIN
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', hist);
    had_lookup := koherent._has_lookup_index(hist);
    had_row := koherent._row_index(hist) IS NOT NULL;
    EXECUTE format('SELECT max(history_date) FROM %s', hist) INTO hi;
    hi := koherent._partition_next(koherent._partition_start(greatest(hi, now()), step), step);
    EXECUTE format('ALTER TABLE %s RENAME TO %I', hist, oldname);
    EXECUTE format('CREATE TABLE koherent_history.%I (LIKE koherent_history.%I INCLUDING DEFAULTS INCLUDING STORAGE) '
                   'PARTITION BY RANGE (history_date)', cfg.history_table, oldname);
    newhist := format('koherent_history.%I', cfg.history_table)::regclass;
    EXECUTE format('ALTER TABLE %s OWNER TO %I', newhist, (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = hist));
    EXECUTE format('COMMENT ON TABLE %s IS %L', newhist, obj_description(hist, 'pg_class'));
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION koherent_history.%I FOR VALUES FROM (MINVALUE) TO (%L)',
                   newhist, oldname, hi);
    -- the same indexes on the new table (each attaches the partition's matching one)
    IF had_lookup THEN
        PERFORM koherent._create_lookup_indexes(newhist);
    END IF;
    PERFORM koherent._create_range_index(newhist);
    IF had_row THEN
        PERFORM koherent._create_row_index(newhist, cfg.pk_columns);
    END IF;
END $$;

-- Partition a tracked table's history by date and keep `keep` of it (NULL: keep everything;
-- partitioning stays). See the README, "Retention".
CREATE FUNCTION koherent.set_retention(tbl regclass, keep interval, partition interval DEFAULT '1 month',
                                       ahead integer DEFAULT 3)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg koherent.tracked_config;
    ret koherent.retention;
    hist regclass;
    made integer;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'koherent.set_retention: table must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM koherent._partition_width(partition);
    IF keep IS NOT NULL AND (keep <= interval '0' OR keep < partition) THEN
        RAISE EXCEPTION 'koherent.set_retention: keep (%) must be at least one partition (%)', keep, partition
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF ahead IS NULL OR ahead < 1 OR ahead > 1000 THEN
        RAISE EXCEPTION 'koherent.set_retention: ahead must be between 1 and 1000, not %', ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF partition * (ahead + 1) > interval '100 years' THEN
        RAISE EXCEPTION 'koherent.set_retention: % partitions of % reach more than 100 years ahead', ahead, partition
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOCK TABLE koherent.retention IN EXCLUSIVE MODE;
    SELECT * INTO cfg FROM koherent.tracked_config WHERE relid = tbl AND dropped_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'koherent.set_retention: % is not tracked', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Track it first: SELECT koherent.track(...).';
    END IF;
    hist := format('koherent_history.%I', cfg.history_table)::regclass;
    SELECT * INTO ret FROM koherent.retention WHERE config_id = cfg.id;
    IF (SELECT relkind FROM pg_class WHERE oid = hist) <> 'p' THEN
        PERFORM koherent._partition_history(cfg, partition);
        PERFORM koherent._rebuild_views();
    END IF;
    INSERT INTO koherent.retention (config_id, keep, partition_interval, ahead)
    VALUES (cfg.id, keep, partition, ahead)
    ON CONFLICT (config_id) DO UPDATE
       SET keep = excluded.keep, partition_interval = excluded.partition_interval, ahead = excluded.ahead;
    made := koherent._create_partitions(cfg.id);
    hist := format('koherent_history.%I', cfg.history_table)::regclass;
    RETURN jsonb_build_object('table', tbl::text, 'history_table', hist::text, 'keep', keep::text,
                              'partition', partition::text, 'ahead', ahead, 'partitions_made', made,
                              'partitions', (SELECT jsonb_agg(jsonb_build_object('partition', p.part::text,
                                                      'from', p.lo, 'to', p.hi) ORDER BY p.hi)
                                               FROM koherent._partitions(hist) p));
END $$;
COMMENT ON FUNCTION koherent.set_retention(regclass, interval, interval, integer) IS
  'Partition a tracked table''s history by date (partitions of the given width, `ahead` made in advance) and keep `keep` of it (NULL: keep everything); returns the partitions.';

-- The history id ranges that a partition about to be dropped holds: [min, max] of its ids,
-- split around the ids of the table's entries in other partitions (a transaction at a boundary
-- can interleave them).
CREATE FUNCTION koherent._pruned_ranges(hist regclass, part regclass, OUT entries bigint, OUT ranges int8range[])
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lo bigint;
    hi bigint;
    k bigint;
    prev bigint;
BEGIN
    EXECUTE format('SELECT count(*), min(history_id), max(history_id) FROM %s', part) INTO entries, lo, hi;
    ranges := '{}';
    IF entries = 0 THEN
        RETURN;
    END IF;
    prev := lo - 1;
    FOR k IN EXECUTE format('SELECT DISTINCT history_id FROM %s WHERE history_id BETWEEN $1 AND $2 '
                            'AND tableoid <> $3 ORDER BY 1', hist) USING lo, hi, part::oid LOOP
        IF k > prev + 1 THEN
            ranges := ranges || int8range(prev + 1, k - 1, '[]');
        END IF;
        prev := k;
    END LOOP;
    IF hi > prev THEN
        ranges := ranges || int8range(prev + 1, hi, '[]');
    END IF;
END $$;

-- Drop whole history partitions older than their table's keep (never a DELETE); see the README,
-- "Retention". Seals first; then, without any lock a writer waits for, locks each expired
-- partition (SHARE: it waits for the transactions that wrote there, and no new writer writes
-- there, its dates are older than keep); then per table takes the history table's ACCESS
-- EXCLUSIVE lock (waiting at most lock_timeout, 2 s when unset: a table it cannot lock is
-- skipped and pruned next time), seals again (the transactions that committed while it waited:
-- every entry dropped is sealed, the ledger keeps its hash), reads each expired partition's
-- entry count and id ranges (now final), detaches and drops it and records a retention event;
-- the closing seal covers the events. The locks of the tables pruned are held until the
-- transaction ends.
CREATE FUNCTION koherent.prune() RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    c record;
    p record;
    hist regclass;
    made integer;
    pr record;
    dropped jsonb := '[]';
    skipped jsonb := '[]';
    caller_wait text := current_setting('lock_timeout');
    wait text := CASE WHEN current_setting('lock_timeout') IN ('0', '0ms') THEN '2s'
                      ELSE current_setting('lock_timeout') END;
    ev koherent.retention_event;
    todo jsonb := '[]';
    t jsonb;
    x jsonb;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'koherent: prune() runs in a READ COMMITTED transaction, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Call it on its own (it holds the locks of the history tables it pruned until the transaction ends).';
    END IF;
    made := koherent.create_partitions();
    PERFORM koherent.seal();
    -- what to drop, and what each partition holds
    FOR c IN SELECT t.*, r.keep FROM koherent.retention r JOIN koherent.tracked_config t ON t.id = r.config_id
              WHERE r.keep IS NOT NULL ORDER BY t.id LOOP
        hist := to_regclass(format('koherent_history.%I', c.history_table));
        CONTINUE WHEN hist IS NULL;
        x := '[]';
        FOR p IN SELECT * FROM koherent._partitions(hist) y WHERE y.hi <= now() - c.keep ORDER BY y.hi LOOP
            BEGIN
                PERFORM set_config('lock_timeout', wait, true);
                EXECUTE format('LOCK TABLE %s IN SHARE MODE', p.part);
                x := x || jsonb_build_object('part', p.part::oid, 'name', (SELECT relname FROM pg_class WHERE oid = p.part),
                                             'lo', p.lo, 'hi', p.hi);
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                skipped := skipped || jsonb_build_object('table', format('%I.%I', c.schema_name, c.table_name),
                                                         'partition', p.part::text, 'reason', SQLERRM);
            END;
        END LOOP;
        IF x <> '[]' THEN
            todo := todo || jsonb_build_object('cfg', c.id, 'hist', hist::oid,
                                               'table', format('%I.%I', c.schema_name, c.table_name), 'parts', x);
        END IF;
    END LOOP;
    -- per table: its lock (a moment for its writers), then its partitions go
    FOR t IN SELECT * FROM jsonb_array_elements(todo) LOOP
        BEGIN
            PERFORM set_config('lock_timeout', wait, true);
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', (t->>'hist')::oid::regclass);
            -- (what committed while the locks were waited for: sealed before it is dropped)
            PERFORM koherent.seal();
            FOR x IN SELECT * FROM jsonb_array_elements(t->'parts') LOOP
                pr := koherent._pruned_ranges((t->>'hist')::oid::regclass, (x->>'part')::oid::regclass);
                EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', (t->>'hist')::oid::regclass, (x->>'part')::oid::regclass);
                EXECUTE format('DROP TABLE %s', (x->>'part')::oid::regclass);
                INSERT INTO koherent.retention_event (config_id, partition_name, range_from, range_to, entries,
                                                      id_ranges, dropped_at, dropped_by)
                VALUES ((t->>'cfg')::int, x->>'name', (x->>'lo')::timestamptz, (x->>'hi')::timestamptz,
                        pr.entries, pr.ranges, now(), current_user)
                RETURNING * INTO ev;
                dropped := dropped || jsonb_build_object('table', t->>'table', 'partition', ev.partition_name,
                                                         'from', ev.range_from, 'to', ev.range_to,
                                                         'entries', ev.entries, 'event', ev.id);
            END LOOP;
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            skipped := skipped || jsonb_build_object('table', t->>'table', 'reason', SQLERRM);
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', caller_wait, true);
    IF dropped <> '[]' THEN
        PERFORM koherent.seal();
    END IF;
    RETURN jsonb_build_object('dropped', dropped, 'skipped', skipped, 'partitions_made', made,
                              'entries_dropped', (SELECT coalesce(sum((d->>'entries')::bigint), 0)
                                                    FROM jsonb_array_elements(dropped) d));
END $$;
COMMENT ON FUNCTION koherent.prune() IS
  'Drop whole history partitions older than their table''s keep (koherent.set_retention), recording a retention event each (sealed into the ledger); returns what it dropped.';

-- Refuse what needs history that was pruned: a revert of contexts that began before the end
-- of a dropped partition (some of their entries may be gone).
CREATE FUNCTION koherent._pruned_check(ctx uuid[], what text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e record;
BEGIN
    SELECT r.range_to, format('%I.%I', c.schema_name, c.table_name) AS tbl INTO e
      FROM koherent.retention_event r JOIN koherent.tracked_config c ON c.id = r.config_id
     WHERE r.entries > 0
       AND r.range_to > (SELECT min(x.created_at) FROM koherent.transaction_auth_context x WHERE x.id = ANY (ctx))
     ORDER BY r.range_to DESC LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'koherent: cannot %: history of % before % was pruned, and this work began before that', what, e.tbl, e.range_to
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'reason: history_pruned',
                  HINT = 'koherent.retention_event lists what koherent.prune() dropped.';
    END IF;
END $$;

-- A retention event as the ledger seals it (a member of the block's schema, "pruned").
CREATE FUNCTION koherent._ledger_retention_record(e koherent.retention_event) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('id', e.id, 'config', e.config_id, 'partition', e.partition_name::text,
                              'from', CASE WHEN e.range_from IS NULL THEN NULL ELSE koherent._ledger_time(e.range_from) END,
                              'to', koherent._ledger_time(e.range_to), 'entries', e.entries,
                              'ids', coalesce((SELECT jsonb_agg(jsonb_build_array(lower(r), upper(r) - 1) ORDER BY lower(r))
                                                 FROM unnest(e.id_ranges) r), '[]'),
                              'dropped_at', koherent._ledger_time(e.dropped_at), 'dropped_by', e.dropped_by::text)
$$;
