"""``omni report kpis``: what the recommendations and offers did, per channel and across."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from experiments.cli.app import UsageError, file_out, identity_config, out, report_app
from features.demand import PERIOD

Since = Annotated[str, typer.Option(help="ISO time: the first exposure counted (UTC).")]


@report_app.command("kpis")
def report_kpis_cmd(
    since: Since,
    until: Annotated[str | None, typer.Option(help="ISO time: the last (default now).")] = None,
    window_days: Annotated[
        float, typer.Option(help="Days after an exposure a view or purchase counts for it.")
    ] = 7.0,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="With this data directory's inventory: the stock side too."),
    ] = None,
    metrics_out: Annotated[
        Path | None, typer.Option(help="Write the table as JSON.", callback=file_out)
    ] = None,
    log_mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log to MLflow.")] = True,
) -> None:
    """Exposures, view-through and purchase conversion, attributed revenue, cross-channel
    purchases and the uplift against the control arm (95% interval), per channel and route,
    from the exposure log and the events in the event store ($OMNI_EVENTS_URL); customers are
    unified as the recommender champion unified them. With --data, the stock side too:
    stock-out hours, the units they lost (the forecaster champion's demand), units sold,
    turnover and the books against stock counts."""
    from experiments.pipelines.measurement import champion_context, log_kpis, stock_side
    from features.eventlog import EventLog
    from features.measurement import measure, period, plain, records

    try:
        start, end, window = period(since, until, window_days)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    key_ids, prices = champion_context()
    log = EventLog.from_env()
    try:
        table = measure(log, identity_config().salt, key_ids, start, end, window, prices)
        stock = stock_side(data, log, start, end) if data else None
    finally:
        log.close()
    _print(table, start, end, window_days)
    payload = {"since": str(start), "until": str(end), "window_days": window_days}
    payload["rows"] = records(table)
    if stock is not None:
        _print_stock(*stock)
        payload["stock"] = plain(stock[1])
        payload["forecast_by_period_and_store"] = records(stock[2].astype({PERIOD: str}))
    if metrics_out:
        metrics_out.write_text(json.dumps(payload, indent=2) + "\n")
    if log_mlflow and (len(table) or stock is not None):
        log_kpis(table, start, end, window_days, stock[1] if stock else None)


def _print(table: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, days: float) -> None:
    shown = Table(
        "route", "channel", "exposures", "customers", "view-through", "conversion", "revenue",
        "cross-channel", "customers converted: treated - control = uplift (95%, one look)",
        "any time 95%",
        title=f"KPIs {start} - {end}, {days:g}-day window",
    )  # fmt: skip
    for row in table.to_dict(orient="records"):
        measured = not math.isnan(row["uplift"])
        if measured:
            uplift = (
                f"{row['treated_conversion']:.1%} - {row['control_conversion']:.1%} = "
                f"{row['uplift']:+.3f} ({row['uplift_low']:+.3f}, {row['uplift_high']:+.3f})"
            )
        else:
            uplift = "no treated customer" if row["control_customers"] else "no control arm"
        anytime = (
            f"({row['uplift_anytime_low']:+.3f}, {row['uplift_anytime_high']:+.3f})"
            if measured
            else "-"
        )
        shown.add_row(
            str(row["route"]), str(row["channel"]), str(row["exposures"]), str(row["customers"]),
            _pct(row["view_through"]), _pct(row["conversion"]), f"{row['revenue']:,.2f}",
            _pct(row["cross_channel_share"]), uplift, anytime,
        )  # fmt: skip
    out.print(shown if len(table) else "No exposures in that period.")


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def _print_stock(pairs: pd.DataFrame, summary: dict, accuracy: pd.DataFrame) -> None:
    by_store = pairs.groupby("node_id").agg(
        stockout_hours=("stockout_hours", "sum"), lost_units=("lost_units", "sum"),
        sold=("sold", "sum"), average_on_hand=("average_on_hand", "sum"),
    )  # fmt: skip
    shown = Table("node", "stock-out h", "lost units (est.)", "sold", "turnover", title="stock")
    for node, row in by_store.iterrows():
        turnover = row["sold"] / row["average_on_hand"] if row["average_on_hand"] > 0 else math.nan
        shown.add_row(
            str(node), f"{row['stockout_hours']:,.0f}", f"{row['lost_units']:,.1f}",
            f"{row['sold']:,.0f}", "-" if math.isnan(turnover) else f"{turnover:.2f}",
        )  # fmt: skip
    out.print(shown)
    out.print(
        f"Out of stock {_pct(summary['stockout_share'])} of the time, about "
        f"{summary['lost_units']:,.0f} units lost (fill rate {_pct(summary['fill_rate'])}); "
        f"turnover {summary['turnover']:.2f}; "
        + (
            f"{summary['counts']} stock counts, mean |error| {summary['count_mean_abs_error']:.2f}."
            if summary["counts"]
            else "no stock counts in the period."
        )
    )
    if not len(accuracy):
        out.print("Forecast accuracy: no actuals have come in yet for the forecast's periods.")
        return
    weeks = Table("period", "store", "units", "WAPE", title="forecast accuracy")
    for record in accuracy.to_dict(orient="records"):
        weeks.add_row(
            str(pd.Timestamp(record[PERIOD]).date()), str(record["store_id"]),
            f"{record['units']:,.0f}", _pct(record["wape"]),
        )  # fmt: skip
    out.print(weeks)
