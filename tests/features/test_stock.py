"""The stock picture: what each movement does, order independence, reservations and refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.eventlog import MOVEMENT_COLUMNS, check_movements
from features.schema import Bounds
from features.stock import StockLedger, stock_history, stock_kpis

T0 = pd.Timestamp("2026-11-01")


def movements(*rows: tuple) -> pd.DataFrame:
    """(type, node, item, quantity, hours after T0[, reservation_id, hold_seconds]) rows."""
    frame = pd.DataFrame(
        [
            {
                "movement_type": kind,
                "node_id": node,
                "item_id": item,
                "quantity": float(quantity),
                "movement_time": T0 + pd.Timedelta(hours=hours),
                "movement_id": f"m{i}",
                "reservation_id": rest[0] if rest else None,
                "hold_seconds": rest[1] if len(rest) > 1 else np.nan,
                "reference": None,
            }
            for i, (kind, node, item, quantity, hours, *rest) in enumerate(rows)
        ],
        columns=list(MOVEMENT_COLUMNS),
    )
    return frame


def sales(*rows: tuple) -> pd.DataFrame:
    """(event_type, store, item, quantity, hours after T0) rows as events."""
    return pd.DataFrame(
        [
            {
                "event_type": kind,
                "store_id": store,
                "item_id": item,
                "quantity": float(quantity),
                "event_time": T0 + pd.Timedelta(hours=hours),
            }
            for kind, store, item, quantity, hours in rows
        ],
        columns=["event_type", "store_id", "item_id", "quantity", "event_time"],
    )


def test_each_movement_moves_on_hand_as_documented() -> None:
    ledger = StockLedger()
    ledger.apply_movements(
        movements(
            ("receipt", "S1", "a", 10, 1),
            ("transfer_out", "S1", "a", 3, 2),
            ("transfer_in", "S2", "a", 3, 3),
            ("adjustment", "S1", "a", -1, 4),
            ("return_to_stock", "S1", "a", 2, 5),
        )
    )
    ledger.apply_sales(sales(("purchase", "S1", "a", 4, 6), ("return", "S2", "a", 1, 7)))
    assert ledger.picture(("S1", "a")) == {"on_hand": 4.0, "reserved": 0.0, "available": 4.0}
    assert ledger.picture(("S2", "a"))["on_hand"] == 4.0
    assert ledger.picture(("S3", "a")) is None  # never named: nothing known


def test_a_count_overrides_what_came_before_it_not_what_came_after() -> None:
    ledger = StockLedger.from_snapshot(
        pd.DataFrame({"date": ["2026-10-31"], "store_id": ["S1"], "item_id": ["a"], "on_hand": [8]})
    )  # on hand at the end of 31 October: T0
    ledger.apply_sales(sales(("purchase", "S1", "a", 2, -3)))  # before the snapshot: in it
    assert ledger.picture(("S1", "a"))["on_hand"] == 8.0
    ledger.apply_sales(sales(("purchase", "S1", "a", 1, 1), ("purchase", "S1", "a", 1, 5)))
    ledger.apply_movements(movements(("count", "S1", "a", 3, 4)))  # counted between the sales
    assert ledger.picture(("S1", "a"))["on_hand"] == 2.0  # 3 counted, 1 sold after
    ledger.apply_movements(movements(("count", "S1", "a", 9, 2)))  # an older count: overtaken
    assert ledger.picture(("S1", "a"))["on_hand"] == 2.0


def test_sales_alone_make_no_picture_but_count_once_one_exists() -> None:
    ledger = StockLedger()
    ledger.apply_sales(sales(("purchase", "S1", "a", 2, 3)))
    assert ledger.picture(("S1", "a")) is None
    ledger.apply_movements(movements(("receipt", "S1", "a", 5, 1)))  # dated before the sale
    assert ledger.picture(("S1", "a"))["on_hand"] == 3.0


@st.composite
def histories(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame]:
    kinds = ["receipt", "transfer_out", "transfer_in", "adjustment", "count", "return_to_stock"]
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(kinds),
                st.sampled_from(["S1", "S2"]),
                st.sampled_from("ab"),
                st.integers(1, 9),
                st.integers(0, 30),
            ),
            max_size=25,
        )
    )
    sold = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["purchase", "return"]),
                st.sampled_from(["S1", "S2"]),
                st.sampled_from("ab"),
                st.integers(1, 3),
                st.integers(0, 30),
            ),
            max_size=25,
        )
    )
    return movements(*rows), sales(*sold)


@settings(max_examples=100, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_the_picture_does_not_depend_on_the_order_it_is_told(history, random) -> None:
    moved, sold = history
    told = StockLedger()
    told.apply_movements(moved)
    told.apply_sales(sold)
    # Another worker: the same records, shuffled, in pieces, the two logs interleaved.
    replayed = StockLedger()
    pieces = [("m", moved.iloc[[i]]) for i in range(len(moved))]
    pieces += [("s", sold.iloc[[i]]) for i in range(len(sold))]
    random.shuffle(pieces)
    for kind, piece in pieces:
        replayed.apply_movements(piece) if kind == "m" else replayed.apply_sales(piece)
    expected = told.frame().sort_values(["node_id", "item_id"]).reset_index(drop=True)
    got = replayed.frame().sort_values(["node_id", "item_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=False)


def test_reservations_hold_units_until_released_fulfilled_or_expired() -> None:
    ledger = StockLedger(safety_stock=1)
    ledger.apply_movements(movements(("receipt", "S1", "a", 5, 0)))
    assert ledger.picture(("S1", "a"))["available"] == 4.0  # one kept back
    assert ledger.reservation_refusal("r1", "S1", "a", 5).status == 409
    assert "Only 4 units" in str(ledger.reservation_refusal("r1", "S1", "a", 5))
    assert ledger.reservation_refusal("r1", "S1", "a", 3) is None
    ledger.apply_movements(
        movements(("reserve", "S1", "a", 3, 1, "r1", 3600), ("reserve", "S1", "a", 1, 1, "r2"))
    )
    assert ledger.picture(("S1", "a")) == {"on_hand": 5.0, "reserved": 4.0, "available": 0.0}
    assert ledger.reservation_refusal("r3", "S1", "a", 1).status == 409
    assert ledger.reservation_refusal("r1", "S1", "a", 3) is None  # a retry
    assert ledger.reservation_refusal("r1", "S1", "a", 2).status == 409  # the id, reused
    # r1 expires after an hour; r2 holds for the default 48 hours.
    assert ledger.expire(T0 + pd.Timedelta(hours=2)) == {("S1", "a")}
    assert ledger.reservations["r1"].state == "expired"
    assert ledger.closing_refusal("r1", "fulfil").status == 409
    assert ledger.closing_refusal("r1", "release") is None
    # Regression: reserving again under the expired id answered 200 with nothing held.
    assert "already expired: nothing is held" in str(ledger.reservation_refusal("r1", "S1", "a", 3))
    assert ledger.closing_refusal("nope", "release").status == 404
    ledger.apply_movements(movements(("fulfil", "S1", "a", 1, 3, "r2")))
    assert ledger.picture(("S1", "a")) == {"on_hand": 4.0, "reserved": 0.0, "available": 3.0}
    assert ledger.closing_refusal("r2", "release").status == 409  # already fulfilled
    assert ledger.closing_refusal("r2", "fulfil") is None  # a retry
    assert ledger.reservation_refusal("r2", "S1", "a", 1).status == 409  # fulfilled: none held


def ahead(**delta: float) -> str:
    return (pd.Timestamp.now("UTC") + pd.Timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_posted_movements_are_checked_by_the_contract_and_their_type() -> None:
    good = {
        "movement_time": "2026-11-01T08:00:00",
        "movement_type": "receipt",
        "node_id": "S1",
        "item_id": "a",
        "quantity": 4,
        "movement_id": "m1",
    }
    records = [
        good,
        {**good, "movement_type": "count", "quantity": -1, "movement_id": "m2"},
        {**good, "movement_time": "2999-01-01T00:00:00", "movement_id": "m3"},
        {**good, "movement_type": "reserve", "movement_id": "m4"},
        {**good, "movement_id": None},
        {**good, "movement_type": "adjustment", "quantity": -2, "movement_id": "m5"},
        {**good, "movement_type": "transfer_out", "quantity": 0, "movement_id": "m6"},
        {**good, "movement_type": "teleport", "movement_id": "m7"},
        {**good, "movement_id": "m1"},  # the same key twice in one batch
        # Regression: movements were bounded by 10^12, not an event's 10^6 units.
        {**good, "quantity": 1e12, "movement_id": "m8"},
        {**good, "movement_type": "adjustment", "quantity": -2e6, "movement_id": "m9"},
        {**good, "movement_type": "count", "quantity": 1e6, "movement_id": "m10"},
        # Regression: a count dated a day ahead hid every sale and pick-up until then.
        {**good, "movement_type": "count", "movement_time": ahead(minutes=6), "movement_id": "m11"},
        {**good, "movement_type": "count", "movement_time": ahead(minutes=4), "movement_id": "m12"},
        {**good, "movement_type": "receipt", "movement_time": ahead(hours=2), "movement_id": "m13"},
    ]
    accepted, reasons = check_movements(records, Bounds())
    assert list(accepted["movement_id"]) == ["m1", "m5", "m10", "m12", "m13"]
    assert reasons[0] is None and reasons[5] is None
    for i, words in {
        1: "cannot be negative",
        2: "ahead of now",
        3: "/reservations",
        4: "movement_id",
        6: "positive",
        7: "movement_type",
        8: "movement_id",
        9: "quantity is over 1e+06",
        10: "quantity is below -1e+06",
        12: "cannot be dated more than 5 minutes ahead of now",
    }.items():
        assert words in str(reasons[i]), (i, reasons[i])


@pytest.mark.parametrize("hours", [0.5, 47])
def test_the_default_hold_is_48_hours(hours: float) -> None:
    ledger = StockLedger()
    ledger.apply_movements(
        movements(("receipt", "S1", "a", 1, 0), ("reserve", "S1", "a", 1, 0, "r1"))
    )
    assert not ledger.expire(T0 + pd.Timedelta(hours=hours))
    assert ledger.expire(T0 + pd.Timedelta(hours=48)) == {("S1", "a")}


@settings(max_examples=100, deadline=None)
@given(histories())
def test_the_stock_history_ends_where_the_ledger_is(history) -> None:
    moved, sold = history
    ledger = StockLedger()
    ledger.apply_movements(moved)
    ledger.apply_sales(sold)
    trail = stock_history(None, moved, sold)
    last = trail.groupby(["node_id", "item_id"])["on_hand"].last().to_dict()
    assert last == ledger.frame().set_index(["node_id", "item_id"])["on_hand"].to_dict()


def test_stockout_hours_and_count_accuracy() -> None:
    snapshot = pd.DataFrame(
        {"date": ["2026-10-31"], "store_id": ["S1"], "item_id": ["a"], "on_hand": [5.0]}
    )  # 5 on hand at T0
    moved = movements(
        ("receipt", "S1", "a", 3, 10),
        ("count", "S1", "a", 2, 12),  # the books say 3: one unit went missing
        ("receipt", "S2", "b", 4, 20),
    )
    sold = sales(("purchase", "S1", "a", 5, 2), ("purchase", "S9", "z", 1, 3))  # S9/z: no picture
    trail = stock_history(snapshot, moved, sold)
    assert trail.loc[trail["kind"] == "count", "book"].tolist() == [3.0]
    pairs, summary = stock_kpis(trail, until=T0 + pd.Timedelta(hours=24))
    row = pairs.set_index(["node_id", "item_id"]).loc[("S1", "a")]
    assert (row["on_hand"], row["stockout_hours"], row["hours"]) == (2.0, 8.0, 24.0)
    assert (row["counts"], row["count_abs_error"]) == (1, 1.0)
    assert set(pairs["node_id"]) == {"S1", "S2"}
    assert summary["counts"] == 1 and summary["count_mean_error"] == -1.0
    assert summary["stockout_hours"] == 8.0 and summary["stockout_share"] == 8 / 28
    # 5 sold; on hand 5 for 2 h, 0 for 8 h, 3 for 2 h, 2 for 12 h: 40 unit-hours in 24 h.
    assert (row["sold"], row["average_on_hand"]) == (5.0, pytest.approx(40 / 24))
    assert row["turnover"] == pytest.approx(3.0)
    # From 06:00: out of stock until the receipt at 10:00; the model expects 0.5 units an hour.
    rate = pd.Series([0.5], index=pd.MultiIndex.from_tuples([("S1", "a")]))
    late, totals = stock_kpis(
        trail, until=T0 + pd.Timedelta(hours=24), since=T0 + pd.Timedelta(hours=6),
        demand_per_hour=rate,
    )  # fmt: skip
    row = late.set_index(["node_id", "item_id"]).loc[("S1", "a")]
    assert (row["stockout_hours"], row["hours"], row["lost_units"], row["sold"]) == (
        4.0,
        18.0,
        2.0,
        0.0,
    )
    assert totals["lost_units"] == 2.0 and row["counts"] == 1
    assert row["fill_rate"] == 0.0  # nothing sold from 06:00, 2 units of demand lost
    s2 = late.set_index(["node_id", "item_id"]).loc[("S2", "b")]
    assert np.isnan(s2["fill_rate"])  # the model expects nothing there: no estimate
    assert s2["sold"] == 0 and not np.signbit(s2["sold"])  # printed "0", never "-0"
    assert totals["fill_rate"] == 0.0
    assert np.isnan(summary["fill_rate"])  # without the demand model, no lost units known
