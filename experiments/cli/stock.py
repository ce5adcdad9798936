"""``omni stock report``: stock-side KPIs from the event store's movements and sales."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from experiments.cli.app import DataOpt, UsageError, file_out, out, stock_app


@stock_app.command("report")
def stock_report_cmd(
    data: DataOpt,
    until: Annotated[
        str | None, typer.Option(help="ISO time the report runs to (default: now, UTC).")
    ] = None,
    top: Annotated[
        int, typer.Option(help="Pairs with the most stock-out hours shown.", min=0)
    ] = 10,
    pairs_out: Annotated[
        Path | None, typer.Option(help="Write every pair as CSV.", callback=file_out)
    ] = None,
    metrics_out: Annotated[
        Path | None, typer.Option(help="Write the totals as JSON.", callback=file_out)
    ] = None,
) -> None:
    """Stock-out hours per node and item, and how far the books were from each stock count:
    the inventory snapshot of DATA, then the movements and sales in the event store
    ($OMNI_EVENTS_URL), as the service's stock picture sees them."""
    from experiments.pipelines.measurement import stock_trail
    from features.eventlog import EventLog
    from features.measurement import plain, utc_time
    from features.stock import stock_kpis

    try:
        end = utc_time(until, "--until") if until else pd.Timestamp.now(tz="UTC").tz_localize(None)
    except ValueError as exc:
        raise UsageError(f"--until {until!r} is not an ISO time.") from exc
    log = EventLog.from_env()
    try:
        history = stock_trail(data, log, log.read())
    finally:
        log.close()
    if history.empty:
        raise UsageError(
            f"No stock to report: {data} has no inventory snapshot and the event store no "
            "stock movement."
        )
    pairs, summary = stock_kpis(history, until=end)
    if pairs.empty:
        raise UsageError(f"No stock to report up to {end.isoformat()}: the stock starts later.")
    table = Table("node", "item", "stock-out h", "on hand", "counts", title="most hours out")
    for row in pairs.nlargest(top, "stockout_hours").itertuples():
        table.add_row(
            str(row.node_id), str(row.item_id), f"{row.stockout_hours:.1f}", f"{row.on_hand:g}",
            str(row.counts),
        )  # fmt: skip
    out.print(table)
    out.print(
        f"{summary['pairs']} node/item pairs to {end.isoformat()}: out of stock "
        f"{summary['stockout_share']:.1%} of the time ({summary['stockout_hours']:.0f} h); "
        + (
            f"{summary['counts']} stock counts, {summary['counts_exact']:.0%} matching the "
            f"books, mean |error| {summary['count_mean_abs_error']:.2f} units, mean error "
            f"{summary['count_mean_error']:+.2f}."
            if summary["counts"]
            else "no stock counts."
        )
    )
    if pairs_out:
        pairs.to_csv(pairs_out, index=False)
    if metrics_out:
        payload = {**plain(summary), "until": end.isoformat()}
        metrics_out.write_text(json.dumps(payload, indent=2) + "\n")
