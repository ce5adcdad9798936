"""Recommender selection: candidates from TOML, evaluation on a held-out split, benchmarks."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.interactions import Interactions
from models.evaluation import catalogue_coverage, ranking_metrics
from models.recommenders import Recommender

DEFAULT_CONFIG = Path(__file__).with_name("recommender.toml")
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
MOVIELENS_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


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


# -- data for benchmarks ----------------------------------------------------------------------


def stratified_split(
    pairs: pd.DataFrame, ratio: float = 0.75, seed: int = 42, by: str = "item_id"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """microsoft/recommenders' ``python_stratified_split``: within each group (item by default),
    a random ``ratio`` of the rows goes to training (ranks by a seeded uniform draw)."""
    # Their draw exactly: ``np.random.seed(seed); np.random.rand(n)``, without the global state.
    draw = np.random.RandomState(seed).rand(len(pairs))
    ordered = pairs.assign(_draw=draw).sort_values([by, "_draw"])
    groups = ordered.groupby(by, sort=False)
    rank = (groups.cumcount() + 1) / groups[by].transform("size")
    ordered = ordered.drop(columns="_draw")
    return ordered[rank <= ratio], ordered[rank > ratio]


def interactions_from_pairs(pairs: pd.DataFrame, item_ids: pd.Index | None = None) -> Interactions:
    """Binary interactions (every pair is one positive) over ``item_ids`` (default: those seen)."""
    customers = pd.Index(np.sort(pairs["customer_id"].unique()), dtype="str")
    items = (
        item_ids
        if item_ids is not None
        else pd.Index(np.sort(pairs["item_id"].unique()), dtype="str")
    )
    rows = customers.get_indexer(pd.Index(pairs["customer_id"]))
    cols = items.get_indexer(pd.Index(pairs["item_id"]))
    keep = cols >= 0
    matrix = sp.csr_matrix(
        (np.ones(keep.sum(), np.float32), (rows[keep], cols[keep])),
        shape=(len(customers), len(items)),
    )
    matrix.data[:] = 1.0  # repeated pairs count once
    return Interactions(matrix, customers, items)


def load_movielens_100k(cache: Path) -> pd.DataFrame:
    """MovieLens-100k as ``customer_id, item_id, rating, timestamp`` (strings for ids).

    Its licence forbids redistribution, so it is read from the ``recbole`` wheel on PyPI,
    downloaded into ``cache`` on first use (benchmark time only, never in tests).
    """
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / RECBOLE_WHEEL
    if not wheel.exists():
        pip = [sys.executable, "-m", "pip", "download", "recbole==1.2.1", "--no-deps"]
        proc = subprocess.run([*pip, "-d", str(cache)], capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not wheel.exists():
            raise RuntimeError(
                f"Could not download {RECBOLE_WHEEL} into {cache} (pip exit {proc.returncode})."
            )
    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read(MOVIELENS_MEMBER)
    frame = pd.read_csv(io.BytesIO(raw), sep="\t")
    frame.columns = ["customer_id", "item_id", "rating", "timestamp"]
    return frame.astype({"customer_id": "str", "item_id": "str"})


PUBLISHED_MOVIELENS = {  # k = 10: MAP, nDCG@10, precision@10, recall@10 (microsoft/recommenders)
    "BiVAE": (0.146, 0.475, 0.412, 0.219),
    "BPR (cornac)": (0.132, 0.442, 0.388, 0.213),
    "NCF": (0.108, 0.396, 0.347, 0.181),
    "SAR": (0.111, 0.382, 0.331, 0.176),
    "LightGCN": (0.089, 0.420, 0.380, 0.144),
}


@dataclass
class BenchmarkResult:
    """Test metrics of the best configuration of every model family, and which one was selected."""

    rows: list[dict[str, Any]]
    selected: dict[str, Any]
    seconds: float
    skipped: list[tuple[Candidate, str]]


def benchmark_movielens(config: SelectionConfig, cache: Path) -> BenchmarkResult:
    """The microsoft/recommenders protocol on MovieLens-100k, with honest model selection.

    Ratings split 75/25 per item (seed 42); every rating is a positive; items seen in training
    are removed; k = 10. Hyper-parameters and the model are chosen on a validation split carved
    from the training part the same way (never on the test split); the chosen configurations
    are then refitted on the whole training part and scored once on the test split.
    """
    ratings = load_movielens_100k(cache)
    train, test = stratified_split(ratings)
    fit_part, validation = stratified_split(train)
    items = pd.Index(np.sort(ratings["item_id"].unique()), dtype="str")
    return _benchmark(config, items, fit_part, validation, train, test)


def benchmark_completejourney(config: SelectionConfig, transactions: Path) -> BenchmarkResult:
    """Real grocery baskets (84.51° Complete Journey sample): the last 4 weeks are the test.

    Selection uses the 4 weeks before those as validation. The relevant items of a household
    are the products it bought in the held-out weeks and never before (the history is excluded
    from recommendations, as in the MovieLens protocol); households new in the test are skipped.
    """
    lines = pd.read_csv(
        transactions, usecols=["household_id", "product_id", "transaction_timestamp"], dtype=str
    )
    lines = lines.rename(columns={"household_id": "customer_id", "product_id": "item_id"})
    time_of = pd.to_datetime(lines["transaction_timestamp"])
    test_start = time_of.max() - pd.Timedelta(weeks=4)
    validation_start = test_start - pd.Timedelta(weeks=4)
    train, test = lines[time_of < test_start], lines[time_of >= test_start]
    fit_part = lines[time_of < validation_start]
    validation = lines[(time_of >= validation_start) & (time_of < test_start)]
    items = pd.Index(np.sort(lines["item_id"].unique()), dtype="str")
    return _benchmark(
        config, items, fit_part, _new_items(validation, fit_part), train, _new_items(test, train)
    )


def _new_items(held_out: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    pairs = held_out[["customer_id", "item_id"]].drop_duplicates()
    pairs = pairs[pairs["customer_id"].isin(history["customer_id"])]
    seen = pairs.merge(
        history[["customer_id", "item_id"]].drop_duplicates(), how="left", indicator=True
    )
    return pairs[(seen["_merge"] == "left_only").to_numpy()]


def _benchmark(
    config: SelectionConfig,
    items: pd.Index,
    fit_part: pd.DataFrame,
    validation: pd.DataFrame,
    train: pd.DataFrame,
    test: pd.DataFrame,
) -> BenchmarkResult:
    """Select on (fit_part, validation); refit each family's best on train; score on test."""
    started = time.perf_counter()
    results, skipped = select(config, interactions_from_pairs(fit_part, items), validation)
    full_train = interactions_from_pairs(train, items)
    rows = []
    for result in best_per_model(results):
        model = result.candidate.build().fit(full_train)
        rows.append(
            {
                "model": result.candidate.label,
                "validation_" + config.metric: result.metrics[config.metric],
                **evaluate(model, test, config.k),
            }
        )
    return BenchmarkResult(rows, rows[0], time.perf_counter() - started, skipped)
