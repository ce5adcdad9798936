"""Loading the MLflow champions the service serves (no training code, no pickle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from models.forecast import LightGBMForecaster
from models.recommenders import Recommender

RECOMMENDER = "recommender"
FORECASTER = "demand_forecaster"
CHAMPION = "champion"


@dataclass(frozen=True)
class Champions:
    """The models being served and their registry versions."""

    recommender: Recommender
    recommender_version: str
    forecaster: LightGBMForecaster
    forecaster_version: str


def load_champions() -> Champions:
    """Download and load both ``@champion`` models from the registry (``MLFLOW_TRACKING_URI``).

    Raises:
        mlflow.exceptions.MlflowException: when a champion is missing or cannot be read.
    """
    client = MlflowClient()
    rec_version = client.get_model_version_by_alias(RECOMMENDER, CHAMPION)
    fc_version = client.get_model_version_by_alias(FORECASTER, CHAMPION)
    rec_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{RECOMMENDER}@{CHAMPION}"))
    fc_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{FORECASTER}@{CHAMPION}"))
    return Champions(
        recommender=Recommender.load(rec_dir / "artifacts" / "model"),
        recommender_version=str(rec_version.version),
        forecaster=LightGBMForecaster.load(fc_dir / "artifacts" / "model"),
        forecaster_version=str(fc_version.version),
    )
