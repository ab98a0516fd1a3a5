"""Database tables of the labeling app (SQLAlchemy 2.x; SQLite or PostgreSQL).

Unique constraints carry the app's guarantees, so they hold even under concurrent requests:
a prompt id and a response set are imported once, a labeler gets an item once per task kind,
and a task holds at most one label per record kind (a double submit cannot add a second).
"""

from __future__ import annotations

import time

from sqlalchemy import (Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("admin", "labeler")
# rank: Likert + flags + ranking of K responses; demo: write the response to a prompt;
# edit: improve one of K responses (stored as a demonstration and as an edit-beats-original
# ranking, the alternative signal of the paper's section 5.3 Limitations).
TASK_KINDS = ("rank", "demo", "edit")
TASK_STATES = ("pending", "done", "skipped")
RECORD_KINDS = ("ranking", "demonstration")


def now() -> float:
    return time.time()


class Base(DeclarativeBase):
    pass


class Setting(Base):
    """Key-value settings; holds the secret that signs login-form CSRF tokens, so every
    worker process and every restart agree on it."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # the records' labeler_id
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    heldout: Mapped[bool] = mapped_column(Boolean, default=False)  # labels never train
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class AuthSession(Base):
    """A login. The cookie holds a random token; only its SHA-256 is stored, so a database
    dump does not hand out sessions."""

    __tablename__ = "auth_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float)
    user: Mapped[User] = relationship()


class PromptRow(Base):
    __tablename__ = "prompts"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(32))
    style: Mapped[str] = mapped_column(String(32))
    split: Mapped[str | None] = mapped_column(String(16), nullable=True)
    meta: Mapped[str] = mapped_column(Text, default="{}")  # JSON


class ResponseSet(Base):
    """K model responses to one prompt, imported from one line of a samples file; the unit of
    a ranking or edit task. `key` is a hash of the line's content: importing it twice is a no-op."""

    __tablename__ = "response_sets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    prompt: Mapped[PromptRow] = relationship()
    responses: Mapped[list["ResponseRow"]] = relationship(order_by="ResponseRow.idx")


class ResponseRow(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("set_id", "idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("response_sets.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)  # position in the set: the records' index
    text: Mapped[str] = mapped_column(Text)
    policy: Mapped[str] = mapped_column(String(200))


class Task(Base):
    """One item assigned to one labeler. `item` is "prompt:<id>" (demo) or "set:<id>" (rank,
    edit); the unique constraint makes assigning twice a no-op."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("labeler_id", "kind", "item"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    item: Mapped[str] = mapped_column(String(220), index=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"))
    set_id: Mapped[int | None] = mapped_column(ForeignKey("response_sets.id"), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    skip_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    done_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    labeler: Mapped[User] = relationship()
    prompt: Mapped[PromptRow] = relationship()
    response_set: Mapped[ResponseSet | None] = relationship()


class Label(Base):
    """A submitted record, stored exactly as it is exported (`record` is the JSON of a
    `Ranking` or `Demonstration`). `heldout` is fixed at submission so that a labeler who is
    marked held-out later still never has their labels exported for training."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("task_id", "kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # one of RECORD_KINDS
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    heldout: Mapped[bool] = mapped_column(Boolean)
    record: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    task: Mapped[Task] = relationship()
