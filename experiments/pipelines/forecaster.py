"""Rolling-origin backtests of the demand forecaster against baselines and mlforecast."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.pipelines.memory import give_back_memory
from features.demand import (
    PERIOD,
    SERIES,
    TARGET,
    build_panel,
    frequency,
    rolling_origins,
    sales_from_events,
    silent_stretches,
    split_at,
)
from features.eventlog import with_logged
from features.ingest import ContractError, LoadedTable, find_table_files, load_dataset
from models.forecast import (
    CalibrationWarning,
    Forecaster,
    LightGBMForecaster,
    MovingAverage,
    SeasonalNaive,
    Trainer,
    counted,
    pinball_loss,
    train_here,
)


@dataclass
class DemandData:
    panel: pd.DataFrame
    items: pd.DataFrame | None
    plan: pd.DataFrame | None


#: The tables :func:`load_demand` reads besides the events.
DEMAND_TABLES = ("sales", "inventory", "items", "plan")


def load_demand(
    data_dir: Path,
    freq: str,
    logged: Callable[[], pd.DataFrame] | None = None,
    tables: dict[str, LoadedTable] | None = None,
) -> DemandData:
    """The demand panel of a data directory: the ``sales`` table when present, else purchase and
    return events by fulfilling store (with the events ``logged()`` reads from the service, if
    given — only then: a sales table is the tills' own record, which already holds them);
    ``inventory`` marks censored periods. ``tables``: :data:`DEMAND_TABLES` as the caller
    already loaded them (default: read here)."""

    def sales_of_events() -> pd.DataFrame:
        events = load_dataset(data_dir, ("events",))["events"].accepted
        return sales_from_events(with_logged(events, logged() if logged else None))

    tables = tables if tables is not None else load_dataset(data_dir, DEMAND_TABLES)
    has_events = "events" in find_table_files(data_dir)
    return demand_data(data_dir, tables, sales_of_events if has_events else None, freq)


def demand_data(
    data_dir: Path,
    tables: dict[str, LoadedTable],
    sales_of_events: Callable[[], pd.DataFrame] | None,
    freq: str,
) -> DemandData:
    """The demand panel from a data directory's loaded ``sales`` (when it has rows),
    ``inventory``, ``items`` and ``plan`` tables, else from ``sales_of_events()`` (None: no
    events table); the events are read only when the sales table does not serve."""
    if "sales" in tables and len(tables["sales"].accepted):
        sales = tables["sales"].accepted
    elif sales_of_events is not None:
        sales = sales_of_events()
    else:
        raise ContractError(f"{data_dir} has no sales or purchase events to forecast from.")
    accepted = {name: table.accepted for name, table in tables.items()}
    panel = build_panel(sales, freq=freq, inventory=accepted.get("inventory"))
    del sales
    give_back_memory()  # the panel's temporaries: several times its size
    return DemandData(panel, accepted.get("items"), accepted.get("plan"))


@contextmanager
def engine(name: str = "inprocess") -> Iterator[tuple[Callable[..., DemandData], Trainer]]:
    """How demand is loaded (``load(data_dir, freq, logged=None)``) and LightGBM trained: in
    this process, or with ``"dask"`` on the cluster of ``$OMNI_DASK_SCHEDULER`` (the daily
    sales summed and the models trained there; experiments/pipelines/distributed.py)."""
    if name != "dask":
        yield load_demand, train_here
        return
    from experiments.pipelines.distributed import dask_client, load_demand_on, trainer_on

    with dask_client() as client:
        yield functools.partial(load_demand_on, client), trainer_on(client)


def known_covariates(future: pd.DataFrame) -> pd.DataFrame:
    """A panel's future rows as a ``plan``: prices, promotions and ``x_*``, never the target."""
    return future.drop(columns=[TARGET, "censored"]).rename(columns={PERIOD: "date"})


def latest_on_hand(tables: dict[str, LoadedTable], item_id: str) -> pd.Series | None:
    """Each store's latest on-hand stock of an item in the loaded ``inventory`` table (None
    without one)."""
    if "inventory" not in tables:
        return None
    stock = tables["inventory"].accepted
    stock = stock[stock["item_id"] == item_id].sort_values("date")
    return stock.drop_duplicates("store_id", keep="last").set_index("store_id")["on_hand"]


def accuracy(
    actual: pd.DataFrame, forecast: pd.DataFrame, history: pd.DataFrame
) -> dict[str, float]:
    """Accuracy of a forecast over uncensored actuals.

    ``wape``, ``rmsse`` and ``bias`` are of the ``mean`` forecast. RMSSE is M5's: per series,
    the RMSE scaled by the in-sample one-step naive RMSE, averaged over series whose history is
    not constant. ``pinball`` is the mean pinball loss over P10 / P50 / P90 and
    ``pinball_vs_point`` its ratio to the pinball of the mean used for all three (below 1: the
    quantiles add something). ``coverage_80`` is the share of actuals between P10 and P90,
    overall and per volume quintile of series (``coverage_80_q1`` the lowest fifth, by mean
    demand over ``history``); left out for a point forecast (P10 = P90 everywhere: it would
    count only exact hits, zeros mostly).
    """
    joined = scored(actual, forecast, history)
    y = joined[TARGET].to_numpy()
    p50 = joined["mean"].to_numpy()  # the point forecast: expected demand
    total = y.sum()
    pinball = pinball_loss(y, tuple(joined[c].to_numpy() for c in ("p10", "p50", "p90")))
    point = pinball_loss(y, (p50, p50, p50))
    naive = history.sort_values([SERIES, PERIOD]).groupby(SERIES, observed=True)[TARGET].diff()
    scale = (naive**2).groupby(history[SERIES], observed=True).mean()
    errors = joined.assign(se=(y - p50) ** 2).groupby(SERIES, observed=True)["se"].mean()
    scaled = (errors / scale.reindex(errors.index)).replace([np.inf, -np.inf], np.nan).dropna()
    covered, quintile = joined["covered"].to_numpy(), joined["quintile"].to_numpy() - 1
    metrics = {
        "wape": float(np.abs(y - p50).sum() / total) if total else float("nan"),
        "rmsse": float(np.sqrt(scaled).mean()) if len(scaled) else float("nan"),
        "bias": float((p50.sum() - total) / total) if total else float("nan"),
        "pinball": pinball,
        "pinball_vs_point": pinball / point if point else float("nan"),
    }
    if not (joined["p90"] > joined["p10"]).any():
        return metrics
    return {
        **metrics,
        "coverage_80": float(np.mean(covered)),
        **{
            f"coverage_80_q{q + 1}": float(np.mean(covered[quintile == q]))
            for q in range(5)
            if (quintile == q).any()
        },
    }


def volume_quintile(series: pd.Series, history: pd.DataFrame) -> np.ndarray:
    """The volume quintile (0 = the lowest fifth) of each row's series, by the series' mean
    demand over ``history``; each series counts once."""
    volume = history.groupby(SERIES, observed=True)[TARGET].mean().reindex(series.unique())
    rank = volume.rank(method="first").to_numpy() - 1
    quintiles = dict(zip(volume.index, rank * 5 // max(len(volume), 1), strict=True))
    return series.map(quintiles).to_numpy()


def coverage_table(
    actual: pd.DataFrame, forecast: pd.DataFrame, history: pd.DataFrame
) -> pd.DataFrame:
    """80% interval coverage per volume quintile of series (rows, 1 = the lowest fifth) and
    lead (columns) of a forecast with a ``lead`` column, over uncensored actuals."""
    return scored(actual, forecast, history).pivot_table(
        index="quintile", columns="lead", values="covered", aggfunc="mean"
    )


def scored(actual: pd.DataFrame, forecast: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """A forecast beside its uncensored actuals, each row with whether P10–P90 ``covered``
    it and its series' volume ``quintile`` (1 = the lowest fifth)."""
    joined = actual[~actual["censored"]].merge(forecast, on=[SERIES, PERIOD], how="inner")
    joined["quintile"] = volume_quintile(joined[SERIES], history) + 1
    joined["covered"] = (joined[TARGET] >= joined["p10"]) & (joined[TARGET] <= joined["p90"])
    return joined


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
    coverage: pd.DataFrame = field(default_factory=pd.DataFrame)  # see coverage_table
    fit_seconds: float = 0.0  # the model's fits, every origin
    warnings: list[str] = field(default_factory=list)  # calibration warnings, once each
    gaps: list[str] = field(default_factory=list)  # stretches with no sale anywhere
    notes: list[str] = field(default_factory=list)  # a baseline or series not as the table says


Factory = Callable[[], Forecaster]


def backtest_origins(
    panel: pd.DataFrame, horizon: int, windows: int, model: Forecaster
) -> list[np.datetime64]:
    """The origins of ``windows`` rolling windows of ``horizon`` periods, or one sentence naming
    the longest horizon that leaves room for the windows and, before the first origin, enough
    history for the ``model`` of that lead (a LightGBM forecaster's :meth:`longest_lead`)."""
    periods = np.sort(panel[PERIOD].unique())

    def fits(h: int) -> bool:
        if len(periods) < h * windows + 2:
            return False
        if not isinstance(model, LightGBMForecaster):
            return True
        return model.longest_lead(panel[panel[PERIOD] <= periods[-h * windows - 1]]) >= h

    if horizon < 1 or windows < 1 or fits(horizon):
        return rolling_origins(panel, horizon, windows)
    low, high = 0, horizon - 1  # the longest that fits lies in [low, high]: halve the range
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    window = counted(windows, "backtest window")
    advice = (
        f"the longest horizon they allow is {low}"
        if low
        else "no horizon fits; use fewer windows or a longer history"
    )
    raise ValueError(
        f"{len(periods)} periods of history are too few for {window} of {horizon}: {advice}."
    )


def backtest(
    data: DemandData,
    *,
    horizon: int,
    freq: str,
    windows: int = 3,
    model: Factory | None = None,
    extra: dict[str, Callable[[pd.DataFrame, DemandData], pd.DataFrame]] | None = None,
    trainer: Trainer = train_here,
) -> BacktestResult:
    """Rolling origins: ``windows`` test windows of ``horizon`` periods ending at the last period.

    Each origin sees only the periods up to it; the future ``plan`` covariates it gets are the
    ones recorded in the panel (known in advance by the contract), never the targets.
    ``trainer`` trains the LightGBM models (e.g. on a Dask cluster: ``distributed.trainer_on``).
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
    fit_seconds = 0.0
    caught: list[str] = []
    origins = backtest_origins(panel, horizon, windows, factories["model"]())
    if not panel.loc[(panel[PERIOD] > origins[0]) & ~panel["censored"], TARGET].sum() > 0:
        raise ValueError(
            f"The last {horizon * windows} periods hold no sales, so no accuracy can be measured "
            "on them: are the data cut short, or their sales missing?"
        )
    gaps = [
        f"Nothing sold anywhere in {n} consecutive periods ({first:%Y-%m-%d} to {last:%Y-%m-%d}): "
        "they are read as zero demand; if their sales are missing from the data, the models "
        "learn a drop that did not happen."
        for first, last, n in silent_stretches(panel)
    ]
    notes = []  # what the backtest does otherwise than its table suggests
    season = frequency(freq).season
    if panel[PERIOD].nunique() - horizon * windows < season:
        notes.append(
            f"seasonal_naive repeats each series' last period: the history before the test "
            f"windows is shorter than a season ({season} periods)."
        )
    unscored: set[str] = set()
    for origin in origins:
        history, future = split_at(panel, origin, horizon, freq)
        new = ~future[SERIES].isin(history[SERIES])  # new series cannot be backtested
        unscored.update(future.loc[new, SERIES].astype(str))
        future = future[~new]
        known = known_covariates(future)
        for name, factory in factories.items():
            forecaster = factory()
            if isinstance(forecaster, LightGBMForecaster):
                fit_started = time.perf_counter()
                with warnings.catch_warnings(record=True) as raised:
                    warnings.simplefilter("always", CalibrationWarning)
                    forecaster.fit(history, items=data.items, trainer=trainer)
                fit_seconds += time.perf_counter() - fit_started
                caught += [str(w.message) for w in raised if str(w.message) not in caught]
                fitted = forecaster
            else:
                forecaster.fit(history)
            forecast = forecaster.predict(history, plan=known)
            lead = (forecast[PERIOD] - origin) // frequency(freq).step
            forecasts[name].append(forecast.assign(lead=lead))
        for name, run in (extra or {}).items():
            forecasts[name].append(run(history, DemandData(future, data.items, known)))
        actuals.append(future)
        histories.append(history)
    if unscored:
        notes.append(
            f"{len(unscored)} series that began within the test windows "
            f"{'is' if len(unscored) == 1 else 'are'} not scored (no history before their "
            "window); they are forecast once trained on."
        )
    actual = pd.concat(actuals, ignore_index=True)
    history_all = histories[-1]
    scores = {
        name: accuracy(actual, pd.concat(f, ignore_index=True), history_all)
        for name, f in forecasts.items()
    }
    coverage = coverage_table(actual, pd.concat(forecasts["model"], ignore_index=True), history_all)
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
        coverage=coverage,
        fit_seconds=fit_seconds,
        warnings=caught,
        gaps=gaps,
        notes=notes,
    )


def lead_time_check(
    data: DemandData,
    *,
    freq: str,
    near: int = 13,
    far: int = 39,
    references: dict[str, Callable[[int], Callable[[pd.DataFrame, DemandData], pd.DataFrame]]]
    | None = None,
) -> dict[str, dict[str, float]]:
    """WAPE on the first ``near`` periods of a ``far``-period forecast against a ``near``-period
    forecast of the same periods, from one origin ``far`` periods before the end (the model,
    and each reference made for a horizon: ``references[name](horizon)``)."""
    panel = data.panel
    origin = rolling_origins(panel, far, 1)[0]
    history, future = split_at(panel, origin, far, freq)
    future = future[future[SERIES].isin(history[SERIES])]
    first = future[future[PERIOD] <= origin + frequency(freq).step * near]
    known = known_covariates(future)
    runners: dict[str, Callable[[int], Callable[[pd.DataFrame, DemandData], pd.DataFrame]]] = {
        "model": lambda h: (
            lambda history, _: (
                LightGBMForecaster(horizon=h, freq=freq)
                .fit(history, items=data.items)
                .predict(history, plan=known)
            )
        ),
        **(references or {}),
    }
    result = {}
    for name, runner in runners.items():
        wape = {
            horizon: accuracy(
                first, runner(horizon)(history, DemandData(future, data.items, known)), history
            )["wape"]
            for horizon in (near, far)
        }
        result[name] = {
            f"wape_{near}_of_{far}": wape[far],
            f"wape_{near}": wape[near],
            "ratio": wape[far] / wape[near],
        }
    return result
