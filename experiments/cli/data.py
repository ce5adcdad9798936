"""``omni validate``, ``omni unify`` and ``omni generate``: data in, checked and unified."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from experiments.cli.app import (
    DataOpt,
    Engine,
    apart_from,
    app,
    checked_engine,
    generate_with_progress,
    identity_config,
    out,
)
from experiments.pipelines import data as pipelines
from experiments.synthetic import FORMATS, GeneratorConfig
from features.schema import TABLES


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
    engine: Engine = "inprocess",
) -> None:
    """Check every table against the data contract; quarantine bad rows with a reason."""
    if out_dir is not None:
        apart_from(out_dir, data)
    tables = pipelines.validate(data, out_dir, encoding, engine=checked_engine(engine))
    summary = pipelines.validation_summary(tables, top=None if as_json else 5)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table("table", "rows", "accepted", "quarantined", "top reasons")
    for name, s in summary["tables"].items():
        reasons = "; ".join(f"{r} ({n})" for r, n in s["reasons"].items())
        table.add_row(name, str(s["rows"]), str(s["accepted"]), str(s["quarantined"]), reasons)
    out.print(table)
    for name, s in summary["tables"].items():
        if n := s["repeated_rows"]:
            rows = "1 accepted row repeats" if n == 1 else f"{n} accepted rows repeat"
            key = TABLES[name].unique
            apart = f", with no {' or '.join(key)} to tell them apart" if key else ""
            out.print(
                f"{name}: {rows} an earlier row in every column{apart}; kept, but many of them "
                "may mean a file loaded twice.",
                highlight=False,
            )
    quarantine = out_dir or data / pipelines.QUARANTINE_DIR
    if any(s["quarantined"] for s in summary["tables"].values()):
        out.print(f"Quarantined rows written to {quarantine}/")


@app.command("unify")
def unify_cmd(
    data: DataOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Where unified tables are written.")],
    engine: Engine = "inprocess",
) -> None:
    """Resolve identities across channels; write pseudonymous events and customers."""
    apart_from(out_dir, data)
    result = pipelines.unify(data, identity_config(), engine=checked_engine(engine))
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
    store_variety: Annotated[
        float,
        typer.Option(
            help="0: stores alike; 1: sizes, assortments, tastes, channel mix and "
            "promotion response differ as real stores' do."
        ),
    ] = 0.0,
) -> None:
    """Generate a synthetic omnichannel retailer (deterministic for a seed)."""
    config = GeneratorConfig(
        customers=customers, items=items, stores=stores, days=days, seed=seed, format=fmt,
        bad_fraction=bad_fraction, store_variety=store_variety,
    )  # fmt: skip
    rows = generate_with_progress(config, out_dir)
    out.print(", ".join(f"{name}: {n} rows" for name, n in rows.items()) + f" -> {out_dir}")
