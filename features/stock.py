"""The stock picture of every node (store, online node, DC) and item: on hand, reserved, and
available to promise (ATP = on hand - reserved - safety stock, never below 0).

What moves it:

==================  =======================================================================
``receipt``         on hand + quantity (a delivery)
``transfer_in``     on hand + quantity
``transfer_out``    on hand - quantity
``return_to_stock`` on hand + quantity (a returned unit back on the shelf)
``adjustment``      on hand + quantity, signed (damage, shrinkage, units found)
``count``           on hand *is* quantity at that time (a stock count)
a ``purchase``      on hand - quantity at the event's ``store_id``; a ``return`` event: +
``reserve``         reserved + quantity until released, fulfilled or expired
``release``         the reservation ends; nothing leaves the shelf
``fulfil``          the reservation ends and its units leave on hand (the pick-up)
==================  =======================================================================

The picture does not depend on the order in which it is told: a pair's on hand is its latest
count (the inventory snapshot at the end of its date, or a ``count`` movement) plus every change
dated after that count; a change dated at or before it is already in the count. So every worker
and replica, reading the same logs in whatever order, after a restart or not, has the same
picture. Reservations are decided one at a time under the log's lock (serving/state.py) and
replayed in log order.

A pair that no count and no movement ever named has no picture (None): nothing is known about
it, so nothing is filtered by it. Its sales are kept all the same, so that a movement arriving
later, dated earlier, gives the same on hand as if it had come first.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: The sign of each movement that changes on hand by its quantity (an adjustment's is its own).
SIGN = {
    "receipt": 1.0,
    "transfer_in": 1.0,
    "return_to_stock": 1.0,
    "transfer_out": -1.0,
    "adjustment": 1.0,
}
#: How a customer event moves the stock of its ``store_id``.
_EVENT_SIGN = {"purchase": -1.0, "return": 1.0}
#: What ``POST /movements`` takes; reservations have routes of their own, which check ATP.
POSTABLE = ("receipt", "transfer_out", "transfer_in", "adjustment", "count", "return_to_stock")
#: The ``movement_id`` prefix of the movements the reservation routes write (clients' may not
#: start with it, so that no posted movement can take a reservation's id).
RESERVATION_PREFIX = "reservation:"
#: How long a reservation holds its units unless the caller says otherwise (48 hours).
DEFAULT_HOLD_SECONDS = 48 * 3600.0
MAX_HOLD_SECONDS = 30 * 86_400.0
#: How far ahead of the receiving clock a count may be dated (clock drift).
COUNT_AHEAD = pd.Timedelta(minutes=5)
_NEVER = -(2**63)
Pair = tuple[str, str]


@dataclass
class _Stock:
    counted_at: int = _NEVER  # ns since the epoch, UTC
    counted: float = 0.0
    changes: list[tuple[int, float]] = field(default_factory=list)  # dated after counted_at
    changed: float = 0.0  # their sum, kept as they come (recomputed at a count)
    known: bool = False  # counted, or named by a movement
    reserved: float = 0.0

    @property
    def on_hand(self) -> float:
        return self.counted + self.changed


@dataclass
class Reservation:
    node_id: str
    item_id: str
    quantity: float
    expires_at: int  # ns
    state: str = "reserved"  # reserved | released | fulfilled | expired


class StockRefusal(Exception):
    """A reservation request the stock picture refuses: ``status`` 404 or 409, and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def movement_problems(movements: pd.DataFrame, now: pd.Timestamp) -> pd.Series:
    """Per typed movement (``validate_table`` of :data:`features.schema.MOVEMENTS`), why its
    quantity makes no sense for its type, or None: a count is absolute (>= 0), an adjustment
    signed but not 0, every other movement positive; reservations go through their own routes.
    A count may be dated at most :data:`COUNT_AHEAD` after ``now`` (naive UTC): every change
    dated before it is taken as already in it, so one dated a day ahead would hide a day of
    sales, deliveries and pick-ups."""
    kind, quantity = movements["movement_type"], movements["quantity"]
    reasons = pd.Series(None, index=movements.index, dtype=object)
    reservation = ~kind.isin(POSTABLE) | movements["movement_id"].str.startswith(RESERVATION_PREFIX)
    reasons[reservation] = (
        f"reserve, release and fulfil go through /reservations (and {RESERVATION_PREFIX!r} "
        "movement ids are theirs)"
    )
    ahead = (kind == "count") & (movements["movement_time"] > now + COUNT_AHEAD)
    reasons[ahead & reasons.isna()] = (
        f"a count is what the shelf held when it was made and cannot be dated more than "
        f"{COUNT_AHEAD.seconds // 60} minutes ahead of now ({now:%Y-%m-%dT%H:%M} UTC)"
    )
    negative_count = (kind == "count") & (quantity < 0)
    reasons[negative_count & reasons.isna()] = "a count is the units on hand and cannot be negative"
    zero = (kind == "adjustment") & (quantity == 0)
    reasons[zero & reasons.isna()] = "an adjustment of 0 units changes nothing"
    signed = kind.isin(("adjustment", "count"))
    positive = ~signed & (quantity <= 0)
    reasons[positive & reasons.isna()] = "the quantity must be positive for this movement type"
    return reasons


def _ns(times: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    return pd.DatetimeIndex(times).as_unit("ns").asi8


class StockLedger:
    """On hand and reservations per (node, item); see the module.

    Args:
        safety_stock: units kept back from ATP at every node.
    """

    def __init__(self, safety_stock: float = 0.0) -> None:
        self.safety_stock = float(safety_stock)
        self._stock: dict[Pair, _Stock] = {}
        self._nodes: dict[str, set[str]] = {}  # per item, the nodes with a record of it
        self.reservations: dict[str, Reservation] = {}
        self._expiry: list[tuple[int, str]] = []

    @classmethod
    def from_snapshot(
        cls, inventory: pd.DataFrame | None, safety_stock: float = 0.0
    ) -> StockLedger:
        """A ledger whose counts are an inventory table's (``date, store_id, item_id,
        on_hand``): each row is the on hand at the end of its date."""
        ledger = cls(safety_stock)
        if inventory is not None and len(inventory):
            ends = _ns(pd.to_datetime(inventory["date"]) + pd.Timedelta(days=1))
            for node, item, at, units in zip(
                inventory["store_id"].astype(str), inventory["item_id"].astype(str), ends,
                inventory["on_hand"].to_numpy(np.float64), strict=True,
            ):  # fmt: skip
                ledger._count((node, item), int(at), float(units))
        return ledger

    # -- telling it ---------------------------------------------------------------------------

    def _at(self, pair: Pair) -> _Stock:
        stock = self._stock.get(pair)
        if stock is None:
            stock = self._stock[pair] = _Stock()
            self._nodes.setdefault(pair[1], set()).add(pair[0])
        return stock

    def _count(self, pair: Pair, at: int, units: float) -> None:
        stock = self._at(pair)
        stock.known = True
        # An older count is overtaken; of two at the same time the larger stands (any order).
        if (at, units) > (stock.counted_at, stock.counted):
            stock.counted_at, stock.counted = at, units
            stock.changes = [change for change in stock.changes if change[0] > at]
            stock.changed = math.fsum(units for _, units in stock.changes)

    def _change(self, pair: Pair, at: int, units: float, known: bool) -> bool:
        """Record a change; False when it is dated at or before the latest count (in it)."""
        stock = self._at(pair)
        stock.known |= known
        if at <= stock.counted_at:
            return False
        stock.changes.append((at, units))
        stock.changed += units
        return True

    def apply_movements(self, movements: pd.DataFrame) -> set[Pair]:
        """Apply logged movements (typed, in log order); returns the pairs they changed."""
        changed: set[Pair] = set()
        times = _ns(movements["movement_time"])
        rows = zip(
            movements["movement_type"], movements["node_id"].astype(str),
            movements["item_id"].astype(str), movements["quantity"].to_numpy(np.float64), times,
            movements["reservation_id"], movements["hold_seconds"], strict=True,
        )  # fmt: skip
        for kind, node, item, units, at, reservation_id, hold in rows:
            pair = (node, item)
            changed.add(pair)
            if kind == "count":
                self._count(pair, int(at), float(units))
            elif kind == "reserve":
                seconds = DEFAULT_HOLD_SECONDS if pd.isna(hold) else float(hold)
                expires = int(at) + int(seconds * 1e9)
                self.reservations[str(reservation_id)] = Reservation(node, item, units, expires)
                self._at(pair).reserved += units
                heapq.heappush(self._expiry, (expires, str(reservation_id)))
            elif kind in ("release", "fulfil"):
                held = self.reservations.get(str(reservation_id))
                if held is not None and held.state in ("reserved", "expired"):
                    if held.state == "reserved":
                        self._stock[pair].reserved -= held.quantity
                    held.state = "released" if kind == "release" else "fulfilled"
                if kind == "fulfil":
                    self._change(pair, int(at), -float(units), known=True)
            else:
                self._change(pair, int(at), SIGN[kind] * float(units), known=True)
        return changed

    def apply_sales(self, events: pd.DataFrame) -> set[Pair]:
        """Purchases take stock from their ``store_id``, returns put it back; returns the known
        pairs they changed (a sale already in a count changes nothing)."""
        sign = events["event_type"].map(_EVENT_SIGN).astype(float)
        moving = (sign.notna() & events["store_id"].notna()).to_numpy()
        if not moving.any():
            return set()
        units = (sign * events["quantity"]).to_numpy(np.float64)[moving]
        nodes = events["store_id"].astype(str).to_numpy()[moving]
        items = events["item_id"].astype(str).to_numpy()[moving]
        times = _ns(events["event_time"])[moving]
        moved = {
            (node, item)
            for node, item, at, change in zip(nodes, items, times, units, strict=True)
            if self._change((node, item), int(at), float(change), known=False)
        }
        return {pair for pair in moved if self._stock[pair].known}

    def due(self, now: pd.Timestamp) -> bool:
        """Whether a hold may have run out by ``now`` (cheap: no lock needed to ask)."""
        try:  # another thread may take the last hold between a check and a look
            return self._expiry[0][0] <= now.value
        except IndexError:
            return False

    def expire(self, now: pd.Timestamp) -> set[Pair]:
        """End the reservations whose hold has run out by ``now``; returns the pairs freed."""
        freed: set[Pair] = set()
        if not self._expiry:  # the usual case, on every request: nothing held
            return freed
        cutoff = now.value  # ns since the epoch (UTC when tz-aware)
        while self._expiry and self._expiry[0][0] <= cutoff:
            _, reservation_id = heapq.heappop(self._expiry)
            held = self.reservations[reservation_id]
            if held.state == "reserved":
                held.state = "expired"
                pair = (held.node_id, held.item_id)
                self._stock[pair].reserved -= held.quantity
                freed.add(pair)
        return freed

    def reservation_refusal(
        self, reservation_id: str, node_id: str, item_id: str, quantity: float
    ) -> StockRefusal | None:
        """Why a new reservation cannot be made (409), or None. A retry of one still held
        (same id, node, item and quantity) is no refusal: :attr:`reservations` holds it; a retry
        of one released, fulfilled or expired is (nothing is held under it)."""
        held = self.reservations.get(reservation_id)
        if held is not None:
            if (held.node_id, held.item_id, held.quantity) != (node_id, item_id, quantity):
                used = f"{held.quantity:g} of {held.item_id!r} at {held.node_id!r}"
                return StockRefusal(
                    409, f"Reservation {reservation_id!r} is already used for {used}."
                )
            if held.state != "reserved":
                return StockRefusal(
                    409,
                    f"Reservation {reservation_id!r} is already {held.state}: nothing is held "
                    "under it; reserve under a new id.",
                )
            return None
        picture = self.picture((node_id, item_id))
        available = picture["available"] if picture else 0.0
        if quantity > available:
            return StockRefusal(
                409,
                f"Only {available:g} units of {item_id!r} are available to promise at "
                f"{node_id!r}; {quantity:g} were asked for.",
            )
        return None

    def closing_refusal(self, reservation_id: str, action: str) -> StockRefusal | None:
        """Why a reservation cannot be released or fulfilled now, or None (a retry of the same
        action is no refusal; releasing one that expired neither)."""
        held = self.reservations.get(reservation_id)
        if held is None:
            return StockRefusal(404, f"Unknown reservation {reservation_id!r}.")
        done = {"release": "released", "fulfil": "fulfilled"}[action]
        if held.state in ("reserved", done) or (held.state, action) == ("expired", "release"):
            return None
        return StockRefusal(409, f"Reservation {reservation_id!r} is already {held.state}.")

    # -- reading it -----------------------------------------------------------------------------

    def picture(self, pair: Pair) -> dict[str, float] | None:
        """``on_hand``, ``reserved`` and ``available`` (ATP) of a pair; None when unknown."""
        stock = self._stock.get(pair)
        if stock is None or not stock.known:
            return None
        on_hand = stock.on_hand
        available = max(on_hand - stock.reserved - self.safety_stock, 0.0)
        return {"on_hand": on_hand, "reserved": stock.reserved, "available": available}

    def available(self, pairs: Iterable[Pair]) -> dict[Pair, float]:
        """ATP of each known pair among ``pairs``."""
        pictures = {pair: self.picture(pair) for pair in pairs}
        return {pair: p["available"] for pair, p in pictures.items() if p is not None}

    def item(self, item_id: str) -> dict[str, dict[str, float]]:
        """Each node's picture of one item (known nodes only)."""
        nodes = sorted(self._nodes.get(item_id, ()))
        pictures = {node: self.picture((node, item_id)) for node in nodes}
        return {node: p for node, p in pictures.items() if p is not None}

    def frame(self) -> pd.DataFrame:
        """``node_id, item_id, on_hand, reserved, available`` of every known pair."""
        pictures = {pair: self.picture(pair) for pair in self._stock}
        return pd.DataFrame(
            [
                (node, item, p["on_hand"], p["reserved"], p["available"])
                for (node, item), p in pictures.items()
                if p is not None
            ],
            columns=["node_id", "item_id", "on_hand", "reserved", "available"],
        )


def dc_ids(kinds: Mapping[str, str] | pd.Series) -> list[str]:
    """The nodes a stores table calls DCs (``kinds``: each node's kind), in id order."""
    return sorted(str(node) for node, kind in kinds.items() if kind == "dc")


def sales_as_events(sales: pd.DataFrame) -> pd.DataFrame:
    """A ``sales`` table's rows (the tills' daily units per store and item) as the purchase
    events :func:`stock_history` reads, each at noon of its day; negative units (net returns)
    put units back."""
    return pd.DataFrame(
        {
            "event_time": pd.to_datetime(sales["date"]) + pd.Timedelta(hours=12),
            "event_type": "purchase",
            "store_id": sales["store_id"].astype(str),
            "item_id": sales["item_id"].astype(str),
            "quantity": sales["units"].astype(float),
        }
    )


def stock_history(
    inventory: pd.DataFrame | None, movements: pd.DataFrame, events: pd.DataFrame
) -> pd.DataFrame:
    """Every pair's units on hand after each thing that moved them, in time order, as the
    ledger sees them: ``node_id, item_id, time, kind`` (``count``, ``snapshot``, a movement
    type, ``purchase``, ``return``), ``change``, ``on_hand`` after, and ``book`` (for a count:
    what the books said just before it). Reservations hold units but leave on hand alone."""
    parts = []
    if inventory is not None and len(inventory):
        parts.append(
            pd.DataFrame(
                {"node_id": inventory["store_id"].astype(str),
                 "item_id": inventory["item_id"].astype(str),
                 "time": pd.to_datetime(inventory["date"]) + pd.Timedelta(days=1),
                 "kind": "snapshot", "value": inventory["on_hand"].astype(float), "change": 0.0}
            )
        )  # fmt: skip
    moved = movements[~movements["movement_type"].isin(("reserve", "release"))]
    kind = moved["movement_type"]
    sign = kind.map({**SIGN, "fulfil": -1.0, "count": 0.0}).astype(float)
    parts.append(
        pd.DataFrame(
            {"node_id": moved["node_id"].astype(str), "item_id": moved["item_id"].astype(str),
             "time": moved["movement_time"], "kind": kind.astype(str),
             "value": moved["quantity"].where(kind == "count"),
             "change": sign * moved["quantity"]}
        )
    )  # fmt: skip
    sold = events[events["event_type"].isin(("purchase", "return")) & events["store_id"].notna()]
    parts.append(
        pd.DataFrame(
            {"node_id": sold["store_id"].astype(str), "item_id": sold["item_id"].astype(str),
             "time": sold["event_time"], "kind": sold["event_type"].astype(str), "value": np.nan,
             "change": sold["quantity"] * sold["event_type"].map(_EVENT_SIGN).astype(float)}
        )
    )  # fmt: skip
    entries = pd.concat(parts, ignore_index=True).astype({"value": float, "change": float})
    entries["time"] = pd.to_datetime(entries["time"]).astype("datetime64[us]")
    # A pair has a picture once a count or a movement named it (sales alone do not make one).
    named = entries.loc[~entries["kind"].isin(("purchase", "return")), ["node_id", "item_id"]]
    entries = entries.merge(named.drop_duplicates(), on=["node_id", "item_id"])
    is_count = entries["kind"].isin(("count", "snapshot"))
    # At one instant, changes first: a change dated at a count is already in it.
    entries = entries.assign(_count=is_count.astype(int)).sort_values(
        ["node_id", "item_id", "time", "_count", "value"], kind="stable"
    )
    pair = [entries["node_id"], entries["item_id"]]
    is_count = entries["_count"].astype(bool)
    segment = is_count.groupby(pair).cumsum()
    within = [*pair, segment]
    base = entries["value"].where(is_count).groupby(within).transform("first").fillna(0.0)
    change = entries["change"].where(~is_count, 0.0).fillna(0.0)
    entries["change"] = change
    entries["on_hand"] = base + change.groupby(within).cumsum()
    before = entries["on_hand"].groupby(pair).shift(1).fillna(0.0)
    entries["book"] = before.where(is_count)
    return entries.drop(columns=["_count", "value"]).reset_index(drop=True)


def stock_kpis(
    history: pd.DataFrame,
    until: pd.Timestamp,
    since: pd.Timestamp | None = None,
    demand_per_hour: pd.Series | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Per pair and overall, from ``since`` (default: each pair's first record) to ``until``:
    stock-out hours (on hand <= 0) and, given the demand model's units per hour of each pair,
    the units lost to them (censored demand) and the fill rate (sold / (sold + lost): the share
    of demand the stock where it stood served); units sold (net of returns), the time-weighted
    average on hand and the turnover (sold / average on hand); and the accuracy of the books
    against stock counts (``count`` movements; the training snapshot is where the books start,
    not a check of them).

    Returns:
        ``(pairs, summary)``: per pair ``node_id, item_id, on_hand`` (at ``until``),
        ``stockout_hours``, ``hours``, ``lost_units``, ``fill_rate``, ``sold``,
        ``average_on_hand``, ``turnover``, ``counts``, ``count_abs_error``; and the totals.
    """
    history = history[history["time"] <= until]
    pair = [history["node_id"], history["item_id"]]
    starts = (
        history["time"] if since is None else history["time"].where(history["time"] > since, since)
    )
    ends = history["time"].groupby(pair).shift(-1).fillna(until)
    hours = ((ends - starts).dt.total_seconds() / 3600).clip(lower=0)
    inside = history["time"] > since if since is not None else history["time"].notna()
    counted = (history["kind"] == "count") & inside
    error = (history["on_hand"] - history["book"]).where(counted)
    sales = history["kind"].isin(("purchase", "return")) & inside
    sold = 0.0 - history["change"].where(sales, 0.0)  # never -0.0 where nothing sold
    frame = history.assign(
        hours=hours,
        stockout_hours=hours.where(history["on_hand"] <= 0, 0.0),
        unit_hours=hours * history["on_hand"].clip(lower=0),
        sold=sold,
        counts=counted.astype(int),
        count_abs_error=error.abs(),
        count_error=error,
    )
    pairs = frame.groupby(["node_id", "item_id"], as_index=False).agg(
        on_hand=("on_hand", "last"),
        stockout_hours=("stockout_hours", "sum"),
        hours=("hours", "sum"),
        unit_hours=("unit_hours", "sum"),
        sold=("sold", "sum"),
        counts=("counts", "sum"),
        count_abs_error=("count_abs_error", "sum"),
    )
    pairs = pairs[pairs["hours"] > 0].reset_index(drop=True)
    pairs["average_on_hand"] = pairs.pop("unit_hours") / pairs["hours"]
    pairs["turnover"] = pairs["sold"] / pairs["average_on_hand"].where(pairs["average_on_hand"] > 0)
    pairs["lost_units"] = np.nan
    if demand_per_hour is not None:
        keys = pd.MultiIndex.from_frame(pairs[["node_id", "item_id"]])
        lost = pairs["stockout_hours"] * demand_per_hour.reindex(keys).to_numpy()
        # Never out of stock: nothing lost, whatever the estimate.
        pairs["lost_units"] = lost.where(pairs["stockout_hours"] > 0, 0.0)
    served = pairs["sold"].clip(lower=0)
    pairs["fill_rate"] = _fill_rate(served, pairs["lost_units"])
    errors = frame["count_error"].dropna()
    estimated = pairs["lost_units"].notna()
    nan = float("nan")
    stocked = pairs["average_on_hand"].sum()
    summary = {
        "pairs": len(pairs),
        "stockout_hours": float(pairs["stockout_hours"].sum()),
        "stockout_share": float(pairs["stockout_hours"].sum() / max(pairs["hours"].sum(), 1e-9)),
        "lost_units": float(pairs["lost_units"].sum(min_count=1)),
        "fill_rate": float(  # over the pairs whose lost units the demand model estimated
            _fill_rate(served[estimated].sum(), pairs.loc[estimated, "lost_units"].sum())
        ),
        "units_sold": float(pairs["sold"].sum()),
        "turnover": float(pairs["sold"].sum() / stocked) if stocked > 0 else nan,
        "counts": len(errors),
        "counts_exact": float((errors == 0).mean()) if len(errors) else nan,
        "count_mean_abs_error": float(errors.abs().mean()) if len(errors) else nan,
        "count_mean_error": float(errors.mean()) if len(errors) else nan,
    }
    return pairs, summary


def _fill_rate(sold: Any, lost: Any) -> np.ndarray:
    """sold / (sold + lost), NaN without an estimate of the lost units or without demand."""
    sold, lost = np.asarray(sold, dtype=np.float64), np.asarray(lost, dtype=np.float64)
    demand = sold + lost
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(demand > 0, sold / demand, np.nan)
