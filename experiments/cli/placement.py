"""``omni placement``: backtest the placement policy, or plan one item's allocation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from experiments.cli.app import (
    CsvOut,
    DataOpt,
    FiguresOut,
    Freq,
    UsageError,
    err,
    out,
    placement_app,
)
from experiments.cli.train import (
    champion_forecaster,
)
from features.measurement import plain


@placement_app.command("simulate")
def placement_simulate_cmd(
    data: DataOpt,
    horizon: Annotated[int, typer.Option(help="Coverage period, in periods.")],
    freq: Freq = "W",
    supply: Annotated[str, typer.Option(help="Supply ratios, comma-separated.")] = "0.9,1.1",
    windows: Annotated[int, typer.Option(help="Origins, ending at the last period.")] = 4,
    transfer_cost: Annotated[
        float | None,
        typer.Option(
            help="What moving a unit between stores costs, in the margin's units (default "
            "0.1): the policy is also played with transfers after the first half of the period.",
            min=0,
        ),
    ] = None,
    metrics_out: FiguresOut = None,
) -> None:
    """Backtest placement: our policy against proportional and equal splits and the oracle
    that knows the demand, at equal stock; and the policy with mid-period transfers."""
    from experiments.pipelines import placement

    try:
        ratios = tuple(float(r) for r in supply.split(","))
    except ValueError as exc:
        raise UsageError(f"--supply must be numbers separated by commas, not {supply!r}.") from exc
    result = placement.simulate(
        data,
        horizon=horizon,
        freq=freq,
        supply=ratios,
        windows=windows,
        transfer_cost=placement.TRANSFER_COST if transfer_cost is None else transfer_cost,
    )
    params = {
        "data": str(data),
        "horizon": horizon,
        "freq": freq,
        "supply": supply,
        "transfer_cost": result.transfer_cost,
    }
    report_simulation(result, {**params, "windows": windows}, metrics_out)


def report_simulation(result: Any, params: dict[str, Any], metrics_out: Path | None) -> None:
    """The placement backtest's table and verdicts, logged to MLflow and written as JSON."""
    import mlflow

    from experiments.pipelines import placement

    table = Table(
        "supply",
        "allocation",
        "fill rate",
        "lost units",
        "leftover units",
        title="placement backtest",
    )
    for ratio, blocks in result.by_supply.items():
        for policy, m in blocks.items():
            table.add_row(
                f"{ratio:g}",
                policy,
                f"{m['fill_rate']:.3f}",
                f"{m['lost_units']:,.0f}",
                f"{m['leftover_units']:,.0f}",
            )
    out.print(table)
    closed = result.gap_closed()
    bounded = placement.TRUE_DISTRIBUTION in next(iter(result.by_supply.values()))
    attainable = result.gap_closed(placement.TRUE_DISTRIBUTION) if bounded else {}

    def by_ratio(shares: dict[float, float]) -> dict[str, float | None]:
        return plain({f"{r:g}": v for r, v in shares.items()})

    def fewer(lost: float, than: float) -> str:
        """How the policy's lost units compare with another allocation's (named after it)."""
        if lost == than:
            return "as many lost units as"
        if not than:
            return f"{lost:,.0f} lost units against none for"
        change = 1 - lost / than
        return f"{abs(change):.1%} {'fewer' if change > 0 else 'more'} lost units than"

    for ratio, blocks in result.by_supply.items():
        lost = {p: blocks[p]["lost_units"] for p in blocks}
        out.print(
            f"supply {ratio:g}: {fewer(lost['policy'], lost['proportional'])} proportional, "
            f"{fewer(lost['policy'], lost['equal'])} equal; of the gap between the best simple "
            f"split and the oracle {closed[ratio]:.1%} closed"
            + (
                f", and {attainable[ratio]:.1%} of the gap to the allocation from the true "
                "demand distribution."
                if bounded
                else "."
            )
        )
    transfers = result.transfers()
    if result.transfer_cost is None:
        out.print("transfers: not played (a coverage period of one period has no middle).")
    for ratio, moved in transfers.items():
        out.print(
            f"supply {ratio:g}: transfers after the first half of the period (cost "
            f"{result.transfer_cost:g} a unit) moved {moved['units_moved']:,.0f} units and lost "
            f"{moved['fewer_lost_units']:,.0f} fewer than the policy alone: net value "
            f"{moved['net_value']:+,.1f} (a sale's margin {result.economics.unit_margin:g}, a "
            f"unit left over {result.economics.unit_holding:g})."
        )
    totals = result.totals()
    payload = {
        "policy": totals["policy"],
        "baselines": {k: totals[k] for k in placement.SIMPLE},
        "oracle": totals["oracle"],
        "gap_closed": by_ratio(closed),
        **(
            {
                "gap_closed_true_distribution": by_ratio(attainable),
                "true_distribution": totals[placement.TRUE_DISTRIBUTION],
            }
            if bounded
            else {}
        ),
        "transfers": {
            "transfer_cost": result.transfer_cost,
            "by_supply": {f"{r:g}": figures for r, figures in transfers.items()},
        },
        "supply": list(result.by_supply),
        "by_supply": {f"{r:g}": blocks for r, blocks in result.by_supply.items()},
        "items": result.items,
        "windows": result.windows,
        "seconds": round(result.seconds, 1),
    }
    mlflow.set_experiment("placement")
    with mlflow.start_run(run_name=f"simulate h={params.get('horizon')}"):
        mlflow.log_params(params)
        for ratio, blocks in result.by_supply.items():
            for policy, m in blocks.items():
                mlflow.log_metrics({f"{policy}_{k}_supply{ratio:g}": v for k, v in m.items()})
            mlflow.log_metric(f"gap_closed_supply{ratio:g}", closed[ratio])
            if ratio in transfers:  # (units_moved: in policy_with_transfers_... above)
                mlflow.log_metrics(
                    {
                        f"transfers_{k}_supply{ratio:g}": transfers[ratio][k]
                        for k in ("fewer_lost_units", "net_value")
                    }
                )
            if bounded:
                mlflow.log_metric(f"gap_closed_true_supply{ratio:g}", attainable[ratio])
    if metrics_out:
        metrics_out.write_text(json.dumps(payload, default=float) + "\n")


@placement_app.command("plan")
def placement_plan_cmd(
    item: Annotated[str, typer.Option(help="Item id.")],
    units: Annotated[
        int | None,
        typer.Option(help="Units to place (default: the DC's available now).", min=0, max=10**9),
    ] = None,
    dc: Annotated[
        str | None, typer.Option(help="The DC whose stock to place (default: the only one).")
    ] = None,
    horizon: Annotated[
        int | None, typer.Option(help="Coverage periods (default: the model's).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Plan from this data dir's latest inventory snapshot and plan table."),
    ] = None,
    pack_size: Annotated[int, typer.Option(help="Units per pack.")] = 1,
    out_file: CsvOut = None,
) -> None:
    """Allocate units of an item — by default the DC's — across stores from the champion
    forecaster: by default from the stock available to promise now, as /placement answers; with
    --data, from DIR's files."""
    from experiments.pipelines import forecaster, placement
    from features.ingest import load_dataset
    from models.placement import plan_item, planner_view, units_to_place

    if data is None:
        from experiments.pipelines.scoring import served_state

        state = served_state()
        on_hand = state.rules.available(item)
        dc, units = units_to_place(units, dc, state.dcs, on_hand)
        allocation = plan_item(
            state.forecaster, state.forecast_all(), item, units, horizon=horizon,
            on_hand=on_hand, pack_size=pack_size,
        )  # fmt: skip
        err.print(
            "Stock: available to promise now, as /placement sees it (the champion's snapshot "
            "and every movement and sale logged since).",
            highlight=False,
        )
    else:
        tables = load_dataset(data, ("inventory",))  # the stock, checked before the rest
        snapshot = forecaster.latest_on_hand(tables, item)
        dc, units = units_to_place(units, dc, placement.dcs(data), snapshot)  # before the model
        model = champion_forecaster()
        rest = tuple(name for name in forecaster.DEMAND_TABLES if name != "inventory")
        tables.update(load_dataset(data, rest))  # the inventory read once, for the demand too
        demand = forecaster.load_demand(data, model.freq, tables=tables)
        allocation = placement.plan(
            model, item, units, horizon=horizon, data=demand, on_hand=snapshot,
            pack_size=pack_size,
        )  # fmt: skip
        err.print(f"Stock: the latest inventory snapshot in {data}.", highlight=False)
    result = planner_view(allocation)  # /placement's stores
    table = Table(
        "store", "on hand", "send", "stock after", "exp. demand", "exp. sales", "fill rate",
        "exp. lost", "exp. leftover", title=f"{item}: {units} units",
    )  # fmt: skip
    formats = {
        "on_hand": ".0f", "send": ".0f", "final_stock": ".0f", "expected_demand": ".1f",
        "expected_sales": ".1f", "expected_fill_rate": ".2f", "expected_lost": ".1f",
        "expected_leftover": ".1f",
    }  # fmt: skip
    for row in result.to_dict(orient="records"):
        table.add_row(str(row["store_id"]), *(format(row[k], f) for k, f in formats.items()))
    out.print(table)
    sent = int(result["send"].sum())
    out.print(f"{sent} units sent, {units - sent} kept at {dc or 'the DC'}.")
    if out_file:
        result.to_csv(out_file, index=False)
        out.print(f"written to {out_file}")
