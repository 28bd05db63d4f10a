"""Ask the reference verifier, authentikate, for a verdict on every token of a corpus.

Runs under the authentikate venv (Python >= 3.12, tests/requirements-differential.txt), never
under the project venv. One process for the whole corpus:

    stdin:  {"now": SECS, "cases": [{"id": ..., "token": "...", "issuers": {"ISS": JWKS, ...},
                                     "audience": "koherent", "accept_eddsa": false}, ...]}
    stdout: {"versions": {"authentikate": ..., "joserfc": ..., "python": ...},
             "verdicts": {id: {"verdict": "accept"|"refuse", "error": "ExceptionType: text"}}}

Each token goes through authentikate.provenance.decode_provenance_token, the function an
audience service (koherent's peers: mikro, ...) calls on the Rekuest-Task header, with a
PROVENANCE settings block naming the case's issuers (inline JWKS, as JWKIssuer), audience and
algorithms (["Ed25519"], plus "EdDSA" when the case allows it). "now" is fixed by replacing
joserfc's clock (JWTClaimsRegistry reads joserfc._rfc7519.claims._generate_now when no "now"
is given, which is how authentikate builds it), so verdicts do not depend on the wall clock.
"""

import json
import sys
import warnings
from importlib.metadata import version


def _describe(error: BaseException) -> str:
    """The error and its causes (authentikate wraps joserfc's errors in generic ones)."""
    parts = []
    while error is not None and len(parts) < 4:
        parts.append(f"{type(error).__name__}: {str(error)[:160]}")
        error = error.__cause__ or error.__context__
    return " <- ".join(parts)


def main() -> int:
    request = json.load(sys.stdin)
    now = int(request["now"])

    # authentikate is a Django app: its errors subclass django's PermissionDenied and its
    # settings module imports django.conf. Nothing here touches models or the database, so
    # minimal settings (no apps, no database) are enough.
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=True, INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)

    import joserfc._rfc7519.claims as joserfc_claims

    joserfc_claims._generate_now = lambda: now

    from authentikate.base_models import AuthentikateSettings, ProvenanceSettings
    from authentikate.provenance import decode_provenance_token

    warnings.simplefilter("ignore")  # joserfc warns that EdDSA is deprecated (RFC 9864)

    verdicts = {}
    for case in request["cases"]:
        algorithms = ["Ed25519", "EdDSA"] if case.get("accept_eddsa") else ["Ed25519"]
        try:
            provenance = ProvenanceSettings(
                issuers=[
                    {"kind": "jwks_dict", "iss": iss, "jwks": jwks}
                    for iss, jwks in case.get("issuers", {}).items()
                ],
                audience=case.get("audience", "koherent"),
                algorithms=algorithms,
            )
            config = AuthentikateSettings(
                issuers=[], audience="unused-auth-audience", provenance=provenance
            )
            decode_provenance_token(case["token"], config)
        except Exception as e:  # any refusal, typed or not, is a refusal
            verdicts[str(case["id"])] = {"verdict": "refuse", "error": _describe(e)}
        else:
            verdicts[str(case["id"])] = {"verdict": "accept", "error": None}

    json.dump(
        {
            "versions": {
                "authentikate": version("authentikate"),
                "joserfc": version("joserfc"),
                "python": sys.version.split()[0],
            },
            "verdicts": verdicts,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
