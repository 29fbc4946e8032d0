"""ES256 signing key, its JWKS and a bearer token for a peer gateway.

    python tokens.py DIR ISSUER AUDIENCE SUBJECT

writes DIR/key.pem (private, 0600), DIR/jwks.json (public) and DIR/token
(a JWT valid for four hours). Needs PyJWT and cryptography.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def main(out: Path, issuer: str, audience: str, subject: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    kid = uuid.uuid4().hex
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(out / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": kid, "alg": "ES256", "use": "sig"})
    (out / "jwks.json").write_text(json.dumps({"keys": [public]}))
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": subject, "iat": now, "nbf": now,
              "exp": now + 4 * 3600, "jti": uuid.uuid4().hex}
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
    (out / "token").write_text(token)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
