"""The security model (SECURITY.md) through SQL: forged tokens, each refused for its reason;
what an application role is denied (history, koherent's tables and internal functions, the
triggers); no setting or function makes a write attributed; history readable only when granted;
an error leaves the session's next transaction clean."""

import base64
import json
import time

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from conftest import APP_ROLE, TEST_PRIVATE_JWK, claims, mint


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


SEED = base64.urlsafe_b64decode(TEST_PRIVATE_JWK["d"] + "=")
SK = Ed25519PrivateKey.from_private_bytes(SEED)
OTHER_KEY = OKPKey.generate_key("Ed25519", parameters={"kid": "koherent-test-key"})


def raw(header, payload, sk=SK):
    """Sign arbitrary header/payload text with the test key (no library checks in the way)."""
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    si = f"{b64(h.encode())}.{b64(p.encode())}"
    return f"{si}.{b64(sk.sign(si.encode()))}"


H = {"typ": "JWT", "alg": "Ed25519", "kid": "koherent-test-key"}


def without(name):
    c = claims("forged")
    c.pop(name)
    return c


def with_claim(**kw):
    c = claims("forged")
    c.update(kw)
    return c


def forged_cases():
    good = mint("forged")
    h, p, s = good.split(".")
    sig = base64.urlsafe_b64decode(s + "==")
    flipped = bytearray(sig)
    flipped[5] ^= 1
    # S + L: same signature value, non-canonical encoding
    L = 2**252 + 27742317777372353535851937790883648493
    s_int = int.from_bytes(sig[32:], "little") + L
    non_canonical = sig[:32] + s_int.to_bytes(32, "little")
    now = int(time.time())
    payload = json.dumps(claims("forged"))
    cases = [
        # (name, token, sqlstate, reason)
        ("alg none", raw({**H, "alg": "none"}, claims("forged")), "28000", "algorithm_not_accepted"),
        ("alg none unsigned", f"{b64(json.dumps({**H, 'alg': 'none'}).encode())}.{p}.", "28000", "algorithm_not_accepted"),
        ("alg HS256", raw({**H, "alg": "HS256"}, claims("forged")), "28000", "algorithm_not_accepted"),
        ("alg RS256", raw({**H, "alg": "RS256"}, claims("forged")), "28000", "algorithm_not_accepted"),
        ("alg ES256", raw({**H, "alg": "ES256"}, claims("forged")), "28000", "algorithm_not_accepted"),
        ("alg EdDSA (not allowed)", mint("forged", alg="EdDSA"), "28000", "algorithm_not_accepted"),
        ("alg missing", raw({"kid": "koherent-test-key"}, claims("forged")), "22023", "invalid_header"),
        ("alg null", raw({**H, "alg": None}, claims("forged")), "22023", "invalid_header"),
        ("kid missing", raw({"alg": "Ed25519"}, claims("forged")), "22023", "invalid_header"),
        ("kid empty", raw({**H, "kid": ""}, claims("forged")), "22023", "invalid_header"),
        ("kid number", raw({**H, "kid": 1}, claims("forged")), "22023", "invalid_header"),
        ("kid unknown", mint("forged", kid="no-such-key"), "28000", "unknown_key"),
        ("kid of another issuer", raw({**H, "kid": "other-issuer-key"}, claims("forged")), "28000", "unknown_key"),
        ("kid cyrillic e", raw({**H, "kid": "koherent-test-k\u0435y"}, claims("forged")), "28000", "unknown_key"),
        ("kid zero-width", raw({**H, "kid": "koherent-test-key\u200b"}, claims("forged")), "28000", "unknown_key"),
        ("kid fullwidth", raw({**H, "kid": "ｋoherent-test-key"}, claims("forged")), "28000", "unknown_key"),
        ("kid trailing space", raw({**H, "kid": "koherent-test-key "}, claims("forged")), "28000", "unknown_key"),
        ("kid NUL", raw({**H, "kid": "koherent-test-key\u0000"}, claims("forged")), "28000", "unknown_key"),
        ("issuer unknown", mint("forged", iss="evil"), "28000", "untrusted_issuer"),
        ("issuer case", mint("forged", iss="Rekuest"), "28000", "untrusted_issuer"),
        ("issuer missing", raw(H, without("iss")), "22023", "invalid_claim"),
        ("issuer number", raw(H, with_claim(iss=5)), "22023", "invalid_claim"),
        ("signature flipped", f"{h}.{p}.{b64(bytes(flipped))}", "28000", "bad_signature"),
        ("signature truncated", f"{h}.{p}.{b64(sig[:63])}", "28000", "bad_signature"),
        ("signature empty", f"{h}.{p}.", "28000", "bad_signature"),
        ("signature zero", f"{h}.{p}.{b64(bytes(64))}", "28000", "bad_signature"),
        ("signature non-canonical S", f"{h}.{p}.{b64(non_canonical)}", "28000", "bad_signature"),
        ("signature of another key", mint("forged", key=OTHER_KEY), "28000", "bad_signature"),
        ("payload altered", f"{h}.{b64(payload.replace('forged', 'forgeD').encode())}.{s}", "28000", "bad_signature"),
        ("header altered", f"{b64(json.dumps({**H, 'typ': 'JOSE'}).encode())}.{p}.{s}", "28000", "bad_signature"),
        ("expired", mint("forged", exp=now - 5), "28000", "expired"),
        # hours ahead, not minutes: the cases are minted when pytest collects, long before this test runs
        ("iat in the future", mint("forged", iat=now + 6 * 3600, exp=now + 12 * 3600), "28000", "issued_in_future"),
        ("nbf ahead", mint("forged", nbf=now + 6 * 3600, exp=now + 12 * 3600), "28000", "not_yet_valid"),
        ("audience missing", raw(H, without("aud")), "22023", "invalid_claim"),
        ("audience empty", mint("forged", aud=[]), "22023", "invalid_claim"),
        ("audience other", mint("forged", aud=["elsewhere"]), "28000", "wrong_audience"),
        ("audience substring", mint("forged", aud=["koherent-staging"]), "28000", "wrong_audience"),
        ("audience object", raw(H, with_claim(aud={"koherent": True})), "22023", "invalid_claim"),
        ("exp missing", raw(H, without("exp")), "22023", "invalid_claim"),
        ("exp string", raw(H, with_claim(exp=str(now + 60))), "22023", "invalid_claim"),
        ("exp float in the past", raw(H, with_claim(exp=now - 0.5)), "28000", "expired"),
        ("iat missing", raw(H, without("iat")), "22023", "invalid_claim"),
        ("sub missing", raw(H, without("sub")), "22023", "invalid_claim"),
        ("act missing", raw(H, without("act")), "22023", "invalid_claim"),
        ("act.cid missing", raw(H, with_claim(act={"sub": "a"})), "22023", "invalid_claim"),
        ("act.sub number", raw(H, with_claim(act={"sub": 1, "cid": "c"})), "22023", "invalid_claim"),
        ("jti missing", raw(H, without("jti")), "22023", "invalid_claim"),
        ("tsk missing", raw(H, without("tsk")), "22023", "invalid_claim"),
        ("tsk number", raw(H, with_claim(tsk=42)), "22023", "invalid_claim"),
        ("rtk missing", raw(H, without("rtk")), "22023", "invalid_claim"),
        ("rcb missing", raw(H, without("rcb")), "22023", "invalid_claim"),
        ("ahs missing", raw(H, without("ahs")), "22023", "invalid_claim"),
        ("aha missing", raw(H, without("aha")), "22023", "invalid_claim"),
        ("ptk number", raw(H, with_claim(ptk=3)), "22023", "invalid_claim"),
        ("bad base64", f"{h}.{p}*.{s}", "22023", "malformed_base64"),
        ("padding", f"{h}=.{p}.{s}", "22023", "malformed_base64"),
        ("standard alphabet", f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}" if ("-" in s or "_" in s) else "a+b.c.d", "22023", "malformed_base64"),
        ("two segments", f"{h}.{p}", "22023", "malformed_segments"),
        ("four segments", f"{good}.{s}", "22023", "malformed_segments"),
        ("empty", "", "22023", "malformed_segments"),
        ("Bearer prefix", f"Bearer {good}", "22023", "malformed_base64"),
        ("header not JSON", raw("{nope", claims("forged")), "22023", "malformed_json"),
        ("payload not JSON", raw(H, "[1, 2"), "22023", "malformed_json"),
        ("payload array", raw(H, "[1, 2]"), "22023", "malformed_json"),
        ("duplicate claim", raw(H, payload.replace("{", '{"tsk": "other", ', 1)), "22023", "duplicate_member"),
        ("duplicate header", raw('{"alg":"none","alg":"Ed25519","kid":"koherent-test-key"}', payload), "22023", "duplicate_member"),
        ("header extra member", raw({**H, "zip": "DEF"}, claims("forged")), "22023", "header_member_not_allowed"),
        ("crit", raw({**H, "crit": ["exp"]}, claims("forged")), "22023", "invalid_header"),
        ("oversized header", raw({**H, "x5u": "u" * 600}, claims("forged")), "22023", "too_large"),
        ("oversized payload", raw(H, with_claim(pad="p" * 130_000)), "22023", "too_large"),
        ("oversized signature", f"{h}.{p}.{b64(bytes(1100))}", "22023", "too_large"),
    ]
    return cases


CASES = forged_cases()


def test_there_are_at_least_50_distinct_cases():
    assert len(CASES) >= 50
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({c[1] for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def forged_db(template):
    """One database for all forged-token cases (each case asserts nothing was written)."""
    from conftest import Db, ITEM_DDL, connect
    name = "t_forged_tokens"
    with connect() as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        c.execute(f"ALTER DATABASE {name} SET koherent.audience = 'koherent'")
    db = Db(name)
    db.sql(ITEM_DDL)
    db.sql("SELECT koherent.track('item')")
    db.sql("SELECT koherent.add_issuer_key('other-issuer', 'other-issuer-key', %s)",
           [json.dumps(OKPKey.generate_key("Ed25519").as_dict(private=False))])
    db.sql(f"GRANT ALL ON item TO {APP_ROLE}")
    yield db
    with connect() as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize("name, token, state, reason", CASES, ids=[c[0] for c in CASES])
def test_forged_token_is_refused_for_its_reason(forged_db, name, token, state, reason):
    # an empty setting means "no token" (the write is then unattributed), so only set_task is asked
    for via in ("set_task", "setting") if token else ("set_task",):
        with forged_db.app(autocommit=False) as c:
            with pytest.raises(psycopg.Error) as e:
                if via == "set_task":
                    c.execute("SELECT koherent.set_task(%s)", [token])
                else:
                    c.execute("SELECT set_config('koherent.task_token', %s, true)", [token])
                c.execute("INSERT INTO item (id) VALUES (1)")
            assert e.value.sqlstate == state, (via, str(e.value))
            assert e.value.diag.message_detail.startswith(f"reason: {reason}"), (via, e.value.diag.message_detail)
            if len(token) > 20:
                assert token not in str(e.value) and token[-20:] not in (e.value.diag.message_detail or "")
            c.rollback()
    assert forged_db.state_counts() == (0, 0, 0)
    assert forged_db.count("item") == 0


def test_the_real_token_passes_in_the_same_setup(forged_db):
    with forged_db.app(autocommit=False) as c:
        assert c.execute("SELECT koherent.set_task(%s)->>'tsk'", [mint("real")]).fetchone()[0] == "real"
        c.rollback()


APP_DENIED = [
    "INSERT INTO koherent_history.item (history_id, history_kind, history_date) VALUES (1, 'CREATE', now())",
    "UPDATE koherent_history.item SET qty = 0",
    "DELETE FROM koherent_history.item",
    "TRUNCATE koherent_history.item",
    "SELECT * FROM koherent_history.item",
    "INSERT INTO koherent.task (issuer, task_id, root_task_id, assigner_sub, caller_sub, agent_sub, agent_client_id, "
    "token_id, args_hash, args_hash_algorithm, claims, token) VALUES ('rekuest','t','t','a','b','c','d','e','f','g','{}','x')",
    "UPDATE koherent.task SET agent_client_id = 'x'",
    "DELETE FROM koherent.transaction_auth_context",
    "INSERT INTO koherent.transaction_auth_context (id, txid, db_role, backend_pid) VALUES (gen_random_uuid(), '1', 'x', 1)",
    "UPDATE koherent.transaction_auth_context SET task_id = 'forged'",
    "TRUNCATE koherent.task",
    "INSERT INTO koherent.issuer_key_store (issuer, kid, public_key) VALUES ('evil', 'k', '\\x00')",
    "DELETE FROM koherent.issuer_key_store",
    "SELECT koherent.add_issuer_jwks('evil', '{\"keys\": []}')",
    "SELECT koherent.add_issuer_key('evil', 'k', '{}')",
    "SELECT koherent.revoke_issuer_key('rekuest', 'koherent-test-key')",
    "SELECT koherent._write_context(false, 'item'::regclass)",
    "SELECT koherent._invalidate_keys('item'::regclass)",
    "SELECT koherent._summarize('koherent_history.item'::regclass::oid)",
    "SELECT koherent.track('item')",
    "SELECT koherent.untrack('item')",
    "SELECT * FROM koherent.provenance_entry",
    "SELECT * FROM koherent.effective_change",
    "SELECT * FROM koherent.task",
    "SELECT * FROM koherent.transaction_auth_context",
    "SELECT nextval('koherent.history_id_seq')",
    "ALTER TABLE item DISABLE TRIGGER koherent_history_insert",
    "ALTER TABLE item DISABLE TRIGGER ALL",
    "DROP TRIGGER koherent_history_update ON item",
    "SET session_replication_role = replica",
    "ALTER TABLE koherent_history.item DROP COLUMN qty",
    # the history writer on a table of one's own would write rows into item's history
    "DO $$ BEGIN CREATE TABLE mine (id bigint PRIMARY KEY, qty int); "
    "CREATE TRIGGER forge AFTER INSERT ON mine REFERENCING NEW TABLE AS n FOR EACH STATEMENT "
    "EXECUTE FUNCTION koherent._history_trigger('item', 'f', 'id', 'qty'); END $$",
]


@pytest.mark.parametrize("stmt", APP_DENIED)
def test_application_role_is_denied(item, stmt):
    item.sql("INSERT INTO item (id, qty) VALUES (1, 1)")
    before = item.state_counts()
    with item.app() as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute(stmt)
        assert e.value.sqlstate in ("42501", "42809"), str(e.value)
    assert item.state_counts() == before
    assert item.one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'item'::regclass AND tgenabled = 'O'") == 4


def test_no_setting_or_function_makes_a_write_attributed(item):
    with item.app(autocommit=False) as c:
        # settings a client can reach carry tokens in, never a verdict out
        for name, value in [("koherent.task_id", "forged"), ("koherent.verified", "true"),
                            ("request.jwt.claims", '{"tsk": "forged"}')]:
            try:  # a placeholder before the library is loaded, refused after (prefix reserved)
                c.execute("SELECT set_config(%s, %s, true)", [name, value])
            except psycopg.Error:
                c.rollback()
        c.execute("SELECT koherent.set_context(%s::jsonb)", ['{"task_id": "forged", "issuer": "rekuest"}'])
        c.execute("INSERT INTO item (id) VALUES (1)")
        c.commit()
    assert item.sql("SELECT task_id, issuer, changed_by FROM koherent.provenance_entry") == [(None, None, None)]


def test_history_readable_only_when_granted(item):
    item.sql("INSERT INTO item (id) VALUES (1)")
    item.sql(f"GRANT SELECT ON koherent.provenance_entry, koherent.effective_change TO {APP_ROLE}")
    with item.app() as c:
        assert c.execute("SELECT kind FROM koherent.provenance_entry").fetchall() == [("CREATE",)]
        assert c.execute("SELECT count(*) FROM koherent.effective_change").fetchone()[0] == 6
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT * FROM koherent_history.item")
        assert e.value.sqlstate == "42501"


def test_error_in_one_transaction_leaves_the_next_clean(item):
    item.sql("SELECT koherent.track('item', require_task => true)")
    with item.app(autocommit=False) as c:
        c.execute("SELECT koherent.set_task(%s)", [mint("t-err")])
        with pytest.raises(psycopg.Error):
            c.execute("SELECT koherent.set_task('x.y.z')")
        c.rollback()
        with pytest.raises(psycopg.Error) as e:
            c.execute("INSERT INTO item (id) VALUES (1)")
        assert e.value.sqlstate == "28000"
        c.rollback()
        c.execute("SELECT koherent.set_task(%s)", [mint("t-ok")])
        c.execute("INSERT INTO item (id) VALUES (2)")
        c.commit()
        # an error raised inside Rust code surfaces as an SQL error, and the session goes on
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT koherent.set_context(%s::jsonb)", ["[" * 10 + "]" * 10])
        assert e.value.sqlstate == "22023"
        c.rollback()
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT * FROM koherent._parse_jwks('{\"keys\": 5}')")
        assert e.value.sqlstate in ("22023", "42501")
        c.rollback()
        assert c.execute("SELECT 1").fetchone()[0] == 1
    assert item.sql("SELECT row_key, task_id FROM koherent.provenance_entry") == [({"id": 2}, "t-ok")]
