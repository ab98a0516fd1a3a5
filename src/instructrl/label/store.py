"""The labeling store: import, users (create, deactivate, passwords, sessions), assignment,
submissions, progress, agreement, the label browser, export.

Every function that writes does it in one transaction (`db.write`): an error anywhere leaves
the database as it was. Submissions are idempotent: the unique (task, record kind) constraint
admits one label per task, and a repeated identical submission is answered as a success
without writing anything.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from instructrl.data.jsonl import read_records, write_records
from instructrl.data.records import SPLITS, Demonstration, Labeler, Prompt, Ranking, Response
from instructrl.errors import InputError
from instructrl.label import forms, security
from instructrl.label.agreement import agreement
from instructrl.label.db import read, write
from instructrl.label.models import (ROLES, TASK_KINDS, AuthSession, Label, PromptRow,
                                     ResponseRow, ResponseSet, Setting, Task, User, now)
from instructrl.label.samples import SampleSet, file_rows, parse_rows

EDIT_POLICY = "human"  # Response.policy of a labeler's edit
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8


class Forbidden(Exception):
    """The user may not see or change this (HTTP 403)."""


class NotFound(Exception):
    """No such task (HTTP 404)."""


class Conflict(Exception):
    """The task was already submitted with different content (HTTP 409)."""


# ---------------------------------------------------------------- settings and users

def secret(engine: Engine) -> str:
    """The app secret (created once, shared by every process through the database)."""
    with read(engine) as s:
        row = s.get(Setting, "secret")
        if row is not None:
            return row.value
    try:
        with write(engine) as s:
            if s.get(Setting, "secret") is None:
                s.add(Setting(key="secret", value=secrets.token_hex(32)))
    except IntegrityError:
        pass  # another process created it first
    with read(engine) as s:
        return s.get(Setting, "secret").value


def is_name(name: str) -> bool:
    """Whether `name` can be a user name (letters, digits, '_', '.', '@', '-'; 1-64)."""
    return bool(_NAME.fullmatch(name))


def create_user(engine: Engine, name: str, password: str, role: str = "labeler",
                heldout: bool = False) -> int:
    """A new user; returns its id. Names are the records' `labeler_id`."""
    if not _NAME.fullmatch(name):
        raise InputError("use 1-64 letters, digits, '_', '.', '@' or '-'", field="name")
    if role not in ROLES:
        raise InputError(f"unknown role {role!r} (one of {', '.join(ROLES)})", field="role")
    if len(password) < MIN_PASSWORD:
        raise InputError(f"must be at least {MIN_PASSWORD} characters", field="password")
    hashed = security.hash_password(password)
    try:
        with write(engine) as s:
            if s.scalar(select(User.id).where(User.name == name)) is not None:
                raise InputError(f"user {name!r} already exists", field="name")
            user = User(name=name, password_hash=hashed, role=role, heldout=heldout)
            s.add(user)
            s.flush()
            return user.id
    except IntegrityError:
        raise InputError(f"user {name!r} already exists", field="name") from None


def users(engine: Engine) -> list[dict]:
    with read(engine) as s:
        live = dict(s.execute(select(AuthSession.user_id, func.count()).where(
            AuthSession.expires_at >= now()).group_by(AuthSession.user_id)).all())
        return [{"id": u.id, "name": u.name, "role": u.role, "heldout": u.heldout,
                 "active": u.active, "sessions": live.get(u.id, 0)}
                for u in s.scalars(select(User).order_by(User.name))]


def _user(s, name: str) -> User:
    user = s.scalar(select(User).where(User.name == name)) if _NAME.fullmatch(name) else None
    if user is None:
        raise InputError(f"no user named {name!r}", field="name")
    return user


def _end_sessions(s, user_id: int) -> int:
    return s.query(AuthSession).filter(AuthSession.user_id == user_id).delete()


def set_active(engine: Engine, name: str, active: bool) -> int:
    """Activate or deactivate a user. A deactivated user cannot log in, their sessions end at
    once (returns how many), and `assign` gives them nothing new; their labels stay. The last
    active admin cannot be deactivated."""
    with write(engine) as s:
        user = _user(s, name)
        if not active and user.role == "admin" and user.active and s.scalar(
                select(func.count()).select_from(User).where(
                    User.role == "admin", User.active.is_(True))) <= 1:
            raise InputError("the last active admin cannot be deactivated", field="name")
        user.active = active
        return 0 if active else _end_sessions(s, user.id)


def set_password(engine: Engine, name: str, password: str) -> int:
    """A new password for `name`; every session of theirs ends (returns how many)."""
    if len(password) < MIN_PASSWORD:
        raise InputError(f"must be at least {MIN_PASSWORD} characters", field="password")
    hashed = security.hash_password(password)
    with write(engine) as s:
        user = _user(s, name)
        user.password_hash = hashed
        return _end_sessions(s, user.id)


def end_sessions(engine: Engine, name: str) -> int:
    """Log `name` out everywhere; returns the number of sessions ended."""
    with write(engine) as s:
        return _end_sessions(s, _user(s, name).id)


def login(engine: Engine, name: str, password: str) -> tuple[str, str] | None:
    """(session token, CSRF token) for a right password, else None. Only the token's hash is
    stored."""
    stored, user_id = None, None
    if _NAME.fullmatch(name):  # no such user otherwise; the dummy hash below still costs the time
        with read(engine) as s:
            user = s.scalar(select(User).where(User.name == name, User.active.is_(True)))
            stored, user_id = (user.password_hash, user.id) if user else (None, None)
    if not security.verify_password(stored, password):
        return None
    token, csrf = security.new_token(), security.new_token()
    with write(engine) as s:
        s.add(AuthSession(token_hash=security.token_hash(token), user_id=user_id,
                          csrf_token=csrf, expires_at=now() + security.SESSION_SECONDS))
        if security.needs_rehash(stored):
            s.get(User, user_id).password_hash = security.hash_password(password)
        # Old sessions are dropped here rather than on every request (reads stay read-only).
        s.query(AuthSession).filter(AuthSession.expires_at < now()).delete()
    return token, csrf


@dataclass(frozen=True)
class SessionUser:
    id: int
    name: str
    role: str
    heldout: bool
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def session_user(engine: Engine, token: str | None) -> SessionUser | None:
    if not token:
        return None
    with read(engine) as s:
        row = s.get(AuthSession, security.token_hash(token))
        if row is None or row.expires_at < now() or not row.user.active:
            return None
        u = row.user
        return SessionUser(u.id, u.name, u.role, u.heldout, row.csrf_token)


def logout(engine: Engine, token: str | None) -> None:
    if token:
        with write(engine) as s:
            s.query(AuthSession).filter(
                AuthSession.token_hash == security.token_hash(token)).delete()


# ---------------------------------------------------------------- import

@dataclass
class ImportReport:
    prompts_new: int = 0
    prompts_existing: int = 0
    sets_new: int = 0
    sets_existing: int = 0

    def __str__(self) -> str:
        return (f"prompts: {self.prompts_new} new, {self.prompts_existing} already there; "
                f"response sets: {self.sets_new} new, {self.sets_existing} already there")


def _prompt_row(p: Prompt) -> PromptRow:
    return PromptRow(id=p.id, user_id=p.user_id, text=p.text, category=p.category,
                     style=p.style, split=p.split, meta=json.dumps(p.meta, sort_keys=True))


def _same_prompt(row: PromptRow, p: Prompt) -> bool:
    return (row.user_id, row.text, row.category, row.style, row.split, json.loads(row.meta)) \
        == (p.user_id, p.text, p.category, p.style, p.split, p.meta)


def import_records(engine: Engine, prompts: list[tuple[str, int, Prompt]] = (),
                   samples: list[tuple[str, int, SampleSet]] = ()) -> ImportReport:
    """Add prompts and response sets, given as (source file, line, record), in ONE
    transaction; what is already there is skipped. A prompt id already imported with different
    content, or a samples line naming an unknown prompt, is an InputError naming the file and
    line, and then nothing at all is imported."""
    report = ImportReport()
    with write(engine) as s:
        seen: dict[str, Prompt] = {}
        for source, lineno, p in prompts:
            _fits(p.id, 200, source, lineno, "id")
            _fits(p.user_id, 200, source, lineno, "user_id")
            if p.id in seen:
                if seen[p.id] != p:
                    raise InputError(f"prompt id {p.id!r} appears twice with different content",
                                     path=source, line=lineno, field="id")
                report.prompts_existing += 1
                continue
            seen[p.id] = p
            row = s.get(PromptRow, p.id)
            if row is None:
                s.add(_prompt_row(p))
                report.prompts_new += 1
            elif _same_prompt(row, p):
                report.prompts_existing += 1
            else:
                raise InputError(f"prompt id {p.id!r} is already imported with different "
                                 "content", path=source, line=lineno, field="id")
        s.flush()
        keys: set[str] = set()
        for source, lineno, ss in samples:
            _fits(ss.prompt_id, 200, source, lineno, "prompt_id")
            for i, r in enumerate(ss.responses):
                _fits(r.policy, 200, source, lineno, f"responses[{i}].policy")
            key = ss.key()
            if key in keys or s.scalar(select(ResponseSet.id).where(ResponseSet.key == key)):
                report.sets_existing += 1
                continue
            keys.add(key)
            if s.get(PromptRow, ss.prompt_id) is None:
                raise InputError(f"unknown prompt {ss.prompt_id!r} (import its prompt first, "
                                 "or in the same import)", path=source, line=lineno,
                                 field="prompt_id")
            rs = ResponseSet(key=key, prompt_id=ss.prompt_id)
            rs.responses = [ResponseRow(idx=i, text=r.text, policy=r.policy)
                            for i, r in enumerate(ss.responses)]
            s.add(rs)
            report.sets_new += 1
    return report


def _fits(value: str, n: int, source: str, lineno: int, field: str) -> None:
    # The column is String(n): PostgreSQL refuses a longer value (SQLite would keep it).
    if len(value) > n:
        raise InputError(f"longer than {n} characters", path=source, line=lineno, field=field)


def with_source(source: str, rows: list[tuple[int, object]]) -> list[tuple[str, int, object]]:
    return [(source, lineno, rec) for lineno, rec in rows]


def import_files(engine: Engine, prompts: str | os.PathLike | None = None,
                 samples: list[str | os.PathLike] = ()) -> ImportReport:
    """Import a prompts file (`Prompt` records) and samples files (format: `label.samples`).
    Every file is parsed before anything is written, and all of it is one transaction."""
    p_rows = with_source(str(prompts), parse_rows(file_rows(prompts), str(prompts),
                                                  Prompt.from_dict)) if prompts else []
    s_rows = [row for path in samples for row in with_source(
        str(path), parse_rows(file_rows(path), str(path), SampleSet.from_dict))]
    return import_records(engine, p_rows, s_rows)


# ---------------------------------------------------------------- assignment

POOLS = ("train", "heldout", "all")


def assign(engine: Engine, kind: str, labelers: list[str] | None = None, *,
           pool: str | None = None, overlap: int = 1, split: str | None = None,
           limit: int | None = None) -> int:
    """Give each item (a prompt for `demo`, a response set for `rank`/`edit`) to `overlap`
    labelers of a pool, least loaded first; returns the number of new tasks. Overlap > 1 gives
    the same item to several labelers, which agreement is measured on.

    `pool` is "train", "heldout" or "all" active labelers (default: the pool of the named
    `labelers`, else "train"). `labelers` names who may get new tasks; the overlap counts
    every labeler of the pool, so naming a newcomer does not hand them items that others
    already cover. An item's task counts towards its overlap when it is done or skipped, or
    pending with an active labeler (a deactivated labeler's pending items go to others).
    Running it again adds only what is missing. `limit`: at most this many items get tasks."""
    if kind not in TASK_KINDS:
        raise InputError(f"unknown task kind {kind!r} (one of {', '.join(TASK_KINDS)})",
                         field="kind")
    if pool is not None and pool not in POOLS:
        raise InputError(f"unknown pool {pool!r} (train, heldout or all)", field="pool")
    if split is not None and split not in SPLITS:
        raise InputError(f"unknown split {split!r} (one of {', '.join(SPLITS)}, or none for "
                         "every prompt)", field="split")
    if overlap < 1:
        raise InputError(f"must be >= 1, got {overlap}", field="overlap")
    if limit is not None and limit < 1:
        raise InputError(f"must be >= 1 (or empty for every item), got {limit}", field="limit")
    created = 0
    with write(engine) as s:
        active = select(User).where(User.role == "labeler", User.active.is_(True))
        if labelers:
            found = {u.name: u for u in s.scalars(active.where(User.name.in_(labelers)))}
            missing = [n for n in labelers if n not in found]
            if missing:
                raise InputError(f"no active labeler named {missing[0]!r}", field="labelers")
            team = [found[n] for n in dict.fromkeys(labelers)]
            held = {u.heldout for u in team}
            if pool is None:
                pool = "all" if len(held) > 1 else ("heldout" if held == {True} else "train")
            elif pool != "all" and held != {pool == "heldout"}:
                odd = next(u.name for u in team if u.heldout != (pool == "heldout"))
                raise InputError(f"labeler {odd!r} is not in the {pool} pool", field="labelers")
        pool = pool or "train"
        q = active if pool == "all" else active.where(User.heldout.is_(pool == "heldout"))
        members = list(s.scalars(q.order_by(User.name)))
        if len(members) < overlap:
            raise InputError(f"overlap {overlap} needs at least {overlap} labelers, have "
                             f"{len(members)} active in the {pool} pool", field="overlap")
        if not labelers:
            team = members
        if kind == "demo":
            q = select(PromptRow.id).order_by(PromptRow.id)
            if split:
                q = q.where(PromptRow.split == split)
            items = [(f"prompt:{pid}", pid, None) for pid in s.scalars(q)]
        else:
            q = select(ResponseSet.id, ResponseSet.prompt_id).join(PromptRow).order_by(
                ResponseSet.id)
            if split:
                q = q.where(PromptRow.split == split)
            items = [(f"set:{sid}", pid, sid) for sid, pid in s.execute(q)]
        # Who covers what: every labeler of the pool, not only the named ones.
        q = select(Task.labeler_id, Task.item, Task.state, User.active).join(
            User, User.id == Task.labeler_id).where(Task.kind == kind)
        if pool != "all":
            q = q.where(User.heldout.is_(pool == "heldout"))
        have: dict[str, set[int]] = defaultdict(set)  # item -> labelers who cover it
        taken: dict[str, set[int]] = defaultdict(set)  # item -> labelers with any task on it
        load = {u.id: 0 for u in team}
        for uid, item, state, is_active in s.execute(q):
            taken[item].add(uid)
            if state != "pending" or is_active:
                have[item].add(uid)
            if uid in load:
                load[uid] += 1
        items_used = 0
        for item, pid, sid in items:
            need = overlap - len(have[item])
            if need <= 0:
                continue
            free = sorted((u for u in team if u.id not in taken[item]),
                          key=lambda u: (load[u.id], u.name))
            if not free:
                continue
            if limit is not None and items_used >= limit:
                break
            items_used += 1
            for u in free[:need]:
                s.add(Task(labeler_id=u.id, kind=kind, item=item, prompt_id=pid, set_id=sid))
                load[u.id] += 1
                created += 1
    return created


# ---------------------------------------------------------------- labeler views

def queue(engine: Engine, user: SessionUser) -> dict:
    """The user's own tasks: pending first (oldest first), then a count of finished ones."""
    with read(engine) as s:
        rows = s.execute(select(Task.id, Task.kind, Task.prompt_id, PromptRow.text).join(
            PromptRow).where(Task.labeler_id == user.id, Task.state == "pending").order_by(
            Task.id)).all()
        done = dict(s.execute(select(Task.state, func.count()).where(
            Task.labeler_id == user.id).group_by(Task.state)).all())
    return {"pending": [{"id": i, "kind": k, "prompt_id": p, "preview": t[:140]}
                        for i, k, p, t in rows],
            "done": done.get("done", 0), "skipped": done.get("skipped", 0)}


def next_task(engine: Engine, user: SessionUser) -> int | None:
    with read(engine) as s:
        return s.scalar(select(Task.id).where(Task.labeler_id == user.id,
                                              Task.state == "pending").order_by(Task.id))


def task_state(engine: Engine, user: SessionUser, task_id: int) -> str | None:
    """The state of the user's own task `task_id`, or None (not theirs, or no such task)."""
    with read(engine) as s:
        return s.scalar(select(Task.state).where(Task.id == task_id,
                                                 Task.labeler_id == user.id))


def _owned(s, user: SessionUser, task_id: int, *, lock: bool = False) -> Task:
    q = select(Task).where(Task.id == task_id)
    if lock:
        q = q.with_for_update()  # PostgreSQL: a concurrent double submit waits here
    task = s.scalar(q)
    if task is None:
        raise NotFound(f"no task {task_id}")
    if task.labeler_id != user.id:
        raise Forbidden("this task is assigned to another labeler")
    return task


def display_order(task_id: int, k: int) -> list[int]:
    """The order a task shows its responses in: shuffled per task (seeded by its id, so a
    reload shows the same order) so that position in the file biases no one."""
    order = list(range(k))
    random.Random(task_id).shuffle(order)
    return order


def letters(task_id: int, k: int) -> list[str]:
    """letters[i]: the letter response i is shown under on task `task_id`'s page."""
    out = [""] * k
    for n, i in enumerate(display_order(task_id, k)):
        out[i] = chr(65 + n)
    return out


def task_view(engine: Engine, user: SessionUser, task_id: int) -> dict:
    """What the task page shows. Model names (`policy`) are not shown: labelers judge blind."""
    with read(engine) as s:
        task = _owned(s, user, task_id)
        p = task.prompt
        view = {"id": task.id, "kind": task.kind, "state": task.state,
                "skip_reason": task.skip_reason,
                "prompt": {"id": p.id, "text": p.text, "category": p.category, "style": p.style},
                "responses": []}
        if task.response_set is not None:
            resp = task.response_set.responses
            view["responses"] = [{"idx": resp[i].idx, "letter": chr(65 + n), "text": resp[i].text}
                                 for n, i in enumerate(display_order(task.id, len(resp)))]
        labels = {lab.kind: json.loads(lab.record) for lab in
                  s.scalars(select(Label).where(Label.task_id == task.id))}
        view["labels"] = labels
        return view


# ---------------------------------------------------------------- submissions

def _records(task: Task, user: SessionUser, action: str, form: dict[str, list[str]]
             ) -> tuple[str, str | None, dict[str, dict]]:
    """Validate a submission against its task: (new state, skip reason, {record kind: record}).
    Raises InputError before anything is written."""
    pid = task.prompt_id
    responses = [Response(r.text, r.policy) for r in task.response_set.responses] \
        if task.response_set is not None else []
    if action == "skip":
        reason = forms.parse_skip(form)
        if task.kind == "rank":  # exported, so the RM stage sees that the item was unclear
            return "skipped", reason, {"ranking": Ranking(
                pid, user.name, responses, ranking=[], skipped=reason).to_dict()}
        return "skipped", reason, {}
    if action != task.kind:
        raise InputError(f"this is a {task.kind} task, not {action}", field="task")
    if task.kind == "demo":
        return "done", None, {"demonstration": Demonstration(
            pid, user.name, forms.parse_demonstration(form)).to_dict()}
    if task.kind == "rank":
        f = forms.parse_ranking(form, len(responses), letters(task.id, len(responses)))
        return "done", None, {"ranking": Ranking(pid, user.name, responses, **f).to_dict()}
    base, text = forms.parse_edit(form, [r.text for r in responses])
    return "done", None, {
        "demonstration": Demonstration(pid, user.name, text).to_dict(),
        # The edit beats the original (paper section 5.3 suggests edits as a richer signal).
        "ranking": Ranking(pid, user.name, [Response(text, EDIT_POLICY), responses[base]],
                           ranking=[[0], [1]]).to_dict()}


def submit(engine: Engine, user: SessionUser, task_id: int, action: str,
           form: dict[str, list[str]]) -> str:
    """Store a submission (`action`: the task's kind, or "skip") in one transaction. Returns
    "created", or "duplicate" when the same submission is already stored. Raises InputError
    (malformed, nothing written), Forbidden, NotFound or Conflict."""
    for attempt in range(2):
        try:
            with write(engine) as s:
                task = _owned(s, user, task_id, lock=True)
                state, reason, records = _records(task, user, action, form)
                if task.state != "pending":
                    existing = {lab.kind: json.loads(lab.record) for lab in
                                s.scalars(select(Label).where(Label.task_id == task.id))}
                    if (task.state, task.skip_reason, existing) == (state, reason, records):
                        return "duplicate"
                    raise Conflict(f"task {task_id} was already submitted "
                                   f"({task.state}) with different content")
                for kind, rec in records.items():
                    _validate(kind, rec)
                    s.add(Label(task_id=task.id, kind=kind, labeler_id=user.id,
                                heldout=task.labeler.heldout, record=json.dumps(
                                    rec, ensure_ascii=False)))
                task.state, task.skip_reason, task.done_at = state, reason, now()
            return "created"
        except IntegrityError:
            # A concurrent identical submit won the unique constraint: the retry sees its
            # result and answers "duplicate" (or Conflict).
            if attempt:
                raise
    raise AssertionError("unreachable")


def _validate(kind: str, rec: dict) -> None:
    # The export must read back as the project's records; check at the door, not at export.
    (Ranking if kind == "ranking" else Demonstration).from_dict(rec)


# ---------------------------------------------------------------- admin reports and export

def progress(engine: Engine) -> list[dict]:
    """Per labeler and task kind: tasks assigned, done, skipped, pending."""
    with read(engine) as s:
        rows = s.execute(select(User.name, User.heldout, Task.kind, Task.state, func.count())
                         .join(Task, Task.labeler_id == User.id)
                         .group_by(User.name, User.heldout, Task.kind, Task.state)).all()
        names = s.execute(select(User.name, User.heldout).where(User.role == "labeler")
                          .order_by(User.name)).all()
    table: dict[tuple[str, str], dict] = {}
    for name, heldout, kind, state, n in rows:
        row = table.setdefault((name, kind), {"labeler": name, "heldout": heldout, "kind": kind,
                                              "assigned": 0, "pending": 0, "done": 0,
                                              "skipped": 0})
        row[state] += n
        row["assigned"] += n
    out = [table[key] for key in sorted(table)]
    listed = {name for name, _ in table}
    out += [{"labeler": n, "heldout": h, "kind": None, "assigned": 0, "pending": 0, "done": 0,
             "skipped": 0} for n, h in names if n not in listed]
    return out


def agreement_report(engine: Engine) -> dict:
    """Agreement on ranking tasks several labelers did: among training labelers, and all."""
    with read(engine) as s:
        rows = s.execute(select(Task.set_id, User.name, Label.heldout, Label.record)
                         .join(Label, Label.task_id == Task.id).join(User, User.id == Task.labeler_id)
                         .where(Task.kind == "rank", Task.state == "done",
                                Label.kind == "ranking")).all()
    entries = [(sid, name, held, json.loads(rec)["ranking"]) for sid, name, held, rec in rows]
    return {"train": agreement([(i, n, g) for i, n, h, g in entries if not h]),
            "all": agreement([(i, n, g) for i, n, h, g in entries])}


def export_records(engine: Engine) -> dict[str, dict[str, list[dict]]]:
    """{"train"|"heldout": {"demonstrations"|"rankings": [record, ...]}}, in submission order.
    A label is held out if its labeler was held out when it was written or is now."""
    out = {split: {"demonstrations": [], "rankings": []} for split in ("train", "heldout")}
    with read(engine) as s:
        for kind, held, now_held, rec in s.execute(
                select(Label.kind, Label.heldout, User.heldout, Label.record)
                .join(User, User.id == Label.labeler_id).order_by(Label.id)):
            split = "heldout" if held or now_held else "train"
            out[split]["rankings" if kind == "ranking" else "demonstrations"].append(
                json.loads(rec))
    return out


def export_dir(engine: Engine, out: str | os.PathLike, *, replace: bool = False
               ) -> dict[str, int]:
    """Write OUT/demonstrations.jsonl and OUT/rankings.jsonl (training labelers: what
    `instructrl sft` / `instructrl rm` read, e.g. OUT = RUN/data), the held-out labelers' under
    OUT/heldout/, and OUT/labelers.jsonl.

    By default records already in those files (e.g. a run's earlier rounds) are kept and the
    app's records are added unless already there, so exporting again changes nothing;
    `replace` writes the app's records only. labelers.jsonl is always merged; a labeler listed
    there with the other held-out flag is an InputError, raised before anything is written.
    Each file is replaced atomically. Returns the record count of each file written."""
    out = Path(out)
    labelers = _merged_labelers(engine, out / "labelers.jsonl")
    plan = []
    for split, files in export_records(engine).items():
        d = out if split == "train" else out / "heldout"
        for name, records in files.items():
            path = d / f"{name}.jsonl"
            if not replace and path.exists():
                parse = Ranking.from_dict if name == "rankings" else Demonstration.from_dict
                old = [r.to_dict() for r in read_records(path, parse)]
                have = {json.dumps(r, sort_keys=True) for r in old}
                records = old + [r for r in records if json.dumps(r, sort_keys=True) not in have]
            plan.append((path, records))
    counts = {str(path): write_records(path, records) for path, records in plan}
    counts[str(out / "labelers.jsonl")] = write_records(out / "labelers.jsonl", labelers)
    return counts


def _merged_labelers(engine: Engine, path: Path) -> list[Labeler]:
    merged = {lab.id: lab for lab in read_records(path, Labeler.from_dict)} \
        if path.exists() else {}
    for u in users(engine):
        if u["role"] != "labeler":
            continue
        old = merged.get(u["name"])
        if old is not None and old.heldout != u["heldout"]:
            raise InputError(f"labeler {u['name']!r} is listed with heldout={old.heldout}, but "
                             f"is heldout={u['heldout']} in the labeling database", path=str(path))
        merged[u["name"]] = Labeler(u["name"], heldout=u["heldout"])
    return list(merged.values())


def labels(engine: Engine, *, labeler: str | None = None, task_id: int | None = None,
           offset: int = 0, limit: int = 50) -> tuple[list[dict], int]:
    """Stored labels, newest first, for the admin's label browser: ([label, ...], how many
    match). Each label: id, task_id, task_kind, kind (ranking | demonstration), labeler,
    heldout, created_at, record (as exported), and `responses`: for a ranking, one entry per
    response in the order the labeler saw them ({name, idx, text, likert, flags, policy}),
    with `ranking_text` in those names ("C > A = D > B")."""
    with read(engine) as s:
        q = (select(Label, Task.kind, User.name).join(Task, Task.id == Label.task_id)
             .join(User, User.id == Label.labeler_id))
        if labeler:
            q = q.where(User.name == labeler)
        if task_id is not None:
            q = q.where(Label.task_id == task_id)
        total = s.scalar(select(func.count()).select_from(q.subquery()))
        rows = s.execute(q.order_by(Label.id.desc()).offset(offset).limit(limit)).all()
    out = []
    for lab, task_kind, name in rows:
        rec = json.loads(lab.record)
        entry = {"id": lab.id, "task_id": lab.task_id, "task_kind": task_kind, "kind": lab.kind,
                 "labeler": name, "heldout": lab.heldout, "created_at": lab.created_at,
                 "record": rec, "responses": [], "ranking_text": None}
        if lab.kind == "ranking":
            resp = rec["responses"]
            names = letters(lab.task_id, len(resp)) if task_kind == "rank" else \
                ["edit", "original"]
            order = sorted(range(len(resp)), key=lambda i: names[i]) if task_kind == "rank" \
                else list(range(len(resp)))
            entry["responses"] = [{"name": names[i], "idx": i, "text": resp[i]["text"],
                                   "policy": resp[i]["policy"],
                                   "likert": rec["likert"][i] if rec.get("likert") else None,
                                   "flags": rec["flags"][i] if rec.get("flags") else []}
                                  for i in order]
            entry["ranking_text"] = " > ".join(" = ".join(sorted(names[i] for i in g))
                                               for g in rec["ranking"]) or None
        out.append(entry)
    return out, total


def counts(engine: Engine) -> dict[str, int]:
    with read(engine) as s:
        return {"prompts": s.scalar(select(func.count()).select_from(PromptRow)),
                "response_sets": s.scalar(select(func.count()).select_from(ResponseSet)),
                "tasks": s.scalar(select(func.count()).select_from(Task)),
                "labels": s.scalar(select(func.count()).select_from(Label)),
                "labelers": s.scalar(select(func.count()).select_from(User).where(
                    User.role == "labeler"))}
