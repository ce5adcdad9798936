"""The KPI report's forecast accuracy: a champion trained on data that stops four weeks early is
scored on the weeks that came in after it, by week and store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SAMPLE

pytestmark = pytest.mark.integration


def test_forecast_wape_by_week_and_store_over_the_weeks_that_came_in(
    own_tracking: Path, tmp_path: Path
) -> None:
    from experiments.pipelines.forecaster import load_demand
    from experiments.pipelines.measurement import forecast_accuracy
    from experiments.pipelines.training import train_forecaster
    from models.forecast import LightGBMForecaster
    from serving.registry import FORECASTER, champion

    early = tmp_path / "early"
    shutil.copytree(SAMPLE, early)
    sales = pd.read_csv(early / "sales.csv.gz", dtype=str)
    dates = pd.to_datetime(sales["date"], errors="coerce")  # the sample's corrupt rows: dropped
    cutoff = dates.max() - pd.Timedelta(days=28)
    sales[dates <= cutoff].to_csv(early / "sales.csv.gz", index=False)
    train_forecaster(early, horizon=4, freq="W", windows=1)

    model = LightGBMForecaster.load(champion(FORECASTER)[1])
    forecast = model.predict(model.history_)
    panel = load_demand(SAMPLE, "W").panel  # everything, the four later weeks included
    accuracy = forecast_accuracy(forecast, panel)
    assert accuracy["ds"].nunique() == 4 and accuracy["store_id"].nunique() == 6  # ONLINE too
    assert np.isfinite(accuracy["wape"]).all() and (accuracy["wape"] < 1.5).all()
    # One row by hand: the week and store's absolute errors over its units.
    week, store = accuracy.iloc[0][["ds", "store_id"]]
    mine = forecast[(forecast["ds"] == week) & (forecast["store_id"] == store)]
    real = panel[(panel["ds"] == week) & (panel["store_id"] == store) & ~panel["censored"]]
    both = mine.merge(real, on=["store_id", "item_id", "ds"])
    expected = (both["y"] - both["mean"]).abs().sum() / both["y"].sum()
    assert accuracy.iloc[0]["wape"] == pytest.approx(expected)
