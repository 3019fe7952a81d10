"""Access domain: accounts, roles, tokens, the policy layer and the audit trail.

Other domains use only what is exported here.
"""

from ciams.access.accounts import Accounts, UserInfo
from ciams.access.audit import AuditTrail, Event, VerifyReport, atna_message, write_csv, write_json
from ciams.access.policy import (
    PERMISSIONS,
    ROLES,
    SYSTEM,
    Principal,
    authorize,
    scope_of,
    upload_source,
)

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "SYSTEM",
    "Accounts",
    "AuditTrail",
    "Event",
    "Principal",
    "UserInfo",
    "VerifyReport",
    "atna_message",
    "authorize",
    "scope_of",
    "upload_source",
    "write_csv",
    "write_json",
]
