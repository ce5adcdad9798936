"""Shared fixtures: small generated data sets, built once per session; the test PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from experiments.synthetic import GeneratorConfig, generate

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples" / "retail"
POSTGRES_ENV = "OMNI_TEST_POSTGRES_URL"
POSTGRES = "postgresql://127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def small_config() -> GeneratorConfig:
    return GeneratorConfig(customers=400, items=80, stores=3, days=140, seed=11, format="csv")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory, small_config: GeneratorConfig) -> Path:
    """A generated CSV data set; tests must not modify it (copy it first)."""
    out = tmp_path_factory.mktemp("small") / "data"
    generate(small_config, out)
    return out


@pytest.fixture(scope="session")
def tracking(tmp_path_factory: pytest.TempPathFactory):
    """A real MLflow tracking store (SQLite) in a temporary directory, for the whole session."""
    root = tmp_path_factory.mktemp("mlflow")
    patch = pytest.MonkeyPatch()
    patch.chdir(root)  # MLflow's default artifact root is ./mlruns
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    patch.setenv("OMNI_SALT", "integration-salt")
    patch.setenv("OPENBLAS_NUM_THREADS", "1")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    yield root
    mlflow.set_tracking_uri(None)
    patch.undo()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty schema on the test PostgreSQL server, dropped afterwards.

    The server is ``$OMNI_TEST_POSTGRES_URL``, by default postgresql://127.0.0.1:5432/test. When
    none answers the test is skipped, except under CI (``CI=true``), where the server is started
    before the tests: there it fails, so that a green run always includes PostgreSQL.
    """
    import psycopg  # a dependency of the project: never a reason to skip

    server = os.environ.get(POSTGRES_ENV, POSTGRES)
    try:
        admin = psycopg.connect(server, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL server answers at {server} ({exc})".strip()
        if in_ci():
            pytest.fail(f"{reason}; under CI=true the PostgreSQL tests must run.", pytrace=False)
        pytest.skip(reason)
    schema = f"omni_test_{uuid.uuid4().hex[:12]}"  # nothing shared between tests
    try:
        admin.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in server else "?"
        yield f"{server}{separator}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()
