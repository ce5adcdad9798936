"""Demand panel and features against slow, obviously-correct pandas oracles."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from features.demand import (
    PERIOD,
    SERIES,
    Codes,
    FeatureSpec,
    build_features,
    build_panel,
    category_blocks,
    extend_with_future,
    period_end,
    rolling_origins,
    sales_from_events,
    series_profile,
    silent_stretches,
)


def sales(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["date", "store_id", "item_id", "units"])
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def test_panel_fills_missing_days_with_zero_and_clips_net_returns() -> None:
    panel = build_panel(
        sales(
            [("2024-01-01", "S", "A", 2), ("2024-01-03", "S", "A", -1), ("2024-01-02", "T", "B", 4)]
        )
    )
    a = panel[panel["unique_id"] == "S|A"]
    assert a["y"].tolist() == [2.0, 0.0, 0.0]  # Jan 2 missing -> 0; Jan 3 net negative -> 0
    b = panel[panel["unique_id"] == "T|B"]
    assert b["ds"].dt.day.tolist() == [2, 3]  # a series starts at its first sale
    assert not panel["censored"].any()


def test_weekly_periods_end_on_the_last_date() -> None:
    last = pd.Timestamp("2024-01-10")  # a Wednesday
    ends = period_end(
        pd.Series(pd.to_datetime(["2024-01-10", "2024-01-04", "2024-01-03"])), "W", last
    )
    assert ends.dt.strftime("%m-%d").tolist() == ["01-10", "01-10", "01-03"]
    with pytest.raises(ValueError, match="freq must be D or W"):
        period_end(pd.Series(pd.to_datetime(["2024-01-01"])), "M", last)


def test_zero_stock_censors_until_the_next_snapshot() -> None:
    inventory = pd.DataFrame(
        {
            "date": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-04"]),
            "store_id": "S",
            "item_id": "A",
            "on_hand": [5.0, 0.0, 7.0],
        }
    )
    history = sales([("2024-01-01", "S", "A", 1), ("2024-01-05", "S", "A", 1)])
    panel = build_panel(history, inventory=inventory)
    assert panel["censored"].tolist() == [False, True, True, False, False]  # Jan 2 and 3 out


def test_events_become_sales_by_fulfilling_store_with_returns_netted() -> None:
    events = pd.DataFrame(
        {
            "event_time": pd.to_datetime(
                ["2024-01-01 10:00", "2024-01-01 12:00", "2024-01-01 13:00", "2024-01-01 14:00"]
            ),
            "event_type": ["purchase", "return", "view", "purchase"],
            "store_id": ["S", "S", "S", None],
            "item_id": "A",
            "quantity": [3.0, 1.0, 1.0, 1.0],
            "unit_price": 2.0,
        }
    )
    daily = sales_from_events(events)
    assert daily["units"].tolist() == [2.0]


def random_panel(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for s, start in enumerate([0, 3, 10]):
        days = pd.date_range("2024-01-01", periods=40, freq="D")[start:]
        frames.append(
            pd.DataFrame(
                {
                    "date": days,
                    "store_id": f"S{s % 2}",
                    "item_id": f"I{s}",
                    "units": rng.poisson(3, len(days)).astype(float),
                    "unit_price": rng.choice([1.0, 1.5], len(days)),
                }
            )
        )
    panel = build_panel(pd.concat(frames))
    panel["censored"] = rng.random(len(panel)) < 0.1
    return panel


def oracle_rolling(panel: pd.DataFrame, column: pd.Series, lag: int, window: int) -> pd.Series:
    """Slow: per row, the mean of known values at periods t-lag-window+1 .. t-lag of its series."""
    out = []
    for _, row in panel.iterrows():
        same = panel[(panel["unique_id"] == row["unique_id"])]
        lo = row["ds"] - pd.Timedelta(days=lag + window - 1)
        hi = row["ds"] - pd.Timedelta(days=lag)
        values = column[same.index][(same["ds"] >= lo) & (same["ds"] <= hi)].dropna()
        out.append(values.mean() if len(values) else np.nan)
    return pd.Series(out, index=panel.index)


def test_features_match_a_slow_oracle() -> None:
    panel = random_panel()
    spec = FeatureSpec(horizon=3, lags=(3, 7), rolling={3: (2, 5)})
    features = build_features(panel, spec, freq="D")
    demand = panel["y"].where(~panel["censored"])
    for lag in spec.lags:
        expected = [
            demand[
                (panel["unique_id"] == r.unique_id) & (panel["ds"] == r.ds - pd.Timedelta(days=lag))
            ].sum(min_count=1)
            for r in panel.itertuples()
        ]
        np.testing.assert_allclose(features[f"lag{lag}"], expected, rtol=1e-6)
    for window in (2, 5):
        np.testing.assert_allclose(
            features[f"rolling_mean_lag3_window{window}"],
            oracle_rolling(panel, demand, 3, window),
            rtol=1e-6,
        )
    # The item across stores: here one item per series, so it is the series' own rolling mean.
    np.testing.assert_allclose(
        features["item_stores_rolling_mean_lag3_window2"],
        oracle_rolling(panel, demand, 3, 2),
        rtol=1e-6,
    )
    assert list(features.columns[:4]) == ["unique_id", "ds", "lag3", "lag7"]
    assert (features["price_ratio"] > 0).all()


def test_a_free_item_has_no_price_ratio_and_no_warning() -> None:
    """Regression: a series priced 0 divided 0 by its median price 0 (a numpy warning)."""
    panel = random_panel()
    free = panel[SERIES] == panel[SERIES].iloc[0]
    panel.loc[free, "unit_price"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features = build_features(panel, FeatureSpec(horizon=3, lags=(3,)), freq="D")
    assert features.loc[free, "price_ratio"].isna().all()
    assert (features.loc[~free, "price_ratio"] > 0).all()


def test_features_are_pure_and_row_aligned() -> None:
    panel = random_panel().sample(frac=1.0, random_state=1)  # any row order
    before = panel.copy()
    features = build_features(panel, FeatureSpec(horizon=3, lags=(3,)), freq="D")
    pd.testing.assert_frame_equal(panel, before)
    assert features.index.equals(panel.index)
    assert (features["unique_id"] == panel["unique_id"]).all()


def test_a_fitted_models_codes_do_not_depend_on_what_the_panel_holds() -> None:
    panel = random_panel()
    items = pd.DataFrame({"item_id": sorted(panel["item_id"].unique())})
    items["category"] = np.where(np.arange(len(items)) % 2, "dairy", "bakery")
    codes = Codes.learn(panel, items)
    spec = FeatureSpec(horizon=3, lags=(3,))
    columns = ["store_code", "item_code", "category_code"]
    full = build_features(panel, spec, freq="D", items=items, codes=codes)[columns]
    # Without the first store and item, the others keep their codes (factorising the smaller
    # panel again would shift them all down by one).
    first_store, first_item = sorted(panel["store_id"].unique())[0], items["item_id"].iloc[0]
    rest = panel[(panel["store_id"] != first_store) & (panel["item_id"] != first_item)]
    part = build_features(rest, spec, freq="D", items=items, codes=codes)[columns]
    pd.testing.assert_frame_equal(part, full.loc[rest.index])
    unseen = rest.assign(store_id="S-new")
    coded = build_features(unseen, spec, freq="D", items=items, codes=codes)
    assert coded["store_code"].isna().all() and coded["item_code"].notna().all()


def test_blocks_of_whole_categories_have_the_whole_panels_features() -> None:
    rng = np.random.default_rng(4)
    days = pd.date_range("2024-01-01", periods=30, freq="D")
    rows = [
        (day, f"S{s}", f"I{i}", float(rng.poisson(2 + i)))
        for s in range(3)
        for i in range(6)
        for day in days[i:]  # series of different lengths: item i has 3 x (30 - i) rows
    ]
    panel = build_panel(pd.DataFrame(rows, columns=["date", "store_id", "item_id", "units"]))
    # I4 and I5 are not in the table: the items it does not categorise are one category.
    items = pd.DataFrame({"item_id": [f"I{i}" for i in range(4)], "category": list("aabc")})
    spec = FeatureSpec(horizon=2, lags=(2, 3), rolling={2: (3,)})
    by_table = panel["item_id"].map(items.set_index("item_id")["category"]).fillna("none")
    for table, category in ((items, by_table), (None, panel["item_id"])):
        codes = Codes.learn(panel, table)
        whole = build_features(panel, spec, freq="D", items=table, codes=codes)
        packed = False
        for max_rows in (100, 170):  # every category (I4 and I5 together: 153 rows) alone; pairs
            blocks = category_blocks(panel, table, max_rows=max_rows)
            assert np.array_equal(np.sort(np.concatenate(blocks)), np.arange(len(panel)))
            for block in blocks:
                inside = category.iloc[block]
                assert len(block) <= max_rows or inside.nunique() == 1
                assert (category.isin(inside.unique()).to_numpy().nonzero()[0] == block).all()
                part = build_features(panel.iloc[block], spec, freq="D", items=table, codes=codes)
                pd.testing.assert_frame_equal(part, whole.iloc[block])
                packed |= inside.nunique() > 1
        assert packed
        assert len(category_blocks(panel, table, max_rows=len(panel))) == 1


def test_future_targets_cannot_leak_into_features() -> None:
    panel = random_panel()
    spec = FeatureSpec(horizon=5, lags=(5, 6), rolling={5: (3,)})
    extended = extend_with_future(panel, 5, "D")
    future = extended["y"].isna()
    a = extended.assign(y=extended["y"].fillna(1.0))
    b = extended.assign(
        y=extended["y"].fillna(
            pd.Series(np.random.default_rng(3).poisson(50, len(extended)), index=extended.index)
        )
    )
    fa = build_features(a, spec, freq="D")[future]
    fb = build_features(b, spec, freq="D")[future]
    pd.testing.assert_frame_equal(fa, fb)


def test_lags_shorter_than_the_horizon_are_refused() -> None:
    with pytest.raises(ValueError, match="would leak"):
        FeatureSpec(horizon=7, lags=(1, 7))


def test_extend_uses_the_plan_and_falls_back_where_it_is_silent() -> None:
    panel = build_panel(
        sales([("2024-01-01", "S", "A", 1), ("2024-01-02", "S", "A", 1)]).assign(
            unit_price=2.0, on_promo=0, x_ad=0.0
        )
    )
    plan = pd.DataFrame(
        {
            "date": pd.to_datetime(["2024-01-03"]),
            "store_id": "S",
            "item_id": "A",
            "unit_price": 1.5,
            "on_promo": 1.0,
            "x_ad": 1.0,
        }
    )
    extended = extend_with_future(panel, 2, "D", plan)
    assert extended.dtypes.equals(panel.dtypes)  # the keys stay categorical
    future = extended.tail(2)
    assert future["unit_price"].tolist() == [1.5, 2.0]  # Jan 4 has no plan row: last price
    assert future["on_promo"].tolist() == [1.0, 0.0] and future["x_ad"].tolist() == [1.0, 0.0]


def test_a_backtest_too_long_for_the_data_names_the_longest_horizon_it_allows() -> None:
    days = pd.date_range("2024-01-01", periods=20, freq="D")
    panel = build_panel(pd.DataFrame({"date": days, "store_id": "S", "item_id": "A", "units": 1.0}))
    with pytest.raises(ValueError, match="the longest horizon they allow for 3 windows is 6"):
        rolling_origins(panel, horizon=7, windows=3)
    assert len(rolling_origins(panel, horizon=6, windows=3)) == 3
    # Regression: a negative horizon was an IndexError, no window at all a pandas sentence.
    for horizon, windows, said in ((-2, 3, "horizon"), (0, 3, "horizon"), (2, 0, "windows")):
        with pytest.raises(ValueError, match=f"^The {said} must be at least 1, not"):
            rolling_origins(panel, horizon=horizon, windows=windows)


def test_a_series_profile_can_be_looked_up_whatever_was_censored() -> None:
    """Regression: among more than 127 series, a recent quarter with every period censored
    gave an index pandas could not align with the panel's series ("Buffer dtype mismatch"),
    and the forecaster's calibration and intervals stopped."""
    days = pd.date_range("2024-01-01", periods=60, freq="D")
    items = np.repeat([f"I{i:03d}" for i in range(200)], 60)
    sales = pd.DataFrame({"date": np.tile(days, 200), "store_id": "S", "item_id": items})
    panel = build_panel(sales.assign(units=1.0))
    panel["censored"] = panel[PERIOD] >= days[20]
    looked_up = series_profile(panel, "D").reindex(panel[SERIES]).fillna(0.0)
    assert len(looked_up) == len(panel) and (looked_up["volume"] == 0.0).all()


def test_stretches_with_no_sale_anywhere_are_found() -> None:
    """Four months missing from every series read as zero demand without a word (forecasts
    20-45% too low): the stretches are named so that the backtest can warn."""
    days = pd.date_range("2024-01-01", periods=30, freq="D")
    units = np.ones(30)
    units[[3, 4]] = 0  # two quiet days: no stretch
    units[10:15] = 0  # five days with no sale anywhere
    sales = pd.concat(
        [pd.DataFrame({"date": days, "store_id": s, "item_id": "A", "units": units})
         for s in ("S1", "S2")]
    )  # fmt: skip
    panel = build_panel(sales)
    assert silent_stretches(panel) == [(days[10], days[14], 5)]
    assert silent_stretches(panel, at_least=2) == [(days[3], days[4], 2), (days[10], days[14], 5)]
