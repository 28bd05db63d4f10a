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
