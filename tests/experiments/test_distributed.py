"""Validation, unification and feature building on a Dask cluster (a LocalCluster of two worker
processes, shared by the module's tests) against in-process, on a partitioned data set with
corrupt rows, a key repeated across partitions, and logged events on days the files hold."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from experiments.pipelines import data as pipelines
from experiments.synthetic import GeneratorConfig, generate
from features.demand import build_panel, sales_from_events
from features.eventlog import validate_events
from features.identity import IdentityConfig
from features.ingest import REASON, load_dataset
from features.interactions import InteractionWeights, build_interactions
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
