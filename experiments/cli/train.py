"""``omni train``, ``omni backtest`` and ``omni forecast``: models logged, registered, used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from experiments.cli.app import (
    CsvOut,
    DataOpt,
    Engine,
    Freq,
    Horizon,
    UsageError,
    app,
    backtest_app,
    checked_engine,
    err,
    file_out,
    identity_config,
    out,
    train_app,
)


@train_app.command("recommender")
def train_recommender_cmd(
    data: DataOpt,
    config: Annotated[Path | None, typer.Option(help="Candidates TOML.")] = None,
    metrics_out: Annotated[
        Path | None, typer.Option(help="Write the selected model's metrics.", callback=file_out)
    ] = None,
    engine: Engine = "inprocess",
) -> None:
    """Select a recommender on a time split, log every candidate, register the best."""
    from experiments.pipelines import training

    identity_config()  # warn about the demo salt before the long work
    result = training.train_recommender(data, config, engine=checked_engine(engine))
    metrics = {m: round(v, 4) for m, v in result.selected.metrics.items()}
    table = Table("metric", "value", title=f"selected: {result.selected.candidate.label}")
    for name, value in result.selected.metrics.items():
        table.add_row(name, f"{value:.4f}")
    out.print(table)
    print_skipped(result.skipped)
    out.print(result.message)
    if metrics_out:
        payload = {
            "model": result.selected.candidate.label,
            "metrics": metrics,
            "seconds": round(result.seconds, 1),
        }
        metrics_out.write_text(json.dumps(payload) + "\n")


Windows = Annotated[int, typer.Option(help="Test windows, ending at the last period.")]


@train_app.command("forecaster")
def train_forecaster_cmd(
    data: DataOpt,
    horizon: Horizon,
    freq: Freq = "D",
    windows: Windows = 3,
    engine: Engine = "inprocess",
) -> None:
    """Backtest, fit on all data, register demand_forecaster; champion only if it wins."""
    from experiments.pipelines import training

    trained = training.train_forecaster(
        data, horizon=horizon, freq=freq, windows=windows, engine=checked_engine(engine)
    )
    print_backtest(trained.backtest, "backtest of the new forecaster")
    out.print(trained.message)


@backtest_app.command("forecaster")
def backtest_forecaster_cmd(
    data: DataOpt,
    horizon: Horizon,
    freq: Freq = "D",
    windows: Windows = 3,
    metrics_out: Annotated[
        Path | None, typer.Option(help="Write the metrics as JSON.", callback=file_out)
    ] = None,
    engine: Engine = "inprocess",
) -> None:
    """Backtest the forecaster and its baselines; log to MLflow with plots."""
    from experiments.pipelines import forecaster, training
    from models.forecast import counted

    with forecaster.engine(checked_engine(engine)) as (load, trainer):
        # The events the service logged count, as in omni train forecaster: the same data.
        demand = load(data, freq, lambda: training.logged_events()[0])
        result = forecaster.backtest(
            demand, horizon=horizon, freq=freq, windows=windows, trainer=trainer
        )
    training.log_backtest(
        result,
        {
            **training.provenance(data),
            "horizon": horizon,
            "freq": freq,
            "windows": windows,
            "engine": engine,
        },
    )
    print_backtest(result, f"backtest: {counted(windows, 'window')} of {horizon} {freq}")
    if metrics_out:
        metrics_out.write_text(json.dumps(backtest_payload(result)) + "\n")


@app.command("forecast")
def forecast_cmd(
    store: Annotated[str, typer.Option(help="Store id.")],
    horizon: Annotated[
        int | None, typer.Option(help="Periods ahead (default: the model's).")
    ] = None,
    items: Annotated[
        list[str] | None, typer.Option("--items", help="Item ids (repeatable).")
    ] = None,
    out_file: CsvOut = None,
) -> None:
    """The champion forecaster's P10 / P50 / P90 for one store, for planners."""
    from models.forecast import forecast_for_planners

    model = champion_forecaster()
    forecast = forecast_for_planners(model.forecast(store, items, horizon))  # /forecast's columns
    table = Table("item", "period", "mean", "P10", "P50", "P90", "method", title=f"store {store}")
    for row in forecast.to_dict(orient="records"):
        table.add_row(
            str(row["item_id"]), str(row["period_end"]),
            *(_units(row[q]) for q in ("mean", "p10", "p50", "p90")), str(row["method"]),
        )  # fmt: skip
    out.print(table)
    out.print(
        f"Trained on sales to {model.history_end_.date()} (the forecast follows it); P10-P90: "
        f"{model.intervals_.label}.",
        highlight=False,
    )
    if out_file:
        forecast.to_csv(out_file, index=False)
        out.print(f"written to {out_file}")


def champion_forecaster() -> Any:
    from models.errors import NoChampion
    from models.forecast import LightGBMForecaster
    from serving.registry import FORECASTER, champion

    try:
        return LightGBMForecaster.load(champion(FORECASTER)[1])
    except NoChampion as exc:
        raise UsageError(f"{exc} Run omni train forecaster first.") from exc


def backtest_payload(result: Any) -> dict[str, Any]:
    model = result.model
    return {
        "metrics": _rounded(result.metrics),
        "intervals": {
            "method": model.intervals_.label,
            "held_out_rows": model.intervals_.held_out,
            "pinball_by_method": _rounded(model.intervals_.pinball),
            "coverage_by_method": _rounded(model.intervals_.coverage),
        },
        "objective": model.objective_,
        "rounds": model.rounds_,
        "warnings": result.warnings,
        "notes": result.notes,
        "baselines": {k: _rounded(v) for k, v in result.baselines.items()},
        **({"others": {k: _rounded(v) for k, v in result.others.items()}} if result.others else {}),
        "series": result.series,
        "rows": result.rows,
        "seconds": round(result.seconds, 1),
    }


def _units(value: float) -> str:
    """Units as the data count them: 12 pieces, or 0.43 kg (not rounded to 0)."""
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items()}


def print_backtest(result: Any, title: str) -> None:
    for warning in [*result.gaps, *result.notes, *result.warnings]:
        err.print(f"warning: {warning}", highlight=False)
    table = Table("forecaster", "WAPE", "RMSSE", "bias", "pinball", "coverage 80%", title=title)
    rows = {"lightgbm (ours)": result.metrics, **result.baselines, **result.others}
    for name, m in rows.items():
        values = (m["wape"], m["rmsse"], m["bias"], m["pinball"], m.get("coverage_80"))
        table.add_row(name, *("—" if v is None else f"{v:.4f}" for v in values))
    out.print(table)
    m = result.metrics
    quintiles = [m[f"coverage_80_q{q}"] for q in range(1, 6) if f"coverage_80_q{q}" in m]
    out.print(f"the last origin's intervals: {result.model.intervals_.label}.")
    out.print(
        f"over every window: pinball {m['pinball_vs_point']:.3f} x the point forecast's; 80% "
        f"coverage by volume quintile (lowest first) {', '.join(f'{c:.3f}' for c in quintiles)}."
    )
    model = result.model
    out.print(
        f"the last origin's models: {model.objective_} objective, rounds "
        f"{', '.join(map(str, model.rounds_))} of {model.n_estimators}."
    )
    best = min(m["wape"] for m in result.baselines.values())
    gain = 1 - result.metrics["wape"] / best if best else None
    against = (
        "a baseline forecast every test period exactly (WAPE 0)"
        if gain is None
        else f"WAPE {abs(gain):.1%} {'below' if gain >= 0 else 'above'} the best baseline's"
    )
    size = f"{result.series} series, {result.rows} test rows, {result.seconds:.0f} s"
    out.print(f"{against}; {size}.")


def print_skipped(skipped: list) -> None:
    for candidate, reason in skipped:
        out.print(f"skipped {candidate.label}: {reason}", highlight=False)
