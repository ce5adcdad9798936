"""Shared fixtures: small generated data sets, built once per session; MLflow tracking stores;
the champions trained once on the sample and API keys for them; the test PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import mlflow
import pytest

from experiments.synthetic import GeneratorConfig, generate

if TYPE_CHECKING:
    import psycopg

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples" / "retail"
POSTGRES_ENV = "OMNI_TEST_POSTGRES_URL"
POSTGRES = "postgresql://127.0.0.1:5432/test"
#: A recommender training config with one candidate: the quickest that registers a champion.
RECOMMENDER_ONLY_EASE = """
[selection]
metric = "ndcg@10"
[[candidates]]
model = "ease"
grid = { l2 = [300.0] }
"""


@pytest.fixture(scope="session")
def small_config() -> GeneratorConfig:
    return GeneratorConfig(customers=400, items=80, stores=3, days=140, seed=11, format="csv")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory, small_config: GeneratorConfig) -> Path:
    """A generated CSV data set; tests must not modify it (copy it first)."""
    out = tmp_path_factory.mktemp("small") / "data"
    generate(small_config, out)
    return out


@contextmanager
def tracking_store(root: Path) -> Iterator[Path]:
    """A real MLflow tracking store (SQLite) in ``root``, current until the block ends."""
    patch = pytest.MonkeyPatch()
    patch.chdir(root)  # MLflow's default artifact root is ./mlruns
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    patch.setenv("OMNI_SALT", "integration-salt-of-thirty-two-characters")
    patch.setenv("OPENBLAS_NUM_THREADS", "1")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    try:
        yield root
    finally:
        patch.undo()
        mlflow.set_tracking_uri(None)  # back to $MLFLOW_TRACKING_URI, as it was before


@pytest.fixture(scope="session")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One store for the whole session, shared by the fixtures that train champions once."""
    with tracking_store(tmp_path_factory.mktemp("mlflow")) as root:
        yield root


@pytest.fixture
def own_tracking(tmp_path: Path) -> Iterator[Path]:
    """A store of this test's own: for tests that count runs or versions."""
    with tracking_store(tmp_path) as root:
        yield root


@pytest.fixture(scope="session")
def keys(tracking: Path) -> dict[str, str]:
    """One key per scope, in a keys file the service reads ($OMNI_KEYS_FILE)."""
    from serving.keys import SCOPES, create_key

    path = tracking / "keys.json"
    pytest.MonkeyPatch().setenv("OMNI_KEYS_FILE", str(path))
    return {scope: create_key([scope], path) for scope in SCOPES}


@pytest.fixture(scope="session")
def champions(tracking: Path, keys: dict[str, str]) -> Path:
    """Both champions trained on the sample; the service's event log in the tracking dir."""
    from experiments.pipelines.training import train_forecaster, train_recommender

    pytest.MonkeyPatch().setenv("OMNI_EVENTS_URL", f"sqlite:///{tracking}/serving-events.db")
    config = tracking / "ease.toml"
    config.write_text(RECOMMENDER_ONLY_EASE)
    train_recommender(SAMPLE, config)
    train_forecaster(SAMPLE, horizon=4, freq="W", windows=1)
    return tracking


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def postgres_admin() -> psycopg.Connection:
    """An autocommit connection to the test PostgreSQL server (``$OMNI_TEST_POSTGRES_URL``, by
    default postgresql://127.0.0.1:5432/test).

    When none answers the test is skipped, except under CI (``CI=true``), where the server is
    started before the tests: there it fails, so that a green run always includes PostgreSQL.
    """
    import psycopg  # a dependency of the project: never a reason to skip

    server = postgres_server()
    try:
        return psycopg.connect(server, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL server answers at {server} ({exc})".strip()
        if in_ci():
            pytest.fail(f"{reason}; under CI=true the PostgreSQL tests must run.", pytrace=False)
        pytest.skip(reason)


def postgres_server() -> str:
    return os.environ.get(POSTGRES_ENV, POSTGRES)


def postgres_database_url(database: str, driver: str | None = None) -> str:
    """The URL of another database on the test server: same host, port, user and options.
    ``driver`` names a SQLAlchemy driver (``psycopg`` gives ``postgresql+psycopg://``)."""
    parts = urlsplit(postgres_server())
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return urlunsplit(parts._replace(scheme=scheme, path=f"/{database}"))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty schema on the test PostgreSQL server, dropped afterwards
    (skipped, or under CI failed, when no server answers: :func:`postgres_admin`)."""
    server = postgres_server()
    admin = postgres_admin()
    schema = f"omni_test_{uuid.uuid4().hex[:12]}"  # nothing shared between tests
    try:
        admin.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in server else "?"
        yield f"{server}{separator}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()
