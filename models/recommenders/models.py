"""The recommenders: implicit ALS and BPR, item-kNN (BM25, cosine), EASE, TIFU-KNN and popularity.

Every class keeps scikit-learn's contract: ``__init__`` only stores hyper-parameters; ``fit``
builds the state (names ending in ``_``). ``OPENBLAS_NUM_THREADS=1`` should be set around
implicit (the CLI and the Makefile do).
"""

from __future__ import annotations

import warnings
from typing import Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.bpr import BayesianPersonalizedRanking
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
from implicit.recommender_base import ModelFitError as ImplicitFitError
from implicit.utils import ParameterWarning
from threadpoolctl import threadpool_limits

from features.baskets import BASKET_WEIGHTS, Decay, basket_order, ordered_vectors
from features.interactions import Interactions
from models.recommenders.base import ModelFitError, Recommender


class _FactorModel(Recommender):
    """Shared by ALS and BPR: scores are user factors . item factors."""

    caches = (*Recommender.caches, "_spare")
    user_factors_: np.ndarray
    item_factors_: np.ndarray

    def _scores(self, rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        vectors, items = self._query(rows, user_items)
        return vectors @ items.T

    def _item_vectors(self) -> np.ndarray:
        return self.item_factors_

    def _scores_one(self, row: int, items: np.ndarray) -> np.ndarray:
        return self.item_factors_ @ self.user_factors_[row]

    def _query(self, rows: np.ndarray, user_items: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.user_factors_[np.maximum(rows, 0)]
        unknown = rows < 0  # a history the model never trained on (e.g. context items)
        if unknown.any():
            vectors[unknown] = self._fold_in(sp.csr_matrix(user_items[unknown]))
        return vectors, self.item_factors_

    def _fold_in(self, user_items: sp.csr_matrix) -> np.ndarray:
        """User vectors for histories, item factors fixed: here the weighted mean of the item
        vectors (BPR has no closed form); ALS solves its own least squares."""
        weights = sp.diags(1.0 / np.maximum(np.asarray(user_items.sum(axis=1)).ravel(), 1e-9))
        return np.asarray(weights @ user_items @ self.item_factors_, dtype=np.float32)

    def _refresh_users(self, rows: np.ndarray, user_items: sp.csr_matrix) -> None:
        """Fold the changed customers in: their vectors are rewritten in place (a request
        scoring one of them at that instant may read a mix of old and new); new customers'
        rows come from spare capacity, so that the array is copied only when it grows by a
        quarter, not at each posted batch (a copy of 10^6 customers' vectors takes 0.1 s)."""
        n, factors = user_items.shape[0], self.user_factors_
        if n > len(factors):
            spare: np.ndarray = self.__dict__.get("_spare", np.empty((0, 0), np.float32))
            if n > len(spare) or factors.base is not spare:
                spare = np.zeros((n + n // 4, factors.shape[1]), dtype=np.float32)
                spare[: len(factors)] = factors
                self.__dict__["_spare"] = spare
            factors = spare[:n]
        factors[rows] = self._fold_in(sp.csr_matrix(user_items[rows]))
        self.user_factors_ = factors

    def _train(
        self,
        model: AlternatingLeastSquares | BayesianPersonalizedRanking,
        user_items: sp.csr_matrix,
    ) -> None:
        try:
            # One BLAS thread: implicit parallelises itself, and nested threads slow ALS badly.
            with threadpool_limits(limits=1, user_api="blas"):
                model.fit(user_items, show_progress=False)
        except ImplicitFitError as exc:
            raise ModelFitError(
                f"{type(self).__name__} produced non-finite factors ({exc})."
            ) from exc
        self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)
        self._check_factors()

    def _check_factors(self) -> None:
        for name in ("user_factors_", "item_factors_"):
            if not np.isfinite(getattr(self, name)).all():
                raise ModelFitError(
                    f"{type(self).__name__} produced non-finite {name.rstrip('_')}; "
                    "lower the learning rate or raise the regularization."
                )

    def _state(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors_, "item_factors": self.item_factors_}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.user_factors_ = state["user_factors"]
        self.item_factors_ = state["item_factors"]


class ALSRecommender(_FactorModel):
    """Implicit-feedback ALS (Hu, Koren, Volinsky): confidence = 1 + alpha x weight."""

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 5.0,
        iterations: int = 20,
        random_state: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state

    def _fit(self, user_items: sp.csr_matrix) -> None:
        _whole(factors=self.factors, iterations=self.iterations)  # 0 factors: every score 0
        model = AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.random_state,
            use_gpu=False,
            calculate_training_loss=False,
        )
        self._train(model, user_items)

    def _fold_in(self, user_items: sp.csr_matrix) -> np.ndarray:
        model = AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            use_gpu=False,
        )
        model.item_factors = self.item_factors_
        with threadpool_limits(limits=1, user_api="blas"):
            vectors = model.recalculate_user(np.arange(user_items.shape[0]), user_items)
        return np.asarray(vectors, dtype=np.float32)


class BPRRecommender(_FactorModel):
    """Bayesian Personalised Ranking (single-threaded, so a seed gives the same model)."""

    name = "bpr"

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        iterations: int = 100,
        random_state: int = 0,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state

    def _fit(self, user_items: sp.csr_matrix) -> None:
        _whole(factors=self.factors, iterations=self.iterations)
        model = BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            random_state=self.random_state,
            use_gpu=False,
            num_threads=1,
        )
        self._train(model, user_items)


class ItemKNNRecommender(Recommender):
    """Item-item nearest neighbours on BM25-weighted or cosine similarity (implicit)."""

    name = "item_knn"

    def __init__(
        self, similarity: str = "bm25", neighbours: int = 100, k1: float = 1.2, b: float = 0.75
    ) -> None:
        self.similarity = similarity
        self.neighbours = neighbours
        self.k1 = k1
        self.b = b

    def _fit(self, user_items: sp.csr_matrix) -> None:
        _whole(neighbours=self.neighbours)  # implicit's own fit crashes the process on 0
        if self.similarity == "bm25":
            model = BM25Recommender(K=self.neighbours, K1=self.k1, B=self.b)
        elif self.similarity == "cosine":
            model = CosineRecommender(K=self.neighbours)
        else:
            raise ValueError(f"similarity must be 'bm25' or 'cosine', not {self.similarity!r}.")
        with warnings.catch_warnings():  # implicit's own bm25_weight hands it COO, then warns
            warnings.simplefilter("ignore", category=ParameterWarning)
            model.fit(user_items, show_progress=False)
        self.similarity_ = sp.csr_matrix(model.similarity, dtype=np.float32)

    def _scores(self, rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray((user_items @ self.similarity_).todense())

    def _similar_scores(self, columns: np.ndarray) -> np.ndarray:
        scores = np.asarray(self.similarity_[columns].todense(), dtype=np.float32)
        scores[scores == 0] = -np.inf  # not a neighbour at all
        return scores

    def _state(self) -> dict[str, np.ndarray]:
        s = self.similarity_
        return {
            "sim_data": s.data,
            "sim_indices": s.indices,
            "sim_indptr": s.indptr,
            "sim_shape": np.array(s.shape),
        }

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.similarity_ = sp.csr_matrix(
            (state["sim_data"], state["sim_indices"], state["sim_indptr"]),
            shape=tuple(state["sim_shape"]),
        )


class EASERecommender(Recommender):
    """EASE (Steck 2019): a closed-form item-item model, B = I - P / diag(P), P = (X'X + l2 I)^-1.

    It needs a dense items x items inverse, so it refuses catalogues above ``max_items``.
    """

    name = "ease"

    def __init__(self, l2: float = 500.0, max_items: int = 20_000, binary: bool = True) -> None:
        self.l2 = l2
        self.max_items = max_items
        self.binary = binary

    def _fit(self, user_items: sp.csr_matrix) -> None:
        n_items = user_items.shape[1]
        if n_items > self.max_items:
            raise ValueError(
                f"EASE needs a dense {n_items:,} x {n_items:,} inverse; the catalogue is above "
                f"max_items={self.max_items:,}. Use another model or raise max_items."
            )
        if not self.l2 > 0:
            raise ValueError(f"l2 must be above 0, not {self.l2!r}.")
        x = self._input(user_items)
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        precision = np.linalg.inv(gram)
        weights = precision / (-np.diag(precision))
        weights[np.diag_indices_from(weights)] = 0.0
        # Stored transposed (row j = how every item predicts item j): the layout top-k wants.
        self.weights_ = np.ascontiguousarray(weights.T, dtype=np.float32)
        if not np.isfinite(self.weights_).all():
            raise ModelFitError("EASE produced non-finite weights; raise l2.")

    def _input(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        if not self.binary:
            return user_items
        positive = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
        positive.eliminate_zeros()
        positive.data[:] = 1.0  # histories hold positive weights only
        return positive

    def _scores(self, rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray(self._input(user_items) @ self.weights_.T)

    def _item_vectors(self) -> np.ndarray:
        return self.weights_

    def _scores_one(self, row: int, items: np.ndarray) -> np.ndarray | None:
        # Binary input: a score is the sum of the history items' weights towards each item.
        return self.weights_[:, items].sum(axis=1) if self.binary else None

    def _query(self, rows: np.ndarray, user_items: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        return self._input(user_items).toarray(), self.weights_

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.weights_ = state["weights"]


class TIFUKNNRecommender(Recommender):
    """TIFU-KNN (Hu et al., SIGIR 2020): a customer's own time-decayed item frequencies blended
    with the mean of their ``neighbours`` nearest customers' (cosine, among those who share an
    item with them), ``alpha`` on their own.

    It scores the items a customer bought before — the repeat purchases most of a grocery
    basket is — as well as new ones, so it is meant for ``recommend(..., exclude_seen=False)``.
    It fits on baskets (:meth:`fit_baskets`): their decayed vectors
    (:func:`features.baskets.decayed_vectors` with its :attr:`decay`); ``fit`` takes such
    vectors (or any weights) directly, each customer's row counting as one basket. Purchases
    posted later enter as a new newest group per customer and update (:meth:`_merged`; the
    service applies each posted batch, or each stretch of the log another worker wrote, as one
    update, so two batches minutes apart count as two baskets until the next training). Scoring
    compares a customer with every other one: its cost grows with the number of customers. A
    customer scored with ``extra_history`` may count themself among their neighbours.
    """

    name = "tifu_knn"
    caches = (*Recommender.caches, "_changed")
    posted_weights = BASKET_WEIGHTS
    baskets_: np.ndarray  # per customer: their number of baskets
    groups_: np.ndarray  # per customer: the decay groups their vector is the mean of

    def __init__(
        self,
        neighbours: int = 300,
        alpha: float = 0.7,
        group_size: int = 7,
        within: float = 0.9,
        across: float = 0.7,
    ) -> None:
        self.neighbours = neighbours
        self.alpha = alpha
        self.group_size = group_size
        self.within = within
        self.across = across

    @property
    def decay(self) -> Decay:
        return Decay(self.group_size, self.within, self.across)

    def fit_baskets(
        self, lines: pd.DataFrame, item_ids: pd.Index, popularity: pd.DataFrame | None = None
    ) -> Self:
        """Fit on basket lines (``customer_id, basket_id, item_id, time``): their decayed
        vectors over the columns ``item_ids``, with ``popularity`` for the fallback."""
        return self._fit_ordered(basket_order(lines), item_ids, popularity)

    def _fit_ordered(
        self, ordered: pd.DataFrame, item_ids: pd.Index, popularity: pd.DataFrame | None
    ) -> Self:
        """:meth:`fit_baskets` on lines already in :func:`features.baskets.basket_order`."""
        vectors = ordered_vectors(ordered, self.decay, item_ids)
        self.fit(Interactions(vectors.matrix, vectors.customer_ids, vectors.item_ids, popularity))
        first = ordered.drop_duplicates("customer_id")
        baskets = pd.Series(first["baskets"].to_numpy(), index=first["customer_id"].astype("str"))
        self.baskets_ = baskets.reindex(self.customer_ids_).to_numpy(np.float32)
        self.groups_ = np.ceil(self.baskets_ / self.group_size)
        return self

    def _fit(self, user_items: sp.csr_matrix) -> None:
        if not 0 <= self.alpha <= 1 or self.neighbours < 1:
            raise ValueError("alpha must be in [0, 1] and neighbours at least 1.")
        self.baskets_ = np.ones(user_items.shape[0], dtype=np.float32)  # fit_baskets counts
        self.groups_ = self.baskets_.copy()
        self.decay  # noqa: B018 -- checks the decay parameters
        self._refresh_users(np.zeros(0, dtype=np.int64), user_items)

    def _merged(
        self, rows: np.ndarray, histories: sp.csr_matrix, additions: sp.csr_matrix
    ) -> sp.csr_matrix:
        """The purchases posted for each customer (one call: one basket) as a new newest group
        of their vector, the mean of ``G`` decayed groups: ``(basket + across * G * vector) /
        (G + 1)``. Negative additions (returns) take an item out of the vector."""
        basket = sp.csr_matrix(additions > 0, dtype=np.float32)
        bought = np.asarray(basket.getnnz(axis=1) > 0)
        n = max(len(self.groups_), int(rows.max(initial=-1)) + 1)
        groups, baskets = _padded(self.groups_, n), _padded(self.baskets_, n)
        keep = np.where(bought, self.across * groups[rows] / (groups[rows] + 1), 1.0)
        fresh = np.where(bought, 1 / (groups[rows] + 1), 0.0)
        merged = sp.diags(keep.astype(np.float32)) @ histories
        merged = sp.csr_matrix(merged + sp.diags(fresh.astype(np.float32)) @ basket)
        returned = sp.csr_matrix(additions < 0, dtype=np.float32)
        groups[rows] += bought
        baskets[rows] += bought
        self.groups_, self.baskets_ = groups, baskets
        changed = bought | np.asarray(returned.getnnz(axis=1) > 0)
        self.__dict__.setdefault("_changed", set()).update(rows[changed].tolist())
        return sp.csr_matrix(merged - merged.multiply(returned), dtype=np.float32)

    def _refresh_users(self, rows: np.ndarray, user_items: sp.csr_matrix) -> None:
        """The neighbourhood — every customer's unit vector and history, one snapshot, so that a
        concurrent reader never pairs new unit rows with old histories — is rebuilt at fit and
        load (no rows) and once the customers whose vector a purchase or return changed since
        make up 1% of them: a changed customer's own history counts at once, as a neighbour of
        others from the next rebuild (a rebuild reads every history, 1-1.5 s at 30 M entries;
        per posted batch it would make each event cost that). Until then the neighbourhood
        keeps the histories of its snapshot: one more copy of the matrix in memory."""
        changed = self.__dict__.setdefault("_changed", set())
        if not len(rows) or 100 * len(changed) >= user_items.shape[0]:
            unit = _unit_rows(user_items)
            self.neighbourhood_ = (sp.csr_matrix(unit.T), user_items)
            changed.clear()

    def _scores(self, rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        own, neighbours = self._parts(rows, user_items)
        return sp.csr_matrix(self.alpha * own + (1 - self.alpha) * neighbours).toarray()

    def _parts(
        self, rows: np.ndarray, user_items: sp.csr_matrix
    ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """The customers' own vectors and the mean of their nearest neighbours' (sparse)."""
        unit_by_item, histories = self.neighbourhood_
        similarity = sp.csr_matrix(_unit_rows(user_items) @ unit_by_item)
        mean = _nearest_mean(similarity, rows, self.neighbours)
        return user_items, sp.csr_matrix(mean @ histories)

    def _similar_scores(self, columns: np.ndarray) -> np.ndarray:
        # Items bought by the same customers: cosine over the customers' vectors.
        items = _unit_rows(sp.csr_matrix(self.user_items_.T))
        return np.asarray((items[columns] @ items.T).todense(), dtype=np.float32)

    def _state(self) -> dict[str, np.ndarray]:
        return {"baskets": self.baskets_, "groups": self.groups_}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self._refresh_users(np.zeros(0, dtype=np.int64), self.user_items_)
        # Models saved before baskets were counted: every row one basket.
        ones = np.ones(self.user_items_.shape[0], dtype=np.float32)
        self.baskets_ = state.get("baskets", ones)
        self.groups_ = state.get("groups", np.ceil(self.baskets_ / self.group_size))


def is_whole(value: object) -> bool:
    """Whether ``value`` is a whole number of at least 1 (not a float, not a bool)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(value >= 1)


def _whole(**values: object) -> None:
    """Refuse, in one sentence, a parameter that is not a whole number of at least 1."""
    for name, value in values.items():
        if not is_whole(value):
            raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}.")


def _padded(values: np.ndarray, n: int) -> np.ndarray:
    """``values`` followed by zeros up to length ``n`` (rows of customers new since)."""
    out = np.zeros(n, dtype=np.float32)
    out[: len(values)] = values
    return out


def _unit_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1 / np.maximum(norms, 1e-12)) @ matrix, dtype=np.float32)


def _nearest_mean(similarity: sp.csr_matrix, rows: np.ndarray, k: int) -> sp.csr_matrix:
    """Per row, equal weights on its ``k`` most similar customers with a positive similarity
    (never the customer at ``rows``, their own row): the mean of their vectors, as a matrix."""
    columns, weights, indptr = [], [], [0]
    for i, own in enumerate(rows):
        found = similarity.indices[similarity.indptr[i] : similarity.indptr[i + 1]]
        values = similarity.data[similarity.indptr[i] : similarity.indptr[i + 1]]
        keep = (values > 0) & (found != own)
        found, values = found[keep], values[keep]
        if len(found) > k:
            found = found[np.argpartition(-values, k - 1)[:k]]
        columns.append(found)
        weights.append(np.full(len(found), 1 / max(len(found), 1), dtype=np.float32))
        indptr.append(indptr[-1] + len(found))
    return sp.csr_matrix(
        (np.concatenate(weights), np.concatenate(columns), np.array(indptr)),
        shape=similarity.shape,
    )


class PopularityRecommender(Recommender):
    """Most bought items: overall, or of the customer's store / channel when given."""

    name = "popularity"

    def __init__(self) -> None:
        pass

    def _fit(self, user_items: sp.csr_matrix) -> None:
        self.scores_ = self._fallback_scores(None, None)

    def _scores(self, rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.scores_, (len(rows), len(self.scores_))).copy()

    def _similar_scores(self, columns: np.ndarray) -> np.ndarray:
        # Without co-occurrence, "similar" is "popular": the best any item can say.
        return np.broadcast_to(self.scores_, (len(columns), len(self.scores_))).copy()

    def _state(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores_}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.scores_ = state["scores"]
