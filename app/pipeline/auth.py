"""The API-key check, the one every transport and route calls."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from app.errors import Unauthorized

_CHALLENGE = {"WWW-Authenticate": "ApiKey"}


def check_api_key(keys: Sequence[bytes], headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Accept ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` when keys are configured.

    A request carrying more than one credential (two X-API-Key headers, or an X-API-Key beside a
    bearer token) is refused: which one a proxy or framework would pick differs, so none is picked.

    Raises:
        Unauthorized: No key, a wrong key, or several credentials.
    """
    if not keys:
        return
    presented: list[bytes] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"x-api-key":
            presented.append(value.strip())
        elif lowered == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                presented.append(token.strip())
    if not presented:
        raise Unauthorized("missing API key: send an X-API-Key header", headers=_CHALLENGE)
    if len(presented) > 1:
        raise Unauthorized("more than one API key in the request: send exactly one", headers=_CHALLENGE)
    matched = False
    for key in keys:  # compare against every key so timing does not tell which one matched
        matched |= hmac.compare_digest(presented[0], key)
    if not matched:
        raise Unauthorized("invalid API key", headers=_CHALLENGE)
