"""`--api-auth`: modules/api/api.py `Api.__init__` parses the credentials, `Api.auth` (behind FastAPI's HTTPBasic)
checks every /sdapi route before the body is read."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping

from sdtask.standin.errors import Payload

Response = tuple[int, Payload, dict[str, str]]


def parse_api_auth(value: str) -> dict[str, str]:
    """api.py `Api.__init__`: "user:pass,user2:pass2" -> {user: pass}; a pair without exactly one ':' fails there."""
    credentials = {}
    for pair in value.split(","):
        parts = pair.split(":")
        if len(parts) != 2:
            raise ValueError(f"not user:password: {pair!r}")
        credentials[parts[0]] = parts[1]
    return credentials


def refuse_unauthorised(credentials: Mapping[str, str], headers: Mapping[str, str]) -> Response | None:
    """api.py `Api.auth` behind FastAPI's HTTPBasic: every /sdapi route, before the body is even read."""
    challenge = {"WWW-Authenticate": "Basic"}
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    scheme, _, encoded = value.partition(" ")
    if not value or scheme.lower() != "basic":
        return 401, {"detail": "Not authenticated"}, challenge
    try:
        user, separator, password = base64.b64decode(encoded).decode("ascii").partition(":")
    except (ValueError, UnicodeDecodeError):
        return 401, {"detail": "Invalid authentication credentials"}, challenge
    expected = credentials.get(user) if separator else None
    if expected is None or not secrets.compare_digest(password, expected):
        return 401, {"detail": "Incorrect username or password"}, challenge
    return None
