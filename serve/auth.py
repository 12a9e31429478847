"""An optional bearer token for deployments without a gateway in front (off unless CLIPSYNTH_API_TOKEN is set).

With a token, POST /synthesize and /synthesize/image need `Authorization: Bearer <token>` (401 with a
WWW-Authenticate header otherwise, RFC 6750); GET /healthz answers probes without it, but with the status only,
its details (model URI, identity, card) for the token's holders; the page, /docs and /openapi.json stay open
(they hold no data, and the page asks for the token). The token is read in the ingress replica, from
CLIPSYNTH_API_TOKEN or from the file named by CLIPSYNTH_API_TOKEN_FILE (a mounted Kubernetes or Docker secret),
never from a builder argument, so it travels in no deployment config and no log line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .schemas import RequestError

API_TOKEN_ENV = "CLIPSYNTH_API_TOKEN"
API_TOKEN_FILE_ENV = "CLIPSYNTH_API_TOKEN_FILE"
MIN_TOKEN_CHARS = 16  # a short token is guessable: refuse it rather than serve behind it
REALM = "clipsynth"


@dataclass(frozen=True)
class BearerAuth:
    # Kept as a digest: comparing digests of equal length takes the same time whatever the guess.
    token_digest: bytes = field(repr=False)

    @classmethod
    def from_token(cls, token: str) -> BearerAuth:
        token = token.strip()  # a Kubernetes Secret made from a file often ends with a newline
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"the API token ({API_TOKEN_ENV} or {API_TOKEN_FILE_ENV}) has {len(token)} characters; use at "
                f"least {MIN_TOKEN_CHARS} (python -c 'import secrets; print(secrets.token_urlsafe(32))'), or unset it"
            )
        return cls(_digest(token))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> BearerAuth | None:
        """The token of CLIPSYNTH_API_TOKEN or of the file CLIPSYNTH_API_TOKEN_FILE names; None (no
        authentication) when neither is set."""
        env = os.environ if environ is None else environ
        token, path = env.get(API_TOKEN_ENV, ""), env.get(API_TOKEN_FILE_ENV, "")
        if token.strip() and path.strip():
            raise ValueError(f"set {API_TOKEN_ENV} or {API_TOKEN_FILE_ENV}, not both")
        if path.strip():
            try:
                token = Path(path.strip()).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"{API_TOKEN_FILE_ENV}: cannot read the token file: {exc}") from None
            if not token.strip():
                raise ValueError(f"{API_TOKEN_FILE_ENV}: the token file {path.strip()} is empty")
        return cls.from_token(token) if token.strip() else None

    def holds_token(self, authorization: str | None) -> bool | None:
        """None: no bearer credentials in the header; True/False: they are / are not the token."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        return hmac.compare_digest(_digest(credentials.strip()), self.token_digest)

    def require(self, authorization: str | None) -> None:
        """Raise 401 (with the challenge a client needs) unless the header carries the token."""
        held = self.holds_token(authorization)
        if held:
            return
        if held is None:
            raise RequestError(
                401,
                "this service needs an access token: send the header 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": f'Bearer realm="{REALM}"'},
            )
        raise RequestError(
            401, "the access token is not valid", {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'}
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
