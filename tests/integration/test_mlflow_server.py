"""A shared MLflow tracking server on PostgreSQL, as operators run it.

A real ``mlflow server`` on a fresh database of the test PostgreSQL server, its artifacts in a
local directory; ``omni train`` logs to it over HTTP, the runs, versions and ``champion`` aliases
are rows in PostgreSQL and the model files in the artifact directory, and a real service loads
those champions from it. Every process is reaped and the database dropped afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from mlflow import MlflowClient

from experiments.deploy import process as serve
from serving.registry import CHAMPION, FORECASTER, RECOMMENDER
from tests.conftest import (
    RECOMMENDER_ONLY_EASE,
    REPO,
    SAMPLE,
    postgres_admin,
    postgres_database_url,
)
from tests.processes import OMNI, TAG, free_port, kill_tagged, post, readyz, serving, tail

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SALT = "integration-salt-of-thirty-two-characters"


@dataclass
class TrackingServer:
    uri: str
    artifacts: Path
    database_url: str  # for psycopg
    tag: str


def own_environment() -> dict[str, str]:
    """This process's environment without what other tests' fixtures set in it."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OMNI_"))}


@pytest.fixture
def mlflow_database() -> Iterator[str]:
    """A fresh database on the test PostgreSQL server; dropped afterwards, with whatever
    connections are left terminated (``WITH (FORCE)``)."""
    admin = postgres_admin()  # skipped, or under CI failed, when no server answers
    name = f"mlflow_{uuid.uuid4().hex[:12]}"
    try:
        admin.execute(f"CREATE DATABASE {name}")
        yield name
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def mlflow_server(mlflow_database: str, tmp_path: Path) -> Iterator[TrackingServer]:
    """``mlflow server`` on that database with a local artifact directory, answering /health.

    Stopped afterwards (before the database is dropped) with its uvicorn worker, and every
    process the test started with the tag is checked to be gone.
    """
    port = free_port()
    tag = uuid.uuid4().hex
    artifacts = tmp_path / "artifacts"
    home = tmp_path / "server"  # its working directory: nothing may land there
    home.mkdir()
    log = tmp_path / "mlflow-server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", postgres_database_url(mlflow_database, driver="psycopg"),
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # Its job runner (huey, for GenAI evaluation jobs) has nothing to do for this project.
    env = {**own_environment(), TAG: tag, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        try:
            serve.wait_ready(port, process, timeout=120, path="/health")
        except RuntimeError as exc:
            pytest.fail(f"mlflow server: {exc}\n{tail(log)}")
        yield TrackingServer(
            uri=f"http://127.0.0.1:{port}",
            artifacts=artifacts,
            database_url=postgres_database_url(mlflow_database),
            tag=tag,
        )
        assert not list(home.iterdir()), "the server wrote to its working directory"
    finally:
        serve.stop(process, timeout=20)  # SIGTERM to its group, SIGKILL for what outlives it
        left = kill_tagged(tag)
        assert not left, f"processes outlived the test: {left}"


def test_training_logs_to_the_server_and_the_service_loads_its_champions(
    mlflow_server: TrackingServer, tmp_path: Path
) -> None:
    from serving.keys import create_key

    operator = tmp_path / "operator"  # where the operator runs `omni`: nothing may land there
    operator.mkdir()
    config = tmp_path / "ease.toml"
    config.write_text(RECOMMENDER_ONLY_EASE)
    env = own_environment() | {
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "OMNI_SALT": SALT,
        "OMNI_EVENTS_URL": f"sqlite:///{tmp_path}/events.db",
        "OPENBLAS_NUM_THREADS": "1",
        TAG: mlflow_server.tag,
    }

    # Both trainings at once, as two machines would (one core each: LightGBM's two threads
    # would spin against the other training on a two-core runner).
    trainings = {
        "recommender": [
            *OMNI,
            "train",
            "recommender",
            "--data",
            str(SAMPLE),
            "--config",
            str(config),
        ],
        "forecaster": [
            *OMNI,
            "train",
            "forecaster",
            "--data",
            str(SAMPLE),
            "--horizon",
            "4",
            "--freq",
            "W",
        ],
    }
    running = {}
    for name, command in trainings.items():
        with (tmp_path / f"train-{name}.log").open("wb") as out:
            running[name] = subprocess.Popen(
                command,
                cwd=operator,
                env={**env, "OMP_THREAD_LIMIT": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
    try:
        for name, training in running.items():
            training.wait(timeout=300)
            output = (tmp_path / f"train-{name}.log").read_text(errors="replace")
            assert training.returncode == 0, f"omni train {name} failed:\n{output}"
            assert "champion" in output
    finally:
        for training in running.values():
            if training.poll() is None:
                training.kill()
                training.wait()
    assert not list(operator.iterdir()), "training wrote locally instead of to the server"

    # The server has the runs, the versions and the aliases...
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    champions = {
        name: client.get_model_version_by_alias(name, CHAMPION)
        for name in (RECOMMENDER, FORECASTER)
    }
    for name, version in champions.items():
        assert version.version == "1", name
        assert version.run_id is not None
        run = client.get_run(version.run_id)
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), "proxied artifacts"
        # ... whose files are in the server's artifact directory.
        location = client.get_model_version_download_uri(name, version.version)
        files = mlflow_server.artifacts / location.removeprefix("mlflow-artifacts:/")
        assert (files / "MLmodel").is_file(), f"{name}: no model files in {files}"
    for experiment in ("recommender", "demand_forecaster"):
        found = client.search_runs(
            [client.get_experiment_by_name(experiment).experiment_id]  # type: ignore[union-attr]
        )
        assert len(found) >= 2  # a candidate or backtest run, and the registering run
    assert list(mlflow_server.artifacts.rglob("metrics.png"))  # a candidate's figure
    assert list(mlflow_server.artifacts.rglob("forecast_vs_actual.png"))  # the backtest's

    # ... and they are rows in PostgreSQL: the backend store really is PostgreSQL.
    with psycopg.connect(mlflow_server.database_url) as database:
        assert set(database.execute("SELECT name FROM registered_models").fetchall()) == {
            (RECOMMENDER,),
            (FORECASTER,),
        }
        assert set(database.execute("SELECT name, version FROM model_versions").fetchall()) == {
            (RECOMMENDER, 1),
            (FORECASTER, 1),
        }
        aliases = "SELECT name, alias, version FROM registered_model_aliases"
        assert set(database.execute(aliases).fetchall()) == {
            (RECOMMENDER, CHAMPION, 1),
            (FORECASTER, CHAMPION, 1),
        }
        (runs,) = database.execute("SELECT count(*) FROM runs").fetchone() or (0,)
        assert runs >= 4

    # The service loads the champions from the server.
    keys = tmp_path / "keys.json"
    key = create_key(["recommend"], keys)
    service_env = {**env, "OMNI_KEYS_FILE": str(keys)}
    with serving(service_env, tmp_path / "service.log", cwd=REPO) as (port, _):
        ready = readyz(port)
        assert ready["ready"] is True
        assert ready["recommender_version"] == champions[RECOMMENDER].version
        assert ready["forecaster_version"] == champions[FORECASTER].version
        status, answer = post(
            port, "/recommend", {"customer_key": "LC-00009806", "channel": "store", "n": 5}, key
        )
        assert status == 200, answer
        assert answer["model_version"] == champions[RECOMMENDER].version
        assert len(answer["items"]) == 5
