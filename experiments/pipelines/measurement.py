"""What the KPI report needs beside the logs: the champion's key map and prices, and MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd

from experiments.pipelines.forecaster import DEMAND_TABLES, load_demand
from experiments.pipelines.training import pyplot
from features.demand import PERIOD, TARGET, frequency
from features.eventlog import EventLog, with_logged
from features.ingest import LoadedTable, find_table_files, load_dataset
from features.stock import sales_as_events, stock_history, stock_kpis
from models.forecast import LightGBMForecaster
from serving.registry import CONTEXT_DIR, FORECASTER, RECOMMENDER, champion

EXPERIMENT = "kpis"


def champion_context() -> tuple[dict[str, str], pd.Series | None]:
    """The recommender champion's key map (key pseudonym -> customer_id) and catalogue
    prices by item (None without a catalogue)."""
    context = champion(RECOMMENDER)[1] / CONTEXT_DIR
    keys = pd.read_parquet(context / "customer_keys.parquet")
    items = context / "items.parquet"
    prices = None
    if items.exists():
        catalogue = pd.read_parquet(items)
        if "unit_price" in catalogue:
            prices = catalogue.set_index("item_id")["unit_price"].astype(float)
    return dict(zip(keys["key_id"], keys["customer_id"], strict=True)), prices


def stock_side(
    data_dir: Path, log: EventLog, since: pd.Timestamp, until: pd.Timestamp
) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """The stock side of the period: the stock KPIs (:func:`features.stock.stock_kpis`) from
    the stock trail of ``data_dir`` and the log (:func:`stock_trail`), with the units
    lost to stock-outs estimated by the forecaster champion (its first period's mean demand of
    each store and item, per hour); and that champion's accuracy where actuals have come in
    (:func:`forecast_accuracy`)."""
    logged = log.read(until=until)
    tables = load_dataset(data_dir, DEMAND_TABLES)  # read once, for the stock and the demand
    history = stock_trail(data_dir, log, logged, tables)
    model = LightGBMForecaster.load(champion(FORECASTER)[1])
    forecast = model.predict(model.history_)
    first = forecast[forecast[PERIOD] == forecast[PERIOD].min()]
    hours = 24.0 * frequency(model.freq).days
    rate = first.set_index(["store_id", "item_id"])["mean"].astype(float) / hours
    pairs, summary = stock_kpis(history, until, since, rate)
    demand = load_demand(data_dir, model.freq, lambda: logged, tables)
    accuracy = forecast_accuracy(forecast, demand.panel)
    if len(accuracy):
        summary["forecast_wape"] = float(
            accuracy["absolute_error"].sum() / max(accuracy["units"].sum(), 1e-9)
        )
    return pairs, summary, accuracy


def stock_trail(
    data_dir: Path,
    log: EventLog,
    logged: pd.DataFrame,
    tables: dict[str, LoadedTable] | None = None,
) -> pd.DataFrame:
    """:func:`features.stock.stock_history` from the inventory snapshot of ``data_dir``, the
    logged movements, and what sold: the data directory's ``sales`` table up to its last day
    (the tills' own record, which already holds what the service logged meanwhile) and the
    ``logged`` events after it; without one, its events and the logged ones it does not hold.
    ``tables``: its inventory and sales as the caller already loaded them (default: read)."""
    if tables is None:
        tables = load_dataset(data_dir, ("inventory", "sales"))
    inventory = tables["inventory"].accepted if "inventory" in tables else None
    sales = tables["sales"].accepted if "sales" in tables else None
    if sales is not None and len(sales):
        recorded_to = pd.to_datetime(sales["date"]).max() + pd.Timedelta(days=1)
        later = logged[pd.to_datetime(logged["event_time"]) >= recorded_to]
        sold = pd.concat([sales_as_events(sales), later], ignore_index=True)
    elif "events" in find_table_files(data_dir):
        sold = with_logged(load_dataset(data_dir, ("events",))["events"].accepted, logged)
    else:
        sold = logged
    return stock_history(inventory, log.read_movements(), sold)


def forecast_accuracy(forecast: pd.DataFrame, panel: pd.DataFrame) -> pd.DataFrame:
    """WAPE of a forecast by period and store, over the actual (uncensored) demand that has
    come in for its periods: ``ds, store_id, units, absolute_error, wape``; empty when no
    actuals cover them yet."""
    actual = panel.loc[~panel["censored"], ["store_id", "item_id", PERIOD, TARGET]]
    joined = forecast.merge(actual, on=["store_id", "item_id", PERIOD])
    joined["absolute_error"] = (joined[TARGET] - joined["mean"]).abs()
    by = joined.groupby([PERIOD, "store_id"], as_index=False).agg(
        units=(TARGET, "sum"), absolute_error=("absolute_error", "sum")
    )
    by["wape"] = by["absolute_error"] / by["units"].where(by["units"] > 0)
    return by


def log_kpis(
    table: pd.DataFrame,
    since: pd.Timestamp,
    until: pd.Timestamp,
    days: float,
    stock: dict | None = None,
) -> None:
    """One MLflow run: every figure as a metric (``route.channel.figure``, ``stock.figure``),
    the table as JSON and the uplift per channel with its interval as a plot."""
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=f"kpis {since:%Y-%m-%d} - {until:%Y-%m-%d}"):
        mlflow.log_params({"since": str(since), "until": str(until), "window_days": days})
        if stock:
            mlflow.log_metrics(
                {f"stock.{k}": float(v) for k, v in stock.items() if not math.isnan(float(v))}
            )
        if not len(table):
            return
        figures = table.melt(id_vars=["route", "channel"]).dropna(subset=["value"])
        names = figures["route"] + "." + figures["channel"] + "." + figures["variable"]
        # Channels are named by clients; MLflow takes only these characters in a name.
        names = names.str.replace(r"[^\w.\- /]", "_", regex=True)
        mlflow.log_metrics(dict(zip(names, figures["value"].astype(float), strict=True)))
        mlflow.log_text(json.dumps(table.to_dict(orient="records"), default=str), "kpis.json")
        measured = table.dropna(subset=["uplift"])
        if len(measured):
            plt = pyplot()
            fig, ax = plt.subplots(figsize=(7, 0.5 + 0.4 * len(measured)))
            labels = measured["route"] + " / " + measured["channel"]
            ax.errorbar(
                measured["uplift"], range(len(measured)), fmt="o",
                xerr=[measured["uplift"] - measured["uplift_low"],
                      measured["uplift_high"] - measured["uplift"]],
            )  # fmt: skip
            ax.axvline(0, color="grey", lw=0.8)
            ax.set_yticks(range(len(measured)), labels)
            ax.set_xlabel("uplift of conversion against control (95% interval)")
            fig.tight_layout()
            mlflow.log_figure(fig, "uplift.png")
            plt.close(fig)
