"""Forecasters: baselines exact on hand cases, quantiles ordered, censoring ignored, no leakage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.pipelines.forecaster import DemandData, accuracy, backtest
from features.demand import build_panel
from models.forecast import (
    MIN_CELL,
    CalibrationWarning,
    Intervals,
    LightGBMForecaster,
    MovingAverage,
    SeasonalNaive,
    _coverage,
    negative_binomial_quantiles,
    pinball_loss,
    train_here,
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


def test_moving_average_of_a_series_with_nothing_uncensored_is_zero() -> None:
    """Regression: among more than 127 series (categorical codes wider than a byte), a series
    whose every period is censored stopped the forecast ("Buffer dtype mismatch")."""
    days = pd.date_range("2024-01-01", periods=2, freq="D")
    sales = pd.DataFrame(
        {"date": np.tile(days, 200), "store_id": "S", "units": 1.0,
         "item_id": np.repeat([f"I{i:03d}" for i in range(200)], 2)}
    )  # fmt: skip
    panel = build_panel(sales)
    last = panel[panel["item_id"] == "I199"].assign(censored=True)
    forecast = MovingAverage(horizon=2, freq="D").fit(panel).predict(last)
    assert forecast["mean"].tolist() == [0.0, 0.0]


def test_a_history_without_demand_is_refused_in_one_sentence() -> None:
    """Regression: LightGBM's "sum of labels is zero" (every sale a net return)."""
    panel = hand_panel([-1.0] * 60)
    with pytest.raises(ValueError, match="Every period of the history has zero demand"):
        LightGBMForecaster(horizon=7, freq="D").fit(panel)


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
    for beyond in (8, 0):  # Regression: 0 gave the model's whole horizon
        with pytest.raises(ValueError, match=f"horizon must be between 1 and 7.*not {beyond}"):
            loaded.forecast("S1", horizon=beyond)


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


def test_held_out_models_train_a_share_of_the_rounds_and_the_final_ones_all() -> None:
    panel = synthetic_panel(n_series=4, days=80)
    trained: list[tuple[int, float]] = []

    def recording(params, x, y, rounds):
        trained.append((rounds, params["learning_rate"]))
        return train_here(params, x, y, rounds)

    every_round = {"n_estimators": 40, "early_stopping": False}
    LightGBMForecaster(horizon=3, freq="D", **every_round).fit(panel, trainer=recording)
    assert trained == [(10, pytest.approx(0.2)), (40, 0.05)]  # held out, then refitted
    trained.clear()
    LightGBMForecaster(horizon=3, freq="D", refit=False, **every_round).fit(
        panel, trainer=recording
    )
    assert trained == [(40, 0.05)]  # the held-out model is the final one: every round
    with pytest.raises(ValueError, match="calibration_effort must be in"):
        LightGBMForecaster(horizon=3, freq="D", calibration_effort=0).fit(panel)
    with pytest.raises(ValueError, match="n_estimators must be at least 1 and learning_rate"):
        LightGBMForecaster(horizon=3, freq="D", n_estimators=0).fit(panel)
    with pytest.raises(ValueError, match=r"objective must be one of auto, .* not 'quantile'"):
        LightGBMForecaster(horizon=3, freq="D", objective="quantile").fit(panel)


def test_early_stopping_trains_the_share_of_rounds_that_forecast_held_out_periods_best() -> None:
    """Noise has nothing to learn past its mean: more rounds only fit the noise, so the
    final models train a quarter of them; a signal far from learned in 20 slow rounds keeps
    every round."""
    rng = np.random.default_rng(3)
    days = pd.date_range("2024-01-01", periods=120, freq="D")
    sales = pd.DataFrame(
        {"date": np.tile(days, 8), "store_id": "S",
         "item_id": np.repeat([f"I{i}" for i in range(8)], 120),
         "units": rng.poisson(5.0, 8 * 120).astype(float)}
    )  # fmt: skip
    noise = build_panel(sales)
    eager = {"horizon": 3, "freq": "D", "n_estimators": 200, "learning_rate": 0.1}
    assert LightGBMForecaster(**eager).fit(noise).rounds_ == [50]
    kept = LightGBMForecaster(**eager, refit=False).fit(noise)  # the held-out model, cut
    assert kept.rounds_ == [50] and kept.boosters_[0].current_iteration() == 50
    assert LightGBMForecaster(**eager, early_stopping=False).fit(noise).rounds_ == [200]
    signal = synthetic_panel(n_series=4, days=80)
    assert LightGBMForecaster(horizon=3, freq="D", n_estimators=20).fit(signal).rounds_ == [20]
    trained: list[tuple[int, float]] = []

    def recording(params, x, y, rounds):
        trained.append((rounds, params["learning_rate"]))
        return train_here(params, x, y, rounds)

    LightGBMForecaster(horizon=3, freq="D", n_estimators=5).fit(signal, trainer=recording)
    assert trained == [(1, pytest.approx(0.25)), (5, 0.05)]  # one held-out round: nothing to cut


def test_early_stopping_needs_as_many_held_out_rows_as_the_calibration() -> None:
    """Regression: on 28 held-out rows the intervals were not calibrated ("too short to hold
    periods out") while early stopping chose the rounds on them."""
    noise = hand_panel(np.random.default_rng(5).poisson(5.0, 120).astype(float).tolist())
    with pytest.warns(CalibrationWarning, match="too short to hold periods out"):
        model = LightGBMForecaster(horizon=7, freq="D", n_estimators=200, learning_rate=0.1)
        assert model.fit(noise).rounds_ == [200]


def test_the_plan_given_at_fit_is_what_forecasts_assume(tmp_path: Path) -> None:
    """Regression: `omni forecast` and /forecast assumed no promotion whatever the data's plan
    table said: only `placement plan --data` passed it on."""
    panel = synthetic_panel()
    last = panel["ds"].max()
    series = panel.drop_duplicates("unique_id")[["store_id", "item_id"]]
    days = pd.date_range(last - pd.Timedelta(days=2), periods=10, freq="D")  # some past
    plan = series.merge(pd.DataFrame({"date": days}), how="cross").assign(
        unit_price=0.8, on_promo=1
    )
    spec = {"horizon": 7, "freq": "D", "n_estimators": 60}
    planned = LightGBMForecaster(**spec).fit(panel, plan=plan)
    assert planned.plan_["date"].min() > last  # only what is ahead of the history is kept
    plain = LightGBMForecaster(**spec).fit(panel)
    forecast = planned.predict()
    pd.testing.assert_frame_equal(forecast, plain.predict(plan=plan))  # the same models
    assert forecast["mean"].sum() > 1.3 * plain.predict()["mean"].sum()  # promotions sell
    loaded = LightGBMForecaster.load(planned.save(tmp_path / "model"))
    pd.testing.assert_frame_equal(loaded.predict(), forecast)
    view = loaded.forecast("S0", ["I0"], horizon=7)
    assert (
        view["mean"].tolist()
        == forecast.loc[forecast["unique_id"] == view["unique_id"][0], "mean"].tolist()
    )


def test_a_panel_over_max_train_rows_trains_on_whole_series_and_forecasts_every_series(
    monkeypatch,
) -> None:
    # 12 series of 80 days: items I0-I3 each at stores S0-S2, in categories a, a, b, b.
    panel = synthetic_panel(n_series=12, days=80)
    number = panel["item_id"].str[1:].astype(int)
    panel["item_id"] = "I" + (number % 4).astype(str)
    panel["unique_id"] = panel["store_id"].astype(str) + "|" + panel["item_id"]
    items = pd.DataFrame({"item_id": ["I0", "I1", "I2", "I3"], "category": list("aabb")})
    trained: list[pd.DataFrame] = []

    def recording(params, x, y, rounds):
        trained.append(x.assign(target=y).sort_values([*x.columns, "target"], ignore_index=True))
        return train_here(params, x, y, rounds)

    def fit(max_train_rows: int | None) -> LightGBMForecaster:
        model = LightGBMForecaster(
            horizon=3, freq="D", n_estimators=30, max_train_rows=max_train_rows
        )
        return model.fit(panel, items=items, trainer=recording)

    small = fit(400)
    assert small.train_rows_ == 400  # five whole series of 80 (a sixth would pass 400)
    assert {len(x[["store_code", "item_code"]].drop_duplicates()) for x in trained} == {5}
    forecast = small.predict()
    assert set(forecast["unique_id"]) == set(panel["unique_id"])
    # Built a category (480 rows) at a time, training sees the same rows, features and targets,
    # and the intervals are calibrated alike.
    at_once, trained[:] = list(trained), []
    monkeypatch.setattr("models.forecast._BLOCK_ROWS", 100)
    by_block = fit(400)
    for x, expected in zip(trained, at_once, strict=True):
        pd.testing.assert_frame_equal(x, expected)
    assert by_block.intervals_.as_dict() == small.intervals_.as_dict()
    # Forecasting a category at a time gives what the whole panel at once does.
    whole = fit(None)
    assert whole.train_rows_ == len(panel)
    in_blocks = whole.predict()
    monkeypatch.setattr("models.forecast._BLOCK_ROWS", 10_000)
    pd.testing.assert_frame_equal(whole.predict(), in_blocks)
    with pytest.raises(ValueError, match="max_train_rows must be at least 1"):
        LightGBMForecaster(horizon=3, freq="D", max_train_rows=0).fit(panel)


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
    # A point forecast has no interval: no coverage (it would count exact hits, zeros mostly).
    point = forecast.assign(p10=forecast["mean"], p50=forecast["mean"], p90=forecast["mean"])
    assert not any(name.startswith("coverage") for name in accuracy(actual, point, history))


def known_demand_panel(
    n_series: int = 150, days: int = 280, dispersion: float = 5.0, seed: int = 7
) -> tuple[pd.DataFrame, np.ndarray]:
    """Daily demand whose distribution is known: per series a level from 0.5 to 100 a day,
    busier weekends, negative binomial around it (size ``dispersion``). Also the true means."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2024-01-01", periods=days, freq="D")
    level = np.exp(rng.uniform(np.log(0.5), np.log(100.0), n_series))
    weekly = 1 + 0.6 * (dates.day_of_week.to_numpy() >= 5)
    mean = level[:, None] * weekly[None, :]
    units = rng.negative_binomial(dispersion, dispersion / (dispersion + mean))
    sales = pd.DataFrame(
        {
            "date": np.tile(dates, n_series),
            "store_id": np.repeat([f"S{s % 4}" for s in range(n_series)], days),
            "item_id": np.repeat([f"I{s}" for s in range(n_series)], days),
            "units": units.ravel().astype(float),
        }
    )
    return build_panel(sales), mean


def test_intervals_cover_80_percent_in_every_volume_quintile_of_known_demand() -> None:
    panel, mean = known_demand_panel()
    horizon, dispersion = 14, 5.0
    cut = panel["ds"].max() - pd.Timedelta(days=horizon)
    history, actual = panel[panel["ds"] <= cut], panel[panel["ds"] > cut]
    model = LightGBMForecaster(horizon=horizon, freq="D", n_estimators=80).fit(history)
    assert model.intervals_.calibrated and model.intervals_.method == "conformal"
    forecast = model.predict(history)
    joined = actual.merge(
        forecast[["unique_id", "ds", "p10", "p50", "p90"]], on=["unique_id", "ds"]
    )
    y = joined["y"].to_numpy()
    ours = (y >= joined["p10"]) & (y <= joined["p90"])
    # The true P10 and P90 of each row's negative binomial: what a perfect forecaster says.
    true_mean = mean[
        joined["item_id"].str[1:].astype(int), (joined["ds"] - panel["ds"].min()).dt.days
    ]
    true_low, _, true_high = negative_binomial_quantiles(true_mean, dispersion)
    truth = (y >= true_low) & (y <= true_high)  # up to 0.94 in the lowest fifth
    volume = history.groupby("unique_id")["y"].mean()
    rank = volume.rank(method="first").reindex(joined["unique_id"]).to_numpy() - 1
    quintile = (rank * 5 // len(volume)).astype(int)
    true_quantiles = negative_binomial_quantiles(true_mean, dispersion)
    for q in range(5):
        rows = quintile == q
        # Calibrated in every fifth, though a perfect forecaster's interval covers up to 0.94 of
        # the lowest fifth's weeks (its counts are small and whole); and nearly as sharp.
        assert 0.72 <= ours[rows].mean() <= 0.88, (q, ours[rows].mean(), truth[rows].mean())
        loss = pinball_loss(
            y[rows], tuple(joined[c].to_numpy()[rows] for c in ("p10", "p50", "p90"))
        )
        best = pinball_loss(y[rows], tuple(t[rows] for t in true_quantiles))
        assert loss <= 1.1 * best  # measured: within 1-5% of the true quantiles' loss


def test_quantiles_never_cross_whatever_the_method() -> None:
    rng = np.random.default_rng(3)
    mean = rng.gamma(0.7, 20.0, 2000)
    profile = pd.DataFrame(
        {"volume": rng.gamma(0.7, 20.0, 2000), "volatility": rng.gamma(1, 3, 2000)}
    )
    bucket = rng.integers(0, 3, 2000)
    held = pd.DataFrame(
        {
            "unique_id": rng.integers(0, 300, 2000).astype(str),
            "bucket": bucket,
            "mean": mean,
            "actual": rng.poisson(mean),
            **{c: profile[c] for c in profile},
        }
    )
    for method in ("conformal", "negative_binomial"):
        intervals = Intervals.calibrate(held, (method,), n_buckets=3)
        low, middle, high = intervals.quantiles(mean, profile, bucket)
        assert (low >= 0).all() and (low <= middle).all() and (middle <= high).all()


def test_a_slow_sellers_band_is_never_narrower_than_a_poisson_spread() -> None:
    """Regression: a slow seller's held-out errors are near zero, so a promotion week forecast
    at 1.9 units got a band of 1.84-1.90 (P10 said 'at least 2 units, 9 weeks in 10')."""
    rng = np.random.default_rng(5)
    held = pd.DataFrame(
        {"unique_id": (np.arange(600) % 60).astype(str), "bucket": 0,
         "mean": 0.02, "actual": (rng.random(600) < 0.02).astype(float),
         "volume": 0.02, "volatility": 0.0}
    )  # fmt: skip
    intervals = Intervals.calibrate(held, ("conformal",), n_buckets=1)
    assert intervals.method == "conformal"
    mean = np.array([0.02, 1.9, 25.0])
    profile = pd.DataFrame({"volume": 0.02, "volatility": 0.0}, index=range(3))
    low, middle, high = intervals.quantiles(mean, profile, np.zeros(3, int))
    spread = 1.2816 * np.sqrt(mean)
    assert (low <= np.maximum(mean - spread, 0) + 1e-3).all()
    assert (high >= mean + spread - 1e-3).all()
    assert (low <= middle).all() and (middle <= high).all()
    assert low[1] == pytest.approx(0.13, abs=0.01) and high[1] == pytest.approx(3.67, abs=0.01)


def test_calibration_that_cannot_run_warns_and_uses_the_documented_default() -> None:
    short = synthetic_panel(n_series=3, days=12)  # no room to hold a week out before a week ahead
    with pytest.warns(CalibrationWarning, match="too short to hold periods out"):
        model = LightGBMForecaster(horizon=7, freq="D", n_estimators=10, min_child_samples=2).fit(
            short
        )
    assert not model.intervals_.calibrated and "not calibrated" in model.intervals_.label
    # Perfect held-out forecasts make every interval zero-wide: degenerate, rejected.
    held = pd.DataFrame(
        {"unique_id": [str(i % 40) for i in range(400)], "bucket": 0, "mean": 3.0, "actual": 3.0,
         "volume": 3.0, "volatility": 0.0}
    )  # fmt: skip
    with pytest.warns(CalibrationWarning, match="degenerate"):
        fallback = Intervals.calibrate(held, ("conformal",), n_buckets=1)
    assert fallback.method == "negative_binomial" and not fallback.calibrated
    assert "every method degenerate" in fallback.label and fallback.held_out == 400
    assert set(fallback.coverage.values()) == {1.0}


def test_one_series_is_calibrated_on_halves_of_its_rows() -> None:
    """Regression: cross-fitting halves the series; with one series a half was empty."""
    weeks = pd.date_range("2021-01-03", periods=120, freq="W")
    rng = np.random.default_rng(5)
    panel = build_panel(
        pd.DataFrame({"date": weeks, "store_id": "S", "item_id": "A",
                      "units": rng.poisson(20 + 10 * np.sin(np.arange(120) / 8.0))}),
        freq="W",
    )  # fmt: skip
    model = LightGBMForecaster(horizon=13, freq="W", n_estimators=20, min_child_samples=5)
    assert model.fit(panel).intervals_.held_out >= MIN_CELL
    forecast = model.predict(panel)
    assert (forecast["p10"] <= forecast["p90"]).all() and len(forecast) == 13


@pytest.mark.parametrize("strategy", ["direct", "recursive"])
def test_a_long_horizons_first_weeks_are_the_short_horizons_forecast(strategy, tmp_path) -> None:
    weeks = pd.date_range("2021-01-03", periods=150, freq="W")
    rng = np.random.default_rng(2)
    sales = pd.concat(
        pd.DataFrame(
            {
                "date": weeks,
                "store_id": f"S{s % 2}",
                "item_id": f"I{s}",
                "units": rng.poisson((5 + s) * (1.5 + np.sin(np.arange(150) * 2 * np.pi / 52))),
            }
        )
        for s in range(12)
    )
    panel = build_panel(sales, freq="W")
    short = LightGBMForecaster(horizon=13, freq="W", n_estimators=30, strategy=strategy)
    long = LightGBMForecaster(horizon=39, freq="W", n_estimators=30, strategy=strategy)
    near = short.fit(panel).predict(panel)
    far = LightGBMForecaster.load(long.fit(panel).save(tmp_path / "long")).predict(panel)
    assert len(long.boosters_) == (
        4 if strategy == "direct" else 1
    )  # weeks 1-4, 5-13, 14-26, 27-39
    first = far[far["ds"] <= near["ds"].max()].reset_index(drop=True)
    np.testing.assert_allclose(first["mean"], near["mean"])
    assert far["ds"].nunique() == 39 and far["mean"].notna().all()


def test_a_horizon_the_history_cannot_support_names_the_longest_it_can() -> None:
    panel = synthetic_panel(n_series=12, days=60)  # 12 x (60 - k) rows lie k days after the start
    with pytest.raises(ValueError, match="the longest horizon they support is 56"):
        LightGBMForecaster(horizon=80, freq="D", n_estimators=5).fit(panel)


def test_a_backtest_too_long_for_the_history_names_a_horizon_that_runs() -> None:
    """Regression: on 39 weeks `--horizon 60` advised 12 (room for the windows), and 12 was
    then refused by the model (history before the first origin too short), advising 2."""
    weeks = pd.date_range("2024-01-07", periods=39, freq="W")
    sales = pd.DataFrame(
        {"date": np.tile(weeks, 4), "store_id": "S", "item_id": np.repeat(list("ABCD"), 39),
         "units": np.random.default_rng(0).poisson(6.0, 4 * 39).astype(float)}
    )  # fmt: skip
    data = DemandData(build_panel(sales, freq="W"), None, None)
    with pytest.raises(
        ValueError, match=r"too few for 3 backtest windows of 60: the longest "
    ) as e:
        backtest(data, horizon=60, freq="W", windows=3)
    longest = int(str(e.value).rsplit(" ", 1)[-1].rstrip("."))
    assert 1 <= longest < 12
    backtest(data, horizon=longest, freq="W", windows=3)  # the advice runs
    with pytest.raises(ValueError, match=f"windows of {longest + 1}: the longest horizon they"):
        backtest(data, horizon=longest + 1, freq="W", windows=3)
    with pytest.raises(ValueError, match="no horizon fits; use fewer windows or a longer history"):
        backtest(data, horizon=4, freq="W", windows=30)


def test_a_backtest_whose_windows_hold_no_sales_is_refused_in_one_sentence() -> None:
    """Regression: WAPE was NaN ("WAPE nan > nan"), and no model could become champion."""
    panel = synthetic_panel(n_series=3, days=60)
    panel.loc[panel["ds"] > panel["ds"].max() - pd.Timedelta(days=14), "y"] = 0.0
    with pytest.raises(ValueError, match=r"^The last 14 periods hold no sales"):
        backtest(DemandData(panel, None, None), horizon=7, freq="D", windows=2)


def test_a_backtest_names_the_stretches_where_nothing_sold() -> None:
    panel = synthetic_panel(n_series=3, days=70)
    quiet = panel["ds"].between(pd.Timestamp("2024-01-20"), pd.Timestamp("2024-01-29"))
    panel.loc[quiet, "y"] = 0.0
    result = backtest(DemandData(panel, None, None), horizon=7, freq="D", windows=1)
    assert result.gaps == [
        "Nothing sold anywhere in 10 consecutive periods (2024-01-20 to 2024-01-29): they are "
        "read as zero demand; if their sales are missing from the data, the models learn a drop "
        "that did not happen."
    ]


def test_a_backtest_notes_what_its_table_cannot_show() -> None:
    """Regression: on less than a season of history the seasonal naive is each series' last
    period, and series that began within the test windows were left out — neither said."""
    daily = synthetic_panel(days=150)
    sales = daily.rename(columns={"ds": "date", "y": "units"})
    new = sales[sales["item_id"] == "I0"].tail(5).assign(item_id="NEW")  # the last 5 days
    columns = ["date", "store_id", "item_id", "units", "unit_price", "on_promo"]
    weekly = build_panel(pd.concat([sales, new])[columns], freq="W")
    result = backtest(DemandData(weekly, None, None), horizon=2, freq="W", windows=1)
    assert result.notes == [
        "seasonal_naive repeats each series' last period: the history before the test windows "
        "is shorter than a season (52 periods).",
        "1 series that began within the test windows is not scored (no history before their "
        "window); they are forecast once trained on.",
    ]
