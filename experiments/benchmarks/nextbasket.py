"""Next-basket recommendation on real grocery receipts: the full 2017 Complete Journey data.

Protocol of Li et al. 2023 ("A Next Basket Recommendation Reality Check", ACM TOIS): households
with at least 3 baskets; the last basket is the target, the one before is the validation basket,
everything earlier is history. Hyper-parameters are chosen on the validation basket with models
fitted on the history; the chosen ones are refitted on history + validation basket and scored
once on the target. Relevance is binary (an item is in the basket or not).

Metrics are Recall@k and nDCG@k, also split into **repeat** items (the household bought them
before the basket) and **explore** items (never before): for each part, the target restricted
to that part, averaged over the households whose target has items of that part; the ranked
list is the same.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.pipelines.training import (
    fit_final,
    load_training_options,
    rules_from_events,
    select_recommender,
)
from features.baskets import basket_order
from features.interactions import from_triples
from models.recommenders import (
    ALSRecommender,
    ItemKNNRecommender,
    RankedTIFURecommender,
    TIFUKNNRecommender,
)
from models.rules import top_for_customer

KS = (10, 20)
MIN_BASKETS = 3


@dataclass
class BasketSplit:
    """History lines, and per household the items of its validation and target baskets."""

    history: pd.DataFrame
    validation: dict[str, set[str]]
    target: dict[str, set[str]]
    validation_lines: pd.DataFrame
    target_time: dict[str, pd.Timestamp]


def split_last_baskets(lines: pd.DataFrame, min_baskets: int = MIN_BASKETS) -> BasketSplit:
    """Households with ``min_baskets`` or more: last basket target, the one before validation."""
    if min_baskets < 3:
        raise ValueError("min_baskets must be at least 3: a history, a validation and a target.")
    ordered = basket_order(lines)
    ordered = ordered[ordered["baskets"] >= min_baskets]
    kept = lines.merge(ordered[["customer_id", "basket_id", "back"]].drop_duplicates())
    return BasketSplit(
        history=kept[kept["back"] >= 2].drop(columns="back"),
        validation=_item_sets(ordered[ordered["back"] == 1]),
        target=_item_sets(ordered[ordered["back"] == 0]),
        validation_lines=kept[kept["back"] == 1].drop(columns="back"),
        target_time={
            str(c): t
            for c, t in kept[kept["back"] == 0].groupby("customer_id")["time"].min().items()
        },
    )


def _item_sets(lines: pd.DataFrame) -> dict[str, set[str]]:
    return {str(c): set(items) for c, items in lines.groupby("customer_id")["item_id"]}


# -- metrics ---------------------------------------------------------------------------------


def scores(
    ranked: dict[str, list[str]],
    truth: dict[str, set[str]],
    bought: dict[str, set[str]],
    ks: tuple[int, ...] = KS,
) -> dict[str, float]:
    """Recall@k and nDCG@k over every household of ``truth``; ``_repeat`` and ``_explore``
    variants on the target items the household had (not) bought before."""
    out: dict[str, float] = {}
    for part in ("", "_repeat", "_explore"):
        values: dict[str, list[float]] = {
            f"{m}@{k}{part}": [] for m in ("recall", "ndcg") for k in ks
        }
        for customer, items in truth.items():
            before = bought.get(customer, set())
            relevant = items & before if part == "_repeat" else items - before if part else items
            if not relevant:
                continue
            hits = np.array([item in relevant for item in ranked.get(customer, [])[: max(ks)]])
            for k in ks:
                top = hits[:k]
                gains = top / np.log2(np.arange(2, len(top) + 2)) if len(top) else top
                ideal = (1 / np.log2(np.arange(2, min(len(relevant), k) + 2))).sum()
                values[f"recall@{k}{part}"].append(top.sum() / len(relevant))
                values[f"ndcg@{k}{part}"].append(gains.sum() / ideal)
        out.update({name: float(np.mean(v)) if v else 0.0 for name, v in values.items()})
    return out


# -- models ----------------------------------------------------------------------------------

#: Given the fit lines and the households, each household's ranked items (best first).
Ranker = Callable[[pd.DataFrame, list[str]], dict[str, list[str]]]


def g_topfreq(lines: pd.DataFrame, customers: list[str], n: int = max(KS)) -> dict[str, list[str]]:
    """G-TopFreq: the items in the most baskets, the same for everyone."""
    return dict.fromkeys(customers, _global_top(_basket_counts(lines), n))


def p_topfreq(lines: pd.DataFrame, customers: list[str], n: int = max(KS)) -> dict[str, list[str]]:
    """P-TopFreq: the household's own items by the number of its baskets holding them (the more
    recent first on ties), filled up with G-TopFreq."""
    basket_counts = _basket_counts(lines)
    counts = basket_counts.rename("count").reset_index()
    last = lines.groupby(["customer_id", "item_id"])["time"].max().rename("last").reset_index()
    own = counts.merge(last).sort_values(
        ["customer_id", "count", "last"], ascending=[True, False, False]
    )
    mine = {c: list(items[:n]) for c, items in own.groupby("customer_id")["item_id"]}
    fill = _global_top(basket_counts, n + n)
    ranked = {}
    for customer in customers:
        head = mine.get(customer, [])
        taken = set(head)
        ranked[customer] = head + [i for i in fill if i not in taken][: n - len(head)]
    return ranked


def _global_top(basket_counts: pd.Series, n: int) -> list[str]:
    return basket_counts.groupby("item_id").sum().nlargest(n).index.tolist()


def _basket_counts(lines: pd.DataFrame) -> pd.Series:
    distinct = lines.drop_duplicates(["customer_id", "basket_id", "item_id"])
    return distinct.groupby(["customer_id", "item_id"]).size()


def tifu_knn(model: type[TIFUKNNRecommender] = TIFUKNNRecommender, **params: Any) -> Ranker:
    """TIFU-KNN, or its two-stage variant, fitted on the basket lines."""

    def rank(lines: pd.DataFrame, customers: list[str]) -> dict[str, list[str]]:
        items = pd.Index(np.sort(lines["item_id"].unique()), dtype="str")
        fitted = model(**params).fit_baskets(lines, items)
        return _ranked(fitted, customers, exclude_seen=False)

    return rank


def zoo(model: Callable[[], Any], *, exclude_seen: bool) -> Ranker:
    """A collaborative-filtering model of the zoo on basket counts."""

    def rank(lines: pd.DataFrame, customers: list[str]) -> dict[str, list[str]]:
        counts = _basket_counts(lines).reset_index(name="baskets")
        baskets = counts["baskets"].to_numpy()
        fitted = model().fit(from_triples(counts["customer_id"], counts["item_id"], baskets))
        return _ranked(fitted, customers, exclude_seen=exclude_seen)

    return rank


def _ranked(model: Any, customers: list[str], *, exclude_seen: bool) -> dict[str, list[str]]:
    recs = model.recommend(customers, n=max(KS), exclude_seen=exclude_seen)
    return {str(c): list(items) for c, items in recs.groupby("customer_id")["item_id"]}


#: The two-stage model the last full run chose on validation (docs/benchmarks.md).
CHOSEN_RANKED = {"group_size": 7, "within": 0.9, "across": 0.7, "neighbours": 100, "alpha": 0.7}


def candidates() -> dict[str, list[tuple[dict[str, Any], Ranker]]]:
    """Every model with its hyper-parameter grid (chosen on the validation basket). The zoo's
    models may recommend what a household bought before, except "ALS, no repeats": what today's
    default rules serve when no item is marked repurchasable (real catalogues carry no flag)."""
    tifu = [
        (
            {"group_size": g, "across": a, "neighbours": k, "alpha": alpha},
            tifu_knn(group_size=g, within=0.9, across=a, neighbours=k, alpha=alpha),
        )
        for g in (3, 7)
        for a in (0.7, 0.9)
        for k in (100, 300)
        for alpha in (0.7, 0.9)
    ]
    ranked = [
        (params, tifu_knn(RankedTIFURecommender, **params))
        for params in (
            {"group_size": 3, "within": 0.9, "across": 0.9, "neighbours": 100, "alpha": 0.7},
            CHOSEN_RANKED,
        )
    ]
    return {
        "G-TopFreq": [({}, g_topfreq)],
        "P-TopFreq": [({}, p_topfreq)],
        "TIFU-KNN": tifu,
        "TIFU-KNN + LambdaRank": ranked,
        "ALS": [({"factors": f}, zoo(_als(f), exclude_seen=False)) for f in (64, 128)],
        "item-kNN BM25": [
            ({"neighbours": k}, zoo(partial(ItemKNNRecommender, "bm25", k), exclude_seen=False))
            for k in (100, 300)
        ],
        "ALS, no repeats": [({"factors": 64}, zoo(_als(64), exclude_seen=True))],
    }


BONUSES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def explore_frontier(
    lines: pd.DataFrame,
    bonuses: tuple[float, ...] = BONUSES,
    model: type[TIFUKNNRecommender] = RankedTIFURecommender,
    **params: Any,
) -> list[dict[str, float]]:
    """What discovery costs: the model (default: the two-stage one, :data:`CHOSEN_RANKED`),
    fitted on history + validation basket, its scores re-sorted with each ``bonus`` added to
    every item the household never bought; the target's scores per bonus."""
    split = split_last_baskets(lines)
    full = pd.concat([split.history, split.validation_lines], ignore_index=True)
    before = _item_sets(full)
    items = pd.Index(np.sort(full["item_id"].unique()), dtype="str")
    fitted = model(**(params or CHOSEN_RANKED)).fit_baskets(full, items)
    # Every candidate the first stage proposes, and more.
    recs = fitted.recommend(sorted(split.target), n=200, exclude_seen=False)
    customers, listed = recs["customer_id"].astype(str), recs["item_id"].astype(str)
    new = np.array([i not in before.get(c, ()) for c, i in zip(customers, listed, strict=True)])
    frontier = []
    for bonus in bonuses:
        order = recs.assign(score=recs["score"] + bonus * new).sort_values(
            ["customer_id", "score"], ascending=[True, False], kind="stable"
        )
        ranked = {str(c): list(i[: max(KS)]) for c, i in order.groupby("customer_id")["item_id"]}
        frontier.append({"bonus": bonus, **scores(ranked, split.target, before)})
    return frontier


def _als(factors: int) -> Callable[[], ALSRecommender]:
    return partial(ALSRecommender, factors=factors, regularization=0.1, alpha=5.0, iterations=15)


@dataclass
class Row:
    model: str
    params: dict[str, Any]
    validation_ndcg10: float
    test: dict[str, float]
    fit_seconds: float
    peak_mb: float


def as_events(lines: pd.DataFrame) -> pd.DataFrame:
    """Basket lines as the unified purchase events a retailer's tills would send (one channel,
    the line's store and quantity; the household is the customer)."""
    return pd.DataFrame(
        {
            "event_time": lines["time"],
            "customer_id": lines["customer_id"],
            "item_id": lines["item_id"],
            "event_type": "purchase",
            "quantity": lines["quantity"],
            "store_id": lines["store_id"],
            "channel": "store",
        }
    )


def served(
    split: BasketSplit,
    lines: pd.DataFrame,
    config: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[Row, dict[str, list[str]], dict[str, list[str]]]:
    """What ``omni train recommender`` selects and fits on everything before the targets, and
    what /recommend then answers each household when it comes to shop (``now``: its target
    basket's time): the same functions, rules and timing; and what it answers with
    ``new_only`` (only items the household never bought)."""
    started = time.perf_counter()
    events = as_events(lines)
    options = load_training_options(config)
    selection = select_recommender(
        events,
        None,
        options,
        lambda r: progress(
            f"as served, {r.candidate.label}: validation {options.selection.metric} "
            f"{r.metrics[options.selection.metric]:.4f}, fit {r.fit_seconds:.0f} s"
        ),
    )
    for candidate, reason in selection.skipped:
        progress(f"as served, {candidate.label} skipped: {reason}")
    best = selection.results[0]
    model = fit_final(events, best.candidate, options.weights)
    rules = rules_from_events(events, model.item_ids_, None, selection.timing)
    items = model.item_ids_.to_numpy()
    ranked, new = {}, {}
    for household in sorted(split.target):
        now = split.target_time[household]
        columns, _, _ = top_for_customer(model, rules, household, max(KS), now=now)
        ranked[household] = list(items[columns])
        columns, _, _ = top_for_customer(model, rules, household, max(KS), now=now, new_only=True)
        new[household] = list(items[columns])
    row = Row(
        "as served",
        {"model": best.candidate.model, **best.candidate.params, "timing": selection.timing},
        best.metrics[options.selection.metric],
        {},
        time.perf_counter() - started,
        0.0,
    )
    return row, ranked, new


def run(
    lines: pd.DataFrame,
    progress: Callable[[str], None] = lambda _: None,
    config: Path | None = None,
) -> list[Row]:
    """Every model: the best grid point on validation, refitted and scored on the target; then
    the pipeline as served (:func:`served`, its own selection, with the ``omni train
    recommender`` TOML ``config``)."""
    split = split_last_baskets(lines)
    households = sorted(split.target)
    before_validation = _item_sets(split.history)
    full = pd.concat([split.history, split.validation_lines], ignore_index=True)
    before_target = _item_sets(full)
    rows = []
    for name, grid in candidates().items():
        best: tuple[float, dict[str, Any], Ranker] | None = None
        for params, ranker in grid:
            ranked = ranker(split.history, sorted(split.validation))
            score = scores(ranked, split.validation, before_validation)["ndcg@10"]
            progress(f"{name} {params}: validation nDCG@10 {score:.4f}")
            if best is None or score > best[0]:
                best = (score, params, ranker)
        assert best is not None
        tracemalloc.start()
        started = time.perf_counter()
        ranked = best[2](full, households)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        rows.append(
            Row(name, best[1], best[0], scores(ranked, split.target, before_target), seconds, peak)
        )
        progress(f"{name}: test nDCG@10 {rows[-1].test['ndcg@10']:.4f}")
    tracemalloc.start()
    row, ranked, new = served(split, full, config, progress)
    row.peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    row.test = scores(ranked, split.target, before_target)
    discovery = replace(
        row, model="as served, new_only", test=scores(new, split.target, before_target)
    )
    rows += [row, discovery]
    progress(f"{row.model}: test nDCG@10 {row.test['ndcg@10']:.4f}")
    return rows
