"""Bounded load test: 20 simulated labelers at once against a real uvicorn server on localhost,
each submitting a fixed number of rankings (and racing a double submit of their first one);
afterwards every label is in the database exactly once, as sent. On SQLite and on PostgreSQL
(INSTRUCTRL_TEST_PG_URL, which `make test` sets up through scripts/test-services.sh)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from instructrl.data.records import Ranking
from instructrl.label import security, store
from instructrl.label.app import create_app
from instructrl.label.db import read, write
from instructrl.label.models import Label, Task, User
from instructrl.label.server import serve_in_thread
from instructrl.label.testing import (LabelerClient, make_prompts, make_samples, pg_schema,
                                      random_ranking)

# 20 logins at once from one address is also the most the login limit lets run at once
# (security.LoginLimiter counts attempts in progress).
N_LABELERS, PER_LABELER, K = 20, 5, 4
PASSWORD = "load-test-pass"
PG_URL = os.environ.get("INSTRUCTRL_TEST_PG_URL")


@contextlib.contextmanager
def fresh_db(backend: str, tmp_path) -> Iterator[str]:
    """An empty database: a file under tmp_path, or a schema of its own in the PostgreSQL test
    database (dropped afterwards), so that concurrent test runs do not meet."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/load.db"
        return
    if not PG_URL:
        pytest.skip("PostgreSQL load test: INSTRUCTRL_TEST_PG_URL is not set (`make test` runs "
                    "scripts/test-services.sh, which installs and starts a local PostgreSQL)")
    with pg_schema(PG_URL, "load") as url:
        yield url


def seed(engine) -> None:
    # One argon2 hash shared by all simulated labelers keeps setup short; every login below
    # still verifies it for real.
    hashed = security.hash_password(PASSWORD)
    with write(engine) as s:
        s.add_all(User(name=f"lab{i:02d}", password_hash=hashed, role="labeler")
                  for i in range(N_LABELERS))
    prompts = make_prompts(N_LABELERS * PER_LABELER)
    store.import_records(engine, [("p", i, p) for i, p in enumerate(prompts)],
                         [("s", i, x) for i, x in enumerate(make_samples(prompts, K))])
    assert store.assign(engine, "rank") == N_LABELERS * PER_LABELER


def labeler(base: str, i: int, start: threading.Barrier, ready: threading.Barrier
            ) -> tuple[dict[int, dict], float, float]:
    """Log in (all at once), then rank every task in the queue (all at once); the first task is
    submitted twice at the same time. Returns {task id: form sent}, the finishing time and how
    long the login took (login page, POST /login, the queue page)."""
    rng = random.Random(i)
    sent: dict[int, dict] = {}
    with httpx.Client(base_url=base, timeout=120) as http:
        lc = LabelerClient(http, f"lab{i:02d}")
        start.wait()
        t0 = time.perf_counter()
        lc.login(PASSWORD)
        login_s = time.perf_counter() - t0
        ready.wait()
        for _ in range(PER_LABELER + 1):
            nxt = lc.next_task()
            if nxt is None:
                break
            tid, _, idx = nxt
            assert sorted(idx) == list(range(K))
            form = random_ranking(K, rng)
            if not sent:  # a double click: two identical POSTs in flight together
                with httpx.Client(base_url=base, timeout=120, cookies=http.cookies) as twin:
                    lc2 = LabelerClient(twin, lc.name, lc.csrf)
                    with ThreadPoolExecutor(2) as pool:
                        codes = [f.result().status_code for f in
                                 [pool.submit(c.post, tid, "rank", form) for c in (lc, lc2)]]
                assert codes == [303, 303], codes
            else:
                assert lc.post(tid, "rank", form).status_code == 303
            sent[tid] = form
    return sent, time.perf_counter(), login_s


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_labelers_every_label_once(backend, tmp_path):
    with fresh_db(backend, tmp_path) as url:
        run_load(backend, url)


def run_load(backend: str, url: str) -> None:
    app = create_app(url)
    engine = app.state.engine
    try:
        seed(engine)
        t_login = []
        start = threading.Barrier(N_LABELERS)
        ready = threading.Barrier(N_LABELERS, action=lambda: t_login.append(time.perf_counter()))
        with serve_in_thread(app) as base, ThreadPoolExecutor(N_LABELERS) as pool:
            t0 = time.perf_counter()
            results = [f.result() for f in
                       [pool.submit(labeler, base, i, start, ready) for i in range(N_LABELERS)]]
        label_s = max(t for _, t, _ in results) - t_login[0]
        logins = sorted(s for _, _, s in results)
        sent = {tid: form for r, _, _ in results for tid, form in r.items()}
        assert len(sent) == N_LABELERS * PER_LABELER

        with read(engine) as s:
            n_labels = s.scalar(select(func.count()).select_from(Label))
            dupes = s.execute(select(Label.task_id).group_by(Label.task_id)
                              .having(func.count() > 1)).all()
            states = dict(s.execute(select(Task.state, func.count()).group_by(Task.state)).all())
            rows = s.execute(select(Label.task_id, Label.record)).all()
        assert n_labels == N_LABELERS * PER_LABELER and dupes == []
        assert states == {"done": N_LABELERS * PER_LABELER}
        for tid, rec in rows:  # each stored label is the one its labeler sent
            r, form = Ranking.from_dict(json.loads(rec)), sent[tid]
            assert r.ranking == json.loads(form["ranking"][0])
            assert r.likert == [int(form[f"likert_{i}"][0]) for i in range(K)]
        exported = store.export_records(engine)["train"]["rankings"]
        assert len(exported) == N_LABELERS * PER_LABELER
        a = security.ARGON2
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\n{backend} (load average {load} on {os.cpu_count()} cores): "
              f"{N_LABELERS} concurrent logins (argon2id m={a['memory_cost'] >> 10} "
              f"MiB t={a['time_cost']} p={a['parallelism']}) all done in {t_login[0] - t0:.2f} s; "
              f"one login took median {logins[len(logins) // 2]:.2f} s, max {logins[-1]:.2f} s; "
              f"then {n_labels} rankings (+{N_LABELERS} racing double submits) in {label_s:.1f} s"
              f" = {n_labels / label_s:.0f} labels/s")
    finally:
        engine.dispose()
