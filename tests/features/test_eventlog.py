"""The event log on SQLite and on the real PostgreSQL server, and the checks posted events get."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from features import eventlog
from features.eventlog import (
    RECONNECT_SECONDS,
    EventLog,
    EventStoreUnavailable,
    _checked,
    check_movements,
    events_frame,
    plain_rows,
    redact_urls,
    validate_events,
    with_logged,
)
from features.ingest import load_table
from features.schema import EVENTS, Bounds

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
        url = f"sqlite:///{tmp_path}/events.db"
    else:  # skipped, or under CI failed, when no server answers (tests/conftest.py)
        url = request.getfixturevalue("postgres_url")
    event_log = EventLog(url)
    try:
        yield event_log
    finally:
        event_log.close()


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
    assert log.recorded_otherwise(accepted) == []  # a retry, as typed and stored
    other, _ = validate_events([{**GOOD, "unit_price": 3.75}, {**GOOD, "event_id": "new-1"}])
    assert log.recorded_otherwise(other) == ["till-1"]


def test_a_group_commit_larger_than_a_statement_takes_is_stored(log: EventLog) -> None:
    """Regression: ten full /events batches committed together were one INSERT of 10,000 rows,
    over PostgreSQL's 65,535 parameters (SQLite's limit: 26,000 rows here) — 503 for every
    request of the group, and /readyz 503."""
    batches = [
        validate_events([{**GOOD, "event_id": f"e{b}-{i}"} for i in range(1000)])[0]
        for b in range(26)
    ]
    both = pd.concat([*batches, batches[0]], ignore_index=True)  # a retry inside the group
    stored, seqs = log.append(both)
    assert stored.sum() == 26_000 and not stored[-1000:].any()
    assert seqs.tolist() == list(range(1, 26_001)) and log.last_seq() == 26_000


def test_training_adds_only_the_logged_events_a_file_does_not_hold() -> None:
    file_events, _ = validate_events([GOOD])
    logged, _ = validate_events([GOOD, {**GOOD, "event_id": "till-2"}])
    merged = with_logged(file_events, logged)
    assert list(merged["event_id"]) == ["till-1", "till-2"]


def test_an_unknown_url_is_refused_in_one_sentence() -> None:
    with pytest.raises(ValueError, match="neither sqlite"):
        EventLog("mysql://somewhere/db")


def test_a_stored_row_that_breaks_the_contract_is_quarantined_not_fatal(log: EventLog) -> None:
    """Regression (#11): one year-10000 event made the log unreadable — the service could never
    load again and ``omni train`` exited 2."""
    accepted, _ = validate_events([GOOD])
    log.append(accepted)
    with log._transaction() as cursor:  # what an older version, or a hand edit, could leave
        p = log._param
        cursor.execute(
            "INSERT INTO omni_events (received_at, event_time, channel, event_type, item_id, "
            f"quantity, event_id) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})",
            ("now", "10000-01-01T13:59:59", "store", "purchase", "I1", 1e300, "bad-1"),
        )
    back = log.read()
    assert list(back["event_id"]) == ["till-1"] and log.quarantined == 1
    log.read()  # read again (a reload): still one quarantined event, not two
    assert log.quarantined == 1


def test_a_nul_in_a_key_is_refused_before_the_store() -> None:
    """Regression (#11): a NUL in customer_key was a 500 on PostgreSQL (SQLite stored it)."""
    accepted, reasons = validate_events([{**GOOD, "customer_key": "LC\x00-1"}])
    assert accepted.empty and reasons == ["customer_key has a control or invisible character"]
    # Invisible characters too, on the direct path for small batches and the contract's alike.
    for batch in (1, 150):
        rows = [{**GOOD, "event_id": f"e{i}", "item_id": "I\u2066000010"} for i in range(batch)]
        accepted, reasons = validate_events(rows)
        assert accepted.empty and set(reasons) == {"item_id has a control or invisible character"}


@pytest.mark.parametrize("scheme", ["postgresql", "sqlite"])
def test_an_unreachable_store_is_one_sentence_without_its_password(
    scheme: str, tmp_path: Path
) -> None:
    """Regression (#11): the store's errors carried its whole URL, password included."""
    password = "Sup3r-Secret-pw"
    if scheme == "postgresql":  # nothing listens on port 1
        url = f"postgresql://omni:{password}@127.0.0.1:1/test"
    else:  # a directory where the file should be (SQLite URLs hold no password)
        (tmp_path / "events.db").mkdir()
        url = f"sqlite:///{tmp_path}/events.db"
    log = EventLog(url)
    with pytest.raises(EventStoreUnavailable) as refused:
        log.last_seq()
    assert password not in str(refused.value) and password not in log.url
    assert str(refused.value).startswith("The event store ")
    if scheme == "postgresql":
        assert "***" in log.url


def test_the_log_reconnects_when_the_store_comes_back(postgres_url: str) -> None:
    import psycopg

    log = EventLog(postgres_url)
    accepted, _ = validate_events([GOOD])
    log.append(accepted)
    backend = log._connection.info.backend_pid
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # the server drops us
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
    with pytest.raises(EventStoreUnavailable):
        log.last_seq()
    assert log.last_seq() == 1  # the next call connects again, at once: the server is up
    log.close()


def test_a_new_sqlite_store_is_private(tmp_path: Path) -> None:
    """Regression (#11): events.db (customer keys inside) was created world-readable."""
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    log.last_seq()
    log.close()
    assert (tmp_path / "events.db").stat().st_mode & 0o777 == 0o600


# fmt: off
_TIMES = [
    "2026-11-23T10:00:00", "2026-11-23 10:00", "2026-11-23T10:00:00.5+09:00", "2026-11-23",
    "2026-02-30", "1999-12-31T23:59:59", "9999-12-31T23:59:59-14:00", "2026-11-23T10:00:00Z",
    " 2026-11-23", "yesterday", "2026-11-23T24:00", "2026-11-23T10:00:00.1234567",
    "2026-01-01+05:00", "2026-01-01-05:00",
]
# fmt: on
# Half plainly valid, half not: the direct path must be exercised, not only refused.
_TEXT = st.sampled_from(["S001", "s 1", "カード-1", "x" * 256]) | st.sampled_from(
    [" S001", "", "x" * 257, "I\x00", "LC-1\t", "é\x7f"]
)
_EVENT = st.fixed_dictionaries(
    {
        "event_time": st.sampled_from(_TIMES),
        "channel": _TEXT,
        "event_type": st.sampled_from(["view", "purchase", "Purchase", "refund", "return"]),
        "item_id": _TEXT,
        "customer_key": st.none() | _TEXT,
        "quantity": st.none() | st.integers(-2, 2) | st.floats(allow_nan=True) | st.just(1e300),
        "unit_price": st.none() | st.floats(-1, 1e13),
        "store_id": st.none() | _TEXT,
        "event_id": st.none() | st.sampled_from(["e1", "e2", "", " e3"]),
    }
)


_VALID = st.sampled_from(["S001", "s 1", "カード-1", "x" * 256])
_VALID_EVENT = st.fixed_dictionaries(
    {
        "event_time": st.sampled_from(_TIMES[:4] + _TIMES[7:8]),
        "channel": _VALID,
        "event_type": st.sampled_from(["view", "purchase", "return"]),
        "item_id": _VALID,
        "customer_key": st.none() | _VALID,
        "quantity": st.none() | st.integers(1, 10**6) | st.floats(1e-9, 1e6),
        "unit_price": st.none() | st.floats(0, 1e12),
        "store_id": st.none() | _VALID,
        "event_id": st.none() | st.sampled_from(["e1", "e2", ""]),
    }
)


@given(st.lists(_VALID_EVENT | _EVENT, min_size=1, max_size=4))
@settings(max_examples=400, deadline=None, derandomize=True)
def test_the_direct_path_accepts_only_what_the_file_checks_accept_alike(records) -> None:
    rows = plain_rows(records, Bounds())
    event("direct" if rows is not None else "file checks")
    if rows is None:
        return
    fast = events_frame(rows)
    with_ids = [{**r, "event_id": e} for r, e in zip(records, fast["event_id"], strict=True)]
    checked, reasons = _checked(with_ids, Bounds.from_env())
    assert reasons == [None] * len(records)
    pd.testing.assert_frame_equal(fast, checked.drop(columns="__row"))


def test_plainly_valid_events_take_the_direct_path() -> None:
    assert plain_rows([GOOD, {**GOOD, "event_id": None}], Bounds()) is not None
    # Python reads "+05:00" after a date as a time; the file loader refuses it.
    assert plain_rows([{**GOOD, "event_time": "2026-01-01+05:00"}], Bounds()) is None


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("sqlite:///{tmp}/no such dir/events.db", "does not exist (a mistyped path"),
        ("sqlite:///{tmp}/events.db?mode=ro", "names its file only, no options"),
        ("postgresql://omni:Tr0ub4dor@3_LEAK@127.0.0.1:1/omni", "percent-encode them (%40"),
        ("postgresql://omni:pw/3_LEAK@127.0.0.1:1/omni", "an '@', '/', '#' or space in its user"),
        ("postgresql://omni:p w 3_LEAK@127.0.0.1:1/omni", "an '@', '/', '#' or space in its user"),
        ("sqlite:///", "names no file"),
    ],
)
def test_a_url_that_would_be_misread_is_refused_at_once(
    url: str, said: str, tmp_path: Path
) -> None:
    """Regressions: a mistyped directory started a new, empty log; '?mode=ro' became part of a
    file's name; with an '@' in the password the driver took its end for the host and said it
    in its errors."""
    with pytest.raises(ValueError, match=re.escape(said)) as refused:
        EventLog(url.format(tmp=tmp_path))
    assert "3_LEAK" not in str(refused.value) and not (tmp_path / "no such dir").exists()


def test_after_a_failure_calls_fail_at_once_for_a_while(tmp_path: Path) -> None:
    """Every request must not wait for its own connect while the store is down."""
    (tmp_path / "events.db").mkdir()  # a directory where the file should be
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    with pytest.raises(EventStoreUnavailable):
        log.last_seq()
    (tmp_path / "events.db").rmdir()  # the store is back, but the log waits a moment to retry
    with pytest.raises(EventStoreUnavailable):
        log.last_seq()
    time.sleep(RECONNECT_SECONDS)
    assert log.last_seq() == 0


def test_libpq_password_parameters_are_redacted_too() -> None:
    url = "postgresql://h/db?sslmode=require&password=Sup3r&sslpassword=Other"
    assert redact_urls(url) == "postgresql://h/db?sslmode=require&password=***&sslpassword=***"
    assert redact_urls("postgresql://u:p4ss@h/db") == "postgresql://u:***@h/db"


def _filled(log: EventLog) -> None:
    """A log with events, a stock movement and an exposure, as a running service leaves it."""
    events, _ = validate_events([{**GOOD, "event_id": f"e{i}"} for i in range(3000)])
    log.append(events)
    movements, reasons = check_movements(
        [{"movement_time": "2026-11-23T09:00:00", "movement_type": "receipt", "node_id": "S001",
          "item_id": "I000010", "quantity": 12, "movement_id": "asn-1"}],
        Bounds(),
    )  # fmt: skip
    assert reasons == [None]
    log.append_movements(movements)
    log.append_exposures(
        [("2026-11-23T10:00:00", "r-1", "recommend", "c-1", "app", None, "treatment", "3",
          ["I000010", "I000011"])]
    )  # fmt: skip


@pytest.mark.parametrize("direction", ["sqlite-to-postgresql", "postgresql-to-sqlite"])
def test_a_log_copied_to_another_store_reads_back_the_same_and_goes_on_numbering(
    direction: str, tmp_path: Path, postgres_url: str
) -> None:
    sqlite = f"sqlite:///{tmp_path}/events.db"
    source_url, target_url = (
        (sqlite, postgres_url) if direction == "sqlite-to-postgresql" else (postgres_url, sqlite)
    )
    source, target = EventLog(source_url), EventLog(target_url)
    try:
        _filled(source)
        assert source.copy_to(target) == {"events": 3000, "movements": 1, "exposures": 1}
        pd.testing.assert_frame_equal(target.read(), source.read())
        pd.testing.assert_frame_equal(target.read_movements(), source.read_movements())
        pd.testing.assert_frame_equal(target.read_exposures(), source.read_exposures())
        assert target.positions() == source.positions() == (3000, 1)
        # The next event posted to the new store is numbered after the copied ones.
        _, seqs = target.append(validate_events([{**GOOD, "event_id": "after"}])[0])
        assert seqs.tolist() == [3001]
        with pytest.raises(ValueError, match="already holds 3,001 rows of omni_events"):
            source.copy_to(target)  # never into a store in use
    finally:
        source.close()
        target.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_move_holds_writers_off_then_refuses_them_so_no_acknowledged_row_is_left_behind(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Regression: a service still posting to the old store during the copy had its later
    events acknowledged there and missing from the copy (5 copies of 6 said nothing)."""
    postgres_url = request.getfixturevalue("postgres_url")
    source_url = f"sqlite:///{tmp_path}/events.db" if kind == "sqlite" else postgres_url
    target_url = postgres_url if kind == "sqlite" else f"sqlite:///{tmp_path}/events.db"
    source, target = EventLog(source_url), EventLog(target_url)
    _filled(source)
    outcome: list[object] = []
    service = source.another()  # a service still running on the old store

    def post() -> None:
        try:
            outcome.append(service.append(validate_events([{**GOOD, "event_id": "late"}])[0]))
        except EventStoreUnavailable as exc:
            outcome.append(exc)

    copy_rows, writer = eventlog._copy_rows, threading.Thread(target=post)

    def with_a_post_meanwhile(*args: Any) -> int:
        if args[2] == "omni_events":
            writer.start()
            time.sleep(0.5)
            assert writer.is_alive() and not outcome  # held off while the copy reads
        return copy_rows(*args)

    monkeypatch.setattr(eventlog, "_copy_rows", with_a_post_meanwhile)
    try:
        assert source.copy_to(target, seal=True)["events"] == 3000
        writer.join(timeout=40)
        (refused,) = outcome  # then refused: the old store takes no row any more
        assert isinstance(refused, EventStoreUnavailable) and eventlog.SEALED in str(refused)
        assert target.positions() == source.positions() == (3000, 1)
        pd.testing.assert_frame_equal(target.read(), source.read())  # the old one still reads
        with pytest.raises(EventStoreUnavailable, match=eventlog.SEALED):
            source.append_exposures([("2026-11-23T10:00:00", "r", "recommend", None, None,
                                      None, "treatment", "3", ["I1"])])  # fmt: skip
        # The new store takes the next row, numbered after the copied ones.
        assert target.append(validate_events([{**GOOD, "event_id": "late"}])[0])[1] == [3001]
    finally:
        service.close()
        source.close()
        target.close()


def test_a_copy_waiting_for_a_locked_target_names_it_and_gives_up(
    tmp_path: Path, postgres_url: str
) -> None:
    """Regression: a copy into tables another session held locked hung without a word."""
    import psycopg

    source = EventLog(f"sqlite:///{tmp_path}/events.db")
    _filled(source)
    target = EventLog(postgres_url, wait_seconds=1)
    target.last_seq()  # its tables exist
    holder = psycopg.connect(postgres_url)
    try:
        holder.execute("LOCK TABLE omni_exposures IN ROW EXCLUSIVE MODE")
        with pytest.raises(eventlog.CopyError, match=r"^Could not write to postgresql://.*lock"):
            source.copy_to(target)
    finally:
        holder.close()
        source.close()
        target.close()


def test_a_copy_names_a_stored_row_postgresql_cannot_hold(
    tmp_path: Path, postgres_url: str
) -> None:
    source, target = EventLog(f"sqlite:///{tmp_path}/events.db"), EventLog(postgres_url)
    try:
        _filled(source)
        with source._transaction() as cursor:  # SQLite keeps text in a number column
            cursor.execute("UPDATE omni_events SET quantity = 'two' WHERE seq = 7")
        with pytest.raises(
            ValueError, match=r"omni_events seq 7 cannot be copied, as its quantity"
        ):
            source.copy_to(target)
        assert target.positions() == (0, 0)
    finally:
        source.close()
        target.close()


def test_a_copy_refuses_a_missing_source_one_that_is_no_log_and_itself(tmp_path: Path) -> None:
    missing = EventLog(f"sqlite:///{tmp_path}/none.db", create=False)
    target = EventLog(f"sqlite:///{tmp_path}/t.db")
    with pytest.raises(ValueError, match="There is no event log at"):
        missing.copy_to(target)
    assert not (tmp_path / "none.db").exists()
    # Regression: an empty file or another program's database got the log's tables, and a
    # copy of "0 events" was reported done.
    (tmp_path / "empty.db").touch()
    with pytest.raises(ValueError, match="holds no event log"):
        EventLog(f"sqlite:///{tmp_path}/empty.db", create=False).copy_to(target)
    assert (tmp_path / "empty.db").stat().st_size == 0
    same = EventLog(f"sqlite:///{tmp_path}/../{tmp_path.name}/t.db")
    target.last_seq()  # the file exists now
    with pytest.raises(ValueError, match="the same store"):
        target.copy_to(same)
    os.link(tmp_path / "t.db", tmp_path / "hard.db")  # one file under two names
    with pytest.raises(ValueError, match="the same store"):
        target.copy_to(EventLog(f"sqlite:///{tmp_path}/hard.db"))


def test_a_hand_edited_text_that_is_not_utf8_leaves_the_sqlite_log_readable(
    tmp_path: Path,
) -> None:
    """Regression: one such row made every read of the log fail (the service could not load)."""
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    log.append(validate_events([GOOD])[0])
    with log._transaction() as cursor:
        cursor.execute("UPDATE omni_events SET customer_key = CAST(x'4c43ff' AS TEXT)")
    assert log.read()["customer_key"].tolist() == ["LC\ufffd"]
    # A copy does not change it silently: it stops, naming the store it read.
    with pytest.raises(eventlog.CopyError, match=r"^Could not read sqlite:///.*decode"):
        log.copy_to(EventLog(f"sqlite:///{tmp_path}/copy.db"))
    log.close()


def test_a_copy_into_a_moved_log_is_refused_in_one_sentence(tmp_path: Path) -> None:
    """Regression: a moved (empty) log was taken as a target, and its refusal of the first row
    came back wrapped three times, blaming the source."""
    moved, source = EventLog(f"sqlite:///{tmp_path}/a.db"), EventLog(f"sqlite:///{tmp_path}/c.db")
    moved.copy_to(EventLog(f"sqlite:///{tmp_path}/b.db"), seal=True)
    _filled(source)
    with pytest.raises(ValueError, match=r"^The target sqlite:///\S+/a.db was itself moved"):
        source.copy_to(moved)
    moved.close()
    source.close()


def test_a_move_whose_seal_fails_copies_nothing(tmp_path: Path, postgres_url: str) -> None:
    """Regression: the copy was committed before the old log was sealed, so a failed seal left
    a complete copy beside a log still taking rows, and a move that could not be repeated."""
    source, target = EventLog(f"sqlite:///{tmp_path}/events.db"), EventLog(postgres_url)
    _filled(source)
    with source._transaction() as cursor:  # in the seal's way (left by a hand, say)
        cursor.execute("CREATE TRIGGER omni_moved_omni_movements BEFORE DELETE ON "
                       "omni_movements BEGIN SELECT 1; END")  # fmt: skip
    try:
        with pytest.raises(eventlog.CopyError, match=r"^Could not seal sqlite:///"):
            source.copy_to(target, seal=True)
        assert target.positions() == (0, 0) and not source.moved()
        source.append(validate_events([{**GOOD, "event_id": "still"}])[0])  # takes rows
    finally:
        source.close()
        target.close()


def test_a_moved_log_says_where_it_went_and_is_not_moved_twice(
    tmp_path: Path, postgres_url: str
) -> None:
    """Regression: a target URL with a %, a quote or $$ broke the seal's SQL after the copy."""
    source = EventLog(postgres_url)
    odd = tmp_path / "it's 100%$$ here"
    odd.mkdir()
    target = EventLog(f"sqlite:///{odd}/events.db")
    second = EventLog(f"sqlite:///{tmp_path}/second.db")
    try:
        _filled(source)
        assert not source.moved()
        source.copy_to(target, seal=True)
        assert source.moved() and not target.moved()
        with pytest.raises(
            EventStoreUnavailable, match=re.escape(f"{eventlog.SEALED} {target.url}")
        ):
            source.append(validate_events([{**GOOD, "event_id": "late"}])[0])
        with pytest.raises(ValueError, match="was moved already"):
            source.copy_to(second, seal=True)
        assert source.copy_to(second)["events"] == 3000  # copied, it may be: it is a backup
    finally:
        for log in (source, target, second):
            log.close()


def test_every_position_is_copied_and_postgresql_numbers_on_after_them(
    tmp_path: Path, postgres_url: str
) -> None:
    """Regression: rows a hand edit left at positions 0 or below were skipped, and a table
    with only such rows stopped the copy to PostgreSQL."""
    source, target = EventLog(f"sqlite:///{tmp_path}/events.db"), EventLog(postgres_url)
    try:
        _filled(source)
        with source._transaction() as cursor:
            cursor.execute("UPDATE omni_events SET seq = -9223372036854775808 WHERE seq = 1")
            cursor.execute("UPDATE omni_events SET seq = 0 WHERE seq = 2")
            cursor.execute("UPDATE omni_movements SET seq = -1")
        assert source.copy_to(target) == {"events": 3000, "movements": 1, "exposures": 1}
        _, seqs = target.append(validate_events([{**GOOD, "event_id": "next"}])[0])
        assert seqs.tolist() == [3001]
    finally:
        source.close()
        target.close()


def test_a_sqlite_target_of_another_program_is_refused_untouched(tmp_path: Path) -> None:
    import hashlib
    import sqlite3

    source = EventLog(f"sqlite:///{tmp_path}/events.db")
    _filled(source)
    other = tmp_path / "mlflow.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE experiments (x)")
    before = hashlib.md5(other.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"holds other tables \(experiments\)"):
        source.copy_to(EventLog(f"sqlite:///{other}"))
    assert hashlib.md5(other.read_bytes()).hexdigest() == before
    source.close()


def test_a_table_added_to_a_moved_log_refuses_rows_as_the_others_do(
    log: EventLog, tmp_path: Path
) -> None:
    """Regression: a log moved before this version added its stock and exposure tables got
    them, accepting rows, from the next service started on it."""
    with log._transaction() as cursor:
        cursor.execute("DROP TABLE omni_movements")
        cursor.execute("DROP TABLE omni_exposures")
    log.copy_to(EventLog(f"sqlite:///{tmp_path}/moved.db"), seal=True)
    reopened = EventLog(log.url)
    try:
        exposure = ("2026-11-23T10:00:00", "r-1", "recommend", "c-1", "app", None, "a", "3", [])
        with pytest.raises(EventStoreUnavailable, match=re.escape(f"{eventlog.SEALED} sqlite:")):
            reopened.append_exposures([exposure])
        assert reopened.moved() and reopened.read_exposures().empty
    finally:
        reopened.close()


def test_a_postgresql_store_under_another_url_is_refused_as_the_same_at_once(
    postgres_url: str,
) -> None:
    """Regression: the copy waited 30 s for the lock it held itself, then gave up."""
    source = EventLog(postgres_url)
    _filled(source)
    again = EventLog(f"{postgres_url}&application_name=another")
    started = time.monotonic()
    try:
        with pytest.raises(ValueError, match=r"the same store, .* \(under another URL\)\.$"):
            source.copy_to(again, seal=True)
        assert time.monotonic() - started < 5
        assert not source.moved() and source.positions() == (3000, 1)
    finally:
        source.close()
        again.close()
