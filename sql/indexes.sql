-- koherent: the indexes of a history table: BRIN lookups (history_id, history_context,
-- history_date) and the optional row index.

-- A history table's lookup index besides the row btree: one BRIN index over history_id
-- (min-max), history_context (bloom: task_changes, revert) and history_date (min-max: the entries
-- after a moment, for as_of; dates grow with the history id, a statement's date being its
-- start, so its ranges stay narrow). Nothing to maintain per row while a block range fills;
-- one index, not two, for each statement to open (the single-row write path). Ranges are
-- summarized by VACUUM and by the readers that use the index, never by the writer (why:
-- src/brin.rs).
CREATE FUNCTION koherent._create_lookup_indexes(hist regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE format('CREATE INDEX ON %s USING brin '
                       '(history_id, history_context uuid_bloom_ops (n_distinct_per_range = 1000), history_date) '
                       'WITH (pages_per_range = 8, autosummarize = on)', hist);
    ELSE  -- no bloom opclass before 14
        EXECUTE format('CREATE INDEX ON %s USING brin (history_id, history_date) '
                       'WITH (pages_per_range = 8, autosummarize = on)', hist);
        EXECUTE format('CREATE INDEX ON %s (history_context)', hist);
    END IF;
END $$;

-- A history table's range index: BRIN min-max on (history_id, history_date), 128 pages per
-- range, beside the lookup index. Its summaries are a few bytes each (the lookup index's carry a
-- bloom filter of contexts), so reading all of them costs little even among 20M entries: the
-- readers by task look sealed contexts up through it by the history id ranges the ledger
-- lists (koherent._sealed_ranges), which makes task_changes cost what it returns.
CREATE FUNCTION koherent._range_index(hist regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.indexrelid::regclass
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
     WHERE i.indrelid = hist AND a.amname = 'brin' AND c.reloptions @> '{pages_per_range=128}'
     LIMIT 1
$$;

-- Whether a history table has its lookup index (a BRIN index other than the range index).
CREATE FUNCTION koherent._has_lookup_index(hist regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                     JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = hist AND a.amname = 'brin'
                      AND i.indexrelid IS DISTINCT FROM koherent._range_index(hist))
$$;

-- Whether everything dated at or after `since` (what a lookup of unsealed contexts that began
-- then must read) lies in the last part of a history table: the last 1/128 of its blocks.
-- Reading that tail through the range index (`history_date >= since`; 128 pages per summary, the
-- last range, being filled, never summarized: up to 128 more) then costs less than reading every
-- summary of the lookup index (8 pages per summary, each with a bloom filter of contexts: at 20M
-- entries 48k summaries, 30 ms), which a lookup by context reads whatever it finds. Measured: a
-- block of the tail read and tested about 8 us, a bloom summary 0.6 us. A guess from the newest
-- of the first entries of a few blocks at the start of that tail (TIDs, no scan): both ways find
-- the same entries, a wrong guess costs time only. False for tables under 16384 blocks (128 MB:
-- their lookup index is read in about a millisecond, no more than the range index's last range),
-- for partitioned history (its partitions are pruned by date) and before PostgreSQL 14 (the
-- lookup index is then a btree on history_context).
CREATE FUNCTION koherent._recent_history(hist regclass, since timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- (the TIDs are looked up, whatever the session's planner settings: never a scan of history)
SET enable_tidscan = on SET enable_seqscan = off AS $$
DECLARE
    nblocks bigint;
    tail bigint;
    newest timestamptz;
BEGIN
    IF since IS NULL OR since = '-infinity' OR current_setting('server_version_num')::int < 140000
       OR NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = hist AND c.relkind = 'r'
                         AND c.relnamespace = 'koherent_history'::regnamespace) THEN
        RETURN false;
    END IF;
    nblocks := pg_relation_size(hist) / current_setting('block_size')::int;
    IF nblocks < 16384 THEN
        RETURN false;
    END IF;
    tail := nblocks / 128;
    EXECUTE format('SELECT max(h.history_date) FROM %s h WHERE h.ctid = ANY ($1)', hist) INTO newest
      USING ARRAY(SELECT format('(%s,%s)', b, k)::tid
                    FROM generate_series(nblocks - tail, nblocks - tail + 3) b, generate_series(1, 8) k);
    RETURN coalesce(newest < since, false);
END $$;

-- A BRIN index built on an empty table gives its first block range a summary (all nulls), so
-- every entry written into the first 8 (lookup index) or 128 (range index) pages of a new
-- history table or partition would update a summary, which no later range pays while it fills
-- (the writer skips unsummarized ranges: src/insert/index.rs). Measured: about 13 ms of a new
-- table's first 100k-row INSERT (403 -> 390 ms of backend CPU, medians of 9), a twentieth of
-- what history costs it. Removing that summary leaves the first range like every other, until
-- a reader by task or VACUUM summarizes it once it is complete. Only for an empty plain table
-- (a new history table, a partition just made), and only for indexes the caller owns
-- (brin_desummarize_range's rule); otherwise nothing happens.
CREATE FUNCTION koherent._unsummarize_empty(hist regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix regclass;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = hist) IS DISTINCT FROM 'r'
       OR pg_relation_size(hist) <> 0 THEN
        RETURN;
    END IF;
    FOR ix IN SELECT i.indexrelid::regclass
                FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
               WHERE i.indrelid = hist AND a.amname = 'brin' AND pg_has_role(c.relowner, 'USAGE')
               ORDER BY i.indexrelid LOOP
        PERFORM brin_desummarize_range(ix, 0);
    END LOOP;
END $$;

CREATE FUNCTION koherent._create_range_index(hist regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF koherent._range_index(hist) IS NULL THEN
        EXECUTE format('CREATE INDEX ON %s USING brin (history_id, history_date) '
                       'WITH (pages_per_range = 128, autosummarize = on)', hist);
    END IF;
END $$;

-- 0.6.0's upgrade: a lookup index of an earlier release (without history_date) built again with
-- it (the new index first, then the old one dropped).
CREATE FUNCTION koherent._add_date_to_lookup_index(hist regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old regclass;
BEGIN
    SELECT i.indexrelid::regclass INTO old
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
     WHERE i.indrelid = hist AND a.amname = 'brin'
       AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey) k JOIN pg_attribute t ON t.attrelid = hist AND t.attnum = k
                        WHERE t.attname = 'history_date')
     LIMIT 1;
    IF old IS NULL THEN
        RETURN;
    END IF;
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE format('CREATE INDEX ON %s USING brin '
                       '(history_id, history_context uuid_bloom_ops (n_distinct_per_range = 1000), history_date) '
                       'WITH (pages_per_range = 8, autosummarize = on)', hist);
    ELSE
        EXECUTE format('CREATE INDEX ON %s USING brin (history_id, history_date) '
                       'WITH (pages_per_range = 8, autosummarize = on)', hist);
    END IF;
    EXECUTE format('DROP INDEX %s', old);
END $$;

-- A history table's row index: the btree (primary key..., history_id), or null.
CREATE FUNCTION koherent._row_index(hist regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.indexrelid::regclass
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
     WHERE i.indrelid = hist AND a.amname = 'btree' AND i.indnatts >= 2 AND i.indpred IS NULL
       AND i.indkey[i.indnatts - 1] = (SELECT attnum FROM pg_attribute
                                        WHERE attrelid = hist AND attname = 'history_id')
     LIMIT 1
$$;

-- Which entries are UPDATEs that changed the row's key (from its "old:" key to another):
-- the predicate of the key-change index, and the same words in the readers' life check
-- (koherent._current_life), so that the planner proves the index usable. `alias`: '' or 'd.'.
CREATE FUNCTION koherent._key_change_predicate(pk name[], alias text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('%1$shistory_kind = ''UPDATE'' AND ROW(%2$s) IS DISTINCT FROM ROW(%3$s)', alias,
                  (SELECT string_agg(alias || format('%I', 'old:' || k), ', ') FROM unnest(pk) k),
                  (SELECT string_agg(alias || format('%I', k), ', ') FROM unnest(pk) k))
$$;

-- A history table's key-change index: a partial btree ("old:" key..., history_id) over the
-- UPDATEs that changed the key, or null. It comes and goes with the row index.
CREATE FUNCTION koherent._key_change_index(hist regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.indexrelid::regclass
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
     WHERE i.indrelid = hist AND a.amname = 'btree' AND i.indnatts >= 2 AND i.indpred IS NOT NULL
       AND i.indkey[i.indnatts - 1] = (SELECT attnum FROM pg_attribute
                                        WHERE attrelid = hist AND attname = 'history_id')
       AND (SELECT attname FROM pg_attribute WHERE attrelid = hist AND attnum = i.indkey[0]) LIKE 'old:%'
     LIMIT 1
$$;

-- The row index: a btree on (primary key, history_id) of a history table. It makes one row's
-- provenance an index lookup, and it is the largest part of what history costs a bulk write
-- (every entry is one more btree descent). expose() creates it; track(..., row_index) sets it.
-- With it comes the key-change index, which finds the UPDATEs that moved a row to another key
-- (a row's history ends there): small (only key-changing UPDATEs enter it), and evaluated per
-- entry by the writer (src/insert/index.rs), without a descent for the others.
CREATE FUNCTION koherent._create_row_index(hist regclass, pk name[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF koherent._row_index(hist) IS NULL THEN
        EXECUTE format('CREATE INDEX ON %s (%s, history_id)', hist,
                       (SELECT string_agg(format('%I', k), ', ') FROM unnest(pk) k));
    END IF;
    IF koherent._key_change_index(hist) IS NULL THEN
        EXECUTE format('CREATE INDEX ON %s (%s, history_id) WHERE %s', hist,
                       (SELECT string_agg(format('%I', 'old:' || k), ', ') FROM unnest(pk) k),
                       koherent._key_change_predicate(pk, ''));
    END IF;
END $$;
