"""Validation on a Dask cluster: the contract checked partition by partition on the workers, the
uniqueness of keys across partitions checked once on the client. The same accepted rows, in the
same order, as in-process (:func:`features.ingest.load_dataset`), and every row either accepted
or quarantined.

The cluster is ``$OMNI_DASK_SCHEDULER``: ``tcp://host:port`` for a running one (dask-kubernetes,
dask-jobqueue, a managed service), or ``local`` (the default) for a ``LocalCluster`` of one
worker process per core on this machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from features.ingest import REASON, LoadedTable, find_table_files, load_table
from features.rawfiles import partition_files
from features.schema import TABLES, Bounds, TableSchema

SCHEDULER_ENV = "OMNI_DASK_SCHEDULER"


@contextmanager
def dask_client() -> Iterator[Any]:
    """A ``distributed.Client`` on ``$OMNI_DASK_SCHEDULER`` (default ``local``), closed at the
    end (a local cluster with it)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ValueError("--engine dask needs Dask: pip install 'omnichannel-ml[dask]'.") from exc

    address = os.environ.get(SCHEDULER_ENV) or "local"
    if address == "local":
        with (
            LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1) as cluster,
            Client(cluster) as client,
        ):
            yield client
    else:
        with Client(address) as client:
            yield client


def load_dataset_on(client: Any, data_dir: Path, encoding: str = "utf-8") -> dict[str, LoadedTable]:
    """:func:`features.ingest.load_dataset` with every partitioned table (a directory of
    Parquet files) validated on the cluster; a single file is validated here, as in-process."""
    return {
        name: load_table_on(client, path, TABLES[name])
        if path.is_dir()
        else load_table(path, TABLES[name], encoding=encoding)
        for name, path in find_table_files(data_dir).items()
    }


def load_table_on(client: Any, path: Path, schema: TableSchema) -> LoadedTable:
    """One partitioned table: each file checked on a worker against the contract (and for
    repeated keys within it), then, here, a key repeated in a later partition quarantined as
    in-process ("duplicate ...", the first occurrence kept)."""
    files = partition_files(path)
    bounds = Bounds.from_env()  # the client's, not each worker's environment
    futures = client.map(_check, files, schema=schema, source=path.name, bounds=bounds)
    parts = client.gather(futures)
    accepted = pd.concat([a for a, _ in parts], ignore_index=True)
    quarantined = pd.concat([q for _, q in parts], ignore_index=True)
    keys = list(schema.unique)
    if keys and set(keys) <= set(accepted.columns):
        later = accepted.duplicated(subset=keys, keep="first") & accepted[keys].notna().all(axis=1)
        if later.any():
            moved = accepted[later].astype("str").assign(**{REASON: f"duplicate {', '.join(keys)}"})
            accepted = accepted[~later].reset_index(drop=True)
            quarantined = pd.concat([quarantined, moved], ignore_index=True)
    return LoadedTable(schema.name, str(path), accepted, quarantined)


def _check(
    file: Path, schema: TableSchema, source: str, bounds: Bounds
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """On a worker: one partition file through the file loader's checks."""
    loaded = load_table(file, schema, source=source, bounds=bounds)
    return loaded.accepted, loaded.quarantined
