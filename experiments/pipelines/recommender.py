"""Recommender selection: candidates from TOML, fitted on what each expects and scored on a
held-out split."""

from __future__ import annotations

import itertools
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from features.baskets import baskets_from_events
from features.interactions import (
    Interactions,
    InteractionWeights,
    build_interactions,
    build_popularity,
)
from models.evaluation import catalogue_coverage, ranking_metrics
from models.recommenders import ModelFitError, Recommender, TIFUKNNRecommender
from models.recommenders.models import is_whole
from models.rules import BusinessRules, recommend_with_rules

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
    return selection_config(read_config(path), path)


def read_config(path: Path) -> dict[str, Any]:
    """A selection TOML, parsed (one sentence when it cannot be)."""
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path} is not a readable TOML file ({exc}).") from exc


#: What a selection TOML may hold: its tables, and the keys of each.
CONFIG_KEYS = {
    "": ("selection", "candidates", "interactions", "rules"),
    "[selection]": ("metric", "k", "validation_days", "target"),
    "[[candidates]]": ("model", "grid"),
    "[rules]": ("timing",),
}


def known_keys(path: Path, where: str, table: Any, known: Iterable[str] | None = None) -> None:
    """Refuse, in one sentence, a table of a selection TOML that is not one or holds a key it
    does not take (a typo would otherwise be ignored without a word)."""
    known = tuple(CONFIG_KEYS[where] if known is None else known)
    name = where or "the file"
    if not isinstance(table, dict):
        raise ValueError(f"{path}: {name} must be a table, not {table!r}.")
    if unknown := sorted(set(table) - set(known)):
        raise ValueError(
            f"{path}: {name} has no {', '.join(map(repr, unknown))}; it takes {', '.join(known)}."
        )


def selection_config(raw: dict[str, Any], path: Path) -> SelectionConfig:
    """The candidates of a parsed selection TOML (``path`` names it in errors)."""
    known_keys(path, "", raw)
    selection = raw.get("selection", {})
    known_keys(path, "[selection]", selection)
    candidates = []
    for entry in raw.get("candidates", []):
        known_keys(path, "[[candidates]]", entry)
        if "model" not in entry:
            raise ValueError(f"{path}: every [[candidates]] entry needs a 'model'.")
        grid = entry.get("grid", {})
        if not isinstance(grid, dict):
            raise ValueError(f"{path}: {entry['model']}'s grid must be a table, not {grid!r}.")
        for name, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(
                    f"{path}: {entry['model']}'s grid gives {name} as {values!r}; a grid gives "
                    f"each parameter a list of values to try, e.g. {name} = [{values!r}]."
                )
        names = sorted(grid)
        for values in itertools.product(*(grid[n] for n in names)):
            candidates.append(Candidate(entry["model"], dict(zip(names, values, strict=True))))
    if not candidates:
        raise ValueError(f"{path} declares no [[candidates]].")
    for c in candidates:  # unknown models and bad parameter names fail now, not after an hour
        try:
            c.build()
        except TypeError as exc:
            raise ValueError(f"{path}: {c.label} cannot be built ({exc}).") from exc
    k = selection.get("k", 10)
    if not is_whole(k):
        raise ValueError(f"{path}: [selection] k must be a whole number of at least 1, not {k!r}.")
    metric = selection.get("metric", f"ndcg@{k}")
    known = ("map", f"ndcg@{k}", f"precision@{k}", f"recall@{k}")
    if metric not in known:
        raise ValueError(
            f"{path}: [selection] metric must be one of {', '.join(known)} (k = {k}), "
            f"not {metric!r}."
        )
    return SelectionConfig(metric, k, tuple(candidates))


@dataclass(frozen=True)
class TrainingInput:
    """What candidates fit on, built once from unified events: weighted interactions (with
    popularity per store and channel) for most models, basket lines for the TIFU-KNN family,
    over the same item columns."""

    interactions: Interactions
    events: pd.DataFrame

    @classmethod
    def from_events(cls, events: pd.DataFrame, weights: InteractionWeights) -> TrainingInput:
        matrix = build_interactions(events, weights=weights)
        interactions = Interactions(
            matrix.matrix, matrix.customer_ids, matrix.item_ids, build_popularity(events)
        )
        return cls(interactions, events)

    @cached_property
    def baskets(self) -> pd.DataFrame:
        """Basket lines, built when a model first needs them."""
        return baskets_from_events(self.events)

    def fit(self, model: Recommender) -> Recommender:
        """``model`` fitted on the input it expects."""
        if isinstance(model, TIFUKNNRecommender):
            data = self.interactions
            return model.fit_baskets(self.baskets, data.item_ids, data.popularity)
        return model.fit(self.interactions)


@dataclass
class CandidateResult:
    candidate: Candidate
    metrics: dict[str, float]
    fit_seconds: float
    model: Recommender


def evaluate(model: Recommender, relevant: pd.DataFrame, k: int) -> dict[str, float]:
    """Ranking metrics of ``model`` for the customers in ``relevant`` (history excluded: the
    protocol of the published MovieLens benchmarks)."""
    customers = relevant["customer_id"].unique()
    return _metrics(model.recommend(customers, n=k, exclude_seen=True), model, relevant, k)


def evaluate_served(
    model: Recommender,
    rules: BusinessRules,
    relevant: pd.DataFrame,
    k: int,
    now: pd.Timestamp | Mapping[str, pd.Timestamp] | None,
) -> dict[str, float]:
    """Ranking metrics of what the service would answer each customer in ``relevant`` at
    ``now`` (one time, or each customer's) — the same rules, repeats included where the rules
    allow them."""
    customers = relevant["customer_id"].unique()
    recs = recommend_with_rules(model, rules, customers, n=k, now=now)
    return _metrics(recs, model, relevant, k)


def _metrics(
    recs: pd.DataFrame, model: Recommender, relevant: pd.DataFrame, k: int
) -> dict[str, float]:
    metrics = ranking_metrics(recs, relevant, k=k)
    metrics["coverage"] = catalogue_coverage(recs, len(model.item_ids_))
    return metrics


def select(
    config: SelectionConfig,
    fit: Callable[[Recommender], Recommender],
    score: Callable[[Recommender], dict[str, float]],
    on_result: Callable[[CandidateResult], None] | None = None,
) -> tuple[list[CandidateResult], list[tuple[Candidate, str]]]:
    """Fit every candidate (``fit``) and score it (``score``, the metrics by name).

    Returns:
        The results, best first by the metric; and the candidates that refused this data
        (e.g. EASE above its catalogue limit) or could not be fitted on it, with the reason.
    """
    results, skipped = [], []
    for candidate in config.candidates:
        started = time.perf_counter()
        try:
            model = fit(candidate.build())
        except (ValueError, TypeError, ModelFitError) as exc:  # TypeError: a value's type
            skipped.append((candidate, str(exc)))
            continue
        seconds = time.perf_counter() - started
        result = CandidateResult(candidate, score(model), seconds, model)
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
