"""Passwords, session tokens, CSRF tokens, the login rate limit, and the request guard.

- Passwords: argon2id with OWASP's second profile (19 MiB, 2 passes, 1 lane): argon2-cffi's
  default (64 MiB, 3 passes, 4 lanes) made 20 simultaneous logins take 11 s on 2 cores, since
  each lane is a thread; hashes with other parameters are re-hashed at the next login.
- Sessions: a random token in an HttpOnly, SameSite cookie; the database keeps its SHA-256.
- CSRF: a logged-in form carries its session's random token; the login form carries an HMAC of
  a random pre-login cookie under a secret kept in the database (no session exists yet).
- Login rate limit: at most `max_failures` failed logins per (name, client address) and per
  client address x 4 in a sliding window; per process (`serve` runs one process). An attempt
  takes its slot before the password is checked, so parallel guesses cannot overtake the count.
- Request guard (ASGI middleware): caps every request body before it is read (413), puts the
  security headers on every response (error pages included) and answers HEAD like GET.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import defaultdict, deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

SESSION_COOKIE = "instructrl_session"
PRELOGIN_COOKIE = "instructrl_prelogin"
SESSION_SECONDS = 12 * 3600

# OWASP Password Storage Cheat Sheet, argon2id: m=19 MiB, t=2, p=1. One verification costs
# ~35 ms on one core; 20 at once take ~0.5 s on 2 cores (tests/test_label_load.py reports it).
ARGON2 = {"time_cost": 2, "memory_cost": 19 * 1024, "parallelism": 1}
_hasher = PasswordHasher(**ARGON2)
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


# At most one argon2 computation per core at a time: 20 logins at once then finish one after
# another (the first in ~35 ms) instead of all sharing the cores and all finishing at the end,
# and memory stays at cores x 19 MiB however many requests arrive.
_argon2_slots = threading.BoundedSemaphore(os.cpu_count() or 2)


def hash_password(password: str) -> str:
    with _argon2_slots:
        return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    try:
        with _argon2_slots:
            ok = _hasher.verify(stored_hash or _DUMMY_HASH, password)
        return ok and stored_hash is not None
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
    """Sliding-window count of failed logins. State: the attempt times per key.

    `attempt` takes a slot under the lock before the password is checked, and the slot counts
    as a failure until `succeeded` gives it back: N guesses sent at once get at most
    `max_failures` password checks, not N (checking first and counting after the slow argon2
    verification let 18 of 40 parallel guesses through a limit of 5)."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._fails: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _keys(self, name: str, client: str) -> list[tuple[str, int]]:
        # Per (name, address) stops guessing one password; per address (a looser bound) stops
        # spraying many names from one place.
        return [(f"u:{name.lower()}|{client}", self.max_failures),
                (f"c:{client}", self.max_failures * 4)]

    def attempt(self, name: str, client: str) -> tuple[float, float | None]:
        """(0, slot) when the attempt may go ahead (the slot now counts), else (seconds to
        wait, None) and nothing is counted."""
        t = time.monotonic()
        wait = 0.0
        with self._lock:
            if len(self._fails) > 10_000:  # many names or addresses: drop the expired ones
                for key in [k for k, q in self._fails.items()
                            if not q or t - q[-1] > self.window_s]:
                    del self._fails[key]
            keys = self._keys(name, client)
            for key, limit in keys:
                q = self._fails.get(key)
                while q and t - q[0] > self.window_s:
                    q.popleft()
                if q and len(q) >= limit:
                    wait = max(wait, self.window_s - (t - q[0]))
            if wait > 0:
                return wait, None
            for key, _ in keys:
                self._fails[key].append(t)
            return 0.0, t

    def succeeded(self, name: str, client: str, slot: float) -> None:
        """The right password: forget this name's failures from this address, and give the
        address its slot back."""
        with self._lock:
            self._fails.pop(self._keys(name, client)[0][0], None)
            q = self._fails.get(self._keys(name, client)[1][0])
            if q is not None:
                try:
                    q.remove(slot)
                except ValueError:
                    pass  # already out of the window


# ------------------------------------------------------------------ request guard

SECURITY_HEADERS = [
    # No inline script or style anywhere: the policy can forbid them.
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class RequestGuard:
    """ASGI middleware, outside the app's routes and exception handlers:

    - the request body is capped at `limit_for(path)` bytes: a larger Content-Length is
      answered 413 before anything is read, and a body without one (chunked) is counted as it
      is read and cut off with 413 at the limit. Starlette alone reads 1000 form fields of
      1 MB each into memory, and spools a multipart file of any size to /tmp before a route
      can refuse it;
    - every response gets SECURITY_HEADERS (and `Cache-Control: no-store` outside /static/:
      pages hold CSRF tokens and labels), including 413 and 500 pages;
    - HEAD is answered as GET without the body;
    - `render(scope, status, message)` builds the 413 and 500 pages; an exception that reaches
      here after its page is sent is raised on (the server logs it)."""

    def __init__(self, app, *, limit_for, render):
        self.app, self.limit_for, self.render = app, limit_for, render

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        static = scope["path"].startswith("/static/")
        started = False

        async def guarded_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if not static and b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._page(scope, receive, guarded_send, 400,
                                        "Malformed Content-Length header.")
            if int(declared) > limit:
                return await self._page(scope, receive, guarded_send, 413, _too_large(limit))
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge as e:
            if started:
                raise
            await self._page(scope, receive, guarded_send, 413, _too_large(e.limit))
        except Exception:
            if not started:
                await self._page(scope, receive, guarded_send, 500,
                                 "Something went wrong on the server. Reload the page to "
                                 "see what was saved.")
            raise

    async def _page(self, scope, receive, send, status: int, message: str) -> None:
        response = await self.render(scope, status, message)
        if status in (400, 413):
            # The rest of the body is unread: close the connection rather than let the server
            # read and discard it (a client could otherwise stream on for ever).
            response.headers["connection"] = "close"
        await response(scope, receive, send)


def _too_large(limit: int) -> str:
    size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"
    return f"Request too large: this address accepts at most {size}."
