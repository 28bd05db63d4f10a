"""koherent write-path benchmark: tracked time / untracked time, measured in the same run.

Run through bench/bench.sh (it builds and installs the extension and starts a cluster with
synchronous_commit = off). Prints one line per figure; ratios are tracked / untracked time,
or untracked tps / tracked tps for pgbench. The revert and as-of lines compare with a statement
of the same run too: revert_plan and revert_task with the UPDATE they undo, as_of with count(*)
of the table now.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg

HOST = os.environ.get("BENCH_HOST", "127.0.0.1")
PORT = os.environ.get("BENCH_PORT", "5497")
DB = os.environ.get("BENCH_DB", "bench")
ROWS = int(os.environ.get("BENCH_ROWS", "100000"))
REPS = int(os.environ.get("BENCH_REPS", "5"))
PGBENCH_SECONDS = int(os.environ.get("BENCH_PGBENCH_SECONDS", "8"))
# pgbench rounds: each runs every script of a comparison once, in alternating order; a ratio is
# the median of the rounds' own ratios (as the bulk lines pair their runs)
PGBENCH_ROUNDS = int(os.environ.get("BENCH_PGBENCH_ROUNDS", "4"))
TOKEN = os.environ["BENCH_TOKEN"]
# revert_and_as_of(): the task whose UPDATE is reverted, and the task that reverts it
REVERT_TOKEN = os.environ["BENCH_REVERT_TOKEN"]          # tsk revert-task
REVERTER_TOKEN = os.environ["BENCH_REVERTER_TOKEN"]      # tsk revert-by
REVERT_TASK = "revert-task"                               # BENCH_REVERT_TOKEN's task
REVERT_ROWS = int(os.environ.get("BENCH_REVERT_ROWS", str(ROWS)))
AS_OF_ROWS = int(os.environ.get("BENCH_AS_OF_ROWS", str(ROWS)))
AS_OF_CHANGED = int(os.environ.get("BENCH_AS_OF_CHANGED", "1000"))
ROW_AS_OF_ROWS = int(os.environ.get("BENCH_ROW_AS_OF_ROWS", "100000"))
ROW_AS_OF_UPDATES = int(os.environ.get("BENCH_ROW_AS_OF_UPDATES", "10"))
ROW_AS_OF_CALLS = int(os.environ.get("BENCH_ROW_AS_OF_CALLS", "200"))
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


def fresh(c, t, tracked, row_index=None):
    """A new table `t`; tracked: by plain track() (the default, with the row index since 0.7.0)
    or with row_index => true/false."""
    c.execute(f"DROP TABLE IF EXISTS {t}")
    c.execute(DDL.format(t=t))
    if tracked and row_index is None:
        c.execute(f"SELECT koherent.track('{t}')")
    elif tracked:
        c.execute(f"SELECT koherent.track('{t}', row_index => {row_index})")
    c.execute("CHECKPOINT")


# (table, tracked, row_index): untracked, tracked by default (with the row index since 0.7.0),
# tracked with row_index => false (write-mostly tables)
VARIANTS = [("plain", False, False), ("tracked", True, None), ("noindex", True, False)]


def bulk(c, variants=VARIANTS):
    res = {op: [[] for _ in variants] for op in ("insert", "update", "delete")}
    for rep in range(REPS):
        order = list(enumerate(variants))
        if rep % 2:
            order.reverse()
        for i, (t, tracked, row_index) in order:
            fresh(c, t, tracked, row_index)
            if t == "parted":
                c.execute("SELECT koherent.set_retention('parted', NULL, '1 month')")
            res["insert"][i].append(timed(c, f"INSERT INTO {t} SELECT g, 'name ' || g, g % 1000, g * 1.5, "
                                             f"'note', now() FROM generate_series(1, {ROWS}) g"))
            c.execute(f"VACUUM ANALYZE {t}")
            res["update"][i].append(timed(c, f"UPDATE {t} SET qty = qty + 1, updated = now()"))
            c.execute(f"VACUUM ANALYZE {t}")
            res["delete"][i].append(timed(c, f"DELETE FROM {t} WHERE id <= {ROWS // 2}"))
    return res


def print_bulk(r, label=""):
    for op, n in (("insert", ROWS), ("update", ROWS), ("delete", ROWS // 2)):
        p, t, ix = r[op]
        rt, lo, hi = paired(t, p)
        ri, ilo, ihi = paired(ix, p)
        med = statistics.median
        print(f"{op + label:<28} {n:>7} rows  untracked {med(p) * 1000:8.1f} ms  tracked {med(t) * 1000:8.1f} ms  "
              f"ratio {rt:5.2f} [{lo:4.2f}-{hi:4.2f}]  (row_index => false: {med(ix) * 1000:6.1f} ms, "
              f"ratio {ri:5.2f} [{ilo:4.2f}-{ihi:4.2f}])")


def print_partitioned(r):
    """Partitioned history (koherent.set_retention, monthly partitions): the writer routes each
    statement to its partition (ExecFindPartition) and writes it as before."""
    for op, n in (("insert", ROWS), ("update", ROWS), ("delete", ROWS // 2)):
        p, t = r[op]
        rt, lo, hi = paired(t, p)
        med = statistics.median
        print(f"{op + ' (partitioned)':<28} {n:>7} rows  untracked {med(p) * 1000:8.1f} ms  tracked {med(t) * 1000:8.1f} ms  "
              f"ratio {rt:5.2f} [{lo:4.2f}-{hi:4.2f}]")


def with_sealer(c, upd, task1):
    """The write path with the ledger sealing as it goes: the background sealer (bench.sh
    preloads koherent with koherent.seal_databases = the bench database, koherent.seal_interval
    = 0 until here) sealing every second, 60 times its default, while the bulk statements and
    pgbench run: the lines above without it, these with it, in the same run."""
    c.execute("ALTER SYSTEM SET koherent.seal_interval = 1")
    c.execute("SELECT pg_reload_conf()")
    for _ in range(60):  # (the sealer connects once the database exists: its restarts are 10 s apart)
        if c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'koherent sealer' "
                     "AND datname = current_database()").fetchone()[0]:
            break
        time.sleep(1)
    else:
        print("sealer: not running (koherent not preloaded?): no lines with the ledger sealing")
        return
    c.execute("SELECT koherent.seal()")
    before = c.execute("SELECT koherent.digest()").fetchone()[0]
    print_bulk(bulk(c), " (sealer 1 s)")
    for t, tracked in (("plain", False), ("tracked", True)):  # (as main() made them for pgbench)
        fresh(c, t, tracked)
        c.execute(f"INSERT INTO {t} SELECT g, 'name ' || g, g % 1000, g * 1.5, 'note', now() "
                  f"FROM generate_series(1, {ROWS}) g")
        c.execute(f"VACUUM ANALYZE {t}")
    runs = pgbench_rounds({"plain": upd.format(t="plain"), "tracked": upd.format(t="tracked"), "task1": task1})
    time.sleep(2)
    after = c.execute("SELECT koherent.digest()").fetchone()[0]
    # (off again: the lines after this one measure alone)
    c.execute("ALTER SYSTEM SET koherent.seal_interval = 0")
    c.execute("SELECT pg_reload_conf()")
    tps_line("single-row update (sealer 1 s)", runs["plain"], runs["tracked"])
    tps_line("set_task + update (sealer)", runs["plain"], runs["task1"], "  (1 round trip)")
    print(f"{'sealer while writing':<28} {after['block'] - before['block']:>7} seals  "
          f"{after['entries'] - before['entries']:>9} entries  {after['contexts'] - before['contexts']:>7} transactions")


def paired(tracked, plain):
    """Ratios of the runs measured side by side (same repetition): the machine's drift from
    one repetition to the next cancels out. Returns (median, min, max)."""
    r = [t / p for t, p in zip(tracked, plain)]
    return statistics.median(r), min(r), max(r)


def pgbench_rounds(scripts):
    """tps of each script (name -> script) in PGBENCH_ROUNDS rounds, the order reversed every
    other round, so that the machine's drift hits every script alike."""
    runs = {k: [] for k in scripts}
    for r in range(PGBENCH_ROUNDS):
        for k in (list(scripts) if r % 2 == 0 else list(scripts)[::-1]):
            runs[k].append(pgbench(scripts[k]))
    return runs


def tps_ratio(base, other):
    """(median tps of base, median tps of other, ratio base/other as the median of the rounds'
    own ratios, its min, its max)."""
    med = statistics.median
    r, lo, hi = paired(base, other)
    return med(base), med(other), r, lo, hi


def tps_line(label, base, other, note=""):
    p, t, r, lo, hi = tps_ratio(base, other)
    print(f"{label:<28} untracked {p:8.0f} tps  tracked {t:8.0f} tps  ratio {r:5.2f} [{lo:4.2f}-{hi:4.2f}]{note}")


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
        print_bulk(bulk(c))
        print_partitioned(bulk(c, [("plain", False, False), ("parted", True, None)]))
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
    runs = pgbench_rounds({"plain": upd.format(t="plain"), "tracked": upd.format(t="tracked"),
                           "task": task, "task1": task1, "proto": proto})
    tps_line("single-row update (pgbench)", runs["plain"], runs["tracked"])
    tps_line("set_task + single-row update", runs["plain"], runs["task"], "  (4 round trips)")
    tps_line("set_task + single-row update", runs["plain"], runs["task1"], "  (1 round trip)")
    p, pr, r, lo, hi = tps_ratio(runs["plain"], runs["proto"])
    share = paired(runs["proto"], runs["task"])[0]
    print(f"{'protocol alone (no koherent)':<28} untracked {p:8.0f} tps  4 trips  {pr:8.0f} tps  ratio {r:5.2f} [{lo:4.2f}-{hi:4.2f}]"
          f"  (BEGIN; SELECT 1; UPDATE plain; COMMIT; koherent's share of the 4-trip figure: {share:4.2f})")
    with conn() as c:
        fresh(c, "parted", True)
        c.execute("SELECT koherent.set_retention('parted', NULL, '1 month')")
        c.execute(f"INSERT INTO parted SELECT g, 'name ' || g, g % 1000, g * 1.5, 'note', now() "
                  f"FROM generate_series(1, {ROWS}) g")
        c.execute("VACUUM ANALYZE parted")
    runs = pgbench_rounds({"plain": upd.format(t="plain"), "parted": upd.format(t="parted")})
    tps_line("single-row (partitioned)", runs["plain"], runs["parted"], "  (history partitioned by month)")
    print(f"{'cold token verification':<28} {micros:8.1f} us")
    with conn() as c:
        with_sealer(c, upd, task1)
    lookups()
    with conn() as c:
        revert_and_as_of(c)
    ledger_db()


def ledger_db():
    # the ledger in a database of its own: seal and verify read all of a database's history
    with conn("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB}_ledger")
        c.execute(f"CREATE DATABASE {DB}_ledger")
    with conn(f"{DB}_ledger") as c:
        c.execute("CREATE EXTENSION koherent")
        ledger(c)


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


def history_of(c, t):
    return c.execute("SELECT format('koherent_history.%%I', history_table) FROM koherent.tracked_config "
                     "WHERE relid = %s::regclass AND dropped_at IS NULL", [t]).fetchone()[0]


def vacuum(c, t):
    """The table and its history (VACUUM summarizes the history's BRIN ranges, as autovacuum
    would)."""
    c.execute(f"VACUUM ANALYZE {t}")
    c.execute(f"VACUUM ANALYZE {history_of(c, t)}")


def moment(c):
    """A moment between two statements of this session: every earlier statement's history date
    is before it, every later one's after it (history dates are statement start times)."""
    time.sleep(0.01)
    at = c.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(0.01)
    return at


def ratio_line(label, n, base_name, base, name, times, goal):
    r, lo, hi = paired(times, base)
    med = statistics.median
    print(f"{label:<28} {n:>7} rows  {base_name:<13} {med(base) * 1000:8.1f} ms  {name:<11} {med(times) * 1000:8.1f} ms  "
          f"ratio {r:5.2f} [{lo:4.2f}-{hi:4.2f}]  (goal <= {goal})")


def revert_and_as_of(c):
    """revert_plan and revert_task of a task that updated every row (against that UPDATE), as_of
    of a table with few and with all rows changed since the moment (against count(*) of the
    table now), and one row_as_of among >= 1M history entries."""
    # (a) a task UPDATEs every row of a tracked table (default: with the row index); its plan, and its
    # revert in a transaction under another task, rolled back so that every repetition reverts
    # the same UPDATE. Each repetition measures the task's UPDATE again, rolled back too (the
    # first one is committed: the one the plan and the revert undo). Only the table is vacuumed
    # between the statements, not its history: VACUUM would free the rolled-back entries' space
    # in ranges it has summarized, and the next entries written there would pay BRIN updates that
    # an insert-only history never pays (measured: 3x the UPDATE's time).
    n = REVERT_ROWS
    fresh(c, "rv", True)
    c.execute(f"INSERT INTO rv SELECT g, 'name ' || g, g % 1000, g * 1.5, 'note', now() "
              f"FROM generate_series(1, {n}) g")
    vacuum(c, "rv")
    upd, plan, rev = [], [], []
    for rep in range(REPS):
        c.execute("BEGIN")
        c.execute("SELECT koherent.set_task(%s)", [REVERT_TOKEN])
        upd.append(timed(c, "UPDATE rv SET qty = qty + 1, updated = now()"))
        c.execute("COMMIT" if rep == 0 else "ROLLBACK")
        c.execute("VACUUM ANALYZE rv")
        if rep == 0:
            c.execute(f"ANALYZE {history_of(c, 'rv')}")
        q = f"SELECT count(*) FROM koherent.revert_plan('{REVERT_TASK}')"
        t = time.perf_counter()
        rows = c.execute(q).fetchone()[0]
        plan.append(time.perf_counter() - t)
        assert rows == n, (rows, n)
        c.execute("BEGIN")
        c.execute("SELECT koherent.set_task(%s)", [REVERTER_TOKEN])
        t = time.perf_counter()
        res = c.execute(f"SELECT koherent.revert_task('{REVERT_TASK}')").fetchone()[0]
        rev.append(time.perf_counter() - t)
        c.execute("ROLLBACK")
        assert res["updated"] == n and not res["conflicts"], res
        c.execute("VACUUM ANALYZE rv")
    ratio_line("revert_plan (count(*))", n, "task's UPDATE", upd, "revert_plan", plan, 1)
    ratio_line("revert_task (all rows)", n, "task's UPDATE", upd, "revert_task", rev, 3)

    # (b) as_of of a tracked table with AS_OF_CHANGED rows changed since the moment, then with
    # every row changed since (a later moment: each row once), against SELECT * FROM the table now
    # (both fetched whole by the client, as the issue states the goal)
    n = AS_OF_ROWS
    changed = min(AS_OF_CHANGED, n)
    fresh(c, "asof", True)
    c.execute(f"INSERT INTO asof SELECT g, 'name ' || g, g % 1000, g * 1.5, 'note', now() "
              f"FROM generate_series(1, {n}) g")
    vacuum(c, "asof")
    for label, where, goal in ((f"as_of, {changed} rows changed", f"WHERE id <= {changed}", 3),
                               ("as_of, every row changed", "", 10)):
        then = c.execute("SELECT count(*), sum(qty) FROM asof").fetchone()
        at = moment(c)
        c.execute(f"UPDATE asof SET qty = qty + 1, updated = now() {where}")
        vacuum(c, "asof")
        plain, asof = [], []
        q = "SELECT * FROM koherent.as_of(NULL::asof, %s)"
        got = c.execute("SELECT count(*), sum(qty) FROM koherent.as_of(NULL::asof, %s)", [at]).fetchone()
        assert got == then, (got, then)  # and warm
        for rep in range(REPS):
            for which in ((0, 1) if rep % 2 == 0 else (1, 0)):
                t = time.perf_counter()
                if which == 0:
                    c.execute("SELECT * FROM asof").fetchall()
                    plain.append(time.perf_counter() - t)
                else:
                    c.execute(q, [at]).fetchall()
                    asof.append(time.perf_counter() - t)
        ratio_line(label, n, "SELECT *", plain, "as_of", asof, goal)

    # (c) row_as_of: one row among the history of a table with the row index (the default),
    # built by bulk UPDATEs of every row; the moment is halfway, so the row is rolled back
    # through half of its entries
    n = ROW_AS_OF_ROWS
    fresh(c, "rowhist", True)
    c.execute(f"INSERT INTO rowhist SELECT g, 'name ' || g, g % 1000, g * 1.5, 'note', now() "
              f"FROM generate_series(1, {n}) g")
    c.execute("VACUUM rowhist")
    at = None
    for i in range(ROW_AS_OF_UPDATES):
        if i == ROW_AS_OF_UPDATES // 2:
            at = moment(c)
        c.execute("UPDATE rowhist SET qty = qty + 1, updated = now()")
        c.execute("VACUUM rowhist")
    at = at or moment(c)
    vacuum(c, "rowhist")
    entries = c.execute(f"SELECT count(*) FROM {history_of(c, 'rowhist')}").fetchone()[0]
    key = 70000 if n >= 70000 else max(1, n * 7 // 10)
    q = "SELECT koherent.row_as_of(NULL::rowhist, %s::jsonb, %s)"
    args = ['{"id": %d}' % key, at]
    qty = c.execute("SELECT (koherent.row_as_of(NULL::rowhist, %s::jsonb, %s)).qty", args).fetchone()[0]
    assert qty == key % 1000 + ROW_AS_OF_UPDATES // 2, (qty, key)
    times = []
    for _ in range(ROW_AS_OF_CALLS):
        t = time.perf_counter()
        c.execute(q, args).fetchall()
        times.append(time.perf_counter() - t)
    print(f"{'row_as_of of one row':<28} {statistics.median(times) * 1000:8.2f} ms  (median of {ROW_AS_OF_CALLS}, "
          f"{entries} entries of the table's history, {ROW_AS_OF_UPDATES - ROW_AS_OF_UPDATES // 2} of the row's "
          "after the moment; goal < 1 ms)")


def ledger(c):
    """Sealing and verifying throughput: entries per second of koherent.seal() over a table's
    fresh history (BENCH_LEDGER_ROWS inserted, then updated: twice as many entries), and of
    koherent.verify_history() over everything sealed in the database. The write path does not
    change with the ledger (entries are hashed when sealed)."""
    n = int(os.environ.get("BENCH_LEDGER_ROWS", "100000"))
    c.execute(DDL.format(t="led"))
    c.execute("SELECT koherent.track('led')")
    c.execute(f"INSERT INTO led SELECT g, 'name ' || g, g % 1000, g * 1.5, 'note', now() FROM generate_series(1, {n}) g")
    c.execute("UPDATE led SET qty = qty + 1, updated = now()")
    t = time.perf_counter()
    d = c.execute("SELECT koherent.seal()").fetchone()[0]
    sealing = time.perf_counter() - t
    assert d["sealed_entries"] == 2 * n, d
    t = time.perf_counter()
    problems = c.execute("SELECT count(*) FROM koherent.verify_history(%s)", [json.dumps([d])]).fetchone()[0]
    verifying = time.perf_counter() - t
    assert problems == 0, problems
    print(f"{'seal':<28} {2 * n:>7} entries  {sealing * 1000:8.1f} ms  {2 * n / sealing:10.0f} entries/s")
    print(f"{'verify_history':<28} {d['entries']:>7} entries  {verifying * 1000:8.1f} ms  "
          f"{d['entries'] / verifying:10.0f} entries/s")
    # the audit package of those writes (one transaction each: a time window), exported by the
    # CLI and verified offline
    cli = os.environ.get("KOHERENT_CLI", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "target/release/koherent"))
    since, until = c.execute("SELECT min(created_at)::text, (max(created_at) + interval '1 second')::text "
                             "FROM koherent.transaction_auth_context").fetchone()
    db = c.info.dbname
    with tempfile.TemporaryDirectory() as tmp:
        def three(args_of):
            """Three timed runs of the CLI (args_of(i): the i-th run's arguments): their times."""
            times = []
            for i in range(3):
                t = time.perf_counter()
                subprocess.run([cli, *args_of(i)], check=True, capture_output=True)
                times.append(time.perf_counter() - t)
            return times

        # medians of 3: one run is a second or two long, and a passing load on the machine moves
        # it by a quarter (verify: 1.05 s for 200k entries in one bench run, 0.81 s for the same on
        # the dev cluster, first run or fourth; export: by a fifth between bench runs)
        exports = three(lambda i: ["audit", "export", "--db", f"host={HOST} port={PORT} user=postgres dbname={db}",
                                   "--since", since, "--until", until, "--out", os.path.join(tmp, f"pkg{i}")])
        runs = three(lambda i: ["audit", "verify", os.path.join(tmp, "pkg0")])
        exporting, verifying = statistics.median(exports), statistics.median(runs)
    print(f"{'audit export':<28} {2 * n:>7} entries  {exporting * 1000:8.1f} ms  {2 * n / exporting:10.0f} entries/s"
          f"  (goal >= 100000; median of 3: {', '.join(f'{r * 1000:.0f}' for r in exports)} ms)")
    print(f"{'audit verify (offline)':<28} {2 * n:>7} entries  {verifying * 1000:8.1f} ms  "
          f"{2 * n / verifying:10.0f} entries/s  (goal >= 200000; median of 3: "
          f"{', '.join(f'{r * 1000:.0f}' for r in runs)} ms)")


def scale():
    """Scale mode (bench/bench.sh --scale): one tracked table grown to 2M and then 20M history
    entries (BENCH_SCALE_SIZES), 1M-row INSERT statements; at each size a task that changed 10
    rows and one that changed 10k (written at that size, so they are at the new end of history)
    and the lookups users ask: one row's history three ways, task_changes of both tasks, row_as_of,
    as_of of a 100k-row table of the same database (its cost is its own table's, not all
    history's) and the CLI's audit export of the 10k task. Times are medians."""
    sizes = [int(x) for x in os.environ.get("BENCH_SCALE_SIZES", "2000000,20000000").split(",")]
    tokens = json.loads(os.environ["BENCH_SCALE_TOKENS"])  # {"<size>-10": token, "<size>-10k": token}
    cli = os.environ.get("KOHERENT_CLI", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "target/release/koherent"))
    with conn("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB}_scale")
        c.execute(f"CREATE DATABASE {DB}_scale")
        c.execute(f"ALTER DATABASE {DB}_scale SET koherent.audience = 'koherent'")
    db = f"{DB}_scale"
    with conn(db) as c:
        # jsonb arrives as text: the figures are the server's and the wire's, not Python's JSON parser's
        c.adapters.register_loader("jsonb", psycopg.types.string.TextLoader)
        c.execute("CREATE EXTENSION koherent")
        c.execute("SELECT koherent.add_issuer_jwks('rekuest', %s::jsonb)", [JWKS])
        fresh(c, "scale", True)
        fresh(c, "side", True)
        c.execute("INSERT INTO side SELECT g, 'name ' || g, g % 1000, g * 1.5, 'note', now() "
                  "FROM generate_series(1, 100000) g")
        print(f"scale mode: table `scale` (6 columns, tracked by default: row index on), sizes {sizes}")
        c.execute("SELECT koherent.seal()")
        built, t_build = 0, 0.0
        for size in sizes:
            t = time.perf_counter()
            while built < size:
                step = min(1000000, size - built)
                c.execute(f"INSERT INTO scale SELECT g, 'name ' || g, g % 1000, g * 1.5, 'note', now() "
                          f"FROM generate_series({built + 1}, {built + step}) g")
                built += step
            c.execute("VACUUM ANALYZE scale")
            c.execute("VACUUM ANALYZE koherent_history.scale")
            t_build += time.perf_counter() - t
            tasks = {}
            for n, label in ((10, "10"), (10000, "10k")):
                first = built // 2
                c.execute("BEGIN")
                c.execute("SELECT koherent.set_task(%s)", [tokens[f"{size}-{label}"]])
                c.execute(f"UPDATE scale SET qty = qty + 1 WHERE id > {first} AND id <= {first + n}")
                c.execute("COMMIT")
                tasks[label] = f"scale-{size}-{label}"  # the token's task (bench.sh mints them)
            c.execute("UPDATE side SET qty = qty + 1 WHERE id <= 1000")
            at = moment(c)
            c.execute("UPDATE side SET qty = qty + 1 WHERE id > 99000")
            c.execute("ANALYZE")
            entries = c.execute("SELECT count(*) FROM koherent_history.scale").fetchone()[0]
            disk = c.execute("SELECT pg_size_pretty(pg_total_relation_size('koherent_history.scale')), "
                             "pg_size_pretty(pg_database_size(current_database()))").fetchone()
            brin = c.execute("SELECT string_agg(pg_size_pretty(pg_relation_size(i.indexrelid)), ', ') FROM pg_index i "
                             "JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_am a ON a.oid = x.relam "
                             "WHERE i.indrelid = 'koherent_history.scale'::regclass AND a.amname = 'brin'").fetchone()[0]
            print(f"{entries} entries of `scale`: built in {t_build:.0f} s so far; history table {disk[0]} "
                  f"(with its indexes; BRIN {brin}), database {disk[1]}")
            key = built // 2 + 5   # a row the 10-change task updated: two entries
            queries = [
                ("row history, typed table", f"SELECT * FROM koherent_history.scale WHERE id = {key}"),
                ("row history, provenance_entry", "SELECT * FROM koherent.provenance_entry WHERE table_name = "
                 f"'scale'::regclass AND row_key = '{{\"id\": {key}}}'"),
                ("row_as_of", f"SELECT koherent.row_as_of(NULL::scale, '{{\"id\": {key}}}', %(at)s)"),
                ("task_changes, 10 changes", f"SELECT * FROM koherent.task_changes('{tasks['10']}')"),
                ("task_changes, 10k changes", f"SELECT * FROM koherent.task_changes('{tasks['10k']}')"),
                ("as_of, 100k-row table", "SELECT * FROM koherent.as_of(NULL::side, %(at)s)"),
            ]
            def measure(label, q):
                c.execute(q, {"at": at}).fetchall()  # warm (and task_changes summarizes BRIN ranges)
                times, rows = [], 0
                for _ in range(20):
                    t = time.perf_counter()
                    rows = len(c.execute(q, {"at": at}).fetchall())
                    times.append(time.perf_counter() - t)
                print(f"  {label:<38} {statistics.median(times) * 1000:9.2f} ms  ({rows} rows, median of 20)")

            for label, q in queries:
                measure(label + (" (not sealed)" if label.startswith("task_changes") else ""), q)
            # the background sealer's job (here one seal() of everything written since the last):
            # sealed tasks are read by the ledger's id ranges, and the export needs them sealed
            t = time.perf_counter()
            d = json.loads(c.execute("SELECT koherent.seal()").fetchone()[0])
            print(f"  {'seal() of what is new':<38} {(time.perf_counter() - t) * 1000:9.0f} ms  "
                  f"({d['sealed_entries']} entries)")
            for label, q in queries[3:5]:
                measure(label + " (sealed)", q)
            # the same on the server alone: the function's rows made and counted, none sent
            measure("task_changes, 10k (sealed, count(*))",
                    f"SELECT count(*) FROM koherent.task_changes('{tasks['10k']}')")
            # what any reader pays to receive those rows: the same 10k rows, fetched the same way
            # from a table (the values' output functions, the wire, psycopg), the floor of the
            # fetched figures above
            c.execute(f"CREATE TEMP TABLE fetched AS SELECT * FROM koherent.task_changes('{tasks['10k']}')")
            measure("the same 10k rows from a plain table", "SELECT * FROM fetched ORDER BY history_id")
            c.execute("DROP TABLE fetched")
            with tempfile.TemporaryDirectory() as tmp:
                times = []
                for i in range(3):
                    t = time.perf_counter()
                    r = subprocess.run([cli, "audit", "export", "--db", f"host={HOST} port={PORT} user=postgres dbname={db}",
                                        "--task", tasks["10k"], "--out", os.path.join(tmp, f"pkg{i}")],
                                       capture_output=True, text=True)
                    assert r.returncode == 0, r.stderr
                    times.append(time.perf_counter() - t)
            print(f"  {'audit export, 10k task (CLI)':<38} {statistics.median(times) * 1000:9.2f} ms  (median of 3)")
            print("  EXPLAIN provenance_entry row lookup:")
            for (line,) in c.execute("EXPLAIN (COSTS OFF) " + queries[1][1]):
                print("     ", line)
            ctx = c.execute("SELECT array_agg(id) FROM koherent.transaction_auth_context WHERE task_id = %s",
                            [tasks["10"]]).fetchone()[0]
            lo, hi = c.execute("SELECT lo, hi FROM koherent._sealed_ranges(%s)", [ctx]).fetchone()
            print("  EXPLAIN (ANALYZE) task_changes of the sealed 10-change task, its branch:")
            for (line,) in c.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT * FROM koherent_history.scale h "
                                     "WHERE (h.history_context = ANY (%s)) IS TRUE AND h.history_id BETWEEN %s AND %s",
                                     [ctx, lo, hi]):
                print("     ", line)
    with conn("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB}_scale")


if __name__ == "__main__":
    if sys.argv[1:] == ["--scale"]:
        sys.exit(scale())
    if sys.argv[1:] == ["--ledger"]:
        sys.exit(ledger_db())
    sys.exit(main())
