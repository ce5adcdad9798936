"""Stock placement: allocate limited units of an item across stores from demand forecasts.

**The demand distribution.** Each store's demand over the coverage period is a negative binomial
with the forecast's ``mean`` and ``dispersion`` (variance = mean + mean² / dispersion), matched to
the forecast's own calibrated intervals (see :func:`coverage_distribution`). Given only
quantiles, the mean is the P50 and the dispersion is the one whose P90 matches (see
:func:`from_quantiles`).

**The allocation.** With ``S`` units at a store, one more unit sells with probability
``P(D > S)``. Its value is ``margin x P(D > S) - holding x P(D <= S)`` — decreasing in ``S``, so
each store's value is concave, and the total is separable across stores. For a separable concave
objective, giving each next pack to the store where it adds the most (marginal-value greedy) is
optimal: that is what :func:`allocate` does, after the presentation minimums, within capacities
and never beyond the units available — for single units by a threshold on that value found by
bisection (the same answer, at a cost set by the number of stores; see
:func:`_threshold_allocation`), for packs pack by pack. With a ``service_level`` instead of
economics, a store's units stop adding value once ``P(D <= S)`` reaches it (and the rest is
placed by sell-through).

**A unit that almost surely never sells is not worth sending.** Unless ``allocate_all``, a unit
whose chance of selling ``P(D > S)`` is below :data:`MIN_SELL_PROBABILITY` (1e-9) adds no value
(at most zero): with no holding cost, ``margin x P(D > S)`` is positive for every ``S``, so
without this floor every unit at the DC would be sent (10^9 of them: 19.5 GB, then the worker
was killed). Each store's useful stock is therefore bounded by its demand distribution (about
its 1 - 1e-9 quantile), and the work and memory of :func:`allocate` depend on the distributions,
not on the units available. The value stays decreasing in ``S``, so the greedy stays optimal.
Likewise, beyond the level where every store's ``P(D > s)`` is below float noise next to 1
(:data:`_FLOAT_TAIL`), the survival table is flat: it is cut there, and deeper levels read its
last one, so huge stocks (``expected_outcomes``, ``rebalance``) cost no more than small ones.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from features.demand import PERIOD
from models.errors import UnknownIdError
from models.forecast import LightGBMForecaster

STORE_COLUMNS = ["store_id", "mean", "dispersion"]
MIN_SELL_PROBABILITY = 1e-9
"""Below this chance of selling, a unit is worth nothing (unless ``allocate_all``)."""
_FLOAT_TAIL = 2.0**-56
"""``P(D > s)`` below this is lost next to 1 in ``1 - cumsum(pmf)``: the table is flat beyond."""
_SMALL_TABLE = 1024
"""Survival tables up to this many levels are built whole, without looking for the flat tail."""
_SUMMED_PACK = 64
"""Packs up to this many units are valued by summing their units' values; larger ones, unless
``allocate_all``, by differences of running totals (no stores x units array for 10^6 a pack)."""


class PlacementError(ValueError):
    """Inputs that cannot describe a real allocation (one sentence naming the problem)."""


def units_to_place(
    units: int | None, dc_id: str | None, dcs: list[str], available: pd.Series | None
) -> tuple[str | None, int]:
    """The DC placed from (when one is named, or read) and the units to place: as given, or
    the DC's units of the item ``available`` (per node; none listed: 0, and never below 0).

    Raises:
        UnknownIdError: a ``dc_id`` that is not one of ``dcs``.
        PlacementError: no units given and no single DC to read them from.
    """
    if dc_id is None and units is not None:
        return None, units
    if dc_id is not None and dc_id not in dcs:
        raise UnknownIdError(
            f"{dc_id!r} is not a DC in the stores table (DCs: {', '.join(dcs) or 'none'})."
        )
    if dc_id is None and len(dcs) != 1:
        raise PlacementError(
            "Give the units to place, or the DC whose stock to place: the stores table names "
            + ("no DC." if not dcs else f"{len(dcs)} DCs ({', '.join(dcs[:10])}).")
        )
    dc = dc_id or dcs[0]
    if units is not None:
        return dc, units
    stock = 0.0 if available is None else float(available.get(dc, 0.0))
    return dc, int(max(stock, 0.0))


DEFAULT_HOLDING = 0.25
"""A unit left over costs a quarter of a sale's margin (holding, markdown, the trip back): so a
store is stocked to about its P80 (margin / (margin + holding)) and the rest stays at the DC."""


@dataclass(frozen=True)
class Economics:
    """Margin lost per unit short and cost per unit left over; or a target service level."""

    unit_margin: float = 1.0
    unit_holding: float = DEFAULT_HOLDING
    service_level: float | None = None

    def __post_init__(self) -> None:
        if self.unit_margin <= 0 or self.unit_holding < 0:
            raise PlacementError("unit_margin must be positive and unit_holding not negative.")
        if self.service_level is not None and not 0 < self.service_level < 1:
            raise PlacementError(
                f"service_level must be between 0 and 1, not {self.service_level}."
            )


def from_quantiles(
    p10: np.ndarray, p50: np.ndarray, p90: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, dispersion) of the negative binomial matching a P50 and P90.

    Raises:
        PlacementError: on negative or crossing quantiles.
    """
    p10, p50, p90 = (np.asarray(q, dtype=np.float64) for q in (p10, p50, p90))
    if (p10 < 0).any():
        raise PlacementError("Quantiles must not be negative.")
    if (p10 > p50).any() or (p50 > p90).any():
        raise PlacementError("Quantiles cross: every store needs P10 <= P50 <= P90.")
    mean = np.maximum(p50, 1e-6)
    candidates = np.geomspace(0.05, 1e4, 200)
    dispersion = np.empty_like(mean)
    for i, (m, q90) in enumerate(zip(mean, p90, strict=True)):
        fitted = stats.nbinom.ppf(0.9, candidates, candidates / (candidates + m))
        dispersion[i] = candidates[int(np.argmin(np.abs(fitted - q90)))]
    return mean, dispersion


def _survival_table(mean: np.ndarray, dispersion: np.ndarray, levels: int) -> np.ndarray:
    """``P(D > s)`` for s = 0 .. levels - 1 per store (stores x levels), by the pmf recursion.

    Beyond ``_SMALL_TABLE`` levels the table stops where every store's tail is below
    ``_FLOAT_TAIL``: past there the recursion's values no longer change, so the table may have
    fewer than ``levels`` columns and deeper levels read its last one (see :func:`_clamped`).
    """
    r = np.asarray(dispersion, dtype=np.float64)[:, None]
    p = r / (r + np.maximum(np.asarray(mean, dtype=np.float64), 1e-12)[:, None])
    if levels > _SMALL_TABLE and r.size:
        flat = stats.nbinom.isf(_FLOAT_TAIL, r[:, 0], p[:, 0])
        if np.isfinite(flat).all():
            levels = min(levels, max(_SMALL_TABLE, int(flat.max()) + 2))
    k = np.arange(levels - 1, dtype=np.float64)[None, :]
    # In logs: pmf(k+1) / pmf(k) = (k + r) / (k + 1) (1 - p) multiplies past 1e308 for a large
    # mean near Poisson (e^mean before p^r brings it back), and p^r underflows.
    with np.errstate(divide="ignore"):  # a zero mean: p = 1, every later pmf 0
        log_ratios = np.log(k + r) - np.log(k + 1.0) + np.log1p(-p)
    log_first = r * np.log(p)
    pmf = np.exp(np.concatenate([log_first, log_first + np.cumsum(log_ratios, axis=1)], axis=1))
    survival = np.cumsum(pmf, axis=1, out=pmf)
    np.subtract(1.0, survival, out=survival)
    return np.clip(survival, 0.0, 1.0, out=survival)


def _clamped(levels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Levels as indices into a (possibly cut) survival table: deeper ones read its last column."""
    return np.minimum(levels, table.shape[-1] - 1)


def expected_outcomes(mean: np.ndarray, dispersion: np.ndarray, stock: np.ndarray) -> pd.DataFrame:
    """Expected sales, fill rate, lost units and leftover for each store's final stock.

    Expected sales E[min(D, S)] in closed form, so the cost does not grow with the stock: with
    k pmf_r(k) = mean pmf_{r+1}(k - 1) for the negative binomial, E[(D - S)+] = mean P(D' >= S - 1)
    - S P(D >= S), D' ~ NB(r + 1, p).
    """
    stock = np.asarray(stock, dtype=np.int64)
    mean = np.asarray(mean, dtype=np.float64)
    r = np.asarray(dispersion, dtype=np.float64)
    p = r / (r + np.maximum(mean, 1e-12))
    short = mean * stats.nbinom.sf(stock - 2, r + 1, p) - stock * stats.nbinom.sf(stock - 1, r, p)
    sales = np.clip(mean - short, 0.0, np.minimum(mean, stock))
    return pd.DataFrame(
        {
            "expected_sales": sales,
            # sales <= mean in exact arithmetic; the clip keeps float noise from reporting 1+.
            "expected_fill_rate": np.where(
                mean > 0, np.minimum(sales / np.maximum(mean, 1e-12), 1.0), 1.0
            ),
            "expected_lost": np.maximum(mean - sales, 0.0),
            "expected_leftover": stock - sales,
        }
    )


def allocate(
    stores: pd.DataFrame,
    available: int,
    *,
    economics: Economics = Economics(),
    pack_size: int = 1,
    allocate_all: bool = False,
) -> pd.DataFrame:
    """Units to send to each store, by marginal value (optimal for this separable concave value).

    Args:
        stores: ``store_id, mean, dispersion`` (the coverage period's demand), optional
            ``on_hand`` (default 0), ``min_units`` (presentation minimum of stock after the
            delivery, default 0) and ``max_units`` (capacity, default unlimited).
        available: units at the DC to allocate.
        economics: margin and holding cost, or a service level.
        pack_size: units ship in whole packs.
        allocate_all: keep placing packs while any store can take one, even at a negative
            expected value (a backtest that must place the whole supply); else stop at zero.

    Returns:
        ``stores`` with ``send``, ``final_stock`` and the expected sales, fill rate, lost units
        and leftover per store.

    Raises:
        PlacementError: on negative stock or means, unknown columns, bad pack sizes, or minimums
            that the available units cannot cover.
    """
    frame = _checked(stores, available, pack_size)
    on_hand = frame["on_hand"].to_numpy(dtype=np.int64)
    minimum = frame["min_units"].to_numpy(dtype=np.int64)
    capacity = frame["max_units"].to_numpy(dtype=np.float64)
    # Presentation minimums first, in whole packs.
    need = np.maximum(minimum - on_hand, 0)
    send = np.ceil(need / pack_size).astype(np.int64) * pack_size
    over = np.flatnonzero(on_hand + send > np.maximum(capacity, on_hand))
    if len(over):
        i = over[0]
        raise PlacementError(
            f"Store {frame['store_id'].iloc[i]!r} cannot reach its minimum of {minimum[i]} "
            f"units in whole packs of {pack_size} without going over its capacity of "
            f"{int(capacity[i])} ({on_hand[i]} on hand)."
        )
    if send.sum() > available:
        needed = int(send.sum())
        raise PlacementError(
            f"The presentation minimums need {needed} units; only {available} are available."
        )
    room = np.floor((np.minimum(capacity, on_hand + available) - on_hand - send) / pack_size)
    room = np.maximum(room, 0).astype(np.int64)
    packs_left = (available - int(send.sum())) // pack_size
    if packs_left > 0 and room.sum() > 0 and _by_threshold(pack_size, economics, allocate_all):
        send += _threshold_allocation(
            frame["mean"].to_numpy(dtype=np.float64),
            frame["dispersion"].to_numpy(dtype=np.float64),
            on_hand + send,
            room,
            packs_left,
            economics,
        )
    elif packs_left > 0 and room.sum() > 0:
        mean = frame["mean"].to_numpy(dtype=np.float64)[None, :]
        dispersion = frame["dispersion"].to_numpy(dtype=np.float64)[None, :]
        packs = np.array([packs_left])
        taken = _greedy_packs(
            mean,
            dispersion,
            (on_hand + send)[None, :],
            room[None, :],
            packs,
            pack_size,
            economics,
            allocate_all,
        )
        send += taken[0] * pack_size
    final = on_hand + send
    outcome = expected_outcomes(frame["mean"].to_numpy(), frame["dispersion"].to_numpy(), final)
    result = frame.assign(send=send, final_stock=final)
    return pd.concat([result.reset_index(drop=True), outcome], axis=1)


def _by_threshold(pack_size: int, economics: Economics, allocate_all: bool) -> bool:
    """Whether :func:`_threshold_allocation` answers: single units, margin and holding, and only
    the units worth sending (the others go pack by pack: :func:`_greedy_packs`)."""
    return pack_size == 1 and economics.service_level is None and not allocate_all


def _threshold_allocation(
    mean: np.ndarray,
    dispersion: np.ndarray,
    start: np.ndarray,
    room: np.ndarray,
    units: int,
    economics: Economics,
) -> np.ndarray:
    """Units per store, the same as the unit-by-unit greedy, at a cost set by the stores alone.

    A unit at stock s is worth sending when its value ``(margin + holding) P(D > s) - holding``
    beats a threshold, i.e. when its chance of selling beats ``tau``; each store's count of such
    units is read off its quantile function (no table of levels). ``tau`` starts where a unit
    stops paying (and never below :data:`MIN_SELL_PROBABILITY`); if more units qualify than
    there are, it is raised by bisection until they fit, and the few left (those whose chance
    falls between the last two thresholds) go to the units most likely to sell — lower store
    first on a tie, as the greedy does.
    """
    margin, holding = economics.unit_margin, economics.unit_holding
    r = np.asarray(dispersion, dtype=np.float64)
    p = r / (r + np.maximum(mean, 1e-12))

    def counts(tau: float) -> np.ndarray:  # units above ``tau`` per store, within its room
        above = np.nan_to_num(stats.nbinom.isf(tau, r, p), posinf=np.iinfo(np.int64).max // 4)
        return np.clip(above.astype(np.int64) - start, 0, room)

    low = max(holding / (margin + holding), MIN_SELL_PROBABILITY)
    taken = counts(low)
    if taken.sum() <= units:
        return taken
    high = 1.0  # no unit's chance of selling beats 1
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if counts(middle).sum() > units:
            low = middle
        else:
            high = middle
    taken, more = counts(high), counts(low)
    # The units between the two thresholds (ties, in practice): best chance first, then the
    # lower store, then the lower level, as the greedy ranks them.
    extra = more - taken
    store = np.repeat(np.arange(len(taken)), extra)
    level = (
        start[store]
        + taken[store]
        + (np.arange(extra.sum()) - np.repeat(np.cumsum(extra) - extra, extra))
    )
    chance = stats.nbinom.sf(level, r[store], p[store])
    best = np.lexsort((level, store, -chance))[: units - int(taken.sum())]
    return taken + np.bincount(store[best], minlength=len(taken))


def _greedy_packs(
    mean: np.ndarray,
    dispersion: np.ndarray,
    start: np.ndarray,
    room: np.ndarray,
    packs: np.ndarray,
    pack_size: int,
    economics: Economics,
    allocate_all: bool,
) -> np.ndarray:
    """Packs per (item, store): each item's ``packs`` best next packs, each store's in order.

    All arrays are items x stores (``packs`` per item). Only each store's first ``depth`` packs
    are valued; ``depth`` doubles while some store takes all of its candidates and its next pack
    might still qualify, so the answer is exact and the work stays near the packs placed, not
    stores x packs. Unless ``allocate_all``, a store's packs stop qualifying where its units'
    chance of selling falls below ``MIN_SELL_PROBABILITY``, so however many packs there are,
    the depth stays near the demand's far tail.
    """
    n_items, n_stores = mean.shape
    limit = int(min(room.max(), packs.max()))
    # Start deep enough for the busiest store (about its mean), so one pass usually suffices;
    # when the whole supply must go (of the order of the demand), deep enough to spread it.
    busiest = int(np.ceil(1.5 * mean.max() / pack_size)) + 5
    spread = 2 * -(-int(packs.max()) // n_stores) if allocate_all else 0
    depth = min(limit, max(4, spread, busiest))
    while True:
        levels = int(start.max()) + depth * pack_size + 2
        survival = _survival_table(mean.ravel(), dispersion.ravel(), levels)
        survival = survival.reshape(n_items, n_stores, survival.shape[1])
        unit_value = _unit_values(survival, economics, worthless_tail=not allocate_all)
        values = _pack_values(unit_value, start, depth, pack_size, allocate_all)
        values[np.arange(depth)[None, None, :] >= room[:, :, None]] = -np.inf  # beyond capacity
        flat = values.reshape(n_items, n_stores * depth)
        # Only the best ``packs`` of each row matter: partition, then order those alone —
        # by value, then by position, which keeps a store's equal-valued packs in their order.
        k = int(min(packs.max(), flat.shape[1]))
        top = (
            np.argpartition(-flat, k - 1, axis=1)[:, :k]
            if k < flat.shape[1]
            else np.broadcast_to(np.arange(k), flat.shape).copy()
        )
        order = np.take_along_axis(
            top, np.lexsort((top, -np.take_along_axis(flat, top, axis=1)), axis=1), axis=1
        )
        ranked = np.take_along_axis(flat, order, axis=1)
        eligible = np.isfinite(ranked) & (allocate_all | (ranked > 0))  # a prefix of each row
        chosen = eligible & (np.arange(order.shape[1])[None, :] < packs[:, None])
        rows = np.broadcast_to(np.arange(n_items)[:, None], order.shape)
        taken = np.bincount(
            (rows * n_stores + order // depth)[chosen], minlength=n_items * n_stores
        ).reshape(n_items, n_stores)
        # A store that took all its candidates needs more only if its next pack may qualify:
        # with values decreasing, not when that pack's first unit is worth nothing.
        saturated = (taken == depth) & (room > depth)
        if not allocate_all:
            following = _clamped(start + depth * pack_size, survival)[:, :, None]
            saturated &= np.take_along_axis(unit_value, following, axis=2)[:, :, 0] > 0
        if depth >= limit or not saturated.any():
            return taken
        depth = min(limit, depth * 2)


def _pack_values(
    unit_value: np.ndarray, start: np.ndarray, depth: int, pack_size: int, allocate_all: bool
) -> np.ndarray:
    """Value of each store's next ``depth`` packs from ``start`` (items x stores x depth).

    Small packs sum their units. Unless ``allocate_all``, large ones (up to 10^6 units) take
    differences of running totals, the levels beyond the (cut) table worth its last column: no
    units x packs array. ``allocate_all`` also ranks the packs worth nothing, whose values differ
    by float noise alone, so it always sums (the same ranking as ever; its supply is of the order
    of the demand).
    """
    if allocate_all or pack_size <= _SUMMED_PACK:
        offsets = start[:, :, None] + np.arange(depth * pack_size)[None, None, :]
        if int(start.max()) + depth * pack_size > unit_value.shape[2]:  # the table was cut
            offsets = _clamped(offsets, unit_value)
        return (
            np.take_along_axis(unit_value, offsets, axis=2)
            .reshape(*start.shape, depth, pack_size)
            .sum(axis=3)
        )
    width = unit_value.shape[2]
    running = np.concatenate(
        [np.zeros((*start.shape, 1)), np.cumsum(unit_value, axis=2)], axis=2
    )  # running[..., x] = value of the units below level x
    bounds = start[:, :, None] + pack_size * np.arange(depth + 1)[None, None, :]
    inside = np.minimum(bounds, width)
    totals = np.take_along_axis(running, inside, axis=2) + (bounds - inside) * unit_value[:, :, -1:]
    return np.diff(totals, axis=2)


def allocate_many(
    mean: np.ndarray,
    dispersion: np.ndarray | float,
    available: np.ndarray,
    *,
    on_hand: np.ndarray | None = None,
    economics: Economics = Economics(),
    allocate_all: bool = False,
    batch: int = 256,
) -> np.ndarray:
    """:func:`allocate` for a whole chain at once: items x stores arrays, no minimums or packs.

    Args:
        mean, dispersion: items x stores demand distributions.
        available: units per item.
        on_hand: items x stores current stock (default 0).

    Returns:
        Units to send, items x stores.
    """
    mean = np.asarray(mean, dtype=np.float64)
    dispersion = np.broadcast_to(np.asarray(dispersion, dtype=np.float64), mean.shape)
    stock = (
        np.zeros(mean.shape, dtype=np.int64)
        if on_hand is None
        else np.asarray(on_hand, dtype=np.int64)
    )
    available = np.asarray(available, dtype=np.int64)
    if (mean < 0).any() or (stock < 0).any() or (available < 0).any() or (dispersion <= 0).any():
        raise PlacementError(
            "Means, stock and units available must not be negative; dispersions positive."
        )
    send = np.zeros(mean.shape, dtype=np.int64)

    def place(first: int) -> None:
        part = slice(first, first + batch)
        packs = available[part]
        if packs.max(initial=0) <= 0:
            return
        room = np.broadcast_to(packs[:, None], mean[part].shape).copy()
        send[part] = _greedy_packs(
            mean[part], dispersion[part], stock[part], room, packs, 1, economics, allocate_all
        )

    # Batches are independent and NumPy releases the GIL on these large arrays: one per core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(place, range(0, len(mean), batch)))
    return send


def _unit_values(survival: np.ndarray, economics: Economics, *, worthless_tail: bool) -> np.ndarray:
    """Value of the unit that raises stock from s to s + 1, per store and level.

    With ``worthless_tail``, a unit whose chance of selling is below ``MIN_SELL_PROBABILITY`` is
    worth at most zero (still decreasing in s: the chance of selling only falls).
    """
    if economics.service_level is not None:
        # Until the service level is reached a unit is worth its sell-through; after, nothing.
        below_target = (1.0 - survival) < economics.service_level
        value = np.where(below_target, 1.0 + survival, survival - 1.0)
    else:
        value = economics.unit_margin * survival - economics.unit_holding * (1.0 - survival)
    if worthless_tail:
        value = np.where(survival < MIN_SELL_PROBABILITY, np.minimum(value, 0.0), value)
    return value


def _checked(stores: pd.DataFrame, available: int, pack_size: int) -> pd.DataFrame:
    missing = [c for c in STORE_COLUMNS if c not in stores]
    if missing:
        raise PlacementError(f"The stores table needs column(s) {', '.join(missing)}.")
    if available < 0:
        raise PlacementError(f"Units available must not be negative, not {available}.")
    if pack_size < 1:
        raise PlacementError(f"pack_size must be at least 1, not {pack_size}.")
    if stores["store_id"].duplicated().any():
        raise PlacementError("Each store may appear once.")
    frame = stores.copy()
    frame["on_hand"] = frame.get("on_hand", 0)
    frame["min_units"] = frame.get("min_units", 0)
    frame["max_units"] = frame.get("max_units", np.inf)
    frame[["on_hand", "min_units"]] = frame[["on_hand", "min_units"]].fillna(0)
    frame["max_units"] = frame["max_units"].fillna(np.inf)
    for column in ("mean", "dispersion", "on_hand", "min_units", "max_units"):
        values = frame[column].to_numpy(dtype=np.float64)
        if np.isnan(values).any() or (values < 0).any():
            bad = frame.loc[np.isnan(values) | (values < 0), "store_id"].iloc[0]
            raise PlacementError(f"Store {bad!r} has a negative or missing {column}.")
    if (frame["dispersion"] <= 0).any():
        raise PlacementError("dispersion must be positive.")
    if (frame["min_units"] > frame["max_units"]).any():
        bad = frame.loc[frame["min_units"] > frame["max_units"], "store_id"].iloc[0]
        raise PlacementError(f"Store {bad!r} has a minimum above its capacity.")
    return frame


#: Transfers one rebalancing proposes at most (each a pack): a bound on its cost per answer.
MAX_MOVES = 10_000


def rebalance(
    allocation: pd.DataFrame,
    *,
    transfer_cost: float,
    economics: Economics = Economics(),
    pack_size: int = 1,
    max_moves: int = MAX_MOVES,
) -> pd.DataFrame:
    """Store-to-store transfers where one store's expected surplus covers another's shortfall.

    A pack of ``pack_size`` units moves from store A to store B when its expected value at B
    exceeds its value at A by more than ``transfer_cost`` per unit; the best move is made first,
    until none pays or ``max_moves`` packs have moved (the cost of a proposal does not grow with
    the units: only with the moves, at most that many).

    Returns:
        ``from_store, to_store, units, expected_gain`` (the moves between a pair of stores
        together, the pair that gains most first).
    """
    stock = allocation["final_stock"].to_numpy(dtype=np.int64).copy()
    mean = allocation["mean"].to_numpy(dtype=np.float64)
    dispersion = allocation["dispersion"].to_numpy(dtype=np.float64)
    capacity = allocation["max_units"].to_numpy(dtype=np.float64)
    minimum = allocation["min_units"].to_numpy(dtype=np.float64)
    survival = _survival_table(mean, dispersion, int(stock.sum()) + pack_size + 1)
    value = _unit_values(survival, economics, worthless_tail=False)
    levels = value.shape[1]
    cumulative = np.concatenate([np.zeros((len(stock), 1)), np.cumsum(value, axis=1)], axis=1)
    rows = np.arange(len(stock))

    def worth(level: np.ndarray) -> np.ndarray:
        """Per store, the value of its units below ``level`` (past the table: its last column)."""
        inside = np.minimum(level, levels)
        return cumulative[rows, inside] + (level - inside) * value[:, -1]

    moves: dict[tuple[int, int], list[float]] = {}
    for _ in range(max_moves):
        can_give = stock - pack_size >= np.maximum(minimum, 0)
        can_take = stock + pack_size <= capacity
        if not can_give.any() or not can_take.any():
            break
        last = worth(stock) - worth(np.maximum(stock - pack_size, 0))
        losing = np.where(can_give, last, np.inf)  # the last pack
        gaining = np.where(can_take, worth(stock + pack_size) - worth(stock), -np.inf)  # next
        giver, taker = int(np.argmin(losing)), int(np.argmax(gaining))
        gain = gaining[taker] - losing[giver] - transfer_cost * pack_size
        if giver == taker or gain <= 1e-12:
            break
        stock[giver] -= pack_size
        stock[taker] += pack_size
        moves.setdefault((giver, taker), []).append(gain)
    ids = allocation["store_id"].to_numpy()
    return pd.DataFrame(
        [
            {
                "from_store": ids[a],
                "to_store": ids[b],
                "units": len(g) * pack_size,
                "expected_gain": float(sum(g)),
            }
            for (a, b), g in moves.items()
        ],
        columns=["from_store", "to_store", "units", "expected_gain"],
    ).sort_values("expected_gain", ascending=False, kind="stable", ignore_index=True)


def coverage_distribution(forecast: pd.DataFrame) -> pd.DataFrame:
    """Per store and item, the demand over the whole coverage period as one negative binomial.

    The periods' demands are taken as independent, each with the forecast's mean and a variance
    read from its own interval: the P10-P90 spread of a normal, ((P90 - P10) / 2.563)^2, at
    least the mean (Poisson) — so a band whose calibrated interval is wide stays wide. (Its
    P50-P90 half alone read a slow seller's band, P10 = P50 = 0, as a long tail.) The sum is
    matched by mean and variance.
    """
    spread = ((forecast["p90"] - forecast["p10"]) / (2 * stats.norm.ppf(0.9))) ** 2
    variance = np.maximum(spread, forecast["mean"])
    total = (
        forecast.assign(variance=variance)
        .groupby(["store_id", "item_id"], observed=True)[["mean", "variance"]]
        .sum()
        .reset_index()
    )
    total["dispersion"] = dispersion_of(total["mean"], total["variance"])
    return total[["store_id", "item_id", "mean", "dispersion"]]


def dispersion_of(mean: pd.Series, variance: pd.Series) -> pd.Series:
    """The negative binomial's dispersion with this mean and variance (variance = mean +
    mean^2 / dispersion); a variance at or below the mean reads as Poisson (1e6)."""
    excess = (variance - mean).clip(lower=1e-9)
    return (mean**2 / excess).clip(lower=1e-3, upper=1e6)


#: What a planner is shown of each store's allocation: ``/placement``'s stores and the CSV of
#: ``omni placement plan``.
PLAN_COLUMNS = [
    "store_id", "on_hand", "send", "final_stock", "expected_demand", "expected_sales",
    "expected_fill_rate", "expected_lost", "expected_leftover",
]  # fmt: skip


def planner_view(allocation: pd.DataFrame) -> pd.DataFrame:
    """:func:`plan_item`'s allocation in :data:`PLAN_COLUMNS` (its ``mean`` is the demand
    expected over the coverage periods; a store with no stock known has 0 on hand)."""
    view = allocation.rename(columns={"mean": "expected_demand"}).reindex(columns=PLAN_COLUMNS)
    view["on_hand"] = view["on_hand"].fillna(0)
    return view


def plan_item(
    model: LightGBMForecaster,
    forecast: pd.DataFrame,
    item_id: str,
    units: int,
    *,
    horizon: int | None = None,
    on_hand: pd.Series | None = None,
    economics: Economics = Economics(),
    pack_size: int = 1,
    limits: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Allocate ``units`` of one item across the stores that sell it, from the forecaster.

    Args:
        model: the fitted forecaster (its history says which stores sell the item).
        forecast: ``model.predict(...)`` over its history (every store and item).
        horizon: periods the allocation must cover (default the model's horizon).
        on_hand: each store's stock now (missing stores: 0).
        limits: optional ``store_id, min_units, max_units`` per store. A store named here that
            has not sold the item yet (a new listing there) takes part with the forecaster's
            category prior, as :meth:`LightGBMForecaster.forecast` gives it.

    Raises:
        UnknownIdError: for an item without history, or a store the forecaster does not know.
        BeyondModelError: for a horizon beyond the model's.
        PlacementError: for inputs that cannot describe an allocation.
    """
    if not model.history_["item_id"].eq(item_id).any():
        raise UnknownIdError(
            f"Item {item_id!r} has no sales history in the forecaster; nothing to plan from."
        )
    horizon = model.checked_horizon(horizon)
    mine = forecast[forecast["item_id"] == item_id]
    if limits is not None and limits.empty:
        limits = None
    named = set() if limits is None else set(limits["store_id"]) - set(mine["store_id"])
    listed = [model.forecast(store, [item_id], everything=forecast) for store in sorted(named)]
    mine = pd.concat([mine, *listed], ignore_index=True)
    mine = mine[mine[PERIOD] <= np.sort(mine[PERIOD].unique())[horizon - 1]]
    stores = coverage_distribution(mine).drop(columns="item_id")
    if on_hand is not None:
        stores["on_hand"] = stores["store_id"].map(on_hand).fillna(0).astype(int)
    if limits is not None:
        stores = stores.merge(limits, on="store_id", how="left")
    return allocate(stores, units, economics=economics, pack_size=pack_size)
