"""Audit packages: `koherent audit export` of a task (and its subtasks) or a time window, verified
offline by `koherent audit verify` (no database), and every kind of edit to a package (a value
changed, a line dropped, added or moved, a token swapped, another issuer key) reported with the
file and line it is in."""

import base64
import hashlib
import json
import os
import subprocess

import psycopg
import pytest
from joserfc.jwk import OKPKey

from conftest import APP_ROLE, HOST, PORT, ROOT, TEST_PUBLIC_JWK, mint, write

CLI = os.environ.get("KOHERENT_CLI", os.path.join(ROOT, "target/release/koherent"))
FILES = ["tasks.jsonl", "contexts.jsonl", "entries.jsonl", "schema.jsonl", "keys.json", "ledger.jsonl", "graph.json"]


def cli(*args, user="postgres"):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)


def url(db, user="postgres"):
    return f"host={HOST} port={PORT} user={user} dbname={db.name}"


def export(db, out, *sel, user="postgres"):
    r = cli("audit", "export", "--db", url(db, user), *sel, "--out", out)
    return r


def verify(pkg, *extra):
    return cli("audit", "verify", pkg, *extra)


def read_lines(pkg, name):
    return [json.loads(l) for l in open(os.path.join(pkg, name))]


@pytest.fixture
def audited(item):
    """task-1 (two transactions) with its subtask task-1.1, task-2, one unattributed write, all
    sealed (two blocks)."""
    db = item
    write(db, ["INSERT INTO item (id, name, qty, price) VALUES (1, 'a', 1, 1.50), (2, 'b', 2, 2.5)",
               "UPDATE item SET qty = 10, note = 'x' WHERE id = 1"], mint("task-1"))
    db.first = db.one("SELECT koherent.seal()")
    write(db, "INSERT INTO item (id, name, qty) VALUES (3, 'c', 3)", mint("task-1.1", ptk="task-1", rtk="task-1"))
    write(db, "UPDATE item SET qty = 11 WHERE id = 1", mint("task-1"))
    write(db, "DELETE FROM item WHERE id = 2", mint("task-2"))
    write(db, "UPDATE item SET note = 'plain' WHERE id = 3")
    db.digest = db.one("SELECT koherent.seal()")
    return db


@pytest.fixture
def package(audited, tmp_path):
    out = str(tmp_path / "pkg")
    r = export(audited, out, "--task", "task-1", "--include-subtasks")
    assert r.returncode == 0, r.stderr
    return out


def test_export_and_verify_a_task_tree(audited, package):
    db = audited
    ok = verify(package)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"{package}: intact: 2 tasks, 3 transactions, 5 entries, blocks 1..2")
    m = json.load(open(os.path.join(package, "manifest.json")))
    assert (m["kind"], m["format"], m["ledger_format"]) == ("koherent-audit-package", "koherent-audit-v1", "koherent-ledger-v1")
    assert m["database"] == {"id": db.digest["database"], "name": db.name}
    assert m["selection"] == {"task_id": "task-1", "include_subtasks": True}
    assert m["counts"] == {"tasks": 2, "contexts": 3, "entries": 5, "blocks": 2}
    assert m["blocks"] == {"first": 1, "last": 2}
    assert m["digest"] == {k: v for k, v in db.digest.items() if k not in ("sealed", "sealed_entries")}
    for name in FILES:
        data = open(os.path.join(package, name), "rb").read()
        assert m["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "lines": data.count(b"\n")}
    tasks = read_lines(package, "tasks.jsonl")
    assert [(t["task_id"], t["parent_task_id"]) for t in tasks] == [("task-1", None), ("task-1.1", "task-1")]
    assert tasks[0]["token"] == db.one("SELECT token FROM koherent.task WHERE task_id = 'task-1'")
    contexts = read_lines(package, "contexts.jsonl")
    assert [(c["fields"]["task_id"], c["block"], c["position"], c["entries"]) for c in contexts] == \
        [("task-1", 1, 1, 3), ("task-1.1", 2, 1, 1), ("task-1", 2, 2, 1)]
    entries = read_lines(package, "entries.jsonl")
    cols = {c["name"]: str(c["column_id"]) for c in read_lines(package, "schema.jsonl") if c["line"] == "column"}
    assert [(e["kind"], e["row"][cols["id"]], e["row"][cols["qty"]]) for e in entries] == \
        [("CREATE", 1, 1), ("CREATE", 2, 2), ("UPDATE", 1, 10), ("CREATE", 3, 3), ("UPDATE", 1, 11)]
    assert entries[0]["table"] == "public.item" and entries[0]["context"] == contexts[0]["id"]
    # numbers exactly as PostgreSQL wrote them (1.50 is not 1.5)
    assert '"' + cols["price"] + '":1.50' in open(os.path.join(package, "entries.jsonl")).readline()
    # effective changes: the columns an UPDATE changed; none for a CREATE
    assert entries[2]["changes"] == sorted([cols["qty"], cols["note"]], key=int) and entries[0]["changes"] == []
    assert entries[4]["changes"] == [cols["qty"]] and entries[4]["old"][cols["qty"]] == 10
    keys = json.load(open(os.path.join(package, "keys.json")))
    [k] = keys["issuers"]["rekuest"]["keys"]
    assert (k["kid"], k["x"], k["revoked_at"]) == (TEST_PUBLIC_JWK["kid"], TEST_PUBLIC_JWK["x"], None)
    ledger = read_lines(package, "ledger.jsonl")
    assert [(l["line"], l["block"], l.get("context")) for l in ledger] == \
        [("block", 1, None), ("proof", 1, contexts[0]["id"]), ("block", 2, None), ("proof", 2, contexts[1]["id"]),
         ("proof", 2, contexts[2]["id"])]
    assert ledger[2]["hash"] == db.digest["hash"] and ledger[2]["record"]["prev"] == ledger[0]["hash"]
    # block 2 holds four transactions (task-1.1, task-1, task-2, the unattributed one): a real path
    assert ledger[3]["size"] == 4 and len(ledger[3]["path"]) == 2
    g = json.load(open(os.path.join(package, "graph.json")))
    assert g["format"] == "koherent-audit-graph-v1" and g["layout"]["tree"]["root"] == "task"
    # one element per line (so that verify names the line of an edit)
    assert len(open(os.path.join(package, "graph.json")).read().splitlines()) == len(g["elements"]) + 2
    types = {}
    for n in g["elements"]:
        if n["group"] == "node":
            types[n["type"]] = types.get(n["type"], 0) + 1
    assert types == {"task": 2, "context": 3, "entry": 5, "row": 3, "package": 1}
    assert g["elements"][-1] == {"group": "node", "id": "package", "type": "package", "counts": m["counts"], "rows": 3,
                                 "elements": len(g["elements"])}
    edges = {(e["from"], e["to"], e["type"]) for e in g["elements"] if e["group"] == "edge"}
    assert len(edges) == 1 + 3 + 5 + 5
    assert ("task:rekuest/task-1", "task:rekuest/task-1.1", "subtask") in edges
    assert ("task:rekuest/task-1", f"context:{contexts[0]['id']}", "ran") in edges
    assert (f"context:{contexts[0]['id']}", f"entry:{entries[0]['config']}/{entries[0]['id']}", "wrote") in edges
    assert (f"entry:{entries[0]['config']}/{entries[0]['id']}", 'row:public.item:{"id":1}', "changed") in edges
    # the auditor's own JWKS (the issuer's public key) verifies the tokens too
    jwks = os.path.join(package, "..", "jwks.json")
    open(jwks, "w").write(json.dumps({"keys": [TEST_PUBLIC_JWK]}))
    assert verify(package, "--jwks", jwks).returncode == 0
    # the latest digest kept outside holds; one from before (block 1) does not cover the two
    # transactions sealed in block 2: verify names them
    f = os.path.join(package, "..", "digest2.json")
    open(f, "w").write(json.dumps(db.digest))
    r = verify(package, "--digest", f)
    assert r.returncode == 0 and "chain checked up to block 2 (the digest given)" in r.stdout, r.stdout
    open(f, "w").write(json.dumps(db.first))
    r = verify(package, "--digest", f)
    assert r.returncode == 1 and [l.split(":")[:2] for l in r.stdout.splitlines()] == [["contexts.jsonl", "2"], ["contexts.jsonl", "3"]], r.stdout
    assert "is sealed in block 2, after the digest's block 1" in r.stdout


def test_export_of_a_time_window_and_show(audited, tmp_path):
    db = audited
    since, until = db.one("SELECT min(created_at)::text, (max(created_at) + interval '1 microsecond')::text "
                          "FROM koherent.transaction_auth_context WHERE task_id IS DISTINCT FROM 'task-1.1' "
                          "AND created_at > (SELECT created_at FROM koherent.transaction_auth_context WHERE task_id = 'task-1.1')")
    out = str(tmp_path / "win")
    r = export(db, out, "--since", since, "--until", until)
    assert r.returncode == 0, r.stderr
    ok = verify(out)
    assert ok.returncode == 0, ok.stdout
    contexts = read_lines(out, "contexts.jsonl")
    assert [c["fields"]["task_id"] for c in contexts] == ["task-1", "task-2", None]
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["selection"]["since"].endswith("Z") and m["counts"]["tasks"] == 2
    shown = cli("audit", "show", out, "--row", "item:1")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "tasks (2):" in text and "  task-1 (issuer rekuest" in text and "  task-2 (issuer rekuest" in text
    assert "public.item: 1 DELETE, 2 UPDATE" in text
    assert "changes of item:1:" in text and "qty: 10 -> 11" in text
    tree = cli("audit", "show", str(tmp_path / "win"))
    assert tree.returncode == 0 and "changes of" not in tree.stdout


def test_show_the_task_tree(package):
    text = cli("audit", "show", package, "--row", 'public.item:{"id": 3}').stdout
    assert "  task-1 (issuer rekuest" in text and "\n    task-1.1 (issuer rekuest" in text
    assert "CREATE   task task-1.1" in text and "id=3, name=\"c\", qty=3" in text


def edit_line(pkg, name, n, fn):
    path = os.path.join(pkg, name)
    lines = open(path).read().splitlines(keepends=True)
    lines[n - 1] = fn(lines[n - 1])
    open(path, "w").write("".join(lines))


def edit_lines(pkg, name, fn):
    path = os.path.join(pkg, name)
    lines = open(path).read().splitlines(keepends=True)
    open(path, "w").write("".join(fn(lines)))


def replace_in(pkg, name, old, new):
    path = os.path.join(pkg, name)
    text = open(path).read()
    assert old in text
    open(path, "w").write(text.replace(old, new, 1))


def edit_manifest(pkg, f):
    path = os.path.join(pkg, "manifest.json")
    m = json.load(open(path))
    f(m)
    open(path, "w").write(json.dumps(m, indent=2) + "\n")


# How an edited line is written again: as export writes its lines (compact, keys in order: the
# CLI's fast path for plain entries reads those) or spaced (the general path reads those).
STYLE = {"spaced": False}


def dumps(v):
    if STYLE["spaced"]:
        return json.dumps(v)
    return json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def obj_edit(f):
    def apply(line):
        v = json.loads(line)
        f(v)
        return dumps(v) + "\n"
    return apply


def other_token(pkg):
    """Another token for task-1, validly signed by the same issuer key (a new jti)."""
    return mint("task-1")


def payload(token):
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def swap_token(task):
    """The task line rewritten consistently for another valid token: token, token id, claims."""
    t = mint("task-1")
    task.update(token=t, token_id=payload(t)["jti"], claims=payload(t))


def col(pkg, name):
    return next(str(c["column_id"]) for c in read_lines(pkg, "schema.jsonl") if c.get("name") == name)


EDITS = {
    # entries.jsonl: a value, an old value, a kind, a date; a line dropped, added, moved
    "entry value": (lambda p: edit_line(p, "entries.jsonl", 2, obj_edit(lambda v: v["row"].update({col(p, "qty"): 99}))),
                    "entries.jsonl:2: entry public.item #", "values are not the ones sealed"),
    "entry old value": (lambda p: edit_line(p, "entries.jsonl", 3, obj_edit(lambda v: v["old"].update({col(p, "qty"): 7}))),
                        "entries.jsonl:3: ", "values are not the ones sealed"),
    "entry kind": (lambda p: edit_line(p, "entries.jsonl", 1, obj_edit(lambda v: v.update(kind="UPDATE"))),
                   "entries.jsonl:1: ", "values are not the ones sealed"),
    "entry date": (lambda p: edit_line(p, "entries.jsonl", 4, obj_edit(lambda v: v.update(date="2020-01-01T00:00:00.000000Z"))),
                   "entries.jsonl:4: ", "values are not the ones sealed"),
    "entry changes": (lambda p: edit_line(p, "entries.jsonl", 3, obj_edit(lambda v: v.update(changes=[]))),
                      "entries.jsonl:3: ", "its changes are not the columns"),
    "entry dropped": (lambda p: edit_lines(p, "entries.jsonl", lambda ls: ls[:1] + ls[2:]),
                      "entries.jsonl:2: entry public.item #", "is missing"),
    "entry added": (lambda p: edit_lines(p, "entries.jsonl", lambda ls: ls[:3] + [
                        dumps({**json.loads(ls[2]), "id": json.loads(ls[2])["id"] + 1000}) + "\n"] + ls[3:]),
                    "entries.jsonl:4: ", "not one of the entries transaction"),
    "entries reordered": (lambda p: edit_lines(p, "entries.jsonl", lambda ls: [ls[1], ls[0]] + ls[2:]),
                          "entries.jsonl:2: ", "out of order"),
    "entry moved to another transaction": (
        lambda p: edit_line(p, "entries.jsonl", 5, obj_edit(lambda v: v.update(context=read_lines(p, "contexts.jsonl")[1]["id"]))),
        "entries.jsonl:5: ", "not one of the entries transaction"),
    # tasks.jsonl: a field, a claim, a token swapped for another valid one, dropped, reordered
    "task field": (lambda p: edit_line(p, "tasks.jsonl", 1, obj_edit(lambda v: v.update(assigner_sub="mallory"))),
                   "tasks.jsonl:1: task task-1: assigner_sub is \"mallory\", its token says \"user-1\"", ""),
    "task claims": (lambda p: edit_line(p, "tasks.jsonl", 2, obj_edit(lambda v: v["claims"].update(rcb="mallory"))),
                    "tasks.jsonl:2: task task-1.1: its claims are not its token's", ""),
    "token swapped": (lambda p: edit_line(p, "tasks.jsonl", 1, obj_edit(lambda v: v.update(token=other_token(p)))),
                      "tasks.jsonl:1: task task-1: token_id is", ""),
    "token swapped with its row": (
        lambda p: edit_line(p, "tasks.jsonl", 1, obj_edit(swap_token)),
        "tasks.jsonl:1: task task-1: its record (claims, token or a field) is not the one its transactions were sealed with", ""),
    "task dropped": (lambda p: edit_lines(p, "tasks.jsonl", lambda ls: ls[:1]),
                     "contexts.jsonl:2: transaction ", "its task task-1.1 (issuer rekuest) is not in tasks.jsonl"),
    "tasks reordered": (lambda p: edit_lines(p, "tasks.jsonl", lambda ls: ls[::-1]),
                        "tasks.jsonl:2: task task-1 out of order", ""),
    "task added": (lambda p: edit_lines(p, "tasks.jsonl", lambda ls: ls + [
                       json.dumps({**json.loads(ls[0]), "task_id": "task-9"}) + "\n"]),
                   "tasks.jsonl:3: task task-9: no exported transaction ran under it", ""),
    # contexts.jsonl: a field, the entry index, dropped, reordered
    "context field": (lambda p: edit_line(p, "contexts.jsonl", 1, obj_edit(lambda v: v["fields"].update(db_role="someone"))),
                      "contexts.jsonl:1: transaction ", "is not the one block 1 sealed at position 1"),
    "context index": (lambda p: edit_line(p, "contexts.jsonl", 3, obj_edit(lambda v: v["index"]["prefixes"].__setitem__(0, "00" * 8))),
                      "contexts.jsonl:3: transaction ", "is not the one block 2 sealed at position 2"),
    "context dropped": (lambda p: edit_lines(p, "contexts.jsonl", lambda ls: ls[1:]),
                        "entries.jsonl:1: entry public.item #", "is not in contexts.jsonl"),
    "contexts reordered": (lambda p: edit_lines(p, "contexts.jsonl", lambda ls: [ls[0], ls[2], ls[1]]),
                           "contexts.jsonl:3: transaction ", "out of order"),
    # ledger.jsonl: a block's field, a proof, a block dropped, lines reordered
    "block field": (lambda p: edit_line(p, "ledger.jsonl", 1, obj_edit(lambda v: v["record"].update(sealed_at="2020-01-01T00:00:00.000000Z"))),
                    "ledger.jsonl:1: block 1: its hash does not match its fields", ""),
    "block rewritten with its hash": (
        lambda p: edit_line(p, "ledger.jsonl", 3, obj_edit(lambda v: (v["record"].update(entries=99),
                                                                       v.update(hash=hashlib.sha256(b"x").hexdigest())))),
        "ledger.jsonl:3: block 2: its hash does not match its fields", ""),
    "proof changed": (lambda p: edit_line(p, "ledger.jsonl", 4, obj_edit(lambda v: v["path"].__setitem__(0, "00" * 32))),
                      "contexts.jsonl:2: transaction ", "(its fields, task, entry index or its proof, ledger.jsonl:4, changed)"),
    "proof dropped": (lambda p: edit_lines(p, "ledger.jsonl", lambda ls: ls[:1] + ls[2:]),
                      "contexts.jsonl:1: no proof in ledger.jsonl ties this transaction to block 1", ""),
    "block dropped": (lambda p: edit_lines(p, "ledger.jsonl", lambda ls: ls[2:]),
                      "ledger.jsonl:1: the chain starts at block 2, not 1", ""),
    "ledger reordered": (lambda p: edit_lines(p, "ledger.jsonl", lambda ls: [ls[1], ls[0]] + ls[2:]),
                         "ledger.jsonl:1: proof of transaction ", "not after its block's line"),
    # the review's attacks: a transaction listed twice (the first made up), a key twice in an
    # object, a column the ledger never recorded, a selection the transactions are not in
    "context listed twice": (lambda p: edit_lines(p, "contexts.jsonl", lambda ls: [
                                 json.dumps({**(c := json.loads(ls[0])), "fields": {**c["fields"], "db_role": "superuser"}}) + "\n"] + ls),
                             "contexts.jsonl:1: transaction ", "is not the one block 1 sealed"),
    "a key twice": (lambda p: edit_line(p, "entries.jsonl", 1, lambda l: '{"kind":"DELETE",' + l[1:]),
                    "entries.jsonl:1: not a JSON object", "twice"),
    "a made-up column": (lambda p: edit_lines(p, "schema.jsonl", lambda ls: ls + [json.dumps(
                             {"line": "column", "column_id": 999, "config": 1, "name": "salary", "type": "integer",
                              "live_from": 1, "live_until": None}) + "\n"]),
                         "schema.jsonl:", "column 999: not a tracked column the ledger recorded"),
    "selection": (lambda p: edit_manifest(p, lambda m: m["selection"].update(task_id="task-2")),
                  "contexts.jsonl:1: transaction ", "not one the selection"),
    # schema.jsonl, keys.json, graph.json, manifest.json
    "schema record": (lambda p: edit_line(p, "schema.jsonl", 1, obj_edit(lambda v: v["record"]["columns"][0].update(type="text"))),
                      "schema.jsonl:1: the tracked columns' record is not the one block 2 sealed", ""),
    "schema column": (lambda p: edit_lines(p, "schema.jsonl", lambda ls: [
                          json.dumps({**json.loads(l), "live_from": 5}) + "\n" if json.loads(l).get("name") == "qty" else l for l in ls]),
                      "schema.jsonl:", "its type or epochs are not the ones sealed"),
    "issuer key swapped": (lambda p: replace_in(p, "keys.json", TEST_PUBLIC_JWK["x"], OKPKey.generate_key("Ed25519").as_dict()["x"]),
                           "tasks.jsonl:1: task task-1: its token's signature does not verify under keys.json:", ""),
    "graph node": (lambda p: replace_in(p, "graph.json", '"kind":"CREATE"', '"kind":"DELETE"'),
                   "graph.json:", "not the evidence graph"),
    "manifest digest": (lambda p: edit_manifest(p, lambda m: m["digest"].update(hash="00" * 32)),
                        "manifest.json:", "block 2's hash is not the digest's"),
    "manifest counts": (lambda p: edit_manifest(p, lambda m: m["counts"].update(entries=4)),
                        "manifest.json:", "counts entries 4, the package holds 5"),
}


@pytest.mark.parametrize("case,style", [(c, s) for c in EDITS
                                        for s in (["compact", "spaced"] if c.startswith("entr") else ["compact"])])
def test_every_edit_is_named_by_file_and_line(package, case, style, monkeypatch):
    """(entries' edits both ways: written compact, the fast path for plain entries judges the
    line; spaced, the general path)"""
    monkeypatch.setitem(STYLE, "spaced", style == "spaced")
    edit, where, what = EDITS[case]
    before = {n: open(os.path.join(package, n), "rb").read() for n in FILES}
    edit(package)
    changed = [n for n in FILES if open(os.path.join(package, n), "rb").read() != before[n]]
    r = verify(package)
    assert r.returncode == 1, r.stdout
    lines = r.stdout.splitlines()
    assert any(l.startswith(where) and what in l for l in lines), (where, what, lines)
    # every problem names its file (and the changed files' hashes no longer match the manifest)
    assert all(l.split(":")[0] in FILES + ["manifest.json"] for l in lines), lines
    for n in changed:
        assert any(l.startswith("manifest.json") and f"{n}: its SHA-256 is not the manifest's" in l for l in lines), lines
    assert r.stderr.startswith(f"koherent: {package}: {len(lines)} problems")


def test_verify_against_the_auditors_own_keys_and_digest(audited, package, tmp_path):
    """With the auditor's JWKS, only it is trusted: a package whose tokens were signed by
    another key (keys.json swapped consistently) fails; a digest of another chain fails."""
    other = OKPKey.generate_key("Ed25519").as_dict(private=False)
    other["kid"] = TEST_PUBLIC_JWK["kid"]
    jwks = tmp_path / "other.json"
    jwks.write_text(json.dumps({"keys": [other]}))
    r = verify(package, "--jwks", jwks)
    assert r.returncode == 1
    got = r.stdout.splitlines()
    assert len(got) == 2 and all(l.startswith(f"tasks.jsonl:{i + 1}: task ") and "does not verify under the JWKS given "
                                 "(issuer rekuest, kid koherent-test-key)" in l for i, l in enumerate(got)), got
    # per issuer, as keys.json writes it
    jwks.write_text(json.dumps({"issuers": {"rekuest": {"keys": [TEST_PUBLIC_JWK]}}}))
    assert verify(package, "--jwks", jwks).returncode == 0
    jwks.write_text(json.dumps({"issuers": {"someone-else": {"keys": [TEST_PUBLIC_JWK]}}}))
    r = verify(package, "--jwks", jwks)
    assert r.returncode == 1 and r.stdout.startswith("tasks.jsonl:1: task task-1: its token's signature does not verify "
                                                     "under the JWKS given"), r.stdout
    # a digest of a chain the package does not extend
    d = tmp_path / "d.json"
    d.write_text(json.dumps({**audited.digest, "hash": "ab" * 32}))
    r = verify(package, "--digest", d)
    assert r.returncode == 1 and r.stdout.splitlines() == [f"{d}: block 2's hash is not the digest's: the chain was rewritten"]
    d.write_text(json.dumps({**audited.digest, "block": 3}))
    r = verify(package, "--digest", d)
    assert r.stdout.splitlines() == [f"{d}: the package's chain (blocks 1..2) does not reach the digest's block 3"]
    d.write_text(json.dumps({**audited.digest, "database": "00000000-0000-0000-0000-000000000000"}))
    assert "the digest is of database 00000000-0000-0000-0000-000000000000" in verify(package, "--digest", d).stdout


def test_a_key_revoked_before_the_task_was_recorded(audited, package):
    path = os.path.join(package, "keys.json")
    k = json.load(open(path))
    k["issuers"]["rekuest"]["keys"][0]["revoked_at"] = "2000-01-01T00:00:00.000000Z"
    open(path, "w").write(json.dumps(k, indent=2) + "\n")
    lines = verify(package).stdout.splitlines()
    assert any(l.startswith("tasks.jsonl:1: task task-1: signed by key koherent-test-key, revoked at 2000-01-01") for l in lines), lines


def test_export_refuses_bad_selections_unsealed_work_and_other_roles(audited, tmp_path):
    db = audited
    r = export(db, str(tmp_path / "a"), "--task", "no-such-task")
    assert r.returncode == 1 and "koherent: no task no-such-task (SQLSTATE P0002)" in r.stderr
    assert not os.path.exists(tmp_path / "a")  # (nothing left behind)
    r = export(db, str(tmp_path / "b"), "--since", "2026-01-02", "--until", "2026-01-01")
    assert r.returncode == 1 and "since <= until (SQLSTATE 22023)" in r.stderr
    r = export(db, str(tmp_path / "c"), "--task", "task-1", "--since", "2026-01-01")
    assert r.returncode == 1 and "give --task, or --since and --until" in r.stderr
    # written after the last seal: the export says so instead of shipping what no block covers
    write(db, "UPDATE item SET qty = 12 WHERE id = 1", mint("task-1"))
    r = export(db, str(tmp_path / "d"), "--task", "task-1")
    assert r.returncode == 1 and "1 of the 3 selected transactions are not sealed yet" in r.stderr
    assert not os.path.exists(tmp_path / "d")
    os.mkdir(tmp_path / "d")  # an empty directory given: left empty
    r = export(db, str(tmp_path / "d"), "--task", "task-1")
    assert r.returncode == 1 and os.listdir(tmp_path / "d") == []
    # the application role cannot export; an auditor granted it can
    r = export(db, str(tmp_path / "e"), "--task", "task-2", user=APP_ROLE)
    assert r.returncode == 1 and "permission denied for function audit_export (SQLSTATE 42501)" in r.stderr
    db.one("SELECT koherent.seal()")
    db.sql("DROP ROLE IF EXISTS koherent_test_auditor")
    db.sql("CREATE ROLE koherent_test_auditor LOGIN")
    try:
        db.sql("GRANT EXECUTE ON FUNCTION koherent.audit_export(text, boolean, timestamptz, timestamptz) TO koherent_test_auditor")
        r = export(db, str(tmp_path / "f"), "--task", "task-2", user="koherent_test_auditor")
        assert r.returncode == 0, r.stderr
        assert verify(str(tmp_path / "f")).returncode == 0
        # a non-empty directory is never overwritten
        r = export(db, str(tmp_path / "f"), "--task", "task-2")
        assert r.returncode == 1 and "not empty" in r.stderr
    finally:
        db.sql("REVOKE ALL ON FUNCTION koherent.audit_export(text, boolean, timestamptz, timestamptz) FROM koherent_test_auditor")
        db.sql("DROP ROLE koherent_test_auditor")


def test_export_reads_one_snapshot_in_a_read_only_transaction(audited):
    """audit_export runs in a read-only REPEATABLE READ transaction (what the CLI opens)."""
    with audited.conn(autocommit=False) as c:
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        c.execute("SET TimeZone = 'Asia/Tokyo'")
        rows = c.execute("SELECT kind, data FROM koherent.audit_export('task-2')").fetchall()
        kinds = [k for (k, _) in rows]
        assert kinds[0] == "meta" and kinds.count("entries") == 1 and kinds.count("block") == 2 and kinds.count("task") == 1
        # the entries come from the cursor the 'entries' row names, rendered under the ledger's
        # settings whatever the session had (they hold for the rest of the transaction)
        cursor = dict(rows)["entries"]
        assert c.execute("SHOW TimeZone").fetchone()[0] == "UTC"
        entries = c.execute(f'FETCH ALL FROM "{cursor}"').fetchall()
        assert [k for (k, _) in entries] == ["entry"]
        e = json.loads(entries[0][1])
        assert e["table"] == "public.item" and e["record"]["kind"] == "DELETE", e
        assert c.execute(f'FETCH ALL FROM "{cursor}"').fetchall() == []


def test_export_refuses_a_transaction_without_one_snapshot(audited):
    """audit_export reads its parts with several statements: in READ COMMITTED they could see
    different snapshots, so it refuses (25000) and names the isolation level it needs."""
    with audited.conn(autocommit=False) as c:
        with pytest.raises(psycopg.errors.InvalidTransactionState) as e:
            c.execute("SELECT * FROM koherent.audit_export('task-2')")
        assert "REPEATABLE READ" in str(e.value) and e.value.diag.sqlstate == "25000"


def test_every_file_matches_its_json_schema(package):
    """docs/schemas/audit-v1: the manifest and every kind of line validate against their schemas
    (the format's contract, docs/audit-package.md)."""
    import jsonschema

    schemas = os.path.join(ROOT, "docs", "schemas", "audit-v1")

    def check(name, value):
        schema = json.load(open(os.path.join(schemas, name)))
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)

    check("manifest.schema.json", json.load(open(os.path.join(package, "manifest.json"))))
    check("keys.schema.json", json.load(open(os.path.join(package, "keys.json"))))
    check("graph.schema.json", json.load(open(os.path.join(package, "graph.json"))))
    for name, schema in (("tasks.jsonl", "task.schema.json"), ("contexts.jsonl", "context.schema.json"),
                         ("entries.jsonl", "entry.schema.json"), ("schema.jsonl", "schema-line.schema.json"),
                         ("ledger.jsonl", "ledger-line.schema.json")):
        lines = read_lines(package, name)
        assert lines
        for line in lines:
            check(schema, line)
    # and a line that breaks its schema is refused by it
    with pytest.raises(jsonschema.ValidationError):
        check("entry.schema.json", {**read_lines(package, "entries.jsonl")[0], "extra": 1})


def test_values_named_by_search_path_export_as_sealed(item, tmp_path):
    """A value whose output text names objects by search_path (a regclass[]) is sealed under koherent's own path; the export's cursor renders it as it is
    fetched, under that same path (the CLI sets it), not the session's: the package verifies."""
    db = item
    db.sql("CREATE DOMAIN reg_dom AS regclass")
    db.sql("CREATE TABLE regs (id int PRIMARY KEY, rs regclass[], rd reg_dom)")
    db.sql("SELECT koherent.track('regs')")
    write(db, "INSERT INTO regs VALUES (1, ARRAY['item'::regclass, 'pg_class'::regclass], 'item')", mint("task-r"))
    db.one("SELECT koherent.seal()")
    assert db.one("SELECT rs::text FROM regs") == "{item,pg_class}"  # (as the session names them)
    out = str(tmp_path / "r")
    r = export(db, out, "--task", "task-r")
    assert r.returncode == 0, r.stderr
    ok = verify(out)
    assert ok.returncode == 0 and ": intact: 1 tasks, 1 transactions, 1 entries" in ok.stdout, ok.stdout + ok.stderr
    [line] = read_lines(out, "entries.jsonl")
    # (history keeps a domain's value as its base type: the regclass's oid, as documented)
    oid = db.one("SELECT 'item'::regclass::oid")
    assert sorted(line["row"].values(), key=str) == sorted([1, "{public.item,pg_class}", oid], key=str)


def test_entries_of_every_kind_of_value_verify_and_their_edits_are_named(db, tmp_path):
    """Values the fast path for plain entries leaves to the general path (jsonb objects and
    arrays, strings with escapes, non-ASCII text) beside plain ones, in one package: it verifies
    intact, and an edit of either kind of line is named by its line."""
    db.sql("CREATE TABLE odd (id int PRIMARY KEY, doc jsonb, t text, n numeric, k text)")
    db.sql("SELECT koherent.track('odd')")
    write(db, ["INSERT INTO odd VALUES (1, '{\"b\": [1, {\"z\": null}], \"a\": \"x\\ny\"}', E'tab\\there \"q\"', 1.50, 'ü'),"
               " (2, NULL, 'plain', 2, 'k'), (3, '[]', E'nl\\n', -0.0, 'é')",
               "UPDATE odd SET doc = jsonb_set(doc, '{a}', '\"new\"') WHERE id = 1",
               "UPDATE odd SET n = 3 WHERE id = 2"], mint("task-1"))
    db.one("SELECT koherent.seal()")
    out = str(tmp_path / "odd")
    r = export(db, out, "--task", "task-1")
    assert r.returncode == 0, r.stderr
    r = verify(out)
    assert r.returncode == 0 and ": intact: 1 tasks, 1 transactions, 5 entries" in r.stdout, (r.stdout, r.stderr)
    lines = open(os.path.join(out, "entries.jsonl")).read().splitlines()
    got = [json.loads(l) for l in lines]
    assert [(e["kind"], e["changes"]) for e in got] == [("CREATE", [])] * 3 + [("UPDATE", [col(out, "doc")]), ("UPDATE", [col(out, "n")])]
    assert got[0]["row"][col(out, "doc")] == {"a": "x\ny", "b": [1, {"z": None}]}
    assert got[0]["row"][col(out, "t")] == 'tab\there "q"' and got[2]["row"][col(out, "k")] == "é"
    assert '"n":' not in lines[0] and f'"{col(out, "n")}":1.50' in lines[0]  # numbers as written
    # a value inside the jsonb of line 4 (general path), a number of line 5 (plain: fast path)
    replace_in(out, "entries.jsonl", '"new"', '"old"')
    replace_in(out, "entries.jsonl", f'"{col(out, "n")}":3,', f'"{col(out, "n")}":4,')
    r = verify(out)
    assert r.returncode == 1
    problems = [l for l in r.stdout.splitlines() if l.startswith("entries.jsonl:")]
    assert [p.split(":")[1] for p in problems] == ["4", "5"], r.stdout
    assert all("values are not the ones sealed" in p for p in problems), problems
