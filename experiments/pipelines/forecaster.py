"""Rolling-origin backtests of the demand forecaster against baselines and mlforecast."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.demand import (
    PERIOD,
    SERIES,
    TARGET,
    build_panel,
    rolling_origins,
    sales_from_events,
    split_at,
)
from features.eventlog import with_logged
from features.ingest import ContractError, load_dataset
from models.forecast import Forecaster, LightGBMForecaster, MovingAverage, SeasonalNaive

QUANTILE_COLUMNS = {"p10": 0.1, "p50": 0.5, "p90": 0.9}


@dataclass
class DemandData:
    panel: pd.DataFrame
    items: pd.DataFrame | None
    plan: pd.DataFrame | None


def load_demand(data_dir: Path, freq: str, logged: pd.DataFrame | None = None) -> DemandData:
    """The demand panel of a data directory: the ``sales`` table when present, else purchase and
    return events by fulfilling store (with ``logged`` events from the service, if given; a sales
    table is the tills' own record, which already holds them); ``inventory`` marks censored
    periods."""
    tables = load_dataset(data_dir, ("sales", "events", "inventory", "items", "plan"))
    if "sales" in tables and len(tables["sales"].accepted):
        sales = tables["sales"].accepted
    elif "events" in tables:
        sales = sales_from_events(with_logged(tables["events"].accepted, logged))
    else:
        raise ContractError(f"{data_dir} has no sales or purchase events to forecast from.")
    inventory = tables["inventory"].accepted if "inventory" in tables else None
    panel = build_panel(sales, freq=freq, inventory=inventory)
    items = tables["items"].accepted if "items" in tables else None
    plan = tables["plan"].accepted if "plan" in tables else None
    return DemandData(panel, items, plan)


def known_covariates(future: pd.DataFrame) -> pd.DataFrame:
    """A panel's future rows as a ``plan``: prices, promotions and ``x_*``, never the target."""
    return future.drop(columns=[TARGET, "censored"]).rename(columns={PERIOD: "date"})


def latest_on_hand(data_dir: Path, item_id: str) -> pd.Series | None:
    """Each store's latest on-hand stock of an item (None without an inventory table)."""
    tables = load_dataset(data_dir, ("inventory",))
    if "inventory" not in tables:
        return None
    stock = tables["inventory"].accepted
    stock = stock[stock["item_id"] == item_id].sort_values("date")
    return stock.drop_duplicates("store_id", keep="last").set_index("store_id")["on_hand"]


def accuracy(
    actual: pd.DataFrame, forecast: pd.DataFrame, history: pd.DataFrame
) -> dict[str, float]:
    """WAPE, RMSSE, bias (of the ``mean`` forecast), mean pinball loss (P10 / P50 / P90) and 80%
    coverage, over uncensored actuals.

    RMSSE is M5's: per series, the RMSE scaled by the in-sample one-step naive RMSE, averaged
    over series whose history is not constant. Pinball is averaged over P10 / P50 / P90.
    """
    joined = actual[~actual["censored"]].merge(forecast, on=[SERIES, PERIOD], how="inner")
    y = joined[TARGET].to_numpy()
    p50 = joined["mean"].to_numpy()  # the point forecast: expected demand
    total = y.sum()
    pinball = np.mean(
        [
            np.mean(np.maximum(q * (y - joined[c]), (q - 1) * (y - joined[c])))
            for c, q in QUANTILE_COLUMNS.items()
        ]
    )
    naive = history.sort_values([SERIES, PERIOD]).groupby(SERIES, observed=True)[TARGET].diff()
    scale = (naive**2).groupby(history[SERIES], observed=True).mean()
    errors = joined.assign(se=(y - p50) ** 2).groupby(SERIES, observed=True)["se"].mean()
    scaled = (errors / scale.reindex(errors.index)).replace([np.inf, -np.inf], np.nan).dropna()
    return {
        "wape": float(np.abs(y - p50).sum() / total) if total else float("nan"),
        "rmsse": float(np.sqrt(scaled).mean()) if len(scaled) else float("nan"),
        "bias": float((p50.sum() - total) / total) if total else float("nan"),
        "pinball": float(pinball),
        "coverage_80": float(np.mean((y >= joined["p10"]) & (y <= joined["p90"]))),
    }


@dataclass
class BacktestResult:
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    others: dict[str, dict[str, float]]
    series: int
    rows: int
    seconds: float
    last_forecast: pd.DataFrame
    last_actual: pd.DataFrame
    model: Forecaster


Factory = Callable[[], Forecaster]


def backtest(
    data: DemandData,
    *,
    horizon: int,
    freq: str,
    windows: int = 3,
    model: Factory | None = None,
    extra: dict[str, Callable[[pd.DataFrame, DemandData], pd.DataFrame]] | None = None,
) -> BacktestResult:
    """Rolling origins: ``windows`` test windows of ``horizon`` periods ending at the last period.

    Each origin sees only the periods up to it; the future ``plan`` covariates it gets are the
    ones recorded in the panel (known in advance by the contract), never the targets.
    """
    started = time.perf_counter()
    panel = data.panel
    factories: dict[str, Factory] = {
        "model": model or (lambda: LightGBMForecaster(horizon=horizon, freq=freq)),
        "seasonal_naive": lambda: SeasonalNaive(horizon, freq),
        "moving_average": lambda: MovingAverage(horizon, freq),
    }
    forecasts: dict[str, list[pd.DataFrame]] = {name: [] for name in [*factories, *(extra or {})]}
    actuals, histories = [], []
    fitted: Forecaster | None = None
    for origin in rolling_origins(panel, horizon, windows):
        history, future = split_at(panel, origin, horizon, freq)
        future = future[future[SERIES].isin(history[SERIES])]  # new series cannot be backtested
        known = known_covariates(future)
        for name, factory in factories.items():
            forecaster = factory()
            if isinstance(forecaster, LightGBMForecaster):
                forecaster.fit(history, items=data.items)
                fitted = forecaster
            else:
                forecaster.fit(history)
            forecasts[name].append(forecaster.predict(history, plan=known))
        for name, run in (extra or {}).items():
            forecasts[name].append(run(history, DemandData(future, data.items, known)))
        actuals.append(future)
        histories.append(history)
    actual = pd.concat(actuals, ignore_index=True)
    history_all = histories[-1]
    scores = {
        name: accuracy(actual, pd.concat(f, ignore_index=True), history_all)
        for name, f in forecasts.items()
    }
    assert fitted is not None
    return BacktestResult(
        metrics=scores.pop("model"),
        baselines={k: scores.pop(k) for k in ("seasonal_naive", "moving_average")},
        others=scores,
        series=int(panel[SERIES].nunique()),
        rows=len(actual),
        seconds=time.perf_counter() - started,
        last_forecast=forecasts["model"][-1],
        last_actual=actuals[-1],
        model=fitted,
    )
