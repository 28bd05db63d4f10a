"""The differential corpus: provenance tokens for koherent and authentikate to judge.

Every case is minted with joserfc (the library the real issuer uses) where joserfc will produce
it, and built by hand (header and payload bytes signed with the test key) where it will not.
"Now" is fixed, so every verdict is deterministic.

A case is a dict:
    id        unique name ("category/what")
    category  the malformation class (or "valid")
    token     the compact JWS
    issuers   {issuer: JWKS} both verifiers trust for this case
    audience  the configured audience ("koherent" or "*")
    accept_eddsa  whether alg EdDSA is allowed
    expect    "accept" or "refuse": what both verifiers must answer
    stricter  None, or why koherent deliberately refuses a token the reference accepts (the
              provenance-token spec's list); then expect is koherent's verdict, "refuse"
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import warnings

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt
from joserfc.jwk import OKPKey

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ed25519_math  # noqa: E402

NOW = 1_750_001_000
ISSUER = "rekuest"
KID = "koherent-test-key"
TEST_PRIVATE_JWK = {
    "kty": "OKP",
    "crv": "Ed25519",
    "x": "Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4",
    "d": "PQ_Y54LpnaQZ24wKvkroJ3feOo4FJ2YcvKRmv8l9C5E",
    "kid": KID,
}
TEST_PUBLIC_JWK = {k: v for k, v in TEST_PRIVATE_JWK.items() if k != "d"}
TEST_KEY = OKPKey.import_key(TEST_PRIVATE_JWK)
TEST_SEED = base64.urlsafe_b64decode(TEST_PRIVATE_JWK["d"] + "=")

OTHER_ISSUER = "other-issuer"
OTHER_KID = "other-key"
OTHER_SEED = bytes(range(1, 33))
ENC_SEED = bytes(range(101, 133))

# The token of the specification (verifies between iat 1750000000 and exp 1750003600).
SPEC_TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZDI1NTE5Iiwia2lkIjoia29oZXJlbnQtdGVzdC1rZXkifQ."
    "eyJpc3MiOiJyZWt1ZXN0IiwiYXVkIjpbImtvaGVyZW50Il0sInN1YiI6IjEiLCJhY3QiOnsic3ViIjoiMSIsImNp"
    "ZCI6InN0YXRpYyJ9LCJpYXQiOjE3NTAwMDAwMDAsImV4cCI6MTc1MDAwMzYwMCwianRpIjoiMDEyMzQ1Njc4OWFi"
    "Y2RlZjAxMjM0NTY3ODlhYmNkZWYiLCJ0c2siOiJ0YXNrLTEiLCJwdGsiOm51bGwsInJ0ayI6InRhc2stMSIsInJj"
    "YiI6IjEiLCJhaHMiOiI1MDQxYmYxZjcxM2RmMjA0Nzg0MzUzZTgyZjZhNGE1MzU5MzFjYjY0ZjFmNGI0YTVhZWFm"
    "ZmNiNzIwOTE4YjIyIiwiYWhhIjoic2hhMjU2LWNhbm9uaWNhbC12MSJ9."
    "RAv1yYmX2V5GBDCwO-Yo-7YPcmGnDnh2QFNHDF_JjbrTnc-WGaSUlznI4wfmkZHtWQ7sgx6dgimFjNGk_iHMCg"
)
AHS_X1 = "5041bf1f713df204784353e82f6a4a535931cb64f1f4b4a5aeaffcb720918b22"

# Why koherent refuses what the reference accepts (provenance-token.md, "deliberately stricter").
STRICTER = {
    "duplicate_member": "duplicate members in header or payload (the reference takes the last)",
    "crit": "crit empty or naming registered members",
    "non_utf8_json": "payload or header not UTF-8 JSON (BOM, UTF-16/32, surrogates)",
    "nan": "NaN / Infinity in JSON",
    "deep_json": "JSON nested deeper than serde_json's limit (128)",
    "small_order_key": "small-order public keys are refused when added",
    "non_strict_signature": "Ed25519 signatures only a non-strict verifier accepts",
    "nul_character": "a NUL character in a claim (PostgreSQL text cannot hold it)",
    "numericdate_ms": "float iat/exp outside years 1..9999, which the reference's pydantic "
    "model reads as milliseconds instead of refusing",
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def public_jwk(seed: bytes, kid: str, **extra) -> dict:
    x = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(x), "kid": kid, **extra}


def jwks(*keys) -> dict:
    return {"keys": list(keys)}


DEFAULT_ISSUERS = {
    ISSUER: jwks(TEST_PUBLIC_JWK),
    OTHER_ISSUER: jwks(public_jwk(OTHER_SEED, OTHER_KID)),
}


def claims(**over) -> dict:
    c = {
        "iss": ISSUER,
        "aud": ["koherent"],
        "sub": "1",
        "act": {"sub": "1", "cid": "static"},
        "iat": NOW - 1000,
        "exp": NOW + 2600,
        "jti": "0123456789abcdef0123456789abcdef",
        "tsk": "task-1",
        "ptk": None,
        "rtk": "task-1",
        "rcb": "1",
        "ahs": AHS_X1,
        "aha": "sha256-canonical-v1",
    }
    for k, v in over.items():
        if v is DROP:
            c.pop(k, None)
        else:
            c[k] = v
    return c


DROP = object()


def mint(c=None, header=None, key=TEST_KEY, alg="Ed25519", kid=KID) -> str:
    """A token minted by joserfc, as the issuer mints it."""
    h = {"alg": alg, "kid": kid, **(header or {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(h, claims() if c is None else c, key, algorithms=[alg])


def _bytes(part) -> bytes:
    if isinstance(part, bytes):
        return part
    if isinstance(part, str):
        return part.encode()
    return json.dumps(part, separators=(",", ":"), ensure_ascii=False).encode()


def sign(seed: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def raw(header, payload, seed=TEST_SEED) -> str:
    """Header and payload (dict, text or bytes) signed by hand with a key's seed."""
    signing_input = f"{b64(_bytes(header))}.{b64(_bytes(payload))}"
    return f"{signing_input}.{b64(sign(seed, signing_input.encode()))}"


H = {"typ": "JWT", "alg": "Ed25519", "kid": KID}


def header(**over) -> dict:
    h = dict(H)
    for k, v in over.items():
        if v is DROP:
            h.pop(k, None)
        else:
            h[k] = v
    return h


def compact(c) -> str:
    return json.dumps(c, separators=(",", ":"), ensure_ascii=False)


def payload_with_raw(member_json: str, c=None) -> str:
    """The claims' JSON text with a hand-written member first (for text json.dumps cannot write)."""
    text = compact(claims() if c is None else c)
    return "{" + member_json + "," + text[1:]


class Corpus:
    def __init__(self):
        self.cases = []

    def add(self, category, name, token, expect, stricter=None, issuers=None,
            audience="koherent", accept_eddsa=False):
        assert expect in ("accept", "refuse")
        assert stricter is None or (stricter in STRICTER and expect == "refuse")
        self.cases.append({
            "id": f"{category}/{name}",
            "category": category,
            "token": token,
            "issuers": DEFAULT_ISSUERS if issuers is None else issuers,
            "audience": audience,
            "accept_eddsa": accept_eddsa,
            "expect": expect,
            "stricter": stricter,
        })


def _header_of_len(chars: int) -> dict:
    """A header whose base64url text is exactly `chars` characters long."""
    base = len(_bytes(header(x5t="")))
    h = header(x5t="a" * (chars * 3 // 4 - base))
    assert len(b64(_bytes(h))) == chars
    return h


def _claims_of_len(chars: int) -> dict:
    """Claims whose base64url JSON (as joserfc writes it) is exactly `chars` characters long."""
    base = len(_bytes(claims(pad="")))
    c = claims(pad="p" * (chars * 3 // 4 - base))
    assert len(b64(_bytes(c))) == chars
    return c


def _signature_with(char_filter) -> str:
    """A valid token whose signature segment contains a character matching char_filter."""
    for i in range(1000):
        t = mint(claims(jti=f"jti-{i}"))
        if any(char_filter(ch) for ch in t.rsplit(".", 1)[1]):
            return t
    raise AssertionError("no such signature found")


def _bad_last_char(segment: str) -> str:
    """The segment with its last character changed so its unused trailing bits are not zero
    (a lenient decoder reads the same bytes; a strict one refuses it)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = alphabet.index(segment[-1])
    used = {2: 0b110000, 3: 0b111100}[len(segment) % 4]
    return segment[:-1] + alphabet[(value & used) | 1]


def _with_length_1_mod_4(segment: str) -> str:
    while len(segment) % 4 != 1:
        segment += "A"
    return segment


def build() -> list:
    c = Corpus()
    good = mint()
    h, p, s = good.split(".")
    sig = unb64(s)

    # ---- valid tokens -------------------------------------------------------------------
    v = "valid"
    c.add(v, "spec token", SPEC_TOKEN, "accept")
    c.add(v, "joserfc default", good, "accept")
    c.add(v, "aud a lone string", mint(claims(aud="koherent")), "accept")
    c.add(v, "aud several", mint(claims(aud=["mikro", "koherent", "kabinet"])), "accept")
    c.add(v, "ptk set", mint(claims(ptk="parent-1", rtk="root-1")), "accept")
    c.add(v, "ptk absent", mint(claims(ptk=DROP)), "accept")
    c.add(v, "unknown claims", mint(claims(org="lab", scope=["a"], n=1, deep={"a": [1, {"b": None}]})), "accept")
    c.add(v, "act with extra member", mint(claims(act={"sub": "1", "cid": "c", "x": 1})), "accept")
    c.add(v, "empty strings", mint(claims(sub="", jti="", tsk="", rcb="", ahs="", rtk="")), "accept")
    c.add(v, "unknown aha", mint(claims(aha="sha1-whatever")), "accept")
    c.add(v, "non-ASCII claims", mint(claims(sub="jürgen", tsk="タスク", org="😀")), "accept")
    c.add(v, "control char in claim", mint(claims(sub="a\u0001b\nc")), "accept")
    c.add(v, "no typ", raw(header(typ=DROP), claims()), "accept")
    c.add(v, "typ other text", mint(header={"typ": "at+jwt"}), "accept")
    c.add(v, "cty", mint(header={"cty": "JWT"}), "accept")
    c.add(v, "x5t and x5t#S256", mint(header={"x5t": "abc", "x5t#S256": "def"}), "accept")
    c.add(v, "x5c empty list", mint(header={"x5c": []}), "accept")
    c.add(v, "x5c strings", mint(header={"x5c": ["MIIB", "MIIC"]}), "accept")
    c.add(v, "jwk object", mint(header={"jwk": {"kty": "OKP"}}), "accept")
    c.add(v, "jku https", mint(header={"jku": "https://rekuest/.well-known/jwks.json"}), "accept")
    c.add(v, "x5u http", mint(header={"x5u": "http://rekuest/cert.pem"}), "accept")
    c.add(v, "b64 true", raw(header(b64=True), claims()), "accept")
    c.add(v, "header whitespace", raw(' { "alg" : "Ed25519" ,\n "kid" : "koherent-test-key" } ', claims()), "accept")
    c.add(v, "payload whitespace", raw(H, json.dumps(claims(), indent=2)), "accept")
    c.add(v, "other trusted issuer", raw(header(kid=OTHER_KID), claims(iss=OTHER_ISSUER), OTHER_SEED), "accept")
    c.add(v, "EdDSA allowed", mint(alg="EdDSA"), "accept", accept_eddsa=True)
    c.add(v, "Ed25519 with EdDSA allowed", good, "accept", accept_eddsa=True)
    c.add(v, "any audience", mint(claims(aud=["elsewhere"])), "accept", audience="*")
    c.add(v, "any audience, lone string", mint(claims(aud="elsewhere")), "accept", audience="*")
    c.add(v, "spec JWKS form (use sig, alg Ed25519)", good, "accept",
          issuers={ISSUER: jwks({**TEST_PUBLIC_JWK, "use": "sig", "alg": "Ed25519"})})
    c.add(v, "big integer 4300 digits", raw(H, payload_with_raw('"big":' + "9" * 4300)), "accept")
    c.add(v, "float overflowing to infinity in unknown claim", raw(H, payload_with_raw('"big":1e400')), "accept")
    c.add(v, "nested 100 deep", raw(H, payload_with_raw('"x":' + "[" * 100 + "]" * 100)), "accept")

    # ---- base64 -------------------------------------------------------------------------
    b = "base64"
    c.add(b, "bad char in header", f"{h}*.{p}.{s}", "refuse")
    c.add(b, "bad char in payload", f"{h}.{p}!.{s}", "refuse")
    c.add(b, "bad char in signature", f"{h}.{p}.{s[:-2]}$$", "refuse")
    c.add(b, "padding on header", f"{h}=.{p}.{s}", "refuse")
    c.add(b, "padding on payload", f"{h}.{p}{'=' * (-len(p) % 4) or '=='}.{s}", "refuse")
    c.add(b, "padding on signature", f"{h}.{p}.{s}==", "refuse")
    t = _signature_with(lambda ch: ch in "-_")
    th, tp, ts = t.split(".")
    c.add(b, "standard alphabet in signature", f"{th}.{tp}.{ts.replace('-', '+').replace('_', '/')}", "refuse")
    c.add(b, "non-zero trailing bits in signature", f"{h}.{p}.{_bad_last_char(s)}", "refuse")
    for extra in ["x", "xy", "xyz"]:
        hh = b64(_bytes(header(kid=KID + extra)))
        if len(hh) % 4 in (2, 3):
            bad = _bad_last_char(hh)
            assert unb64(bad) == unb64(hh) and bad != hh
            c.add(b, f"non-zero trailing bits in header ({len(hh) % 4})",
                  f"{bad}.{p}.{b64(sign(TEST_SEED, f'{bad}.{p}'.encode()))}", "refuse")
    c.add(b, "header length 1 mod 4", f"{_with_length_1_mod_4(h)}.{p}.{s}", "refuse")
    c.add(b, "payload length 1 mod 4", f"{h}.{_with_length_1_mod_4(p)}.{s}", "refuse")
    c.add(b, "leading space", f" {good}", "refuse")
    c.add(b, "trailing newline", f"{good}\n", "refuse")
    c.add(b, "Bearer prefix", f"Bearer {good}", "refuse")
    c.add(b, "percent-encoded", good.replace("-", "%2D") if "-" in good else good.replace("_", "%5F") if "_" in good else f"%{good}", "refuse")

    # ---- segments -----------------------------------------------------------------------
    g = "segments"
    c.add(g, "empty", "", "refuse")
    c.add(g, "one", h, "refuse")
    c.add(g, "two", f"{h}.{p}", "refuse")
    c.add(g, "four", f"{good}.{s}", "refuse")
    c.add(g, "five (JWE shape)", f"{h}.{p}.{s}.{s}.{s}", "refuse")
    c.add(g, "dots only", "..", "refuse")
    c.add(g, "empty signature", f"{h}.{p}.", "refuse")
    c.add(g, "empty payload", f"{h}..{s}", "refuse")
    c.add(g, "empty header", f".{p}.{s}", "refuse")

    # ---- size limits (base64url characters as received) ---------------------------------
    z = "size"
    c.add(z, "header 512 chars", raw(_header_of_len(512), claims()), "accept")
    c.add(z, "header 514 chars", raw(_header_of_len(514), claims()), "refuse")
    c.add(z, "header 400 decoded bytes (534 chars)", raw(header(x5t="a" * (400 - len(_bytes(header(x5t=""))))), claims()), "refuse")
    c.add(z, "payload 128000 chars", raw(H, _claims_of_len(128_000)), "accept")
    c.add(z, "payload 128000 chars via joserfc", mint(_claims_of_len(128_000)), "accept")
    c.add(z, "payload 128002 chars", raw(H, _claims_of_len(128_002)), "refuse")
    c.add(z, "payload 100000 decoded bytes", raw(H, claims(pad="p" * (100_000 - len(_bytes(claims(pad="")))))), "refuse")
    c.add(z, "signature 1024 chars", f"{h}.{p}.{b64(bytes(768))}", "refuse")
    c.add(z, "signature 1026 chars", f"{h}.{p}.{b64(bytes(769))}", "refuse")
    c.add(z, "signature 86 chars plus 938 garbage", f"{h}.{p}.{s}{'A' * 938}", "refuse")
    # the whole token (dots included) at most 129536: a real 512-character header and
    # 128000-character payload leave 1022 characters for the signature (not a valid one)
    big_input = f"{b64(_bytes(_header_of_len(512)))}.{b64(_bytes(_claims_of_len(128_000)))}"
    for total in (129_536, 129_537):
        t = f"{big_input}.{s}{'A' * (total - len(big_input) - 1 - len(s))}"
        assert len(t) == total
        c.add(z, f"token {total} chars", t, "refuse")
    c.add(z, "token 129536 chars, all A", f"{'A' * 512}.{'A' * 128000}.{'A' * 1022}", "refuse")
    c.add(z, "token 1 MB", "a" * 1_000_000, "refuse")

    # ---- header member types ------------------------------------------------------------
    m = "header"
    for name, value in [
        ("typ", 1), ("typ", None), ("typ", ["JWT"]), ("cty", 1), ("kid", 1), ("kid", None),
        ("kid", ["koherent-test-key"]), ("x5t", 1), ("x5t#S256", {}), ("x5c", "MIIB"),
        ("x5c", [1]), ("x5c", None), ("jwk", "k"), ("jwk", None), ("jwk", []),
        ("jku", 5), ("jku", "ftp://rekuest/jwks"), ("jku", "rekuest/jwks"), ("x5u", "cert.pem"),
        ("b64", "true"), ("b64", 1), ("b64", False),
    ]:
        c.add(m, f"{name} = {json.dumps(value)}", raw(header(**{name: value}), claims()), "refuse")
    c.add(m, "b64 false with crit", raw(header(b64=False, crit=["b64"]), claims()), "refuse")
    c.add(m, "kid missing", raw(header(kid=DROP), claims()), "refuse")
    c.add(m, "kid empty", raw(header(kid=""), claims()), "refuse")
    for extra in ["zip", "exp", "iss", "epk", "enc", "url", "nonce", "KID", "ALG"]:
        c.add(m, f"member {extra}", raw(header(**{extra: "x"}), claims()), "refuse")
    c.add(m, "header not JSON", raw("{nope", claims()), "refuse")
    c.add(m, "header an array", raw("[1]", claims()), "refuse")
    c.add(m, "header a string", raw('"Ed25519"', claims()), "refuse")
    c.add(m, "header empty object", raw("{}", claims()), "refuse")

    # ---- crit ---------------------------------------------------------------------------
    k = "crit"
    c.add(k, "empty", raw(header(crit=[]), claims()), "refuse", "crit")
    c.add(k, "names kid", raw(header(crit=["kid"]), claims()), "refuse", "crit")
    c.add(k, "names alg and typ", raw(header(crit=["alg", "typ"]), claims()), "refuse", "crit")
    c.add(k, "names b64 (true)", raw(header(crit=["b64"], b64=True), claims()), "refuse", "crit")
    c.add(k, "names an absent member", raw(header(crit=["exp"]), claims()), "refuse")
    c.add(k, "names an extension", raw(header(crit=["zip"], zip="x"), claims()), "refuse")
    c.add(k, "a string", raw(header(crit="kid"), claims()), "refuse")
    c.add(k, "a number", raw(header(crit=1), claims()), "refuse")
    c.add(k, "list with a number", raw(header(crit=[1]), claims()), "refuse")

    # ---- alg ----------------------------------------------------------------------------
    a = "alg"
    c.add(a, "none signed", raw(header(alg="none"), claims()), "refuse")
    c.add(a, "none unsigned", f"{b64(_bytes(header(alg='none')))}.{p}.", "refuse")
    pub = unb64(TEST_PUBLIC_JWK["x"])
    hs_input = f"{b64(_bytes(header(alg='HS256')))}.{p}"
    c.add(a, "HS256 keyed with the public key",
          f"{hs_input}.{b64(hmac.new(pub, hs_input.encode(), hashlib.sha256).digest())}", "refuse")
    hs_input2 = f"{b64(_bytes(header(alg='HS256')))}.{p}"
    c.add(a, "HS256 keyed with the JWK text",
          f"{hs_input2}.{b64(hmac.new(json.dumps(TEST_PUBLIC_JWK).encode(), hs_input2.encode(), hashlib.sha256).digest())}", "refuse")
    for name in ["RS256", "ES256", "Ed448", "ed25519", "ED25519", "EdDSA ", "Ed25519 "]:
        c.add(a, f"alg {name!r}", raw(header(alg=name), claims()), "refuse")
    c.add(a, "EdDSA not allowed", mint(alg="EdDSA"), "refuse")
    c.add(a, "EdDSA not allowed, hand-signed", raw(header(alg="EdDSA"), claims()), "refuse")
    c.add(a, "alg missing", raw(header(alg=DROP), claims()), "refuse")
    c.add(a, "alg null", raw(header(alg=None), claims()), "refuse")
    c.add(a, "alg a number", raw(header(alg=1), claims()), "refuse")
    c.add(a, "alg a list", raw(header(alg=["Ed25519"]), claims()), "refuse")

    # ---- kid ----------------------------------------------------------------------------
    d = "kid"
    c.add(d, "unknown", mint(kid="no-such-key"), "refuse")
    c.add(d, "of another issuer", raw(header(kid=OTHER_KID), claims()), "refuse")
    c.add(d, "of another issuer, signed by it", raw(header(kid=OTHER_KID), claims(), OTHER_SEED), "refuse")
    c.add(d, "case", raw(header(kid=KID.upper()), claims()), "refuse")
    c.add(d, "trailing space", raw(header(kid=KID + " "), claims()), "refuse")
    c.add(d, "NUL suffix", raw(header(kid=KID + "\u0000"), claims()), "refuse")
    c.add(d, "long", raw(header(kid="k" * 300), claims()), "refuse")

    # ---- issuer -------------------------------------------------------------------------
    i = "iss"
    c.add(i, "untrusted", mint(claims(iss="evil")), "refuse")
    c.add(i, "case", mint(claims(iss="Rekuest")), "refuse")
    c.add(i, "empty", mint(claims(iss="")), "refuse")
    c.add(i, "missing", raw(H, claims(iss=DROP)), "refuse")
    c.add(i, "number", raw(H, claims(iss=5)), "refuse")
    c.add(i, "null", raw(H, claims(iss=None)), "refuse")
    c.add(i, "list", raw(H, claims(iss=[ISSUER])), "refuse")
    c.add(i, "other issuer's name, rekuest's kid and key", raw(H, claims(iss=OTHER_ISSUER)), "refuse")
    c.add(i, "other issuer's kid and key, rekuest's name", raw(header(kid=OTHER_KID), claims(), OTHER_SEED), "refuse")
    c.add(i, "no issuers configured", good, "refuse", issuers={})

    # ---- claims: missing, null, wrong type ----------------------------------------------
    cl = "claims"
    for name in ["aud", "sub", "act", "iat", "exp", "jti", "tsk", "rtk", "rcb", "ahs", "aha"]:
        c.add(cl, f"{name} missing", raw(H, claims(**{name: DROP})), "refuse")
        c.add(cl, f"{name} null", raw(H, claims(**{name: None})), "refuse")
        c.add(cl, f"{name} object", raw(H, claims(**{name: {"v": 1}})), "refuse")
    for name in ["sub", "jti", "tsk", "rtk", "rcb", "ahs", "aha"]:
        c.add(cl, f"{name} number", raw(H, claims(**{name: 42})), "refuse")
        c.add(cl, f"{name} list", raw(H, claims(**{name: ["x"]})), "refuse")
        c.add(cl, f"{name} bool", raw(H, claims(**{name: True})), "refuse")
    c.add(cl, "ptk number", raw(H, claims(ptk=3)), "refuse")
    c.add(cl, "ptk list", raw(H, claims(ptk=["p"])), "refuse")
    c.add(cl, "act a string", raw(H, claims(act="agent")), "refuse")
    c.add(cl, "act a list", raw(H, claims(act=[{"sub": "1", "cid": "c"}])), "refuse")
    c.add(cl, "act.sub missing", raw(H, claims(act={"cid": "c"})), "refuse")
    c.add(cl, "act.cid missing", raw(H, claims(act={"sub": "1"})), "refuse")
    c.add(cl, "act.sub number", raw(H, claims(act={"sub": 1, "cid": "c"})), "refuse")
    c.add(cl, "act.cid null", raw(H, claims(act={"sub": "1", "cid": None})), "refuse")
    c.add(cl, "payload not JSON", raw(H, "[1, 2"), "refuse")
    c.add(cl, "payload an array", raw(H, "[1, 2]"), "refuse")
    c.add(cl, "payload empty object", raw(H, "{}"), "refuse")
    c.add(cl, "payload trailing garbage", raw(H, compact(claims()) + "x"), "refuse")
    c.add(cl, "big integer 4301 digits", raw(H, payload_with_raw('"big":' + "9" * 4301)), "refuse")
    c.add(cl, "big negative integer 4301 digits", raw(H, payload_with_raw('"big":-' + "9" * 4301)), "refuse")
    c.add(cl, "invalid UTF-8 byte", raw(H, compact(claims()).encode().replace(b'"static"', b'"st\xffatic"')), "refuse")
    # deeper than Python's own recursion limit: both refuse
    c.add(cl, "nested 5000 deep", raw(H, payload_with_raw('"x":' + "[" * 5000 + "]" * 5000)), "refuse")

    # ---- act.iss ------------------------------------------------------------------------
    ai = "act.iss"
    c.add(ai, "null", mint(claims(act={"sub": "1", "cid": "static", "iss": None})), "accept")
    c.add(ai, "string", mint(claims(act={"sub": "1", "cid": "static", "iss": "https://lok"})), "accept")
    c.add(ai, "empty string", mint(claims(act={"sub": "1", "cid": "static", "iss": ""})), "accept")
    c.add(ai, "number", raw(H, claims(act={"sub": "1", "cid": "static", "iss": 7})), "refuse")
    c.add(ai, "list", raw(H, claims(act={"sub": "1", "cid": "static", "iss": ["x"]})), "refuse")
    c.add(ai, "bool", raw(H, claims(act={"sub": "1", "cid": "static", "iss": False})), "refuse")

    # ---- times --------------------------------------------------------------------------
    tm = "time"
    c.add(tm, "exp now-1", mint(claims(exp=NOW - 1)), "refuse")
    c.add(tm, "exp == now", mint(claims(exp=NOW)), "refuse")
    c.add(tm, "exp == now, float", mint(claims(exp=float(NOW))), "refuse")
    c.add(tm, "exp now+1", mint(claims(exp=NOW + 1)), "accept")
    c.add(tm, "exp now+0.5", mint(claims(exp=NOW + 0.5)), "accept")
    c.add(tm, "exp now-0.5", mint(claims(exp=NOW - 0.5)), "refuse")
    c.add(tm, "exp float far", mint(claims(exp=NOW + 3600.25)), "accept")
    c.add(tm, "exp exponent notation", raw(H, compact(claims(exp=DROP))[:-1] + ',"exp":1.7500036e9}'), "accept")
    c.add(tm, "exp string", raw(H, claims(exp=str(NOW + 60))), "refuse")
    c.add(tm, "exp true", raw(H, claims(exp=True)), "refuse")
    c.add(tm, "exp false", raw(H, claims(exp=False)), "refuse")
    c.add(tm, "exp list", raw(H, claims(exp=[NOW + 60])), "refuse")
    c.add(tm, "exp 1e400 (infinite)", raw(H, compact(claims(exp=DROP))[:-1] + ',"exp":1e400}'), "refuse")
    c.add(tm, "exp -1e400", raw(H, compact(claims(exp=DROP))[:-1] + ',"exp":-1e400}'), "refuse")
    c.add(tm, "iat == now", mint(claims(iat=NOW)), "accept")
    c.add(tm, "iat now+1", mint(claims(iat=NOW + 1)), "refuse")
    c.add(tm, "iat now+0.5", mint(claims(iat=NOW + 0.5)), "refuse")
    c.add(tm, "iat float", mint(claims(iat=NOW - 0.75)), "accept")
    c.add(tm, "iat zero", mint(claims(iat=0)), "accept")
    c.add(tm, "iat negative", mint(claims(iat=-1_000_000)), "accept")
    c.add(tm, "iat true", raw(H, claims(iat=True)), "refuse")
    c.add(tm, "iat string", raw(H, claims(iat="now")), "refuse")
    c.add(tm, "nbf == now", mint(claims(nbf=NOW)), "accept")
    c.add(tm, "nbf now+1", mint(claims(nbf=NOW + 1)), "refuse")
    c.add(tm, "nbf now+0.5", mint(claims(nbf=NOW + 0.5)), "refuse")
    c.add(tm, "nbf now-0.5", mint(claims(nbf=NOW - 0.5)), "accept")
    c.add(tm, "nbf null", raw(H, claims(nbf=None)), "refuse")
    c.add(tm, "nbf true", raw(H, claims(nbf=True)), "refuse")
    c.add(tm, "nbf string", raw(H, claims(nbf="0")), "refuse")
    c.add(tm, "nbf -1e300", mint(claims(nbf=-1e300)), "accept")
    c.add(tm, "nbf 0", mint(claims(nbf=0)), "accept")
    # the year 10000 and later (>= 253402300800); iat and exp before the year 1
    c.add(tm, "exp 9999-12-31T23:59:59", mint(claims(exp=253_402_300_799)), "accept")
    c.add(tm, "exp 10000-01-01 int", mint(claims(exp=253_402_300_800)), "refuse")
    c.add(tm, "exp 1e20 int", mint(claims(exp=10**20)), "refuse")
    c.add(tm, "exp 2**63 int", mint(claims(exp=2**63)), "refuse")
    c.add(tm, "exp 1e16 float", mint(claims(exp=1e16)), "refuse")
    c.add(tm, "exp 10000-01-01 float", mint(claims(exp=253_402_300_800.0)), "refuse", "numericdate_ms")
    c.add(tm, "exp 1e12 float", mint(claims(exp=1e12)), "refuse", "numericdate_ms")
    c.add(tm, "nbf 10000-01-01", mint(claims(nbf=253_402_300_800)), "refuse")
    c.add(tm, "iat 0001-01-01 int", mint(claims(iat=-62_135_596_800)), "accept")
    c.add(tm, "iat before the year 1, int", mint(claims(iat=-62_135_596_801)), "refuse")
    c.add(tm, "iat -1e12 int", mint(claims(iat=-10**12)), "refuse")
    c.add(tm, "iat before the year 1, float", mint(claims(iat=-1e11)), "refuse", "numericdate_ms")

    # ---- audience -----------------------------------------------------------------------
    au = "aud"
    for label, aud, expect_k, expect_any in [
        ("koherent list", ["koherent"], "accept", "accept"),
        ("koherent string", "koherent", "accept", "accept"),
        ("among others", ["x", "koherent"], "accept", "accept"),
        ("other", ["elsewhere"], "refuse", "accept"),
        ("other string", "elsewhere", "refuse", "accept"),
        ("empty-string element", [""], "refuse", "accept"),
        ("star", ["*"], "refuse", "accept"),
        ("case", ["Koherent"], "refuse", "accept"),
        ("trailing space", ["koherent "], "refuse", "accept"),
        ("substring", ["koherent-staging"], "refuse", "accept"),
        ("empty string", "", "refuse", "refuse"),
        ("empty list", [], "refuse", "refuse"),
        ("null", None, "refuse", "refuse"),
        ("number", 1, "refuse", "refuse"),
        ("list with a number", ["koherent", 1], "refuse", "refuse"),
        ("list with null", ["koherent", None], "refuse", "refuse"),
        ("object", {"koherent": True}, "refuse", "refuse"),
        ("nested list", [["koherent"]], "refuse", "refuse"),
    ]:
        t = raw(H, claims(aud=aud))
        c.add(au, f"{label} for koherent", t, expect_k)
        c.add(au, f"{label} for *", t, expect_any, audience="*")
    c.add(au, "missing for *", raw(H, claims(aud=DROP)), "refuse", audience="*")

    # ---- NUL characters (koherent: malformed, 22023) ------------------------------------
    n = "nul"
    for label, over in [
        ("in sub", {"sub": "1\u0000"}),
        ("in tsk", {"tsk": "\u0000"}),
        ("in act.cid", {"act": {"sub": "1", "cid": "st\u0000atic"}}),
        ("in an aud element", {"aud": ["koherent", "x\u0000"]}),
        ("in an unknown claim", {"org": "lab\u0000"}),
        ("nested", {"org": {"a": ["\u0000"]}}),
        ("in a member name", {"na\u0000me": 1}),
        ("in a nested member name", {"org": {"k\u0000": 1}}),
        ("in ahs", {"ahs": AHS_X1 + "\u0000"}),
    ]:
        c.add(n, label, mint(claims(**over)), "refuse", "nul_character")

    # ---- duplicates ---------------------------------------------------------------------
    du = "duplicate"
    c.add(du, "claim tsk", raw(H, payload_with_raw('"tsk":"other"')), "refuse", "duplicate_member")
    c.add(du, "claim exp (first expired)", raw(H, payload_with_raw(f'"exp":{NOW - 100}')), "refuse", "duplicate_member")
    c.add(du, "claim iss (first untrusted)", raw(H, payload_with_raw('"iss":"evil"')), "refuse", "duplicate_member")
    c.add(du, "nested in act", raw(H, compact(claims(act=DROP))[:-1] + ',"act":{"sub":"9","sub":"1","cid":"c"}}'), "refuse", "duplicate_member")
    c.add(du, "header alg (none, then Ed25519)", raw('{"alg":"none","alg":"Ed25519","kid":"koherent-test-key"}', claims()), "refuse", "duplicate_member")
    c.add(du, "header kid", raw('{"alg":"Ed25519","kid":"x","kid":"koherent-test-key"}', claims()), "refuse", "duplicate_member")

    # ---- encodings and JSON the reference's parser allows -------------------------------
    e = "json"
    text = compact(claims())
    c.add(e, "UTF-8 BOM payload", raw(H, b"\xef\xbb\xbf" + text.encode()), "refuse", "non_utf8_json")
    c.add(e, "UTF-16 payload", raw(H, text.encode("utf-16-le")), "refuse", "non_utf8_json")
    c.add(e, "UTF-16 BOM payload", raw(H, text.encode("utf-16")), "refuse", "non_utf8_json")
    c.add(e, "UTF-32 payload", raw(H, text.encode("utf-32-le")), "refuse", "non_utf8_json")
    c.add(e, "UTF-8 BOM header", raw(b"\xef\xbb\xbf" + _bytes(H), claims()), "refuse", "non_utf8_json")
    c.add(e, "lone surrogate escape", raw(H, payload_with_raw('"x":"\\ud800"')), "refuse", "non_utf8_json")
    c.add(e, "surrogate as UTF-8 bytes", raw(H, b'{"x":"\xed\xa0\x80",' + text.encode()[1:]), "refuse", "non_utf8_json")
    c.add(e, "NaN in unknown claim", raw(H, payload_with_raw('"x":NaN')), "refuse", "nan")
    c.add(e, "Infinity in unknown claim", raw(H, payload_with_raw('"x":Infinity')), "refuse", "nan")
    c.add(e, "-Infinity in unknown claim", raw(H, payload_with_raw('"x":-Infinity')), "refuse", "nan")
    c.add(e, "NaN exp", raw(H, compact(claims(exp=DROP))[:-1] + ',"exp":NaN}'), "refuse")
    c.add(e, "nested 1200 deep", raw(H, payload_with_raw('"x":' + "[" * 1200 + "]" * 1200)), "refuse", "deep_json")
    c.add(e, "nested 200 deep", raw(H, payload_with_raw('"x":' + "[" * 200 + "]" * 200)), "refuse", "deep_json")
    c.add(e, "nested 129 objects deep", raw(H, payload_with_raw('"x":' + '{"a":' * 128 + "1" + "}" * 128)), "refuse", "deep_json")

    # ---- signatures ---------------------------------------------------------------------
    sg = "signature"
    flipped = bytearray(sig)
    flipped[5] ^= 1
    c.add(sg, "bit flipped in R", f"{h}.{p}.{b64(bytes(flipped))}", "refuse")
    flipped_s = bytearray(sig)
    flipped_s[40] ^= 0x10
    c.add(sg, "bit flipped in S", f"{h}.{p}.{b64(bytes(flipped_s))}", "refuse")
    c.add(sg, "truncated to 63 bytes", f"{h}.{p}.{b64(sig[:63])}", "refuse")
    c.add(sg, "65 bytes", f"{h}.{p}.{b64(sig + b'x')}", "refuse")
    c.add(sg, "all zero", f"{h}.{p}.{b64(bytes(64))}", "refuse")
    L = ed25519_math.L
    s_plus_l = sig[:32] + (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
    c.add(sg, "S + L (non-canonical S)", f"{h}.{p}.{b64(s_plus_l)}", "refuse")
    c.add(sg, "another key's", raw(H, claims(), OTHER_SEED), "refuse")
    c.add(sg, "payload altered", f"{h}.{b64(text.replace('task-1', 'task-2', 1).encode())}.{s}", "refuse")
    c.add(sg, "header altered", f"{b64(_bytes(header(typ='JOSE')))}.{p}.{s}", "refuse")
    c.add(sg, "another token's", f"{h}.{p}.{mint(claims(jti='other')).split('.')[2]}", "refuse")
    c.add(sg, "over the decoded parts, not the text", f"{h}.{p}.{b64(sign(TEST_SEED, _bytes(H) + b'.' + text.encode()))}", "refuse")
    input_ = f"{h}.{p}"
    c.add(sg, "R the identity (small order)",
          f"{input_}.{b64(ed25519_math.sign_with_identity_r(TEST_SEED, input_.encode()))}", "refuse", "non_strict_signature")

    # ---- keys: small order, alg/use bindings --------------------------------------------
    ky = "key"
    ident = b64(ed25519_math.IDENTITY)
    weak = {ISSUER: jwks({"kty": "OKP", "crv": "Ed25519", "x": ident, "kid": "weak"})}
    weak_input = f"{b64(_bytes(header(kid='weak')))}.{p}"
    c.add(ky, "identity public key", f"{weak_input}.{b64(ed25519_math.sign_for_identity_key(weak_input.encode()))}",
          "refuse", "small_order_key", issuers=weak)
    for label, extra, token_alg, expect in [
        ("alg Ed25519, token Ed25519", {"alg": "Ed25519"}, "Ed25519", "accept"),
        ("alg EdDSA, token Ed25519", {"alg": "EdDSA"}, "Ed25519", "refuse"),
        ("alg Ed25519, token EdDSA", {"alg": "Ed25519"}, "EdDSA", "refuse"),
        ("alg EdDSA, token EdDSA", {"alg": "EdDSA"}, "EdDSA", "accept"),
        ("no alg, token EdDSA", {}, "EdDSA", "accept"),
        ("use sig", {"use": "sig"}, "Ed25519", "accept"),
        ("use enc", {"use": "enc"}, "Ed25519", "refuse"),
        ("use enc, alg Ed25519", {"use": "enc", "alg": "Ed25519"}, "Ed25519", "refuse"),
        ("use enc, token EdDSA", {"use": "enc"}, "EdDSA", "refuse"),
        ("use other", {"use": "other"}, "Ed25519", "refuse"),
        ("use a number", {"use": 1}, "Ed25519", "refuse"),
        ("key_ops verify", {"key_ops": ["verify"]}, "Ed25519", "accept"),
        ("key_ops sign", {"key_ops": ["sign"]}, "Ed25519", "refuse"),
        ("alg RS256", {"alg": "RS256"}, "Ed25519", "refuse"),
        ("alg a number", {"alg": 1}, "Ed25519", "refuse"),
    ]:
        issuers = {ISSUER: jwks({**TEST_PUBLIC_JWK, **extra})}
        c.add(ky, label, mint(alg=token_alg), expect, issuers=issuers, accept_eddsa=True)
    enc_jwk = public_jwk(ENC_SEED, "enc-key", use="enc")
    mixed = {ISSUER: jwks({**TEST_PUBLIC_JWK, "use": "sig"}, enc_jwk)}
    c.add(ky, "JWKS with an enc key: token of the sig key", good, "accept", issuers=mixed)
    c.add(ky, "JWKS with an enc key: token of the enc key", raw(header(kid="enc-key"), claims(), ENC_SEED), "refuse", issuers=mixed)
    c.add(ky, "JWKS repeating a kid", good, "refuse", issuers={ISSUER: jwks(TEST_PUBLIC_JWK, TEST_PUBLIC_JWK)})
    c.add(ky, "JWKS key without kid", good, "refuse",
          issuers={ISSUER: jwks({k: v for k, v in TEST_PUBLIC_JWK.items() if k != "kid"})})
    return c.cases
