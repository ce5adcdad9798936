"""Arms, attribution and KPIs on hand-made exposures and events."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.eventlog import EventLog, validate_events
from features.measurement import (
    CONTROL,
    TREATMENT,
    arms,
    attribute,
    difference,
    kpis,
    measure,
    period,
    utc_time,
)

T0 = pd.Timestamp("2026-11-01 10:00")
H = pd.Timedelta(hours=1)


def exposures(*rows: tuple) -> pd.DataFrame:
    """(customer, channel, arm, items, hours after T0[, route]) rows."""
    return pd.DataFrame(
        [
            {"shown_at": T0 + hours * H, "customer_id": customer, "channel": channel,
             "route": rest[0] if rest else "recommend", "arm": arm, "items": items}
            for customer, channel, arm, items, hours, *rest in rows
        ]
    )  # fmt: skip


def events(*rows: tuple) -> pd.DataFrame:
    """(customer, channel, event_type, item, hours after T0[, quantity, price]) rows."""
    return pd.DataFrame(
        [
            {"event_time": T0 + hours * H, "customer_id": customer, "channel": channel,
             "event_type": kind, "item_id": item, "quantity": rest[0] if rest else 1.0,
             "unit_price": rest[1] if len(rest) > 1 else float("nan")}
            for customer, channel, kind, item, hours, *rest in rows
        ]
    )  # fmt: skip


def test_arms_are_stable_and_take_their_share() -> None:
    ids = [f"c{i}" for i in range(20_000)]
    first = arms(ids, 0.3, "spring")
    assert first == arms(ids, 0.3, "spring")  # every worker, every restart
    assert first.count(CONTROL) / len(ids) == pytest.approx(0.3, abs=0.015)
    assert arms(ids, 0.3, "autumn") != first  # a new experiment draws anew
    assert set(arms(ids, 0.0, "spring")) == {TREATMENT}


def test_a_purchase_counts_once_for_its_latest_showing_within_the_window() -> None:
    shown = exposures(
        ("c1", "app", TREATMENT, ["a", "b"], 0),
        ("c1", "app", TREATMENT, ["b"], 48),
        ("c3", "web", CONTROL, ["a"], 0),
        ("c4", "web", TREATMENT, ["a"], 0),
    )
    acted = events(
        ("c1", "store", "purchase", "b", 24, 2.0, 3.0),  # shown in the app, bought in a store
        ("c1", "app", "purchase", "b", 72, 1.0),  # the second showing's; catalogue price
        ("c2", "store", "purchase", "a", 1),  # never shown to c2
        ("c3", "web", "view", "a", 8 * 24),  # after the 7-day window
        ("c4", "web", "view", "a", -1),  # before it was shown
        ("c4", "web", "view", "a", 1),
        ("c1", "app", "purchase", "z", 2),  # not shown
    )
    credited = attribute(shown, acted, prices=pd.Series({"b": 5.0}))
    assert credited[
        ["exposure", "event_type", "item_id", "channel", "revenue"]
    ].values.tolist() == [
        [0, "purchase", "b", "store", 6.0],
        [3, "view", "a", "web", 0.0],
        [1, "purchase", "b", "app", 5.0],
    ]
    table = kpis(shown, acted, prices=pd.Series({"b": 5.0})).set_index(["route", "channel"])
    app, web = table.loc[("recommend", "app")], table.loc[("recommend", "web")]
    assert (app["exposures"], app["customers"], app["conversion"], app["revenue"]) == (
        2,
        1,
        1.0,
        11.0,
    )
    assert app["cross_channel_share"] == 0.5  # one of its two purchases was in a store
    assert (web["view_through"], web["conversion"]) == (1.0, 0.0)  # the treated c4 viewed
    everything = table.loc[("recommend", "all")]
    assert everything["exposures"] == 4 and everything["control_customers"] == 1
    # c1 and c4 treated (1 of 2 bought), c3 control (did not): uplift 0.5.
    assert everything["uplift"] == pytest.approx(0.5)
    assert everything["uplift_low"] < 0.5 < everything["uplift_high"]
    # Regression: the uplift's terms are per customer, `conversion` per exposure (c1's two
    # lists both bought: 2 of 3), and only the control's term was shown (0.67 - 0 != 0.5).
    assert everything["conversion"] == pytest.approx(2 / 3)
    assert (everything["treated_conversion"], everything["control_conversion"]) == (0.5, 0.0)
    assert pd.isna(app["uplift"])  # no control customer shown anything in the app
    assert app["treated_conversion"] == 1.0 and app["control_customers"] == 0
    # A difference of two shares lies in [-1, 1]; so do its intervals, however few the arms.
    few = difference(1.0, 2, 0.0, 1)
    assert all(-1 <= v <= 1 for v in few.values()) and few["uplift_anytime_high"] == 1.0


def peeks(effect: float, rng: np.random.Generator, runs: int = 300) -> tuple[float, float, float]:
    """Experiments looked at after every 100 customers up to 4,000 (a fifth in control, base
    conversion 0.10): the share whose one-look interval ever excluded 0, whose any-time
    interval ever did, and whose any-time interval excludes 0 at the end."""
    n, looks = 4000, np.arange(100, 4001, 100)
    ever_fixed = ever_anytime = at_end = 0
    for _ in range(runs):
        control = rng.random(n) < 0.2
        bought = rng.random(n) < np.where(control, 0.10, 0.10 + effect)
        fixed = anytime = False
        for k in looks:
            c, b = control[:k], bought[:k]
            n0, n1 = int(c.sum()), int((~c).sum())
            figures = difference(float(b[~c].mean()), n1, float(b[c].mean()), n0)
            fixed |= not figures["uplift_low"] <= 0 <= figures["uplift_high"]
            anytime |= not figures["uplift_anytime_low"] <= 0 <= figures["uplift_anytime_high"]
        ever_fixed += fixed
        ever_anytime += anytime
        at_end += figures["uplift_anytime_low"] > 0
    return ever_fixed / runs, ever_anytime / runs, at_end / runs


def test_the_anytime_interval_holds_however_often_it_is_read() -> None:
    rng = np.random.default_rng(7)
    fixed, anytime, _ = peeks(0.0, rng)
    # No effect: read 40 times, the one-look interval "finds" one in about a quarter of the
    # experiments; the any-time one in at most 5% (plus three standard errors of 300 runs).
    assert fixed >= 0.15 and anytime <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 300)
    _, _, found = peeks(0.06, rng, runs=100)
    assert found >= 0.85  # a real 6-point effect is found by 4,000 customers (in theory 94%)


def test_a_period_with_nothing_shown_and_nothing_bought_is_an_empty_table(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    accepted, _ = validate_events(
        [{"event_time": "2026-11-23T10:00:00", "channel": "app", "event_type": "view",
          "item_id": "I000010", "customer_key": "A-1", "event_id": "v-1"}]
    )  # fmt: skip
    log.append(accepted)
    try:
        empty = measure(log, "salt", {}, pd.Timestamp("2026-01-01"), pd.Timestamp("2026-01-02"))
    finally:
        log.close()
    assert empty.empty


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", "2026-11-01 00:00"),
        ("2026-11-01T09:00+09:00", "2026-11-01 00:00"),
        ("2026-11-01 10:30Z", "2026-11-01 10:30"),
    ],
)
def test_report_times_are_iso_and_utc(text: str, expected: str) -> None:
    assert utc_time(text, "--since") == pd.Timestamp(expected)


@pytest.mark.parametrize("text", ["01.11.2026", "11/01/2026", "today", "20261101", "2026"])
def test_a_report_time_that_is_not_iso_is_refused(text: str) -> None:
    """Regression: 01.11.2026 was read as 11 January, 11/01/2026 as 1 November, and "today"
    was taken."""
    with pytest.raises(ValueError, match=r"^--since is not an ISO time"):
        utc_time(text, "--since")


def test_a_report_period_may_end_tomorrow_and_a_refusal_names_its_rule() -> None:
    """Regression: the planner page's 'until tomorrow' (its last second) was refused — the
    limit was 24 hours from now — and every refusal gave the same sentence of four rules."""
    today = pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
    tomorrow = (today + pd.Timedelta(days=1, seconds=86_399)).isoformat()
    assert period(today.isoformat(), tomorrow, 7)[1] == pd.Timestamp(tomorrow)
    after = (today + pd.Timedelta(days=2, seconds=1)).isoformat()
    for since, until, rule in [
        ("1999-12-31", "2000-01-02", "since must be in 2000 or later"),
        (today.isoformat(), after, "until must be at most the end of tomorrow (UTC)"),
        ("2026-11-02", "2026-11-01", "since must come before until"),
        ("2024-01-01", "2025-06-01", "at most a year apart"),
    ]:
        with pytest.raises(ValueError, match=re.escape(rule)):
            period(since, until, 7)
