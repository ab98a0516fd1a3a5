"""Passwords, session tokens, CSRF tokens and the login rate limit.

- Passwords: argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile).
- Sessions: a random token in an HttpOnly, SameSite cookie; the database keeps its SHA-256.
- CSRF: a logged-in form carries its session's random token; the login form carries an HMAC of
  a random pre-login cookie under a secret kept in the database (no session exists yet).
- Login rate limit: at most `max_failures` failed logins per (name, client address) and per
  client address x 4 in a sliding window; per process (`serve` runs one process).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

SESSION_COOKIE = "instructrl_session"
PRELOGIN_COOKIE = "instructrl_prelogin"
SESSION_SECONDS = 12 * 3600

_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def prelogin_csrf(secret: str, prelogin: str) -> str:
    return hmac.new(secret.encode(), b"login:" + prelogin.encode(), hashlib.sha256).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison; a missing value never matches."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


class LoginLimiter:
    """Sliding-window count of failed logins. State: the failure times per key."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._fails: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _keys(self, name: str, client: str) -> list[tuple[str, int]]:
        # Per (name, address) stops guessing one password; per address (a looser bound) stops
        # spraying many names from one place.
        return [(f"u:{name.lower()}|{client}", self.max_failures),
                (f"c:{client}", self.max_failures * 4)]

    def retry_after(self, name: str, client: str) -> float:
        """Seconds until another attempt is allowed; 0 if allowed now."""
        t = time.monotonic()
        wait = 0.0
        with self._lock:
            for key, limit in self._keys(name, client):
                q = self._fails.get(key)
                if not q:
                    continue
                while q and t - q[0] > self.window_s:
                    q.popleft()
                if len(q) >= limit:
                    wait = max(wait, self.window_s - (t - q[0]))
        return wait

    def failed(self, name: str, client: str) -> None:
        t = time.monotonic()
        with self._lock:
            for key, _ in self._keys(name, client):
                self._fails[key].append(t)

    def succeeded(self, name: str, client: str) -> None:
        with self._lock:
            self._fails.pop(self._keys(name, client)[0][0], None)
