"""``omni``: the one command line of omnichannel-ml."""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from experiments import bench, pipelines
from experiments.synthetic import FORMATS, GeneratorConfig, generate
from features.eventlog import EventStoreUnavailable, redact_urls
from features.identity import DemoSaltWarning, IdentityConfig
from features.ingest import ContractError

app = typer.Typer(
    help="omnichannel-ml: unified customer histories -> recommendations, forecasts, placement.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks (speed, memory, accuracy); print figures for the README.")
app.add_typer(bench_app, name="bench")
train_app = typer.Typer(help="Train, log to MLflow, register; move the champion only if it wins.")
app.add_typer(train_app, name="train")
backtest_app = typer.Typer(help="Rolling-origin backtests, logged to MLflow.")
app.add_typer(backtest_app, name="backtest")
placement_app = typer.Typer(help="Stock placement across stores from the demand forecasts.")
app.add_typer(placement_app, name="placement")
keys_app = typer.Typer(help="API keys for the service (stored as hashes only).")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create_cmd(
    scope: Annotated[
        list[str], typer.Option("--scope", help="recommend, plan or admin (repeatable).")
    ],
) -> None:
    """Create a key and print it once; only its hash is kept (in $OMNI_KEYS_FILE)."""
    from models.keys import create_key, keys_file

    key = create_key(scope)
    out.print(key, highlight=False, soft_wrap=True)
    err.print(f"Stored its hash in {keys_file()}; this is the only time the key is shown.")


out = Console()
err = Console(stderr=True)

Port = Annotated[int, typer.Option(help="TCP port on 127.0.0.1.")]


@app.command("serve")
def serve_cmd(port: Port = 3000) -> None:
    """Start the BentoML service on the MLflow champions (foreground; Ctrl-C stops it)."""
    from experiments.serve import serve_command

    command = serve_command(port)
    os.execv(command[0], command)


@app.command("demo")
def demo_cmd(port: Port = 3000) -> None:
    """Train both models on data_samples, register the champions, create demo keys, start the
    service and print ready-to-paste curl examples; it keeps serving until Ctrl-C."""
    from experiments import serve
    from models.keys import create_key, write_private

    _identity_config()
    out.print(f"[bold]1/3[/] training both models on {serve.DEMO_DATA} ...")
    for message in serve.train_demo_models():
        out.print(message)
    keys = {scope: create_key([scope]) for scope in ("recommend", "plan", "admin")}
    keys_out = Path(".omni/demo/keys.json")
    keys_out.parent.mkdir(parents=True, exist_ok=True)
    write_private(keys_out, json.dumps(keys, indent=2))  # the keys themselves: 0600 from the start
    out.print(f"[bold]2/3[/] created demo keys (saved for you in {keys_out}).")
    out.print(f"[bold]3/3[/] starting the service on port {port} ...")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does, workers too
    process = serve.start(port)
    try:
        serve.wait_ready(port, process)
        out.print(f"\n[bold green]ready[/] on http://127.0.0.1:{port} (docs: /docs). Try:\n")
        for example in serve.curl_examples(port, keys, customer_key="LC-00009806"):
            out.print(example, highlight=False, soft_wrap=True)
        out.print("\nThe service keeps running; Ctrl-C stops it.", highlight=False)
        sys.stdout.flush()
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.stop(process)  # the workers too: they run in sessions of their own


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class UsageError(Exception):
    """A user mistake reported as one sentence with exit code 2."""


def main() -> None:
    """Entry point: user errors are one sentence on stderr (exit 2), never a traceback."""
    try:
        if set(sys.argv[1:2]) & TRACKING_COMMANDS:
            _private_tracking_store()
        app()
    except (ContractError, UsageError, ValueError, EventStoreUnavailable) as exc:
        err.print(f"[bold red]error:[/] {redact_urls(str(exc))}", highlight=False)
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("OMNI_DEBUG"):
            raise
        err.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {redact_urls(str(exc))} "
            "(set OMNI_DEBUG=1 for the traceback and report it).",
            highlight=False,
        )
        sys.exit(1)


#: The commands that open the MLflow tracking store.
TRACKING_COMMANDS = {"train", "backtest", "forecast", "placement", "bench", "serve", "demo"}


def _private_tracking_store() -> None:
    """Create the embedded MLflow database readable by its owner only, before MLflow creates it
    world-readable (it holds every run's parameters and the registry)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists() and path.parent.is_dir():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip


def _identity_config() -> IdentityConfig:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DemoSaltWarning)
        config = IdentityConfig.from_env()
    for warning in caught:
        err.print(f"[bold yellow]WARNING:[/] {warning.message}", highlight=False)
    return config


DataOpt = Annotated[Path, typer.Option("--data", help="Directory with one file per table.")]


@app.command("validate")
def validate_cmd(
    data: DataOpt,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Quarantine dir (default DATA/_quarantine).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    encoding: Annotated[
        str,
        typer.Option(
            "--encoding",
            help="Text encoding of CSV files without a byte-order mark, e.g. cp932 (Shift-JIS).",
        ),
    ] = "utf-8",
) -> None:
    """Check every table against the data contract; quarantine bad rows with a reason."""
    tables = pipelines.validate(data, out_dir, encoding)
    summary = pipelines.validation_summary(tables)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table("table", "rows", "accepted", "quarantined", "top reasons")
    for name, s in summary["tables"].items():
        reasons = "; ".join(f"{r} ({n})" for r, n in s["reasons"].items())
        table.add_row(name, str(s["rows"]), str(s["accepted"]), str(s["quarantined"]), reasons)
    out.print(table)
    quarantine = out_dir or data / pipelines.QUARANTINE_DIR
    if any(s["quarantined"] for s in summary["tables"].values()):
        out.print(f"Quarantined rows written to {quarantine}/")


@app.command("unify")
def unify_cmd(
    data: DataOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Where unified tables are written.")],
) -> None:
    """Resolve identities across channels; write pseudonymous events and customers."""
    result = pipelines.unify(data, _identity_config())
    paths = pipelines.write_unified(result, out_dir)
    report = pipelines.identity_report(result)
    out.print(
        f"{len(result.unified)} events, {report['keys']} keys -> {report['customers']} customers; "
        f"{report['anonymous_events']} anonymous events; "
        f"{len(report['ignored_links'])} links not followed "
        f"({report['components_split']} oversized components split)."
    )
    for name, path in paths.items():
        out.print(f"  {name}: {path}")


@app.command("generate")
def generate_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the data set to.")],
    customers: int = 1000,
    items: int = 200,
    stores: int = 5,
    days: int = 270,
    seed: int = 0,
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = "csv",
    bad_fraction: float = 0.001,
) -> None:
    """Generate a synthetic omnichannel retailer (deterministic for a seed)."""
    config = GeneratorConfig(
        customers=customers, items=items, stores=stores, days=days, seed=seed, format=fmt,
        bad_fraction=bad_fraction,
    )  # fmt: skip
    with _progress() as progress:
        task = progress.add_task("simulating days", total=days)
        rows = generate(config, out_dir, lambda n: progress.advance(task, n))
    out.print(", ".join(f"{name}: {n} rows" for name, n in rows.items()) + f" -> {out_dir}")


@train_app.command("recommender")
def train_recommender_cmd(
    data: DataOpt,
    config: Annotated[Path | None, typer.Option(help="Candidates TOML.")] = None,
    metrics_out: Annotated[
        Path | None, typer.Option(help="Write the selected model's metrics.")
    ] = None,
) -> None:
    """Select a recommender on a time split, log every candidate, register the best."""
    from experiments import training

    _identity_config()  # warn about the demo salt before the long work
    result = training.train_recommender(data, config)
    metrics = {
        m: round(result.selected.metrics[m], 4)
        for m in ("ndcg@10", "map", "precision@10", "recall@10")
    }
    table = Table("metric", "value", title=f"selected: {result.selected.candidate.label}")
    for name, value in result.selected.metrics.items():
        table.add_row(name, f"{value:.4f}")
    out.print(table)
    _print_skipped(result.skipped)
    out.print(result.message)
    if metrics_out:
        payload = {
            "model": result.selected.candidate.label,
            "metrics": metrics,
            "seconds": round(result.seconds, 1),
        }
        metrics_out.write_text(json.dumps(payload) + "\n")


Horizon = Annotated[int, typer.Option(help="Periods ahead.")]
Freq = Annotated[str, typer.Option(help="D (daily) or W (weekly).")]


def _backtest_payload(result: Any) -> dict[str, Any]:
    return {
        "metrics": _rounded(result.metrics),
        "baselines": {k: _rounded(v) for k, v in result.baselines.items()},
        **({"others": {k: _rounded(v) for k, v in result.others.items()}} if result.others else {}),
        "series": result.series,
        "rows": result.rows,
        "seconds": round(result.seconds, 1),
    }


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items()}


def _print_backtest(result: Any, title: str) -> None:
    table = Table("forecaster", "WAPE", "RMSSE", "bias", "pinball", "coverage 80%", title=title)
    rows = {"lightgbm (ours)": result.metrics, **result.baselines, **result.others}
    for name, m in rows.items():
        values = (m["wape"], m["rmsse"], m["bias"], m["pinball"], m["coverage_80"])
        table.add_row(name, *(f"{v:.4f}" for v in values))
    out.print(table)
    best = min(m["wape"] for m in result.baselines.values())
    out.print(
        f"WAPE {1 - result.metrics['wape'] / best:+.1%} below the best baseline; "
        f"{result.series} series, {result.rows} test rows, {result.seconds:.0f} s."
    )


@backtest_app.command("forecaster")
def backtest_forecaster_cmd(
    data: DataOpt,
    horizon: Horizon,
    freq: Freq = "D",
    windows: Annotated[int, typer.Option(help="Test windows, ending at the last period.")] = 3,
    metrics_out: Annotated[Path | None, typer.Option(help="Write the metrics as JSON.")] = None,
) -> None:
    """Backtest the forecaster and its baselines; log to MLflow with plots."""
    from experiments import forecasting, training

    demand = forecasting.load_demand(data, freq)
    result = forecasting.backtest(demand, horizon=horizon, freq=freq, windows=windows)
    training.log_backtest(
        result, {"data": str(data), "horizon": horizon, "freq": freq, "windows": windows}
    )
    _print_backtest(result, f"backtest: {windows} windows of {horizon} {freq}")
    if metrics_out:
        metrics_out.write_text(json.dumps(_backtest_payload(result)) + "\n")


@train_app.command("forecaster")
def train_forecaster_cmd(data: DataOpt, horizon: Horizon, freq: Freq = "D") -> None:
    """Backtest, fit on all data, register demand_forecaster; champion only if it wins."""
    from experiments import training

    result, version, promoted, champion = training.train_forecaster(
        data, horizon=horizon, freq=freq
    )
    _print_backtest(result, "backtest of the new forecaster")
    name = training.FORECASTER_NAME
    wape = result.metrics["wape"]
    if champion is None:
        out.print(f"registered {name} v{version}; it is now champion (there was none).")
    elif promoted:
        out.print(
            f"registered {name} v{version}; it is now champion: WAPE {wape:.4f} <= {champion:.4f}."
        )
    else:
        out.print(
            f"registered {name} v{version}; the champion stays: WAPE {wape:.4f} > {champion:.4f}."
        )


@app.command("forecast")
def forecast_cmd(
    store: Annotated[str, typer.Option(help="Store id.")],
    horizon: Annotated[
        int | None, typer.Option(help="Periods ahead (default: the model's).")
    ] = None,
    items: Annotated[
        list[str] | None, typer.Option("--items", help="Item ids (repeatable).")
    ] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Also write CSV here.")] = None,
) -> None:
    """The champion forecaster's P10 / P50 / P90 for one store, for planners."""
    model = _champion_forecaster()
    forecast = model.forecast(store, items, horizon)
    table = Table("item", "period", "mean", "P10", "P50", "P90", "method", title=f"store {store}")
    for row in forecast.to_dict(orient="records"):
        table.add_row(
            str(row["item_id"]), str(pd.Timestamp(row["ds"]).date()), f"{row['mean']:.1f}",
            f"{row['p10']:.0f}", f"{row['p50']:.0f}", f"{row['p90']:.0f}", str(row["method"]),
        )  # fmt: skip
    out.print(table)
    if out_file:
        forecast.to_csv(out_file, index=False)
        out.print(f"written to {out_file}")


@placement_app.command("simulate")
def placement_simulate_cmd(
    data: DataOpt,
    horizon: Annotated[int, typer.Option(help="Coverage period, in periods.")],
    freq: Freq = "W",
    supply: Annotated[str, typer.Option(help="Supply ratios, comma-separated.")] = "0.9,1.1",
    windows: Annotated[int, typer.Option(help="Origins, ending at the last period.")] = 4,
    metrics_out: Annotated[Path | None, typer.Option(help="Write the figures as JSON.")] = None,
) -> None:
    """Backtest placement: our policy against proportional and equal splits, at equal stock."""
    import mlflow

    from experiments import placement

    try:
        ratios = tuple(float(r) for r in supply.split(","))
    except ValueError as exc:
        raise UsageError(f"--supply must be numbers separated by commas, not {supply!r}.") from exc
    result = placement.simulate(data, horizon=horizon, freq=freq, supply=ratios, windows=windows)
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
    for ratio, blocks in result.by_supply.items():
        cut = 1 - blocks["policy"]["lost_units"] / max(blocks["proportional"]["lost_units"], 1e-9)
        out.print(f"supply {ratio:g}: {cut:.1%} fewer lost units than proportional allocation.")
    totals = result.totals()
    payload = {
        "policy": totals["policy"],
        "baselines": {k: totals[k] for k in ("proportional", "equal")},
        "supply": list(ratios),
        "by_supply": {f"{r:g}": blocks for r, blocks in result.by_supply.items()},
        "items": result.items,
        "windows": windows,
        "seconds": round(result.seconds, 1),
    }
    mlflow.set_experiment("placement")
    with mlflow.start_run(run_name=f"simulate h={horizon}"):
        mlflow.log_params(
            {
                "data": str(data),
                "horizon": horizon,
                "freq": freq,
                "supply": supply,
                "windows": windows,
            }
        )
        for ratio, blocks in result.by_supply.items():
            for policy, m in blocks.items():
                mlflow.log_metrics({f"{policy}_{k}_supply{ratio:g}": v for k, v in m.items()})
    if metrics_out:
        metrics_out.write_text(json.dumps(payload, default=float) + "\n")


@placement_app.command("plan")
def placement_plan_cmd(
    item: Annotated[str, typer.Option(help="Item id.")],
    units: Annotated[int, typer.Option(help="Units available at the DC.")],
    horizon: Annotated[
        int | None, typer.Option(help="Coverage periods (default: the model's).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Data dir: latest on-hand stock and plan.")
    ] = None,
    pack_size: Annotated[int, typer.Option(help="Units per pack.")] = 1,
    out_file: Annotated[Path | None, typer.Option("--out", help="Also write CSV here.")] = None,
) -> None:
    """Allocate N units of an item across stores from the champion forecaster."""
    from experiments import forecasting, placement

    model = _champion_forecaster()
    on_hand = None
    demand = None
    if data is not None:
        demand = forecasting.load_demand(data, model.freq)
        on_hand = forecasting.latest_on_hand(data, item)
    result = placement.plan(
        model, item, units, horizon=horizon, data=demand, on_hand=on_hand, pack_size=pack_size
    )
    table = Table(
        "store",
        "on hand",
        "send",
        "stock after",
        "exp. sales",
        "fill rate",
        "exp. lost",
        "exp. leftover",
        title=f"{item}: {units} units",
    )
    formats = {
        "on_hand": ".0f", "send": ".0f", "final_stock": ".0f", "expected_sales": ".1f",
        "expected_fill_rate": ".2f", "expected_lost": ".1f", "expected_leftover": ".1f",
    }  # fmt: skip
    for row in result.to_dict(orient="records"):
        table.add_row(str(row["store_id"]), *(format(row[k], f) for k, f in formats.items()))
    out.print(table)
    if out_file:
        result.to_csv(out_file, index=False)
        out.print(f"written to {out_file}")


def _champion_forecaster() -> Any:
    import mlflow

    from models.forecast import LightGBMForecaster
    from models.registry import FORECASTER, champion_dir

    try:
        return LightGBMForecaster.load(champion_dir(FORECASTER))
    except mlflow.exceptions.MlflowException as exc:
        message = f"No {FORECASTER} champion in the MLflow registry"
        raise UsageError(f"{message}; run omni train forecaster first.") from exc


@bench_app.command("serve")
def bench_serve_cmd(
    concurrency: Annotated[int, typer.Option(help="Connections kept busy.")] = 16,
    seconds: Annotated[float, typer.Option(help="Measured seconds per target.")] = 15.0,
    metrics_out: Annotated[Path | None, typer.Option(help="Write the figures as JSON.")] = None,
) -> None:
    """Load-test /recommend and /events against a bare BentoML service (the floor)."""
    from experiments import load, serve, training
    from models.registry import FORECASTER, RECOMMENDER

    if any(training.champion_version(name) is None for name in (RECOMMENDER, FORECASTER)):
        err.print("No champions yet: training both on the demo data first ...")
        serve.train_demo_models()
    figures = load.benchmark(concurrency=concurrency, seconds=seconds)
    figures["machine"] = bench.machine()
    table = Table(
        "target", "req/s", "events/s", "p50 ms", "p99 ms", "errors", title="omni bench serve"
    )
    for name, row in figures["results"].items():
        table.add_row(
            name, f"{row['throughput_rps']:.0f}", f"{row.get('events_per_s', '')}",
            f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}", str(row["errors"]),
        )  # fmt: skip
    out.print(table)
    ratios = figures["recommend_vs_floor"]
    out.print(
        f"/recommend vs floor: throughput x{ratios['throughput_ratio']:.2f} (target >= 0.8), "
        f"p99 x{ratios['p99_ratio']:.2f} (target <= 2); concurrency {concurrency}, "
        f"{seconds:.0f} s each, {figures['machine']}."
    )
    out.print(
        f"/events, one event per request, vs floor: throughput "
        f"x{figures['events_vs_floor']['throughput_ratio']:.2f} (target >= 0.5)."
    )
    if metrics_out:
        metrics_out.write_text(json.dumps(figures, indent=2) + "\n")


@bench_app.command("placement")
def bench_placement_cmd(
    stores: Annotated[int, typer.Option(help="Stores in the chain.")] = 500,
    items: Annotated[int, typer.Option(help="Items to allocate.")] = 10_000,
) -> None:
    """Time allocating every item across the chain (target: 500 x 10,000 in <= 10 s)."""
    out.print_json(json.dumps(bench.run_placement_speed(stores, items)))


@bench_app.command("forecaster")
def bench_forecaster_cmd(
    dataset: Annotated[
        str, typer.Option(help="speed, synthetic, walmart or completejourney")
    ] = "speed",
    horizon: Annotated[int, typer.Option(help="Periods ahead (accuracy runs).")] = 4,
    windows: Annotated[int, typer.Option(help="Backtest windows (accuracy runs).")] = 3,
    metrics_out: Annotated[Path | None, typer.Option(help="Write the figures as JSON.")] = None,
    cache: Annotated[Path, typer.Option(help="Where data sets are kept.")] = Path(".omni/cache"),
    shared: Annotated[Path, typer.Option(help="The shared real data sets.")] = Path(
        "../shared/data"
    ),
) -> None:
    """Speed against mlforecast's preprocess, or weekly accuracy against the baselines and
    mlforecast (LightGBM defaults, same lags and covariates; installed in its own venv)."""
    from experiments import forecasting

    if dataset == "speed":
        figures = bench.run_forecaster_speed(bench.speed_panel(cache / "forecaster-speed.parquet"))
        out.print_json(json.dumps(figures))
        if metrics_out:
            metrics_out.write_text(json.dumps(figures) + "\n")
        return
    if dataset == "synthetic":
        data = cache / "forecaster-synthetic"
        if not (data / "_truth" / "corrupted_rows.json").exists():
            config = GeneratorConfig(
                customers=100_000, items=200, stores=5, days=540, seed=5, format="parquet"
            )
            with _progress() as progress:
                task = progress.add_task("generating", total=config.days)
                generate(config, data, lambda n: progress.advance(task, n))
    elif dataset == "walmart":
        data = forecasting.prepare_walmart(
            shared / "walmart_weekly" / "walmart_sales_weekly.csv", cache / "walmart"
        )
    elif dataset == "completejourney":
        data = forecasting.prepare_completejourney(
            shared / "completejourney", cache / "completejourney"
        )
    else:
        raise UsageError(
            f"Unknown dataset {dataset!r}; use speed, synthetic, walmart or completejourney."
        )
    demand = forecasting.load_demand(data, "W")
    result = forecasting.backtest(
        demand, horizon=horizon, freq="W", windows=windows,
        extra={"mlforecast": forecasting.mlforecast_runner(horizon, "W")},
    )  # fmt: skip
    _print_backtest(result, f"{dataset}: {windows} weekly windows of {horizon}")
    if metrics_out:
        metrics_out.write_text(json.dumps(_backtest_payload(result)) + "\n")


@bench_app.command("recommender")
def bench_recommender_cmd(
    dataset: Annotated[
        str, typer.Option(help="movielens-100k, completejourney or synthetic")
    ] = "movielens-100k",
    events: Annotated[
        int, typer.Option(help="synthetic: approximate number of events.")
    ] = 1_000_000,
    config: Annotated[Path | None, typer.Option(help="Candidates TOML.")] = None,
    metrics_out: Annotated[
        Path | None, typer.Option(help="Write the selected model's metrics.")
    ] = None,
    cache: Annotated[Path, typer.Option(help="Where data sets are kept.")] = Path(".omni/cache"),
    shared: Annotated[Path, typer.Option(help="The shared real data sets.")] = Path(
        "../shared/data"
    ),
) -> None:
    """Accuracy (movielens-100k against the published table; completejourney against
    popularity) or speed (synthetic)."""
    if dataset == "synthetic":
        generated = bench.recommender_config(events)
        data = cache / f"recommender-{events}"
        if not (data / "_truth" / "corrupted_rows.json").exists():
            with _progress() as progress:
                task = progress.add_task(f"generating ~{events:,} events", total=generated.days)
                generate(generated, data, lambda n: progress.advance(task, n))
        out.print_json(json.dumps(bench.run_recommender_speed(data)))
        return
    from experiments import recommender

    selection = recommender.load_selection_config(config)
    if dataset == "movielens-100k":
        result = recommender.benchmark_movielens(selection, cache)
    elif dataset == "completejourney":
        transactions = shared / "completejourney" / "transactions_sample.csv.gz"
        if not transactions.exists():
            raise UsageError(f"{transactions} does not exist; pass --shared DIR.")
        result = recommender.benchmark_completejourney(selection, transactions)
    else:
        known = "movielens-100k, completejourney or synthetic"
        raise UsageError(f"Unknown dataset {dataset!r}; use {known}.")
    table = Table("model", "MAP", "nDCG@10", "P@10", "R@10", "coverage", title=f"{dataset}, k=10")
    for row in result.rows:
        name = row["model"] + (" [selected]" if row is result.selected else "")
        values = (row[m] for m in ("map", "ndcg@10", "precision@10", "recall@10", "coverage"))
        table.add_row(name, *(f"{v:.3f}" for v in values))
    if dataset == "movielens-100k":
        for name, published in recommender.PUBLISHED_MOVIELENS.items():
            table.add_row(f"published: {name}", *(f"{v:.3f}" for v in published), "")
    out.print(table)
    selected = result.selected
    metrics = {m: round(selected[m], 4) for m in ("ndcg@10", "map", "precision@10", "recall@10")}
    if metrics_out:
        payload = {
            "model": selected["model"],
            "metrics": metrics,
            "seconds": round(result.seconds, 1),
        }
        metrics_out.write_text(json.dumps(payload) + "\n")
    _print_skipped(result.skipped)
    out.print(f"selected on validation: {selected['model']}; {result.seconds:.0f} s")


def _print_skipped(skipped: list) -> None:
    for candidate, reason in skipped:
        out.print(f"skipped {candidate.label}: {reason}", highlight=False)


@bench_app.command("ingest")
def bench_ingest_cmd(
    events: Annotated[
        int, typer.Option(help="Approximate number of events to generate.")
    ] = 1_000_000,
    data: Annotated[
        Path | None, typer.Option(help="Use this data set instead of generating.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format")] = "parquet",
    cache: Annotated[Path, typer.Option(help="Where generated bench data sets are kept.")] = Path(
        ".omni/bench"
    ),
) -> None:
    """Time validate + unify; print events/s and peak RSS (targets: 500k events/s, 4 GB)."""
    if data is None:
        config = bench.ingest_config(events, fmt)
        data = cache / f"ingest-{events}-{fmt}"
        if not (data / "_truth" / "corrupted_rows.json").exists():
            with _progress() as progress:
                task = progress.add_task(f"generating ~{events:,} events", total=config.days)
                generate(config, data, lambda n: progress.advance(task, n))
    result = bench.run_ingest(data)
    out.print_json(json.dumps(result))
