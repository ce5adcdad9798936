"""Baskets: each household's purchases grouped into baskets in time order, and the time-decayed
item vectors that TIFU-KNN (Hu et al., SIGIR 2020) builds from them. Pure functions.

A basket line is ``customer_id, basket_id, item_id, time``; an item counts once per basket.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.interactions import Interactions, InteractionWeights, from_triples

BASKET_COLUMNS = ["customer_id", "basket_id", "item_id", "time"]

#: How posted events reach a model fitted on baskets: a purchase marks its item, a return
#: takes it out; a view or a cart is no basket line.
BASKET_WEIGHTS = InteractionWeights(
    view=0.0, cart=0.0, purchase=1.0, return_=-1.0, use_quantity=False, half_life_days=None
)


@dataclass(frozen=True)
class Decay:
    """TIFU-KNN's time decay: a household's baskets, newest first, fall into groups of
    ``group_size``; within a group the basket ``p`` places before the group's newest weighs
    ``within**p``, and the group ``g`` places before the newest group weighs ``across**g``."""

    group_size: int = 7
    within: float = 0.9
    across: float = 0.7

    def __post_init__(self) -> None:
        if self.group_size < 1 or not (0 < self.within <= 1 and 0 < self.across <= 1):
            raise ValueError("group_size must be >= 1 and the decays in (0, 1].")


#: A customer's purchases less than this apart are one basket: a receipt's or an order's lines
#: share a time, a trip's or an app session's lie minutes apart (web analytics' session
#: timeout); two shops on one day are two baskets.
BASKET_GAP = pd.Timedelta(minutes=30)


def basket_starts(customer_ids: pd.Series, times: pd.Series) -> pd.Series[pd.Timestamp]:
    """The time each purchase's basket starts (its earliest line; :data:`BASKET_GAP`), aligned
    with ``times``. The data contract carries no basket id: in the Complete Journey 155,848
    receipts make 143,212 baskets this way (126,824 if a calendar day were one)."""
    lines = pd.DataFrame({"customer": customer_ids.array, "time": times.array})
    lines = lines.sort_values(["customer", "time"], kind="stable")
    new = (lines["customer"] != lines["customer"].shift()) | ~(lines["time"].diff() < BASKET_GAP)
    starts = lines["time"].groupby(new.cumsum()).transform("first")  # an unknown time: its own
    return pd.Series(starts.sort_index().array, index=times.index, name="basket_start")


def baskets_from_events(unified: pd.DataFrame) -> pd.DataFrame:
    """Basket lines from unified events: a known customer's purchases, each basket named by the
    time it starts (:func:`basket_starts`)."""
    bought = unified[(unified["event_type"] == "purchase") & unified["customer_id"].notna()]
    customers = bought["customer_id"].astype("str")
    return pd.DataFrame(
        {
            "customer_id": customers,
            "basket_id": basket_starts(customers, bought["event_time"]),
            "item_id": bought["item_id"].astype("str"),
            "time": bought["event_time"],
        },
        columns=BASKET_COLUMNS,
    ).reset_index(drop=True)


def basket_order(lines: pd.DataFrame) -> pd.DataFrame:
    """Distinct (customer, basket, item) lines with the basket's position among the customer's
    baskets counted back from the newest (``back``: 0 = newest) and the customer's basket count.
    A basket's time is the earliest of its lines."""
    lines = lines[BASKET_COLUMNS].drop_duplicates(["customer_id", "basket_id", "item_id"])
    baskets = (
        lines.groupby(["customer_id", "basket_id"], observed=True, sort=False)["time"]
        .min()
        .reset_index()
        .sort_values(["customer_id", "time", "basket_id"], kind="stable")
    )
    per_customer = baskets.groupby("customer_id", observed=True, sort=False)
    baskets["baskets"] = per_customer["basket_id"].transform("size")
    baskets["back"] = baskets["baskets"] - 1 - per_customer.cumcount()
    return lines.drop(columns="time").merge(
        baskets[["customer_id", "basket_id", "back", "baskets"]],
        on=["customer_id", "basket_id"],
    )


def decayed_vectors(
    lines: pd.DataFrame,
    decay: Decay = Decay(),
    item_ids: pd.Index | None = None,
) -> Interactions:
    """Each customer's TIFU-KNN vector over items: the decay-weighted mean of their group
    vectors, each the decay-weighted mean of its binary basket vectors (Hu et al., eq. 1-2).

    Args:
        lines: basket lines (:data:`BASKET_COLUMNS`).
        decay: the decay rates and group size.
        item_ids: the columns (default: the items in ``lines``); other items are left out.
    """
    return ordered_vectors(basket_order(lines), decay, item_ids)


def ordered_vectors(
    ordered: pd.DataFrame, decay: Decay = Decay(), item_ids: pd.Index | None = None
) -> Interactions:
    """:func:`decayed_vectors` of lines already in :func:`basket_order`."""
    back = ordered["back"].to_numpy()
    baskets = ordered["baskets"].to_numpy()
    group, place = np.divmod(back, decay.group_size)
    groups = -(-baskets // decay.group_size)  # ceil
    # The oldest group holds what is left over; every other group is full.
    oldest = group == groups - 1
    in_group = np.where(oldest, baskets - decay.group_size * (groups - 1), decay.group_size)
    weight = decay.within**place / in_group * decay.across**group / groups
    return from_triples(ordered["customer_id"], ordered["item_id"], weight, item_ids)
