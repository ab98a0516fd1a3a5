"""The labeling app behind a real uvicorn socket on localhost (what `instructrl label serve`
runs): which client address the login limit counts (X-Forwarded-For believed only from named
proxies), the limit under parallel guesses, request bodies refused at the socket, and Secure
cookies from a trusted proxy's X-Forwarded-Proto."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest

from instructrl.cli import main as cli_main
from instructrl.label import app as app_module
from instructrl.label import security, store
from instructrl.label.app import create_app
from instructrl.label.server import config, serve_in_thread
from instructrl.label.testing import csrf_of

PASSWORD = "alice-pass-1"


@pytest.fixture
def app(tmp_path):
    app = create_app(f"sqlite:///{tmp_path}/server.db")
    store.create_user(app.state.engine, "alice", PASSWORD)
    yield app
    app.state.engine.dispose()


def guess(http: httpx.Client, token: str, password: str = "wrong-guess", **headers) -> int:
    return http.post("/login", data={"csrf_token": token, "name": "alice", "password": password},
                     headers=headers, follow_redirects=False).status_code


def test_forwarded_for_is_believed_only_from_named_proxies(app):
    # Before: uvicorn believed X-Forwarded-For from 127.0.0.1, so from loopback (a tunnel, a
    # proxy passing the header on) every guess could claim a new address: 30 of 30 checked.
    with serve_in_thread(app) as base, httpx.Client(base_url=base) as http:
        token = csrf_of(http.get("/login").text)
        codes = [guess(http, token, **{"X-Forwarded-For": f"10.0.0.{i}"}) for i in range(8)]
        assert codes == [401] * 5 + [429] * 3
    with serve_in_thread(app, forwarded_allow_ips="127.0.0.1") as base, \
            httpx.Client(base_url=base) as http:
        # a named proxy: its header is the client address, so the limit is per real client
        token = csrf_of(http.get("/login").text)
        codes = [guess(http, token, **{"X-Forwarded-For": "10.1.0.1"}) for _ in range(6)]
        assert codes == [401] * 5 + [429]
        assert guess(http, token, **{"X-Forwarded-For": "10.1.0.2"}) == 401
    assert config(app).proxy_headers is False
    assert config(app, forwarded_allow_ips="10.0.0.5").forwarded_allow_ips == "10.0.0.5"


def test_serve_has_the_proxy_option(capsys):
    with pytest.raises(SystemExit):
        cli_main(["label", "serve", "--help"])
    out = capsys.readouterr().out
    assert "--forwarded-allow-ips" in out and "default: none" in out


def test_parallel_guesses_get_no_more_password_checks_than_the_limit(app, monkeypatch):
    # Before: 40 wrong guesses sent at once got 18 password checks against a limit of 5: the
    # count was read before the (slow) check and written after it.
    checks = []
    verify = security.verify_password

    def slow_verify(stored, password):
        checks.append(password)
        time.sleep(0.2)  # argon2 on a busy machine: a wide window for the race
        return verify(stored, password)

    monkeypatch.setattr(security, "verify_password", slow_verify)
    with serve_in_thread(app) as base:
        token_of = {}
        clients = [httpx.Client(base_url=base, timeout=60) for _ in range(40)]
        for c in clients:
            token_of[c] = csrf_of(c.get("/login").text)
        start = threading.Barrier(len(clients))

        def one(c):
            start.wait()
            return guess(c, token_of[c])

        with ThreadPoolExecutor(len(clients)) as pool:
            codes = sorted(pool.map(one, clients))
        for c in clients:
            c.close()
        assert len(checks) == 5 and codes == [401] * 5 + [429] * 35
        # the right password is now refused too, without a check, for the window
        c = httpx.Client(base_url=base)
        assert guess(c, csrf_of(c.get("/login").text), PASSWORD) == 429 and len(checks) == 5
        c.close()


def test_limiter_counts_attempts_atomically():
    limiter = security.LoginLimiter(max_failures=5)
    start = threading.Barrier(40)

    def one(_):
        start.wait()
        return limiter.attempt("alice", "10.0.0.1")[1] is not None

    with ThreadPoolExecutor(40) as pool:
        assert sum(pool.map(one, range(40))) == 5
    # a success gives its slot back to the address, and clears the name's failures
    other = security.LoginLimiter(max_failures=1)  # per address: 4
    for name in ("a", "b", "c", "d"):
        _, slot = other.attempt(name, "10.0.0.2")
        other.succeeded(name, "10.0.0.2", slot)
    assert other.attempt("e", "10.0.0.2")[1] is not None


def raw_request(base: str, head: bytes, body_chunks=(), read_timeout: float = 10.0
                ) -> tuple[int, int]:
    """Send a request by hand; (status, body bytes the socket accepted before the answer)."""
    host, port = urlsplit(base).hostname, urlsplit(base).port
    sent = 0
    with socket.create_connection((host, port), timeout=read_timeout) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        data = b""
        while b"\r\n" not in data:
            part = s.recv(4096)
            if not part:
                break
            data += part
    return int(data.split(b" ", 2)[1]), sent


def test_bodies_refused_at_the_socket(app):
    with serve_in_thread(app) as base:
        host = urlsplit(base).netloc.encode()
        # a declared gigabyte: answered 413 at once, nothing read (before: read whole)
        head = (b"POST /login HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: "
                b"application/x-www-form-urlencoded\r\nContent-Length: 1073741824\r\n\r\n")
        t0 = time.perf_counter()
        status, _ = raw_request(base, head)
        assert status == 413 and time.perf_counter() - t0 < 10
        # a chunked body with no length: cut off at the limit, not read to the end
        head = (b"POST /login HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: "
                b"application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n")
        field = b"f=" + b"a" * 60_000 + b"&"
        chunk = f"{len(field):x}\r\n".encode() + field + b"\r\n"
        status, sent = raw_request(base, head, (chunk for _ in range(2000)))  # 120 MB offered
        assert status == 413
        # what the socket took stays far below what was offered (kernel buffers hold some)
        assert sent < 2000 * len(chunk) // 2, sent
        assert app_module.FORM_BODY_LIMIT < sent


def test_secure_cookie_from_a_trusted_proxy(app):
    def prelogin_cookie(base: str, **headers) -> str:
        with httpx.Client(base_url=base) as http:
            return http.get("/login", headers=headers).headers["set-cookie"].lower()

    with serve_in_thread(app) as base:  # no proxy named: the header is ignored
        assert "; secure" not in prelogin_cookie(base, **{"X-Forwarded-Proto": "https"})
    with serve_in_thread(app, forwarded_allow_ips="127.0.0.1") as base:
        assert "; secure" in prelogin_cookie(base, **{"X-Forwarded-Proto": "https"})
        assert "; secure" not in prelogin_cookie(base)
