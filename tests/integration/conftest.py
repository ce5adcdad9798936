"""A real MLflow tracking store (SQLite) in a temporary directory, shared by the module."""

from __future__ import annotations

import mlflow
import pytest


@pytest.fixture(scope="package")
def tracking(tmp_path_factory: pytest.TempPathFactory):
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
