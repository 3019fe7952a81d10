"""Deterministic UID replacement (PS3.15 E.1.1 action U; PS3.5 9.1, B.2).

A replacement UID is derived from the original with HMAC-SHA256 keyed by the trial
secret, so the same original UID maps to the same new UID in every file, every run
and every site that shares the secret: studies and series stay whole and
references (Referenced SOP Instance UID, Frame of Reference UID, ...) stay valid.
Without the secret the mapping cannot be reversed or recomputed.

Under the default root ``2.25`` the 128-bit digest is written as a decimal
integer (PS3.5 B.2); under an organisation root the digest is reduced to the
digits that fit into 64 characters.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from ciams.deid._standard.dictionary import WELL_KNOWN_UIDS
from ciams.deid.errors import RecipeError

_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_STANDARD_PREFIX = "1.2.840.10008."


def is_well_known(uid: str) -> bool:
    """True for UIDs defined by the standard (SOP classes, transfer syntaxes, ...)."""
    return uid.startswith(_STANDARD_PREFIX) or uid in WELL_KNOWN_UIDS


class UidMapper:
    """Maps original UIDs to new ones; callable, with a per-process cache."""

    def __init__(self, secret: bytes, root: str = "2.25") -> None:
        root = root.rstrip(".")
        if not _ROOT_RE.match(root) or len(root) > 40:
            raise RecipeError(
                f"invalid UID root {root!r}", hint="use digits and dots, at most 40 characters"
            )
        if not secret:
            raise RecipeError("the trial secret is empty")
        self._key = secret
        self._root = root
        self._digits = 39 if root == "2.25" else 64 - len(root) - 1
        self._cache: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        new = self._cache.get(uid)
        if new is None:
            digest = hmac.new(self._key, b"uid:" + uid.encode("ascii", "replace"), hashlib.sha256)
            number = int.from_bytes(digest.digest()[:16], "big")
            if self._root != "2.25":
                number %= 10**self._digits
            new = f"{self._root}.{number}"
            if len(self._cache) < 200_000:
                self._cache[uid] = new
        return new

    def map_value(self, value: str) -> str:
        """Map a (possibly multi-valued, padded) UI value, keeping well-known UIDs."""
        parts = [p.strip("\0 ") for p in value.split("\\")]
        return "\\".join(p if not p or is_well_known(p) else self(p) for p in parts)


def derive_int(secret: bytes, purpose: str, text: str) -> int:
    """A stable 64-bit integer for ``text`` (date offsets, generated subject codes)."""
    digest = hmac.new(secret, f"{purpose}:{text}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big")
