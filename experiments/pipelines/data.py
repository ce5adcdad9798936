"""Pipelines the CLI runs: validate a data directory, unify it. I/O lives here, not in features."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.eventlog import with_logged
from features.identity import (
    IdentityConfig,
    IdentityResolution,
    build_customers,
    resolve_identities,
    unify_events,
)
from features.ingest import ContractError, LoadedTable, load_dataset, write_quarantine

QUARANTINE_DIR = "_quarantine"


def validation_summary(tables: dict[str, LoadedTable], top: int | None = None) -> dict[str, dict]:
    """The ``--json`` shape: per table rows / accepted / quarantined, its reasons with their
    counts, most frequent first (every one, or the ``top`` few), and the accepted rows that
    repeat another exactly with no key to tell them apart (:meth:`LoadedTable.repeated_rows`)."""
    return {
        "tables": {
            name: {
                "rows": t.rows,
                "accepted": len(t.accepted),
                "quarantined": len(t.quarantined),
                "reasons": dict(list(t.reasons().items())[:top]),
                "repeated_rows": t.repeated_rows(),
            }
            for name, t in tables.items()
        }
    }


def validate(
    data_dir: Path,
    quarantine_dir: Path | None = None,
    encoding: str = "utf-8",
    engine: str = "inprocess",
) -> dict[str, LoadedTable]:
    """Load every table; write quarantined rows to ``quarantine_dir`` (default DIR/_quarantine).

    ``encoding`` is for CSV files without a byte-order mark (e.g. ``cp932``); ``engine``
    ``dask`` checks partitioned tables on a Dask cluster (experiments/pipelines/distributed.py).
    """
    if engine == "dask":
        from experiments.pipelines.distributed import dask_client, load_dataset_on

        with dask_client() as client:
            tables = load_dataset_on(client, data_dir, encoding=encoding)
    else:
        tables = load_dataset(data_dir, encoding=encoding)
    write_quarantine(tables, quarantine_dir or Path(data_dir) / QUARANTINE_DIR)
    return tables


@dataclass
class UnifyResult:
    tables: dict[str, LoadedTable]
    resolution: IdentityResolution
    unified: pd.DataFrame
    customers: pd.DataFrame


def unify(
    data_dir: Path,
    config: IdentityConfig,
    logged: pd.DataFrame | None = None,
    engine: str = "inprocess",
) -> UnifyResult:
    """Validate events and identities, resolve identities, and pseudonymise the events.

    Args:
        logged: events accepted by the service since (``EventLog.read``), added to the file's;
            an event whose ``event_id`` the file already holds is counted once.
        engine: ``dask`` validates and pseudonymises the events partition by partition on a
            Dask cluster (experiments/pipelines/distributed.py), with the same result.
    """
    if engine == "dask":
        from experiments.pipelines.distributed import dask_client, unify_on

        with dask_client() as client:
            return unify_on(client, data_dir, config, logged)
    tables = load_dataset(data_dir, ("events", "identities"))
    if "events" not in tables:
        raise ContractError(
            f"{data_dir} has no events table to unify (events.csv, .csv.gz or .parquet)."
        )
    events = with_logged(tables["events"].accepted, logged)
    identities = tables["identities"].accepted if "identities" in tables else None
    resolution = resolve_identities(events, identities, config)
    unified = unify_events(events, resolution)
    customers = build_customers(unified, resolution)
    return UnifyResult(tables, resolution, unified, customers)


def write_unified(result: UnifyResult, out_dir: Path) -> dict[str, Path]:
    """Write unified events, customers, the pseudonymous key map and the identity report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key_map = result.resolution.nodes[["key_id", "customer_id"]]
    paths = {
        "events": out_dir / "events.parquet",
        "customers": out_dir / "customers.parquet",
        "customer_keys": out_dir / "customer_keys.parquet",
        "identity_report": out_dir / "identity_report.json",
    }
    result.unified.to_parquet(paths["events"], index=False)
    result.customers.to_parquet(paths["customers"], index=False)
    key_map.to_parquet(paths["customer_keys"], index=False)
    paths["identity_report"].write_text(json.dumps(identity_report(result), indent=2) + "\n")
    write_quarantine(result.tables, out_dir / QUARANTINE_DIR)
    return paths


def identity_report(result: UnifyResult) -> dict:
    """Counts and the links identity resolution refused to follow (pseudonymised)."""
    nodes = result.resolution.nodes
    ignored = result.resolution.ignored_links
    return {
        "keys": len(nodes),
        "customers": int(nodes["customer_id"].nunique()),
        "anonymous_events": int(result.unified["customer_id"].isna().sum()),
        "ignored_links": ignored.to_dict(orient="records"),
        "components_split": result.resolution.split_components,
    }
