"""Helpers that drive the app the way a browser does (tests, load tests, demos): synthetic
prompts and samples, and a client that logs in, reads CSRF tokens from pages and posts forms.
Works with any httpx.Client, including FastAPI's TestClient."""

from __future__ import annotations

import contextlib
import json
import random
import re
import secrets
from dataclasses import dataclass
from typing import Iterator

from instructrl.data.records import FLAGS, Prompt, Response
from instructrl.label.samples import SampleSet

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_CARDS = re.compile(r'data-cards="([^"]*)"')
_TASK = re.compile(r"^/tasks/(\d+)$")


def make_prompts(n: int, split: str = "train", prefix: str = "p") -> list[Prompt]:
    return [Prompt(id=f"{prefix}{i}", user_id=f"u{i % 7}", text=f"Question {i}: what is {i} + {i}?",
                   category="open_qa", split=split) for i in range(n)]


def make_samples(prompts: list[Prompt], k: int = 4, seed: int = 0) -> list[SampleSet]:
    rng = random.Random(seed)
    return [SampleSet(p.id, [Response(f"answer {j} to {p.id}: {rng.randint(0, 99)}",
                                      ("sft", "ppo", "base")[j % 3]) for j in range(k)])
            for p in prompts]


def csrf_of(html: str) -> str:
    m = _CSRF.search(html)
    if not m:
        raise AssertionError("no CSRF token on the page")
    return m.group(1)


def random_ranking(k: int, rng: random.Random) -> dict[str, list[str]]:
    """A valid ranking form for K responses: random order, sometimes a tie, random flags, and
    Likert scores that agree with the ranking (higher rows never score lower)."""
    order = list(range(k))
    rng.shuffle(order)
    groups = [[i] for i in order]
    if k > 2 and rng.random() < 0.5:
        j = rng.randrange(len(groups) - 1)
        groups[j:j + 2] = [groups[j] + groups[j + 1]]
    scores = sorted((rng.randint(1, 7) for _ in groups), reverse=True)
    form = {"ranking": [json.dumps(groups)]}
    for g, score in zip(groups, scores):
        for i in g:
            form[f"likert_{i}"] = [str(score)]
    for i in range(k):
        form[f"flags_{i}"] = rng.sample(FLAGS, rng.randint(0, 2))
    return form


@dataclass
class LabelerClient:
    """One simulated labeler on an httpx.Client (cookies kept by the client)."""

    http: object  # httpx.Client
    name: str
    csrf: str | None = None

    def login(self, password: str) -> None:
        page = self.http.get("/login")
        r = self.http.post("/login", data={"csrf_token": csrf_of(page.text), "name": self.name,
                                           "password": password}, follow_redirects=False)
        if r.status_code != 303:
            raise AssertionError(f"login {self.name}: HTTP {r.status_code}")
        self.csrf = csrf_of(self.http.get("/").text)

    def next_task(self) -> tuple[int, str, list[int]] | None:
        """(task id, page html, response indices) of the next pending task, or None."""
        r = self.http.get("/next", follow_redirects=True)
        m = _TASK.search(r.url.path)
        if not m:
            return None
        cards = _CARDS.search(r.text)
        idx = [c["idx"] for c in json.loads(_unescape(cards.group(1)))] if cards else []
        return int(m.group(1)), r.text, idx

    def post(self, task_id: int, action: str, form: dict[str, list[str]]):
        data = {"csrf_token": [self.csrf], **form}
        return self.http.post(f"/tasks/{task_id}/{action}", data=data, follow_redirects=False)


def _unescape(s: str) -> str:
    return (s.replace("&#34;", '"').replace("&quot;", '"').replace("&#39;", "'")
            .replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


@contextlib.contextmanager
def pg_schema(pg_url: str, prefix: str = "t") -> Iterator[str]:
    """The URL of a new, empty schema in the PostgreSQL database `pg_url`, dropped when the
    block ends, so that concurrent test runs never meet."""
    import os

    from sqlalchemy import create_engine

    from instructrl.label.db import normalize_url

    schema = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(normalize_url(pg_url))
    with admin.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        url = normalize_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
