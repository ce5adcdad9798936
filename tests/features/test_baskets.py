"""Basket order and TIFU-KNN's decayed vectors, on baskets small enough to work out by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from features.baskets import (
    Decay,
    basket_order,
    basket_starts,
    baskets_from_events,
    decayed_vectors,
)


def baskets(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "basket_id", "item_id", "time"])
    return frame.assign(time=pd.to_datetime(frame["time"]))


# Household h: four baskets, newest b4; "milk" in every one, "cake" only in the oldest.
H = baskets(
    [
        ("h", "b1", "milk", "2024-01-01"),
        ("h", "b1", "cake", "2024-01-01"),
        ("h", "b1", "cake", "2024-01-01"),  # the same item twice in a basket counts once
        ("h", "b2", "milk", "2024-01-08"),
        ("h", "b3", "milk", "2024-01-15"),
        ("h", "b3", "eggs", "2024-01-15"),
        ("h", "b4", "milk", "2024-01-22"),
    ]
)


def test_baskets_are_counted_back_from_the_newest() -> None:
    ordered = basket_order(H.sample(frac=1, random_state=0))  # the input order does not matter
    back = ordered.drop_duplicates("basket_id").set_index("basket_id")["back"]
    assert back.to_dict() == {"b1": 3, "b2": 2, "b3": 1, "b4": 0}
    assert (ordered["baskets"] == 4).all()
    assert len(ordered) == 6  # the repeated cake line is one line


def test_decayed_vectors_follow_the_tifu_formula() -> None:
    # Groups of 2 from the newest: {b4, b3} and {b2, b1}; within 0.5, across 0.25.
    # Group 0 = (b4 + 0.5 b3) / 2, group 1 = (b2 + 0.5 b1) / 2; user = (g0 + 0.25 g1) / 2.
    vectors = decayed_vectors(H, Decay(group_size=2, within=0.5, across=0.25))
    weights = dict(zip(vectors.item_ids, vectors.matrix.toarray()[0], strict=True))
    milk = ((1 + 0.5) / 2 + 0.25 * (1 + 0.5) / 2) / 2
    eggs = (0.5 / 2) / 2
    cake = (0.25 * 0.5 / 2) / 2
    assert weights == pytest.approx({"cake": cake, "eggs": eggs, "milk": milk})


def test_a_short_oldest_group_is_the_mean_of_what_it_holds() -> None:
    # Groups of 3: {b4, b3, b2} and {b1} alone: its mean is b1 itself.
    vectors = decayed_vectors(H, Decay(group_size=3, within=1.0, across=1.0))
    weights = dict(zip(vectors.item_ids, vectors.matrix.toarray()[0], strict=True))
    assert weights == pytest.approx({"cake": 1 / 2, "eggs": 1 / 3 / 2, "milk": (1 + 1) / 2})


def test_the_columns_can_be_fixed_and_bad_decays_are_refused() -> None:
    vectors = decayed_vectors(H, item_ids=pd.Index(["milk", "bread"]))
    assert list(vectors.item_ids) == ["milk", "bread"]
    assert vectors.matrix.shape == (1, 2) and vectors.matrix[0, 1] == 0
    with pytest.raises(ValueError, match="decays"):
        Decay(within=0.0)


def test_a_basket_is_a_customers_purchases_less_than_half_an_hour_apart() -> None:
    rows = [  # (customer, item, time, event type); the input in no particular order
        ("a", "tea", "2024-03-20 18:20", "purchase"),
        ("a", "milk", "2024-03-20 18:00", "purchase"),
        ("a", "jam", "2024-03-20 18:45", "purchase"),  # 25 minutes after tea: the same trip
        ("a", "salt", "2024-03-20 21:00", "purchase"),  # the same day, later: another basket
        ("a", "soap", "2024-03-20 23:50", "purchase"),
        ("a", "rice", "2024-03-21 00:10", "purchase"),  # across midnight: soap's basket
        ("b", "milk", "2024-03-20 18:10", "purchase"),  # another customer: their own basket
        ("b", "eggs", "2024-03-20 18:15", "view"),  # no purchase: no basket line
        (None, "milk", "2024-03-20 18:15", "purchase"),  # anonymous: no basket line
    ]
    events = pd.DataFrame(rows, columns=["customer_id", "item_id", "event_time", "event_type"])
    events = events.assign(event_time=pd.to_datetime(events["event_time"], utc=True))
    events.index = [7, 3, 9, 1, 4, 8, 2, 6, 5]  # the unified frame's index plays no part
    lines = baskets_from_events(events)
    start = {
        (customer, item): str(basket)[:16]
        for customer, item, basket in lines[["customer_id", "item_id", "basket_id"]].to_numpy()
    }
    assert start == {
        ("a", "tea"): "2024-03-20 18:00", ("a", "milk"): "2024-03-20 18:00",
        ("a", "jam"): "2024-03-20 18:00", ("a", "salt"): "2024-03-20 21:00",
        ("a", "soap"): "2024-03-20 23:50", ("a", "rice"): "2024-03-20 23:50",
        ("b", "milk"): "2024-03-20 18:10",
    }  # fmt: skip


def test_a_purchase_of_unknown_time_is_a_basket_of_its_own() -> None:
    times = pd.Series(pd.to_datetime(["2024-01-01 10:00", None, "2024-01-01 10:10", None]))
    starts = basket_starts(pd.Series(["a", "a", "a", "b"]), times)
    assert starts.isna().tolist() == [False, True, False, True]
    assert (starts[[0, 2]] == pd.Timestamp("2024-01-01 10:00")).all()  # b's start is not a's
    assert basket_starts(pd.Series([], dtype=str), pd.Series([], dtype="datetime64[ns]")).empty
