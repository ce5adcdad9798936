"""Where registered models live in MLflow, and how a champion's files are fetched.

The service loads what these names point at; training (``experiments``) registers under them.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

RECOMMENDER = "recommender"
FORECASTER = "demand_forecaster"
CHAMPION = "champion"
MODEL_DIR = Path("artifacts") / "model"  # inside a registered pyfunc: the saved model directory
# Inside a recommender's model directory: what serving needs besides the model (key map, habits,
# purchases, catalogue, latest stock, interaction weights), written by training.
CONTEXT_DIR = "context"


def champion_dir(name: str) -> Path:
    """Download the ``@champion`` of a registered model; return its saved model directory.

    Raises:
        mlflow.exceptions.MlflowException: when there is no champion.
    """
    return Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{CHAMPION}")) / MODEL_DIR
