"""The event log: events posted to the service, durable before they are acknowledged.

SQLite (WAL, ``synchronous=FULL``) by default; PostgreSQL when ``OMNI_EVENTS_URL`` is a
``postgresql://`` URL. Events are checked by the same contract as ingested files
(:func:`validate_events`), and the log is read back through the same checks
(:meth:`EventLog.read`), so what training sees is exactly what a file with these rows would give.

The log is the retailer's own record of events, like ``events.csv``: it holds the customer keys
as sent. They never leave ``features``: what reaches a model is the pseudonymous ``customer_id``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.ingest import REASON, validate_table
from features.schema import EVENTS

EVENTS_URL_ENV = "OMNI_EVENTS_URL"
DEFAULT_PATH = Path(".omni") / "events.db"
MAX_BATCH = 1000
COLUMNS = tuple(c.name for c in EVENTS.columns)
_ROW = "__row"
ALREADY_RECORDED = "duplicate event_id (already recorded)"

_CREATE = """
CREATE TABLE IF NOT EXISTS omni_events (
    seq {serial} PRIMARY KEY,
    received_at TEXT NOT NULL,
    event_time TEXT NOT NULL,
    channel TEXT NOT NULL,
    event_type TEXT NOT NULL,
    item_id TEXT NOT NULL,
    customer_key TEXT,
    quantity DOUBLE PRECISION,
    unit_price DOUBLE PRECISION,
    store_id TEXT,
    event_id TEXT NOT NULL UNIQUE
)"""


def validate_events(records: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, list[str | None]]:
    """Check posted events against the events contract.

    Every event gets an ``event_id`` (a new UUID when it has none), so a retry can be recognised.

    Returns:
        ``(accepted, reasons)``: the typed accepted events (with ``event_id``), and per input
        event, in order, None when accepted or the reason it was rejected.
    """
    rows = [
        {
            **{c: _text(record.get(c)) for c in COLUMNS},
            "event_id": _text(record.get("event_id")) or uuid.uuid4().hex,
            _ROW: str(i),
        }
        for i, record in enumerate(records)
    ]
    raw = pa.table(
        {c: pa.array([row[c] for row in rows], pa.large_string()) for c in (*COLUMNS, _ROW)}
    )
    accepted, quarantined = validate_table(raw, EVENTS, source="the posted events")
    reasons: list[str | None] = [None] * len(records)
    for row, reason in zip(quarantined[_ROW], quarantined[REASON], strict=True):
        reasons[int(row)] = str(reason)
    return accepted.drop(columns=_ROW), reasons


def with_logged(events: pd.DataFrame, logged: pd.DataFrame | None) -> pd.DataFrame:
    """A file's events plus the logged ones it does not already hold (by ``event_id``)."""
    if logged is None or logged.empty:
        return events
    fresh = logged[~logged["event_id"].isin(events["event_id"].dropna())]
    return pd.concat([events, fresh], ignore_index=True)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class EventLog:
    """An append-only table of accepted events in SQLite or PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        if url.startswith(("postgresql://", "postgres://")):
            import psycopg

            self._postgres = True
            self._connection: Any = psycopg.connect(url, autocommit=False)
            serial, self._param = "BIGSERIAL", "%s"
        elif url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._postgres = False
            self._connection = sqlite3.connect(path, check_same_thread=False, timeout=30)
            self._connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before it returns, even across a power cut.
            self._connection.execute("PRAGMA synchronous=FULL")
            serial, self._param = "INTEGER", "?"
        else:
            raise ValueError(
                f"{EVENTS_URL_ENV}={url!r} is neither sqlite:///PATH nor postgresql://..."
            )
        with self._transaction() as cursor:
            cursor.execute(_CREATE.format(serial=serial))

    @classmethod
    def from_env(cls) -> EventLog:
        """The log named by ``$OMNI_EVENTS_URL``; default SQLite at ``.omni/events.db``."""
        return cls(os.environ.get(EVENTS_URL_ENV) or f"sqlite:///{DEFAULT_PATH}")

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            cursor = self._connection.cursor()
            try:
                yield cursor
                self._connection.commit()
            except BaseException:
                self._connection.rollback()
                raise
            finally:
                cursor.close()

    def append(self, events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Store validated events (from :func:`validate_events`); committed when this returns.

        Returns:
            Per event, True if stored now, False if its ``event_id`` was already in the log;
            and the log positions of the stored ones, in order.
        """
        if events.empty:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        received = pd.Timestamp.now(tz="UTC").isoformat()
        values = [
            (received, _iso(r[0]), *(_nullable(v) for v in r[1:]))
            for r in events[list(COLUMNS)].itertuples(index=False, name=None)
        ]
        marks = "(" + ", ".join([self._param] * (len(COLUMNS) + 1)) + ")"
        sql = (
            f"INSERT INTO omni_events (received_at, {', '.join(COLUMNS)}) VALUES "
            + ", ".join([marks] * len(values))
            + " ON CONFLICT (event_id) DO NOTHING RETURNING event_id, seq"
        )
        with self._transaction() as cursor:
            if self._postgres:
                # One writer at a time, so positions are committed in order and a reader that
                # has seen position n has seen every position before it (SQLite always is so).
                cursor.execute("LOCK TABLE omni_events IN EXCLUSIVE MODE")
            cursor.execute(sql, [v for row in values for v in row])
            stored = dict(cursor.fetchall())
        mask = events["event_id"].isin(stored).to_numpy()
        seqs = np.array([stored[e] for e in events["event_id"][mask]], dtype=np.int64)
        return mask, seqs

    def last_seq(self) -> int:
        """The position of the latest event (0 for an empty log)."""
        with self._transaction() as cursor:
            cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM omni_events")
            return int(cursor.fetchone()[0])

    def read(self, after: int = 0, upto: int | None = None) -> pd.DataFrame:
        """Logged events with ``after < seq <= upto``, typed exactly as an ingested events file
        (in arrival order)."""
        p = self._param
        with self._transaction() as cursor:
            cursor.execute(
                f"SELECT {', '.join(COLUMNS)} FROM omni_events WHERE seq > {p} AND seq <= {p} "
                "ORDER BY seq",
                (after, upto if upto is not None else 2**62),
            )
            rows = cursor.fetchall()
        raw = pd.DataFrame(
            [[_text(v) for v in row] for row in rows], columns=list(COLUMNS), dtype=object
        )
        accepted, quarantined = validate_table(raw, EVENTS, source=f"the event log {self.url}")
        if len(quarantined):  # the log only holds validated events: this is corruption
            raise ValueError(
                f"The event log {self.url} holds {len(quarantined)} event(s) that break the "
                f"contract, first: {quarantined[REASON].iloc[0]}."
            )
        return accepted

    def event_ids(self) -> set[str]:
        with self._transaction() as cursor:
            cursor.execute("SELECT event_id FROM omni_events")
            return {row[0] for row in cursor.fetchall()}

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _iso(value: pd.Timestamp) -> str:
    return pd.Timestamp(value).isoformat()


def _nullable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return float(value) if isinstance(value, np.floating) else value
