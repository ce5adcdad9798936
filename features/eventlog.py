"""The event log: events and stock movements posted to the service, durable before they are
acknowledged.

SQLite (WAL, ``synchronous=FULL``) by default; PostgreSQL when ``OMNI_EVENTS_URL`` is a
``postgresql://`` URL. Events are checked by the same contract as ingested files
(:func:`validate_events`), and the log is read back through the same checks
(:meth:`EventLog.read`), so what training sees is exactly what a file with these rows would give.

The log is the retailer's own record of events, like ``events.csv``: it holds the customer keys
as sent. They never leave ``features``: what reaches a model is the pseudonymous ``customer_id``.

The store may be down: the log connects when it is first used, and reconnects on the next call
after a failure; every failure is an :class:`EventStoreUnavailable` whose message never holds the
URL's password. A stored row that breaks the contract (written by an older version, or by hand)
is quarantined when read — logged and counted in :attr:`EventLog.quarantined` — and never makes
the log unreadable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa

from features.ingest import REASON, validate_table
from features.schema import (
    EVENT_TYPES,
    EVENTS,
    ID_FORBIDDEN,
    ISO_TIME,
    MAX_ID_LENGTH,
    MOVEMENTS,
    Bounds,
    TableSchema,
)
from features.stock import movement_problems

EVENTS_URL_ENV = "OMNI_EVENTS_URL"
DEFAULT_PATH = Path(".omni") / "events.db"
MAX_BATCH = 1000
COLUMNS = tuple(c.name for c in EVENTS.columns)
MOVEMENT_COLUMNS = tuple(c.name for c in MOVEMENTS.columns)
_ROW = "__row"
_SEQ = "__seq"
#: Seconds to wait for PostgreSQL to answer a connection before calling it unavailable.
CONNECT_TIMEOUT = 5
#: After a failure (not a dropped connection), calls within this many seconds fail at once
#: instead of connecting again.
RECONNECT_SECONDS = 1.0
#: Parameters in one INSERT at most (under SQLite's default limit, 32,766).
MAX_PARAMETERS = 30_000

logger = logging.getLogger("omnichannel_ml")


class EventStoreUnavailable(RuntimeError):
    """The event store cannot be reached or used now; a later call may succeed."""


# A URL's user:password@, and libpq's password / sslpassword parameters.
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^/\s]*@")
_PASSWORD_PARAMETER = re.compile(r"(?P<name>\b(?:ssl)?password=)[^&\s'\"]*", re.IGNORECASE)


def first_line(exc: BaseException) -> str:
    """An error's message in one line (its first), or its type's name when it says nothing."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact_urls(text: str) -> str:
    """``text`` with every password of a URL in it (``user:password@``, ``password=``) as
    ``***``."""
    text = _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
    return _PASSWORD_PARAMETER.sub(r"\g<name>***", text)


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


_CREATE_MOVEMENTS = """
CREATE TABLE IF NOT EXISTS omni_movements (
    seq {serial} PRIMARY KEY,
    received_at TEXT NOT NULL,
    movement_time TEXT NOT NULL,
    movement_type TEXT NOT NULL,
    node_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    quantity DOUBLE PRECISION NOT NULL,
    movement_id TEXT NOT NULL UNIQUE,
    reservation_id TEXT,
    hold_seconds DOUBLE PRECISION,
    reference TEXT
)"""


_CREATE_EXPOSURES = """
CREATE TABLE IF NOT EXISTS omni_exposures (
    seq {serial} PRIMARY KEY,
    shown_at TEXT NOT NULL,
    request_id TEXT NOT NULL,
    route TEXT NOT NULL,
    customer_id TEXT,
    channel TEXT,
    store_id TEXT,
    arm TEXT NOT NULL,
    model_version TEXT,
    items TEXT NOT NULL
)"""
#: What the service records of each list it answers (``items``: the item ids, in rank order).
EXPOSURE_COLUMNS = (
    "shown_at", "request_id", "route", "customer_id", "channel", "store_id", "arm",
    "model_version", "items",
)  # fmt: skip


def validate_events(
    records: Sequence[dict[str, Any]], bounds: Bounds | None = None
) -> tuple[pd.DataFrame, list[str | None]]:
    """Check posted events against the events contract.

    Every event gets an ``event_id`` (a new UUID when it has none), so a retry can be recognised.

    Returns:
        ``(accepted, reasons)``: the typed accepted events (with ``event_id``), and per input
        event, in order, None when accepted or the reason it was rejected.
    """
    rows, reasons = check_events(records, bounds or Bounds.from_env())
    return events_frame(rows), reasons


def check_events(
    records: Sequence[dict[str, Any]], bounds: Bounds
) -> tuple[list[tuple], list[str | None]]:
    """:func:`validate_events` with the accepted events as rows (in :data:`COLUMNS` order), for
    callers that gather several requests' events into one frame (:func:`events_frame`).

    A small batch whose every value is plainly valid (:func:`plain_rows`) is typed directly — a
    till posting one event at a time must not pay for the file loader's vectorised machinery;
    any other batch goes through exactly the file loader's checks and reasons.
    """
    if len(records) <= _FAST_BATCH:
        rows = plain_rows(records, bounds)
        if rows is not None:
            return rows, [None] * len(records)
    accepted, reasons = _checked(records, bounds)
    return list(accepted[list(COLUMNS)].itertuples(index=False, name=None)), reasons


def events_frame(rows: Sequence[tuple]) -> pd.DataFrame:
    """Typed event rows (:data:`COLUMNS` order) as the frame :func:`validate_table` makes."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(COLUMNS)
    values = dict(zip(COLUMNS, columns, strict=True))
    return pd.DataFrame(
        {
            name: np.array(values[name], dtype="datetime64[us]")
            if name == "event_time"
            else np.array(values[name], dtype=np.float64)
            if name in ("quantity", "unit_price")
            else pd.array(values[name], dtype="str")
            for name in COLUMNS
        }
    )


def _checked(
    records: Sequence[dict[str, Any]], bounds: Bounds, schema: TableSchema = EVENTS
) -> tuple[pd.DataFrame, list[str | None]]:
    """Posted rows by the file loader's own checks: the typed accepted rows (with their input
    position in column ``__row``), and per input row, in order, None or the reason it was
    rejected. An event without an ``event_id`` gets a new UUID, so that a retry can be
    recognised."""
    columns = tuple(c.name for c in schema.columns)
    rows = [
        {**{c: _text(record.get(c)) for c in columns}, _ROW: str(i)}
        for i, record in enumerate(records)
    ]
    if schema is EVENTS:
        for row in rows:
            row["event_id"] = row["event_id"] or uuid.uuid4().hex
    raw = pa.table(
        {c: pa.array([row[c] for row in rows], pa.large_string()) for c in (*columns, _ROW)}
    )
    source = f"the posted {schema.name}"
    accepted, quarantined = validate_table(raw, schema, source=source, bounds=bounds)
    reasons: list[str | None] = [None] * len(records)
    for row, reason in zip(quarantined[_ROW], quarantined[REASON], strict=True):
        reasons[int(row)] = str(reason)
    return accepted, reasons


def check_movements(
    records: Sequence[dict[str, Any]], bounds: Bounds
) -> tuple[pd.DataFrame, list[str | None]]:
    """Posted stock movements by the contract (:data:`MOVEMENTS`) and by what their type
    allows (:func:`features.stock.movement_problems`): the typed accepted ones, and per input
    movement, in order, None or the reason it was rejected. Which nodes exist is the caller's
    to check."""
    accepted, reasons = _checked(records, bounds, MOVEMENTS)
    problems = movement_problems(accepted, pd.Timestamp.now("UTC").tz_localize(None))
    for row, problem in zip(accepted[_ROW], problems, strict=True):
        if isinstance(problem, str):
            reasons[int(row)] = problem
    return accepted[problems.isna().to_numpy()].drop(columns=_ROW), reasons


#: Batches up to this size are tried on the direct path first.
_FAST_BATCH = 100
# 1-256 characters, none of ID_FORBIDDEN, no space at either end (nothing to trim).
_PLAIN_ID = re.compile(
    rf"[^{ID_FORBIDDEN}\x20](?:[^{ID_FORBIDDEN}]{{0,{MAX_ID_LENGTH - 2}}}[^{ID_FORBIDDEN}\x20])?"
)
_OPTIONAL_IDS = ("customer_key", "store_id")


def plain_rows(records: Sequence[dict[str, Any]], bounds: Bounds) -> list[tuple] | None:
    """The events typed as :func:`validate_table` would type them, when each value is valid by
    the simplest reading of the contract; None as soon as one needs more (a value to trim or
    lower-case, a missing field, an out-of-range or odd value, a repeated id), so that the file
    loader's checks give it its reason. Accepting here implies acceptance there (tested)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    earliest, latest = bounds.time_floor, now + bounds.clock_skew
    rows = []
    for record in records:
        stamp = record.get("event_time")
        if not isinstance(stamp, str) or not ISO_TIME.fullmatch(stamp):
            return None
        try:
            parsed = datetime.fromisoformat(stamp)
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except (ValueError, OverflowError):  # 2026-02-30; 9999-12-31T23:59-14:00 is year 10000
            return None
        if not earliest <= parsed <= latest:
            return None
        if record.get("event_type") not in EVENT_TYPES:
            return None
        for name in ("channel", "item_id"):
            if not _plain_id(record.get(name)):
                return None
        for name in _OPTIONAL_IDS:
            if record.get(name) is not None and not _plain_id(record.get(name)):
                return None
        event_id = record.get("event_id") or uuid.uuid4().hex
        quantity = _plain_number(record.get("quantity"), 1.0, bounds.max_quantity)
        price = _plain_number(record.get("unit_price"), np.nan, bounds.max_amount)
        if not _plain_id(event_id) or quantity is None or price is None or quantity <= 0:
            return None
        customer, store = record.get("customer_key"), record.get("store_id")
        channel, event_type, item = record["channel"], record["event_type"], record["item_id"]
        # In the order of COLUMNS.
        rows.append((parsed, channel, event_type, item, customer, quantity, price, store, event_id))
    if len({row[-1] for row in rows}) < len(rows):
        return None
    return rows


def _plain_id(value: Any) -> bool:
    return isinstance(value, str) and _PLAIN_ID.fullmatch(value) is not None


def _plain_number(value: Any, default: float, top: float) -> float | None:
    """A JSON number within [0, top] as a float (``default`` when absent); None otherwise."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if 0 <= number <= top else None


def with_logged(events: pd.DataFrame, logged: pd.DataFrame | None) -> pd.DataFrame:
    """A file's events plus the logged ones it does not already hold (by ``event_id``)."""
    if logged is None or logged.empty:
        return events
    fresh = logged[~logged["event_id"].isin(events["event_id"].dropna())]
    return pd.concat([events, fresh], ignore_index=True)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class EventLog:
    """An append-only table of accepted events in SQLite or PostgreSQL.

    Attributes:
        url: the store's URL with any password redacted (safe to show and log).
    """

    def __init__(
        self,
        url: str,
        wait_seconds: float = 30.0,
        setting: str = EVENTS_URL_ENV,
        create: bool = True,
    ) -> None:
        self._url = url
        self._wait = wait_seconds  # how long to wait for a lock (any a copy takes too)
        self._create = create  # False: an existing log only (a copy's source), never altered
        self.url = redact_urls(url)
        self._lock = threading.Lock()
        self._connection: Any = None
        self._failure: tuple[str, float] | None = None  # the last failure and when
        self._quarantined: dict[str, set[int]] = {"events": set(), "movements": set()}
        if url.startswith(("postgresql://", "postgres://")):
            address = url.split("://", 1)[1].split("?", 1)[0]
            user = address.rsplit("@", 1)[0] if "@" in address else ""
            if address.count("@") > 1 or any(c in user for c in "/ #"):
                # The driver would read part of the user or password as the host, and say it.
                raise ValueError(
                    f"{setting} has an '@', '/', '#' or space in its user or password: "
                    "percent-encode them (%40, %2F, %23, %20)."
                )
            self._driver = _psycopg(self.url)  # a missing driver stops the start
            self._postgres, self._param = True, "%s"
        elif url.startswith("sqlite:///"):
            self._postgres, self._param = False, "?"
            path = self._path()
            if not url.removeprefix("sqlite:///").strip():
                raise ValueError(f"{setting}={self.url!r} names no file.")
            if "?" in url or "#" in url:
                raise ValueError(
                    f"{setting}={self.url!r}: a SQLite URL names its file only, no options."
                )
            if create and path != DEFAULT_PATH and not path.parent.is_dir():
                raise ValueError(
                    f"{setting}={self.url!r}: the directory {path.parent} does not "
                    "exist (a mistyped path would start an empty log); create it first."
                )
        else:
            raise ValueError(
                f"{setting}={self.url!r} is neither sqlite:///PATH nor postgresql://..."
            )

    def _path(self) -> Path:
        """A SQLite store's file."""
        return Path(self._url.removeprefix("sqlite:///"))

    @property
    def local(self) -> bool:
        """Whether the store is a file on this machine (SQLite): reading its positions takes
        microseconds and, in WAL mode, never waits for a writer."""
        return not self._postgres

    @property
    def quarantined(self) -> int:
        """Stored events and movements that broke the contract when read back (each counted
        once)."""
        return sum(map(len, self._quarantined.values()))

    def _connect(self) -> Any:
        connection: Any
        if self._postgres:
            connection = self._driver.connect(
                self._url, autocommit=False, connect_timeout=CONNECT_TIMEOUT
            )
            serial = "BIGSERIAL"
        else:
            path = self._path()
            if self._create:
                path.parent.mkdir(parents=True, exist_ok=True)  # the default's .omni/
                if not path.exists():  # customer keys inside: readable by its owner only
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            elif not path.is_file():
                raise ValueError(f"There is no event log at {path}.")
            connection = sqlite3.connect(path, check_same_thread=False, timeout=self._wait)
            if self._create:
                connection.execute("PRAGMA journal_mode=WAL")
                # FULL: a commit is on disk before it returns, even across a power cut.
                connection.execute("PRAGMA synchronous=FULL")
            serial = "INTEGER"
        try:
            missing = [t for t in _STORED if t not in _tables(connection, self._postgres)]
            if not self._create and "omni_events" in missing:
                raise ValueError(f"{self.url} holds no event log (no table omni_events).")
            if self._create and missing:  # only that: a role may have no CREATE on the schema
                if not self._postgres:  # one transaction (PostgreSQL's is open), read again in it
                    connection.execute("BEGIN IMMEDIATE")
                    missing = [t for t in _STORED if t not in _tables(connection, False)]
                sealed = bool(missing) and _sealed(connection.cursor(), self._postgres)
                for table in missing:
                    connection.execute(_CREATE_TABLE[table].format(serial=serial))
                    if sealed:  # a log moved before it had this table: refusing, as the rest
                        connection.execute(_seal_like_events(connection, self._postgres, table))
            connection.commit()
        except sqlite3.DatabaseError as exc:
            connection.close()
            if self._create or isinstance(exc, sqlite3.OperationalError):
                raise  # the store failing (a lock, the disk), not the file being something else
            raise ValueError(f"{self.url} is not a SQLite database ({exc}).") from None
        except BaseException:
            connection.close()
            raise
        return connection

    def another(self, wait_seconds: float = 30.0) -> EventLog:
        """A second log on the same store, with its own connection and lock: a background
        writer's commits then never hold up the requests' reads."""
        return EventLog(self._url, wait_seconds)

    @classmethod
    def from_env(cls, create: bool = True) -> EventLog:
        """The log named by ``$OMNI_EVENTS_URL``; default SQLite at ``.omni/events.db``."""
        return cls(os.environ.get(EVENTS_URL_ENV) or f"sqlite:///{DEFAULT_PATH}", create=create)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor in a transaction, committed on success; store failures become
        :class:`EventStoreUnavailable` (and the connection is made again next time)."""
        with self._lock:
            if self._connection is None and self._failure is not None:
                message, since = self._failure
                if time.monotonic() - since < RECONNECT_SECONDS:
                    # Fail fast: callers must not each wait for a connect that just failed.
                    raise EventStoreUnavailable(message)
            try:
                if self._connection is None:
                    self._connection = self._connect()
                    self._failure = None
                connection = self._connection
                cursor = connection.cursor()
            except ValueError:  # not a log to open as asked (a copy's missing source)
                raise
            except Exception as exc:
                raise self._failed(exc) from None
            try:
                yield cursor
                connection.commit()
            except BaseException as exc:
                broken = _is_store_failure(exc)
                try:
                    connection.rollback()
                except Exception:
                    broken = True
                if _is_seal(exc):  # a moved log: it still reads, on this connection
                    raise EventStoreUnavailable(
                        f"The event store {self.url} is unavailable: {self._reason(exc)}"
                    ) from None
                if broken:
                    # A connection the server dropped (psycopg says so) is made again at the
                    # next call; any other failure starts the fail-fast window.
                    dropped = bool(getattr(connection, "broken", False))
                    raise self._failed(exc, remember=not dropped) from None
                raise
            finally:
                with suppress(Exception):  # a broken connection's cursor may not close cleanly
                    cursor.close()

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with suppress(Exception):  # already broken; nothing more to release
                self._connection.close()
        self._connection = None

    def _failed(self, exc: BaseException, remember: bool = True) -> EventStoreUnavailable:
        """Forget the connection and say why without the password; unless told otherwise,
        remember the failure, so that calls fail at once for a moment."""
        self._drop_connection()
        message = f"The event store {self.url} is unavailable: {self._reason(exc)}"
        self._failure = (message, time.monotonic()) if remember else None
        return EventStoreUnavailable(message)

    def _reason(self, exc: BaseException) -> str:
        """What the store or its driver said, in one line, without the password."""
        reason = first_line(exc)
        password = urlsplit(self._url).password
        if password:  # whatever the driver's message quotes of it
            reason = reason.replace(password, "***")
        return redact_urls(reason)

    def append(self, events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Store checked events (:func:`events_frame` of :func:`check_events`' rows); committed
        when this returns.

        Returns:
            Per event, True if stored now, False if its ``event_id`` was already in the log;
            and the log positions of the stored ones, in order.
        """
        if events.empty:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        with self._transaction() as cursor:
            if self._postgres:
                # One writer at a time, so positions are committed in order and a reader that
                # has seen position n has seen every position before it (SQLite always is so).
                cursor.execute("LOCK TABLE omni_events IN EXCLUSIVE MODE")
            return self._insert(cursor, "omni_events", events, COLUMNS, "event_id")

    def append_movements(
        self,
        movements: pd.DataFrame,
        decide: Callable[[pd.DataFrame, int, pd.Timestamp], pd.DataFrame] | None = None,
        after: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Store typed movements (:data:`MOVEMENTS` columns), one writer at a time across every
        process: ``decide(fresh, last, now)``, when given, is called under that lock with the
        movements logged after position ``after`` up to ``last`` and the store's own clock
        (UTC), and returns the movements to store (it may raise to store nothing). So a decision
        taken on the log as it is — a reservation of the last unit — cannot be overtaken by
        another writer's, and every replica's decisions are timed by one clock.

        Returns:
            As :meth:`append`, by ``movement_id``.
        """
        with self._transaction() as cursor:
            if self._postgres:
                cursor.execute("LOCK TABLE omni_movements IN EXCLUSIVE MODE")
            else:
                cursor.execute("BEGIN IMMEDIATE")  # the write lock, before anything is read
            if decide is not None:
                cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM omni_movements")
                last = int(cursor.fetchone()[0])
                movements = decide(
                    self._select(cursor, MOVEMENTS, after, last), last, self._now(cursor)
                )
            if movements.empty:
                return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
            return self._insert(
                cursor, "omni_movements", movements, MOVEMENT_COLUMNS, "movement_id"
            )

    def _now(self, cursor: Any) -> pd.Timestamp:
        """The store's clock (PostgreSQL's, shared by every replica; SQLite's is this host's)."""
        if self._postgres:
            cursor.execute("SELECT clock_timestamp()")
            return pd.Timestamp(cursor.fetchone()[0]).tz_convert("UTC")
        return pd.Timestamp.now(tz="UTC")

    def _insert(
        self, cursor: Any, table: str, rows: pd.DataFrame, columns: tuple[str, ...], key: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Insert typed rows (their first column a time) whose ``key`` is not stored yet."""
        received = pd.Timestamp.now(tz="UTC").isoformat()
        values = [(received, *row) for row in _as_stored(rows, columns)]
        marks = "(" + ", ".join([self._param] * (len(columns) + 1)) + ")"
        # A statement takes a bounded number of parameters (PostgreSQL 65,535; SQLite 32,766 by
        # default); a group commit of many requests is as many statements in one transaction.
        step = MAX_PARAMETERS // (len(columns) + 1)
        stored: dict[str, int] = {}
        for start in range(0, len(values), step):
            chunk = values[start : start + step]
            cursor.execute(
                f"INSERT INTO {table} (received_at, {', '.join(columns)}) VALUES "
                + ", ".join([marks] * len(chunk))
                + f" ON CONFLICT ({key}) DO NOTHING RETURNING {key}, seq",
                [v for row in chunk for v in row],
            )
            stored.update(cursor.fetchall())
        # An id twice in one call (two requests of a group commit) is stored once: the first.
        ids = rows[key]
        mask = (ids.isin(stored) & ~ids.duplicated()).to_numpy(dtype=bool)
        seqs = np.array([stored[e] for e in ids[mask]], dtype=np.int64)
        return mask, seqs

    def recorded_otherwise(self, rows: pd.DataFrame, movements: bool = False) -> list[str]:
        """The ids of typed events (or ``movements``) that are stored with other content than
        ``rows`` give them: not a retry, but a new event or movement under a used id."""
        columns, key = (MOVEMENT_COLUMNS, "movement_id") if movements else (COLUMNS, "event_id")
        at = columns.index(key)
        sent = {row[at]: row for row in _as_stored(rows, columns)}
        if not sent:
            return []
        marks = ", ".join([self._param] * len(sent))
        with self._transaction() as cursor:
            cursor.execute(
                f"SELECT {', '.join(columns)} FROM omni_{'movements' if movements else 'events'} "
                f"WHERE {key} IN ({marks})",
                list(sent),
            )
            return [str(row[at]) for row in cursor.fetchall() if tuple(row) != sent[row[at]]]

    def last_seq(self) -> int:
        """The position of the latest event (0 for an empty log)."""
        return self.positions()[0]

    def positions(self) -> tuple[int, int]:
        """The positions of the latest event and of the latest movement (0 when none)."""
        with self._transaction() as cursor:
            cursor.execute(
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM omni_events), "
                "(SELECT COALESCE(MAX(seq), 0) FROM omni_movements)"
            )
            events, movements = cursor.fetchone()
            return int(events), int(movements)

    def read(
        self,
        after: int = 0,
        upto: int | None = None,
        since: pd.Timestamp | None = None,
        until: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Logged events with ``after < seq <= upto`` (and, when given, an ``event_time``
        after ``since`` and at most ``until``, naive UTC), typed exactly as an ingested events
        file (in arrival order)."""
        with self._transaction() as cursor:
            return self._select(cursor, EVENTS, after, upto, since, until).drop(columns="seq")

    def read_movements(self, after: int = 0, upto: int | None = None) -> pd.DataFrame:
        """Logged movements with ``after < seq <= upto``, typed, with their position ``seq``."""
        with self._transaction() as cursor:
            return self._select(cursor, MOVEMENTS, after, upto)

    def _select(
        self,
        cursor: Any,
        schema: TableSchema,
        after: int,
        upto: int | None,
        since: pd.Timestamp | None = None,
        until: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Rows of a table with ``after < seq <= upto`` through the table's contract, with their
        ``seq``; a stored row that breaks it is quarantined (logged once, counted in
        :attr:`quarantined`)."""
        columns = tuple(c.name for c in schema.columns)
        p = self._param
        # Times are stored as ISO text (naive UTC), so text order is time order; the first
        # column is the table's time. A stored row with an odd time is kept out either way.
        window = f" AND {columns[0]} > {p} AND {columns[0]} <= {p}" if since or until else ""
        bounds = (
            (_iso(since or pd.Timestamp.min), _iso(until or pd.Timestamp.max)) if window else ()
        )
        rows = _fetch_all(
            cursor,
            f"SELECT {', '.join(columns)}, seq FROM omni_{schema.name} "
            f"WHERE seq > {p} AND seq <= {p}{window} ORDER BY seq",
            (after, upto if upto is not None else 2**62, *bounds),
        )
        raw = pd.DataFrame(
            [[_text(v) for v in row] for row in rows],
            columns=[*columns, _SEQ],
            dtype=object,
        )
        accepted, quarantined = validate_table(raw, schema, source=f"the event log {self.url}")
        seqs = quarantined[_SEQ].astype(int)
        fresh = quarantined[~seqs.isin(self._quarantined[schema.name])]
        if len(fresh):
            # Written by an older version or by hand: kept in the store, never applied.
            self._quarantined[schema.name].update(fresh[_SEQ].astype(int))
            logger.warning(
                "The event log %s holds %d %s that break the contract; they are quarantined "
                "(not used). First: seq %s, %s.",
                self.url, len(fresh), schema.name, fresh[_SEQ].iloc[0], fresh[REASON].iloc[0],
            )  # fmt: skip
        return accepted.rename(columns={_SEQ: "seq"}).astype({"seq": np.int64})

    def append_exposures(self, rows: Sequence[tuple]) -> None:
        """Store what the service showed (:data:`EXPOSURE_COLUMNS` tuples, ``items`` a list of
        item ids), in one transaction."""
        if not rows:
            return
        marks = "(" + ", ".join([self._param] * len(EXPOSURE_COLUMNS)) + ")"
        with self._transaction() as cursor:
            cursor.executemany(
                f"INSERT INTO omni_exposures ({', '.join(EXPOSURE_COLUMNS)}) VALUES {marks}",
                [(*row[:-1], json.dumps(list(row[-1]))) for row in rows],
            )

    def read_exposures(
        self, since: pd.Timestamp | None = None, until: pd.Timestamp | None = None
    ) -> pd.DataFrame:
        """What the service showed between ``since`` and ``until`` (naive UTC, inclusive), one
        row per answer, ``shown_at`` typed and ``items`` a list."""
        p = self._param
        with self._transaction() as cursor:
            cursor.execute(
                f"SELECT {', '.join(EXPOSURE_COLUMNS)} FROM omni_exposures "
                f"WHERE shown_at >= {p} AND shown_at <= {p} ORDER BY seq",
                (_iso(since or pd.Timestamp.min), _iso(until or pd.Timestamp("2999-01-01"))),
            )
            rows = cursor.fetchall()
        frame = pd.DataFrame(rows, columns=list(EXPOSURE_COLUMNS))
        frame["shown_at"] = pd.to_datetime(frame["shown_at"], format="ISO8601").astype(
            "datetime64[us]"
        )
        frame["items"] = [json.loads(items) for items in frame["items"]]
        return frame

    def copy_to(self, target: EventLog, seal: bool = False) -> dict[str, int]:
        """Copy everything stored — events, movements and exposures, with their positions and
        receipt times — to an empty ``target`` (another SQLite file, or PostgreSQL), in one
        transaction there: the copy is whole or absent.

        Positions are kept because a champion records the last position it learned from, and
        the service applies the events after it. The source's tables are locked for writing
        while it is read (a service still posting to it waits until the copy ends), so the
        copy holds everything the source acknowledged until then. With ``seal`` the source
        then refuses every new row (:data:`SEALED`): a service left running on it can no longer
        acknowledge what the copy would not hold. A stored row the target's types cannot hold
        (SQLite does not enforce them; the service quarantines such rows when it reads them)
        stops the copy, named by its position.

        Returns:
            Rows copied per table (``events``, ``movements``, ``exposures``).
        """
        if self._same_store(target):
            raise ValueError(f"The copy's source and target are the same store, {self.url}.")
        if not target._postgres:
            _peek_sqlite_target(target)
        counts: dict[str, int] = {}
        copied = False
        try:
            with self._transaction() as source:
                with _copying(self, "read"):
                    tables = self._hold(source, seal)
                    holder = _backend(source) if self._postgres else None
                with target._transaction() as sink:
                    with _copying(target, "write to"):
                        target._take_empty(sink, holder)
                    for table in tables:
                        counts[table.removeprefix("omni_")] = _copy_rows(
                            (self, source), (target, sink), table, _STORED[table]
                        )
                    if target._postgres:  # the next row stored there is numbered after them
                        with _copying(target, "write to"):
                            _renumber(sink)
                    if seal:  # sealed, uncommitted: a failure here undoes the copy as well
                        with _copying(self, "seal"):
                            self._seal(source, target.url)
                copied = True  # the target has committed; the source's lock and seal follow
        except EventStoreUnavailable as exc:
            if copied and not seal:  # only the source's read transaction failed to end
                return counts
            if copied:  # the one step left: committing the seal
                raise CopyError(
                    f"The copy in {target.url} is complete, but {self.url} could not be sealed "
                    f"({exc}): stop every service writing to it before starting them on the "
                    "copy."
                ) from None
            raise
        return counts

    def _same_store(self, other: EventLog) -> bool:
        """Whether ``other`` names this store (the same URL, or the same SQLite file)."""
        if self._postgres or other._postgres:
            return self._url == other._url
        mine, theirs = self._path(), other._path()
        both = mine.exists() and theirs.exists()  # then a hard link or a bind mount is seen too
        return mine.resolve() == theirs.resolve() or (both and mine.samefile(theirs))

    def _hold(self, cursor: Any, seal: bool) -> list[str]:
        """Lock the log's tables against writers until the transaction ends (so every read
        sees the same rows); the tables it has."""
        tables = _tables(cursor, self._postgres)
        if self._postgres:
            self._lock_tables(cursor, tables)
        elif seal or os.access(self._path(), os.W_OK):
            cursor.execute("BEGIN IMMEDIATE")  # waits for a writer; then writers wait
        else:
            cursor.execute("BEGIN")  # a read-only file (a backup): nobody writes to it
        if seal and _sealed(cursor, self._postgres):
            raise ValueError(
                f"{self.url} was moved already (it refuses new rows): move the store it was "
                "moved to, or copy this one with omni events copy."
            )
        return tables

    def _take_empty(self, cursor: Any, holder: int | None = None) -> None:
        """Lock this (target) log's tables for writing; refuse it unless it holds no rows and
        takes new ones, or when the copy's PostgreSQL source, whose connection is ``holder``,
        has locked them already (the same store under another URL)."""
        if self._postgres:
            if holder is not None and _locked_by(cursor, holder):
                raise ValueError(
                    f"The copy's source and target are the same store, {self.url} (under "
                    "another URL)."
                )
            self._lock_tables(cursor, list(_STORED))
        else:
            cursor.execute("BEGIN IMMEDIATE")
        if _sealed(cursor, self._postgres):
            raise ValueError(
                f"The target {self.url} was itself moved (it refuses new rows): copy into "
                "another store."
            )
        for table in _STORED:
            cursor.execute(f"SELECT COUNT(*) FROM {table}")
            held = int(cursor.fetchone()[0])
            if held:
                raise ValueError(
                    f"The target {self.url} already holds {held:,} rows of {table}: copy "
                    "into an empty store, so that no position is used twice."
                )

    def _lock_tables(self, cursor: Any, tables: list[str]) -> None:
        """PostgreSQL: lock the tables against writers until the transaction ends, waiting for
        others' locks at most as long as a SQLite connection waits for its lock."""
        cursor.execute(f"SET LOCAL lock_timeout = '{int(self._wait)}s'")
        cursor.execute(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")

    def _seal(self, cursor: Any, moved_to: str) -> None:
        """Make every table of this log refuse new rows, saying where the log went."""
        said = _literal(f"{SEALED} {moved_to}")  # as text: no placeholder, no quoting in it
        tables = _tables(cursor, self._postgres)
        if self._postgres:
            body = _literal(f"BEGIN RAISE EXCEPTION USING MESSAGE = {said}; END")
            cursor.execute(
                "CREATE OR REPLACE FUNCTION omni_moved() RETURNS trigger LANGUAGE plpgsql "
                f"AS {body}"
            )
        for table in tables:
            cursor.execute(
                _SEAL_POSTGRES.format(table=table)
                if self._postgres
                else _SEAL_SQLITE.format(table=table, refusal=f"SELECT RAISE(ABORT, {said});")
            )

    def moved(self) -> bool:
        """Whether ``omni events move`` sealed this log: it refuses new rows."""
        with self._transaction() as cursor:
            return _sealed(cursor, self._postgres)

    def event_ids(self) -> set[str]:
        with self._transaction() as cursor:
            cursor.execute("SELECT event_id FROM omni_events")
            return {row[0] for row in cursor.fetchall()}

    def close(self) -> None:
        with self._lock:
            self._drop_connection()


#: Every stored table and its columns, as a copy moves them (positions included).
_STORED = {
    "omni_events": ("seq", "received_at", *COLUMNS),
    "omni_movements": ("seq", "received_at", *MOVEMENT_COLUMNS),
    "omni_exposures": ("seq", *EXPOSURE_COLUMNS),
}
_CREATE_TABLE = {
    "omni_events": _CREATE,
    "omni_movements": _CREATE_MOVEMENTS,
    "omni_exposures": _CREATE_EXPOSURES,
}
_NUMBERS = {"seq", "quantity", "unit_price", "hold_seconds"}
#: What a moved (sealed) log answers every write with, followed by where it went.
SEALED = "This event log was moved by omni events move to"
#: Sealing a table (a trigger of that name already there stops a move: it would not refuse).
_SEAL_POSTGRES = (
    "CREATE TRIGGER omni_moved BEFORE INSERT ON {table} FOR EACH STATEMENT "
    "EXECUTE FUNCTION omni_moved()"
)
_SEAL_SQLITE = "CREATE TRIGGER omni_moved_{table} BEFORE INSERT ON {table} BEGIN {refusal} END"


class CopyError(ValueError):
    """A copy stopped by one of its two stores (named, without its password)."""


def _tables(cursor: Any, postgres: bool) -> list[str]:
    """The log's tables that exist (in PostgreSQL, in the search path), in :data:`_STORED`'s
    order. ``cursor`` may be a connection: its execute returns a cursor, as a cursor's does."""
    if postgres:
        query = "SELECT " + ", ".join(f"to_regclass('{t}') IS NOT NULL" for t in _STORED)
        there = cursor.execute(query).fetchone()
        return [t for t, exists in zip(_STORED, there, strict=True) if exists]
    names = cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return [t for t in _STORED if (t,) in names]


def _sealed(cursor: Any, postgres: bool) -> bool:
    """Whether the log's events table has the trigger ``omni events move`` seals it with."""
    if postgres:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'omni_moved' "
            "AND tgrelid = to_regclass('omni_events'))"
        )
    else:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger' "
            "AND name = 'omni_moved_omni_events')"
        )
    return bool(cursor.fetchone()[0])


def _backend(cursor: Any) -> int:
    """The PostgreSQL server process of ``cursor``'s connection."""
    cursor.execute("SELECT pg_backend_pid()")
    return int(cursor.fetchone()[0])


def _locked_by(cursor: Any, holder: int) -> bool:
    """Whether the PostgreSQL connection ``holder`` (of any server: a process of another one
    holding this very lock does not happen) has locked this log's events table, as a copy's
    source does."""
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND granted "
        "AND mode = 'ExclusiveLock' AND relation = to_regclass('omni_events') "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        (holder,),
    )
    return bool(cursor.fetchone()[0])


def _seal_like_events(cursor: Any, postgres: bool, table: str) -> str:
    """The statement that seals ``table``, just created, as the moved log's events table is
    sealed (on PostgreSQL, workers starting together may each have created it: idempotent)."""
    if postgres:  # (not CREATE OR REPLACE: PostgreSQL 14 and later only)
        return f"DROP TRIGGER IF EXISTS omni_moved ON {table}; " + _SEAL_POSTGRES.format(
            table=table
        )
    (sealing,) = cursor.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'omni_moved_omni_events'"
    ).fetchone()
    refusal = sealing[sealing.index(" BEGIN ") + len(" BEGIN ") : -len(" END")]
    return _SEAL_SQLITE.format(table=table, refusal=refusal)


def _literal(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _peek_sqlite_target(target: EventLog) -> None:
    """Refuse, before changing anything in it, a SQLite target that is not a database or
    holds another program's tables."""
    path = target._path()
    if not path.exists():
        return
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as peek:
            names = {row[0] for row in peek.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as exc:
        raise ValueError(f"The target {target.url} is not a SQLite database ({exc}).") from None
    other = sorted(n for n in names - set(_STORED) if not n.startswith("sqlite_"))
    if other and not names & set(_STORED):
        raise ValueError(
            f"The target {target.url} holds other tables ({', '.join(other[:5])}): copy into "
            "a new file."
        )


@contextmanager
def _copying(log: EventLog, doing: str) -> Iterator[None]:
    """A step of a copy on ``log``: an error of its store's driver names that store."""
    try:
        yield
    except Exception as exc:
        if not _is_driver_error(exc):
            raise
        raise CopyError(f"Could not {doing} {log.url}: {log._reason(exc)}") from None


def _copy_rows(
    source: tuple[EventLog, Any], target: tuple[EventLog, Any], table: str, columns: tuple[str, ...]
) -> int:
    """Copy ``table`` from one store's cursor to another's, a statement's worth of rows at a
    time, in position order; the number of rows copied."""
    (reader, read), (writer, write) = source, target
    names = ", ".join(columns)
    marks = "(" + ", ".join([writer._param] * len(columns)) + ")"
    step = MAX_PARAMETERS // len(columns)
    numbers = [i for i, c in enumerate(columns) if c in _NUMBERS]
    last: int | None = None  # a hand edit may have left a position of 0 or below
    copied = 0
    while True:
        after = "" if last is None else f"WHERE seq > {reader._param} "
        with _copying(reader, "read"):
            read.execute(
                f"SELECT {names} FROM {table} {after}ORDER BY seq LIMIT {step}",
                () if last is None else (last,),
            )
            rows = read.fetchall()
        if not rows:
            return copied
        for row in rows if writer._postgres else ():  # SQLite stores any value anywhere
            wrong = _unstorable(row, numbers)
            if wrong is not None:
                raise ValueError(
                    f"{table} seq {row[0]} cannot be copied, as its {columns[wrong]} is "
                    f"{str(row[wrong])[:40]!r} (against the contract: the service never uses "
                    f"it); delete it from {reader.url} (DELETE FROM {table} WHERE seq = "
                    f"{row[0]}) and copy again."
                )
        with _copying(writer, "write to"):
            if writer._postgres:  # COPY: several times faster than INSERT statements
                with write.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                write.execute(
                    f"INSERT INTO {table} ({names}) VALUES " + ", ".join([marks] * len(rows)),
                    [v for row in rows for v in row],
                )
        last, copied = rows[-1][0], copied + len(rows)


def _renumber(cursor: Any) -> None:
    """PostgreSQL: each table's sequence set after its last copied position."""
    for table in _STORED:
        cursor.execute(  # a sequence starts at 1: positions below it leave it there
            f"SELECT setval(pg_get_serial_sequence('{table}', 'seq'), "
            f"GREATEST(MAX(seq), 1), COALESCE(MAX(seq), 0) >= 1) FROM {table}"
        )


def _unstorable(row: tuple, numbers: list[int]) -> int | None:
    """The first value of a stored row that PostgreSQL cannot hold as its column's type (a
    number column's text, a text column's bytes or NUL), if any."""
    for i, value in enumerate(row):
        if value is None:
            continue
        if i in numbers:
            if not isinstance(value, int | float):
                return i
        elif not isinstance(value, str) or "\x00" in value:
            return i
    return None


def _iso(value: pd.Timestamp) -> str:
    return pd.Timestamp(value).isoformat()


def _as_stored(rows: pd.DataFrame, columns: tuple[str, ...]) -> list[tuple]:
    """Typed rows (their first column a time) as the store keeps and returns them."""
    return [
        (_iso(r[0]), *(_nullable(v) for v in r[1:]))
        for r in rows[list(columns)].itertuples(index=False, name=None)
    ]


def _nullable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return float(value) if isinstance(value, np.floating) else value


def _psycopg(url: str) -> Any:
    """The PostgreSQL driver, imported only for a ``postgresql://`` URL (the ``postgres`` extra)."""
    try:
        import psycopg
    except ImportError as exc:
        raise ValueError(
            f"{EVENTS_URL_ENV}={url!r} needs the PostgreSQL driver: "
            "pip install 'omnichannel-ml[postgres]'."
        ) from exc
    return psycopg


def _is_store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the store (not the statement) failed: lost connection, disk, lock."""
    if isinstance(exc, sqlite3.OperationalError):
        return True
    psycopg = _loaded_psycopg()
    return psycopg is not None and isinstance(
        exc, psycopg.OperationalError | psycopg.InterfaceError
    )


def _is_seal(exc: BaseException) -> bool:
    """Whether ``exc`` is a moved log's refusal of a new row (:data:`SEALED`)."""
    return _is_driver_error(exc) and SEALED in str(exc)


def _fetch_all(cursor: Any, query: str, params: tuple) -> list[tuple]:
    """The rows of ``query``; in SQLite a text a hand edit left undecodable reads as U+FFFD
    (the query run again so: decoding every text in Python would slow every read), not as an
    unreadable log."""
    try:
        return list(cursor.execute(query, params).fetchall())
    except sqlite3.OperationalError as exc:
        if "decode" not in str(exc):
            raise
    connection = cursor.connection
    connection.text_factory = lambda raw: raw.decode("utf-8", "replace")
    try:
        return list(cursor.execute(query, params).fetchall())
    finally:
        connection.text_factory = str


def _is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` is any error of SQLite's or PostgreSQL's driver (a refusal included)."""
    if isinstance(exc, sqlite3.Error):
        return True
    psycopg = _loaded_psycopg()
    return psycopg is not None and isinstance(exc, psycopg.Error)


def _loaded_psycopg() -> Any:
    """The PostgreSQL driver if a store has loaded it (else none of its errors can occur)."""
    return sys.modules.get("psycopg")
