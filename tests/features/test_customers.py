"""Habits (most engaged recent channel, habitual weekday and hour) and purchases."""

from __future__ import annotations

import pandas as pd

from features.customers import build_habits, purchases
from features.identity import IdentityConfig, new_customer_ids, resolve_identities


def events(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "channel", "event_type", "event_time"])
    return frame.assign(event_time=pd.to_datetime(frame["event_time"]), item_id="i")


def test_habits_follow_recent_engagement_and_the_usual_hour() -> None:
    rows = [("c", "store", "purchase", f"2024-01-0{d} 10:00") for d in range(1, 6)]  # old
    rows += [("c", "app", "view", f"2024-06-1{d} 20:00") for d in range(0, 3)]  # recent
    rows += [("c", "app", "view", "2024-06-14 20:00"), (None, "web", "view", "2024-06-14 09:00")]
    habits = build_habits(events(rows), days=90).set_index("customer_id")
    assert list(habits.index) == ["c"]  # anonymous events have no habits
    assert habits.loc["c", "channel"] == "app"  # the store visits are months before the last
    assert habits.loc["c", "hour"] == 10  # five at 10:00 against four at 20:00, over all events
    assert habits.loc["c", "weekday"] == pd.Timestamp("2024-06-10").day_of_week  # ties: earliest
    assert purchases(events(rows)).to_dict(orient="list") == {
        "customer_id": ["c"],
        "item_id": ["i"],
    }


def test_a_new_key_is_named_as_resolution_would_name_it() -> None:
    keys = pd.DataFrame({"channel": ["app"], "customer_key": ["DEV-9"]})
    resolution = resolve_identities(keys, None, IdentityConfig(salt="s"))
    named = new_customer_ids("s", keys["channel"], keys["customer_key"])
    assert list(resolution.customer_ids) == list(named)
