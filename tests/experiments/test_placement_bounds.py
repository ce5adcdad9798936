"""The placement backtest's bound: the oracle that knows the realised demand."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.pipelines.placement import SimulationResult, oracle


@pytest.mark.parametrize("total", [0, 7, 23, 30, 31, 45])
def test_the_oracle_loses_only_what_the_total_cannot_cover(total: int) -> None:
    demand = np.array([10, 0, 3, 17])
    stock = oracle(total, demand)
    assert stock.sum() == total and (stock >= 0).all()
    assert np.minimum(demand, stock).sum() == min(total, demand.sum())  # lost = max(0, D - S)


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
