"""``omni train recommender``: select on a time split, log to MLflow, register, guard champion."""

from __future__ import annotations

import json
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import models.recommenders.mlflow_model as recommender_code
from experiments import pipelines
from experiments.recommender import (
    DEFAULT_CONFIG,
    Candidate,
    CandidateResult,
    SelectionConfig,
    evaluate,
    load_selection_config,
    select,
)
from features.identity import IdentityConfig
from features.interactions import (
    Interactions,
    InteractionWeights,
    build_interactions,
    build_popularity,
    split_by_time,
)

REGISTERED_NAME = "recommender"
CHAMPION = "champion"
EXPERIMENT = "recommender"


@dataclass
class TrainResult:
    selected: CandidateResult
    version: str
    promoted: bool
    champion_metric: float | None
    message: str
    seconds: float
    skipped: list[tuple[Candidate, str]]


def split_for_validation(
    events: pd.DataFrame, days: int, weights: InteractionWeights
) -> tuple[Interactions, pd.DataFrame]:
    """Train on everything before the last ``days``; validate on the new items each known
    customer bought in those days (items they had no history with: what a recommender is for)."""
    cutoff = events["event_time"].max() - pd.Timedelta(days=days)
    before, after = split_by_time(events, cutoff)
    train = build_interactions(before, weights=weights)
    train = Interactions(train.matrix, train.customer_ids, train.item_ids, build_popularity(before))
    bought = after[(after["event_type"] == "purchase") & after["customer_id"].notna()]
    relevant = bought[["customer_id", "item_id"]].astype("str").drop_duplicates()
    relevant = relevant[relevant["customer_id"].isin(train.customer_ids)]
    rows = train.rows_of(pd.Index(relevant["customer_id"]))
    cols = train.columns_of(pd.Index(relevant["item_id"]))
    known = cols >= 0
    seen = pd.Series(False, index=relevant.index)
    seen[known] = train.matrix[rows[known], cols[known]].A1 > 0
    return train, relevant[~seen.to_numpy()]


def load_training_options(path: Path | None) -> tuple[SelectionConfig, InteractionWeights, int]:
    """The selection config plus the ``[interactions]`` weights and ``validation_days``."""
    path = Path(path) if path else DEFAULT_CONFIG
    raw = tomllib.loads(path.read_text())
    weights = InteractionWeights(**raw.get("interactions", {}))
    days = int(raw.get("selection", {}).get("validation_days", 28))
    return load_selection_config(path), weights, days


def train_recommender(data_dir: Path, config_path: Path | None = None) -> TrainResult:
    """Validate + unify ``data_dir``, select a model, register it, move the champion if it wins."""
    started = time.perf_counter()
    config, weights, days = load_training_options(config_path)
    unified = pipelines.unify(data_dir, IdentityConfig.from_env()).unified
    train, relevant = split_for_validation(unified, days, weights)
    if relevant.empty:
        raise ValueError(
            f"{data_dir}: no customer bought a new item in the last {days} days, so there is "
            "nothing to validate on; lower validation_days or add data."
        )
    mlflow.set_experiment(EXPERIMENT)
    common = {**weights.as_params(), "validation_days": days, "data": str(data_dir)}

    def log_candidate(result: CandidateResult) -> None:
        with mlflow.start_run(run_name=result.candidate.label):
            mlflow.log_params(
                {"model": result.candidate.model, **result.candidate.params, **common}
            )
            mlflow.log_metrics({_metric_key(k): v for k, v in result.metrics.items()})
            mlflow.log_metric("fit_seconds", result.fit_seconds)
            mlflow.log_figure(_metrics_figure(result), "metrics.png")

    results, skipped = select(config, train, relevant, on_result=log_candidate)
    best = results[0]
    metric = config.metric
    champion_metric = _champion_metric(train, relevant, config)
    promoted = champion_metric is None or best.metrics[metric] >= champion_metric

    all_events = build_interactions(unified, weights=weights)
    all_events = Interactions(
        all_events.matrix, all_events.customer_ids, all_events.item_ids, build_popularity(unified)
    )
    final = best.candidate.build().fit(all_events)
    with (
        mlflow.start_run(run_name=f"register {best.candidate.label}"),
        tempfile.TemporaryDirectory() as tmp,
    ):
        mlflow.log_params({"model": best.candidate.model, **best.candidate.params, **common})
        mlflow.log_metrics({_metric_key(k): v for k, v in best.metrics.items()})
        info = mlflow.pyfunc.log_model(
            name="recommender",
            python_model=recommender_code.__file__,
            artifacts={recommender_code.ARTIFACT: str(final.save(Path(tmp) / "model"))},
            pip_requirements=["omnichannel-ml"],
            registered_model_name=REGISTERED_NAME,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(
        REGISTERED_NAME, version, "candidate", json.dumps(_candidate_json(best.candidate))
    )
    client.set_model_version_tag(
        REGISTERED_NAME, version, f"validation_{_metric_key(metric)}", f"{best.metrics[metric]:.6f}"
    )
    score = f"{metric} {best.metrics[metric]:.4f}"
    registered = f"{best.candidate.label} registered as {REGISTERED_NAME} v{version}"
    if champion_metric is None:
        message = f"{registered} and is now {CHAMPION} (there was none); {score}."
    elif promoted:
        message = f"{registered} and is now {CHAMPION}: {score} >= its {champion_metric:.4f}."
    else:
        message = (
            f"{registered}; the {CHAMPION} stays: {score} < its {champion_metric:.4f} "
            "on the same validation data."
        )
    if promoted:
        client.set_registered_model_alias(REGISTERED_NAME, CHAMPION, version)
    return TrainResult(
        best, version, promoted, champion_metric, message, time.perf_counter() - started, skipped
    )


def _champion_metric(
    train: Interactions, relevant: pd.DataFrame, config: SelectionConfig
) -> float | None:
    """The champion's configuration, refitted on this training split and scored on this
    validation split — the same data the challenger was scored on."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(REGISTERED_NAME, CHAMPION)
    except MlflowException:
        return None
    raw = version.tags.get("candidate")
    if raw is None:
        return None
    spec = json.loads(raw)
    model = Candidate(spec["model"], spec["params"]).build().fit(train)
    return evaluate(model, relevant, config.k)[config.metric]


def _candidate_json(candidate: Candidate) -> dict[str, Any]:
    return {"model": candidate.model, "params": candidate.params}


def _metric_key(name: str) -> str:
    return name.replace("@", "_at_")


def _metrics_figure(result: CandidateResult) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3))
    names = list(result.metrics)
    axis.bar(names, [result.metrics[n] for n in names], color="#4C72B0")
    axis.set_title(result.candidate.label, fontsize=8)
    axis.set_ylim(0, 1)
    figure.tight_layout()
    plt.close(figure)
    return figure
