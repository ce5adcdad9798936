"""The benchmarks' references are set as the docs say."""

from __future__ import annotations

import pandas as pd

from experiments.benchmarks.mlforecast_reference import mlforecast_spec
from features.demand import PERIOD, SERIES, TARGET
from models.forecast import TWEEDIE_POWER, LightGBMForecaster


def test_mlforecast_fits_our_objective_unless_asked_for_lightgbms_default() -> None:
    history = pd.DataFrame(
        {
            SERIES: "s1",
            PERIOD: pd.date_range("2024-01-07", periods=80, freq="W-SUN"),
            TARGET: 1.0,
        }
    )
    ours = mlforecast_spec(history, horizon=4, freq="W")
    assert ours["lgbm_params"] == {"objective": "tweedie", "tweedie_variance_power": TWEEDIE_POWER}
    assert ours["n_estimators"] == LightGBMForecaster().n_estimators
    assert mlforecast_spec(history, horizon=4, freq="W", our_objective=False)["lgbm_params"] == {}
    assert LightGBMForecaster(objective="poisson").objective_params() == {"objective": "poisson"}
