"""Human ratings (RLHB paper, 6.2): rating tasks (a question and two versions' answers) and the
raters' Quality / Satisfaction scores and preference, stored durably.

One interface, two databases: a SQLite file (stdlib ``sqlite3``; the default, under
RLHB_STATE_DIR) or PostgreSQL (a ``postgresql://`` URL, psycopg 3). The tables are created on
first use. Both the API (the /rate page) and ``rlhb eval ratings`` use it, so it lives in core.

Why each choice:

- A connection per operation: rating traffic is a few requests a minute, so pooling would only
  add a lifecycle to manage (and sqlite3 connections may not cross threads; the API calls the
  store from a worker thread).
- A task's id is a hash of its content, so loading the same file twice adds nothing.
- The order the two answers are shown in is drawn once when the task is loaded (``b_first``)
  and kept with it: the page only sees "Answer 1 / Answer 2", and a rating is mapped back to
  versions A and B here, never in the browser.
- One rating per task and rater (primary key): a second one is refused, not overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

QUALITY = ("bad", "medium", "good", "excellent")
"""Quality Score, worst first (paper 6.1: four levels)."""
SATISFACTION = ("unsatisfied", "partially", "satisfied")
"""Satisfaction Score, worst first (paper 6.1: unsatisfied / partially satisfied / satisfied)."""
PREFERENCES = ("a", "b", "tie")

Quality = Literal["bad", "medium", "good", "excellent"]
Satisfaction = Literal["unsatisfied", "partially", "satisfied"]

DEFAULT_FILE = "ratings.sqlite3"
MAX_TEXT = 20_000


class RatingsError(ValueError):
    """A refused operation, worded for the person who asked."""


class UnknownTask(RatingsError):
    pass


class AlreadyRated(RatingsError):
    pass


class RatingPair(BaseModel):
    """One task to load: a question and the answers of two versions to it."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    question: str = Field(min_length=1, max_length=MAX_TEXT)
    version_a: str = Field(min_length=1, max_length=200)
    answer_a: str = Field(max_length=MAX_TEXT)
    version_b: str = Field(min_length=1, max_length=200)
    answer_b: str = Field(max_length=MAX_TEXT)

    @property
    def task_id(self) -> str:
        text = json.dumps([self.question, self.version_a, self.answer_a, self.version_b, self.answer_b])
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Task:
    id: str
    question: str
    version_a: str
    answer_a: str
    version_b: str
    answer_b: str
    b_first: bool

    def shown(self) -> tuple[str, str]:
        """(Answer 1, Answer 2) in the order the page shows them."""
        return (self.answer_b, self.answer_a) if self.b_first else (self.answer_a, self.answer_b)


@dataclass(frozen=True)
class Rating:
    """A rating in terms of versions A and B (whatever order they were shown in)."""

    quality_a: str
    satisfaction_a: str
    quality_b: str
    satisfaction_b: str
    preference: str  # 'a', 'b' or 'tie'

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("quality_a", self.quality_a, QUALITY),
            ("quality_b", self.quality_b, QUALITY),
            ("satisfaction_a", self.satisfaction_a, SATISFACTION),
            ("satisfaction_b", self.satisfaction_b, SATISFACTION),
            ("preference", self.preference, PREFERENCES),
        ):
            if value not in allowed:
                raise RatingsError(f"{name}: {value!r} is not one of {', '.join(allowed)}")

    @classmethod
    def from_shown(cls, task: Task, first: tuple[str, str], second: tuple[str, str], preference: str) -> Rating:
        """Map (quality, satisfaction) of Answer 1 and 2 and a preference '1' / '2' / 'tie' to A and B."""
        a, b = (second, first) if task.b_first else (first, second)
        if preference == "tie":
            pref = "tie"
        elif preference in ("1", "2"):
            pref = "a" if (preference == "1") != task.b_first else "b"
        else:
            raise RatingsError(f"preference: {preference!r} is not one of 1, 2, tie")
        return cls(a[0], a[1], b[0], b[1], pref)


@dataclass(frozen=True)
class StoredRating:
    task_id: str
    rater: str
    version_a: str
    version_b: str
    rating: Rating
    created_at: float


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rating_tasks (
        id TEXT PRIMARY KEY, question TEXT NOT NULL, version_a TEXT NOT NULL, answer_a TEXT NOT NULL,
        version_b TEXT NOT NULL, answer_b TEXT NOT NULL, b_first INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ratings (
        task_id TEXT NOT NULL REFERENCES rating_tasks(id), rater TEXT NOT NULL,
        quality_a TEXT NOT NULL, satisfaction_a TEXT NOT NULL, quality_b TEXT NOT NULL,
        satisfaction_b TEXT NOT NULL, preference TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (task_id, rater))""",
)
_TASK_COLUMNS = "t.id, t.question, t.version_a, t.answer_a, t.version_b, t.answer_b, t.b_first"


RATER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_rater_tokens(value: str) -> dict[str, str]:
    """RLHB_API_RATER_TOKENS, 'name=token,name=token' -> {token: name}. A bare token is named
    ``rater-`` + the start of its sha256, so ratings name a rater without storing the token."""
    raters: dict[str, str] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        name, sep, token = entry.partition("=")
        if not sep:
            name, token = "rater-" + hashlib.sha256(entry.encode()).hexdigest()[:8], entry
        name, token = name.strip(), token.strip()
        if not RATER_NAME.match(name) or not token:
            raise ValueError(
                "RLHB_API_RATER_TOKENS: each entry is 'name=token' (name: 1-64 of A-Z a-z 0-9 _ . -) or a bare token"
            )
        if token in raters:
            raise ValueError(f"RLHB_API_RATER_TOKENS: raters {raters[token]!r} and {name!r} share a token")
        raters[token] = name
    return raters


def resolve_url(url: str, state_dir: Path | str) -> str:
    """The store to use: ``url`` when set (a ``postgresql://`` URL, ``sqlite:///path`` or a file
    path), else the default SQLite file under ``state_dir``."""
    return url.strip() or str(Path(state_dir) / DEFAULT_FILE)


def describe(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        if ":" in credentials:
            return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


class RatingsStore:
    """Tasks and ratings in SQLite (a file path or ``sqlite:///path``) or PostgreSQL (a URL)."""

    def __init__(self, url: str):
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        if not self.postgres:
            self.path = Path(url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url)
        self._ready = False

    # ------------------------------------------------------------------ connections
    @contextlib.contextmanager
    def _connect(self) -> Iterator:
        """A connection in one transaction: committed on success, rolled back on error, closed."""
        if self.postgres:
            try:
                import psycopg
            except ImportError as e:  # a clear line instead of a traceback
                raise RatingsError("a PostgreSQL ratings store needs psycopg: pip install 'psycopg[binary]'") from e
            try:
                conn = psycopg.connect(self.url, connect_timeout=5)
            except psycopg.OperationalError as e:
                raise RatingsError(f"ratings store {describe(self.url)}: cannot connect ({e})") from e
            db_error: type[Exception] = psycopg.Error
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = sqlite3.connect(self.path, timeout=10)
            except sqlite3.Error as e:
                raise RatingsError(f"ratings store {self.path}: cannot open ({e})") from e
            db_error = sqlite3.Error
        try:
            yield conn
            conn.commit()
        except BaseException as e:
            with contextlib.suppress(Exception):  # a broken connection cannot roll back; closing discards
                conn.rollback()
            if isinstance(e, db_error):  # one error type for callers: the CLI prints it, the API answers 503
                raise RatingsError(f"ratings store {describe(self.url)}: {type(e).__name__}: {e}") from e
            raise
        finally:
            conn.close()

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    def _execute(self, conn, statement: str, params: tuple = ()):
        cur = conn.cursor()
        cur.execute(self._sql(statement), params)
        return cur

    def ensure_schema(self) -> RatingsStore:
        if not self._ready:
            with self._connect() as conn:
                if not self.postgres:
                    conn.execute("PRAGMA journal_mode=WAL")  # the API writes while a report reads
                for statement in _SCHEMA:
                    self._execute(conn, statement)
            self._ready = True
        return self

    # ------------------------------------------------------------------ tasks
    def add_tasks(self, pairs: Iterable[RatingPair], rng: random.Random | None = None) -> int:
        """Add the pairs not already there (by content); each gets a random display order.
        Returns how many were new."""
        rng = rng or random.SystemRandom()
        self.ensure_schema()
        added = 0
        with self._connect() as conn:
            for p in pairs:
                cur = self._execute(
                    conn,
                    "INSERT INTO rating_tasks (id, question, version_a, answer_a, version_b, answer_b, b_first, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (p.task_id, p.question, p.version_a, p.answer_a, p.version_b, p.answer_b,
                     int(rng.random() < 0.5), time.time()),
                )  # fmt: skip
                added += max(cur.rowcount, 0)
        return added

    def get_task(self, task_id: str) -> Task | None:
        self.ensure_schema()
        with self._connect() as conn:
            row = self._execute(conn, f"SELECT {_TASK_COLUMNS} FROM rating_tasks t WHERE t.id = ?", (task_id,))
            row = row.fetchone()
        return _task(row) if row else None

    def next_task(self, rater: str) -> Task | None:
        """A task ``rater`` has not rated yet: the least-rated first (spreads raters over tasks),
        then the oldest."""
        self.ensure_schema()
        with self._connect() as conn:
            row = self._execute(
                conn,
                f"SELECT {_TASK_COLUMNS} FROM rating_tasks t "
                "WHERE NOT EXISTS (SELECT 1 FROM ratings r WHERE r.task_id = t.id AND r.rater = ?) "
                "ORDER BY (SELECT COUNT(*) FROM ratings r2 WHERE r2.task_id = t.id), t.created_at, t.id LIMIT 1",
                (rater,),
            ).fetchone()
        return _task(row) if row else None

    def pending(self, rater: str) -> int:
        """How many tasks ``rater`` has still to rate."""
        self.ensure_schema()
        with self._connect() as conn:
            return int(
                self._execute(
                    conn,
                    "SELECT COUNT(*) FROM rating_tasks t WHERE NOT EXISTS "
                    "(SELECT 1 FROM ratings r WHERE r.task_id = t.id AND r.rater = ?)",
                    (rater,),
                ).fetchone()[0]
            )

    # ------------------------------------------------------------------ ratings
    def add_rating(self, task_id: str, rater: str, rating: Rating) -> None:
        """Store ``rater``'s rating of ``task_id``; UnknownTask, or AlreadyRated (nothing changes)."""
        self.ensure_schema()
        with self._connect() as conn:
            if self._execute(conn, "SELECT 1 FROM rating_tasks WHERE id = ?", (task_id,)).fetchone() is None:
                raise UnknownTask(f"no rating task {task_id!r}")
            cur = self._execute(
                conn,
                "INSERT INTO ratings (task_id, rater, quality_a, satisfaction_a, quality_b, satisfaction_b, "
                "preference, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id, rater) DO NOTHING",
                (task_id, rater, rating.quality_a, rating.satisfaction_a, rating.quality_b, rating.satisfaction_b,
                 rating.preference, time.time()),
            )  # fmt: skip
            if cur.rowcount == 0:
                raise AlreadyRated(f"task {task_id!r} was already rated by this rater")

    def ratings(self) -> list[StoredRating]:
        """Every rating with its task's versions, oldest first."""
        self.ensure_schema()
        with self._connect() as conn:
            rows = self._execute(
                conn,
                "SELECT r.task_id, r.rater, t.version_a, t.version_b, r.quality_a, r.satisfaction_a, r.quality_b, "
                "r.satisfaction_b, r.preference, r.created_at FROM ratings r JOIN rating_tasks t ON t.id = r.task_id "
                "ORDER BY r.created_at, r.task_id, r.rater",
            ).fetchall()
        return [StoredRating(r[0], r[1], r[2], r[3], Rating(*r[4:9]), float(r[9])) for r in rows]

    def task_count(self) -> int:
        self.ensure_schema()
        with self._connect() as conn:
            return int(self._execute(conn, "SELECT COUNT(*) FROM rating_tasks").fetchone()[0])


def _task(row) -> Task:
    return Task(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


def open_store(url: str, state_dir: Path | str) -> RatingsStore:
    """The store at ``url`` (empty: the default SQLite file under ``state_dir``)."""
    return RatingsStore(resolve_url(url, state_dir))
