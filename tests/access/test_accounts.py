"""Accounts: Argon2 passwords, lockout, tokens, AE bindings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from ciams.access import Accounts, authorize, scope_of, upload_source
from ciams.access.models import ApiToken, User
from ciams.archive import Archive
from ciams.errors import AccessDeniedError, AuthenticationError, InvalidRequestError


@pytest.fixture
def accounts(archive: Archive) -> Accounts:
    return Accounts(archive.sessions)


def test_generated_password_is_one_time_and_hashed(accounts: Accounts) -> None:
    pw = accounts.add_user("alice", "site", trial="LOCAT", site="S01")
    principal = accounts.authenticate("alice", pw)
    assert (principal.role, principal.grants) == ("site", (("LOCAT", "S01"),))
    with accounts.sessions() as s:
        user = s.scalar(select(User).where(User.username == "alice"))
        assert user is not None
        assert user.password_hash.startswith("$argon2") and pw not in user.password_hash
        assert user.must_change_password


def test_bad_input_is_refused(accounts: Accounts) -> None:
    with pytest.raises(InvalidRequestError, match="unknown role"):
        accounts.add_user("x", "superuser")
    with pytest.raises(InvalidRequestError, match="needs --site"):
        accounts.add_user("x", "site")
    with pytest.raises(InvalidRequestError, match="too short"):
        accounts.add_user("x", "admin", password="short")
    accounts.add_user("bob", "admin")
    with pytest.raises(InvalidRequestError, match="already exists"):
        accounts.add_user("bob", "admin")


def test_lockout_after_repeated_failures(accounts: Accounts) -> None:
    pw = accounts.add_user("carol", "monitor", trial="LOCAT")
    for _ in range(5):
        with pytest.raises(AuthenticationError, match="wrong user name or password"):
            accounts.authenticate("carol", "wrong-password-123")
    with pytest.raises(AuthenticationError, match="locked"):
        accounts.authenticate("carol", pw)  # even the right password
    new = accounts.set_password("carol")  # an administrator resets it
    assert accounts.authenticate("carol", new).username == "carol"
    with pytest.raises(AuthenticationError, match="wrong user name or password"):
        accounts.authenticate("nobody", "whatever-password")


def test_tokens_expire_and_revoke(accounts: Accounts) -> None:
    accounts.add_user("gw", "site", trial="T", site="S")
    token = accounts.issue_token("gw", expires_days=1)
    assert accounts.authenticate_token(token).username == "gw"
    with accounts.sessions() as s, s.begin():
        stored = s.scalars(select(ApiToken)).one()
        assert token not in stored.token_hash
        s.execute(update(ApiToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    with pytest.raises(AuthenticationError, match="expired"):
        accounts.authenticate_token(token)
    other = accounts.issue_token("gw", expires_days=None)
    assert accounts.revoke_tokens("gw") == 2
    with pytest.raises(AuthenticationError, match="revoked"):
        accounts.authenticate_token(other)
    with pytest.raises(AuthenticationError):
        accounts.authenticate_token("ciams_forged")
    accounts.issue_token("gw")
    accounts.set_disabled("gw")
    with pytest.raises(AuthenticationError, match="disabled"):
        accounts.authenticate("gw", "irrelevant-password")


def test_policy_matrix_and_scope(accounts: Accounts) -> None:
    for name, role in [
        ("adm", "admin"),
        ("mon", "monitor"),
        ("rd", "reader"),
        ("res", "researcher"),
        ("aud", "auditor"),
    ]:
        accounts.add_user(name, role, trial="T" if role != "admin" else "")
    accounts.add_user("site1", "site", trial="T", site="S1")
    allowed: dict[str, set[str]] = {}
    for name in ("adm", "mon", "rd", "res", "aud", "site1"):
        p = accounts.principal(name)
        allowed[name] = set()
        for action in ("query", "view", "download", "upload", "manage", "audit"):
            try:
                authorize(p, action)
                allowed[name].add(action)
            except AccessDeniedError:
                pass
    assert allowed == {
        "adm": {"query", "view", "download", "upload", "manage", "audit"},
        "mon": {"query", "view", "download"},
        "rd": {"query", "view"},
        "res": set(),
        "aud": {"audit"},
        "site1": {"query", "view", "download", "upload"},
    }
    site = accounts.principal("site1")
    assert scope_of(site).grants == (("T", "S1"),)
    assert scope_of(accounts.principal("adm")).grants is None
    assert upload_source(site) == {"user": "site1", "trial": "T", "site": "S1", "scoped": "1"}


def test_ae_binding_with_certificate(accounts: Accounts) -> None:
    accounts.add_user("site2", "site", trial="T", site="S2")
    accounts.bind_ae("SITE2_PACS", "site2", cert_sha256="AB" * 32)
    assert accounts.principal_for_ae("SITE2_PACS") is None  # certificate required
    found = accounts.principal_for_ae("SITE2_PACS", "ab" * 32)
    assert found is not None and found.grants == (("T", "S2"),)
    assert accounts.principal_for_ae("UNKNOWN") is None
