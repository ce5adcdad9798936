"""Loading the MLflow champions the service serves (no training code, no pickle)."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient

from models.forecast import LightGBMForecaster
from models.recommenders import Recommender
from models.registry import CHAMPION, FORECASTER, RECOMMENDER, champion_dir


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
    return Champions(
        recommender=Recommender.load(champion_dir(RECOMMENDER)),
        recommender_version=str(rec_version.version),
        forecaster=LightGBMForecaster.load(champion_dir(FORECASTER)),
        forecaster_version=str(fc_version.version),
    )
