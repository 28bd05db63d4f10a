"""The koherent CLI against joserfc: tokens the CLI mints verify with joserfc, tokens joserfc
mints verify with the CLI (expired ones refused for their reason), and the JWKS and keys the CLI
writes import into joserfc."""

import json
import os
import subprocess
import time

from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey

from conftest import ROOT, TEST_KEY, mint

CLI = os.environ.get("KOHERENT_CLI", os.path.join(ROOT, "target/release/koherent"))
KEY_FILE = os.path.join(ROOT, "tests/fixtures/test-key.private.jwk")


def test_cli_tokens_verify_with_joserfc_and_back(tmp_path):
    token = subprocess.run([CLI, "mint", "--key", KEY_FILE, "--tsk", "cli-task", "--args", '{"x": 1}'],
                           capture_output=True, text=True, check=True).stdout.strip()
    decoded = jwt.decode(token, TEST_KEY, algorithms=["Ed25519"])
    assert decoded.header == {"alg": "Ed25519", "kid": "koherent-test-key", "typ": "JWT"}
    assert decoded.claims["tsk"] == "cli-task"
    assert decoded.claims["ahs"] == "5041bf1f713df204784353e82f6a4a535931cb64f1f4b4a5aeaffcb720918b22"
    jwks = subprocess.run([CLI, "jwks", "--key", KEY_FILE], capture_output=True, text=True, check=True).stdout
    assert json.loads(jwks)["keys"][0]["x"] == "Q5ERwdSKvHLDx8swyRJzrofI4W567dx71oeH_uDH4g4"
    (tmp_path / "jwks.json").write_text(jwks)
    joserfc_token = mint("from-joserfc")
    out = subprocess.run([CLI, "verify", "--jwks", str(tmp_path / "jwks.json"), "--iss", "rekuest",
                          "--token", joserfc_token], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["tsk"] == "from-joserfc"
    expired = mint("old", exp=int(time.time()) - 10)
    out = subprocess.run([CLI, "verify", "--jwks", str(tmp_path / "jwks.json"), "--iss", "rekuest",
                          "--token", expired], capture_output=True, text=True)
    assert out.returncode == 1 and "reason: expired" in out.stderr
    keys = json.loads(subprocess.run([CLI, "keygen", "--kid", "fresh"], capture_output=True, text=True,
                                     check=True).stdout)
    assert keys["public_jwk"]["kid"] == "fresh" and keys["public_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    fresh = OKPKey.import_key(keys["private_jwk"])
    assert fresh.as_dict(private=False)["x"] == keys["public_jwk"]["x"]
    assert KeySet.import_key_set({"keys": [keys["public_jwk"]]}).keys[0].kid == "fresh"
