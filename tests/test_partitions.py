"""Partitioned tables, tracked through the parent: partitions created after track(), writes into
a partition directly, rows moved across partitions, TRUNCATE, a partition whose columns sit in
another order than its parent's, NULLs."""


def test_partitioned_table(db):
    db.sql("""
        CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
        CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
        CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
    """)
    db.sql("SELECT koherent.track('m')")
    db.sql("CREATE TABLE m_asia PARTITION OF m FOR VALUES IN ('asia')")  # created after track
    db.sql("INSERT INTO m VALUES (1, 'eu', 1), (2, 'us', 2), (3, 'asia', 3)")
    db.sql("INSERT INTO m_eu VALUES (4, 'eu', 4)")  # directly into a partition
    db.sql("UPDATE m SET v = v * 10")
    db.sql("UPDATE m SET region = 'us' WHERE id = 1")  # moves across partitions
    db.sql("DELETE FROM m_us WHERE id = 2")
    db.sql("TRUNCATE m")
    rows = db.sql("SELECT kind, row_key, (row_data->>'v')::int FROM koherent.provenance_entry ORDER BY history_id")
    kinds = [r[0] for r in rows]
    assert kinds.count("CREATE") == 4 and kinds.count("UPDATE") == 5
    assert ("UPDATE", {"id": 1, "region": "us"}, 10) in rows
    assert ("DELETE", {"id": 2, "region": "us"}, 20) in rows
    assert sorted(r[1]["id"] for r in rows if r[0] == "TRUNCATE") == [1, 3, 4]
    assert len(rows) == 13


def test_nulls_and_partition_with_other_column_order(db):
    db.sql("CREATE TABLE m (id int, k text, v numeric, PRIMARY KEY (id, k)) PARTITION BY LIST (k)")
    db.sql("CREATE TABLE m_a PARTITION OF m FOR VALUES IN ('a')")
    # a partition whose columns sit in another order (and one dropped column) than its parent's
    db.sql("CREATE TABLE m_b (v numeric, junk int, k text NOT NULL, id int NOT NULL)")
    db.sql("ALTER TABLE m_b DROP COLUMN junk")
    db.sql("ALTER TABLE m ATTACH PARTITION m_b FOR VALUES IN ('b')")
    db.sql("SELECT koherent.track('m')")
    db.sql("INSERT INTO m VALUES (1, 'a', NULL), (2, 'b', 2.5)")
    db.sql("UPDATE m SET v = NULL WHERE id = 2")
    db.sql("UPDATE m_b SET v = 7 WHERE id = 2")  # the partition written directly
    db.sql("UPDATE m SET v = v")  # no change at all
    assert db.sql("SELECT history_kind, id, k, v, \"old:v\" FROM koherent_history.m ORDER BY history_id") == [
        ("CREATE", 1, "a", None, None), ("CREATE", 2, "b", 2.5, None),
        ("UPDATE", 2, "b", None, 2.5), ("UPDATE", 2, "b", 7, None)]


def test_a_writable_with_query_moving_rows_between_partitions_is_recorded(db):
    """A data-modifying WITH query that its main query does not read runs to completion while
    the statement finishes: the partition guard knows which statement moves its rows then (not
    a MERGE), so the move is recorded, under a main INSERT, DELETE or SELECT alike."""
    db.sql("CREATE TABLE pq (id int, r text, v int, PRIMARY KEY (id, r)) PARTITION BY LIST (r)")
    db.sql("CREATE TABLE pq_a PARTITION OF pq FOR VALUES IN ('a')")
    db.sql("CREATE TABLE pq_b PARTITION OF pq FOR VALUES IN ('b')")
    db.sql("SELECT koherent.track('pq')")
    db.sql("INSERT INTO pq VALUES (1, 'a', 1), (3, 'a', 3), (5, 'a', 5)")
    with db.conn() as c:
        c.execute("SELECT koherent.current_context_id()")   # koherent is loaded in this session
        c.execute("WITH u AS (UPDATE pq SET r = 'b' WHERE id = 1 RETURNING *) INSERT INTO pq VALUES (2, 'a', 2)")
        c.execute("WITH u AS (UPDATE pq SET r = 'b' WHERE id = 3 RETURNING *) DELETE FROM pq WHERE id = 5")
        c.execute("WITH u AS (UPDATE pq SET r = 'a' WHERE id = 1 RETURNING *) SELECT 1")
    assert db.sql("SELECT id, r, v FROM pq ORDER BY id") == [(1, "a", 1), (2, "a", 2), (3, "b", 3)]
    got = db.sql("SELECT kind, (row_key->>'id')::int, row_key->>'r' FROM koherent.provenance_entry "
                 "ORDER BY history_id OFFSET 3")   # (after the first INSERT's three)
    assert sorted(got) == sorted([("UPDATE", 1, "b"), ("CREATE", 2, "a"), ("UPDATE", 3, "b"), ("DELETE", 5, "a"),
                                  ("UPDATE", 1, "a")]), got
