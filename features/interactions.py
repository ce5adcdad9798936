"""Unified events -> a weighted customer x item matrix, and time-based splits.

Pure builders: no I/O, inputs are not modified, the same input gives the same output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.schema import EVENT_TYPES

#: The column of :func:`build_popularity` tables: purchase lines per item and segment.
POPULARITY = "purchases"


@dataclass(frozen=True)
class InteractionWeights:
    """How much each event counts, declared as data (logged verbatim as parameters).

    Attributes:
        view, cart, purchase: weight of one event of that type.
        return_: weight of a return (negative: a return takes back what the purchase gave).
        use_quantity: multiply cart / purchase / return weights by the quantity.
        half_life_days: an event this many days before ``as_of`` counts half; None = no decay.
    """

    view: float = 1.0
    cart: float = 3.0
    purchase: float = 5.0
    return_: float = -5.0
    use_quantity: bool = True
    half_life_days: float | None = 90.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "use_quantity":
                if not isinstance(value, bool):
                    raise ValueError(f"use_quantity must be true or false, not {value!r}.")
            elif not (f.name == "half_life_days" and value is None) and (
                not isinstance(value, int | float) or isinstance(value, bool)
            ):
                raise ValueError(f"{f.name.rstrip('_')} must be a number, not {value!r}.")

    def as_params(self) -> dict[str, float | bool | None]:
        return {f"weight_{k.rstrip('_')}": v for k, v in asdict(self).items()}

    def by_type(self) -> dict[str, float]:
        return dict(
            zip(EVENT_TYPES, (self.view, self.cart, self.purchase, self.return_), strict=True)
        )


@dataclass(frozen=True)
class Interactions:
    """A customers x items matrix with its id maps.

    Attributes:
        matrix: ``scipy.sparse.csr_matrix`` (float32), customers x items, only positive weights.
        customer_ids: row labels.
        item_ids: column labels.
        popularity: optional :func:`build_popularity` table, for cold-start answers per store
            and channel; without it, popularity is the matrix's column sums.
    """

    matrix: sp.csr_matrix
    customer_ids: pd.Index
    item_ids: pd.Index
    popularity: pd.DataFrame | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def rows_of(self, customer_ids: pd.Index | list[str]) -> np.ndarray:
        """Row index per customer id; -1 for customers not in the matrix."""
        return self.customer_ids.get_indexer(pd.Index(customer_ids))

    def columns_of(self, item_ids: pd.Index | list[str]) -> np.ndarray:
        """Column index per item id; -1 for items not in the matrix."""
        return self.item_ids.get_indexer(pd.Index(item_ids))


def build_interactions(
    events: pd.DataFrame,
    *,
    weights: InteractionWeights = InteractionWeights(),
    as_of: pd.Timestamp | None = None,
    item_ids: pd.Index | None = None,
) -> Interactions:
    """Weighted customer x item matrix from unified events (anonymous events excluded).

    Each event contributes ``weight(type) x quantity x 0.5 ** (age_days / half_life_days)``;
    the sum per (customer, item) is kept only where positive, so an item bought and returned
    drops out.

    Args:
        events: unified events (``customer_id``, ``item_id``, ``event_type``, ``event_time``,
            ``quantity``).
        weights: the weighting scheme.
        as_of: the time recency is measured from; default the latest event.
        item_ids: fix the columns (e.g. the whole catalogue); events of other items are ignored.
    """
    known = events[events["customer_id"].notna()]
    weight = event_weights(known, weights)
    if weights.half_life_days and len(known):
        reference = as_of if as_of is not None else known["event_time"].max()
        age_days = (reference - known["event_time"]).dt.total_seconds().to_numpy() / 86400.0
        weight = weight * np.power(0.5, np.maximum(age_days, 0.0) / weights.half_life_days)

    return from_triples(known["customer_id"], known["item_id"], weight, item_ids)


def from_triples(
    customers: pd.Series, items: pd.Series, values: np.ndarray, item_ids: pd.Index | None = None
) -> Interactions:
    """The customers x items matrix of (customer, item, value) rows: values of the same pair
    summed, only positive sums kept. Rows and columns are the sorted ids (columns: ``item_ids``
    when given; items outside them are left out)."""
    customers, items = customers.astype("str"), items.astype("str")
    customer_ids = pd.Index(np.sort(customers.unique()), dtype="str")
    columns = pd.Index(item_ids if item_ids is not None else np.sort(items.unique()), dtype="str")
    rows = customer_ids.get_indexer(pd.Index(customers))
    cols = columns.get_indexer(pd.Index(items))
    inside = cols >= 0
    matrix = sp.coo_matrix(
        (np.asarray(values, dtype=np.float64)[inside], (rows[inside], cols[inside])),
        shape=(len(customer_ids), len(columns)),
    ).tocsr()  # duplicates are summed here
    matrix.data[matrix.data < 0] = 0.0
    matrix.eliminate_zeros()
    return Interactions(sp.csr_matrix(matrix, dtype=np.float32), customer_ids, columns)


def event_weights(events: pd.DataFrame, weights: InteractionWeights) -> np.ndarray:
    """Each event's weight before recency decay: ``weight(type)``, times quantity where used."""
    weight = np.nan_to_num(events["event_type"].map(weights.by_type()).to_numpy(dtype=np.float64))
    if weights.use_quantity:
        scaled = events["event_type"].isin(("cart", "purchase", "return")).to_numpy()
        weight = np.where(scaled, weight * events["quantity"].to_numpy(dtype=np.float64), weight)
    return weight


def split_by_time(events: pd.DataFrame, cutoff: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events before ``cutoff`` and from ``cutoff`` on (a global time split)."""
    before = events["event_time"] < cutoff
    return events[before], events[~before]


def split_last_n(events: pd.DataFrame, n: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out each customer's last ``n`` purchases and whatever they did from the first of those.

    Customers with ``n`` purchases or fewer keep everything in training: nothing would be left to
    learn from otherwise. Anonymous events stay in training.
    """
    purchases = events[(events["event_type"] == "purchase") & events["customer_id"].notna()]
    ordered = purchases.sort_values("event_time", kind="stable")
    by_customer = ordered.groupby("customer_id", observed=True)
    from_end = by_customer.cumcount(ascending=False)  # 0 = the last purchase
    enough = by_customer["event_time"].transform("size") > n
    starts = ordered[(from_end == n - 1) & enough].set_index("customer_id")["event_time"]
    start = events["customer_id"].astype("object").map(starts)
    held = (start.notna() & (events["event_time"] >= start)).to_numpy()
    return events[~held], events[held]


def build_popularity(events: pd.DataFrame, *, days: int | None = 28) -> pd.DataFrame:
    """Purchases per item — overall, per store and per channel — over the last ``days``.

    A purchase line counts once whatever its quantity: popularity is how many baskets hold an
    item, so that one bulk line (89,638 litres of fuel) does not outrank what everyone buys.
    Anonymous purchases count here: the tills know what sells even when not to whom.

    Returns:
        Columns ``segment_type`` (global / store / channel), ``segment``, ``item_id``,
        ``purchases``, sorted by segment and purchases, most first.
    """
    bought = events[events["event_type"] == "purchase"]
    if days is not None and len(bought):
        bought = bought[bought["event_time"] > bought["event_time"].max() - pd.Timedelta(days=days)]
    frames = [
        bought.groupby("item_id").size().rename(POPULARITY).reset_index()
        .assign(segment_type="global", segment="all")
    ]  # fmt: skip
    for segment_type, column in (("store", "store_id"), ("channel", "channel")):
        grouped = bought.groupby([column, "item_id"], observed=True).size().rename(POPULARITY)
        frames.append(
            grouped.reset_index()
            .rename(columns={column: "segment"})
            .assign(segment_type=segment_type)
        )
    popularity = pd.concat(frames, ignore_index=True)
    popularity = popularity[["segment_type", "segment", "item_id", POPULARITY]]
    return (
        popularity.astype({POPULARITY: "float64"})
        .sort_values(
            ["segment_type", "segment", POPULARITY, "item_id"], ascending=[True, True, False, True]
        )
        .reset_index(drop=True)
    )
