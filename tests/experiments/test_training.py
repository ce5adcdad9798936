"""The recommender's validation split when live events are newer than the files."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.pipelines import data as pipelines
from experiments.pipelines.training import split_for_validation
from features.eventlog import validate_events
from features.identity import IdentityConfig
from tests.conftest import SAMPLE


@pytest.mark.slow
def test_a_few_events_posted_today_do_not_empty_the_validation_window() -> None:
    """Regression (#11): the README's curl posts a purchase dated today; the sample ends in
    2024-09, and ``omni train recommender`` then found "no customer bought a new item in the
    last 28 days"."""
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).isoformat(timespec="seconds")
    posted = [
        {"event_time": now, "channel": "store", "event_type": "purchase", "item_id": "I000010",
         "customer_key": f"LC-{i:08d}", "quantity": 1, "store_id": "S001"}
        for i in range(5)
    ]  # fmt: skip
    logged, reasons = validate_events(posted)
    assert not any(reasons)
    config = IdentityConfig(salt="test-salt")
    files_only = pipelines.unify(SAMPLE, config).unified
    with_live = pipelines.unify(SAMPLE, config, logged).unified
    expected = split_for_validation(files_only, 28).relevant
    split = split_for_validation(with_live, 28)
    assert len(split.relevant) >= len(expected) > 0
    assert split.before["event_time"].max() < split.cutoff < pd.Timestamp("2024-10-01")


def test_validation_scores_each_customers_next_basket_or_the_whole_window() -> None:
    rows = [
        ("a", "milk", "2024-03-01 09:00"),  # before the cutoff: known
        ("b", "milk", "2024-03-02 09:00"),
        ("a", "tea", "2024-03-20 18:00"),  # a's next basket: one day, two items
        ("a", "eggs", "2024-03-20 18:05"),
        ("a", "salt", "2024-03-20 21:00"),  # the same day, later: another basket
        ("a", "soap", "2024-03-25 10:00"),  # a later basket
        ("c", "jam", "2024-03-21 10:00"),  # never seen before the cutoff: not scored
    ]
    events = pd.DataFrame(rows, columns=["customer_id", "item_id", "event_time"])
    events = events.assign(event_time=pd.to_datetime(events["event_time"]), event_type="purchase")
    nxt = split_for_validation(events, 10)
    # The end is where all but the latest 0.1% of events lie (here all but the very last); the
    # window starts at the midnight before it; the list is asked for as the basket begins.
    assert nxt.cutoff == pd.Timestamp("2024-03-11")
    assert sorted(map(tuple, nxt.relevant.to_numpy())) == [("a", "eggs"), ("a", "tea")]
    assert nxt.now == {"a": pd.Timestamp("2024-03-20 18:00")}
    window = split_for_validation(events, 10, "window")
    assert sorted(window.relevant["item_id"]) == ["eggs", "salt", "soap", "tea"]
    assert window.now == {"a": window.cutoff}
    with pytest.raises(ValueError, match="next_basket, window"):
        split_for_validation(events, 10, "month")
    # Regression: data with nothing to validate on stopped with an IndexError or TypeError.
    assert split_for_validation(events.assign(event_type="view"), 10).relevant.empty
    assert split_for_validation(events[events["customer_id"] == "c"], 10).relevant.empty
    with pytest.raises(ValueError, match="no accepted events"):
        split_for_validation(events.iloc[:0], 10)


def test_the_service_log_is_read_only_when_events_make_the_demand(tmp_path) -> None:
    """A sales table is the tills' own record: ``omni train forecaster`` then leaves the service's
    event log (possibly millions of events) unread."""
    import shutil

    from experiments.pipelines.forecaster import load_demand

    reads: list[int] = []

    def logged() -> pd.DataFrame:
        reads.append(1)
        return pd.DataFrame()

    assert len(load_demand(SAMPLE, "W", logged).panel) and reads == []
    events_only = tmp_path / "events-only"
    shutil.copytree(SAMPLE, events_only)
    (events_only / "sales.csv.gz").unlink()
    assert len(load_demand(events_only, "W", logged).panel) and reads == [1]


def test_a_history_all_inside_the_validation_window_says_so() -> None:
    """Regression: a single day of purchases was refused as "no known customer bought anything
    in the last 28 days" (the days held 108 purchases) with advice no option could follow."""
    from experiments.pipelines.training import load_training_options, select_recommender

    events = pd.DataFrame(
        {
            "customer_id": ["a", "b", "a", "c"],
            "item_id": ["milk", "tea", "eggs", "milk"],
            "event_time": pd.to_datetime(["2024-03-20 09:00"] * 2 + ["2024-03-20 18:00"] * 2),
            "event_type": "purchase",
        }
    )
    with pytest.raises(ValueError, match="no history is left to train on before it"):
        select_recommender(events, None, load_training_options(None))
