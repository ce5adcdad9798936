"""The stock side of the KPI report (``omni report kpis --data``, ``omni stock report``): what
sold comes from the data directory — its sales table, else its events — and from the events
the service logged that the directory does not already hold."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from experiments.pipelines.measurement import stock_trail
from features.eventlog import EventLog, validate_events
from features.stock import stock_kpis

SINCE, UNTIL = pd.Timestamp("2026-10-31"), pd.Timestamp("2026-11-05")


def purchase(event_id: str, time: str, quantity: int) -> dict:
    return {
        "event_id": event_id, "event_time": time, "channel": "store", "event_type": "purchase",
        "item_id": "a", "store_id": "S1", "quantity": quantity, "customer_key": "LC-1",
    }  # fmt: skip


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    accepted, reasons = validate_events(
        [purchase("till-9", "2026-11-01T15:00:00", 5), purchase("app-1", "2026-11-03T10:00:00", 1)]
    )
    assert reasons == [None, None]
    log.append(accepted)
    yield log
    log.close()


def data_dir(root: Path, **tables: list[dict]) -> Path:
    root.mkdir()
    inventory = [{"date": "2026-10-30", "store_id": "S1", "item_id": "a", "on_hand": 20}]
    for name, rows in {"inventory": inventory, **tables}.items():
        pd.DataFrame(rows).to_csv(root / f"{name}.csv", index=False)
    return root


def sold_and_on_hand(data: Path, log: EventLog) -> tuple[float, float]:
    pairs, _ = stock_kpis(stock_trail(data, log, log.read()), until=UNTIL, since=SINCE)
    row = pairs.set_index(["node_id", "item_id"]).loc[("S1", "a")]
    return float(row["sold"]), float(row["on_hand"])


def test_the_sales_table_counts_to_its_last_day_and_the_logged_events_after_it(
    tmp_path: Path, log: EventLog
) -> None:
    """Regression: the report counted only the logged events, so a period the data directory
    covers showed 0 sold and a fill rate of 0%."""
    sales = [
        {"date": "2026-10-31", "store_id": "S1", "item_id": "a", "units": 4},
        {"date": "2026-11-01", "store_id": "S1", "item_id": "a", "units": 7},  # till-9's 5 in it
    ]
    assert sold_and_on_hand(data_dir(tmp_path / "d", sales=sales), log) == (12.0, 8.0)


def test_without_a_sales_table_the_events_file_and_the_logged_ones_it_lacks(
    tmp_path: Path, log: EventLog
) -> None:
    events = [
        purchase("till-8", "2026-10-31T09:00:00", 2),
        purchase("till-9", "2026-11-01T15:00:00", 5),  # logged too: counted once
    ]
    assert sold_and_on_hand(data_dir(tmp_path / "d", events=events), log) == (8.0, 12.0)


def test_the_report_written_to_a_file_keeps_its_lines_whole(tmp_path: Path, log: EventLog) -> None:
    """Regression: written to a file or a pipe, tables and sentences were cut to 80 columns."""
    from tests.processes import OMNI

    data = data_dir(tmp_path / "d", sales=[])
    env = {**os.environ, "OMNI_EVENTS_URL": f"sqlite:///{tmp_path}/events.db"}
    env.pop("COLUMNS", None)
    result = subprocess.run(
        [*OMNI, "stock", "report", "--data", str(data), "--until", "2026-11-05T00:00:00"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("1 node/item pairs to 2026-11-05")
    assert summary.endswith("(0 h); no stock counts.")
    assert "…" not in result.stdout
