"""Business rules, applied after scoring for every model.

* an item the customer already bought is not offered again unless it is ``repurchasable`` or
  they have bought it in two baskets (their own evidence: the catalogue or most buyers may say
  otherwise); such an item just bought moves down its list and comes back as its usual
  interval (``repurchase_days``) passes — given the time of the request (``now``);
* an item is offered only where it can be bought: at a store, that store's units available to
  promise must be positive; online (any other channel), any node with some will do; without an
  inventory table or movements, or for a store they never mention, nothing is filtered;
* optional category include / exclude lists and a price range (an item without a price is
  outside every range);
* an optional cap per category, for diversity.

Forbidden items are masked before ranking, so a list can never contain one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.baskets import BASKET_GAP, basket_starts
from models.recommenders.base import RECOMMENDATION_COLUMNS, Recommender

STORE_CHANNEL = "store"
_GAP_DAYS = BASKET_GAP / pd.Timedelta(days=1)
#: How far a repurchasable item just bought moves down, unless training chose otherwise.
DEFAULT_TIMING = 0.25


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
        levels: per store, the units of each item available to promise (NaN where nothing is
            known of it: no evidence, so not filtered); stores absent here are not filtered.
            The live stock picture moves them at once (:meth:`set_available`).
        online_stock: in stock at any node, or None when there is no inventory.
        bought_by: customer id -> column indices of items they bought (sorted, distinct).
        bought_at: customer id -> when they last bought each of those (days since the epoch,
            aligned with ``bought_by``; NaN when unknown).
        bought_again: customer id -> whether they bought each of those in two baskets or more
            (:data:`features.baskets.BASKET_GAP` apart), aligned with ``bought_by``.
        interval: per item, its usual days between purchases (NaN when unknown: no timing).
        timing: how far a repurchasable item just bought moves down: its score ``s`` becomes
            ``s - timing * (1 - due) * |s|``, ``due`` the share of its interval elapsed since
            the purchase (capped at 1); 0 turns timing off.
    """

    item_ids: pd.Index
    repurchasable: np.ndarray
    category: np.ndarray
    price: np.ndarray
    promotable: np.ndarray
    levels: dict[str, np.ndarray]
    online_stock: np.ndarray | None
    bought_by: dict[str, np.ndarray]
    bought_at: dict[str, np.ndarray]
    bought_again: dict[str, np.ndarray]
    interval: np.ndarray
    timing: float = DEFAULT_TIMING

    @classmethod
    def from_tables(
        cls,
        item_ids: pd.Index,
        *,
        purchases: pd.DataFrame,
        items: pd.DataFrame | None = None,
        inventory: pd.DataFrame | None = None,
        timing: float = DEFAULT_TIMING,
    ) -> BusinessRules:
        """Build the rules from contract tables.

        Args:
            item_ids: the model's items.
            purchases: ``customer_id, item_id`` of every purchase, the ``time`` of the last
                one and the number of ``baskets`` holding the item, if known (returns already
                netted or not: a returned item may be offered again only if repurchasable, as
                any other).
            items: the items table (``repurchasable``, ``repurchase_days``, ``category``,
                ``unit_price``, ``promotable``), if any.
            inventory: the inventory table (``date, store_id, item_id, on_hand``; without a
                ``date``, one row per pair), if any.
            timing: see the class.
        """
        item_ids = pd.Index(item_ids, dtype="str")
        n = len(item_ids)
        repurchasable = np.zeros(n, dtype=bool)
        category = np.full(n, None, dtype=object)
        price = np.full(n, np.nan)
        promotable = np.ones(n, dtype=bool)
        interval = np.full(n, np.nan)
        if items is not None and len(items):
            catalogue = items.drop_duplicates("item_id").set_index("item_id").reindex(item_ids)
            if "repurchasable" in catalogue:
                repurchasable = catalogue["repurchasable"].fillna(False).to_numpy(dtype=bool)
            if "promotable" in catalogue and catalogue["promotable"].notna().any():
                promotable = catalogue["promotable"].fillna(False).to_numpy(dtype=bool)
            if "unit_price" in catalogue:
                price = pd.to_numeric(catalogue["unit_price"]).to_numpy(dtype=np.float64)
            if "repurchase_days" in catalogue:
                days = pd.to_numeric(catalogue["repurchase_days"]).to_numpy(dtype=np.float64)
                interval = np.where(days > 0, days, np.nan)
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
            dated = inventory.sort_values("date") if "date" in inventory else inventory
            latest = dated.drop_duplicates(["store_id", "item_id"], keep="last")
            latest = latest[latest["item_id"].isin(item_ids)]
            columns = item_ids.get_indexer(pd.Index(latest["item_id"]))
            on_hand = latest["on_hand"].to_numpy(dtype=np.float64)
            for store, rows in latest.groupby("store_id", observed=True).indices.items():
                level = np.full(n, np.nan)
                level[columns[rows]] = on_hand[rows]
                levels[str(store)] = level
            online_stock = np.zeros(n, dtype=bool)
            online_stock[columns[on_hand > 0]] = True
        rules = cls(
            item_ids, repurchasable, category, price, promotable, levels, online_stock, {}, {},
            {}, interval, timing,
        )  # fmt: skip
        times = purchases["time"] if "time" in purchases else pd.Series(pd.NaT, purchases.index)
        baskets = purchases.get("baskets")
        rules.add_purchases(purchases["customer_id"], purchases["item_id"], times, baskets)
        return rules

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
        self,
        customer_ids: np.ndarray | pd.Index | pd.Series | list[str],
        item_ids: pd.Series | pd.Index,
        times: pd.Series | pd.Index,
        baskets: pd.Series | None = None,
    ) -> None:
        """Record purchases at once (row-aligned customers, items, times and, for a table of
        distinct pairs, the number of baskets each stands for; a NaT time is unknown); items
        outside the index are ignored. An item is bought again when ``baskets`` says two or
        more, when the purchases make two baskets (:func:`~features.baskets.basket_starts`), or
        when they lie a basket gap from the last one known."""
        customers = pd.Series(pd.Index(customer_ids, dtype="str"))
        stamps = pd.Series(pd.DatetimeIndex(times))
        pairs = pd.DataFrame(
            {
                "customer": customers,
                "column": self.item_ids.get_indexer(pd.Index(item_ids, dtype="str")),
                "day": _days(pd.DatetimeIndex(stamps)),
                # posted purchases: their baskets' starts, counted; a table: its counts
                "basket": basket_starts(customers, stamps) if baskets is None else baskets.array,
            }
        )
        grouped = pairs[pairs["column"] >= 0].groupby(["customer", "column"])
        counted = "nunique" if baskets is None else "max"
        spans = grouped.agg(last=("day", "max"), baskets=("basket", counted))
        columns = spans.index.get_level_values("column").to_numpy(np.int64)
        days = spans["last"].to_numpy(np.float64)  # the latest known time; NaN only when none is
        again = (spans["baskets"] >= 2).to_numpy()
        for customer, rows in spans.groupby(level="customer").indices.items():
            customer = str(customer)
            bought, at, twice = columns[rows], days[rows], again[rows]
            known = self.bought_by.get(customer)
            if known is not None:  # merge with what the customer bought before
                before, was = self.bought_at[customer], self.bought_again[customer]
                bought, slot = np.unique(np.concatenate([known, bought]), return_inverse=True)
                old, new = slot[: len(known)], slot[len(known) :]
                last = np.full(len(bought), -np.inf)
                np.fmax.at(last, slot, np.concatenate([before, at]))
                previous = np.full(len(bought), np.nan)
                previous[old] = before
                flags = np.zeros(len(bought), dtype=bool)
                flags[old] = was
                apart = np.abs(at - previous[new]) >= _GAP_DAYS  # NaN: not known to be
                flags[new] |= twice | apart
                at, twice = np.where(np.isinf(last), np.nan, last), flags
            self.bought_at[customer] = at
            self.bought_again[customer] = twice
            self.bought_by[customer] = bought  # the columns last: readers pair them with times

    def rebought(self, customer_id: str, bought: np.ndarray) -> np.ndarray:
        """Which of the ``bought`` columns (``bought_by[customer_id]``) may be offered again: the
        repurchasable items and those the customer bought in two baskets."""
        again = self.bought_again.get(customer_id)
        if again is None or len(again) != len(bought):  # a concurrent purchase: next time
            return self.repurchasable[bought]
        return self.repurchasable[bought] | again

    def set_available(
        self, node_ids: list[str], item_ids: list[str], units: list[float] | np.ndarray
    ) -> None:
        """Set the units available to promise of (node, item) pairs at once (the live stock
        picture, serving/state.py): an item none left at a store stops being offered or listed
        there, and an item no node has stops being offered online. Items outside the index
        are ignored."""
        columns = self.item_ids.get_indexer(pd.Index(item_ids, dtype="str"))
        by_item = self._stores_by_item()
        if self.online_stock is None:  # no inventory at training: every item was allowed
            self.online_stock = np.ones(len(self.item_ids), dtype=bool)
        for node, column, available in zip(node_ids, columns, units, strict=True):
            if column < 0:
                continue
            level = self.levels.get(node)
            if level is None:  # a new dict: readers iterating the old one are not disturbed
                level = np.full(len(self.item_ids), np.nan)
                self.levels = {**self.levels, node: level}
            level[column] = available
        for column in set(columns[columns >= 0].tolist()):  # once per item, not per pair
            stocked = sorted(s for s, lv in self.levels.items() if lv[column] > 0)
            by_item[column] = stocked  # a new list: readers never see half an update
            self.online_stock[column] = bool(stocked)

    def available(self, item_id: str) -> pd.Series:
        """Each reporting node's units of an item available to promise."""
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

    def move_down_recent(
        self,
        scores: np.ndarray,
        customer_id: str,
        bought: np.ndarray,
        again: np.ndarray,
        now: pd.Timestamp,
    ) -> None:
        """Lower, in place, the scores of the items ``customer_id`` bought (their ``bought``
        columns) and may buy again (``again``: :meth:`rebought`) less than an interval before
        ``now`` (see the class); an item whose interval is unknown is not moved."""
        days = self.bought_at.get(customer_id)
        if days is None or len(days) != len(bought):  # a concurrent purchase: next time
            return
        elapsed = _day(now) - days
        due = np.clip(elapsed / self.interval[bought], 0.0, 1.0)
        recent = again & (due < 1)  # NaN (unknown) is never recent
        columns = bought[recent]
        scores[columns] -= self.timing * (1 - due[recent]) * np.abs(scores[columns])


def _day(time: pd.Timestamp) -> float:
    """:func:`_days` of one time, without building an index (the per-request path)."""
    utc = time.tz_convert("UTC").tz_localize(None) if time.tz is not None else time
    return (utc - _EPOCH).total_seconds() / 86_400


_EPOCH = pd.Timestamp("1970-01-01")


def _days(times: pd.DatetimeIndex) -> np.ndarray:
    """Days since the epoch (NaN for NaT); naive times are taken as UTC."""
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
    return np.asarray((times - _EPOCH).total_seconds().to_numpy(np.float64) / 86_400)


def recommend_with_rules(
    model: Recommender,
    rules: BusinessRules,
    customer_ids: list[str] | pd.Index | np.ndarray,
    n: int = 10,
    *,
    now: pd.Timestamp | Mapping[str, pd.Timestamp] | None = None,
    **context: Any,
) -> pd.DataFrame:
    """:func:`top_for_customer` for many customers, as a table (``customer_id, item_id, score,
    rank, fallback``): exactly what the service answers each of them, asked at ``now`` (one
    time for all, or each customer's)."""
    ids = pd.Index(customer_ids, dtype="str")
    answers = [
        top_for_customer(
            model,
            rules,
            customer,
            n,
            now=now.get(customer) if isinstance(now, Mapping) else now,
            **context,
        )
        for customer in ids
    ]
    sizes = np.array([len(columns) for columns, _, _ in answers], dtype=np.int64)
    if not sizes.sum():
        return pd.DataFrame(columns=RECOMMENDATION_COLUMNS)
    return pd.DataFrame(
        {
            "customer_id": np.repeat(ids.to_numpy(), sizes),
            "item_id": model.item_ids_.take(np.concatenate([a[0] for a in answers])).to_numpy(),
            "score": np.concatenate([a[1] for a in answers]),
            "rank": np.concatenate([np.arange(1, size + 1) for size in sizes]),
            "fallback": np.repeat([a[2] for a in answers], sizes),
        },
        columns=RECOMMENDATION_COLUMNS,
    )


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
    now: pd.Timestamp | None = None,
    popular: bool = False,
    new_only: bool = False,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One customer's best ``n`` items under every rule (the service's per-request path).

    ``now`` is the time of the request: a repurchasable item bought shortly before moves down
    (see :class:`BusinessRules`); None leaves timing out. ``popular`` ranks by the store's (or
    channel's) popularity instead of the model's scores, still under this customer's rules (a
    control arm: nothing personal, nothing they may not be offered). ``new_only`` leaves out
    every item the customer ever bought, repurchasable or not (a list to discover from).

    Returns:
        ``(columns, scores, fallback)``: item columns best first, their scores, and whether
        they are the popularity fallback.
    """
    scores, fallback = model.scores_for(
        "" if popular else customer_id,
        None if popular else extra_history,
        store_id=store_id,
        channel=channel,
    )
    allowed = rules.allowed(
        channel=channel, store_id=store_id, promotable_only=promotable_only,
        include_categories=include_categories, exclude_categories=exclude_categories,
        min_price=min_price, max_price=max_price,
    )  # fmt: skip
    scores[~allowed] = -np.inf
    bought = rules.bought_by.get(customer_id)
    if bought is not None:
        if new_only:
            scores[bought] = -np.inf
        else:
            again = rules.rebought(customer_id, bought)
            scores[bought[~again]] = -np.inf
            if now is not None and rules.timing:
                rules.move_down_recent(scores, customer_id, bought, again, now)
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
