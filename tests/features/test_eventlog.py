"""The event log on SQLite and on the real PostgreSQL server, and the checks posted events get."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from features.eventlog import EventLog, validate_events, with_logged
from features.ingest import load_table
from features.schema import EVENTS

POSTGRES = "postgresql://127.0.0.1:5432/test"
GOOD = {
    "event_time": "2026-11-23T10:00:00",
    "channel": "store",
    "event_type": "purchase",
    "item_id": "I000010",
    "customer_key": "LC-1",
    "quantity": 2,
    "unit_price": 3.5,
    "store_id": "S001",
    "event_id": "till-1",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    if request.param == "sqlite":
        event_log = EventLog(f"sqlite:///{tmp_path}/events.db")
        yield event_log
        event_log.close()
        return
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server answers at 127.0.0.1:5432 ({exc})")
    schema = f"omni_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    event_log = EventLog(f"{POSTGRES}?options=-csearch_path%3D{schema}")
    try:
        yield event_log
    finally:
        event_log.close()
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def test_posted_events_get_the_files_checks_one_by_one(tmp_path: Path) -> None:
    bad = [
        {**GOOD, "event_id": "a", "event_time": "2026-02-30T10:00:00"},
        {**GOOD, "event_id": "b", "event_type": "refund"},
        {**GOOD, "event_id": "c", "quantity": -1},
        {**GOOD, "event_id": "d", "item_id": None},
        {**GOOD, "event_id": "till-1"},  # the same id twice in one batch
    ]
    accepted, reasons = validate_events([GOOD, *bad])
    assert reasons[0] is None and all(reasons[1:])
    assert list(accepted["event_id"]) == ["till-1"]
    # The same rows as a file give the same verdicts.
    pd.DataFrame([GOOD, *bad]).to_csv(tmp_path / "events.csv", index=False)
    loaded = load_table(tmp_path / "events.csv", EVENTS)
    assert sorted(loaded.quarantined["reason"]) == sorted(r for r in reasons if r)
    assert accepted.dtypes.to_dict() == loaded.accepted[list(accepted)].dtypes.to_dict()


def test_append_is_durable_idempotent_and_reads_back_typed(log: EventLog) -> None:
    accepted, _ = validate_events([GOOD, {**GOOD, "event_id": None, "customer_key": None}])
    stored, seqs = log.append(accepted)
    assert stored.tolist() == [True, True] and seqs.tolist() == [1, 2]
    again, _ = log.append(accepted)  # a retry: nothing is stored twice
    assert again.tolist() == [False, False] and log.last_seq() == 2
    back = log.read()
    pd.testing.assert_frame_equal(back, accepted.reset_index(drop=True))
    assert len(log.read(after=1)) == 1 and log.event_ids() == set(accepted["event_id"])


def test_training_adds_only_the_logged_events_a_file_does_not_hold() -> None:
    file_events, _ = validate_events([GOOD])
    logged, _ = validate_events([GOOD, {**GOOD, "event_id": "till-2"}])
    merged = with_logged(file_events, logged)
    assert list(merged["event_id"]) == ["till-1", "till-2"]


def test_an_unknown_url_is_refused_in_one_sentence() -> None:
    with pytest.raises(ValueError, match="neither sqlite"):
        EventLog("mysql://somewhere/db")
