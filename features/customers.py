"""What serving needs to know about customers beyond the model: habits and purchases.

Pure builders over unified events (``customer_id`` pseudonyms only).
"""

from __future__ import annotations

import pandas as pd

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
    """Distinct ``customer_id, item_id`` pairs each known customer has bought."""
    bought = unified[(unified["event_type"] == "purchase") & unified["customer_id"].notna()]
    return bought[["customer_id", "item_id"]].astype("str").drop_duplicates().reset_index(drop=True)
