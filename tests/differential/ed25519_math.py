"""Just enough Ed25519 arithmetic (RFC 8032) to craft signatures that only a non-strict
verifier accepts, and small-order public keys. Test-only; not constant time."""

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _inv(x):
    return pow(x, P - 2, P)


def _add(p, q):
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * D % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, p):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _recover_x(y, sign):
    x2 = (y * y - 1) * _inv(D * y * y + 1) % P
    if x2 == 0:
        return 0 if not sign else None
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


_GY = 4 * _inv(5) % P
_GX = _recover_x(_GY, 0)
G = (_GX, _GY, 1, _GX * _GY % P)


def encode(p):
    x, y, z, _ = p
    zi = _inv(z)
    x, y = x * zi % P, y * zi % P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


def _sha512_int(*parts):
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def secret_scalar(seed: bytes) -> int:
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a


def public_key(seed: bytes) -> bytes:
    return encode(_mul(secret_scalar(seed), G))


def sign_with_identity_r(seed: bytes, msg: bytes) -> bytes:
    """A signature whose R is the identity point (small order): s = h * a mod L.
    A cofactorless verifier that does not reject small-order R accepts it; a strict one
    (ed25519-dalek verify_strict) refuses it."""
    a = secret_scalar(seed)
    r_enc = encode((0, 1, 1, 0))
    h = _sha512_int(r_enc, public_key(seed), msg) % L
    s = h * a % L
    return r_enc + int.to_bytes(s, 32, "little")


IDENTITY = encode((0, 1, 1, 0))


def sign_for_identity_key(msg: bytes, s: int = 12345) -> bytes:
    """A signature that verifies under the identity public key (small order) for any
    message, with a cofactorless verifier: R = s*B, and h*A is the identity."""
    return encode(_mul(s, G)) + int.to_bytes(s, 32, "little")
