"""Allocation: optimality against brute force, constraints, monotonicity, bad input."""

from __future__ import annotations

import itertools
import re
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from models.errors import UnknownIdError
from models.placement import (
    MIN_SELL_PROBABILITY,
    Economics,
    PlacementError,
    _greedy_packs,
    _threshold_allocation,
    allocate,
    coverage_distribution,
    expected_outcomes,
    from_quantiles,
    rebalance,
    units_to_place,
)

HUGE = 10**9  # what POST /placement accepts as units_available
LARGE = 10**7
SERVICE = Economics(unit_margin=1, unit_holding=0, service_level=None)  # no cost left over


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
            min_units=list(rng.integers(0, 6, n)),
            max_units=list(rng.integers(6, 30, n)),
        )
        pack = int(rng.integers(1, 5))
        available = int(rng.integers(0, 60))
        try:
            result = allocate(
                frame, available, pack_size=pack, allocate_all=bool(rng.integers(0, 2))
            )
        except PlacementError as error:
            named = re.match(r"Store '(S\d+)' cannot reach its minimum", str(error))
            if named:  # that store's minimum really is out of reach in whole packs
                row = frame.set_index("store_id").loc[named[1]]
                packs = np.ceil(max(row["min_units"] - row["on_hand"], 0) / pack)
                assert row["on_hand"] + packs * pack > row["max_units"]
            else:
                assert "presentation minimums" in str(error)
            continue
        assert result["send"].sum() <= available
        assert (result["send"] % pack == 0).all()
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
    # Regression: the minimum was rounded up to a whole pack past the store's capacity (7 > 5).
    with pytest.raises(
        PlacementError,
        match=r"'S0' cannot reach its minimum of 5 units in whole "
        r"packs of 4 without going over its capacity of 5 \(3 on hand\)",
    ):
        allocate(stores([1.0], on_hand=[3], min_units=[5], max_units=[5]), 10, pack_size=4)


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
    packs = rebalance(allocation, transfer_cost=0.05, pack_size=4)  # whole packs only
    assert len(packs) == 1 and packs.iloc[0]["units"] % 4 == 0 and packs.iloc[0]["units"] >= 4
    assert rebalance(allocation, transfer_cost=0.05, max_moves=1).iloc[0]["units"] == 1
    assert rebalance(allocation, transfer_cost=0.05, pack_size=10**6).empty  # none so big


def test_transfers_list_the_pair_of_stores_that_gains_most_first() -> None:
    """Regression: moves came in the order their first pack was made (A's first unit is worth
    more than B's), though B, a store of spread-out demand, gains more in all."""
    frame = stores([0.5, 2.0, 8.0], on_hand=[40, 0, 0]).assign(dispersion=[50, 50, 0.7])
    moves = rebalance(allocate(frame, 0), transfer_cost=0.05)
    assert list(moves["to_store"]) == ["S2", "S1"]
    assert moves["expected_gain"].is_monotonic_decreasing


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


def measured(call: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak MB allocated during the call; tracemalloc sees NumPy's arrays)."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    return result, seconds, peak


@pytest.mark.parametrize("pack_size", [1, 12])
@pytest.mark.parametrize("dispersion", [[1.0, 1.0, 1.0], [5.0, 5.0, 5.0], [1.0, 2.0, 5.0]])
def test_regression_a_billion_units_killed_the_worker(
    pack_size: int, dispersion: list[float]
) -> None:
    """10^9 units once grew the worker to 19.5 GB until it was killed: every unit was sent,
    since with no holding cost each has a positive value. Now a unit that almost surely never
    sells is worth nothing, and the answer depends on the demand, not on the units."""
    frame = stores([15.9, 3.0, 200.0]).assign(dispersion=dispersion)
    plan = lambda units: allocate(frame, units, economics=SERVICE, pack_size=pack_size)  # noqa: E731
    result, seconds, peak = measured(lambda: plan(HUGE))
    assert seconds < 1.0 and peak < 50.0, f"{seconds:.2f} s, {peak:.0f} MB"
    send = result["send"].to_numpy()
    assert 0 < send.sum() < 10_000 and (send % pack_size == 0).all()
    assert (plan(LARGE)["send"].to_numpy() == send).all()  # no more sent for more available
    # Every pack worth sending went: each store stops where P(D > S) crosses the floor.
    r = np.asarray(dispersion)
    p = r / (r + frame["mean"].to_numpy())
    final = result["final_stock"].to_numpy()
    assert (stats.nbinom.sf(final, r, p) < 1.01 * MIN_SELL_PROBABILITY).all()
    assert (stats.nbinom.sf(final - pack_size, r, p) > 0.99 * MIN_SELL_PROBABILITY).all()
    assert result["expected_fill_rate"].min() > 1 - 1e-8


def test_a_billion_units_in_packs_of_a_million_stay_small() -> None:
    frame = stores([15.9, 3.0, 200.0], dispersion=2.0)
    result, seconds, peak = measured(
        lambda: allocate(frame, HUGE, economics=SERVICE, pack_size=10**6)
    )
    assert seconds < 1.0 and peak < 50.0, f"{seconds:.2f} s, {peak:.0f} MB"
    assert result["send"].tolist() == [10**6] * 3  # one pack each covers the whole demand


def test_huge_stock_on_hand_or_as_minimum_costs_no_more_than_small() -> None:
    frame = stores([15.9, 3.0, 200.0], dispersion=2.0, on_hand=[HUGE, 0, 0], min_units=[0, HUGE, 0])
    (result, moves), seconds, peak = measured(
        lambda: (
            allocation := allocate(frame, 2 * HUGE, economics=SERVICE, pack_size=12),
            rebalance(allocation, transfer_cost=0.01),
        )
    )
    assert seconds < 1.0 and peak < 50.0, f"{seconds:.2f} s, {peak:.0f} MB"
    assert result["send"].iloc[0] == 0 and result["send"].iloc[1] == HUGE + 8  # in whole packs
    assert result["expected_sales"].to_numpy() == pytest.approx([15.9, 3.0, 200.0], rel=1e-6)
    assert result["expected_leftover"].iloc[0] == pytest.approx(HUGE - 15.9)
    assert moves.empty  # nobody short: nothing worth a transfer
    outcome = expected_outcomes(np.array([5.0, 5.0]), np.array([2.0, 2.0]), np.array([HUGE, 3]))
    small = expected_outcomes(np.array([5.0]), np.array([2.0]), np.array([3]))
    assert outcome["expected_sales"].iloc[0] == pytest.approx(5.0)
    assert outcome["expected_sales"].iloc[1] == small["expected_sales"].iloc[0]


@pytest.mark.parametrize("economics", [Economics(1.0, 0.0), Economics(3.0, 1.0)])
def test_large_packs_are_still_allocated_optimally(economics: Economics) -> None:
    # Packs of 70 units are valued from running totals rather than unit by unit.
    frame = stores([60.0, 150.0, 20.0], dispersion=3.0, on_hand=[5, 0, 30])
    pack, packs = 70, 8
    result = allocate(frame, pack * packs, economics=economics, pack_size=pack)
    on_hand = frame["on_hand"].to_numpy()
    n = len(frame)
    # The value of k packs at each store, then the best split by brute force.
    counts = np.repeat(np.arange(packs + 1), n)
    outcome = expected_outcomes(
        np.tile(frame["mean"].to_numpy(), packs + 1),
        np.tile(frame["dispersion"].to_numpy(), packs + 1),
        np.tile(on_hand, packs + 1) + pack * counts,
    )
    worth = (
        (
            economics.unit_margin * outcome["expected_sales"]
            - economics.unit_holding * outcome["expected_leftover"]
        )
        .to_numpy()
        .reshape(packs + 1, n)
    )
    best = max(
        sum(worth[k, i] for i, k in enumerate(split))
        for split in itertools.product(range(packs + 1), repeat=n)
        if sum(split) <= packs
    )
    taken = result["send"].to_numpy() // pack
    assert sum(worth[k, i] for i, k in enumerate(taken)) == pytest.approx(best, abs=1e-9)


def test_allocate_all_still_places_the_whole_supply() -> None:
    # Backtests place all of it, however little the last units may sell.
    frame = stores([0.5, 0.2], dispersion=1.0)
    assert allocate(frame, 400, economics=SERVICE, allocate_all=True)["send"].sum() == 400
    assert allocate(frame, 400, economics=SERVICE)["send"].sum() < 100


def test_the_coverage_demand_keeps_each_forecasts_own_interval() -> None:
    # Two stores, same mean; the second's calibrated interval is more than twice as wide.
    forecast = pd.DataFrame(
        {
            "store_id": ["A", "A", "B", "B"],
            "item_id": "X",
            "mean": 10.0,
            "p10": [6.0, 6.0, 0.0, 0.0],
            "p50": [10.0, 10.0, 10.0, 10.0],
            "p90": [15.0, 15.0, 22.0, 22.0],
        }
    )
    total = coverage_distribution(forecast).set_index("store_id")
    assert (total["mean"] == 20.0).all()
    variance = total["mean"] + total["mean"] ** 2 / total["dispersion"]
    # Each period's variance ((P90 - P10) / 2.563)^2, summed over the two periods.
    expected = 2 * (np.array([9.0, 22.0]) / (2 * stats.norm.ppf(0.9))) ** 2
    np.testing.assert_allclose(variance.to_numpy(), expected)
    # A forecast narrower than Poisson is read as Poisson (variance = mean).
    narrow = forecast.assign(p10=forecast["p50"] - 0.1, p90=forecast["p50"] + 0.1)
    np.testing.assert_allclose(coverage_distribution(narrow)["dispersion"], 1e6)


def test_a_slow_sellers_risk_is_read_from_its_whole_band() -> None:
    """Regression: a store selling 0.14 units a week (P10 = P50 = 0, P90 0.9) was read from
    its P50-P90 spread as a normal's, a variance 3.5 times its mean: with 2 units on hand a
    third of its demand counted as lost, its fill rate 67%."""
    slow = pd.DataFrame(
        {"store_id": "S", "item_id": "X", "mean": 0.14, "p10": 0.0, "p50": 0.0, "p90": 0.9},
        index=[0, 1],
    )
    total = coverage_distribution(slow)
    assert total["dispersion"].iloc[0] == 1e6  # Poisson: the band is no wider than its
    lost = expected_outcomes(
        total["mean"].to_numpy(), total["dispersion"].to_numpy(), np.array([2])
    )
    assert lost["expected_lost"][0] < 0.01


def test_by_default_a_unit_that_would_lose_money_stays_at_the_dc() -> None:
    """A unit left over costs a quarter of a sale's margin by default, so a store takes units
    while P(D > S) > 0.2 — up to about its P80 — and plenty stays at the DC."""
    frame = stores([15.9, 3.0, 200.0], dispersion=2.0)
    result = allocate(frame, 10_000)
    final = result["final_stock"].to_numpy()
    r, p = 2.0, 2.0 / (2.0 + frame["mean"].to_numpy())
    assert (stats.nbinom.sf(final - 1, r, p) > 0.2).all()  # the last unit sent was worth it
    assert (stats.nbinom.sf(final, r, p) <= 0.2).all()  # the next would lose money
    assert result["send"].sum() < 1_000
    assert (result["expected_fill_rate"] <= 1.0).all()


def test_regression_a_large_near_poisson_demand_overflowed_the_survival_table() -> None:
    """A coverage demand of 2,000 units read as Poisson (from a narrow forecast interval) made
    the pmf recursion overflow to NaN: placement then sent nothing sensible."""
    frame = stores([2000.0, 5.0], dispersion=1e6)
    result = allocate(frame, 2100, economics=SERVICE, allocate_all=True)
    assert result[["expected_sales", "expected_fill_rate"]].notna().all().all()
    big, small = result["send"].tolist()
    assert big + small == 2100 and big > 2050 and 5 <= small <= 15  # equal chances of selling
    outcome = expected_outcomes(np.array([2000.0]), np.array([1e6]), np.array([2000]))
    exact = stats.nbinom(1e6, 1e6 / (1e6 + 2000.0)).sf(np.arange(2000)).sum()  # E[min(D, S)]
    assert outcome["expected_sales"].iloc[0] == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("economics", [Economics(), SERVICE], ids=["default", "no holding cost"])
def test_a_billion_units_across_a_thousand_stores_in_under_a_second(economics: Economics) -> None:
    rng = np.random.default_rng(8)
    frame = pd.DataFrame(
        {
            "store_id": [f"S{i:04d}" for i in range(1000)],
            "mean": rng.lognormal(1.5, 1.2, 1000),
            "dispersion": rng.uniform(0.5, 20.0, 1000),
        }
    )
    result, seconds, peak = measured(lambda: allocate(frame, HUGE, economics=economics))
    send = result["send"].to_numpy()
    assert seconds < 1.0 and peak < 200.0, f"{seconds:.2f} s, {peak:.0f} MB"
    assert 0 < send.sum() < 10**6 and (result["expected_fill_rate"] <= 1.0).all()
    assert (allocate(frame, 10**7, economics=economics)["send"].to_numpy() == send).all()


def worth(
    taken: np.ndarray, start: np.ndarray, mean: np.ndarray, dispersion: np.ndarray, e: Economics
) -> float:
    """The expected value of the units sent: each unit's margin x P(D > s) - holding x P(D <= s)."""
    p = dispersion / (dispersion + mean)
    return sum(
        float(np.sum((e.unit_margin + e.unit_holding) * stats.nbinom.sf(b + np.arange(t), r, q)))
        - t * e.unit_holding
        for b, t, r, q in zip(start, taken, dispersion, p, strict=True)
    )


def test_the_threshold_allocation_is_the_unit_by_unit_greedy() -> None:
    """Property: on random small chains, bisection on the threshold sends exactly what placing
    one unit at a time where it adds the most would."""
    rng = np.random.default_rng(12)
    for _ in range(300):
        n = int(rng.integers(1, 7))
        mean = rng.lognormal(1.0, 1.0, n)
        dispersion = rng.uniform(0.3, 30.0, n)
        start = rng.integers(0, 6, n)
        identical = rng.random() < 0.3  # identical stores: units tie between stores
        if identical:
            mean, dispersion, start = (
                mean[:1].repeat(n),
                dispersion[:1].repeat(n),
                start[:1].repeat(n),
            )
        room = np.where(rng.random(n) < 0.3, rng.integers(0, 15, n), 10**6)
        units = int(rng.integers(0, 80))
        economics = Economics(unit_margin=float(rng.uniform(0.5, 3)), unit_holding=float(
            rng.choice([0.0, rng.uniform(0.05, 2.0)])))  # fmt: skip
        greedy = _greedy_packs(
            mean[None, :], dispersion[None, :], start[None, :], np.minimum(room, units)[None, :],
            np.array([units]), 1, economics, False,
        )[0]  # fmt: skip
        threshold = _threshold_allocation(mean, dispersion, start, room, units, economics)
        if not identical:
            assert threshold.tolist() == greedy.tolist(), (mean, dispersion, start, room, units)
        # Which of tied stores gets a unit is arbitrary in the greedy: the same value either way.
        assert threshold.sum() == greedy.sum()
        args = (start, mean, dispersion, economics)
        assert worth(threshold, *args) == pytest.approx(worth(greedy, *args), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    ("dcs", "said"), [([], "names no DC."), (["DC-E", "DC-W"], "names 2 DCs (DC-E, DC-W).")]
)
def test_units_left_out_are_the_dcs_available_stock_when_the_dc_is_known(dcs, said) -> None:
    available = pd.Series({"DC-W": 5.7, "S001": 9.0})
    with pytest.raises(PlacementError, match=f"^Give the units to place, .* {re.escape(said)}$"):
        units_to_place(None, None, dcs, available)
    assert units_to_place(12, None, dcs, available) == (None, 12)  # given: as given
    assert units_to_place(None, None, ["DC-W"], available) == ("DC-W", 5)  # the only DC
    if dcs:
        assert units_to_place(None, "DC-W", dcs, available) == ("DC-W", 5)
        assert units_to_place(None, "DC-E", dcs, available) == ("DC-E", 0)  # none listed
        assert units_to_place(None, "DC-W", dcs, -available) == ("DC-W", 0)  # books below 0
    with pytest.raises(UnknownIdError, match="'S001' is not a DC in the stores table"):
        units_to_place(None, "S001", dcs, available)
