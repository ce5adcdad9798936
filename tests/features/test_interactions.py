"""Interaction builder and splits, against hand-computed values and a slow oracle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.interactions import (
    InteractionWeights,
    build_interactions,
    build_popularity,
    split_by_time,
    split_last_n,
)


def events(rows: list[tuple[str, str | None, str, str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows, columns=["event_time", "customer_id", "item_id", "event_type", "quantity"]
    )
    frame["event_time"] = pd.to_datetime(frame["event_time"])
    frame["customer_id"] = frame["customer_id"].astype("str")
    frame["store_id"] = "S1"
    frame["channel"] = "web"
    return frame


EVENTS = events(
    [
        ("2024-01-01", "a", "x", "view", 1),
        ("2024-01-01", "a", "x", "purchase", 2),
        ("2024-01-02", "a", "y", "purchase", 1),
        ("2024-01-03", "a", "y", "return", 1),
        ("2024-01-03", "b", "x", "cart", 1),
        ("2024-01-03", None, "z", "purchase", 5),
    ]
)


def test_weights_quantities_returns_and_anonymous_events() -> None:
    weights = InteractionWeights(half_life_days=None)
    built = build_interactions(EVENTS, weights=weights)
    assert list(built.customer_ids) == ["a", "b"] and list(built.item_ids) == ["x", "y"]
    dense = built.matrix.toarray()
    assert dense[0, 0] == pytest.approx(1 + 5 * 2)  # a view and two units bought
    assert dense[0, 1] == 0 and built.matrix.nnz == 2  # bought then returned: gone
    assert dense[1, 0] == pytest.approx(3)
    assert "z" not in built.item_ids  # only anonymous events: excluded


def test_recency_half_life_against_a_slow_oracle() -> None:
    weights = InteractionWeights(half_life_days=2.0)
    as_of = pd.Timestamp("2024-01-05")
    built = build_interactions(EVENTS, weights=weights, as_of=as_of)
    expected: dict[tuple[str, str], float] = {}
    for row in EVENTS.itertuples():
        if row.customer_id is None or pd.isna(row.customer_id):
            continue
        base = weights.by_type()[row.event_type]
        if row.event_type != "view":
            base *= row.quantity
        age = (as_of - row.event_time).total_seconds() / 86400
        expected[(row.customer_id, row.item_id)] = expected.get(
            (row.customer_id, row.item_id), 0
        ) + base * 0.5 ** (age / 2)
    for (c, i), value in expected.items():
        got = (
            built.matrix[built.customer_ids.get_loc(c), built.item_ids.get_loc(i)]
            if i in built.item_ids
            else 0
        )
        assert got == pytest.approx(max(value, 0.0), rel=1e-5)


def test_builder_is_pure_and_params_are_loggable() -> None:
    before = EVENTS.copy()
    build_interactions(EVENTS)
    pd.testing.assert_frame_equal(EVENTS, before)
    params = InteractionWeights().as_params()
    assert params["weight_return"] == -5.0 and params["weight_half_life_days"] == 90.0


def test_fixed_catalogue_columns() -> None:
    built = build_interactions(EVENTS, item_ids=pd.Index(["w", "x"]))
    assert list(built.item_ids) == ["w", "x"] and built.matrix.shape == (2, 2)


def test_time_split_and_last_n_split() -> None:
    before, after = split_by_time(EVENTS, pd.Timestamp("2024-01-02"))
    assert len(before) == 2 and len(after) == 4
    history = events(
        [
            ("2024-01-01", "a", "x", "purchase", 1),
            ("2024-01-02", "a", "y", "view", 1),
            ("2024-01-03", "a", "y", "purchase", 1),
            ("2024-01-04", "a", "z", "view", 1),
            ("2024-01-01", "b", "x", "purchase", 1),
        ]
    )
    train, test = split_last_n(history, n=1)
    assert list(test["item_id"]) == ["y", "z"]  # a's last purchase and what followed it
    assert set(train["customer_id"]) == {"a", "b"}  # b has one purchase: kept for training
    assert len(train) + len(test) == len(history)


def test_popularity_per_segment_counts_purchase_lines_anonymous_ones_too() -> None:
    popular = build_popularity(EVENTS, days=None)
    overall = popular[popular["segment_type"] == "global"].set_index("item_id")["purchases"]
    assert overall.to_dict() == {"x": 1, "y": 1, "z": 1}  # lines, not units (z was 5 units)
    assert set(popular["segment_type"]) == {"global", "store", "channel"}
    assert np.isclose(popular.loc[popular["segment_type"] == "store", "purchases"].sum(), 3)


def test_one_bulk_line_does_not_outrank_what_many_households_buy() -> None:
    bulk = events([("2024-01-01", "fleet", "fuel", "purchase", 89_638)])
    milk = events([("2024-01-01", f"h{i}", "milk", "purchase", 1) for i in range(3)])
    popular = build_popularity(pd.concat([bulk, milk]), days=None)
    assert popular[popular["segment_type"] == "global"].iloc[0]["item_id"] == "milk"
