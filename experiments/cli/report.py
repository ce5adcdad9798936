"""``omni report kpis``: what the recommendations and offers did, per channel and across."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from experiments.cli.app import UsageError, identity_config, out, report_app

Since = Annotated[str, typer.Option(help="ISO time: the first exposure counted (UTC).")]


@report_app.command("kpis")
def report_kpis_cmd(
    since: Since,
    until: Annotated[str | None, typer.Option(help="ISO time: the last (default now).")] = None,
    window_days: Annotated[
        float, typer.Option(help="Days after an exposure a view or purchase counts for it.")
    ] = 7.0,
    metrics_out: Annotated[Path | None, typer.Option(help="Write the table as JSON.")] = None,
    log_mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log to MLflow.")] = True,
) -> None:
    """Exposures, view-through and purchase conversion, attributed revenue, cross-channel
    purchases and the uplift against the control arm (95% interval), per channel and route,
    from the exposure log and the events in the event store ($OMNI_EVENTS_URL); customers are
    unified as the recommender champion unified them."""
    from experiments.pipelines.measurement import champion_context, log_kpis
    from features.eventlog import EventLog
    from features.measurement import measure, period, records

    try:
        start, end, window = period(since, until, window_days)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    key_ids, prices = champion_context()
    log = EventLog.from_env()
    try:
        table = measure(log, identity_config().salt, key_ids, start, end, window, prices)
    finally:
        log.close()
    _print(table, start, end, window_days)
    if metrics_out:
        payload = {"since": str(start), "until": str(end), "window_days": window_days}
        metrics_out.write_text(json.dumps({**payload, "rows": records(table)}, indent=2) + "\n")
    if log_mlflow and len(table):
        log_kpis(table, start, end, window_days)


def _print(table: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, days: float) -> None:
    shown = Table(
        "route", "channel", "exposures", "customers", "view-through", "conversion", "revenue",
        "cross-channel", "uplift (95%)", title=f"KPIs {start} - {end}, {days:g}-day window",
    )  # fmt: skip
    for row in table.to_dict(orient="records"):
        uplift = (
            "no control arm"
            if math.isnan(row["uplift"])
            else f"{row['uplift']:+.3f} ({row['uplift_low']:+.3f}, {row['uplift_high']:+.3f})"
        )
        shown.add_row(
            str(row["route"]), str(row["channel"]), str(row["exposures"]), str(row["customers"]),
            _pct(row["view_through"]), _pct(row["conversion"]), f"{row['revenue']:,.2f}",
            _pct(row["cross_channel_share"]), uplift,
        )  # fmt: skip
    out.print(shown if len(table) else "No exposures in that period.")


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"
