"""Attribution: verified task tokens (minted by joserfc) stamped on every change: set_task, the
token setting and PostgREST request headers, task and context rows, transactions and savepoints,
require_task, sessions racing on one new task, issuer keys, and the verification settings an
application role cannot weaken."""

import json
import threading
import time
import uuid

import psycopg
import pytest
from joserfc.jwk import OKPKey

from conftest import AHS_X1, APP_ROLE, ISSUER, TEST_PUBLIC_JWK, mint


def attributed(db):
    return db.sql(
        "SELECT kind, row_key, task_id, agent_client_id, issuer, changed_by, db_role "
        "FROM koherent.provenance_entry ORDER BY history_id"
    )


def test_set_task_attributes_every_change_of_the_transaction(item):
    token = mint("task-1")
    with item.app(autocommit=False) as c:
        claims = c.execute("SELECT koherent.set_task(%s)", [token]).fetchone()[0]
        assert claims["tsk"] == "task-1" and claims["act"] == {"sub": "agent-user-3", "cid": "agent-client-9"}
        c.execute("INSERT INTO item (id, qty) VALUES (1, 1), (2, 2)")
        c.execute("UPDATE item SET qty = 5 WHERE id = 1")
        ctx = c.execute("SELECT koherent.current_context_id()").fetchone()[0]
        c.commit()
    assert attributed(item) == [
        ("CREATE", {"id": 1}, "task-1", "agent-client-9", ISSUER, "agent-user-3", APP_ROLE),
        ("CREATE", {"id": 2}, "task-1", "agent-client-9", ISSUER, "agent-user-3", APP_ROLE),
        ("UPDATE", {"id": 1}, "task-1", "agent-client-9", ISSUER, "agent-user-3", APP_ROLE),
    ]
    assert item.one("SELECT DISTINCT context_id FROM koherent.provenance_entry") == ctx
    row = item.one(
        "SELECT row(task_id, parent_task_id, root_task_id, assigner_sub, caller_sub, agent_sub, "
        "agent_client_id, issuer, args_hash, args_hash_algorithm, token = %s, created_at IS NOT NULL)::text "
        "FROM koherent.task", [token])
    assert row == f"(task-1,,task-1,user-1,user-7,agent-user-3,agent-client-9,{ISSUER},{AHS_X1},sha256-canonical-v1,t,t)"
    ctxrow = item.one(
        "SELECT row(task_id, issuer, changed_by, client_id, db_role, client_addr, backend_pid > 0, "
        "txid::text::bigint > 0, metadata)::text FROM koherent.transaction_auth_context")
    assert ctxrow == f"(task-1,{ISSUER},agent-user-3,agent-client-9,{APP_ROLE},127.0.0.1,t,t,{{}})"


def test_the_stored_token_reverifies(item):
    token = mint("task-r")
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [token])
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.commit()
    stored = item.one("SELECT token FROM koherent.task")
    assert item.one("SELECT koherent.verify_token(%s)->>'tsk'", [stored]) == "task-r"


def test_task_row_is_created_once_and_reused(item):
    first, second = mint("task-2", jti="first"), mint("task-2", jti="second")
    for i, tok in enumerate([first, second, first]):
        with item.app(autocommit=False) as c:
            c.execute("SELECT koherent.set_task(%s)", [tok])
            c.execute("INSERT INTO item (id) VALUES (%s)", [i])
            c.commit()
    assert item.sql("SELECT task_id, token_id FROM koherent.task") == [("task-2", "first")]
    assert item.count("koherent.transaction_auth_context") == 3
    assert item.one("SELECT count(DISTINCT task_id) FROM koherent.provenance_entry") == 1


def test_backend_remembers_committed_tasks_only(item):
    # One connection: a rolled-back first write leaves no task row, so the next transaction
    # must still create it; after a commit the backend skips the task upsert, and attribution
    # is the same either way.
    token = mint("task-k")
    with item.app(autocommit=False) as c:
        for i, end in enumerate(["rollback", "commit", "commit", "commit"]):
            c.execute("SELECT koherent.set_task(%s)", [token])
            c.execute("INSERT INTO item (id) VALUES (%s)", [i])
            getattr(c, end)()
            assert item.count("koherent.task") == (0 if end == "rollback" else 1)
    assert item.sql("SELECT task_id FROM koherent.task") == [("task-k",)]
    assert item.sql("SELECT row_key->>'id', task_id, agent_client_id, changed_by FROM koherent.provenance_entry "
                    "ORDER BY history_id") == [(str(i), "task-k", "agent-client-9", "agent-user-3") for i in (1, 2, 3)]
    assert item.count("koherent.transaction_auth_context") == 3
    # the first context row went with the task row's upsert (SQL), the later ones were written
    # directly: every column the same way
    assert item.sql("SELECT task_id, issuer, changed_by, client_id, db_role, application_name, "
                    "client_addr::text, metadata::text, created_at IS NOT NULL FROM "
                    "koherent.transaction_auth_context ORDER BY txid") == [
        ("task-k", ISSUER, "agent-user-3", "agent-client-9", APP_ROLE, "", "127.0.0.1/32", "{}", True)] * 3
    assert item.one("SELECT count(DISTINCT backend_pid)::int * 10 + count(DISTINCT txid)::int "
                    "FROM koherent.transaction_auth_context") == 13
    assert item.one("SELECT bool_and(txid < pg_current_xact_id()) FROM koherent.transaction_auth_context")


def test_set_task_in_pipeline_mode(item):
    # Statements sent without waiting for each answer (one round trip): attribution as usual.
    token = mint("task-p")
    with item.app(autocommit=False) as c:
        for i in range(3):
            with c.pipeline():
                c.execute("SELECT koherent.set_task(%s)", [token])
                c.execute("UPDATE item SET qty = %s WHERE id = 1", [i]) if i else \
                    c.execute("INSERT INTO item (id, qty) VALUES (1, 0)")
                c.execute("SELECT koherent.current_context_id()")
            c.commit()
    assert item.sql("SELECT kind, task_id, changed_by FROM koherent.provenance_entry ORDER BY history_id") == [
        ("CREATE", "task-p", "agent-user-3"), ("UPDATE", "task-p", "agent-user-3"),
        ("UPDATE", "task-p", "agent-user-3")]
    assert item.count("koherent.transaction_auth_context") == 3


def test_args_check(item):
    tok = mint("task-a")
    with item.app() as c:
        assert c.execute("SELECT koherent.set_task(%s, %s::jsonb) ->> 'tsk'", [tok, '{"x": 1}']).fetchone()[0] == "task-a"
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT koherent.set_task(%s, %s::jsonb)", [tok, '{"x": 2}'])
        assert e.value.sqlstate == "28000"
        assert "do not match" in str(e.value) and "args_mismatch" in e.value.diag.message_detail
    assert item.one("SELECT koherent.args_hash(%s::jsonb)", ['{"x": 1}']) == AHS_X1
    assert item.one("SELECT koherent.canonical_args(%s::jsonb)", ['{"b": [1, {"é": "\\n"}], "a": null}']) == \
        '{"a":null,"b":[1,{"é":"\\n"}]}'


def test_set_task_outside_transaction_warns_and_has_no_effect(item):
    notices = []
    with item.app() as c:
        c.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
        c.execute("SELECT koherent.set_task(%s)", [mint("task-w")])
        c.execute("INSERT INTO item (id) VALUES (1)")
    assert notices == [("WARNING", "koherent: koherent.set_task outside a transaction block has no lasting effect")]
    assert attributed(item)[0][2] is None
    assert item.count("koherent.task") == 0


def test_token_by_setting(item):
    tok = mint("task-guc")
    with item.app(autocommit=False) as c:
        c.execute("SELECT set_config('koherent.task_token', %s, true)", [tok])
        assert c.execute("SELECT (koherent.current_task()).task_id").fetchone()[0] == "task-guc"
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.commit()
        # transaction-local: the next transaction has no task
        c.execute("INSERT INTO item (id) VALUES (2)")
        c.commit()
    assert [r[2] for r in attributed(item)] == ["task-guc", None]


def test_token_by_postgrest_request_headers(item):
    tok = mint("task-rest")
    with item.app(autocommit=False) as c:
        c.execute("SELECT set_config('request.headers', %s, true)",
                  [json.dumps({"rekuest-task": tok, "accept": "*/*"})])
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.commit()
    assert attributed(item)[0][2] == "task-rest"


def test_invalid_token_by_setting_fails_the_write(item):
    bad = mint("task-bad", exp=int(time.time()) - 100)
    with item.app(autocommit=False) as c:
        c.execute("SELECT set_config('koherent.task_token', %s, true)", [bad])
        with pytest.raises(psycopg.Error) as e:
            c.execute("INSERT INTO item (id) VALUES (1)")
        assert e.value.sqlstate == "28000" and "expired" in str(e.value)
        c.rollback()
    assert item.state_counts() == (0, 0, 0)
    assert item.count("item") == 0


def test_verified_but_nothing_written_leaves_no_rows(item):
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("task-ro")])
        c.execute("SELECT * FROM item")
        c.execute("UPDATE item SET qty = 1 WHERE false")
        c.commit()
    assert item.state_counts() == (0, 0, 0)


def test_context_never_leaks_into_the_next_transaction(item):
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("task-l")])
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.commit()
        assert c.execute("SELECT koherent.current_task()").fetchone()[0] is None
        c.execute("INSERT INTO item (id) VALUES (2)")
        c.commit()
        c.execute("SELECT koherent.set_task(%s)", [mint("task-l2")])
        c.rollback()
        c.execute("INSERT INTO item (id) VALUES (3)")
        c.commit()
    assert [(r[1]["id"], r[2]) for r in attributed(item)] == [(1, "task-l"), (2, None), (3, None)]
    assert item.sql("SELECT task_id FROM koherent.task") == [("task-l",)]


def test_savepoint_rollback_undoes_set_task(item):
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("outer")])
        c.execute("SAVEPOINT s")
        c.execute("SELECT koherent.set_task(%s)", [mint("inner")])
        c.execute("ROLLBACK TO SAVEPOINT s")
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.commit()
    assert attributed(item)[0][2] == "outer"


def test_set_task_after_first_write_cannot_change_attribution(item):
    with item.app(autocommit=False) as c:
        c.execute("INSERT INTO item (id) VALUES (1)")
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT koherent.set_task(%s)", [mint("late")])
        assert e.value.sqlstate == "55000"
        c.rollback()
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("same")])
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.execute("SELECT koherent.set_task(%s)", [mint("same")])  # the same task again is fine
        c.commit()
    assert [r[2] for r in attributed(item)] == ["same"]


def test_context_metadata_and_caller_chosen_id(item):
    my_id = uuid.uuid4()
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_context_id(%s)", [my_id])
        c.execute("SELECT koherent.set_context(%s::jsonb)", ['{"trace_id": "t-1"}'])
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.execute("SELECT koherent.set_context(%s::jsonb)", ['{"request_id": "r-9"}'])
        assert c.execute("SELECT koherent.current_context_id()").fetchone()[0] == my_id
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT koherent.set_context_id(%s)", [uuid.uuid4()])
        assert e.value.sqlstate == "55000"
        c.rollback()
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_context_id(%s)", [my_id])
        c.execute("SELECT koherent.set_context(%s::jsonb)", ['{"trace_id": "t-1"}'])
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.execute("SELECT koherent.set_context(%s::jsonb)", ['{"request_id": "r-9"}'])
        c.commit()
    assert item.sql("SELECT id, metadata FROM koherent.transaction_auth_context") == [
        (my_id, {"trace_id": "t-1", "request_id": "r-9"})]
    assert item.one("SELECT context_id FROM koherent.provenance_entry") == my_id
    with pytest.raises(psycopg.Error) as e:
        item.sql("SELECT koherent.set_context('[1]'::jsonb)")
    assert e.value.sqlstate == "22023"


def test_caller_chosen_id_already_recorded(item):
    """An id already recorded (a client reusing it, or another transaction's) is refused at the
    first tracked write with a clear 23505 and nothing is written; with a task too (its first
    write goes through the statement that also records the task)."""
    my_id = uuid.uuid4()
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_context_id(%s)", [my_id])
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.commit()
    for token in (None, mint("reused-id")):
        with item.app(autocommit=False) as c:
            if token:
                c.execute("SELECT koherent.set_task(%s)", [token])
            c.execute("SELECT koherent.set_context_id(%s)", [my_id])
            with pytest.raises(psycopg.Error) as e:
                c.execute("INSERT INTO item (id) VALUES (2)")
            assert e.value.sqlstate == "23505"
            assert str(my_id) in e.value.diag.message_primary
            assert "set_context_id" in e.value.diag.message_primary
            assert "new uuid" in e.value.diag.message_hint
            assert e.value.diag.message_detail == "reason: context_id_taken"
            c.rollback()
    assert item.sql("SELECT id FROM item") == [(1,)]
    assert item.sql("SELECT id FROM koherent.transaction_auth_context") == [(my_id,)]
    assert item.one("SELECT count(*) FROM koherent.task") == 0
    # an id of koherent's choosing, handed out by current_context_id(), is the same case
    with item.app(autocommit=False) as c:
        taken = c.execute("SELECT koherent.current_context_id()").fetchone()[0]
        c.execute("INSERT INTO item (id) VALUES (3)")
        c.commit()
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_context_id(%s)", [taken])
        with pytest.raises(psycopg.Error) as e:
            c.execute("UPDATE item SET id = 4 WHERE id = 3")
        assert e.value.sqlstate == "23505"
        c.rollback()
    assert item.sql("SELECT id FROM item ORDER BY id") == [(1,), (3,)]


def test_require_task(db):
    db.sql("CREATE TABLE secret (id int PRIMARY KEY, v text)")
    db.sql("SELECT koherent.track('secret', require_task => true)")
    db.sql(f"GRANT ALL ON secret TO {APP_ROLE}")
    assert db.one("SELECT require_task FROM koherent.tracked_table") is True
    for stmt in ["INSERT INTO secret VALUES (1, 'a')", "COPY secret FROM PROGRAM 'echo 1'"]:
        with db.app() as c:
            with pytest.raises(psycopg.Error) as e:
                c.execute(stmt)
            assert e.value.sqlstate in ("28000", "42501")
    with pytest.raises(psycopg.Error) as e:
        db.sql("INSERT INTO secret VALUES (1, 'a')")
    assert e.value.sqlstate == "28000" and "requires a verified task" in str(e.value)
    assert db.state_counts() == (0, 0, 0) and db.count("secret") == 0
    with db.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("task-s")])
        c.execute("INSERT INTO secret VALUES (1, 'a')")
        c.commit()
    assert db.sql("SELECT task_id FROM koherent.provenance_entry") == [("task-s",)]
    # an unattributed transaction that already wrote another table still cannot write this one
    db.sql("CREATE TABLE free (id int PRIMARY KEY)")
    db.sql("SELECT koherent.track('free')")
    with db.conn(autocommit=False) as c:
        c.execute("INSERT INTO free VALUES (1)")
        with pytest.raises(psycopg.Error) as e:
            c.execute("UPDATE secret SET v = 'b'")
        assert e.value.sqlstate == "28000"


def test_32_sessions_racing_on_one_new_task(item):
    token = mint("race-task")
    barrier = threading.Barrier(32)
    errors = []

    def worker(i):
        try:
            with item.app(autocommit=False) as c:
                c.execute("SELECT koherent.set_task(%s)", [token])
                barrier.wait()
                c.execute("INSERT INTO item (id) VALUES (%s)", [i])
                c.commit()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert item.sql("SELECT task_id, count(*) FROM koherent.task GROUP BY 1") == [("race-task", 1)]
    assert item.one("SELECT count(*) FROM koherent.provenance_entry WHERE task_id = 'race-task'") == 32
    assert item.count("koherent.transaction_auth_context") == 32


def test_key_management(db):
    key = OKPKey.generate_key("Ed25519", parameters={"kid": "pem-key"})
    pem = key.as_pem(private=False).decode()
    db.sql("SELECT koherent.add_issuer_key('other', 'pem-key', %s)", [pem])
    db.sql("SELECT koherent.add_issuer_key('third', 'jwk-key', %s)", [json.dumps(TEST_PUBLIC_JWK)])
    assert db.sql("SELECT issuer, kid, active FROM koherent.issuer_key ORDER BY 1, 2") == [
        ("other", "pem-key", True), ("rekuest", "koherent-test-key", True), ("third", "jwk-key", True)]
    assert db.one("SELECT jwk->>'x' FROM koherent.issuer_key WHERE issuer = 'third'") == TEST_PUBLIC_JWK["x"]
    tok = mint("k", key=key, kid="pem-key", iss="other")
    assert db.one("SELECT koherent.verify_token(%s)->>'iss'", [tok]) == "other"
    # replacing and re-adding returns the count
    assert db.one("SELECT koherent.add_issuer_jwks('rekuest', %s::jsonb)",
                  [json.dumps({"keys": [TEST_PUBLIC_JWK]})]) == 1
    # revocation reaches another session that has the key cached
    tok1 = mint("rev")
    with db.conn() as other:
        assert other.execute("SELECT koherent.verify_token(%s)->>'tsk'", [tok1]).fetchone()[0] == "rev"
        db.sql("SELECT koherent.revoke_issuer_key('rekuest', 'koherent-test-key')")
        with pytest.raises(psycopg.Error) as e:
            other.execute("SELECT koherent.verify_token(%s)", [tok1])
        assert e.value.sqlstate == "28000" and "untrusted_issuer" in e.value.diag.message_detail
    assert db.one("SELECT active FROM koherent.issuer_key WHERE issuer = 'rekuest'") is False
    with pytest.raises(psycopg.Error) as e:
        db.sql("SELECT koherent.revoke_issuer_key('rekuest', 'koherent-test-key')")
    assert e.value.sqlstate == "42704"
    small_order = json.dumps({"kty": "OKP", "crv": "Ed25519", "x": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
    for bad, state in [('{"kty":"RSA"}', "22023"), ("not a key", "22023"), (small_order, "22023"),
                       (json.dumps({**TEST_PUBLIC_JWK, "d": "PQ_Y54LpnaQZ24wKvkroJ3feOo4FJ2YcvKRmv8l9C5E"}), "22023")]:
        with pytest.raises(psycopg.Error) as e:
            db.sql("SELECT koherent.add_issuer_key('x', 'k', %s)", [bad])
        assert e.value.sqlstate == state
    assert db.one("SELECT count(*) FROM koherent.issuer_key WHERE issuer = 'x'") == 0


def test_clock_skew_and_eddsa_settings(db):
    future = mint("skew", iat=int(time.time()) + 30)
    eddsa = mint("ed", alg="EdDSA")
    with db.conn() as c:
        for tok, reason in [(future, "issued_in_future"), (eddsa, "algorithm_not_accepted")]:
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT koherent.verify_token(%s)", [tok])
            assert reason in e.value.diag.message_detail
        c.execute("SET koherent.clock_skew = 60")
        c.execute("SET koherent.accept_eddsa_alg = on")
        assert c.execute("SELECT koherent.verify_token(%s)->>'tsk'", [future]).fetchone()[0] == "skew"
        assert c.execute("SELECT koherent.verify_token(%s)->>'tsk'", [eddsa]).fetchone()[0] == "ed"
    with db.conn() as c:
        c.execute("SET koherent.audience = '*'")
        assert c.execute("SELECT koherent.verify_token(%s)->>'tsk'", [mint("any", aud=["elsewhere"])]).fetchone()[0] == "any"
        c.execute("RESET koherent.audience")
        c.execute("SET koherent.audience = ''")
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT koherent.verify_token(%s)", [mint("none")])
        assert e.value.sqlstate == "28000" and "audience_not_configured" in e.value.diag.message_detail


@pytest.mark.parametrize("setting, value", [
    ("koherent.audience", "*"), ("koherent.clock_skew", "3600"), ("koherent.accept_eddsa_alg", "on")])
def test_application_roles_cannot_weaken_verification(item, setting, value):
    weak = {"koherent.audience": mint("w", aud=["elsewhere"]),
            "koherent.clock_skew": mint("w", iat=int(time.time()) + 600),
            "koherent.accept_eddsa_alg": mint("w", alg="EdDSA")}[setting]
    with item.app() as c:
        # Before the library is loaded PostgreSQL keeps a placeholder; loading it discards a
        # placeholder that a non-superuser set for a superuser-only setting.
        c.execute(f"SET {setting} = '{value}'")
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT koherent.verify_token(%s)", [weak])
        assert e.value.sqlstate == "28000"
        with pytest.raises(psycopg.Error) as e:
            c.execute(f"SET {setting} = '{value}'")
        assert e.value.sqlstate == "42501"
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT set_config(%s, %s, false)", [setting, value])
        assert e.value.sqlstate == "42501"


def test_role_app_user_or_organization_changed_after_the_first_write_is_refused(item):
    """A transaction has one context, which records the role SET ROLE chose, koherent.app_user
    and koherent.organization at its first tracked write: a later write under others would be
    recorded under the first write's. Refused (55000 context_changed), nothing of it written;
    changes before the first write, and writes under the same ones again, go through."""
    item.sql("CREATE ROLE koherent_test_r1")
    item.sql("CREATE ROLE koherent_test_r2")
    try:
        item.sql("GRANT SELECT, INSERT ON item TO koherent_test_r1, koherent_test_r2")
        cases = [
            ("SET LOCAL ROLE koherent_test_r1", "SET LOCAL ROLE koherent_test_r2", "role"),
            ("SELECT set_config('koherent.app_user', 'ana@acme', true)",
             "SELECT set_config('koherent.app_user', 'bob@acme', true)", "koherent.app_user"),
            ("SELECT set_config('koherent.organization', 'acme', true)",
             "SELECT set_config('koherent.organization', 'other', true)", "koherent.organization"),
            ("SELECT 1", "SELECT set_config('koherent.app_user', 'late@acme', true)", "koherent.app_user"),
        ]
        for n, (first, then, what) in enumerate(cases):
            with item.conn(autocommit=False) as c:
                c.execute("SELECT set_config('koherent.app_user', 'early@acme', true)")  # before the first write
                c.execute(first)
                c.execute(f"INSERT INTO item (id, qty) VALUES ({100 + n}, 1)")
                c.execute(f"INSERT INTO item (id, qty) VALUES ({200 + n}, 1)")  # the same again: fine
                c.execute("RESET ROLE")
                c.execute(then)
                with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                    c.execute(f"INSERT INTO item (id, qty) VALUES ({300 + n}, 1)")
                assert e.value.diag.message_detail == "reason: context_changed"
                assert what in e.value.diag.message_primary and "first tracked write" in e.value.diag.message_hint
                c.rollback()
            # (rolled back: nothing of the transaction is there)
            assert item.one(f"SELECT count(*) FROM item WHERE id IN ({100 + n}, {200 + n}, {300 + n})") == 0
        # committed: both writes under the first write's role and user, one context
        with item.conn(autocommit=False) as c:
            c.execute("SET LOCAL ROLE koherent_test_r1")
            c.execute("SELECT set_config('koherent.app_user', 'ana@acme', true)")
            c.execute("INSERT INTO item (id, qty) VALUES (1, 1)")
            c.execute("INSERT INTO item (id, qty) VALUES (2, 1)")
            c.commit()
        assert item.sql("SELECT row_key->>'id', effective_role, app_user FROM koherent.provenance_entry "
                        "ORDER BY history_id") == [("1", "koherent_test_r1", "ana@acme"),
                                                   ("2", "koherent_test_r1", "ana@acme")]
        assert item.one("SELECT count(DISTINCT context_id) FROM koherent.provenance_entry") == 1
    finally:
        item.sql("DROP OWNED BY koherent_test_r1, koherent_test_r2")
        item.sql("DROP ROLE koherent_test_r1")
        item.sql("DROP ROLE koherent_test_r2")


def test_set_task_inside_a_procedure_applies_until_its_commit_without_a_warning(item):
    """A procedure run by CALL outside a transaction block: set_task applies to the writes up to
    the procedure's COMMIT (no warning that it has none), not after it."""
    item.sql("CREATE PROCEDURE proc_task(tok text) LANGUAGE plpgsql AS $$ BEGIN "
             "PERFORM koherent.set_task(tok); INSERT INTO item (id, qty) VALUES (1, 1); COMMIT; "
             "INSERT INTO item (id, qty) VALUES (2, 2); END $$")
    notices = []
    with item.conn() as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("SELECT koherent.current_context_id()")
        c.execute("CALL proc_task(%s)", [mint("task-in-proc")])
    assert not [n for n in notices if "no lasting effect" in (n or "")], notices
    assert item.sql("SELECT row_key->>'id', task_id FROM koherent.provenance_entry ORDER BY history_id") == [
        ("1", "task-in-proc"), ("2", None)]
    with item.conn() as c:   # outside a procedure, still the warning
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("SELECT koherent.set_task(%s)", [mint("task-in-proc")])
    assert any("no lasting effect" in (n or "") for n in notices), notices


@pytest.mark.parametrize("name", ["koherent.app_user", "koherent.organization", "koherent.task_token"])
def test_a_session_setting_carried_over_from_an_earlier_transaction_is_refused(item, name):
    """koherent.app_user, koherent.organization and koherent.task_token are what the transaction
    that writes says: a value set for the session by an earlier transaction (SET without LOCAL,
    set_config(..., false); behind a transaction pooler, another client's) makes a tracked write
    fail with 55000 setting_carried_over, nothing written. A value set in the writing transaction
    (SET LOCAL, set_config(..., true), or SET in it) and a RESET are taken; a role's default
    (ALTER ROLE ... SET, which the role may set for itself) is refused."""
    value = mint("t-carried") if name == "koherent.task_token" else "acme"
    col = {"koherent.app_user": "app_user", "koherent.organization": "organization",
           "koherent.task_token": "task_id"}[name]
    shown = "t-carried" if name == "koherent.task_token" else "acme"
    for how in ("SET {n} = '{v}'", "SELECT set_config('{n}', '{v}', false)"):
        with item.conn(user=APP_ROLE) as c:   # autocommit: the SET is a transaction of its own
            c.execute(how.format(n=name, v=value))
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                c.execute("INSERT INTO item (id, qty) VALUES (1, 1)")
            assert e.value.diag.message_primary.startswith(f"koherent: {name} was not set by this transaction")
            assert e.value.diag.message_detail.startswith("reason: setting_carried_over")
            assert "SET LOCAL" in e.value.diag.message_hint
            # set again in the writing transaction (session-level or local): taken
            c.execute("BEGIN")
            c.execute(how.format(n=name, v=value))
            c.execute("INSERT INTO item (id, qty) VALUES (2, 1)")
            c.execute("COMMIT")
            c.execute("BEGIN")
            c.execute(f"SET LOCAL {name} = '{value}'")
            c.execute("INSERT INTO item (id, qty) VALUES (3, 1)")
            c.execute("COMMIT")
            # RESET: the session's value is gone, the write is the transaction's own
            c.execute(f"RESET {name}")
            c.execute("INSERT INTO item (id, qty) VALUES (4, 1)")
        assert item.sql(f"SELECT row_key->>'id', {col} FROM koherent.provenance_entry ORDER BY history_id") == [
            ("2", shown), ("3", shown), ("4", None)]
        item.sql("DELETE FROM item")
        item.sql("DELETE FROM koherent_history.item")
    # a role's default, which the role may set for itself (ALTER ROLE ... SET), is every
    # pooled client's: refused too; set in the transaction, taken
    with item.conn(user=APP_ROLE) as c:
        c.execute("SELECT koherent.current_context_id()")   # (the library defines the setting)
        c.execute(f"ALTER ROLE {APP_ROLE} IN DATABASE {item.name} SET {name} = '{value}'")
    try:
        with item.conn(user=APP_ROLE) as c:
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                c.execute("INSERT INTO item (id, qty) VALUES (5, 1)")
            assert e.value.diag.message_detail.startswith("reason: setting_carried_over")
            c.execute("BEGIN")
            c.execute(f"SET LOCAL {name} = '{value}'")
            c.execute("INSERT INTO item (id, qty) VALUES (6, 1)")
            c.execute("COMMIT")
        assert item.sql(f"SELECT row_key->>'id', {col} FROM koherent.provenance_entry") == [("6", shown)]
    finally:
        item.sql(f"ALTER ROLE {APP_ROLE} IN DATABASE {item.name} RESET {name}")
