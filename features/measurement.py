"""What the recommendations and offers did: control arms, cross-channel attribution, and KPIs per
channel with the uplift against control.

* **Arms.** A customer is in the control arm when a stable hash of their ``customer_id`` and the
  experiment's name falls below the control share (:func:`arms`): the same customer gets the same
  arm in every channel, worker and restart, until the experiment is renamed.
* **Attribution** (:func:`attribute`). A view or purchase of an item shown to the same unified
  customer within the window after it was shown counts for that showing — whatever the channel
  (shown in the app, bought in a store). When an item was shown several times, the latest
  showing before the event gets it (last touch), so no purchase counts twice.
* **KPIs** (:func:`kpis`). Per channel where the list was shown, and across channels: exposures,
  customers, view-through and purchase conversion (the share of exposures followed by a view /
  purchase of an item in them), attributed revenue, the share of attributed purchases made in
  another channel, and the uplift of the customers' conversion against the control arm with a
  95% interval (difference of two proportions, normal approximation). For ``/recommend`` the
  control arm was shown the popular list; for ``/offers`` it was sent nothing, and its exposures
  record the offers withheld, so that redemption is compared on the same footing.
"""

from __future__ import annotations

import hashlib
import math

import pandas as pd

from features.eventlog import EventLog
from features.identity import customers_of_keys

CONTROL, TREATMENT = "control", "treatment"
DEFAULT_WINDOW = pd.Timedelta(days=7)
_Z95 = 1.959964


def arms(customer_ids: list[str], share: float, experiment: str) -> list[str]:
    """Each customer's arm: ``control`` for a stable ``share`` of them, else ``treatment``."""
    if share <= 0:
        return [TREATMENT] * len(customer_ids)
    cut = share * 2**64
    return [
        CONTROL
        if int.from_bytes(hashlib.sha256(f"{experiment}:{c}".encode()).digest()[:8]) < cut
        else TREATMENT
        for c in customer_ids
    ]


def attribute(
    exposures: pd.DataFrame,
    events: pd.DataFrame,
    window: pd.Timedelta = DEFAULT_WINDOW,
    prices: pd.Series | None = None,
) -> pd.DataFrame:
    """Every view and purchase of a shown item by the customer it was shown to, within
    ``window`` after the showing, credited to the latest such showing.

    Args:
        exposures: ``shown_at, customer_id, channel, route, arm, items`` (a list per row).
        events: ``event_time, customer_id, channel, event_type, item_id, quantity,
            unit_price`` (customers unified).
        prices: per item id, the catalogue's price, for purchases that carry none.

    Returns:
        One row per credited event: ``exposure`` (the index of its row in ``exposures``),
        ``event_type``, ``item_id``, ``channel`` (where it happened), ``shown_in`` (the
        channel of the showing), ``revenue``.
    """
    shown = exposures[["shown_at", "customer_id", "channel", "items"]].dropna(
        subset=["customer_id"]
    )
    shown = shown.rename(columns={"channel": "shown_in"})
    shown = shown.explode("items").dropna(subset=["items"]).rename(columns={"items": "item_id"})
    shown = shown.rename_axis("exposure").reset_index()
    acts = (
        events[events["event_type"].isin(("view", "purchase")) & events["customer_id"].notna()]
        .rename_axis("event")
        .reset_index()
    )
    pairs = acts.merge(shown, on=["customer_id", "item_id"])
    after = pairs["event_time"] - pairs["shown_at"]
    pairs = pairs[(after > pd.Timedelta(0)) & (after <= window)]
    credited = pairs.sort_values("shown_at").drop_duplicates("event", keep="last")
    price = credited["unit_price"]
    if prices is not None:
        price = price.fillna(credited["item_id"].map(prices))
    revenue = (credited["quantity"].fillna(1.0) * price.fillna(0.0)).where(
        credited["event_type"] == "purchase", 0.0
    )
    return credited.assign(revenue=revenue)[
        ["exposure", "event_type", "item_id", "channel", "shown_in", "revenue"]
    ].reset_index(drop=True)


def kpis(
    exposures: pd.DataFrame,
    events: pd.DataFrame,
    window: pd.Timedelta = DEFAULT_WINDOW,
    prices: pd.Series | None = None,
) -> pd.DataFrame:
    """The KPI table: one row per (route, channel shown) and one per route across channels
    (``channel`` = ``all``); see the module for each column."""
    frame = exposures.reset_index(drop=True)
    credited = attribute(frame, events, window, prices)
    bought = credited[credited["event_type"] == "purchase"]
    by_exposure = bought.assign(elsewhere=bought["channel"] != bought["shown_in"]).groupby(
        "exposure"
    )
    viewed = credited.loc[credited["event_type"] == "view", "exposure"]
    frame = frame.assign(
        viewed=frame.index.isin(viewed),
        bought=frame.index.isin(bought["exposure"]),
        revenue=by_exposure["revenue"].sum().reindex(frame.index, fill_value=0.0),
        purchases=by_exposure.size().reindex(frame.index, fill_value=0),
        elsewhere=by_exposure["elsewhere"].sum().reindex(frame.index, fill_value=0),
    )
    rows = []
    for route, by_route in frame.groupby("route"):
        groups = [("all", by_route), *by_route.groupby("channel", dropna=False)]
        for channel, part in groups:
            rows.append({"route": route, "channel": str(channel), **_figures(part)})
    return pd.DataFrame(rows)


def _figures(part: pd.DataFrame) -> dict[str, float]:
    treated = part[part["arm"] == TREATMENT]
    purchases = float(part["purchases"].sum())
    figures = {
        "exposures": len(part),
        "customers": int(part["customer_id"].nunique()),
        "view_through": float(treated["viewed"].mean()) if len(treated) else math.nan,
        "conversion": float(treated["bought"].mean()) if len(treated) else math.nan,
        "revenue": float(treated["revenue"].sum()),
        "cross_channel_share": float(part["elsewhere"].sum() / purchases)
        if purchases
        else math.nan,
    }
    return {**figures, **uplift(part)}


def uplift(part: pd.DataFrame) -> dict[str, float]:
    """The customers' conversion (any exposure followed by an attributed purchase) in the
    treatment arm minus the control arm's, with its 95% interval; NaN without both arms."""
    customers = part.dropna(subset=["customer_id"]).groupby(["arm", "customer_id"])["bought"].any()
    arm = customers.index.get_level_values("arm")
    treated, control = customers[arm == TREATMENT], customers[arm == CONTROL]
    if not len(treated) or not len(control):
        nan = math.nan
        return {"control_customers": len(control), "control_conversion": nan, "uplift": nan,
                "uplift_low": nan, "uplift_high": nan}  # fmt: skip
    p1, n1, p0, n0 = float(treated.mean()), len(treated), float(control.mean()), len(control)
    half = _Z95 * math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    return {
        "control_customers": n0,
        "control_conversion": p0,
        "uplift": p1 - p0,
        "uplift_low": p1 - p0 - half,
        "uplift_high": p1 - p0 + half,
    }


def measure(
    log: EventLog,
    salt: str,
    key_ids: dict[str, str],
    since: pd.Timestamp,
    until: pd.Timestamp,
    window: pd.Timedelta = DEFAULT_WINDOW,
    prices: pd.Series | None = None,
) -> pd.DataFrame:
    """:func:`kpis` of what the service showed from ``since`` to ``until`` (naive UTC), with
    the events logged up to ``until + window``, their customers unified by ``key_ids`` (a key
    not in it is the customer its first event makes)."""
    exposures = log.read_exposures(since, until)
    events = log.read()
    events = events[(events["event_time"] > since) & (events["event_time"] <= until + window)]
    known = events["customer_key"].notna()
    customers = pd.Series(None, index=events.index, dtype=object)
    if known.any():
        ids, _, _ = customers_of_keys(
            salt, key_ids, events.loc[known, "channel"], events.loc[known, "customer_key"]
        )
        customers[known] = ids
    return kpis(exposures, events.assign(customer_id=customers), window, prices)
