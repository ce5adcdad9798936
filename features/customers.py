"""What serving needs to know about customers beyond the model: habits, purchases, and which
items they buy again.

Pure builders over unified events (``customer_id`` pseudonyms only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.baskets import basket_starts

HABIT_COLUMNS = ["customer_id", "channel", "weekday", "hour", "events"]


def build_habits(unified: pd.DataFrame, *, days: int = 90) -> pd.DataFrame:
    """Per customer: the channel they engaged with most in their last ``days`` of activity
    (ties: the most recent), and their habitual weekday (0 = Monday) and hour (UTC) — the most
    frequent among all their events (ties: the earliest)."""
    known = unified[unified["customer_id"].notna()]
    if known.empty:
        return pd.DataFrame(columns=HABIT_COLUMNS)
    customer = known["customer_id"].astype("str")
    times = known["event_time"]
    recent = times >= customer.map(times.groupby(customer).max()) - pd.Timedelta(days=days)
    engaged = (
        pd.DataFrame({"customer_id": customer, "channel": known["channel"], "time": times})[recent]
        .groupby(["customer_id", "channel"], observed=True)
        .agg(events=("time", "size"), last=("time", "max"))
        .reset_index()
        .sort_values(["customer_id", "events", "last"], ascending=[True, False, False])
        .drop_duplicates("customer_id")
    )
    habits = engaged[["customer_id", "channel", "events"]].set_index("customer_id")
    for name, values in (("weekday", times.dt.day_of_week), ("hour", times.dt.hour)):
        counts = pd.DataFrame({"customer_id": customer, name: values}).value_counts()
        top = (
            counts.rename("n").reset_index()
            .sort_values(["customer_id", "n", name], ascending=[True, False, True])
            .drop_duplicates("customer_id")
            .set_index("customer_id")[name]
        )  # fmt: skip
        habits[name] = top.reindex(habits.index).astype(int)
    return habits.reset_index()[HABIT_COLUMNS]


def purchases(unified: pd.DataFrame) -> pd.DataFrame:
    """Distinct ``customer_id, item_id`` pairs each known customer has bought, with the ``time``
    they last bought it and the number of ``baskets`` holding it
    (:func:`features.baskets.basket_starts`)."""
    bought = _known_purchases(unified)
    pairs = bought[["customer_id", "item_id"]].astype("str")
    pairs = pairs.assign(
        time=bought["event_time"], basket=basket_starts(pairs["customer_id"], bought["event_time"])
    )
    return pairs.groupby(["customer_id", "item_id"], as_index=False).agg(
        time=("time", "max"), baskets=("basket", "nunique")
    )


@dataclass(frozen=True)
class RepurchaseEvidence:
    """When purchases say an item is bought again: at least ``min_buyers`` known customers bought
    it, and at least ``min_share`` of them bought it on two or more days. Fewer buyers are no
    evidence either way (the item counts as not repurchasable, as without a catalogue flag)."""

    min_buyers: int = 5
    min_share: float = 0.1


def repeat_buyers(unified: pd.DataFrame) -> pd.DataFrame:
    """Per item bought by known customers: ``buyers`` and ``repeat_buyers`` (those who bought
    it on two or more days)."""
    return _repeat_buyers(_purchase_days(unified))


def repurchase_intervals(unified: pd.DataFrame, min_gaps: int = 5) -> pd.Series:
    """Per item, the median number of days between a customer's consecutive purchase days of
    it (an item's usual interval), where at least ``min_gaps`` such gaps were seen."""
    return _intervals(_purchase_days(unified), min_gaps)


def _purchase_days(unified: pd.DataFrame) -> pd.DataFrame:
    """Distinct ``customer_id, item_id, day`` of known customers' purchases, in that order."""
    bought = _known_purchases(unified)
    days = bought.assign(day=bought["event_time"].dt.floor("D"))
    days = days[["customer_id", "item_id", "day"]].drop_duplicates()
    return days.sort_values(["customer_id", "item_id", "day"])


def _repeat_buyers(days: pd.DataFrame) -> pd.DataFrame:
    per_buyer = days.groupby(["item_id", "customer_id"], observed=True).size()
    table = (
        (per_buyer >= 2)
        .groupby(level="item_id", observed=True)
        .agg(buyers="size", repeat_buyers="sum")
    )
    return table.reset_index().astype({"item_id": "str", "repeat_buyers": "int64"})


def _intervals(days: pd.DataFrame, min_gaps: int = 5) -> pd.Series:
    same = days.duplicated(["customer_id", "item_id"])  # not the pair's first day
    gaps = days["day"].diff().dt.total_seconds().div(86_400)[same]
    by_item = gaps.groupby(days["item_id"].astype("str")[same])
    median = by_item.median()[by_item.size() >= min_gaps]
    return median.rename("repurchase_days").rename_axis("item_id")


def _known_purchases(unified: pd.DataFrame) -> pd.DataFrame:
    return unified[(unified["event_type"] == "purchase") & unified["customer_id"].notna()]


def with_learned_repurchase(
    items: pd.DataFrame | None,
    unified: pd.DataFrame,
    evidence: RepurchaseEvidence = RepurchaseEvidence(),
) -> pd.DataFrame:
    """The items table with ``repurchasable`` learned from purchases wherever the catalogue does
    not say (no column, an empty cell, or an item it does not list), and ``repurchase_days``,
    the item's usual interval between purchases, likewise; what the catalogue says wins."""
    catalogue = items if items is not None else pd.DataFrame({"item_id": pd.Series(dtype="str")})
    days = _purchase_days(unified)  # once, for both what is bought again and how often
    counts = _repeat_buyers(days)
    learned = (counts["buyers"] >= evidence.min_buyers) & (
        counts["repeat_buyers"] >= evidence.min_share * counts["buyers"]
    )
    learned_by_item = pd.Series(learned.to_numpy(), index=counts["item_id"])
    unlisted = counts.loc[~counts["item_id"].isin(catalogue["item_id"].astype(str)), ["item_id"]]
    table = pd.concat([catalogue, unlisted], ignore_index=True)
    flag = table["repurchasable"] if "repurchasable" in table else pd.Series(pd.NA, table.index)
    item_ids = table["item_id"].astype(str)
    from_data = item_ids.map(learned_by_item).fillna(False)
    table["repurchasable"] = flag.astype("boolean").fillna(from_data.astype("boolean"))
    given = (
        table["repurchase_days"] if "repurchase_days" in table else pd.Series(np.nan, table.index)
    )
    learned_days = item_ids.map(_intervals(days))
    table["repurchase_days"] = pd.to_numeric(given).fillna(learned_days).astype("float64")
    return table
