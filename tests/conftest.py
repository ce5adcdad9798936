"""Shared fixtures: small generated data sets, built once per session."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from experiments.synthetic import GeneratorConfig, generate

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples" / "retail"


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
