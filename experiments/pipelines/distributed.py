"""Validation, unification and feature building on a Dask cluster, with the same results as
in-process, bit for bit.

* **Validation**: the contract checked partition by partition on the workers — a large file in
  pieces of whole row groups, so that a worker's memory does not grow with the files — the
  uniqueness of keys across partitions checked once on the client from the key columns alone.
  The same accepted rows, in the same order, as in-process
  (:func:`features.ingest.load_dataset`), and every row either accepted or quarantined (a row
  whose key an earlier partition holds was accepted by its own, so it is quarantined last, its
  text from its typed values). The accepted rows stay on the workers, one future per piece
  (:class:`PartitionedTable`), until a caller gathers them.
* **Unification**: identity resolution is global (a link may join keys of any two partitions),
  so it runs on the client, on each partition's distinct ``(channel, customer_key)`` pairs and
  the identities table — never on the events; the resolution is then broadcast and every
  partition pseudonymised on its worker.
* **Features**: the interaction matrix and the daily sales are built from the unified
  partitions on the workers; only their results come to the client.

The cluster is ``$OMNI_DASK_SCHEDULER``: ``tcp://host:port`` for a running one (dask-kubernetes,
dask-jobqueue, a managed service), or ``local`` (the default) for a ``LocalCluster`` of one
worker process per core on this machine.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from experiments.pipelines.data import UnifyResult
from experiments.pipelines.forecaster import DEMAND_TABLES, DemandData, demand_data
from experiments.pipelines.memory import give_back_memory
from features.demand import sales_from_events, stock_moves
from features.identity import (
    IdentityConfig,
    IdentityResolution,
    build_customers,
    resolve_identities,
    unify_events,
)
from features.ingest import REASON, ContractError, LoadedTable, find_table_files, load_table
from features.interactions import Interactions, InteractionWeights, build_interactions
from features.rawfiles import ParquetPiece, parquet_pieces
from features.schema import TABLES, Bounds, TableSchema
from models.forecast import CATEGORICAL, Trainer
from models.recommenders import Recommender
from models.rules import BusinessRules, recommend_with_rules

SCHEDULER_ENV = "OMNI_DASK_SCHEDULER"
#: A local cluster's memory per worker ("4GB"; default: the machine's, shared among workers):
#: Dask keeps what a worker holds under 60% of it by spilling to disk, and restarts a worker
#: that passes 95%.
MEMORY_ENV = "OMNI_DASK_MEMORY"
#: Rows of a partition file checked by one task at most (whole row groups): bounds a worker's
#: memory whatever the size of the files (a check peaks at about 500 bytes a row).
PIECE_ROWS = 2_000_000


@contextmanager
def dask_client() -> Iterator[Any]:
    """A ``distributed.Client`` on ``$OMNI_DASK_SCHEDULER`` (default ``local``: one worker
    process per core, each with ``$OMNI_DASK_MEMORY``), closed at the end (a local cluster with
    it)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ValueError("--engine dask needs Dask: pip install 'omnichannel-ml[dask]'.") from exc

    address = os.environ.get(SCHEDULER_ENV) or "local"
    if address == "local":
        workers = os.cpu_count() or 1
        limit = os.environ.get(MEMORY_ENV) or "auto"
        with (
            # The workers' spill files, removed with the cluster (Dask's default folder stays).
            tempfile.TemporaryDirectory(prefix="omni-dask-") as scratch,
            LocalCluster(
                n_workers=workers, threads_per_worker=1, memory_limit=limit,
                local_directory=scratch,
            ) as cluster,
            Client(cluster) as client,
        ):  # fmt: skip
            yield client
    else:
        try:
            client = Client(address)
        except OSError as exc:  # nothing answers there, in distributed.comm.timeouts.connect
            raise ValueError(
                f"No Dask scheduler answers at {address} (${SCHEDULER_ENV}): {exc}."
            ) from None
        with client:
            yield client


def trainer_on(client: Any) -> Trainer:
    """A forecaster's :data:`~models.forecast.Trainer` on the cluster: LightGBM's data-parallel
    learner (``lightgbm.dask``), every n-th row scattered to each of n workers (features and
    target together; data, not tasks in the graph), each worker building its histograms and
    the workers merging them over the network. The parameters are the in-process ones but the
    threads: each worker uses its own. The features are built on the client — the demand panel
    is far smaller than the events it comes from."""

    def train(params: dict[str, Any], x: pd.DataFrame, y: np.ndarray, rounds: int) -> Any:
        import dask.dataframe as dd
        from lightgbm.dask import DaskLGBMRegressor

        def send(part: Any, worker: str) -> Any:
            return client.scatter(part, workers=[worker], hash=False)

        client.wait_for_workers(1)  # then trains on the workers up at this moment
        workers = list(client.nthreads())[: max(len(x), 1)]
        xs, ys = [], []
        for n, worker in enumerate(workers):
            rows = np.arange(n, len(x), len(workers))  # every store and week on every worker
            xs.append(send(x.iloc[rows].reset_index(drop=True), worker))
            ys.append(send(pd.Series(y[rows]), worker))
        settings = {k: v for k, v in params.items() if k != "num_threads"}
        model = DaskLGBMRegressor(client=client, n_estimators=rounds, **settings)
        model.fit(
            dd.from_delayed(xs, meta=x.iloc[:0].reset_index(drop=True)),
            dd.from_delayed(ys, meta=pd.Series(y[:0])),
            categorical_feature=CATEGORICAL,
        )
        return model.to_local().booster_

    return train


def load_demand_on(
    client: Any, data_dir: Path, freq: str, logged: Callable[[], pd.DataFrame] | None = None
) -> DemandData:
    """:func:`experiments.pipelines.forecaster.load_demand` with the events checked and their
    daily sales summed on the cluster (:func:`sales_on`); the panel is built here from the
    daily sales, as are the small tables (sales when given, inventory, items, plan)."""
    files = find_table_files(data_dir)
    tables = load_dataset_on(client, data_dir, DEMAND_TABLES)

    def sales_of_events() -> pd.DataFrame:
        events = check_table_on(client, files["events"], TABLES["events"])
        live = logged() if logged else None
        return sales_on(client, _with_logged_on(client, events.parts, live))

    return demand_data(data_dir, tables, sales_of_events if "events" in files else None, freq)


def release(client: Any, futures: list[Any]) -> None:
    """Drop what ``futures`` hold on the workers (the futures are cancelled), then have every
    worker give the memory it freed back to the system (:func:`give_back_memory`): after
    dropping their share of 5·10^7 events the two workers of a local cluster kept 1.1 GB each
    without this, 0.5 GB with it."""
    keys = {future.key for future in futures}
    client.cancel(futures)
    deadline = time.monotonic() + 10.0
    while any(client.run(_keeps, keys=keys).values()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the workers hear of the release from the scheduler, not from here
    client.run(give_back_memory)


def _keeps(keys: set[Any], dask_worker: Any) -> bool:
    """On a worker: whether it still holds any of ``keys``."""
    return any(key in dask_worker.data for key in keys)


@dataclass
class PartitionedTable:
    """A table checked on the cluster: its accepted rows stay on the workers, one future per
    piece of a partition file (:data:`PIECE_ROWS`) in read order; the quarantined rows (few)
    are here."""

    name: str
    source: str
    parts: list[Any]
    quarantined: pd.DataFrame

    def gather(self, client: Any) -> LoadedTable:
        """The :class:`LoadedTable` in-process loading gives."""
        accepted = pd.concat(client.gather(self.parts), ignore_index=True)
        return LoadedTable(self.name, self.source, accepted, self.quarantined)


def load_dataset_on(
    client: Any, data_dir: Path, tables: tuple[str, ...] | None = None, encoding: str = "utf-8"
) -> dict[str, LoadedTable]:
    """:func:`features.ingest.load_dataset` with every partitioned table (a directory of
    Parquet files) validated on the cluster; a single file is validated here, as in-process."""
    files = find_table_files(data_dir)
    return {
        name: _load_on(client, files[name], TABLES[name], encoding)
        for name in (tables if tables is not None else tuple(files))
        if name in files
    }


def _load_on(client: Any, path: Path, schema: TableSchema, encoding: str = "utf-8") -> LoadedTable:
    if path.is_dir():
        return load_table_on(client, path, schema)
    return load_table(path, schema, encoding=encoding)


def load_table_on(client: Any, path: Path, schema: TableSchema) -> LoadedTable:
    """One partitioned table checked on the cluster (:func:`check_table_on`), gathered."""
    return check_table_on(client, path, schema).gather(client)


def check_table_on(client: Any, path: Path, schema: TableSchema) -> PartitionedTable:
    """One table, its accepted rows left on the workers. Each file of a partitioned table is
    checked on the workers in pieces of whole row groups (:data:`PIECE_ROWS` rows at most)
    against the contract (and for repeated keys within the piece); then a key repeated in a
    later piece is quarantined as in-process ("duplicate ...", the first occurrence kept). A
    single file is checked here and sent as one partition."""
    if not path.is_dir():
        loaded = load_table(path, schema)
        return PartitionedTable(
            schema.name, loaded.source, [client.scatter(loaded.accepted)], loaded.quarantined
        )
    pieces = parquet_pieces(path, PIECE_ROWS)
    bounds = Bounds.from_env()  # the client's, not each worker's environment
    checked = client.map(_check, pieces, schema=schema, source=path.name, bounds=bounds)
    parts = client.map(operator.getitem, checked, [0] * len(pieces))
    quarantined = client.gather(client.map(operator.getitem, checked, [1] * len(pieces)))
    keys, moved = list(schema.unique), []
    if keys:
        reason = f"duplicate {', '.join(keys)}"
        for i, later in enumerate(_later_repeats(client, parts, keys)):
            if later.any():
                moved.append(client.submit(_repeats, parts[i], later, reason=reason))
                parts[i] = client.submit(_without, parts[i], later)
    quarantined = _concat([*quarantined, *client.gather(moved)])
    return PartitionedTable(schema.name, str(path), parts, quarantined)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The frames' rows as one frame, typed as if read at once: an empty frame's untyped columns
    (object) must not turn the others' text into objects."""
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)


def _later_repeats(client: Any, parts: list[Any], keys: list[str]) -> list[np.ndarray]:
    """Per partition, which rows hold a key an earlier row (in partition order) holds. What
    comes to the client is a 64-bit hash of each row's key (8 bytes a row, whatever the key),
    then the keys of the few rows whose hash is not unique: only those can repeat, and their
    keys tell a repeat from a collision of hashes. Equal keys hash alike because validation
    gives every piece's key columns the contract's one type."""
    hashes = client.gather(client.map(_key_hashes, parts, columns=keys))
    sizes = [len(h) for h in hashes]
    every = pd.concat(hashes, ignore_index=True)
    del hashes
    candidates = np.flatnonzero(every.duplicated(keep=False).to_numpy() & every.notna().to_numpy())
    del every
    bounds = np.cumsum([0, *sizes])
    within = [candidates[(candidates >= a) & (candidates < b)] - a for a, b in pairwise(bounds)]
    columns = client.gather(client.map(_columns, parts, within, columns=keys))
    later = np.zeros(bounds[-1], dtype=bool)
    later[candidates] = pd.concat(columns, ignore_index=True).duplicated(keep="first").to_numpy()
    return np.split(later, bounds[1:-1])


def _check(
    piece: ParquetPiece, schema: TableSchema, source: str, bounds: Bounds
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """On a worker: one piece of a partition file through the file loader's checks."""
    loaded = load_table(piece, schema, source=source, bounds=bounds)
    return loaded.accepted, loaded.quarantined


def _columns(frame: pd.DataFrame, rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """On a worker: some columns of some rows of a partition (missing columns null, as a
    concatenation has)."""
    return frame.reindex(columns=columns).iloc[rows]


def _key_hashes(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """On a worker: a 64-bit hash of each row's key (missing columns null, as a concatenation
    has), null where a part of it is."""
    keys = frame.reindex(columns=columns)
    hashed = pd.util.hash_pandas_object(keys, index=False).astype("UInt64")
    return hashed.where(keys.notna().all(axis=1).to_numpy())


def _repeats(frame: pd.DataFrame, rows: np.ndarray, reason: str) -> pd.DataFrame:
    """On a worker: the rows to quarantine, as text with their reason."""
    return frame[rows].astype("str").assign(**{REASON: reason})


def _without(frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    return frame[~rows].reset_index(drop=True)


@dataclass
class UnifiedParts:
    """:func:`unify_parts_on`'s result: the unified events stay on the workers, one future per
    partition (the logged events, if any, last)."""

    tables: dict[str, PartitionedTable | LoadedTable]
    resolution: IdentityResolution
    parts: list[Any]

    def gather(self, client: Any) -> UnifyResult:
        """The :class:`UnifyResult` in-process :func:`~experiments.pipelines.data.unify` gives;
        the customers table is built here, from the gathered events."""
        tables = {
            name: t.gather(client) if isinstance(t, PartitionedTable) else t
            for name, t in self.tables.items()
        }
        unified = pd.concat(client.gather(self.parts), ignore_index=True)
        return UnifyResult(
            tables, self.resolution, unified, build_customers(unified, self.resolution)
        )


def unify_on(
    client: Any, data_dir: Path, config: IdentityConfig, logged: pd.DataFrame | None = None
) -> UnifyResult:
    """:func:`experiments.pipelines.data.unify` on the cluster (:func:`unify_parts_on`),
    gathered."""
    return unify_parts_on(client, data_dir, config, logged).gather(client)


def unify_parts_on(
    client: Any, data_dir: Path, config: IdentityConfig, logged: pd.DataFrame | None = None
) -> UnifiedParts:
    """Validate events and identities, resolve identities, and pseudonymise the events, each
    partition on its worker.

    Resolution runs on the client: a link may join keys of any two partitions, so it needs every
    key at once — but only the keys: each partition's distinct ``(channel, customer_key)`` pairs
    and the identities table, not the events. The graph has a node per key and per link value;
    on the synthetic retailer that is up to 2.5 keys and 2.2 identity rows per customer; resolving
    peaks at about 860 bytes a key: some 2.2 GB on the client per 10^6 customers, whatever the
    number of events. Each worker then holds the keys' components (about 50 bytes a key).

    Args:
        logged: events accepted by the service since (``EventLog.read``), added to the file's;
            an event whose ``event_id`` the file already holds is counted once.
    """
    files = find_table_files(data_dir)
    if "events" not in files:
        raise ContractError(
            f"{data_dir} has no events table to unify (events.csv, .csv.gz or .parquet)."
        )
    events = check_table_on(client, files["events"], TABLES["events"])
    tables: dict[str, PartitionedTable | LoadedTable] = {"events": events}
    identities = None
    if "identities" in files:
        loaded = _load_on(client, files["identities"], TABLES["identities"])
        tables["identities"], identities = loaded, loaded.accepted
    parts = _with_logged_on(client, events.parts, logged)
    pairs = pd.concat(client.gather(client.map(_key_pairs, parts)), ignore_index=True)
    resolution = resolve_identities(pairs, identities, config)
    # What pseudonymising needs: the keys' components (not their pseudonyms).
    needed = dataclasses.replace(resolution, nodes=resolution.nodes[["node", "component"]])
    broadcast = client.scatter(needed, broadcast=True)
    return UnifiedParts(tables, resolution, client.map(unify_events, parts, resolution=broadcast))


def _with_logged_on(client: Any, parts: list[Any], logged: pd.DataFrame | None) -> list[Any]:
    """:func:`features.eventlog.with_logged` on partitions: the logged events that no partition
    holds (by ``event_id``) become one more partition, the last, as in-process appends them."""
    if logged is None or logged.empty:
        return parts
    ids = client.scatter(logged["event_id"], broadcast=True)
    held = np.logical_or.reduce(client.gather(client.map(_holds, parts, ids=ids)))
    return [*parts, client.scatter(logged[~held])]


def _holds(events: pd.DataFrame, ids: pd.Series) -> np.ndarray:
    """On a worker: which of ``ids`` the partition holds."""
    return ids.isin(events["event_id"].dropna()).to_numpy()


def _key_pairs(events: pd.DataFrame) -> pd.DataFrame:
    """On a worker: the partition's distinct (channel, customer_key) pairs, all that identity
    resolution needs of the events."""
    known = events[events["customer_key"].notna()]
    return known[["channel", "customer_key"]].drop_duplicates(ignore_index=True)


def interactions_on(
    client: Any,
    parts: list[Any],
    *,
    weights: InteractionWeights | None = None,
    as_of: pd.Timestamp | None = None,
    item_ids: pd.Index | None = None,
) -> Interactions:
    """:func:`features.interactions.build_interactions` of the unified partitions, bit for bit.

    The latest event (recency is measured from it) and the item columns are found first,
    across partitions. Then each customer's events go to one bucket (by a hash of the
    customer; a bucket per worker thread, more for many events: about :data:`PIECE_ROWS`
    events a bucket), in partition order, and each bucket's rows of the matrix are built on a
    worker by ``build_interactions`` itself, so a customer's cells are sums of the same numbers
    in the same order as in-process. Per-partition sums added here would not be: float sums
    depend on their order, and a cell near a float32 rounding boundary would come out one unit
    apart. The cost is one shuffle of the known events' five columns between workers; the
    client receives only the matrix, the buckets' rows stacked in customer order. ``weights``
    None: the defaults.
    """
    weights = weights or InteractionWeights()
    if as_of is None and weights.half_life_days:
        latest = [t for t in client.gather(client.map(_latest_known, parts)) if pd.notna(t)]
        as_of = max(latest) if latest else None
    if item_ids is None:
        items = pd.concat(client.gather(client.map(_known_items, parts)))
        item_ids = pd.Index(np.sort(items.unique()), dtype="str")
    # At least a bucket per worker thread, and none much larger than a piece of a file.
    rows = sum(client.gather(client.map(len, parts)))
    buckets = max(sum(client.nthreads().values()), -(-rows // PIECE_ROWS), 1)
    split = client.map(_by_customer, parts, buckets=buckets)
    blocks = client.gather(
        [
            client.submit(
                _interactions,
                client.map(operator.getitem, split, [b] * len(split)),
                weights=weights,
                as_of=as_of,
                item_ids=item_ids,
            )
            for b in range(buckets)
        ]
    )
    customer_ids = pd.Index(np.concatenate([b.customer_ids for b in blocks]), dtype="str")
    order = np.argsort(customer_ids.to_numpy(), kind="stable")
    matrix = sp.csr_matrix(sp.vstack([b.matrix for b in blocks], format="csr")[order])
    return Interactions(matrix, customer_ids[order], pd.Index(item_ids, dtype="str"))


def _latest_known(events: pd.DataFrame) -> pd.Timestamp:
    """On a worker: the latest time of a known customer's event (NaT if none)."""
    return events.loc[events["customer_id"].notna(), "event_time"].max()


def _known_items(events: pd.DataFrame) -> pd.Series:
    """On a worker: the distinct items of known customers' events, as the matrix names them."""
    return pd.Series(events.loc[events["customer_id"].notna(), "item_id"].astype("str").unique())


#: The columns build_interactions reads.
_WEIGHED = ["customer_id", "item_id", "event_type", "event_time", "quantity"]


def _by_customer(events: pd.DataFrame, buckets: int) -> list[pd.DataFrame]:
    """On a worker: a partition's known customers' events split into buckets by customer, the
    customer ids as text (as the matrix reads them): a categorical would carry every customer
    of the resolution with each bucket sent."""
    known = events.loc[events["customer_id"].notna(), _WEIGHED]
    known = known.assign(customer_id=known["customer_id"].astype("str"))
    bucket = pd.util.hash_pandas_object(known["customer_id"], index=False).to_numpy() % buckets
    return [known[bucket == b] for b in range(buckets)]


def _interactions(
    pieces: list[pd.DataFrame],
    weights: InteractionWeights,
    as_of: pd.Timestamp | None,
    item_ids: pd.Index,
) -> Interactions:
    """On a worker: one bucket's rows of the interaction matrix."""
    events = pd.concat(pieces, ignore_index=True)
    return build_interactions(events, weights=weights, as_of=as_of, item_ids=item_ids)


def sales_on(client: Any, parts: list[Any]) -> pd.DataFrame:
    """:func:`features.demand.sales_from_events` of the (unified) partitions, bit for bit.

    Each partition's daily sales are summed on its worker: with partitions by month, a day's
    rows are mostly in one partition, in the order in-process sums them. A (day, store, item)
    found in two partitions (a late file, logged events, a day across two pieces of a file)
    would be summed in another order, so its days are summed again here from their rows of
    every partition, in partition order. The client receives the daily sales (days x stores x
    items sold); ``build_panel`` runs there. The daily sales are the last thing made of the
    events: ``parts`` are consumed, the workers drop them (:func:`release`) before the panel is
    built, even when summing fails.
    """
    keys = ["date", "store_id", "item_id"]
    try:
        sales = _concat(client.gather(client.map(sales_from_events, parts)))
        days = sales.loc[sales.duplicated(keys, keep=False), "date"].unique()
        if len(days):
            pieces = client.gather(client.map(_on_days, parts, days=days))
            sales = pd.concat(
                [
                    sales[~sales["date"].isin(days)],
                    sales_from_events(pd.concat(pieces, ignore_index=True)),
                ],
                ignore_index=True,
            )
    finally:
        release(client, parts)
    sales = sales.sort_values(keys, ignore_index=True)
    give_back_memory()  # the gathered frames and their sorting: several times the result
    return sales


def _on_days(events: pd.DataFrame, days: np.ndarray) -> pd.DataFrame:
    """On a worker: a partition's purchases and returns on some days, only what their sales
    are summed from."""
    moves = stock_moves(events)
    return moves[moves["event_time"].dt.normalize().isin(days)]


#: Customers per batch-scoring task at most: its answer is about ``n`` rows per customer.
SCORING_CHUNK = 2_000


def recommend_on(
    client: Any,
    model: Recommender,
    rules: BusinessRules,
    customer_ids: pd.Index,
    n: int = 10,
    **context: Any,
) -> pd.DataFrame:
    """:func:`models.rules.recommend_with_rules` on the cluster: the same frame, row for row.

    The model and its rules are sent to every worker once; the customers go in chunks of at
    most :data:`SCORING_CHUNK` (and at least one chunk per worker thread), each chunk's lists
    made on a worker by that same function, and the chunks' lists concatenated in customer
    order. Each worker holds a copy of the model and the rules, as a service worker does.
    """
    ids = pd.Index(customer_ids, dtype="str")
    threads = max(sum(client.nthreads().values()), 1)
    size = max(1, min(SCORING_CHUNK, -(-len(ids) // threads)))
    chunks = [ids[start : start + size] for start in range(0, len(ids), size)]
    if not chunks:
        return recommend_with_rules(model, rules, ids, n, **context)
    model_f = client.scatter(model, broadcast=True)
    rules_f = client.scatter(rules, broadcast=True)
    lists = client.map(_recommend, chunks, model=model_f, rules=rules_f, n=n, **context)
    return _concat(client.gather(lists))


def _recommend(
    customer_ids: pd.Index, model: Recommender, rules: BusinessRules, **ask: Any
) -> pd.DataFrame:
    """On a worker: one chunk's lists."""
    return recommend_with_rules(model, rules, customer_ids, **ask)
