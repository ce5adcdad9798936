"""``omni build``: a Bento of the service with the MLflow champions of the moment pinned in it.

Each ``@champion`` is resolved to its version number, its files are copied into BentoML's model
store (labelled with the MLflow name and version), and the Bento is built from ``bentofile.yaml``
with those models in it and named in its arguments (:data:`serving.registry.PINNED_ARG`). Served
from that Bento, the service loads exactly those versions and never asks MLflow
(:func:`serving.registry.model_to_serve`); promoting a newer champion later changes nothing in
it. ``bentoml containerize <tag>`` puts the models into the image.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion

from experiments.deploy.process import REPO
from features.eventlog import first_line
from serving.registry import (
    CHAMPION,
    FORECASTER,
    NAME_LABEL,
    PINNED_ARG,
    RECOMMENDER,
    VERSION_LABEL,
    champion_version,
)

BENTOFILE = REPO / "bentofile.yaml"
#: The ``omni train`` command that makes each registered model's champion.
TRAIN_COMMANDS = {RECOMMENDER: "omni train recommender", FORECASTER: "omni train forecaster"}


@dataclass(frozen=True)
class PinnedModel:
    """A registered model's version as put into a Bento, and its BentoML model tag."""

    name: str
    version: str
    model_tag: str


@dataclass(frozen=True)
class Built:
    """A Bento (``tag``) and the model versions pinned in it."""

    tag: str
    models: list[PinnedModel]


def build(bentofile: Path = BENTOFILE, version: str | None = None) -> Built:
    """Build a Bento serving the current champions of both registered models, pinned.

    The build context is the directory of ``bentofile``; the models go to the BentoML model
    store and the Bento to the Bento store (both under ``$BENTOML_HOME``, ``~/bentoml`` by
    default).

    Args:
        bentofile: the build options (service, files, Python packages, environment).
        version: the Bento's version (BentoML makes one up by default).

    Raises:
        ValueError: when a registered model has no champion, ``bentofile`` is not a YAML
            mapping or ``version`` not a BentoML version — before any model is copied.
    """
    import bentoml
    import yaml

    try:
        config = yaml.safe_load(bentofile.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{bentofile} is not YAML: {first_line(exc)}.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{bentofile} is not a bentofile: a YAML mapping of build options.")
    if version is not None:
        bentoml.Tag("omnichannel", version)  # a ValueError in one sentence when it is not one
    champions = {name: _champion_version(name) for name in (RECOMMENDER, FORECASTER)}
    models = [_import_model(name, found) for name, found in champions.items()]
    config["models"] = [model.model_tag for model in models]
    labels = {f"{model.name}_version": model.version for model in models}
    previous = vars(bentoml.use_arguments())
    with tempfile.TemporaryDirectory(prefix="omni-bento-") as tmp:
        pinned_file = Path(tmp) / "bentofile.yaml"  # the project's, with the models added
        pinned_file.write_text(yaml.safe_dump(config, sort_keys=False))
        try:
            bento = bentoml.bentos.build_bentofile(
                str(pinned_file),
                build_ctx=str(bentofile.resolve().parent),
                version=version,
                labels=labels,
                args={PINNED_ARG: {model.name: model.model_tag for model in models}},
            )
        finally:
            _restore_arguments(previous)
    return Built(tag=str(bento.tag), models=models)


def _champion_version(name: str) -> ModelVersion:
    found = champion_version(name)
    if found is None:
        raise ValueError(
            f"no champion yet: the MLflow registry has no {name}@{CHAMPION}; "
            f"run {TRAIN_COMMANDS[name]} first"
        )
    return found


def _import_model(name: str, found: ModelVersion) -> PinnedModel:
    """Copy a registered model version (the whole MLflow model) into BentoML's model store."""
    import bentoml
    import mlflow

    version = str(found.version)
    with tempfile.TemporaryDirectory(prefix="omni-model-") as tmp:
        source = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp)
        labels = {NAME_LABEL: name, VERSION_LABEL: version}
        metadata: dict[str, Any] = {"mlflow_run_id": found.run_id or ""}
        with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
            shutil.copytree(source, model.path, dirs_exist_ok=True)
    return PinnedModel(name=name, version=version, model_tag=str(model.tag))


def _restore_arguments(arguments: dict[str, Any]) -> None:
    """Give back the process's Bento arguments: building sets them (as ``bentoml build --arg``
    does), and a service loaded later in this process must not believe it runs from the Bento."""
    from bentoml._internal.utils.args import set_arguments

    set_arguments(arguments)
