"""One interface for every recommender, in scikit-learn style.

``fit(interactions)`` builds all state (attributes ending in ``_``) and returns ``self``;
``recommend`` and ``similar_items`` answer the same way for every model; ``save`` / ``load``
persist without pickle (NumPy ``.npz`` with ``allow_pickle=False``, Parquet id maps, JSON params).

A customer the model does not know, or one with no history, gets the popularity fallback — of
their store or channel when given — flagged ``fallback=True``: never an error.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.topk import topk as implicit_topk
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from features.interactions import POPULARITY, Interactions, InteractionWeights
from models.errors import UnknownIdError

RECOMMENDATION_COLUMNS = ["customer_id", "item_id", "score", "rank", "fallback"]
SIMILAR_COLUMNS = ["item_id", "similar_item_id", "score", "rank"]
_BATCH = 1024
#: Up to this many rows, replace_rows copies the spans between them; above, one gather.
_SPLICED_ROWS = 1000
_FILTERED = -3.0e38  # implicit's top-k marks filtered items with -FLT_MAX


class ModelFitError(RuntimeError):
    """Training produced an unusable model (e.g. NaN factors)."""


class UnknownItemError(UnknownIdError):
    """Item ids the model has never seen."""


class Recommender(BaseEstimator):
    """Base class: subclasses implement ``_fit``, ``_scores`` and ``_item_vectors`` (or
    ``_similar_scores``), plus ``_state`` / ``_set_state`` for persistence."""

    registry: ClassVar[dict[str, type[Recommender]]] = {}
    name: ClassVar[str] = "base"
    #: How events posted to the service count for this model (None: as in training).
    posted_weights: ClassVar[InteractionWeights | None] = None
    #: Lazily built attributes that a refit must drop.
    caches: ClassVar[tuple[str, ...]] = ("_rows", "_fallback_cache")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):  # a model of its own, not a base shared by models
            Recommender.registry[cls.name] = cls

    # -- training -------------------------------------------------------------------------------

    def fit(self, interactions: Interactions) -> Self:
        """Learn from a customers x items matrix; a refit replaces all state."""
        matrix = interactions.matrix
        if not sp.issparse(matrix) or matrix.shape[1] == 0:
            raise ValueError(
                "interactions must be a non-empty scipy.sparse customers x items matrix."
            )
        for cache in self.caches:
            self.__dict__.pop(cache, None)
        self.customer_ids_ = pd.Index(interactions.customer_ids, dtype="str")
        self.item_ids_ = pd.Index(interactions.item_ids, dtype="str")
        self.user_items_ = sp.csr_matrix(matrix, dtype=np.float32)
        self.popularity_ = _popularity_table(interactions)
        self._fit(self.user_items_)
        return self

    @abstractmethod
    def _fit(self, user_items: sp.csr_matrix) -> None: ...

    def partial_fit_users(
        self, customer_ids: list[str] | pd.Index, additions: sp.csr_matrix
    ) -> Self:
        """Add interaction weights for some customers, at once, without retraining.

        New customers get a row. Their histories change what is excluded and, for models that
        score from history (EASE, item-kNN), what is scored; factor models recompute these
        customers' vectors from their updated histories (ALS exactly, by its least squares).
        Safe beside concurrent :meth:`recommend` calls: new state is built aside and swapped in.

        Args:
            customer_ids: distinct customers, row-aligned with ``additions``.
            additions: (len(customer_ids) x n_items) weights to add (negative: returns).
        """
        check_is_fitted(self, "user_items_")
        ids = pd.Index(customer_ids, dtype="str")
        if not ids.is_unique or additions.shape != (len(ids), len(self.item_ids_)):
            raise ValueError(
                "partial_fit_users needs distinct customers, one row of additions each."
            )
        if not len(ids):
            return self
        row_of = self._row_of()
        rows = np.array([row_of.get(c, -1) for c in ids], dtype=np.int64)
        new = ids[rows < 0]
        rows[rows < 0] = len(self.customer_ids_) + np.arange(len(new))
        histories = select_rows(self.user_items_, rows)
        merged = self._merged(rows, histories, sp.csr_matrix(additions, dtype=np.float32))
        merged.data[merged.data < 0] = 0.0
        merged.eliminate_zeros()
        user_items = replace_rows(self.user_items_, rows, merged)
        # Order matters to a concurrent reader: model state, then histories, then the id index.
        self._refresh_users(rows, user_items)
        self.user_items_ = user_items
        if len(new):
            first = len(self.customer_ids_)
            self.customer_ids_ = self.customer_ids_.append(new)
            row_of.update(zip(new, range(first, first + len(new)), strict=True))
        return self

    def _merged(
        self, rows: np.ndarray, histories: sp.csr_matrix, additions: sp.csr_matrix
    ) -> sp.csr_matrix:
        """The new histories of the customers at ``rows`` (those past the matrix are new) from
        their ``histories`` and posted ``additions`` (row-aligned): by default their sum."""
        return sp.csr_matrix(histories + additions, dtype=np.float32)

    def _row_of(self) -> dict[str, int]:
        """customer id -> matrix row, as a dict (a pandas lookup costs ~100 us per call)."""
        rows = self.__dict__.get("_rows")
        if rows is None:
            rows = self.__dict__["_rows"] = dict(
                zip(self.customer_ids_.tolist(), range(len(self.customer_ids_)), strict=True)
            )
        return rows

    def _refresh_users(self, rows: np.ndarray, user_items: sp.csr_matrix) -> None:
        """Update per-customer state for these rows of the new histories (default: none)."""

    @abstractmethod
    def _scores(self, rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        """Dense scores (len(rows) x n_items) for these matrix rows, given their history rows."""

    # -- inference ------------------------------------------------------------------------------

    def recommend(
        self,
        customer_ids: list[str] | pd.Index | np.ndarray,
        n: int = 10,
        *,
        exclude_seen: bool = True,
        exclude: sp.csr_matrix | None = None,
        allowed: np.ndarray | None = None,
        store_id: str | None = None,
        channel: str | None = None,
        extra_history: sp.csr_matrix | None = None,
    ) -> pd.DataFrame:
        """Top ``n`` items per customer, best first.

        Args:
            customer_ids: who to recommend for (unknown ids get the popularity fallback).
            n: list length (at most; fewer when rules leave fewer items).
            exclude_seen: drop items in the customer's training history.
            exclude: boolean (len(customer_ids) x n_items) matrix of further items to drop,
                row-aligned with ``customer_ids`` (business rules).
            allowed: boolean mask over items; False items are never recommended.
            store_id, channel: the context, for the popularity fallback.
            extra_history: weights (len(customer_ids) x n_items) added to the histories for
                this call only, e.g. the items being looked at now; scored from, and excluded
                like history when ``exclude_seen``.

        Returns:
            Columns ``customer_id, item_id, score, rank, fallback``.
        """
        check_is_fitted(self, "user_items_")
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}.")
        ids = pd.Index(customer_ids, dtype="str")
        rows = self.customer_ids_.get_indexer(ids)
        known = sp.diags((rows >= 0).astype(np.float32))  # an unknown customer has no history
        history = sp.csr_matrix(known @ self.user_items_[np.maximum(rows, 0)])
        if extra_history is not None:
            history = sp.csr_matrix(history + extra_history, dtype=np.float32)
            # These customers are scored from their whole history, folded in afresh.
            rows = np.where(np.asarray(extra_history.getnnz(axis=1)) > 0, -1, rows)
        history.eliminate_zeros()
        cold = np.asarray(history.getnnz(axis=1) == 0)
        k = min(n, len(self.item_ids_))
        top = np.zeros((len(ids), k), dtype=np.int64)
        top_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
        for start in range(0, len(ids), _BATCH):
            batch = slice(start, start + _BATCH)
            blocked = history[batch] if exclude_seen else None
            if exclude is not None:
                extra = sp.csr_matrix(exclude[batch], dtype=bool)
                blocked = extra if blocked is None else sp.csr_matrix(blocked.astype(bool) + extra)
            for group, group_rows in ((~cold[batch], None), (cold[batch], "fallback")):
                if not group.any():
                    continue
                where = np.flatnonzero(group) + start
                group_blocked = blocked[group] if blocked is not None else None
                if group_rows is None:
                    found, scores = self._rank(
                        rows[where], history[where], k, group_blocked, allowed
                    )
                else:
                    fallback = np.tile(self._fallback_scores(store_id, channel), (len(where), 1))
                    found, scores = _rank_dense(fallback, k, group_blocked, allowed)
                top[where], top_scores[where] = found, scores
        keep = np.isfinite(top_scores) & (top_scores > _FILTERED)
        per_row = keep.sum(axis=1)
        return pd.DataFrame(
            {
                "customer_id": np.repeat(ids.to_numpy(), per_row),
                "item_id": self.item_ids_.to_numpy()[top[keep]],
                "score": top_scores[keep],
                "rank": np.concatenate([np.arange(1, c + 1) for c in per_row]) if len(ids) else [],
                "fallback": np.repeat(cold, per_row),
            },
            columns=RECOMMENDATION_COLUMNS,
        )

    def scores_for(
        self,
        customer_id: str,
        extra_history: sp.csr_matrix | None = None,
        *,
        store_id: str | None = None,
        channel: str | None = None,
    ) -> tuple[np.ndarray, bool]:
        """One customer's score for every item, and whether it is the popularity fallback.

        The per-request path of the service: the same scores :meth:`recommend` ranks, without
        its batching and tables. ``extra_history`` (1 x n_items) is added for this call only.
        """
        check_is_fitted(self, "user_items_")
        n_items = len(self.item_ids_)
        rows = np.array([self._row_of().get(customer_id, -1)])
        no_extra = extra_history is None or not extra_history.nnz
        if rows[0] >= 0:
            ui, row = self.user_items_, rows[0]
            span = slice(ui.indptr[row], ui.indptr[row + 1])
            if no_extra and span.stop > span.start:
                quick = self._scores_one(row, ui.indices[span])
                if quick is not None:
                    return quick, False
            history = sp.csr_matrix(
                (ui.data[span], ui.indices[span], [0, span.stop - span.start]), shape=(1, n_items)
            )
        else:
            history = sp.csr_matrix((1, n_items), dtype=np.float32)
        if not no_extra:
            history = sp.csr_matrix(history + extra_history, dtype=np.float32)
            rows = np.array([-1])  # scored from the whole history, folded in afresh
        if not history.nnz:
            return self._fallback_scores(store_id, channel).copy(), True
        return np.asarray(self._scores(rows, history), dtype=np.float32)[0], False

    def _scores_one(self, row: int, items: np.ndarray) -> np.ndarray | None:
        """Scores of one known, unchanged customer from their row and history items, when a
        model can do it without sparse matrices (the service's hot path); None otherwise."""
        return None

    def _rank(
        self,
        rows: np.ndarray,
        history: sp.csr_matrix,
        k: int,
        blocked: sp.csr_matrix | None,
        allowed: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (item indices, scores) per row; blocked and disallowed items are left out.

        Models whose scores are a dot product (see ``_query``) are ranked by implicit's
        multi-threaded C++ top-k; the others score densely and partition in NumPy.
        """
        query = self._query(rows, history)
        if query is None:
            return _rank_dense(self._scores(rows, history), k, blocked, allowed)
        vectors, items = query
        filter_items = np.flatnonzero(~allowed).astype(np.int32) if allowed is not None else None
        found, scores = implicit_topk(
            items,
            np.ascontiguousarray(vectors, dtype=np.float32),
            k,
            filter_query_items=sp.csr_matrix(blocked, dtype=np.float32)
            if blocked is not None
            else None,
            filter_items=filter_items if filter_items is not None and len(filter_items) else None,
        )
        return found.astype(np.int64), scores

    def _query(
        self, rows: np.ndarray, history: sp.csr_matrix
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(query vectors, item vectors) when scores are their dot product, else None."""
        return None

    def similar_items(self, item_ids: list[str] | pd.Index, n: int = 10) -> pd.DataFrame:
        """The ``n`` items most similar to each given item (never the item itself).

        Raises:
            UnknownItemError: naming the ids the model does not know.
        """
        check_is_fitted(self, "user_items_")
        ids = pd.Index(item_ids, dtype="str")
        columns = self.item_ids_.get_indexer(ids)
        if (columns < 0).any():
            unknown = ", ".join(map(repr, ids[columns < 0][:5]))
            raise UnknownItemError(f"Unknown item id(s): {unknown}.")
        scores = self._similar_scores(columns)
        scores[np.arange(len(columns)), columns] = -np.inf
        top = _top_indices(scores, n)
        frames = []
        for i, item in enumerate(ids):
            keep = top[i][np.isfinite(scores[i, top[i]])]
            frames.append(
                pd.DataFrame(
                    {
                        "item_id": item,
                        "similar_item_id": self.item_ids_[keep],
                        "score": scores[i, keep],
                        "rank": np.arange(1, len(keep) + 1),
                    }
                )
            )
        return (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=SIMILAR_COLUMNS)
        )

    def _similar_scores(self, columns: np.ndarray) -> np.ndarray:
        """Cosine similarity of item vectors (models with item vectors)."""
        vectors = self._item_vectors()
        norms = np.linalg.norm(vectors, axis=1)
        norms[norms == 0] = 1.0
        unit = vectors / norms[:, None]
        return (unit[columns] @ unit.T).astype(np.float32)

    def _item_vectors(self) -> np.ndarray:
        raise NotImplementedError

    def _fallback_scores(self, store_id: str | None, channel: str | None) -> np.ndarray:
        """Popularity in the most specific segment that has any: store, channel, global
        (computed once per segment; do not modify the array returned)."""
        cache = self.__dict__.setdefault("_fallback_cache", {})
        key = (store_id, channel)
        if key not in cache:
            cache[key] = self._segment_popularity(store_id, channel)
        return cache[key]

    def _segment_popularity(self, store_id: str | None, channel: str | None) -> np.ndarray:
        for segment_type, segment in (("store", store_id), ("channel", channel), ("global", "all")):
            if segment is None:
                continue
            table = self.popularity_
            rows = table[(table["segment_type"] == segment_type) & (table["segment"] == segment)]
            if len(rows):
                scores = np.zeros(len(self.item_ids_), dtype=np.float32)
                columns = self.item_ids_.get_indexer(rows["item_id"])
                inside = columns >= 0
                # Scale below any model score is unnecessary: fallback rows are flagged.
                scores[columns[inside]] = rows[POPULARITY].to_numpy(dtype=np.float32)[inside]
                return scores
        return np.zeros(len(self.item_ids_), dtype=np.float32)

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: Path | str) -> Path:
        """Write the fitted model to directory ``path`` (created); no pickle anywhere."""
        check_is_fitted(self, "user_items_")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "model.json").write_text(
            json.dumps({"model": self.name, "params": self.get_params()}, indent=2, default=str)
        )
        pd.DataFrame({"customer_id": self.customer_ids_}).to_parquet(path / "customers.parquet")
        pd.DataFrame({"item_id": self.item_ids_}).to_parquet(path / "items.parquet")
        self.popularity_.to_parquet(path / "popularity.parquet")
        ui = self.user_items_
        arrays = {
            "ui_data": ui.data,
            "ui_indices": ui.indices,
            "ui_indptr": ui.indptr,
            "ui_shape": np.array(ui.shape),
            **self._state(),
        }
        np.savez(path / "arrays.npz", allow_pickle=False, **arrays)
        return path

    @staticmethod
    def load(path: Path | str) -> Recommender:
        """Load a model written by :meth:`save`, whatever its class."""
        path = Path(path)
        meta = json.loads((path / "model.json").read_text())
        cls = Recommender.registry.get(meta["model"])
        if cls is None:
            raise ValueError(f"{path / 'model.json'} names an unknown model {meta['model']!r}.")
        model = cls(**meta["params"])
        model.customer_ids_ = pd.Index(
            pd.read_parquet(path / "customers.parquet")["customer_id"], dtype="str"
        )
        model.item_ids_ = pd.Index(pd.read_parquet(path / "items.parquet")["item_id"], dtype="str")
        # Models saved before popularity counted purchase lines named the column "units".
        popularity = pd.read_parquet(path / "popularity.parquet")
        model.popularity_ = popularity.rename(columns={"units": POPULARITY})
        with np.load(path / "arrays.npz", allow_pickle=False) as arrays:
            state = {k: arrays[k] for k in arrays.files}
        model.user_items_ = sp.csr_matrix(
            (state.pop("ui_data"), state.pop("ui_indices"), state.pop("ui_indptr")),
            shape=tuple(state.pop("ui_shape")),
        )
        model._set_state(state)
        return model

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _set_state(self, state: dict[str, np.ndarray]) -> None: ...


def _popularity_table(interactions: Interactions) -> pd.DataFrame:
    if interactions.popularity is not None:
        return interactions.popularity.reset_index(drop=True)
    buyers = np.asarray((interactions.matrix > 0).sum(axis=0)).ravel()
    return pd.DataFrame(
        {
            "segment_type": "global",
            "segment": "all",
            "item_id": pd.Index(interactions.item_ids, dtype="str"),
            POPULARITY: buyers.astype(np.float64),
        }
    )


def _top_indices(scores: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the ``n`` largest scores per row, best first (ties: lower index)."""
    n = min(n, scores.shape[1])
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _rank_dense(
    scores: np.ndarray, k: int, blocked: sp.csr_matrix | None, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if blocked is not None and blocked.nnz:
        coo = blocked.tocoo()
        scores[coo.row, coo.col] = -np.inf
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    top = _top_indices(scores, k)
    return top, np.take_along_axis(scores, top, axis=1)


def select_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """These rows of ``matrix`` (empty for rows past its end), in order."""
    inside = rows < matrix.shape[0]
    picked = sp.csr_matrix(matrix[rows[inside]]).tocoo()
    return sp.csr_matrix(
        (picked.data, (np.flatnonzero(inside)[picked.row], picked.col)),
        shape=(len(rows), matrix.shape[1]),
        dtype=np.float32,
    )


def replace_rows(matrix: sp.csr_matrix, rows: np.ndarray, values: sp.csr_matrix) -> sp.csr_matrix:
    """A new matrix: ``matrix`` with its ``rows`` (distinct; rows past its end, new ones, follow
    it without gaps) holding the rows of ``values``. The untouched rows are copied in whole
    spans — no arithmetic over them — so posting a few customers' events to a matrix of tens of
    millions of entries costs a memory copy, not a rebuild."""
    n_rows = max(matrix.shape[0], int(rows.max(initial=-1)) + 1)
    lengths = np.zeros(n_rows, dtype=np.int64)
    lengths[: matrix.shape[0]] = np.diff(matrix.indptr)
    lengths[rows] = np.diff(values.indptr)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    data = np.empty(indptr[-1], dtype=np.float32)
    indices = np.empty(indptr[-1], dtype=np.int64 if indptr[-1] > 2**31 - 1 else np.int32)

    def copy(source: sp.csr_matrix, first: int, last: int, to: int) -> None:
        """Rows first..last-1 of ``source`` to rows from ``to`` on of the new matrix."""
        a, b = source.indptr[first], source.indptr[last]
        data[indptr[to] : indptr[to] + b - a] = source.data[a:b]
        indices[indptr[to] : indptr[to] + b - a] = source.indices[a:b]

    if len(rows) > _SPLICED_ROWS:  # many rows: one gather beats a loop over them
        starts = np.zeros(n_rows, dtype=np.int64)
        starts[: matrix.shape[0]] = matrix.indptr[:-1]
        starts[rows] = len(matrix.data) + values.indptr[:-1]
        source = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        data[:] = np.concatenate([matrix.data, values.data])[source]
        indices[:] = np.concatenate([matrix.indices, values.indices])[source]
    else:
        start = 0  # the first row of ``matrix`` not yet copied
        for j in np.argsort(rows, kind="stable"):
            row = int(rows[j])
            if min(row, matrix.shape[0]) > start:
                copy(matrix, start, min(row, matrix.shape[0]), start)
            copy(values, j, j + 1, row)
            start = max(start, row + 1)
        if start < matrix.shape[0]:
            copy(matrix, start, matrix.shape[0], start)
    return sp.csr_matrix(
        (data, indices, indptr.astype(indices.dtype)), shape=(n_rows, matrix.shape[1])
    )
