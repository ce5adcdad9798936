"""Validation, unification and feature building on a Dask cluster (a LocalCluster of two worker
processes, shared by the module's tests) against in-process, on a partitioned data set with
corrupt rows, a key repeated across partitions, and logged events on days the files hold; and
batch recommendations of the session's champions and the forecaster's backtest, on the cluster and
in-process."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from experiments.pipelines import data as pipelines
from experiments.pipelines import forecaster
from experiments.synthetic import GeneratorConfig, generate
from features.demand import build_panel, sales_from_events
from features.eventlog import validate_events
from features.identity import IdentityConfig
from features.ingest import REASON, load_dataset
from features.interactions import InteractionWeights, build_interactions
from features.rawfiles import parquet_pieces, partition_files
from tests.conftest import SAMPLE
from tests.processes import omni

pytestmark = pytest.mark.integration

CONFIG = IdentityConfig(salt="test-salt")


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("partitioned") / "data"
    config = GeneratorConfig(
        customers=200, items=40, stores=2, days=70, seed=9, format="parquet-partitioned",
        bad_fraction=0.01,
    )  # fmt: skip
    generate(config, data)
    # An event of January again in March: only a check across partitions can see it.
    january = pq.read_table(data / "events" / "month=2024-01" / "part-0.parquet")
    pq.write_table(january.slice(0, 1), data / "events" / "month=2024-03" / "part-1.parquet")
    return data


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """One cluster for the module (the CLI tests connect to it too): one at a time."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def logged(partitioned: Path) -> pd.DataFrame:
    """Events the service accepted since: purchases again on days (and store, item) the files
    hold, under new ids — one from a key the files never saw — and one the files already hold."""
    events = load_dataset(partitioned, ("events",))["events"].accepted
    bought = events[(events["event_type"] == "purchase") & events["store_id"].notna()]
    records = [
        {c: v for c, v in row.items() if pd.notna(v)}
        | {"event_time": row["event_time"].isoformat(), "event_id": f"logged-{i}"}
        for i, row in enumerate(bought.iloc[::150].to_dict("records"))
    ]
    records[0]["customer_key"] = "LC-LOGGED-ONLY"
    records[-1]["event_id"] = bought["event_id"].iloc[-1]  # already in the files: counted once
    accepted, reasons = validate_events(records)
    assert not any(reasons) and len(accepted) >= 4
    return accepted


def assert_same_quarantine(there: pd.DataFrame, here: pd.DataFrame) -> None:
    """The same rows with the same reasons, in the same order (on this data set: the row repeated
    across partitions comes last in both). That row differs in one way: its partition accepted
    it, so its text is of the typed values (a quantity of 1 in the file reads 1.0)."""
    assert list(there.columns) == list(here.columns)
    pd.testing.assert_series_equal(there[REASON], here[REASON])
    differ = (there.fillna("") != here.fillna("")).any(axis=1).to_numpy()
    assert differ.sum() <= 1 and set(there.loc[differ, REASON]) <= {"duplicate event_id"}


def test_a_cluster_accepts_and_quarantines_exactly_what_in_process_does(
    partitioned: Path, client: Any
) -> None:
    from experiments.pipelines.distributed import load_dataset_on

    here = load_dataset(partitioned)
    there = load_dataset_on(client, partitioned)
    assert set(there) == set(here)
    for name in here:
        pd.testing.assert_frame_equal(there[name].accepted, here[name].accepted, obj=name)
        assert there[name].reasons() == here[name].reasons(), name
        assert there[name].rows == here[name].rows, name
    assert here["events"].reasons()["duplicate event_id"] >= 1
    assert sum(here["events"].reasons().values()) > 1  # the generator's corrupt rows too


def test_a_cluster_unifies_exactly_as_in_process(
    partitioned: Path, client: Any, logged: pd.DataFrame
) -> None:
    from experiments.pipelines.distributed import unify_on

    here = pipelines.unify(partitioned, CONFIG, logged)
    there = unify_on(client, partitioned, CONFIG, logged)
    assert len(here.unified) == len(here.tables["events"].accepted) + len(logged) - 1
    pd.testing.assert_frame_equal(there.unified, here.unified, check_exact=True)
    pd.testing.assert_frame_equal(there.customers, here.customers, check_exact=True)
    pd.testing.assert_frame_equal(there.resolution.nodes, here.resolution.nodes, check_exact=True)
    pd.testing.assert_index_equal(there.resolution.customer_ids, here.resolution.customer_ids)
    assert pipelines.identity_report(there) == pipelines.identity_report(here)
    assert set(there.tables) == set(here.tables) == {"events", "identities"}
    for name, table in here.tables.items():
        pd.testing.assert_frame_equal(there.tables[name].accepted, table.accepted, obj=name)
        assert_same_quarantine(there.tables[name].quarantined, table.quarantined)


def test_interactions_and_demand_built_on_a_cluster_equal_in_process(
    partitioned: Path, client: Any, logged: pd.DataFrame
) -> None:
    from experiments.pipelines.distributed import interactions_on, sales_on, unify_parts_on

    inventory = load_dataset(partitioned, ("inventory",))["inventory"].accepted
    for live in (None, logged):  # with the logged events, days in two partitions
        here = pipelines.unify(partitioned, CONFIG, live).unified
        parts = unify_parts_on(client, partitioned, CONFIG, live).parts
        for weights in (InteractionWeights(), InteractionWeights(half_life_days=None)):
            got = interactions_on(client, parts, weights=weights)
            expected = build_interactions(here, weights=weights)
            pd.testing.assert_index_equal(got.customer_ids, expected.customer_ids)
            pd.testing.assert_index_equal(got.item_ids, expected.item_ids)
            assert got.matrix.dtype == expected.matrix.dtype
            for field in ("indptr", "indices", "data"):  # bit for bit
                assert np.array_equal(getattr(got.matrix, field), getattr(expected.matrix, field))
        sales, expected_sales = sales_on(client, parts), sales_from_events(here)
        pd.testing.assert_frame_equal(sales, expected_sales, check_exact=True)
        for freq in ("D", "W"):
            pd.testing.assert_frame_equal(
                build_panel(sales, freq=freq, inventory=inventory),
                build_panel(expected_sales, freq=freq, inventory=inventory),
                check_exact=True,
            )


def test_files_larger_than_a_piece_are_checked_in_pieces_with_the_same_results(
    partitioned: Path, client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from experiments.pipelines import distributed

    data = tmp_path / "data"
    shutil.copytree(partitioned, data)
    for file in partition_files(data / "events"):  # row groups of 100 rows
        pq.write_table(pq.read_table(file), file, row_group_size=100)
    monkeypatch.setattr(distributed, "PIECE_ROWS", 250)  # two whole row groups a piece
    pieces = parquet_pieces(data / "events", distributed.PIECE_ROWS)
    assert len(pieces) > 2 * len(partition_files(data / "events"))
    assert {len(piece.row_groups) for piece in pieces} <= {1, 2}

    here = load_dataset(data, ("events",))["events"]
    there = distributed.load_dataset_on(client, data, ("events",))["events"]
    pd.testing.assert_frame_equal(there.accepted, here.accepted)
    assert there.reasons() == here.reasons() and there.rows == here.rows
    assert here.reasons()["duplicate event_id"] >= 1
    # Days cut across two pieces are summed again from their rows: still bit for bit; and the
    # interactions are built in as many buckets of customers as pieces.
    parts = distributed.unify_parts_on(client, data, CONFIG).parts
    unified = pipelines.unify(data, CONFIG).unified
    expected = sales_from_events(unified)
    got, interactions = distributed.interactions_on(client, parts), build_interactions(unified)
    pd.testing.assert_index_equal(got.customer_ids, interactions.customer_ids)
    assert (got.matrix != interactions.matrix).nnz == 0
    pd.testing.assert_frame_equal(distributed.sales_on(client, parts), expected, check_exact=True)
    assert all(part.cancelled() for part in parts)  # the daily sales are the events' last use


def test_the_demand_panel_summed_on_a_cluster_equals_in_process(
    partitioned: Path, client: Any, logged: pd.DataFrame
) -> None:
    from experiments.pipelines.distributed import load_demand_on

    for live in (None, lambda: logged):
        here = forecaster.load_demand(partitioned, "W", live)
        there = load_demand_on(client, partitioned, "W", live)
        pd.testing.assert_frame_equal(there.panel, here.panel, check_exact=True)
        pd.testing.assert_frame_equal(there.items, here.items)
        pd.testing.assert_frame_equal(there.plan, here.plan)


def test_released_partitions_leave_every_worker(client: Any) -> None:
    from distributed import wait

    from experiments.pipelines.distributed import release

    parts = client.map(lambda n: pd.DataFrame({"x": range(n)}), [1_000, 2_000, 3_000])
    wait(parts)
    keys = {part.key for part in parts}
    assert keys <= {key for held in client.has_what().values() for key in held}
    release(client, parts)
    assert not keys & {key for held in client.has_what().values() for key in held}
    assert all(part.cancelled() for part in parts)


def test_omni_backtest_forecaster_on_a_local_cluster_within_one_percent(tmp_path: Path) -> None:
    """LightGBM trained data-parallel on a cluster of this machine's cores (started by the
    command), a share of the rows on each worker: a different model, as accurate."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "OMNI_DASK_SCHEDULER": ""}
    args = ["backtest", "forecaster", "--data", str(SAMPLE), "--horizon", "4", "--freq", "W"]
    args += ["--windows", "2"]
    figures = {}
    for engine in ("inprocess", "dask"):
        out = tmp_path / f"{engine}.json"
        done = omni(*args, "--engine", engine, "--metrics-out", str(out), env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        figures[engine] = json.loads(out.read_text())["metrics"]
    here, there = figures["inprocess"], figures["dask"]
    assert there["wape"] == pytest.approx(here["wape"], rel=0.01)
    assert there["coverage_80"] == pytest.approx(here["coverage_80"], abs=0.03)
    refused = omni(*args, "--engine", "spark", env=env)
    assert refused.returncode == 2 and "inprocess or dask" in refused.stderr


def test_omni_train_recommender_unified_on_a_cluster_selects_the_same_model(
    partitioned: Path, client: Any, tmp_path: Path
) -> None:
    chosen = {}
    for engine in ("inprocess", "dask"):
        env = {
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/{engine}-mlflow.db",
            "OMNI_EVENTS_URL": f"sqlite:///{tmp_path}/{engine}-events.db",
            "OMNI_DASK_SCHEDULER": client.scheduler.address,
        }
        out = tmp_path / f"{engine}.json"
        args = ["train", "recommender", "--data", str(partitioned), "--metrics-out", str(out)]
        done = omni(*args, "--engine", engine, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        chosen[engine] = json.loads(out.read_text())
        del chosen[engine]["seconds"]
    assert chosen["dask"] == chosen["inprocess"]


def test_a_local_cluster_gives_each_worker_the_memory_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from experiments.pipelines.distributed import MEMORY_ENV, SCHEDULER_ENV, dask_client

    monkeypatch.setenv(SCHEDULER_ENV, "local")
    monkeypatch.setenv(MEMORY_ENV, "1.5GB")
    with dask_client() as local:
        workers = local.scheduler_info()["workers"].values()
        assert [w["memory_limit"] for w in workers] == [1_500_000_000] * (os.cpu_count() or 1)


def test_omni_validate_and_unify_on_a_cluster(
    partitioned: Path, client: Any, tmp_path: Path
) -> None:
    cluster = {"OMNI_DASK_SCHEDULER": client.scheduler.address}
    args = ["validate", "--data", str(partitioned), "--out", str(tmp_path / "q"), "--json"]
    inprocess = omni(*args)
    dask = omni(*args, "--engine", "dask", env=cluster)
    assert inprocess.returncode == 0 and dask.returncode == 0, dask.stderr[-2000:]
    assert json.loads(dask.stdout) == json.loads(inprocess.stdout)
    assert omni(*args, "--engine", "spark").returncode == 2

    unify = ["unify", "--data", str(partitioned), "--out"]
    assert omni(*unify, str(tmp_path / "here")).returncode == 0
    dask = omni(*unify, str(tmp_path / "there"), "--engine", "dask", env=cluster)
    assert dask.returncode == 0, dask.stderr[-2000:]
    written = sorted(p.relative_to(tmp_path / "here") for p in (tmp_path / "here").rglob("*.*"))
    assert written == sorted(
        p.relative_to(tmp_path / "there") for p in (tmp_path / "there").rglob("*.*")
    )
    assert len(written) == 5  # 3 tables, the report and the events' quarantined rows
    for name in written:
        here, there = tmp_path / "here" / name, tmp_path / "there" / name
        if name.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(there), pd.read_parquet(here))
        elif name.suffix == ".csv":
            assert_same_quarantine(*(pd.read_csv(p, dtype="str") for p in (there, here)))
        else:
            assert there.read_text() == here.read_text(), name
    refused = omni(*unify, str(tmp_path / "x"), "--engine", "spark")
    assert refused.returncode == 2 and "inprocess or dask" in refused.stderr


#: The time the batch lists are for: a few days after the sample's last event.
AS_OF = pd.Timestamp("2024-10-01")


@pytest.fixture
def served(champions: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The session's champions as the service loads them, on an event log of this test's own
    (other tests' posted events and holds must not move the lists between two loads)."""
    from experiments.pipelines.scoring import served_state

    monkeypatch.setenv("OMNI_EVENTS_URL", f"sqlite:///{tmp_path}/events.db")
    return served_state()


def test_batch_recommendations_on_a_cluster_equal_in_process(served: Any, client: Any) -> None:
    from experiments.pipelines.scoring import batch_recommendations

    customers = len(served.recommender.customer_ids_)
    for where in ({}, {"channel": "store", "store_id": "S001"}):
        here = batch_recommendations(served, 10, as_of=AS_OF, **where)
        there = batch_recommendations(served, 10, as_of=AS_OF, client=client, **where)
        assert here["customer_id"].nunique() == customers > 1000  # two chunks, one per worker
        assert here["customer_id"].is_monotonic_increasing and len(here) > 9 * customers
        pd.testing.assert_frame_equal(there, here, check_exact=True)


def test_a_durable_item_bought_since_training_leaves_its_buyers_list(served: Any) -> None:
    """A purchase logged after training, as the service would have taken it: the item (not
    repurchasable, never bought by the buyer before) leaves the buyer's list, still offered to
    others; no list holds a durable item its customer bought, unless in two baskets."""
    from experiments.pipelines.scoring import batch_recommendations, served_state
    from features.eventlog import EventLog, validate_events

    before = batch_recommendations(served, 10, as_of=AS_OF)
    top = before[before["rank"] == 1].set_index("customer_id")
    rules = served.rules
    durable = set(rules.item_ids[~rules.repurchasable])
    events = pd.read_csv(SAMPLE / "events.csv.gz", dtype=str)
    purchases = events[(events["event_type"] == "purchase") & events["customer_key"].notna()]
    for row in purchases.iloc[::50].to_dict("records"):
        customer, _ = served.identify(row["channel"], row["customer_key"])
        had = set(rules.item_ids[rules.bought_by.get(customer, [])])
        if customer in top.index and top.loc[customer, "item_id"] in durable - had:
            break
    else:
        pytest.fail("no buyer in the sample whose first item is durable")
    item = top.loc[customer, "item_id"]
    bought = {**row, "item_id": item, "event_id": "batch-1", "event_time": "2024-09-30T12:00"}
    accepted, reasons = validate_events([bought])
    assert not any(reasons)
    log = EventLog.from_env()
    log.append(accepted)
    log.close()

    after = batch_recommendations(served_state(), 10, as_of=AS_OF)
    theirs = after[after["customer_id"] == customer]
    assert item not in set(theirs["item_id"]) and len(theirs) == 10
    assert item in set(after.loc[after["customer_id"] != customer, "item_id"])
    refused = {
        (buyer, bought_item)
        for buyer, columns in rules.bought_by.items()
        for bought_item in rules.item_ids[columns[~rules.rebought(buyer, columns)]]
    } | {(customer, item)}
    assert not refused & set(zip(after["customer_id"], after["item_id"], strict=True))


def test_omni_score_recommender_writes_every_customers_list(
    served: Any, client: Any, tmp_path: Path
) -> None:
    from experiments.pipelines.scoring import batch_recommendations

    expected = batch_recommendations(served, 5, as_of=AS_OF, channel="app")
    args = ["score", "recommender", "--n", "5", "--channel", "app", "--as-of", "2024-10-01"]
    salt = {"OMNI_SALT": os.environ["OMNI_SALT"]}
    here = omni(*args, "--out", str(tmp_path / "here.parquet"), env=salt)
    assert here.returncode == 0, here.stderr[-2000:]
    cluster = {**salt, "OMNI_DASK_SCHEDULER": client.scheduler.address}
    there = omni(*args, "--out", str(tmp_path / "there.parquet"), "--engine", "dask", env=cluster)
    assert there.returncode == 0, there.stderr[-2000:]
    for name in ("here", "there"):
        written = pd.read_parquet(tmp_path / f"{name}.parquet")
        assert list(written.columns) == [
            "customer_id", "item_id", "score", "rank", "fallback", "arm", "model_version", "as_of",
        ]  # fmt: skip
        assert len(written) == 5 * len(served.recommender.customer_ids_)
        pd.testing.assert_frame_equal(written, expected, check_exact=True, obj=name)
    refused = omni(*args, "--out", str(tmp_path / "x.parquet"), "--engine", "spark")
    assert refused.returncode == 2 and "inprocess or dask" in refused.stderr
    assert not (tmp_path / "x.parquet").exists()
    new = omni(*args, "--new-only", "--out", str(tmp_path / "new.parquet"), env=salt)
    assert new.returncode == 0, new.stderr[-2000:]
    written = pd.read_parquet(tmp_path / "new.parquet")
    rules = served.rules
    bought = {(c, i) for c, cols in rules.bought_by.items() for i in rules.item_ids[cols]}
    pairs = {
        name: set(zip(f["customer_id"], f["item_id"], strict=True))
        for name, f in (("new", written), ("usual", expected))
    }
    assert len(written) and not bought & pairs["new"] and bought & pairs["usual"]


def test_data_lost_with_a_worker_is_reported_in_one_sentence() -> None:
    from distributed.client import FutureCancelledError

    from experiments.cli.app import LOST_ON_THE_CLUSTER, lost_on_the_cluster

    assert lost_on_the_cluster(FutureCancelledError("sales-1", reason="already forgotten"))
    assert not lost_on_the_cluster(RuntimeError("already forgotten"))
    assert "$OMNI_DASK_MEMORY" in LOST_ON_THE_CLUSTER and LOST_ON_THE_CLUSTER.count(". ") == 0
