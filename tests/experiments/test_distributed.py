"""Validation on a Dask cluster (a LocalCluster of two worker processes) against in-process, on
a partitioned data set with corrupt rows and a key repeated across partitions."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from experiments.synthetic import GeneratorConfig, generate
from features.ingest import load_dataset
from tests.processes import omni

pytestmark = pytest.mark.integration


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


def test_a_cluster_accepts_and_quarantines_exactly_what_in_process_does(partitioned: Path) -> None:
    from distributed import Client, LocalCluster

    from experiments.pipelines.distributed import load_dataset_on

    here = load_dataset(partitioned)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        there = load_dataset_on(client, partitioned)
    assert set(there) == set(here)
    for name in here:
        pd.testing.assert_frame_equal(there[name].accepted, here[name].accepted, obj=name)
        assert there[name].reasons() == here[name].reasons(), name
        assert there[name].rows == here[name].rows, name
    assert here["events"].reasons()["duplicate event_id"] >= 1
    assert sum(here["events"].reasons().values()) > 1  # the generator's corrupt rows too


def test_omni_validate_on_a_local_cluster(partitioned: Path, tmp_path: Path) -> None:
    args = ["validate", "--data", str(partitioned), "--out", str(tmp_path / "q"), "--json"]
    inprocess = omni(*args)
    dask = omni(*args, "--engine", "dask", env={"OMNI_DASK_SCHEDULER": "local"})
    assert inprocess.returncode == 0 and dask.returncode == 0, dask.stderr[-2000:]
    assert json.loads(dask.stdout) == json.loads(inprocess.stdout)
    assert omni(*args, "--engine", "spark").returncode == 2
