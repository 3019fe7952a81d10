"""Web sessions: signed cookies with a CSRF token, and the server's secret key.

The cookie holds the user name, a random CSRF token and the issue time, signed with
the server's key (itsdangerous); it is HttpOnly, SameSite=Strict and Secure under
HTTPS. A request authenticated by the cookie that changes state must echo the CSRF
token in the ``X-CSRF-Token`` header (double submit), so a forged cross-site form
cannot act for the user. Bearer tokens are not cookies and need no CSRF token.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from ciams.config import Settings
from ciams.errors import AuthenticationError, ConfigError

COOKIE_NAME = "ciams_session"
CSRF_HEADER = "X-CSRF-Token"


def secret_key(settings: Settings) -> bytes:
    """The key signing sessions: from the configured file, else ``<data_dir>/secret.key``
    created with 32 random bytes (mode 0600) on first use. Never a built-in default."""
    path = settings.access.secret_key_file or (settings.data_dir / "secret.key")
    path = Path(path)
    if not path.exists():
        if settings.access.secret_key_file is not None:
            raise ConfigError(f"secret key file {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) < 32:
        raise ConfigError(f"secret key in {path} is shorter than 32 bytes")
    return key


@dataclass(frozen=True)
class Session:
    username: str
    csrf: str


class SessionSigner:
    """Issues and checks session cookie values."""

    def __init__(self, key: bytes, max_age_hours: float) -> None:
        self._serializer = URLSafeTimedSerializer(key, salt="ciams-session")
        self._max_age = int(max_age_hours * 3600)

    @property
    def max_age(self) -> int:
        return self._max_age

    def issue(self, username: str) -> tuple[str, Session]:
        """A cookie value and the session it carries."""
        session = Session(username=username, csrf=secrets.token_urlsafe(24))
        return self._serializer.dumps([session.username, session.csrf]), session

    def load(self, value: str) -> Session:
        """The session of a cookie value; raises AuthenticationError when invalid/expired."""
        try:
            username, csrf = self._serializer.loads(value, max_age=self._max_age)
        except SignatureExpired as exc:
            raise AuthenticationError("session expired", hint="log in again") from exc
        except (BadSignature, ValueError, TypeError) as exc:
            raise AuthenticationError("invalid session") from exc
        return Session(username=str(username), csrf=str(csrf))
