"""Allocation: optimality against brute force, constraints, monotonicity, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from models.placement import (
    Economics,
    PlacementError,
    allocate,
    expected_outcomes,
    from_quantiles,
    rebalance,
)


def stores(means: list[float], dispersion: float = 5.0, **columns: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "store_id": [f"S{i}" for i in range(len(means))],
            "mean": means,
            "dispersion": dispersion,
            **columns,
        }
    )


def value(frame: pd.DataFrame, stock: np.ndarray, economics: Economics) -> float:
    outcome = expected_outcomes(frame["mean"].to_numpy(), frame["dispersion"].to_numpy(), stock)
    return float(
        (
            economics.unit_margin * outcome["expected_sales"]
            - economics.unit_holding * outcome["expected_leftover"]
        ).sum()
    )


@pytest.mark.parametrize(
    "economics", [Economics(1.0, 0.0), Economics(3.0, 1.0), Economics(1.0, 2.0)]
)
@pytest.mark.parametrize("available", [0, 3, 9, 20])
def test_greedy_equals_brute_force_on_three_stores(economics: Economics, available: int) -> None:
    frame = stores([6.0, 2.0, 4.0], dispersion=3.0, on_hand=[1, 0, 2])
    result = allocate(frame, available, economics=economics)
    best = max(
        value(frame, np.array([1, 0, 2]) + np.array(x), economics)
        for x in itertools.product(range(available + 1), repeat=3)
        if sum(x) <= available
    )
    assert value(frame, result["final_stock"].to_numpy(), economics) == pytest.approx(
        best, abs=1e-9
    )


def test_two_stores_by_hand() -> None:
    # Poisson demand (huge dispersion) with means 10 and 2, 4 units: the first unit at B sells with
    # P(D_B > 0) = 1 - e^-2 = 0.86, below the 4th unit at A: P(D_A > 3) = 0.99. So all go to A.
    frame = stores([10.0, 2.0], dispersion=1e7)
    assert allocate(frame, 4)["send"].tolist() == [4, 0]
    # With 9 units: A's 8th unit sells with P(D_A > 7) = 0.78 < 0.86, so B gets one first.
    assert allocate(frame, 9)["send"].tolist() == [8, 1]


def test_constraints_are_always_respected() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 6))
        frame = stores(
            list(rng.uniform(0, 20, n)),
            dispersion=float(rng.uniform(0.5, 20)),
            on_hand=list(rng.integers(0, 5, n)),
            min_units=list(rng.integers(0, 4, n)),
            max_units=list(rng.integers(8, 30, n)),
        )
        pack = int(rng.integers(1, 4))
        available = int(rng.integers(0, 60))
        try:
            result = allocate(
                frame, available, pack_size=pack, allocate_all=bool(rng.integers(0, 2))
            )
        except PlacementError as error:
            assert "presentation minimums" in str(error)
            continue
        assert result["send"].sum() <= available
        assert (result["send"] % pack == 0).all()
        assert (result["final_stock"] <= result["max_units"] + pack - 1).all() or (
            result["send"] == 0
        ).all()
        assert (result["final_stock"] >= np.minimum(result["min_units"], result["max_units"])).all()
        assert (result["final_stock"] <= np.maximum(result["max_units"], result["on_hand"])).all()


def test_more_stock_never_lowers_expected_sales() -> None:
    frame = stores([5.0, 1.0, 9.0, 3.0], dispersion=2.0)
    sales = [allocate(frame, a, allocate_all=True)["expected_sales"].sum() for a in range(0, 40, 3)]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(sales))


def test_without_allocate_all_unprofitable_units_stay_at_the_dc() -> None:
    frame = stores([1.0, 1.0], dispersion=5.0)
    result = allocate(frame, 50, economics=Economics(1.0, 1.0))
    assert 0 < result["send"].sum() < 50
    assert allocate(frame, 50, economics=Economics(1.0, 1.0), allocate_all=True)["send"].sum() == 50


def test_service_level_stops_at_the_target() -> None:
    frame = stores([10.0], dispersion=50.0)
    result = allocate(frame, 100, economics=Economics(service_level=0.9))
    stock = int(result["final_stock"].iloc[0])
    p = 50.0 / (50.0 + 10.0)
    # The first stock level whose P(D <= S) reaches 90%.
    assert stats.nbinom.cdf(stock, 50.0, p) >= 0.9 > stats.nbinom.cdf(stock - 1, 50.0, p)


def test_quantiles_become_a_distribution_and_bad_ones_are_refused() -> None:
    mean, dispersion = from_quantiles(np.array([2.0]), np.array([5.0]), np.array([9.0]))
    assert mean[0] == 5.0 and dispersion[0] > 0
    with pytest.raises(PlacementError, match="Quantiles cross"):
        from_quantiles(np.array([6.0]), np.array([5.0]), np.array([9.0]))
    with pytest.raises(PlacementError, match="must not be negative"):
        from_quantiles(np.array([-1.0]), np.array([5.0]), np.array([9.0]))


def test_bad_input_is_one_clear_sentence() -> None:
    with pytest.raises(PlacementError, match="Store 'S1' has a negative or missing on_hand"):
        allocate(stores([1.0, 2.0], on_hand=[0, -3]), 5)
    with pytest.raises(PlacementError, match="needs column"):
        allocate(pd.DataFrame({"store_id": ["A"]}), 5)
    with pytest.raises(PlacementError, match="presentation minimums need 6 units"):
        allocate(stores([1.0, 2.0], min_units=[3, 3]), 5)
    with pytest.raises(PlacementError, match="pack_size"):
        allocate(stores([1.0]), 5, pack_size=0)


def test_rebalancing_moves_surplus_to_shortfall() -> None:
    frame = stores([1.0, 12.0], dispersion=10.0, on_hand=[12, 0])
    allocation = allocate(frame, 0)
    moves = rebalance(allocation, transfer_cost=0.05)
    assert (
        len(moves) == 1
        and moves.iloc[0]["from_store"] == "S0"
        and moves.iloc[0]["to_store"] == "S1"
    )
    assert moves.iloc[0]["units"] >= 5
    assert rebalance(allocation, transfer_cost=10.0).empty  # too dear to move anything


def test_allocating_a_whole_chain_at_once_matches_item_by_item() -> None:
    from models.placement import allocate_many

    rng = np.random.default_rng(7)
    mean = rng.gamma(1.5, 2.0, (30, 8))
    on_hand = rng.integers(0, 3, (30, 8))
    available = rng.integers(0, 60, 30)
    for allocate_all in (True, False):
        batched = allocate_many(
            mean, 2.0, available, on_hand=on_hand, allocate_all=allocate_all, batch=7
        )
        for i in range(30):
            frame = stores(list(mean[i]), dispersion=2.0, on_hand=list(on_hand[i]))
            single = allocate(frame, int(available[i]), allocate_all=allocate_all)[
                "send"
            ].to_numpy()
            assert (batched[i] == single).all()
