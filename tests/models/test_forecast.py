"""Forecasters: baselines exact on hand cases, quantiles ordered, censoring ignored, no leakage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.pipelines.forecaster import accuracy
from features.demand import build_panel
from models.forecast import (
    LightGBMForecaster,
    MovingAverage,
    SeasonalNaive,
    _coverage,
    negative_binomial_quantiles,
)


def hand_panel(values: list[float], series: str = "S|A") -> pd.DataFrame:
    store, item = series.split("|")
    days = pd.date_range("2024-01-01", periods=len(values), freq="D")
    return build_panel(
        pd.DataFrame({"date": days, "store_id": store, "item_id": item, "units": values})
    )


def test_seasonal_naive_repeats_last_week() -> None:
    panel = hand_panel([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    forecast = SeasonalNaive(horizon=9, freq="D").fit(panel).predict(panel)
    assert forecast["mean"].tolist() == [8, 9, 10, 11, 12, 13, 14, 8, 9]
    assert (forecast["p10"] == forecast["p90"]).all()


def test_seasonal_naive_on_a_series_shorter_than_a_season_repeats_the_last_value() -> None:
    panel = hand_panel([4, 5])
    assert SeasonalNaive(horizon=2, freq="D").fit(panel).predict(panel)["mean"].tolist() == [5, 5]


def test_moving_average_skips_censored_periods() -> None:
    panel = hand_panel([10, 2, 4, 100])
    panel.loc[3, "censored"] = True
    forecast = MovingAverage(horizon=2, freq="D", window=2).fit(panel).predict(panel)
    assert forecast["mean"].tolist() == [3.0, 3.0]  # mean of 2 and 4; the censored 100 is ignored


def test_negative_binomial_quantiles_never_cross() -> None:
    mean = np.array([0.0, 0.3, 2.0, 17.5, 400.0])
    for dispersion in (0.05, 1.0, 50.0):
        p10, p50, p90 = negative_binomial_quantiles(mean, dispersion)
        assert (p10 <= p50).all() and (p50 <= p90).all()


def synthetic_panel(seed: int = 0, n_series: int = 12, days: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    dates = pd.date_range("2024-01-01", periods=days, freq="D")
    for s in range(n_series):
        level = 3 + s
        promo = rng.random(days) < 0.1
        weekly = 1 + 0.5 * (dates.day_of_week >= 5)
        units = rng.poisson(level * weekly * np.where(promo, 2.0, 1.0))
        rows.append(
            pd.DataFrame(
                {
                    "date": dates,
                    "store_id": f"S{s % 3}",
                    "item_id": f"I{s}",
                    "units": units.astype(float),
                    "unit_price": np.where(promo, 0.8, 1.0),
                    "on_promo": promo.astype(int),
                }
            )
        )
    return build_panel(pd.concat(rows, ignore_index=True))


@pytest.fixture(scope="module")
def fitted() -> tuple[LightGBMForecaster, pd.DataFrame]:
    panel = synthetic_panel()
    model = LightGBMForecaster(horizon=7, freq="D", n_estimators=60).fit(panel)
    return model, panel


def test_lightgbm_forecast_shape_order_and_quantiles(fitted) -> None:
    model, panel = fitted
    forecast = model.predict(panel)
    assert len(forecast) == 12 * 7 and set(forecast["method"]) == {"lightgbm"}
    assert (forecast["p10"] <= forecast["p50"]).all() and (forecast["p50"] <= forecast["p90"]).all()
    assert (forecast["mean"] >= 0).all()
    assert forecast["ds"].min() == panel["ds"].max() + pd.Timedelta(days=1)
    assert model.objective_ in {"tweedie", "poisson", "regression"}


def test_beats_the_baselines_where_promotions_and_weekdays_matter() -> None:
    panel = synthetic_panel()
    history = panel[panel["ds"] <= panel["ds"].max() - pd.Timedelta(days=7)]
    actual = panel[panel["ds"] > history["ds"].max()]
    known = actual.drop(columns=["y", "censored"]).rename(columns={"ds": "date"})
    ours = (
        LightGBMForecaster(horizon=7, freq="D", n_estimators=60)
        .fit(history)
        .predict(history, plan=known)
    )
    average = MovingAverage(7, "D").fit(history).predict(history)
    assert accuracy(actual, ours, history)["wape"] < accuracy(actual, average, history)["wape"]


def test_censored_targets_change_nothing(fitted) -> None:
    _, panel = fitted
    censored = panel.copy()
    mask = np.random.default_rng(1).random(len(panel)) < 0.1
    censored["censored"] = mask
    changed = censored.copy()
    changed.loc[mask, "y"] = 10_000.0  # whatever a censored period recorded
    a = LightGBMForecaster(horizon=7, freq="D", n_estimators=30, objective="tweedie").fit(censored)
    b = LightGBMForecaster(horizon=7, freq="D", n_estimators=30, objective="tweedie").fit(changed)
    pd.testing.assert_frame_equal(a.predict(censored), b.predict(changed))


def test_short_series_fall_back_and_are_flagged() -> None:
    panel = pd.concat([synthetic_panel(n_series=6), hand_panel([3.0], "S9|NEW")], ignore_index=True)
    panel.loc[panel["unique_id"] == "S9|NEW", "ds"] = panel["ds"].max()
    forecast = LightGBMForecaster(horizon=7, freq="D", n_estimators=30).fit(panel).predict(panel)
    new = forecast[forecast["unique_id"] == "S9|NEW"]
    assert len(new) == 7 and (new["method"] == "moving_average (short history)").all()
    assert (new["mean"] == 3.0).all()


def test_all_zero_series_forecast_zero_without_error() -> None:
    panel = pd.concat(
        [synthetic_panel(n_series=4), hand_panel([0.0] * 150, "S0|ZERO")], ignore_index=True
    )
    forecast = LightGBMForecaster(horizon=7, freq="D", n_estimators=200).fit(panel).predict(panel)
    zero = forecast[forecast["unique_id"] == "S0|ZERO"]
    others = forecast[forecast["unique_id"] != "S0|ZERO"]
    assert zero["mean"].max() < 0.2 * others["mean"].min() and (zero["p10"] == 0).all()


def test_save_load_round_trip_and_planner_view(fitted, tmp_path: Path) -> None:
    model, panel = fitted
    loaded = LightGBMForecaster.load(model.save(tmp_path / "f"))
    assert loaded.codes_ == model.codes_
    pd.testing.assert_frame_equal(model.predict(panel), loaded.predict(panel))
    view = loaded.forecast("S1", ["I1", "I4"], horizon=3)
    assert set(view["item_id"]) == {"I1", "I4"} and view["ds"].nunique() == 3
    with pytest.raises(ValueError, match="Store 'S9' is not in the forecaster's history"):
        loaded.forecast("S9")
    with pytest.raises(ValueError, match="no known category for item"):
        loaded.forecast("S1", ["I999"])
    with pytest.raises(ValueError, match="horizon must be between 1 and 7"):
        loaded.forecast("S1", horizon=8)


def test_coverage_read_on_the_cdf_is_the_coverage_of_the_quantiles() -> None:
    rng = np.random.default_rng(4)
    mean = rng.gamma(1.0, 5.0, 5000)
    # Counts, and (as Walmart's dollars) values between counts.
    actual = np.where(rng.random(5000) < 0.2, rng.poisson(mean) + 0.5, rng.poisson(mean))
    for dispersion in (0.05, 1.0, 30.0, 2000.0):
        low, _, high = negative_binomial_quantiles(mean, dispersion)
        direct = np.mean((actual >= low) & (actual <= high))
        assert _coverage(mean, actual, dispersion) == direct


def test_n_jobs_sets_the_training_threads_not_the_answer() -> None:
    panel = synthetic_panel(n_series=4, days=80)
    one = LightGBMForecaster(horizon=3, freq="D", n_estimators=30, n_jobs=1).fit(panel)
    every = LightGBMForecaster(horizon=3, freq="D", n_estimators=30, n_jobs=-1).fit(panel)
    assert one._threads() == 1 and every._threads() == (os.cpu_count() or 1)
    pd.testing.assert_frame_equal(one.predict(panel), every.predict(panel))  # deterministic
    with pytest.raises(ValueError, match="n_jobs must not be 0"):
        LightGBMForecaster(horizon=3, freq="D", n_jobs=0).fit(panel)


def test_new_items_get_their_category_prior() -> None:
    panel = synthetic_panel(n_series=6)  # store S0 holds I0 and I3
    items = pd.DataFrame(
        {"item_id": [f"I{i}" for i in range(6)] + ["NEW"], "category": ["a", "b"] * 3 + ["b"]}
    )
    model = LightGBMForecaster(horizon=7, freq="D", n_estimators=30).fit(panel, items=items)
    view = model.forecast("S0", ["I0", "NEW"], horizon=7)
    new = view[view["item_id"] == "NEW"]
    assert len(new) == 7 and (new["method"] == "category prior").all()
    recent = panel[
        (panel["unique_id"] == "S0|I3") & (panel["ds"] > panel["ds"].max() - pd.Timedelta(days=28))
    ]
    assert new["mean"].iloc[0] == pytest.approx(recent["y"].mean())  # I3 is S0's only "b" item


def test_accuracy_excludes_censored_actuals() -> None:
    history = hand_panel([1, 2, 3, 4])
    actual = hand_panel([1, 2, 3, 4, 5, 6]).tail(2).copy()
    actual["censored"] = [False, True]
    forecast = actual[["unique_id", "ds"]].assign(
        mean=[4.0, 0.0], p10=[3.0, 0.0], p50=[4.0, 0.0], p90=[5.0, 0.0]
    )
    metrics = accuracy(actual, forecast, history)
    assert metrics["wape"] == pytest.approx(1 / 5)  # only the uncensored row (actual 5, forecast 4)
    assert metrics["bias"] == pytest.approx(-1 / 5)
    assert metrics["coverage_80"] == 1.0
    assert metrics["rmsse"] == pytest.approx(1.0)  # error 1 over a naive step of 1
