"""Where registered models live in MLflow, and how the files of the ones to serve are fetched.

The service loads what these names point at; training (``experiments``) registers under them.
A Bento built by ``omni build`` carries copies of the champions of its build in BentoML's model
store and names them in its arguments (:data:`PINNED_ARG`): served from that Bento, the service
loads those and never asks MLflow.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from features.eventlog import first_line
from models.errors import NoChampion, UnreadableChampion

RECOMMENDER = "recommender"
FORECASTER = "demand_forecaster"
CHAMPION = "champion"
MODEL_DIR = Path("artifacts") / "model"  # inside a registered pyfunc: the saved model directory
# Inside a recommender's model directory: what serving needs besides the model (key map, habits,
# purchases, catalogue, latest stock, interaction weights), written by training.
CONTEXT_DIR = "context"
#: The Bento argument (``bentoml.use_arguments()``) naming, per registered model, the BentoML
#: model that holds the version pinned at build: ``{"recommender": "recommender:<version>", ...}``.
PINNED_ARG = "pinned_models"
#: Labels of such a BentoML model: the registered model and version it is a copy of.
NAME_LABEL = "mlflow_name"
#: What MLflow answers when a registered model or its alias does not exist.
_MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
VERSION_LABEL = "mlflow_version"


def model_to_serve(name: str) -> tuple[str, Path]:
    """The MLflow version of the model to serve under ``name`` and its saved model directory:
    the version pinned in the Bento being served, else the current ``@champion``.

    Raises:
        NoChampion: when nothing is pinned and there is no champion.
        mlflow.exceptions.MlflowException: when the registry cannot be read.
        bentoml.exceptions.NotFound: when the pinned model is not in BentoML's model store.
    """
    tag = pinned_models().get(name)
    if tag is not None:
        import bentoml

        model = bentoml.models.get(tag)
        return str(model.info.labels[VERSION_LABEL]), Path(model.path) / MODEL_DIR
    return champion(name)


def champion(name: str) -> tuple[str, Path]:
    """The version the ``@champion`` alias of a registered model points at, and its saved model
    directory (downloaded by number: the files are those of the version reported, even if the
    alias moves meanwhile).

    Raises:
        NoChampion: when there is no champion.
        UnreadableChampion: when its files cannot be fetched.
        mlflow.exceptions.MlflowException: when the registry cannot be read.
    """
    found = champion_version(name)
    if found is None:
        raise NoChampion(f"The MLflow registry has no {name}@{CHAMPION}.")
    version = str(found.version)
    try:
        path = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}")
    except (MlflowException, OSError) as exc:
        raise UnreadableChampion(
            f"The files of {name} v{version}, the {CHAMPION}, cannot be read ({first_line(exc)})."
        ) from None
    return version, Path(path) / MODEL_DIR


def champion_version(name: str) -> ModelVersion | None:
    """The model version the ``@champion`` alias points at; None when the registered model or
    its alias does not exist (a registry that cannot be read raises).

    Raises:
        mlflow.exceptions.MlflowException: when the registry cannot be read.
    """
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in _MISSING:
            return None
        raise


def pinned_models() -> dict[str, str]:
    """``{registered model name: BentoML model tag}`` of the Bento being served (empty when the
    service runs from source)."""
    import bentoml  # only here: `omni train` imports this module and needs no BentoML

    return dict(getattr(bentoml.use_arguments(), PINNED_ARG, None) or {})
