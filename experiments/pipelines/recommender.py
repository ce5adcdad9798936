"""Recommender selection: candidates from TOML, evaluated on a held-out split."""

from __future__ import annotations

import itertools
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from features.interactions import Interactions
from models.evaluation import catalogue_coverage, ranking_metrics
from models.recommenders import Recommender

DEFAULT_CONFIG = Path(__file__).with_name("recommender.toml")


@dataclass(frozen=True)
class Candidate:
    """One model with one set of hyper-parameters."""

    model: str
    params: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Recommender:
        if self.model not in Recommender.registry:
            known = ", ".join(sorted(Recommender.registry))
            raise ValueError(f"Unknown model {self.model!r} in the candidates (known: {known}).")
        return Recommender.registry[self.model](**self.params)

    @property
    def family(self) -> str:
        """The model, told apart by its similarity where it has one (item-kNN bm25 / cosine)."""
        similarity = self.params.get("similarity")
        return f"{self.model}_{similarity}" if similarity else self.model

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.model}({args})"


@dataclass(frozen=True)
class SelectionConfig:
    metric: str
    k: int
    candidates: tuple[Candidate, ...]


def load_selection_config(path: Path | None = None) -> SelectionConfig:
    """Read candidates and their grids from TOML; every grid combination is one candidate."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path} is not a readable TOML file ({exc}).") from exc
    selection = raw.get("selection", {})
    candidates = []
    for entry in raw.get("candidates", []):
        if "model" not in entry:
            raise ValueError(f"{path}: every [[candidates]] entry needs a 'model'.")
        grid = entry.get("grid", {})
        names = sorted(grid)
        for values in itertools.product(*(grid[n] for n in names)):
            candidates.append(Candidate(entry["model"], dict(zip(names, values, strict=True))))
    if not candidates:
        raise ValueError(f"{path} declares no [[candidates]].")
    for c in candidates:
        c.build()  # unknown models and bad parameter names fail now, not after an hour
    return SelectionConfig(
        selection.get("metric", "ndcg@10"), int(selection.get("k", 10)), tuple(candidates)
    )


@dataclass
class CandidateResult:
    candidate: Candidate
    metrics: dict[str, float]
    fit_seconds: float
    model: Recommender


def evaluate(model: Recommender, relevant: pd.DataFrame, k: int) -> dict[str, float]:
    """Ranking metrics of ``model`` for the customers in ``relevant`` (history excluded)."""
    customers = relevant["customer_id"].unique()
    recs = model.recommend(customers, n=k, exclude_seen=True)
    metrics = ranking_metrics(recs, relevant, k=k)
    metrics["coverage"] = catalogue_coverage(recs, len(model.item_ids_))
    return metrics


def select(
    config: SelectionConfig,
    train: Interactions,
    relevant: pd.DataFrame,
    on_result: Callable[[CandidateResult], None] | None = None,
) -> tuple[list[CandidateResult], list[tuple[Candidate, str]]]:
    """Fit every candidate on ``train`` and score it on ``relevant``.

    Returns:
        The results, best first by the metric; and the candidates that refused this data
        (e.g. EASE above its catalogue limit), with the reason.
    """
    results, skipped = [], []
    for candidate in config.candidates:
        started = time.perf_counter()
        try:
            model = candidate.build().fit(train)
        except ValueError as exc:
            skipped.append((candidate, str(exc)))
            continue
        seconds = time.perf_counter() - started
        result = CandidateResult(candidate, evaluate(model, relevant, config.k), seconds, model)
        results.append(result)
        if on_result:
            on_result(result)
    if not results:
        reasons = "; ".join(f"{c.label}: {why}" for c, why in skipped)
        raise ValueError(f"No candidate could be trained on this data ({reasons}).")
    return sorted(results, key=lambda r: -r.metrics[config.metric]), skipped


def best_per_model(results: list[CandidateResult]) -> list[CandidateResult]:
    """The best configuration of each model family (``results`` is sorted best first)."""
    seen: dict[str, CandidateResult] = {}
    for r in results:
        seen.setdefault(r.candidate.family, r)
    return list(seen.values())
