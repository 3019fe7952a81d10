"""Accounts: users with roles and memberships, Argon2 passwords, lockout, API tokens."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ciams.access.models import ApiToken, DicomPeer, Membership, User
from ciams.access.policy import ROLES, Principal
from ciams.errors import AuthenticationError, InvalidRequestError

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
TOKEN_PREFIX = "ciams_"

_hasher = PasswordHasher()
# Verifying against this keeps the time of "no such user" equal to "wrong password".
_DUMMY_HASH = _hasher.hash("not-a-password")


@dataclass(frozen=True)
class UserInfo:
    username: str
    role: str
    disabled: bool
    locked: bool
    memberships: tuple[tuple[str, str], ...]
    created_at: datetime


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def new_password() -> str:
    """A random password for a new account (printed once)."""
    return secrets.token_urlsafe(18)


def _check_password_strength(password: str) -> None:
    if len(password) < 12:
        raise InvalidRequestError(
            "password too short", hint="use at least 12 characters (a passphrase is best)"
        )


def token_hash(token: str) -> str:
    """What is stored of a token: tokens are random, so SHA-256 suffices (no Argon2)."""
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """User, membership and token management on the index database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # -- users ---------------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        role: str,
        *,
        trial: str = "",
        site: str = "",
        password: str | None = None,
    ) -> str:
        """Create a user; returns the password (a generated one-time password when none
        is given: the user must change it)."""
        username = username.strip()
        if not username or len(username) > 64 or any(c.isspace() for c in username):
            raise InvalidRequestError(
                f"invalid user name {username!r}", hint="1-64 characters, no spaces"
            )
        if role not in ROLES:
            raise InvalidRequestError(
                f"unknown role {role!r}", hint="one of: " + ", ".join(sorted(ROLES))
            )
        if role == "site" and not site:
            raise InvalidRequestError("a site user needs --site (and usually --trial)")
        generated = password is None
        secret = password or new_password()
        if not generated:
            _check_password_strength(secret)
        try:
            with self.sessions() as session, session.begin():
                user = User(
                    username=username,
                    role=role,
                    password_hash=_hasher.hash(secret),
                    must_change_password=generated,
                    created_at=_now(),
                )
                if trial or site:
                    user.memberships.append(Membership(trial_code=trial, site_code=site))
                session.add(user)
        except IntegrityError as exc:
            raise InvalidRequestError(f"user {username} already exists") from exc
        return secret

    def add_membership(self, username: str, *, trial: str = "", site: str = "") -> None:
        """Give a user access to another trial / site."""
        with self.sessions() as session, session.begin():
            user = self._user(session, username)
            user.memberships.append(Membership(trial_code=trial, site_code=site))

    def _user(self, session: Session, username: str) -> User:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise InvalidRequestError(f"no user named {username}")
        return user

    def list_users(self) -> list[UserInfo]:
        with self.sessions() as session:
            users = session.scalars(select(User).order_by(User.username)).all()
            now = _now()
            return [
                UserInfo(
                    username=u.username,
                    role=u.role,
                    disabled=u.disabled,
                    locked=bool(u.locked_until and _aware(u.locked_until) > now),  # type: ignore[operator]
                    memberships=tuple((m.trial_code, m.site_code) for m in u.memberships),
                    created_at=_aware(u.created_at) or now,
                )
                for u in users
            ]

    def set_disabled(self, username: str, disabled: bool = True) -> None:
        with self.sessions() as session, session.begin():
            user = self._user(session, username)
            user.disabled = disabled
            if disabled:
                for tok in session.scalars(select(ApiToken).where(ApiToken.user_pk == user.id)):
                    tok.revoked_at = tok.revoked_at or _now()

    def set_password(self, username: str, password: str | None = None) -> str:
        """Set (or generate) a password; unlocks the account."""
        generated = password is None
        secret = password or new_password()
        if not generated:
            _check_password_strength(secret)
        with self.sessions() as session, session.begin():
            user = self._user(session, username)
            user.password_hash = _hasher.hash(secret)
            user.must_change_password = generated
            user.failed_attempts = 0
            user.locked_until = None
        return secret

    def has_users(self) -> bool:
        with self.sessions() as session:
            return session.scalar(select(User.id).limit(1)) is not None

    def ensure_first_admin(self, username: str = "admin") -> str | None:
        """Create the first administrator when there are no users; returns its one-time
        password (to print once), None when users already exist. No default password."""
        if self.has_users():
            return None
        try:
            return self.add_user(username, "admin")
        except InvalidRequestError:
            return None  # another process created it first

    # -- authentication ------------------------------------------------------------------

    def authenticate(self, username: str, password: str) -> Principal:
        """Check a password; lock the account for a while after repeated failures."""
        failure: AuthenticationError | None = None
        with self.sessions() as session, session.begin():
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                with contextlib.suppress(VerificationError):
                    _hasher.verify(_DUMMY_HASH, password)
                raise AuthenticationError("wrong user name or password")
            now = _now()
            locked_until = _aware(user.locked_until)
            if user.disabled:
                raise AuthenticationError("account disabled", hint="ask an administrator")
            if locked_until is not None and locked_until > now:
                raise AuthenticationError(
                    "account locked after repeated failed logins",
                    hint=f"try again after {locked_until:%H:%M} UTC or ask an administrator",
                )
            try:
                _hasher.verify(user.password_hash, password)
            except (VerificationError, InvalidHashError):
                # Counted in this transaction, which must commit: raise after it.
                user.failed_attempts += 1
                if user.failed_attempts >= MAX_FAILURES:
                    user.locked_until = now + LOCKOUT
                    user.failed_attempts = 0
                failure = AuthenticationError("wrong user name or password")
            else:
                user.failed_attempts = 0
                user.locked_until = None
                if _hasher.check_needs_rehash(user.password_hash):
                    user.password_hash = _hasher.hash(password)
                principal = _principal(user)
        if failure is not None:
            raise failure
        return principal

    # -- tokens --------------------------------------------------------------------------

    def issue_token(self, username: str, *, expires_days: float | None = 90) -> str:
        """A new bearer token for a user, returned once (only its hash is kept)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.sessions() as session, session.begin():
            user = self._user(session, username)
            if user.disabled:
                raise InvalidRequestError(f"user {username} is disabled")
            session.add(
                ApiToken(
                    user_pk=user.id,
                    token_hash=token_hash(token),
                    prefix=token[: len(TOKEN_PREFIX) + 4],
                    created_at=_now(),
                    expires_at=_now() + timedelta(days=expires_days) if expires_days else None,
                )
            )
        return token

    def revoke_tokens(self, username: str) -> int:
        """Revoke every token of a user; returns how many."""
        with self.sessions() as session, session.begin():
            user = self._user(session, username)
            count = 0
            for tok in session.scalars(
                select(ApiToken).where(ApiToken.user_pk == user.id, ApiToken.revoked_at.is_(None))
            ):
                tok.revoked_at = _now()
                count += 1
            return count

    def authenticate_token(self, token: str) -> Principal:
        """The principal of a valid, unexpired, unrevoked token."""
        if not token.startswith(TOKEN_PREFIX):
            raise AuthenticationError("invalid token")
        with self.sessions() as session, session.begin():
            row = session.execute(
                select(ApiToken, User)
                .join(User, ApiToken.user_pk == User.id)
                .where(ApiToken.token_hash == token_hash(token))
            ).first()
            if row is None:
                raise AuthenticationError("invalid token")
            tok, user = row
            now = _now()
            expires = _aware(tok.expires_at)
            if tok.revoked_at is not None or user.disabled:
                raise AuthenticationError("token revoked")
            if expires is not None and expires <= now:
                raise AuthenticationError("token expired", hint="ask for a new token")
            # Record use at most once a minute: a token on every STOW part would
            # otherwise write on every request.
            last = _aware(tok.last_used_at)
            if last is None or (now - last) > timedelta(minutes=1):
                tok.last_used_at = now
            return _principal(user)

    # -- DICOM peers ---------------------------------------------------------------------

    def bind_ae(self, ae_title: str, username: str, *, cert_sha256: str = "") -> None:
        """Map a calling AE title (and optionally a TLS client certificate) to a user."""
        with self.sessions() as session, session.begin():
            self._user(session, username)
            peer = session.scalar(select(DicomPeer).where(DicomPeer.ae_title == ae_title))
            if peer is None:
                session.add(
                    DicomPeer(
                        ae_title=ae_title,
                        username=username,
                        cert_sha256=cert_sha256.lower(),
                        created_at=_now(),
                    )
                )
            else:
                peer.username = username
                peer.cert_sha256 = cert_sha256.lower()

    def principal_for_ae(self, ae_title: str, cert_sha256: str = "") -> Principal | None:
        """The principal a calling AE title acts as, None when it is not registered (or
        its certificate does not match the registered one)."""
        with self.sessions() as session:
            row = session.execute(
                select(DicomPeer, User)
                .join(User, User.username == DicomPeer.username)
                .where(DicomPeer.ae_title == ae_title.strip())
            ).first()
            if row is None:
                return None
            peer, user = row
            if user.disabled:
                return None
            if peer.cert_sha256 and peer.cert_sha256 != cert_sha256.lower():
                return None
            return _principal(user)

    def principal(self, username: str) -> Principal:
        """The principal of an enabled user (web sessions re-check on every request)."""
        with self.sessions() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None or user.disabled:
                raise AuthenticationError("no such active user")
            return _principal(user)


def _principal(user: User) -> Principal:
    return Principal(
        username=user.username,
        role=user.role,
        grants=tuple((m.trial_code, m.site_code) for m in user.memberships),
    )
