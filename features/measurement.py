"""What the recommendations and offers did: control arms, cross-channel attribution, and KPIs per
channel with the uplift against control.

* **Arms.** A customer is in the control arm when a stable hash of their ``customer_id`` and the
  experiment's name falls below the control share (:func:`arms`): the same arm in every worker and
  restart and in every linked channel, for as long as the customer keeps that id.
* **Attribution** (:func:`attribute`). A view or purchase of an item shown to the same unified
  customer within the window after it was shown counts for that showing — whatever the channel
  (shown in the app, bought in a store). When an item was shown several times, the latest
  showing before the event gets it (last touch), so no purchase counts twice in a route (a list
  and an offer of the same item each count it).
* **KPIs** (:func:`kpis`). Per channel where the list was shown, and across channels: exposures,
  customers (both arms), view-through and purchase conversion (the share of the treatment arm's
  exposures followed by a view / purchase of an item in them) and attributed revenue (treatment),
  the share of attributed purchases (both arms) made in another channel, and the uplift of the
  customers' conversion against the control arm with a 95% interval (difference of two
  proportions, normal approximation) — valid for one look at the end of a planned period — and
  an any-time 95% interval, valid however often it is looked at (:func:`anytime_half_width`:
  reading the first one every day and stopping when it excludes 0 declares an effect that is
  not there far more often than 5%). The control arm's exposures record what it was *not*
  shown — the personal list (it saw the popular one), or the offers withheld — so both arms are
  measured on the same items.
"""

from __future__ import annotations

import hashlib
import math

import pandas as pd

from features.eventlog import EventLog
from features.identity import customers_of_keys
from features.schema import ISO_TIME

CONTROL, TREATMENT = "control", "treatment"
DEFAULT_WINDOW = pd.Timedelta(days=7)
_Z95 = 1.959964
#: The number of customers (both arms) at which the any-time interval is tightest.
ANYTIME_TUNED_FOR = 10_000


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
    ``window`` after the showing, credited to the latest such showing of its route.

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
    shown = exposures[["shown_at", "customer_id", "channel", "route", "items"]].dropna(
        subset=["customer_id"]
    )
    shown = shown.rename(columns={"channel": "shown_in"})
    shown = shown.explode("items").dropna(subset=["items"]).rename(columns={"items": "item_id"})
    shown = shown.astype({"item_id": "str"})  # no exposures: an empty float column
    shown = shown.rename_axis("exposure").reset_index()
    acts = (
        events[events["event_type"].isin(("view", "purchase")) & events["customer_id"].notna()]
        .rename_axis("event")
        .reset_index()
    )
    pairs = acts.merge(shown, on=["customer_id", "item_id"])
    after = pairs["event_time"] - pairs["shown_at"]
    pairs = pairs[(after > pd.Timedelta(0)) & (after <= window)]
    # Within a route: an offer withheld from the control arm never takes a list's credit.
    credited = pairs.sort_values("shown_at").drop_duplicates(["event", "route"], keep="last")
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
    """The customers' conversion (any exposure followed by an attributed purchase) in each arm
    (``treated_conversion``, ``control_conversion``; per customer, where ``conversion`` is per
    exposure) and the difference, with its 95% intervals; NaN without both arms."""
    customers = part.dropna(subset=["customer_id"]).groupby(["arm", "customer_id"])["bought"].any()
    arm = customers.index.get_level_values("arm")
    treated, control = customers[arm == TREATMENT], customers[arm == CONTROL]
    p1, n1 = (float(treated.mean()) if len(treated) else math.nan), len(treated)
    p0, n0 = (float(control.mean()) if len(control) else math.nan), len(control)
    arms = {"treated_conversion": p1, "control_customers": n0, "control_conversion": p0}
    if not n1 or not n0:
        return {**arms, **dict.fromkeys(UPLIFT_FIGURES, math.nan)}
    return {**arms, **difference(p1, n1, p0, n0)}


#: What :func:`difference` gives: the difference, its one-look and its any-time interval.
UPLIFT_FIGURES = (
    "uplift", "uplift_low", "uplift_high", "uplift_anytime_low", "uplift_anytime_high",
)  # fmt: skip


def difference(p1: float, n1: int, p0: float, n0: int) -> dict[str, float]:
    """The difference of two proportions (``p1`` of ``n1`` minus ``p0`` of ``n0``) with its
    95% interval for one look and its any-time 95% interval, each within [-1, 1] (a difference
    of two shares can be no more). An arm where nobody or everybody
    converted counts as half a customer short of that for the standard error, so that a few
    early customers never make a zero-width interval."""

    def variance(p: float, n: int) -> float:
        p = min(max(p, 0.5 / n), 1 - 0.5 / n)
        return p * (1 - p) / n

    se = math.sqrt(variance(p1, n1) + variance(p0, n0))
    anytime = anytime_half_width(se, n1 + n0)
    d = p1 - p0
    bounds = (d, d - _Z95 * se, d + _Z95 * se, d - anytime, d + anytime)
    return dict(zip(UPLIFT_FIGURES, (min(max(b, -1.0), 1.0) for b in bounds), strict=True))


def anytime_half_width(
    se: float, n: int, alpha: float = 0.05, tuned_for: int = ANYTIME_TUNED_FOR
) -> float:
    """The half-width of a (1 - ``alpha``) asymptotic confidence sequence for an estimate with
    standard error ``se`` from ``n`` observations (Waudby-Smith, Arnold, Wu, Howard & Ramdas,
    "Time-uniform central limit theory and asymptotic confidence sequences", Ann. Statist.
    2024: the two-sided normal-mixture boundary, its mixture tuned to be tightest at
    ``tuned_for`` observations). It covers the truth at every ``n`` at once with probability
    1 - ``alpha``, so a report may be read every day and the experiment stopped when it
    excludes 0; the price is a wider interval (3.0 x ``se`` instead of 1.96 at ``tuned_for``)."""
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuned_for
    spread = n * rho2 + 1
    return se * math.sqrt(2 * spread / (n * rho2) * math.log(math.sqrt(spread) / alpha))


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
    events = log.read(since=since, until=until + window)
    known = events["customer_key"].notna()
    customers = pd.Series(None, index=events.index, dtype=object)
    if known.any():
        ids, _, _ = customers_of_keys(
            salt, key_ids, events.loc[known, "channel"], events.loc[known, "customer_key"]
        )
        customers[known] = ids
    return kpis(exposures, events.assign(customer_id=customers), window, prices)


#: How long a report may span, and its attribution window at most.
MAX_SPAN, MAX_WINDOW = pd.Timedelta(days=366), pd.Timedelta(days=90)


def period(
    since: str | None, until: str | None, window_days: float
) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timedelta]:
    """A report's ``(since, until, window)`` from ISO times (naive = UTC; ``until`` missing =
    now) and days.

    Raises:
        ValueError: one sentence naming the rule: a time that is not ISO, since before 2000,
            until after the end of tomorrow (UTC: an offer is dated when it is to be sent),
            since not before until, a span over a year, a window outside (0, 90] days.
    """
    start = utc_time(since, "since")
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    end = utc_time(until, "until") if until else now
    if start < pd.Timestamp("2000-01-01"):
        raise ValueError(f"since must be in 2000 or later, not {start.isoformat()}.")
    if end > now.normalize() + pd.Timedelta(days=2):
        raise ValueError(f"until must be at most the end of tomorrow (UTC), not {end.isoformat()}.")
    if not start < end:
        raise ValueError(
            f"since must come before until ({start.isoformat()} is not before {end.isoformat()})."
        )
    if end - start > MAX_SPAN:
        raise ValueError("since and until must be at most a year apart.")
    window = pd.Timedelta(days=window_days) if 0 < window_days <= MAX_WINDOW.days else None
    if not window:  # (1e-300 days is more than 0, and 0 ns)
        raise ValueError("The attribution window must be more than 0 and at most 90 days.")
    return start, end, window


def utc_time(text: str | None, name: str) -> pd.Timestamp:
    """An ISO time as naive UTC; ValueError naming ``name`` when it is not one."""
    if not text:
        raise ValueError(f"Give {name} as an ISO time.")
    if not ISO_TIME.fullmatch(text.strip()):  # not 01.11.2026, 11/01/2026 or "today"
        raise ValueError(f"{name} is not an ISO time (2026-11-01 or 2026-11-01T09:00): {text!r}.")
    try:
        stamp = pd.Timestamp(text.strip())
    except (ValueError, OverflowError):
        raise ValueError(f"{name} is not an ISO time: {text!r}.") from None
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def plain(mapping: dict) -> dict:
    """``mapping`` ready for JSON, which has no NaN: NaN values as None."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in mapping.items()}


def records(table: pd.DataFrame) -> list[dict]:
    """A table as JSON-ready rows (NaN as None)."""
    return [plain(row) for row in table.to_dict(orient="records")]
