"""Two stages: TIFU-KNN and popularity propose candidates, a LightGBM LambdaRank model orders
them.

The ranker learns from each customer's last basket: the first stage is fitted on the baskets
before it, the candidates it proposes for that basket are labelled by what was in it, and the
ranker learns to order them. Its features are what the model keeps for every customer and item
— own and neighbours' decayed frequencies and their blend, in how many of their baskets the
customer bought the item and how many baskets ago last (moved at once by a purchase posted
later, :meth:`_merged`), how widely an item is bought and how often bought again (as of the
fit). A request with context items is scored as a history the model has no row for: without
the customer's basket counts.
"""

from __future__ import annotations

from typing import Self

import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.baskets import basket_order
from models.recommenders.base import ModelFitError, replace_rows, select_rows
from models.recommenders.models import TIFUKNNRecommender

FEATURES = [
    "own", "neighbours", "blend", "blend_share", "baskets_with", "basket_share",
    "baskets_since", "item_reach", "item_repeat", "customer_baskets", "customer_items",
]  # fmt: skip
#: Below every candidate's ranker score: items the first stage did not propose keep their
#: TIFU-KNN order after the candidates.
_NOT_PROPOSED = 1.0e3
_BATCH = 256


class RankedTIFURecommender(TIFUKNNRecommender):
    """TIFU-KNN's ``candidates`` best items plus the ``popular`` most bought (the fallback's
    popularity), reordered by a LambdaRank model trained on each customer's last basket
    (:meth:`fit_baskets`).

    ``fit`` on a matrix alone fits the first stage only (it has no baskets to learn an order
    from, and counts each item as bought in one basket) and answers as TIFU-KNN; so does a fit on
    baskets where fewer than ``min_customers`` customers have three.
    """

    name = "tifu_ranked"
    caches = (*TIFUKNNRecommender.caches, "_popular")
    ranker_: lgb.Booster | None
    counts_: sp.csr_matrix  # customers x items: baskets holding the item
    last_: sp.csr_matrix  # customers x items: the number of the last of them (1 = the first)

    def __init__(
        self,
        neighbours: int = 300,
        alpha: float = 0.7,
        group_size: int = 7,
        within: float = 0.9,
        across: float = 0.7,
        candidates: int = 100,
        popular: int = 50,
        rounds: int = 300,
        learning_rate: float = 0.03,
        leaves: int = 31,
        min_customers: int = 50,
    ) -> None:
        super().__init__(neighbours, alpha, group_size, within, across)
        self.candidates = candidates
        self.popular = popular
        self.rounds = rounds
        self.learning_rate = learning_rate
        self.leaves = leaves
        self.min_customers = min_customers

    def fit_baskets(
        self, lines: pd.DataFrame, item_ids: pd.Index, popularity: pd.DataFrame | None = None
    ) -> Self:
        """Learn the ranker on every customer's last basket, then fit the first stage on all
        the basket lines."""
        ordered = basket_order(lines)
        target = ordered[(ordered["back"] == 0) & (ordered["baskets"] >= 3)]
        ranker = None
        if target["customer_id"].nunique() >= self.min_customers:
            earlier = ordered.drop(index=target.index)
            moved = earlier["customer_id"].isin(target["customer_id"]).astype(int)
            earlier = earlier.assign(
                back=earlier["back"] - moved, baskets=earlier["baskets"] - moved
            )
            first = self.__class__(**self.get_params())
            # Popularity from those baskets too: the targets' purchases must not leak into it.
            first._fit_ordered(earlier, item_ids, None)
            ranker = _train_ranker(first, target)
        self._fit_ordered(ordered, item_ids, popularity)
        self.ranker_ = ranker
        return self

    def _fit_ordered(
        self, ordered: pd.DataFrame, item_ids: pd.Index, popularity: pd.DataFrame | None
    ) -> Self:
        """The first stage, and each customer's counts of baskets holding each item."""
        super()._fit_ordered(ordered, item_ids, popularity)
        pairs = (
            ordered.assign(number=ordered["baskets"] - ordered["back"])
            .groupby(["customer_id", "item_id"], observed=True)
            .agg(count=("number", "size"), last=("number", "max"))
            .reset_index()
        )
        rows = self.customer_ids_.get_indexer(pd.Index(pairs["customer_id"], dtype="str"))
        cols = self.item_ids_.get_indexer(pd.Index(pairs["item_id"], dtype="str"))
        inside = cols >= 0
        self.counts_, self.last_ = (
            sp.csr_matrix(
                (pairs[name].to_numpy(np.float32)[inside], (rows[inside], cols[inside])),
                shape=self.user_items_.shape,
            )
            for name in ("count", "last")
        )
        self._item_stats()
        return self

    def _fit(self, user_items: sp.csr_matrix) -> None:
        super()._fit(user_items)
        self.ranker_ = None
        bought = sp.csr_matrix(user_items > 0, dtype=np.float32)
        self.counts_, self.last_ = bought, bought.copy()
        self._item_stats()

    def _item_stats(self) -> None:
        """Per item: the share of customers who bought it, and of those, who bought it again."""
        buyers = np.asarray(self.counts_.getnnz(axis=0), dtype=np.float32)
        again = np.asarray((self.counts_ >= 2).sum(axis=0), dtype=np.float32).ravel()
        self.item_reach_ = buyers / max(self.counts_.shape[0], 1)
        self.item_repeat_ = again / np.maximum(buyers, 1)

    def _merged(
        self, rows: np.ndarray, histories: sp.csr_matrix, additions: sp.csr_matrix
    ) -> sp.csr_matrix:
        """TIFU-KNN's merge, and the posted purchases as one new basket per customer in the
        counts (swapped in first: a concurrent reader may pair them with the old histories)."""
        merged = super()._merged(rows, histories, additions)  # counts the new baskets
        basket = sp.csr_matrix(additions > 0, dtype=np.float32)
        counts = sp.csr_matrix(select_rows(self.counts_, rows) + basket, dtype=np.float32)
        last = select_rows(self.last_, rows)
        last = last - last.multiply(basket) + sp.diags(self.baskets_[rows]) @ basket
        self.counts_ = replace_rows(self.counts_, rows, counts)
        self.last_ = replace_rows(self.last_, rows, sp.csr_matrix(last, dtype=np.float32))
        return merged

    def _scores(self, rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        if self.ranker_ is None:
            return super()._scores(rows, user_items)
        out = []
        for start in range(0, len(rows), _BATCH):
            part = slice(start, start + _BATCH)
            pairs, features, blend = _candidates(self, rows[part], sp.csr_matrix(user_items[part]))
            scores = blend - _NOT_PROPOSED
            scores[pairs] = self.ranker_.predict(features, num_threads=1)
            out.append(scores)
        return np.vstack(out)

    def _popular_columns(self) -> np.ndarray:
        """The ``popular`` most bought items' columns (computed once)."""
        columns = self.__dict__.get("_popular")
        if columns is None:
            popularity = self._fallback_scores(None, None)
            columns = np.argsort(-popularity, kind="stable")[: self.popular]
            self.__dict__["_popular"] = columns
        return columns

    def _state(self) -> dict[str, np.ndarray]:
        text = self.ranker_.model_to_string() if self.ranker_ is not None else ""
        state = {**super()._state(), "ranker": np.frombuffer(text.encode(), dtype=np.uint8)}
        for name in ("counts", "last"):
            matrix = getattr(self, f"{name}_")
            state |= {f"{name}_{part}": getattr(matrix, part) for part in _CSR}
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        super()._set_state(state)
        text = state["ranker"].tobytes().decode()
        self.ranker_ = lgb.Booster(model_str=text) if text else None
        shape = self.user_items_.shape
        for name in ("counts", "last"):
            parts = tuple(state[f"{name}_{part}"] for part in _CSR)
            setattr(self, f"{name}_", sp.csr_matrix(parts, shape=shape))
        self._item_stats()


_CSR = ("data", "indices", "indptr")


def _candidates(
    model: RankedTIFURecommender, rows: np.ndarray, user_items: sp.csr_matrix
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """The first stage for these customers (``rows``, -1 for a history the model has no row
    for): the proposed (row, item) pairs, their :data:`FEATURES` (one row per pair) and the
    dense TIFU-KNN blend."""
    own_part, neighbours_part = model._parts(rows, user_items)
    own, neighbours = own_part.toarray(), neighbours_part.toarray()
    blend = model.alpha * own + (1 - model.alpha) * neighbours
    proposed = np.zeros(blend.shape, dtype=bool)
    k = min(model.candidates, blend.shape[1])
    best = np.argpartition(-blend, k - 1, axis=1)[:, :k]
    np.put_along_axis(proposed, best, True, axis=1)
    proposed &= blend > 0
    proposed[:, model._popular_columns()] = True
    r, c = np.nonzero(proposed)  # row-major: each customer's pairs together
    known = rows >= 0
    at = np.maximum(rows, 0)
    # Only the proposed pairs' entries, not dense rows over the catalogue.
    counts = np.asarray(model.counts_[at[r], c]).ravel() * known[r]
    last = np.asarray(model.last_[at[r], c]).ravel() * known[r]
    baskets = np.where(known, model.baskets_[at], 0.0)
    top = np.maximum(blend.max(axis=1), 1e-12)
    features = np.column_stack(
        [
            own[r, c],
            neighbours[r, c],
            blend[r, c],
            blend[r, c] / top[r],
            counts,
            counts / np.maximum(baskets[r], 1),
            np.where(last > 0, baskets[r] - last, -1),
            model.item_reach_[c],
            model.item_repeat_[c],
            baskets[r],
            np.asarray(user_items.getnnz(axis=1))[r],
        ]
    ).astype(np.float32)
    return (r, c), features, blend


def _train_ranker(first: RankedTIFURecommender, target: pd.DataFrame) -> lgb.Booster | None:
    """LambdaRank on the candidates ``first`` (the first stage, fitted on the baskets before
    the targets) proposes for each customer's ``target`` basket; None when fewer than
    ``min_customers`` lists hold both a bought and a not-bought item to learn from."""
    customers = pd.Index(target["customer_id"].astype(str).unique())
    rows = first.customer_ids_.get_indexer(customers)
    customers, rows = customers[rows >= 0], rows[rows >= 0]
    truth = set(zip(target["customer_id"].astype(str), target["item_id"].astype(str), strict=True))
    features, labels, groups = [], [], []
    items = first.item_ids_.to_numpy()
    for start in range(0, len(rows), _BATCH):
        part = rows[start : start + _BATCH]
        (r, c), x, _ = _candidates(first, part, sp.csr_matrix(first.user_items_[part]))
        who = customers[start : start + _BATCH].to_numpy()[r]
        y = np.fromiter(((w, i) in truth for w, i in zip(who, items[c], strict=True)), bool, len(r))
        sizes = np.bincount(r, minlength=len(part))
        hits = np.bincount(r, weights=y, minlength=len(part))
        keep = (hits > 0) & (hits < sizes)  # a list with no hit, or only hits, teaches nothing
        kept = keep[r]
        features.append(x[kept])
        labels.append(y[kept].astype(np.int32))
        groups.append(sizes[keep])
    group = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    if len(group) < first.min_customers:
        return None
    data = lgb.Dataset(
        np.vstack(features), np.concatenate(labels), group=group, feature_name=FEATURES
    )
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "learning_rate": first.learning_rate,
        "num_leaves": first.leaves,
        "num_threads": 1,
        "verbosity": -1,
        "seed": 0,
    }
    try:
        return lgb.train(params, data, num_boost_round=first.rounds)
    except lgb.basic.LightGBMError as exc:
        raise ModelFitError(f"The ranker could not be trained ({exc}).") from exc
