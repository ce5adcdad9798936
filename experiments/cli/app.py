"""The ``omni`` application: its command groups, consoles, shared options and the entry point
that turns user mistakes into one sentence (exit 2)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from experiments.synthetic import GeneratorConfig, generate
from features.eventlog import EventStoreUnavailable, first_line, redact_urls
from features.identity import DemoSaltWarning, IdentityConfig, WeakSaltWarning
from models.errors import NoChampion, UnreadableChampion

app = typer.Typer(
    help="omnichannel-ml: unified customer histories -> recommendations, forecasts, placement.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Speed, memory and accuracy figures for docs/benchmarks.md.")
app.add_typer(bench_app, name="bench")
train_app = typer.Typer(help="Train, log to MLflow, register; move the champion only if it wins.")
app.add_typer(train_app, name="train")
backtest_app = typer.Typer(help="Rolling-origin backtests, logged to MLflow.")
app.add_typer(backtest_app, name="backtest")
placement_app = typer.Typer(help="Stock placement across stores from the demand forecasts.")
app.add_typer(placement_app, name="placement")
stock_app = typer.Typer(help="The stock picture: KPIs from movements, sales and counts.")
app.add_typer(stock_app, name="stock")
report_app = typer.Typer(help="What the recommendations and offers did, per channel.")
app.add_typer(report_app, name="report")
keys_app = typer.Typer(help="API keys for the service (stored as hashes only).")
app.add_typer(keys_app, name="keys")
events_app = typer.Typer(help="The event log: moving it to another store.")
app.add_typer(events_app, name="events")
score_app = typer.Typer(help="Batch scoring: every customer's lists, for CRM and marketing.")
app.add_typer(score_app, name="score")

#: Columns of a table written to a file or a pipe (Rich's 80 would cut figures to "190.…").
PIPE_WIDTH = 200
# What it prints holds paths, ids and column names: not markup.
out = Console(
    markup=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH
)
err = Console(stderr=True)

Port = Annotated[int, typer.Option(help="TCP port on 127.0.0.1.", min=1, max=65535)]
DataOpt = Annotated[Path, typer.Option("--data", help="Directory with one file per table.")]
Horizon = Annotated[int, typer.Option(help="Periods ahead.")]
Freq = Annotated[str, typer.Option(help="D (daily) or W (weekly).")]
Engine = Annotated[
    str,
    typer.Option(
        help="inprocess, or dask: the work split across the Dask cluster of "
        "$OMNI_DASK_SCHEDULER (tcp://host:port, or local: this machine's cores)."
    ),
]


class UsageError(Exception):
    """A user mistake reported as one sentence with exit code 2."""


def apart_from(out: Path, data: Path) -> None:
    """Refuse an ``out`` that is the data directory or inside it, where a write would replace
    or add to its tables; folders of it named ``_...`` are the product's own (``_quarantine``)."""
    target, source = out.resolve(), data.resolve()
    inside = target.relative_to(source).parts if target.is_relative_to(source) else None
    if inside is not None and (not inside or not inside[0].startswith("_")):
        raise UsageError(
            f"--out {out} is inside the data directory {data}, where a write would replace or "
            "add to its tables; choose a folder outside it (or one whose name starts with _)."
        )


def file_out(path: Path | None) -> Path | None:
    """An option's file to write, refused before any work when its folder does not exist."""
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"Cannot write {path}: there is no folder {path.parent}.")
    return path


FiguresOut = Annotated[
    Path | None, typer.Option(help="Write the figures as JSON.", callback=file_out)
]
CsvOut = Annotated[
    Path | None, typer.Option("--out", help="Also write CSV here.", callback=file_out)
]


def checked_engine(engine: str) -> str:
    if engine not in ("inprocess", "dask"):
        raise UsageError(f"--engine is inprocess or dask, not {engine!r}.")
    return engine


def main() -> None:
    """Entry point: user errors are one sentence on stderr (exit 2), never a traceback."""
    # A command someone waits for: a tracking server that does not answer is said after two
    # retries (about 6 s), not MLflow's seven (about 4 min). The variable, when set, wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    try:
        if set(sys.argv[1:2]) & TRACKING_COMMANDS:
            _private_tracking_store()
        # Not standalone: Click's own refusals (an unknown option, a value out of its range)
        # come here, to be said as ours are, not in a usage box.
        code = app(prog_name="omni", standalone_mode=False)
    except typer.Abort:  # an answer to a prompt cut short
        err.print("Aborted.")
        sys.exit(1)
    except typer.TyperException as exc:  # Click's: a missing option, a value out of range
        message = exc.format_message().rstrip(".")
        if type(exc).__name__ == "NoArgsIsHelpError":  # no command: the help (Rich prints it)
            typer.echo(message or None, nl=bool(message))
        elif message:
            where = getattr(exc, "ctx", None)
            said = f"{message} (see {where.command_path} --help)." if where else f"{message}."
            err.print(f"[bold red]error:[/] {escape(redact_urls(said))}", highlight=False)
        sys.exit(2)
    except (UsageError, ValueError, EventStoreUnavailable) as exc:  # ContractError: a ValueError
        err.print(f"[bold red]error:[/] {escape(redact_urls(str(exc)))}", highlight=False)
        sys.exit(2)
    except NoChampion as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))} omni train makes one.")
        sys.exit(2)
    except UnreadableChampion as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))} omni train replaces it.")
        sys.exit(2)
    except OSError as exc:
        if not exc.filename:  # a network error, or a bug: not a path of the user's
            _internal_error(exc)
        reason = redact_urls(f"cannot use {exc.filename}: {exc.strerror or exc}.")
        err.print(f"[bold red]error:[/] {escape(reason)}")
        sys.exit(2)
    except Exception as exc:
        mlflow_errors = sys.modules.get("mlflow.exceptions")  # imported if it raised this
        if mlflow_errors is not None and isinstance(exc, mlflow_errors.MlflowException):
            _mlflow_error(exc)  # the tracking server or its store, not a bug of ours
        _internal_error(exc)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit's (--help's) code, or 0


def _mlflow_error(exc: Exception) -> NoReturn:
    where = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    err.print(
        f"[bold red]error:[/] MLflow at {escape(redact_urls(where))}: "
        f"{escape(redact_urls(first_line(exc)))}",
        highlight=False,
    )
    sys.exit(2)


def _internal_error(exc: Exception) -> NoReturn:
    if os.environ.get("OMNI_DEBUG"):
        raise exc
    if lost_on_the_cluster(exc):
        err.print(f"[bold red]error:[/] {LOST_ON_THE_CLUSTER}", highlight=False)
        sys.exit(1)
    err.print(
        f"[bold red]internal error:[/] {type(exc).__name__}: {escape(redact_urls(str(exc)))} "
        "(set OMNI_DEBUG=1 for the traceback and report it).",
        highlight=False,
    )
    sys.exit(1)


LOST_ON_THE_CLUSTER = (
    "A Dask worker lost this step's data (most likely restarted for passing its memory "
    "limit): give the workers more memory ($OMNI_DASK_MEMORY on a local cluster) or the data "
    "smaller files, and run it again."
)


def lost_on_the_cluster(exc: BaseException) -> bool:
    """Whether ``exc`` is Dask's report of a task or its data lost with a worker (named, so
    that Dask need not be installed)."""
    return type(exc).__name__ in ("FutureCancelledError", "KilledWorker")


#: The commands that open the MLflow tracking store.
TRACKING_COMMANDS = {
    "train", "backtest", "forecast", "placement", "bench", "serve", "build", "demo", "report",
    "score",
}  # fmt: skip


def _private_tracking_store() -> None:
    """Create the embedded MLflow database readable by its owner only, before MLflow creates it
    world-readable (it holds every run's parameters and the registry)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists() and path.parent.is_dir():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def generate_with_progress(config: GeneratorConfig, out_dir: Path) -> dict[str, int]:
    """Run the generator with a progress bar of its days (on a terminal only)."""
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip
    with bar:
        task = bar.add_task("simulating days", total=config.days)
        return generate(config, out_dir, lambda n: bar.advance(task, n))


def generated(config: GeneratorConfig, out_dir: Path) -> Path:
    """A benchmark data set: generated into ``out_dir`` unless a complete one is there already."""
    if not (out_dir / "_truth" / "corrupted_rows.json").exists():
        generate_with_progress(config, out_dir)
    return out_dir


def identity_config() -> IdentityConfig:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DemoSaltWarning)
        warnings.simplefilter("always", WeakSaltWarning)
        config = IdentityConfig.from_env()
    for warning in caught:
        err.print(f"[bold yellow]WARNING:[/] {warning.message}", highlight=False)
    return config
