"""Rolling-origin backtests of the demand forecaster against baselines and mlforecast."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.demand import PERIOD, SERIES, TARGET, build_panel, sales_from_events
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
    periods = np.sort(panel[PERIOD].unique())
    if len(periods) < horizon * windows + 2:
        raise ValueError(
            f"{len(periods)} periods are too few for {windows} backtest windows of {horizon}."
        )
    factories: dict[str, Factory] = {
        "model": model or (lambda: LightGBMForecaster(horizon=horizon, freq=freq)),
        "seasonal_naive": lambda: SeasonalNaive(horizon, freq),
        "moving_average": lambda: MovingAverage(horizon, freq),
    }
    forecasts: dict[str, list[pd.DataFrame]] = {name: [] for name in [*factories, *(extra or {})]}
    actuals, histories = [], []
    fitted: Forecaster | None = None
    for w in range(windows, 0, -1):
        origin = periods[len(periods) - horizon * w - 1]
        history = panel[panel[PERIOD] <= origin]
        future = panel[
            (panel[PERIOD] > origin)
            & (panel[PERIOD] <= origin + np.timedelta64(_days(freq) * horizon, "D"))
        ]
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


def _days(freq: str) -> int:
    return 1 if freq == "D" else 7


MLFORECAST_VENV = Path(".omni/mlforecast-venv")
MLFORECAST_JOB = Path(__file__).with_name("mlforecast_job.py")


def mlforecast_python(venv: Path = MLFORECAST_VENV) -> Path:
    """The interpreter of the benchmark-only mlforecast environment (created on first use)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "mlforecast==1.1.0",
                "lightgbm>=4,<5",
                "pyarrow",
            ],
            check=True,
        )
    return python


def mlforecast_spec(history: pd.DataFrame, horizon: int, freq: str) -> dict:
    """mlforecast's settings: LightGBM defaults, our lags (those this history can fill, since
    mlforecast drops rows with a missing feature), rolling means, calendar and known covariates."""
    spec = LightGBMForecaster(horizon=horizon, freq=freq).spec()
    n_periods = history[PERIOD].nunique()
    last = history[PERIOD].max()
    return {
        "horizon": horizon,
        "freq": "D" if freq == "D" else f"W-{last.day_name()[:3].upper()}",
        "lags": [lag for lag in spec.lags if lag < n_periods // 2] or [horizon],
        "rolling": {str(lag): list(windows) for lag, windows in spec.rolling.items()},
        "date_features": ["month", "week"] + (["dayofweek"] if freq == "D" else []),
        "exogenous": [
            c for c in history.columns if c in ("unit_price", "on_promo") or c.startswith("x_")
        ],
    }


def mlforecast_runner(
    horizon: int, freq: str
) -> Callable[[pd.DataFrame, DemandData], pd.DataFrame]:
    """mlforecast (LightGBM, default settings) with the same lags and known covariates."""
    python = mlforecast_python()

    def run(history: pd.DataFrame, future: DemandData) -> pd.DataFrame:
        spec = mlforecast_spec(history, horizon, freq)
        columns = [SERIES, PERIOD, TARGET, *spec["exogenous"]]
        frame = history[columns].copy()
        if "unit_price" in frame:
            frame["unit_price"] = frame.groupby(SERIES)["unit_price"].ffill().bfill()
        known = future.panel[[SERIES, PERIOD, *spec["exogenous"]]].copy()
        if "unit_price" in known:
            last_price = frame.groupby(SERIES)["unit_price"].last()
            known["unit_price"] = known["unit_price"].fillna(known[SERIES].map(last_price))
        with tempfile.TemporaryDirectory() as tmp:
            paths = [
                Path(tmp) / name
                for name in ("history.parquet", "future.parquet", "spec.json", "out.parquet")
            ]
            frame.to_parquet(paths[0])
            known.to_parquet(paths[1])
            paths[2].write_text(json.dumps(spec))
            subprocess.run(
                [str(python), str(MLFORECAST_JOB), *map(str, paths)],
                check=True,
                capture_output=True,
            )
            predicted = pd.read_parquet(paths[3])
        point = predicted["point"].clip(lower=0).to_numpy()
        out = predicted[[SERIES, PERIOD]].copy()
        out["mean"] = out["p10"] = out["p50"] = out["p90"] = point
        return out

    return run


def prepare_walmart(source: Path, out: Path) -> Path:
    """Walmart store sales (weekly, store x department) as a contract ``sales`` table.

    ``units`` = Weekly_Sales (dollars; the forecaster treats them as demand), ``x_holiday`` and
    ``x_markdown1..5`` are covariates known in advance; temperature, fuel price, CPI and
    unemployment are not known in advance and are left out.
    """
    raw = pd.read_csv(source)
    sales = pd.DataFrame(
        {
            "date": raw["Date"],
            "store_id": "S" + raw["Store"].astype(str),
            "item_id": "D" + raw["Dept"].astype(str),
            "units": raw["Weekly_Sales"],
            "x_holiday": raw["IsHoliday"],
            **{f"x_markdown{i}": raw[f"MarkDown{i}"] for i in range(1, 6)},
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    sales.to_csv(out / "sales.csv", index=False, na_rep="NA")
    return out


def prepare_completejourney(source: Path, out: Path) -> Path:
    """Complete Journey receipts as a contract ``sales`` table at store x department per day
    (units = quantity); the panel builder aggregates it to weeks."""
    lines = pd.read_csv(
        source / "transactions_sample.csv.gz",
        usecols=["store_id", "product_id", "quantity", "transaction_timestamp"],
        dtype={"store_id": str, "product_id": str},
    )
    products = pd.read_csv(
        source / "products.csv.gz", usecols=["product_id", "department"], dtype=str
    )
    lines = lines.merge(products, on="product_id", how="left")
    lines["department"] = lines["department"].fillna("UNKNOWN")
    lines["date"] = pd.to_datetime(lines["transaction_timestamp"]).dt.strftime("%Y-%m-%d")
    sales = (
        lines.groupby(["date", "store_id", "department"])["quantity"].sum().reset_index()
        .rename(columns={"department": "item_id", "quantity": "units"})
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    sales.to_csv(out / "sales.csv", index=False)
    return out
