"""The placement backtest's bound (the oracle that knows the realised demand), and its
mid-period transfers."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.pipelines.placement import (
    TRUE_DISTRIBUTION,
    WITH_TRANSFERS,
    SimulationResult,
    oracle,
    simulate,
    with_transfers,
)
from experiments.synthetic.generator import GeneratorConfig, demand_distribution, generate
from models.placement import Economics


@pytest.mark.parametrize("total", [0, 7, 23, 30, 31, 45])
def test_the_oracle_loses_only_what_the_total_cannot_cover(total: int) -> None:
    demand = np.array([10, 0, 3, 17])
    stock = oracle(total, demand)
    assert stock.sum() == total and (stock >= 0).all()
    assert np.minimum(demand, stock).sum() == min(total, demand.sum())  # lost = max(0, D - S)


@pytest.mark.parametrize("total", range(8))
def test_the_oracle_of_fractional_demand_is_the_best_whole_units_can_do(total: int) -> None:
    """Regression: kg demand was rounded first, so the bound lost units (12 at supply 1.1)
    that a better placement of the same whole units would have sold."""
    demand = np.array([0.4, 2.7, 0.0, 1.45])
    stock = oracle(total, demand)
    assert stock.sum() == total and (stock >= 0).all()
    best = max(
        np.minimum(demand, np.array(units)).sum()
        for units in itertools.product(range(total + 1), repeat=len(demand))
        if sum(units) == total
    )
    assert np.minimum(demand, stock).sum() == pytest.approx(best)


@pytest.mark.parametrize("supply", [(0.0,), (-1.0,), (float("inf"),), (float("nan"),), (11.0,)])
def test_a_supply_ratio_out_of_bounds_is_refused_before_any_work(supply: tuple) -> None:
    """Regression: inf was an OverflowError, 1e12 a 29 TiB allocation, nan a bare sentence."""
    with pytest.raises(ValueError, match=r"^Supply ratios must be above 0 and at most 10, not"):
        simulate(Path("/nonexistent"), horizon=2, supply=supply)


def test_gap_closed_is_the_share_of_the_way_from_the_best_split_to_the_oracle() -> None:
    def block(lost: float) -> dict[str, float]:
        return {"lost_units": lost, "leftover_units": 0.0, "demand_units": 100.0, "fill_rate": 0}

    result = SimulationResult(
        by_supply={
            0.9: {"policy": block(16), "proportional": block(30), "equal": block(20),
                  "oracle": block(10)},
            1.1: {"policy": block(0), "proportional": block(5), "equal": block(5),
                  "oracle": block(0)},
            1.3: {"policy": block(2), "proportional": block(0), "equal": block(0),
                  "oracle": block(0)},
        },
        windows=1, items=1, seconds=0.0,
    )  # fmt: skip
    closed = result.gap_closed()
    assert closed[0.9] == pytest.approx(0.4) and closed[1.1] == 1.0  # (20 - 16) / (20 - 10)
    assert np.isnan(closed[1.3])  # no gap to close: undefined, not "100% closed"


def test_generated_data_gets_the_bound_of_its_true_demand_distribution(tmp_path: Path) -> None:
    config = GeneratorConfig(customers=2000, items=20, stores=3, days=150, seed=3, bad_fraction=0)
    generate(config, tmp_path)
    # The generator's re-simulated days agree with the demand it recorded for them.
    first, days = np.datetime64("2024-05-01"), 14
    exact = demand_distribution(config, first, days)
    truth = pd.read_csv(tmp_path / "_truth" / "demand.csv", parse_dates=["date"])
    window = truth[
        (truth["date"] >= pd.Timestamp(first))
        & (truth["date"] < pd.Timestamp(first) + pd.Timedelta(days=days))
    ]
    assert abs(window["demand"].sum() - exact["mean"].sum()) < 4 * np.sqrt(exact["variance"].sum())

    # Two origins: the second one crashed (the true distribution of an item took the name of
    # the realised demand panel).
    result = simulate(tmp_path, horizon=2, freq="W", supply=(0.9, 1.1), windows=2)
    for blocks in result.by_supply.values():
        # No allocation loses less than the oracle; the true distribution's is one of them.
        assert blocks["oracle"]["lost_units"] <= blocks[TRUE_DISTRIBUTION]["lost_units"]
    assert set(result.gap_closed(TRUE_DISTRIBUTION)) == {0.9, 1.1}
    # The policy is played again with transfers after the first of the two weeks.
    assert set(result.transfers()) == {0.9, 1.1}
    for ratio, blocks in result.by_supply.items():
        moved = result.transfers()[ratio]
        assert blocks[WITH_TRANSFERS]["lost_units"] >= blocks["oracle"]["lost_units"]
        assert blocks[WITH_TRANSFERS]["demand_units"] == blocks["policy"]["demand_units"]
        # The same stock, moved: every unit sold instead of lost is one fewer left over.
        left = blocks["policy"]["leftover_units"] - blocks[WITH_TRANSFERS]["leftover_units"]
        assert left == pytest.approx(moved["fewer_lost_units"]) and moved["units_moved"] >= 0


def test_transfers_move_what_is_left_where_the_rest_of_the_period_needs_it() -> None:
    """Store A sold out in the first week, B sold nothing; both expect 3 more: units move from
    B to A, whole, none created or lost — unless moving costs more than a sale earns."""
    units, early = np.array([5, 5]), np.array([5.0, 0.0])
    rest = pd.DataFrame({"store_id": ["A", "B"], "mean": [3.0, 3.0], "dispersion": [1e6, 1e6]})
    left, moved = with_transfers(units, early, rest, 0.1, Economics())
    assert moved > 0 and left[0] == moved and left.sum() == 5 and (left >= 0).all()
    assert 1 <= left[0] <= 3  # A gets what it may sell, not everything
    left, moved = with_transfers(units, early, rest, 10.0, Economics())
    assert moved == 0 and list(left) == [0, 5]


@pytest.mark.parametrize("cost", [-0.1, float("inf"), float("nan")])
def test_a_transfer_cost_out_of_bounds_is_refused_before_any_work(cost: float) -> None:
    with pytest.raises(ValueError, match=r"^The transfer cost must be a number, 0 or more"):
        simulate(Path("/nonexistent"), horizon=2, transfer_cost=cost)
