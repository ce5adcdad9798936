"""``omni score recommender``: every customer's list, as the service would answer it, in a file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from experiments.cli.app import Engine, UsageError, checked_engine, file_out, out, score_app


@score_app.command("recommender")
def score_recommender_cmd(
    out_path: Annotated[
        Path, typer.Option("--out", help="The Parquet file to write.", callback=file_out)
    ],
    n: Annotated[int, typer.Option("--n", help="Items per customer, 1 to 100.")] = 10,
    channel: Annotated[
        str | None,
        typer.Option(help="The channel the lists are for, as /recommend's (default: none)."),
    ] = None,
    store_id: Annotated[
        str | None,
        typer.Option(help="With --channel store: only what this store has available."),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(help="ISO time the lists are for (default: now, UTC); fix it to repeat."),
    ] = None,
    new_only: Annotated[
        bool, typer.Option("--new-only", help="None of the items a customer ever bought.")
    ] = False,
    engine: Engine = "inprocess",
) -> None:
    """Top-n items for every customer the recommender champion knows, through the service's
    rules (bought items, stock, repurchase timing) and the events logged since training
    ($OMNI_EVENTS_URL): customer_id, item_id, score, rank, fallback, arm, model_version,
    as_of."""
    from experiments.pipelines.scoring import score_recommender
    from features.measurement import utc_time

    checked_engine(engine)
    if not 1 <= n <= 100:
        raise UsageError(f"--n is 1 to 100, not {n}.")
    when = utc_time(as_of, "--as-of") if as_of else pd.Timestamp.now(tz="UTC").tz_localize(None)
    started = time.perf_counter()
    recs = score_recommender(
        n, as_of=when, channel=channel, store_id=store_id, new_only=new_only, engine=engine
    )
    recs.to_parquet(out_path, index=False)
    customers = recs["customer_id"].nunique()
    seconds = time.perf_counter() - started
    out.print(
        f"{len(recs)} items for {customers} customers ({recs['fallback'].sum()} rows of "
        f"popularity fallback), as of {when.isoformat()}, in {seconds:.1f} s -> {out_path}"
    )
