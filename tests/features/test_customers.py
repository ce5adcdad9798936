"""Habits (most engaged recent channel, habitual weekday and hour) and purchases."""

from __future__ import annotations

import pandas as pd

from features.customers import build_habits, purchases, repeat_buyers, with_learned_repurchase
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
        "time": [pd.Timestamp("2024-01-05 10:00")],  # the last purchase
        "baskets": [5],  # one a day
    }


def test_a_new_key_is_named_as_resolution_would_name_it() -> None:
    keys = pd.DataFrame({"channel": ["app"], "customer_key": ["DEV-9"]})
    resolution = resolve_identities(keys, None, IdentityConfig(salt="s"))
    named = new_customer_ids("s", keys["channel"], keys["customer_key"])
    assert list(resolution.customer_ids) == list(named)


def purchases_of(rows: list[tuple[str | None, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "item_id", "event_time"])
    return frame.assign(
        event_time=pd.to_datetime(frame["event_time"], format="ISO8601"), event_type="purchase"
    )


def test_repurchase_is_learned_where_the_catalogue_is_silent_and_its_flag_wins() -> None:
    rows = []
    for c in range(6):  # six buyers each of milk, tv, jam and soap
        rows += [(f"c{c}", item, "2024-01-01 10:00") for item in ("milk", "tv", "jam", "soap")]
    rows += [("c0", "milk", "2024-01-08"), ("c1", "milk", "2024-01-09")]  # 2 of 6 again
    rows += [("c0", "tv", "2024-01-01 18:00")]  # the same day: not a repeat
    rows += [("c0", "jam", "2024-01-08"), ("c1", "jam", "2024-01-08")]  # 2 of 6 again
    rows += [("c0", "rare", "2024-01-01"), ("c0", "rare", "2024-01-05")]  # one buyer only
    rows += [(None, "soap", "2024-01-02")] * 5  # anonymous repeats prove nothing
    catalogue = pd.DataFrame(
        {"item_id": ["milk", "tv", "jam", "soap"], "repurchasable": [None, None, False, None]}
    )
    table = with_learned_repurchase(catalogue, purchases_of(rows)).set_index("item_id")
    assert table["repurchasable"].to_dict() == {
        "milk": True,  # 2 of 6 buyers on another day >= 10%
        "tv": False,  # nobody bought it on two days
        "jam": False,  # the catalogue says so: its flag wins over the data
        "soap": False,  # known buyers once each
        "rare": False,  # not in the catalogue, and one buyer is no evidence
    }
    counts = repeat_buyers(purchases_of(rows)).set_index("item_id")
    assert counts.loc["milk"].tolist() == [6, 2] and counts.loc["rare"].tolist() == [1, 1]


def test_without_a_catalogue_every_bought_item_gets_a_learned_flag() -> None:
    rows = [(f"c{c}", "milk", f"2024-01-0{d}") for c in range(5) for d in (1, 2)]
    table = with_learned_repurchase(None, purchases_of(rows))
    assert table.to_dict(orient="list") == {
        "item_id": ["milk"],
        "repurchasable": [True],
        "repurchase_days": [1.0],  # five customers, each one day apart
    }
