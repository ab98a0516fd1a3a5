"""Run the app with uvicorn: `config` (what `instructrl label serve` runs) and
`serve_in_thread` (tests, notebooks, the sandbox demo)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def config(app, host: str = "127.0.0.1", port: int = 8000, *,
           forwarded_allow_ips: str | None = None, **kwargs) -> uvicorn.Config:
    """uvicorn's settings for the app. X-Forwarded-For/-Proto are believed only from the
    proxies named in `forwarded_allow_ips` (comma-separated addresses or networks, "*" for
    any); by default from none. uvicorn's own default trusts 127.0.0.1, so anything that
    reaches the app through loopback (an SSH tunnel, a proxy that passes the header on) could
    pick its client address and slip past the per-address login limit."""
    return uvicorn.Config(app, host=host, port=port, proxy_headers=bool(forwarded_allow_ips),
                          forwarded_allow_ips=forwarded_allow_ips or "", server_header=False,
                          **kwargs)


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int | None = None,
                    timeout_s: float = 20.0, *, forwarded_allow_ips: str | None = None
                    ) -> Iterator[str]:
    """Serve `app` on a real socket until the block ends; yields the base URL."""
    port = port or free_port(host)
    server = uvicorn.Server(config(app, host, port, forwarded_allow_ips=forwarded_allow_ips,
                                   log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="instructrl-label-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the labeling server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
