"""Differential test: koherent's verifier against the reference verifier, authentikate.

The provenance-token spec says koherent must accept exactly the tokens authentikate (5.1.0, on
joserfc) accepts, except where koherent is deliberately stricter. This module mints a corpus of
tokens (tests/differential/corpus.py: valid ones and every malformation class of the spec) with
a fixed "now", asks both verifiers for a verdict on each, and asserts that they agree on every
token, and that on the documented-stricter ones koherent refuses and authentikate accepts (so
that list stays honest).

- authentikate runs under its own venv (Python >= 3.12): KOHERENT_AUTHENTIKATE_PYTHON, else
  $ROOT/.venv-authentikate/bin/python (scripts/lib.sh ensure_authentikate_venv makes it).
  One subprocess for the whole corpus (tests/differential/authentikate_verdicts.py).
- koherent is the CLI's `verify-batch` (the koherent-token crate the extension links):
  KOHERENT_CLI, else $ROOT/target/release/koherent. One subprocess for the whole corpus.

No database is needed.
"""

import collections
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "differential"))

import corpus as corpus_module  # noqa: E402

HELPER = os.path.join(ROOT, "tests", "differential", "authentikate_verdicts.py")
REQUIREMENTS = os.path.join(ROOT, "tests", "requirements-differential.txt")


def _pinned(package: str) -> str:
    with open(REQUIREMENTS) as f:
        for line in f:
            name, _, ver = line.split("#")[0].strip().partition("==")
            if name.lower() == package.lower():
                return ver
    raise AssertionError(f"{package} is not pinned in {REQUIREMENTS}")


def _authentikate_python() -> str:
    python = os.environ.get("KOHERENT_AUTHENTIKATE_PYTHON") or os.path.join(
        ROOT, ".venv-authentikate", "bin", "python"
    )
    if not os.access(python, os.X_OK):
        pytest.fail(
            f"the authentikate venv is missing ({python}): run "
            "`source scripts/lib.sh && ensure_authentikate_venv` (scripts/test.sh does), or set "
            "KOHERENT_AUTHENTIKATE_PYTHON to a Python >= 3.12 with "
            "tests/requirements-differential.txt installed",
            pytrace=False,
        )
    return python


def _koherent_cli() -> str:
    cli = os.environ.get("KOHERENT_CLI") or os.path.join(ROOT, "target", "release", "koherent")
    if not os.access(cli, os.X_OK):
        pytest.fail(
            f"the koherent CLI is missing ({cli}): build it with "
            "`cargo build --release -p koherent-cli`, or set KOHERENT_CLI",
            pytrace=False,
        )
    return cli


@pytest.fixture(scope="module")
def corpus():
    return corpus_module.build()


@pytest.fixture(scope="module")
def reference(corpus):
    request = {
        "now": corpus_module.NOW,
        "cases": [
            {k: c[k] for k in ("id", "token", "issuers", "audience", "accept_eddsa")}
            for c in corpus
        ],
    }
    out = subprocess.run(
        [_authentikate_python(), HELPER],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"authentikate helper failed:\n{out.stderr[-4000:]}"
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def koherent(corpus):
    lines = "".join(
        json.dumps({k: c[k] for k in ("id", "token", "issuers", "audience", "accept_eddsa")}) + "\n"
        for c in corpus
    )
    out = subprocess.run(
        [_koherent_cli(), "verify-batch", "--now", str(corpus_module.NOW)],
        input=lines,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"koherent verify-batch failed:\n{out.stderr[-4000:]}"
    verdicts = {}
    for line in out.stdout.splitlines():
        v = json.loads(line)
        verdicts[v["id"]] = v
    return verdicts


def test_corpus_covers_every_malformation_class(corpus):
    assert len(corpus) >= 180
    ids = [c["id"] for c in corpus]
    assert len(set(ids)) == len(ids)
    categories = collections.Counter(c["category"] for c in corpus)
    for category in [
        "valid", "base64", "segments", "size", "header", "crit", "alg", "kid", "iss", "claims",
        "act.iss", "time", "aud", "nul", "duplicate", "json", "signature", "key",
    ]:
        assert categories[category] >= 3, (category, categories[category])
    assert sum(c["expect"] == "accept" for c in corpus) >= 50
    # every documented-stricter reason has at least one case
    assert {c["stricter"] for c in corpus if c["stricter"]} == set(corpus_module.STRICTER)
    # both audiences and both alg policies are exercised
    assert {c["audience"] for c in corpus} == {"koherent", "*"}
    assert {c["accept_eddsa"] for c in corpus} == {True, False}


def test_reference_is_the_pinned_authentikate(reference):
    versions = reference["versions"]
    assert versions["authentikate"] == _pinned("authentikate") == "5.1.0"
    assert versions["joserfc"] == _pinned("joserfc")
    major, minor = (int(x) for x in versions["python"].split(".")[:2])
    assert (major, minor) >= (3, 12)


def test_every_token_got_a_verdict_from_both(corpus, reference, koherent):
    ids = {c["id"] for c in corpus}
    assert set(reference["verdicts"]) == ids
    assert set(koherent) == ids
    assert {v["verdict"] for v in reference["verdicts"].values()} == {"accept", "refuse"}
    assert {v["verdict"] for v in koherent.values()} == {"accept", "refuse"}


def test_koherent_agrees_with_authentikate(corpus, reference, koherent):
    agree, stricter, problems = 0, 0, []
    for c in corpus:
        ours = koherent[c["id"]]
        theirs = reference["verdicts"][c["id"]]
        detail = f"{c['id']}: koherent {ours['verdict']} ({ours.get('reason')}), " \
                 f"authentikate {theirs['verdict']} ({theirs['error']})"
        if c["stricter"]:
            # documented-stricter: koherent refuses, authentikate accepts (else the list lies)
            if ours["verdict"] == "refuse" and theirs["verdict"] == "accept":
                stricter += 1
            else:
                problems.append(f"documented-stricter [{c['stricter']}] case is not: {detail}")
        elif ours["verdict"] == theirs["verdict"]:
            agree += 1
            if ours["verdict"] != c["expect"]:
                problems.append(f"both verifiers disagree with the corpus' expectation "
                                f"{c['expect']}: {detail}")
        else:
            problems.append(f"disagreement: {detail}")
    print(
        f"\ndifferential: {len(corpus)} tokens, {agree} agree, {stricter} documented-stricter "
        f"(koherent refuses, authentikate accepts), {len(problems)} problems"
    )
    assert problems == []
    assert agree + stricter == len(corpus)


def test_koherent_refusals_have_the_expected_class(corpus, koherent):
    # NUL characters are malformed (22023); key bindings and forgeries are trust (28000).
    for c in corpus:
        v = koherent[c["id"]]
        if c["category"] == "nul":
            assert (v["reason"], v["class"]) == ("nul_character", "malformed"), c["id"]
        if c["category"] == "duplicate":
            assert v["reason"] == "duplicate_member", c["id"]
        if c["category"] == "size" and c["expect"] == "refuse" and "1024 chars" not in c["id"] \
                and "garbage" not in c["id"] and "129536" not in c["id"]:
            assert v["reason"] == "too_large", c["id"]
    by_id = {c["id"]: koherent[c["id"]] for c in corpus}
    assert by_id["time/exp == now"]["reason"] == "expired"
    assert by_id["key/alg EdDSA, token Ed25519"]["reason"] == "key_alg_mismatch"
    assert by_id["key/use enc"]["reason"] == "key_use_not_sig"
    assert by_id["key/identity public key"]["reason"] == "key_refused"
    assert by_id["signature/R the identity (small order)"]["reason"] == "bad_signature"
    assert by_id["time/exp 10000-01-01 int"]["reason"] == "time_out_of_range"
    assert by_id["header/typ = 1"]["reason"] == "invalid_header"
    assert by_id["aud/empty string for *"]["reason"] == "invalid_claim"
