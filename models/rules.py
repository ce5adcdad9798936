"""Business rules, applied after scoring for every model.

* an item the customer already bought is not offered again unless it is ``repurchasable``;
* an item is offered only where it can be bought: at a store, that store's latest stock must be
  positive; online (any other channel), any node with stock will do; without an inventory table,
  or for a store the inventory never mentions, nothing is filtered;
* optional category include / exclude lists and a price range (an item without a price is
  outside every range);
* an optional cap per category, for diversity.

Forbidden items are masked before ranking, so a list can never contain one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.recommenders.base import Recommender

STORE_CHANNEL = "store"


@dataclass
class BusinessRules:
    """Rules over a fixed item index (the model's ``item_ids_``).

    Attributes:
        item_ids: the columns every mask refers to.
        repurchasable: per item; unknown items count as not repurchasable.
        category: per item (None when unknown).
        price: per item, the catalogue's ``unit_price`` (NaN when unknown).
        promotable: per item; unknown items count as promotable only without an items table
            column saying otherwise.
        levels: per store, the latest on-hand units of each item (NaN where the store never
            reported it: no evidence, so not filtered); stores absent here are not filtered.
            Sales and returns recorded by :meth:`record_sales` move them at once.
        online_stock: in stock at any node, or None when there is no inventory.
        bought_by: customer id -> column indices of items they bought.
    """

    item_ids: pd.Index
    repurchasable: np.ndarray
    category: np.ndarray
    price: np.ndarray
    promotable: np.ndarray
    levels: dict[str, np.ndarray]
    online_stock: np.ndarray | None
    bought_by: dict[str, np.ndarray]

    @classmethod
    def from_tables(
        cls,
        item_ids: pd.Index,
        *,
        purchases: pd.DataFrame,
        items: pd.DataFrame | None = None,
        inventory: pd.DataFrame | None = None,
    ) -> BusinessRules:
        """Build the rules from contract tables.

        Args:
            item_ids: the model's items.
            purchases: ``customer_id, item_id`` of every purchase (returns already netted or not:
                a returned item may be offered again only if repurchasable, as any other).
            items: the items table (``repurchasable``, ``category``), if any.
            inventory: the inventory table (``date, store_id, item_id, on_hand``), if any.
        """
        item_ids = pd.Index(item_ids, dtype="str")
        n = len(item_ids)
        repurchasable = np.zeros(n, dtype=bool)
        category = np.full(n, None, dtype=object)
        price = np.full(n, np.nan)
        promotable = np.ones(n, dtype=bool)
        if items is not None and len(items):
            catalogue = items.drop_duplicates("item_id").set_index("item_id").reindex(item_ids)
            if "repurchasable" in catalogue:
                repurchasable = catalogue["repurchasable"].fillna(False).to_numpy(dtype=bool)
            if "promotable" in catalogue and catalogue["promotable"].notna().any():
                promotable = catalogue["promotable"].fillna(False).to_numpy(dtype=bool)
            if "unit_price" in catalogue:
                price = pd.to_numeric(catalogue["unit_price"]).to_numpy(dtype=np.float64)
            if "category" in catalogue:
                category = (
                    catalogue["category"]
                    .astype("object")
                    .where(catalogue["category"].notna(), None)
                    .to_numpy()
                )
        levels: dict[str, np.ndarray] = {}
        online_stock = None
        if inventory is not None and len(inventory):
            latest = inventory.sort_values("date").drop_duplicates(
                ["store_id", "item_id"], keep="last"
            )
            latest = latest[latest["item_id"].isin(item_ids)]
            columns = item_ids.get_indexer(pd.Index(latest["item_id"]))
            on_hand = latest["on_hand"].to_numpy(dtype=np.float64)
            for store, rows in latest.groupby("store_id", observed=True).indices.items():
                level = np.full(n, np.nan)
                level[columns[rows]] = on_hand[rows]
                levels[str(store)] = level
            online_stock = np.zeros(n, dtype=bool)
            online_stock[columns[on_hand > 0]] = True
        bought = purchases[purchases["item_id"].isin(item_ids)]
        bought_columns = item_ids.get_indexer(pd.Index(bought["item_id"]))
        bought_by = {
            str(customer): np.unique(bought_columns[rows])
            for customer, rows in bought.groupby(
                bought["customer_id"].astype("str")
            ).indices.items()
        }
        return cls(
            item_ids, repurchasable, category, price, promotable, levels, online_stock, bought_by
        )

    @cached_property
    def categories(self) -> dict[str, int]:
        """The categories the catalogue names, each with its code (see :attr:`category_codes`)."""
        names = sorted({str(c) for c in self.category if c is not None})
        return {name: code for code, name in enumerate(names)}

    @cached_property
    def category_codes(self) -> np.ndarray:
        """Per item, its category's code; an item of unknown category is a category of its own
        (a code past every named one), so masks and caps compare integers, not strings."""
        named = np.array(
            [self.categories[str(c)] if c is not None else -1 for c in self.category], np.int64
        )
        own = len(self.categories) + np.arange(len(named))
        return np.where(named >= 0, named, own)

    def _codes_of(self, names: list[str]) -> list[int]:
        return [self.categories[name] for name in names if name in self.categories]

    def add_purchases(
        self, customer_ids: np.ndarray | pd.Index | list[str], item_ids: pd.Series | pd.Index
    ) -> None:
        """Record purchases at once (pairs, row-aligned); items outside the index are ignored."""
        columns = self.item_ids.get_indexer(pd.Index(item_ids, dtype="str"))
        pairs = pd.DataFrame({"customer": pd.Index(customer_ids, dtype="str"), "column": columns})
        for customer, group in pairs[pairs["column"] >= 0].groupby("customer"):
            before = self.bought_by.get(str(customer), np.zeros(0, dtype=np.int64))
            self.bought_by[str(customer)] = np.union1d(before, group["column"].to_numpy())

    def record_sales(
        self, store_ids: pd.Series | np.ndarray, item_ids: pd.Series, units: np.ndarray
    ) -> None:
        """Sales (positive units) and returns (negative) at stores or online nodes move the
        latest stock at once: an item sold out at a store stops being offered or listed there.
        Pairs the inventory never reported are left alone (no evidence)."""
        columns = self.item_ids.get_indexer(pd.Index(item_ids, dtype="str"))
        by_item = self._stores_by_item()
        for store, column, sold in zip(store_ids, columns, units, strict=True):
            level = self.levels.get(str(store))
            if level is None or column < 0 or np.isnan(level[column]):
                continue
            level[column] = max(level[column] - float(sold), 0.0)
            stocked = sorted(s for s, lv in self.levels.items() if lv[column] > 0)
            by_item[column] = stocked  # a new list: readers never see half an update
            if self.online_stock is not None:
                self.online_stock[column] = bool(stocked)

    def on_hand(self, item_id: str) -> pd.Series:
        """Each reporting store's latest on-hand units of an item (after recorded sales)."""
        column = int(self.item_ids.get_indexer(pd.Index([item_id]))[0])
        if column < 0:
            return pd.Series(dtype=np.float64)
        units = {s: lv[column] for s, lv in self.levels.items() if not np.isnan(lv[column])}
        return pd.Series(units, dtype=np.float64)

    def available_at(self, columns: np.ndarray) -> list[list[str]]:
        """Per item column, the stores whose latest stock of it is positive (reported only)."""
        by_item = self._stores_by_item()
        return [by_item[j] for j in columns]

    def _stores_by_item(self) -> list[list[str]]:
        by_item = self.__dict__.get("_by_item")
        if by_item is None:
            stores = sorted(self.levels)
            positive = (
                np.stack([self.levels[s] > 0 for s in stores], axis=1)
                if stores
                else np.zeros((len(self.item_ids), 0), dtype=bool)
            )
            names = np.array(stores, dtype=object)
            by_item = self.__dict__["_by_item"] = [names[row].tolist() for row in positive]
        return by_item

    def allowed(
        self,
        *,
        channel: str | None = None,
        store_id: str | None = None,
        include_categories: list[str] | None = None,
        exclude_categories: list[str] | None = None,
        promotable_only: bool = False,
        min_price: float | None = None,
        max_price: float | None = None,
    ) -> np.ndarray:
        """Items that may be offered in this context, whoever the customer is."""
        mask = self.promotable.copy() if promotable_only else np.ones(len(self.item_ids), bool)
        if channel == STORE_CHANNEL and store_id is not None:
            if store_id in self.levels:
                mask &= ~(self.levels[store_id] <= 0)  # NaN (never reported) stays allowed
        elif self.online_stock is not None:
            mask &= self.online_stock
        if include_categories:
            mask &= np.isin(self.category_codes, self._codes_of(include_categories))
        if exclude_categories:
            mask &= ~np.isin(self.category_codes, self._codes_of(exclude_categories))
        if min_price is not None:
            mask &= self.price >= min_price  # NaN: outside
        if max_price is not None:
            mask &= self.price <= max_price
        return mask

    def exclusions(self, customer_ids: list[str] | pd.Index) -> sp.csr_matrix:
        """Per customer (rows, in order), the items they bought that are not repurchasable."""
        rows, cols = [], []
        for row, customer in enumerate(pd.Index(customer_ids, dtype="str")):
            bought = self.bought_by.get(customer)
            if bought is not None:
                once = bought[~self.repurchasable[bought]]
                rows.append(np.full(len(once), row))
                cols.append(once)
        if not rows:
            return sp.csr_matrix((len(customer_ids), len(self.item_ids)), dtype=bool)
        r, c = np.concatenate(rows), np.concatenate(cols)
        return sp.csr_matrix(
            (np.ones(len(r), bool), (r, c)), shape=(len(customer_ids), len(self.item_ids))
        )

    def cap_per_category(self, recommendations: pd.DataFrame, cap: int) -> pd.DataFrame:
        """Keep at most ``cap`` items of one category per customer, re-ranking what is left."""
        ranked = recommendations.sort_values(["customer_id", "rank"])
        columns = self.item_ids.get_indexer(pd.Index(ranked["item_id"], dtype="str"))
        ranked = ranked.assign(_category=self.category_codes[columns])
        within = ranked.groupby(["customer_id", "_category"]).cumcount()
        kept = ranked[within < cap].drop(columns="_category")
        kept["rank"] = kept.groupby("customer_id").cumcount() + 1
        return kept.reset_index(drop=True)


def recommend_with_rules(
    model: Recommender,
    rules: BusinessRules,
    customer_ids: list[str] | pd.Index,
    n: int = 10,
    *,
    channel: str | None = None,
    store_id: str | None = None,
    include_categories: list[str] | None = None,
    exclude_categories: list[str] | None = None,
    per_category: int | None = None,
) -> pd.DataFrame:
    """Recommendations that obey every rule (fewer than ``n`` when the rules leave fewer)."""
    allowed = rules.allowed(
        channel=channel,
        store_id=store_id,
        include_categories=include_categories,
        exclude_categories=exclude_categories,
    )
    exclude = rules.exclusions(customer_ids)
    depth = n if per_category is None else min(len(rules.item_ids), n * 10)
    recs = model.recommend(
        customer_ids, n=depth, exclude_seen=False, exclude=exclude, allowed=allowed,
        store_id=store_id, channel=channel,
    )  # fmt: skip
    if per_category is not None:
        recs = rules.cap_per_category(recs, per_category)
    return recs[recs["rank"] <= n].reset_index(drop=True)


def top_for_customer(
    model: Recommender,
    rules: BusinessRules,
    customer_id: str,
    n: int = 10,
    *,
    channel: str | None = None,
    store_id: str | None = None,
    promotable_only: bool = False,
    extra_history: sp.csr_matrix | None = None,
    exclude_columns: np.ndarray | None = None,
    include_categories: list[str] | None = None,
    exclude_categories: list[str] | None = None,
    per_category: int | None = None,
    min_price: float | None = None,
    max_price: float | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One customer's best ``n`` items under every rule: what :func:`recommend_with_rules`
    gives for a single customer, without tables (the service's per-request path), plus a price
    range.

    Returns:
        ``(columns, scores, fallback)``: item columns best first, their scores, and whether
        they are the popularity fallback.
    """
    scores, fallback = model.scores_for(
        customer_id, extra_history, store_id=store_id, channel=channel
    )
    allowed = rules.allowed(
        channel=channel, store_id=store_id, promotable_only=promotable_only,
        include_categories=include_categories, exclude_categories=exclude_categories,
        min_price=min_price, max_price=max_price,
    )  # fmt: skip
    scores[~allowed] = -np.inf
    bought = rules.bought_by.get(customer_id)
    if bought is not None:
        scores[bought[~rules.repurchasable[bought]]] = -np.inf
    if exclude_columns is not None:
        scores[exclude_columns] = -np.inf
    if per_category is not None:
        top = _capped(scores, rules.category_codes, n, per_category)
        return top, scores[top], fallback
    k = min(n, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.lexsort((top, -scores[top]))]
    top = top[np.isfinite(scores[top])]
    return top, scores[top], fallback


def _capped(scores: np.ndarray, category: np.ndarray, n: int, cap: int) -> np.ndarray:
    """The best ``n`` finite scores with at most ``cap`` of one category code, best first."""
    ranked = np.flatnonzero(np.isfinite(scores))
    ranked = ranked[np.lexsort((ranked, -scores[ranked]))]
    taken: dict[int, int] = {}
    top = []
    for column in ranked:
        group = int(category[column])
        if taken.get(group, 0) < cap:
            taken[group] = taken.get(group, 0) + 1
            top.append(column)
            if len(top) == n:
                break
    return np.array(top, dtype=np.int64)
