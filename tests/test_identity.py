"""Who a task's people are (issue #16): the local user resolver, organizations (from a token
claim or the application's setting, a task kept to the organization it was recorded in), the
application's user of every transaction, and a row-level-security policy on the transaction
contexts that keeps each organization's history to itself through every reader."""

import json
import os

import psycopg
import pytest

from conftest import APP_ROLE, mint, sqlstate, write

RESOLVER_OWNER = "koherent_resolver_owner"


def role(db, name, *extra):
    with db.conn() as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone():
            c.execute(f"CREATE ROLE {name} LOGIN {' '.join(extra)}")
    return name


@pytest.fixture
def users(item):
    """A user table of the application (owned by its own role) and a resolver over it, set as
    the database's user resolver; resolver calls are counted."""
    db = item
    role(db, RESOLVER_OWNER)
    db.sql(f"CREATE SCHEMA accounts AUTHORIZATION {RESOLVER_OWNER}")
    with db.conn() as c:
        c.execute(f"SET ROLE {RESOLVER_OWNER}")
        c.execute("CREATE TABLE accounts.auth_user (id int PRIMARY KEY, iss text, sub text, email text)")
        c.execute("INSERT INTO accounts.auth_user VALUES (7, 'rekuest', 'user-1', 'ana@example.org'), "
                  "(8, 'other-issuer', 'user-2', NULL)")
        c.execute("CREATE SEQUENCE accounts.calls")
        c.execute("""CREATE FUNCTION accounts.find_user(issuer text, sub text) RETURNS jsonb
                     LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
                     BEGIN
                         PERFORM nextval('accounts.calls');
                         IF sub = 'boom' THEN
                             RAISE EXCEPTION 'resolver exploded for %', sub;
                         ELSIF sub = 'json-null' THEN
                             RETURN 'null'::jsonb;
                         ELSIF sub = 'whoami' THEN
                             RETURN jsonb_build_object('as', current_user);
                         ELSIF sub = 'steal' THEN
                             RETURN (SELECT jsonb_build_object('token', token) FROM koherent.task LIMIT 1);
                         END IF;
                         RETURN (SELECT jsonb_build_object('table', 'auth_user', 'id', u.id)
                                   FROM accounts.auth_user u WHERE u.iss = issuer AND u.sub = find_user.sub);
                     END $$""")
    db.sql("SELECT koherent.set_user_resolver('accounts.find_user(text, text)')")
    return db


def calls(db):
    return db.one(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM accounts.calls")


def task_row(db, task_id):
    return db.one("SELECT row(assigner_sub, assigner_user, organization)::text FROM koherent.task WHERE task_id = %s",
                  [task_id])


def assigner(db, task_id):
    return db.sql("SELECT assigner_sub, assigner_user FROM koherent.task WHERE task_id = %s", [task_id])


def test_resolver_finds_the_local_user_once_per_task(users):
    db = users
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("t-hit", rcb="user-1"), user=APP_ROLE)
    assert assigner(db, "t-hit") == [("user-1", {"table": "auth_user", "id": 7})]
    assert calls(db) == 1
    # the same task again, from another session: the row exists, the resolver is not asked
    write(db, "UPDATE item SET qty = 2 WHERE id = 1", mint("t-hit", rcb="user-1"), user=APP_ROLE)
    assert calls(db) == 1
    # a sub the application does not know (and user-2 of another issuer): no user, the sub kept
    write(db, "UPDATE item SET qty = 3 WHERE id = 1", mint("t-miss", rcb="nobody"), user=APP_ROLE)
    write(db, "UPDATE item SET qty = 4 WHERE id = 1", mint("t-other", rcb="user-2"), user=APP_ROLE)
    assert assigner(db, "t-miss") == [("nobody", None)] and assigner(db, "t-other") == [("user-2", None)]
    # JSON null is no user either
    write(db, "UPDATE item SET qty = 5 WHERE id = 1", mint("t-null", rcb="json-null"), user=APP_ROLE)
    assert assigner(db, "t-null") == [("json-null", None)]
    assert calls(db) == 4
    # shown where tasks are read: koherent.task, and the task of an entry
    assert db.one("SELECT (koherent.provenance_entry_task(e)).assigner_user FROM koherent.provenance_entry e "
                  "WHERE e.task_id = 't-hit' ORDER BY history_id LIMIT 1") == {"table": "auth_user", "id": 7}


def test_a_failing_resolver_never_fails_the_write(users):
    db = users
    notices = []
    with db.conn(user=APP_ROLE, autocommit=False) as c:
        c.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
        c.execute("SELECT koherent.set_task(%s)", [mint("t-boom", rcb="boom")])
        c.execute("INSERT INTO item (id, qty) VALUES (1, 1)")
        # the transaction goes on: the rolled-back call left nothing behind
        c.execute("UPDATE item SET qty = 2 WHERE id = 1")
        c.commit()
    assert assigner(db, "t-boom") == [("boom", None)]
    assert db.one("SELECT qty FROM item WHERE id = 1") == 2
    assert db.one("SELECT count(*) FROM koherent.provenance_entry WHERE task_id = 't-boom'") == 2
    assert [n for n in notices if n[0] == "WARNING"] == [
        ("WARNING", "koherent: the user resolver accounts.find_user(text,text) failed: resolver exploded for boom; "
                    "the task's assigner_user stays null")]


def test_the_resolver_runs_as_its_owner_not_with_koherents_rights(users):
    db = users
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("t-who", rcb="whoami"), user=APP_ROLE)
    assert assigner(db, "t-who") == [("whoami", {"as": RESOLVER_OWNER})]
    # koherent's tables are koherent's: the resolver's owner may not read the tokens
    write(db, "UPDATE item SET qty = 2 WHERE id = 1", mint("t-steal", rcb="steal"), user=APP_ROLE)
    assert assigner(db, "t-steal") == [("steal", None)]


def test_a_deleted_user_keeps_the_attribution(users):
    db = users
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("t-gone", rcb="user-1"), user=APP_ROLE)
    db.sql("DELETE FROM accounts.auth_user WHERE id = 7")
    db.sql("DROP TABLE accounts.auth_user CASCADE")
    assert assigner(db, "t-gone") == [("user-1", {"table": "auth_user", "id": 7})]
    assert db.one("SELECT task_id FROM koherent.provenance_entry") == "t-gone"
    # a resolver dropped: no user for new tasks, writes go on
    db.sql("DROP FUNCTION accounts.find_user(text, text)")
    write(db, "UPDATE item SET qty = 2 WHERE id = 1", mint("t-after", rcb="user-1"), user=APP_ROLE)
    assert assigner(db, "t-after") == [("user-1", None)]


def test_only_the_extension_owner_names_the_resolver(users):
    db = users
    owner = role(db, "koherent_table_owner")
    db.sql(f"ALTER TABLE item OWNER TO {owner}")
    for who in (APP_ROLE, owner, RESOLVER_OWNER):
        with db.conn(user=who) as c:
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT koherent.set_user_resolver(NULL)")
            assert sqlstate(e) == "42501", who
            with pytest.raises(psycopg.Error) as e:
                c.execute("UPDATE koherent.user_resolver SET set_by = 'mallory'")
            assert sqlstate(e) == "42501", who
    assert db.one("SELECT resolver::text FROM koherent.user_resolver") == "accounts.find_user(text,text)"
    # the shape a resolver has, and its pinned search_path
    db.sql("CREATE FUNCTION public.wrong(text) RETURNS jsonb LANGUAGE sql SET search_path = pg_catalog AS 'SELECT NULL::jsonb'")
    db.sql("CREATE FUNCTION public.unpinned(text, text) RETURNS jsonb LANGUAGE sql AS 'SELECT NULL::jsonb'")
    for f, what in (("public.wrong(text)", "takes (issuer text, sub text) and returns jsonb"),
                    ("public.unpinned(text, text)", "does not pin its search_path")):
        with db.conn() as c:
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT koherent.set_user_resolver(%s::regprocedure)", [f])
            assert sqlstate(e) == "22023" and what in str(e.value)
    # a pin removed afterwards: refused when called, the write goes on
    db.sql(f"ALTER FUNCTION accounts.find_user(text, text) RESET search_path")
    write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("t-unpinned", rcb="user-1"), user=APP_ROLE)
    assert assigner(db, "t-unpinned") == [("user-1", None)] and calls(db) == 0
    db.sql("SELECT koherent.set_user_resolver(NULL)")
    assert db.count("koherent.user_resolver") == 0


# --- organizations --------------------------------------------------------------------------


def org_write(db, statements, token=None, org=None, app_user=None, user=APP_ROLE):
    """One transaction: the application's settings first, then set_task, then the statements."""
    with db.conn(user=user, autocommit=False) as c:
        if org is not None:
            c.execute("SELECT set_config('koherent.organization', %s, true)", [org])
        if app_user is not None:
            c.execute("SELECT set_config('koherent.app_user', %s, true)", [app_user])
        if token is not None:
            c.execute("SELECT koherent.set_task(%s)", [token])
        for s in [statements] if isinstance(statements, str) else statements:
            c.execute(s)
        c.commit()


def test_the_organization_comes_from_the_token_claim(item):
    db = item
    db.sql(f"ALTER DATABASE {db.name} SET koherent.organization_claim = 'org'")
    org_write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("t-acme", org="acme"))
    assert db.sql("SELECT organization FROM koherent.task") == [("acme",)]
    assert db.sql("SELECT organization, task_id FROM koherent.provenance_entry") == [("acme", "t-acme")]
    # the application's setting agreeing is fine; disagreeing is refused, before anything is written
    org_write(db, "UPDATE item SET qty = 2 WHERE id = 1", mint("t-acme", org="acme"), org="acme")
    before = db.state_counts()
    with pytest.raises(psycopg.Error) as e:
        org_write(db, "UPDATE item SET qty = 3 WHERE id = 1", mint("t-acme2", org="acme"), org="globex")
    assert sqlstate(e) == "28000" and e.value.diag.message_detail == "reason: organization_conflict"
    assert db.state_counts() == before
    # a claim that is there and names no organization is refused, not taken for none
    for bad in (["acme"], True, {"id": "acme"}, ""):
        with pytest.raises(psycopg.Error) as e:
            org_write(db, "UPDATE item SET qty = 3 WHERE id = 1", mint("t-bad", org=bad), org="acme")
        assert sqlstate(e) == "28000" and e.value.diag.message_detail == "reason: organization_claim_invalid", bad
    assert db.state_counts() == before
    # an application role cannot change which claim counts
    with db.app() as c:
        c.execute("SELECT koherent.current_context_id()")  # (loads the library: no placeholder)
        for statement in ("SET koherent.organization_claim = 'sub'",
                          "SELECT set_config('koherent.organization_claim', 'sub', false)"):
            with pytest.raises(psycopg.Error) as e:
                c.execute(statement)
            assert sqlstate(e) == "42501"


def test_a_task_stays_in_the_organization_it_was_recorded_in(item):
    db = item
    org_write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("t-1"), org="acme")
    assert db.sql("SELECT organization FROM koherent.task") == [("acme",)]
    before = db.state_counts()
    # set_task refuses it for another organization, and does not say which one it is in
    with pytest.raises(psycopg.Error) as e:
        org_write(db, "UPDATE item SET qty = 2 WHERE id = 1", mint("t-1"), org="globex")
    assert sqlstate(e) == "28000" and e.value.diag.message_detail == "reason: organization_mismatch"
    assert "acme" not in str(e.value) and '"globex"' in str(e.value)
    # so does the first write, when the organization is set after set_task
    with db.conn(user=APP_ROLE, autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("t-1")])
        c.execute("SELECT set_config('koherent.organization', 'globex', true)")
        with pytest.raises(psycopg.Error) as e:
            c.execute("UPDATE item SET qty = 2 WHERE id = 1")
        assert sqlstate(e) == "28000"
    # and a token given by setting (PostGraphile's pgSettings), in a new session
    with db.conn(user=APP_ROLE, autocommit=False) as c:
        c.execute("SELECT set_config('koherent.task_token', %s, true), set_config('koherent.organization', 'globex', true)",
                  [mint("t-1")])
        with pytest.raises(psycopg.Error) as e:
            c.execute("UPDATE item SET qty = 2 WHERE id = 1")
        assert sqlstate(e) == "28000"
    assert db.state_counts() == before and db.one("SELECT qty FROM item") == 1
    # its own organization, or none said (the task's then), writes
    org_write(db, "UPDATE item SET qty = 2 WHERE id = 1", mint("t-1"), org="acme")
    org_write(db, "UPDATE item SET qty = 3 WHERE id = 1", mint("t-1"))
    assert db.sql("SELECT organization FROM koherent.provenance_entry ORDER BY history_id") == [("acme",)] * 3
    # a task recorded without one takes writes from any (tasks from before organizations)
    org_write(db, "UPDATE item SET qty = 4 WHERE id = 1", mint("t-none"))
    org_write(db, "UPDATE item SET qty = 5 WHERE id = 1", mint("t-none"), org="globex")
    assert db.sql("SELECT organization FROM koherent.task WHERE task_id = 't-none'") == [(None,)]
    assert db.sql("SELECT organization FROM koherent.provenance_entry WHERE task_id = 't-none' ORDER BY history_id") == [
        (None,), ("globex",)]


def test_readers_filter_by_organization(item):
    db = item
    org_write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("t-a"), org="acme")
    org_write(db, "INSERT INTO item (id, qty) VALUES (2, 1)", mint("t-g"), org="globex")
    org_write(db, "UPDATE item SET qty = 9", mint("t-a"), org="acme")
    assert db.sql("SELECT row_key->>'id', kind FROM koherent.task_changes('t-a', false, 'acme')") == [
        ("1", "CREATE"), ("1", "UPDATE"), ("2", "UPDATE")]
    assert db.sql("SELECT * FROM koherent.task_changes('t-a', false, 'globex')") == []
    assert db.one("SELECT count(*) FROM koherent.task_changes('t-a')") == 3
    assert db.sql("SELECT task_id, count(*) FROM koherent.provenance_entry WHERE organization = 'globex' "
                  "GROUP BY 1") == [("t-g", 1)]


def test_unattributed_writes_record_the_applications_user(item):
    db = item
    org_write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", org="acme", app_user="alice@acme")
    org_write(db, "UPDATE item SET qty = 2", mint("t-1"), app_user="bob")
    org_write(db, "UPDATE item SET qty = 3")
    assert db.sql("SELECT db_role, app_user, organization, task_id FROM koherent.provenance_entry ORDER BY history_id") == [
        (APP_ROLE, "alice@acme", "acme", None), (APP_ROLE, "bob", None, "t-1"), (APP_ROLE, None, None, None)]
    # the ledger covers them: sealed, verified, and an edit of either is found
    d = db.one("SELECT koherent.seal()")
    assert db.sql("SELECT * FROM koherent.verify_history(%s)", [json.dumps([d])]) == []
    with db.conn() as c:
        c.execute("UPDATE koherent.transaction_auth_context SET app_user = 'mallory' WHERE app_user = 'bob'")
        c.execute("UPDATE koherent.transaction_auth_context SET organization = 'globex' WHERE organization = 'acme'")
    assert sorted(p[0] for p in db.sql("SELECT problem FROM koherent.verify_history()")) == ["context_changed"] * 2


# --- the policy of the README's "Organizations" ---------------------------------------------

POLICY = """
ALTER TABLE koherent.transaction_auth_context ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_organization ON koherent.transaction_auth_context FOR SELECT
    USING (organization = current_setting('koherent.organization', true));
"""


@pytest.fixture
def tenants(item):
    """item written by acme's and globex's tasks (every row readable by both readers: only the
    policy on the contexts keeps their history apart), exposed to a reader role, an auditor
    role of each organization's readers, the README's policy in place."""
    db = item
    reader, auditor = role(db, "koherent_org_reader"), role(db, "koherent_org_auditor")
    db.sql(f"GRANT SELECT ON item TO {reader}, {auditor}")
    db.sql(f"SELECT koherent.expose('item', '{reader}')")
    db.sql(f"GRANT SELECT ON koherent.provenance_entry, koherent.task, koherent.transaction_auth_context TO {auditor}")
    db.sql(f"GRANT EXECUTE ON FUNCTION koherent.task_changes(text, boolean, text), "
           f"koherent.provenance_entry_task(koherent.provenance_entry), "
           f"koherent.provenance_entry_effective_changes(koherent.provenance_entry) TO {auditor}")
    org_write(db, "INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)", mint("t-acme"), org="acme")
    org_write(db, "UPDATE item SET qty = 10 WHERE id = 1", mint("t-globex"), org="globex")
    org_write(db, "UPDATE item SET qty = 20 WHERE id = 2", org="globex", app_user="gina")
    with db.conn() as c:
        c.execute(POLICY)
        c.execute(f"GRANT SELECT ON koherent.transaction_auth_context TO {reader}")
    db.reader, db.auditor = reader, auditor
    return db


def as_org(db, user, org):
    c = db.conn(user=user)
    if org is not None:
        c.execute("SELECT set_config('koherent.organization', %s, false)", [org])
    return c


def test_the_policy_keeps_each_organizations_history_through_every_reader(tenants):
    db = tenants
    for org, mine in (("acme", [("CREATE", "t-acme")]), ("globex", [("UPDATE", "t-globex")]), (None, [])):
        # the exposed functions (what PostGraphile and pg_graphql call)
        with as_org(db, db.reader, org) as c:
            got = c.execute("SELECT kind, task_id FROM item_provenance((SELECT i FROM item i WHERE id = 1))").fetchall()
            assert got == mine, org
            assert c.execute("SELECT kind, task_id FROM _provenance((SELECT i FROM item i WHERE id = 1))").fetchall() == mine
            assert c.execute("SELECT count(*) FROM item_provenance((SELECT i FROM item i WHERE id = 2))").fetchone()[0] == (
                {"acme": 1, "globex": 1, None: 0}[org])
            # an entry of the other organization, named by its id, shows nothing either
            other = db.one("SELECT max(history_id) FROM koherent_history.item WHERE id = 1")
            forged = (f"jsonb_populate_record(NULL::koherent_graphql.provenance_entry, "
                      f"jsonb_build_object('history_id', {other}, 'table_name', 'item'))")
            assert c.execute(f"SELECT koherent_graphql.provenance_entry_task({forged}) IS NULL, "
                             f"(SELECT count(*) FROM koherent_graphql.provenance_entry_effective_changes({forged}))"
                             ).fetchone() == ((org != "globex"), 0 if org != "globex" else 1)
        # provenance_entry and task_changes (an auditor of that organization)
        with as_org(db, db.auditor, org) as c:
            got = c.execute("SELECT kind, task_id, organization FROM koherent.provenance_entry ORDER BY history_id").fetchall()
            assert got == {"acme": [("CREATE", "t-acme", "acme")] * 2,
                           "globex": [("UPDATE", "t-globex", "globex"), ("UPDATE", None, "globex")],
                           None: []}[org]
            assert c.execute("SELECT count(*) FROM koherent.task_changes('t-acme')").fetchone()[0] == (2 if org == "acme" else 0)
            assert c.execute("SELECT count(*) FROM koherent.task_changes('t-globex')").fetchone()[0] == (1 if org == "globex" else 0)
    # without the policy everyone reads everything again (the check costs nothing then)
    db.sql("ALTER TABLE koherent.transaction_auth_context DISABLE ROW LEVEL SECURITY")
    with as_org(db, db.auditor, "acme") as c:
        assert c.execute("SELECT count(*) FROM koherent.provenance_entry").fetchone()[0] == 4


def test_the_policy_binds_the_application_role_and_the_table_owner_too(tenants):
    db = tenants
    owner = role(db, "koherent_item_owner")
    db.sql(f"ALTER TABLE item OWNER TO {owner}")
    # neither may read koherent's contexts at all, nor write them
    for who in (APP_ROLE, owner):
        with as_org(db, who, "globex") as c:
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT count(*) FROM koherent.transaction_auth_context")
            assert sqlstate(e) == "42501"
            with pytest.raises(psycopg.Error) as e:
                c.execute("UPDATE koherent.transaction_auth_context SET organization = 'globex'")
            assert sqlstate(e) == "42501"
    # a reader that sets another organization's name sees that organization's: the setting is
    # the application's to set (PostGraphile's pgSettings, from its own authentication), never
    # the client's
    with as_org(db, db.reader, "acme") as c:
        assert c.execute("SELECT count(*) FROM koherent.transaction_auth_context").fetchone()[0] == 1
    # writes go on under the policy (the history writer is the contexts' owner)
    org_write(db, "UPDATE item SET qty = 30 WHERE id = 2", mint("t-acme"), org="acme")
    with as_org(db, db.auditor, "acme") as c:
        assert c.execute("SELECT count(*) FROM koherent.task_changes('t-acme')").fetchone()[0] == 3


def test_the_ledger_and_audit_packages_hold_them(users, tmp_path):
    """Task records gain organization and assigner_user, context fields organization and
    app_user, only where set (docs/ledger.md): recomputed here from the documented layout; an
    audit package carries them and verifies offline; an edit of any is named."""
    import hashlib
    import subprocess
    from conftest import ROOT
    db = users
    org_write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("t-led", rcb="user-1"), org="acme", app_user="ana")
    org_write(db, "UPDATE item SET qty = 2", mint("t-bare", rcb="nobody"))
    d = db.one("SELECT koherent.seal()")
    assert db.sql("SELECT * FROM koherent.verify_history(%s)", [json.dumps([d])]) == []

    def canon(v):
        if isinstance(v, dict):
            return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canon(v[k]) for k in sorted(v)) + "}"
        if isinstance(v, list):
            return "[" + ",".join(canon(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=False)

    for task, extra in (("t-led", {"organization": "acme", "assigner_user": {"id": 7, "table": "auth_user"}}),
                        ("t-bare", {})):
        record, hash_ = db.sql("SELECT koherent._ledger_task_record(t)::text, encode(koherent._ledger_task_hash(t), 'hex') "
                               "FROM koherent.task t WHERE task_id = %s", [task])[0]
        record = json.loads(record)
        assert {k: record[k] for k in extra} == extra and not ({"organization", "assigner_user"} - set(extra)) & set(record)
        assert hashlib.sha256(b"koherent-ledger-v1 task\n" + canon(record).encode()).hexdigest() == hash_
    fields = [json.loads(f) for (f,) in db.sql("SELECT koherent._ledger_context_fields(x)::text FROM "
                                                "koherent.transaction_auth_context x ORDER BY created_at")]
    assert (fields[0]["organization"], fields[0]["app_user"]) == ("acme", "ana")
    assert "organization" not in fields[1] and "app_user" not in fields[1]
    # the audit package of t-led
    cli = os.environ.get("KOHERENT_CLI", os.path.join(ROOT, "target/release/koherent"))
    out = str(tmp_path / "pkg")
    from conftest import HOST, PORT
    url = f"host={HOST} port={PORT} user=postgres dbname={db.name}"
    r = subprocess.run([cli, "audit", "export", "--db", url, "--task", "t-led", "--out", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    task_line = json.loads(open(os.path.join(out, "tasks.jsonl")).read())
    assert (task_line["organization"], task_line["assigner_user"]) == ("acme", {"id": 7, "table": "auth_user"})
    ctx_line = json.loads(open(os.path.join(out, "contexts.jsonl")).read())
    assert (ctx_line["fields"]["organization"], ctx_line["fields"]["app_user"]) == ("acme", "ana")
    r = subprocess.run([cli, "audit", "verify", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # an organization edited in the package: named by file and line
    for name, old, new in (("tasks.jsonl", '"organization":"acme"', '"organization":"globex"'),
                           ("contexts.jsonl", '"app_user":"ana"', '"app_user":"eve"')):
        path = os.path.join(out, name)
        text = open(path).read()
        assert old in text, (name, text[:300])
        open(path, "w").write(text.replace(old, new))
        r = subprocess.run([cli, "audit", "verify", out], capture_output=True, text=True)
        assert r.returncode == 1 and any(l.startswith(f"{name}:1: ") for l in r.stdout.splitlines()), r.stdout
        open(path, "w").write(text)


# --- what a hostile review found (each fixed) -----------------------------------------------


def test_set_task_runs_no_operator_of_the_callers(item):
    """set_task looks a task's organization up as the extension owner: under a pinned
    search_path, by a statement whose every operator is named with its schema. An application
    role's own `=` in its search_path never runs there (it would have run as the owner)."""
    db = item
    with db.app() as c:
        c.execute("""CREATE FUNCTION public.evil_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql
                     SET search_path = pg_catalog AS $$
                     BEGIN
                         IF current_user <> session_user THEN
                             RAISE EXCEPTION 'hijacked: ran as %', current_user;
                         END IF;
                         RETURN texteq(a, b);
                     END $$""")
        c.execute("CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.evil_eq)")
    org_write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("t-op"), org="acme")
    with db.conn(user=APP_ROLE, autocommit=False) as c:
        c.execute("SET search_path = public, pg_catalog")
        c.execute("SELECT set_config('koherent.organization', 'acme', true)")
        c.execute("SELECT koherent.set_task(%s)", [mint("t-op")])
        c.execute("SELECT koherent.verify_token(%s)", [mint("t-op")])
        c.execute("UPDATE item SET qty = 2 WHERE id = 1")
        c.commit()
    assert db.one("SELECT count(*) FROM koherent.provenance_entry WHERE task_id = 't-op'") == 2


def test_a_resolver_cannot_change_the_transaction_it_runs_in(users):
    """Its tracked writes, set_context_id, set_context and set_task fail inside its own
    subtransaction (the resolver fails: no user); settings it changes are undone."""
    db = users
    db.sql("CREATE TABLE accounts.seen (sub text PRIMARY KEY)")
    db.sql("SELECT koherent.track('accounts.seen')")
    db.sql(f"GRANT ALL ON accounts.seen TO {RESOLVER_OWNER}")
    other = db.one("SELECT gen_random_uuid()")
    db.sql(f"""CREATE OR REPLACE FUNCTION accounts.find_user(issuer text, sub text) RETURNS jsonb
               LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
               BEGIN
                   PERFORM pg_catalog.set_config('koherent.organization', 'evil', false);
                   IF sub = 'writes' THEN
                       INSERT INTO accounts.seen VALUES (sub);
                   ELSIF sub = 'moves' THEN
                       PERFORM koherent.set_context_id('{other}');
                   ELSIF sub = 'meta' THEN
                       PERFORM koherent.set_context('{{"forged": true}}');
                   END IF;
                   RETURN jsonb_build_object('ok', sub);
               END $$""")
    db.sql(f"ALTER FUNCTION accounts.find_user(text, text) OWNER TO {RESOLVER_OWNER}")
    for sub in ("writes", "moves", "meta"):
        notices = []
        with db.conn(user=APP_ROLE, autocommit=False) as c:
            c.add_notice_handler(lambda d: notices.append(d.message_primary))
            c.execute("SELECT set_config('koherent.organization', 'acme', false)")
            c.execute("SELECT koherent.set_task(%s)", [mint(f"t-{sub}", rcb=sub)])
            ctx = c.execute("SELECT koherent.current_context_id()").fetchone()[0]
            c.execute(f"INSERT INTO item (id, qty) VALUES ({len(sub)}, 1)")
            c.execute(f"UPDATE item SET qty = 2 WHERE id = {len(sub)}")
            c.commit()
            assert c.execute("SELECT current_setting('koherent.organization')").fetchone()[0] == "acme"
        assert assigner(db, f"t-{sub}") == [(sub, None)], sub
        assert any("may not write tracked tables or change the transaction" in n for n in notices), notices
        # both statements in the transaction's own context, nothing of the resolver's
        assert db.sql(f"SELECT DISTINCT context_id FROM koherent.provenance_entry WHERE task_id = 't-{sub}'") == [(ctx,)]
        assert db.one(f"SELECT metadata FROM koherent.transaction_auth_context WHERE id = '{ctx}'") == {}
    assert db.count("accounts.seen") == 0 and db.count(f"koherent.transaction_auth_context WHERE id = '{other}'") == 0


def test_a_cancel_inside_the_resolver_ends_the_statement(users):
    """statement_timeout (or pg_cancel_backend) while the resolver runs is not the resolver's
    error: the write fails with 57014 and nothing is written."""
    db = users
    db.sql("""CREATE OR REPLACE FUNCTION accounts.find_user(issuer text, sub text) RETURNS jsonb
              LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
              BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$""")
    before = db.state_counts()
    with db.conn(user=APP_ROLE, autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("t-slow")])
        c.execute("SET LOCAL statement_timeout = '300ms'")
        with pytest.raises(psycopg.Error) as e:
            c.execute("INSERT INTO item (id, qty) VALUES (1, 1)")
        assert sqlstate(e) == "57014"
    assert db.state_counts() == before and db.count("item") == 0


def test_organizations_are_compared_as_set(item):
    """The setting is taken as it is (a policy compares it as it is): ' acme ' is not acme."""
    db = item
    org_write(db, "INSERT INTO item (id, qty) VALUES (1, 1)", mint("t-1"), org="acme")
    with pytest.raises(psycopg.Error) as e:
        org_write(db, "UPDATE item SET qty = 2", mint("t-1"), org=" acme ")
    assert sqlstate(e) == "28000"
    org_write(db, "INSERT INTO item (id, qty) VALUES (2, 1)", org=" acme ")
    assert db.sql("SELECT organization FROM koherent.provenance_entry ORDER BY history_id") == [("acme",), (" acme ",)]


def test_readers_by_task_answer_for_another_organizations_task_as_for_none(tenants):
    """Under the policy, as_of_task, revert_plan and revert_task of another organization's task
    say 'no task', as for an unknown one (no existence, no start time)."""
    db = tenants
    db.sql(f"GRANT EXECUTE ON FUNCTION koherent.revert_plan(text, boolean), "
           f"koherent.revert_task(text, boolean, text) TO {db.reader}")
    db.sql(f"GRANT UPDATE ON item TO {db.reader}")
    with as_org(db, db.reader, "acme") as c:
        for task in ("t-globex", "no-such-task"):
            for q in (f"SELECT count(*) FROM koherent.as_of_task(NULL::item, '{task}')",
                      f"SELECT count(*) FROM koherent.revert_plan('{task}')",
                      f"SELECT koherent.revert_task('{task}', false, 'skip')"):
                with pytest.raises(psycopg.Error) as e:
                    c.execute(q)
                assert sqlstate(e) == "P0002" and f'no task "{task}" is recorded' in str(e.value), q
        assert c.execute("SELECT count(*) FROM koherent.as_of_task(NULL::item, 't-acme')").fetchone()[0] == 0
    assert db.one("SELECT qty FROM item WHERE id = 1") == 10
