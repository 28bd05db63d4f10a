"""koherent write-path benchmark: tracked time / untracked time, measured in the same run.

Run through bench/bench.sh (it builds and installs the extension and starts a cluster with
synchronous_commit = off). Prints one line per figure; ratios are tracked / untracked time,
or untracked tps / tracked tps for pgbench.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg

HOST = os.environ.get("BENCH_HOST", "127.0.0.1")
PORT = os.environ.get("BENCH_PORT", "5497")
DB = "bench"
ROWS = int(os.environ.get("BENCH_ROWS", "100000"))
REPS = int(os.environ.get("BENCH_REPS", "5"))
PGBENCH_SECONDS = int(os.environ.get("BENCH_PGBENCH_SECONDS", "15"))
TOKEN = os.environ["BENCH_TOKEN"]
JWKS = os.environ["BENCH_JWKS"]

DDL = """
CREATE TABLE {t} (
    id bigint PRIMARY KEY,
    name text,
    qty integer,
    price numeric,
    note text,
    updated timestamptz
)"""


def conn(db=DB):
    return psycopg.connect(host=HOST, port=PORT, dbname=db, user="postgres", autocommit=True)


def timed(c, sql):
    t = time.perf_counter()
    c.execute(sql)
    return time.perf_counter() - t


def fresh(c, t, tracked, row_index=False):
    c.execute(f"DROP TABLE IF EXISTS {t}")
    c.execute(DDL.format(t=t))
    if tracked:
        c.execute(f"SELECT koherent.track('{t}', row_index => {row_index})")
    c.execute("CHECKPOINT")


# (table, tracked, row_index): untracked, tracked (default: no row index), tracked with the row
# index (what expose() or track(..., row_index => true) add)
VARIANTS = [("plain", False, False), ("tracked", True, False), ("indexed", True, True)]


def bulk(c):
    res = {op: [[] for _ in VARIANTS] for op in ("insert", "update", "delete")}
    for rep in range(REPS):
        order = list(enumerate(VARIANTS))
        if rep % 2:
            order.reverse()
        for i, (t, tracked, row_index) in order:
            fresh(c, t, tracked, row_index)
            res["insert"][i].append(timed(c, f"INSERT INTO {t} SELECT g, 'name ' || g, g % 1000, g * 1.5, "
                                             f"'note', now() FROM generate_series(1, {ROWS}) g"))
            c.execute(f"VACUUM ANALYZE {t}")
            res["update"][i].append(timed(c, f"UPDATE {t} SET qty = qty + 1, updated = now()"))
            c.execute(f"VACUUM ANALYZE {t}")
            res["delete"][i].append(timed(c, f"DELETE FROM {t} WHERE id <= {ROWS // 2}"))
    return res


def paired(tracked, plain):
    """Ratios of the runs measured side by side (same repetition): the machine's drift from
    one repetition to the next cancels out. Returns (median, min, max)."""
    r = [t / p for t, p in zip(tracked, plain)]
    return statistics.median(r), min(r), max(r)


def pgbench(script, seconds=PGBENCH_SECONDS):
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    out = subprocess.run(
        ["pgbench", "-n", "-h", HOST, "-p", PORT, "-U", "postgres", "-c", "2", "-j", "2",
         "-T", str(seconds), "-f", f.name, DB],
        capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(f.name)
    for line in out.splitlines():
        if line.startswith("tps ="):
            return float(line.split()[2])
    raise RuntimeError(out)


def main():
    with conn("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB}")
        c.execute(f"CREATE DATABASE {DB}")
        c.execute(f"ALTER DATABASE {DB} SET koherent.audience = 'koherent'")
    with conn() as c:
        c.execute("CREATE EXTENSION koherent")
        c.execute("SELECT koherent.add_issuer_jwks('rekuest', %s::jsonb)", [JWKS])
    with conn() as c:
        print(f"koherent benchmark: {ROWS} rows, {REPS} runs (times: medians; ratios: median of the "
              "runs' own ratios, range in brackets), 6-column table, synchronous_commit=off")
        r = bulk(c)
        for op, n in (("insert", ROWS), ("update", ROWS), ("delete", ROWS // 2)):
            p, t, ix = r[op]
            rt, lo, hi = paired(t, p)
            ri, ilo, ihi = paired(ix, p)
            med = statistics.median
            print(f"{op:<28} {n:>7} rows  untracked {med(p) * 1000:8.1f} ms  tracked {med(t) * 1000:8.1f} ms  "
                  f"ratio {rt:5.2f} [{lo:4.2f}-{hi:4.2f}]  (with the row index: {med(ix) * 1000:6.1f} ms, "
                  f"ratio {ri:5.2f} [{ilo:4.2f}-{ihi:4.2f}])")
        for t, tracked in (("plain", False), ("tracked", True)):
            fresh(c, t, tracked)
            c.execute(f"INSERT INTO {t} SELECT g, 'name ' || g, g % 1000, g * 1.5, 'note', now() "
                      f"FROM generate_series(1, {ROWS}) g")
            c.execute(f"VACUUM ANALYZE {t}")
        # the benchmark's own helper: the library exports it, CREATE EXTENSION does not install it
        c.execute("CREATE OR REPLACE FUNCTION public.bench_cold_verify_micros(text, integer) RETURNS float8 "
                  "LANGUAGE c STRICT AS 'koherent', '_cold_verify_micros_wrapper'")
        micros = c.execute("SELECT public.bench_cold_verify_micros(%s, 2000)", [TOKEN]).fetchone()[0]

    upd = "\\set id random(1, %d)\nUPDATE {t} SET qty = qty + 1 WHERE id = :id;\n" % ROWS
    # The same transaction as a client sends it statement by statement (4 round trips) and as
    # one simple-protocol message (1 round trip, like the untracked baseline).
    task = ("\\set id random(1, %d)\nBEGIN;\nSELECT koherent.set_task('%s');\n"
            "UPDATE tracked SET qty = qty + 1 WHERE id = :id;\nCOMMIT;\n" % (ROWS, TOKEN))
    task1 = ("\\set id random(1, %d)\nBEGIN\\; SELECT koherent.set_task('%s')\\; "
             "UPDATE tracked SET qty = qty + 1 WHERE id = :id\\; COMMIT;\n" % (ROWS, TOKEN))
    # The protocol's own cost: the untracked UPDATE in the same 4 round trips, nothing of koherent.
    proto = ("\\set id random(1, %d)\nBEGIN;\nSELECT 1;\n"
             "UPDATE plain SET qty = qty + 1 WHERE id = :id;\nCOMMIT;\n" % ROWS)
    pgbench(upd.format(t="plain"), 3)  # warm up
    runs = {"plain": [], "tracked": [], "task": [], "task1": [], "proto": []}
    for _ in range(2):  # interleaved, so that drift of the machine hits every figure alike
        runs["plain"].append(pgbench(upd.format(t="plain")))
        runs["tracked"].append(pgbench(upd.format(t="tracked")))
        runs["task"].append(pgbench(task))
        runs["task1"].append(pgbench(task1))
        runs["proto"].append(pgbench(proto))
    p, t, w, w1, pr = (statistics.mean(runs[k]) for k in ("plain", "tracked", "task", "task1", "proto"))
    print(f"{'single-row update (pgbench)':<28} untracked {p:8.0f} tps  tracked {t:8.0f} tps  ratio {p / t:5.2f}")
    print(f"{'set_task + single-row update':<28} untracked {p:8.0f} tps  tracked {w:8.0f} tps  ratio {p / w:5.2f}"
          "  (4 round trips)")
    print(f"{'set_task + single-row update':<28} untracked {p:8.0f} tps  tracked {w1:8.0f} tps  ratio {p / w1:5.2f}"
          "  (1 round trip)")
    print(f"{'protocol alone (no koherent)':<28} untracked {p:8.0f} tps  4 trips  {pr:8.0f} tps  ratio {p / pr:5.2f}"
          f"  (BEGIN; SELECT 1; UPDATE plain; COMMIT; koherent's share of the 4-trip figure: {pr / w:4.2f})")
    print(f"{'cold token verification':<28} {micros:8.1f} us")
    lookups()


def lookups():
    """Provenance of one row and task_changes of one task among >= 1M history entries."""
    n = int(os.environ.get("BENCH_LOOKUP_ROWS", "1000000"))
    with conn() as c:
        fresh(c, "big", True)
        c.execute("SELECT koherent.expose('big')")
        c.execute(f"INSERT INTO big SELECT g, 'n', 0, 1, 'x', now() FROM generate_series(1, {n}) g")
        c.execute("BEGIN")
        c.execute("SELECT koherent.set_task(%s)", [os.environ["BENCH_LOOKUP_TOKEN"]])
        c.execute("UPDATE big SET qty = 1 WHERE id BETWEEN 4242 AND 4251")
        c.execute("COMMIT")
        c.execute("ANALYZE")
        entries = c.execute("SELECT count(*) FROM koherent.provenance_entry").fetchone()[0]
        row = "SELECT * FROM big_provenance((SELECT b FROM big b WHERE id = 777777))"
        task = "SELECT * FROM koherent.task_changes('lookup-task')"
        for label, q in (("row provenance lookup", row), ("task_changes of one task", task)):
            c.execute(q)
            times = []
            for _ in range(50):
                t = time.perf_counter()
                c.execute(q).fetchall()
                times.append(time.perf_counter() - t)
            print(f"{label:<28} {statistics.median(times) * 1000:8.2f} ms  (median of 50, {entries} entries)")
        print("EXPLAIN of the row lookup inside big_provenance():")
        for (line,) in c.execute("EXPLAIN (COSTS OFF) SELECT * FROM koherent_history.big h "
                                 "LEFT JOIN koherent.transaction_auth_context c ON c.id = h.history_context "
                                 "WHERE h.id = 777777 ORDER BY h.history_id"):
            print("   ", line)
        print("EXPLAIN of task_changes('lookup-task'), one history table's branch:")
        ctx = c.execute("SELECT array_agg(id)::text FROM koherent.transaction_auth_context "
                        "WHERE task_id = 'lookup-task'").fetchone()[0]
        for (line,) in c.execute("EXPLAIN (COSTS OFF) SELECT * FROM koherent_history.big h "
                                 f"WHERE h.history_context = ANY ('{ctx}'::uuid[])"):
            print("   ", line)


if __name__ == "__main__":
    sys.exit(main())
