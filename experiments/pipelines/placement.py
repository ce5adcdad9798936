"""Stock placement in a simulated backtest, and a planner's allocation from the champion."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.pipelines.forecaster import DemandData, known_covariates, load_demand
from experiments.synthetic.generator import GeneratorConfig, demand_distribution
from features.demand import (
    PERIOD,
    SERIES,
    TARGET,
    frequency,
    period_end,
    rolling_origins,
    split_at,
)
from features.ingest import load_dataset
from features.stock import dc_ids
from models.forecast import LightGBMForecaster
from models.placement import (
    STORE_COLUMNS,
    Economics,
    allocate,
    coverage_distribution,
    dispersion_of,
    plan_item,
    rebalance,
)

POLICIES = ("policy", "proportional", "equal", "oracle")
SIMPLE = ("proportional", "equal")
TRUE_DISTRIBUTION = "true_distribution"  # generated data only: the attainable bound
WITH_TRANSFERS = "policy_with_transfers"  # the policy, then store-to-store moves mid-period
#: What moving a unit from one store to another costs in a backtest, in the margin's units.
TRANSFER_COST = 0.1
#: Total stock at most this many times the realised demand in a backtest.
MAX_SUPPLY = 10.0


def split(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` units in proportion to ``weights`` (largest remainders; equal if all zero)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    exact = total * weights / weights.sum()
    units = np.floor(exact).astype(np.int64)
    short = total - units.sum()
    units[np.argsort(-(exact - units), kind="stable")[:short]] += 1
    return units


def oracle(total: int, demand: np.ndarray) -> np.ndarray:
    """The hard bound: ``total`` whole units placed knowing the realised demand — each store
    gets the whole units of its demand while they last (in proportion to them when they fall
    short), then one more unit goes to each store with a fraction of a unit left to sell (kg,
    litres), largest first, and the rest in proportion to the demand. No placement of whole
    units loses less."""
    whole = np.floor(demand).astype(np.int64)
    if total <= whole.sum():
        return np.minimum(split(total, whole), whole)
    fraction = demand - whole
    topped = np.argsort(-fraction, kind="stable")[
        : min(total - int(whole.sum()), (fraction > 0).sum())
    ]
    stock = whole.copy()
    stock[topped] += 1
    return stock + split(total - int(stock.sum()), demand)


def with_transfers(
    units: np.ndarray,
    early_demand: np.ndarray,
    rest: pd.DataFrame,
    transfer_cost: float,
    economics: Economics,
) -> tuple[np.ndarray, int]:
    """Each store's stock for the rest of the coverage period once the first part's demand
    (``early_demand``) has taken what it could of ``units`` and :func:`rebalance` has moved
    whole units between stores (``rest``: ``store_id, mean, dispersion`` of the rest's demand,
    in the order of ``units``): that stock, and the units moved."""
    left = units - np.minimum(early_demand, units)
    moves = rebalance(
        rest.assign(final_stock=np.floor(left), min_units=0.0, max_units=np.inf),
        transfer_cost=transfer_cost,
        economics=economics,
    )
    position = {store: i for i, store in enumerate(rest["store_id"])}
    for move in moves.itertuples():
        left[position[move.from_store]] -= move.units
        left[position[move.to_store]] += move.units
    return left, int(moves["units"].sum())


@dataclass
class SimulationResult:
    by_supply: dict[float, dict[str, dict[str, float]]]
    windows: int
    items: int
    seconds: float
    economics: Economics = Economics()  # noqa: RUF009 (frozen, immutable)
    transfer_cost: float | None = None  # None: transfers were not played

    def transfers(self) -> dict[float, dict[str, float]]:
        """Per supply ratio, what the mid-period transfers did beside the policy alone: the
        ``units_moved``, the ``fewer_lost_units`` and their ``net_value`` in the margin's units
        (each unit sold instead of lost earns its margin and is not left over, less the cost of
        every unit moved). Empty when transfers were not played."""
        if self.transfer_cost is None:
            return {}
        worth = self.economics.unit_margin + self.economics.unit_holding
        out = {}
        for ratio, blocks in self.by_supply.items():  # (played: in every supply's blocks)
            moved = blocks[WITH_TRANSFERS]["units_moved"]
            fewer = blocks["policy"]["lost_units"] - blocks[WITH_TRANSFERS]["lost_units"]
            out[ratio] = {
                "units_moved": moved,
                "fewer_lost_units": fewer,
                "net_value": worth * fewer - self.transfer_cost * moved,
            }
        return out

    def gap_closed(self, bound: str = "oracle") -> dict[float, float]:
        """Per supply ratio, the share of the gap in lost units between the best simple split
        and a bound — the oracle, or the allocation from the true demand distribution — that
        the policy closes (1: as good as the bound)."""
        closed = {}
        for ratio, blocks in self.by_supply.items():
            simple = min(blocks[p]["lost_units"] for p in SIMPLE)
            gap = simple - blocks[bound]["lost_units"]
            # No gap (the best split already loses nothing more than the oracle): undefined.
            closed[ratio] = (simple - blocks["policy"]["lost_units"]) / gap if gap > 0 else np.nan
        return closed

    def totals(self) -> dict[str, dict[str, float]]:
        """Every policy's outcome summed over the supply ratios."""
        out = {}
        for policy in next(iter(self.by_supply.values())):
            blocks = [b[policy] for b in self.by_supply.values()]
            demand = sum(b["demand_units"] for b in blocks)
            lost = sum(b["lost_units"] for b in blocks)
            out[policy] = {
                "fill_rate": 1 - lost / demand if demand else 1.0,
                "lost_units": lost,
                "leftover_units": sum(b["leftover_units"] for b in blocks),
            }
            if "units_moved" in blocks[0]:
                out[policy]["units_moved"] = sum(b["units_moved"] for b in blocks)
        return out


def simulate(
    data_dir: Path,
    *,
    horizon: int,
    freq: str = "W",
    supply: tuple[float, ...] = (0.9, 1.1),
    windows: int = 4,
    economics: Economics = Economics(),  # noqa: B008 (frozen, immutable)
    transfer_cost: float = TRANSFER_COST,
) -> SimulationResult:
    """A rolling backtest of placement.

    At each origin the forecaster is trained on the history only and forecasts the coverage
    period (``horizon`` periods); for each item, a total stock equal to the realised total
    demand x the supply ratio is placed across the stores by our policy (marginal value on the
    forecast distribution), by last period's sales (proportional), equally, and by an oracle that
    knows the realised demand (the bound); then the realised demand plays: sales = min(demand,
    stock). Realised demand is the generator's uncensored truth
    when the data set has one (``_truth/demand``), else the recorded sales.

    With a coverage period of two periods or more, the policy is played once more with
    transfers (:data:`WITH_TRANSFERS`): after the first half of the period (rounded down) has
    sold what it could, :func:`models.placement.rebalance` moves whole units between stores
    from what each has left and the origin's forecast of the rest, each move worth more than
    ``transfer_cost`` per unit; its row counts the ``units_moved``.
    """
    started = time.perf_counter()
    refused = [r for r in supply if not 0 < r <= MAX_SUPPLY]  # NaN is refused too
    if refused or not supply:
        raise ValueError(
            f"Supply ratios must be above 0 and at most {MAX_SUPPLY:g}, not {refused or 'none'}."
        )
    if not 0 <= transfer_cost < np.inf:
        raise ValueError(f"The transfer cost must be a number, 0 or more, not {transfer_cost}.")
    mid = horizon // 2  # periods sold before the transfers (none: no transfers)
    data = load_demand(data_dir, freq)
    panel = data.panel
    truth = _true_demand(data_dir, freq, panel)
    generated = _generator_config(data_dir)
    policies = (
        *POLICIES,
        *([WITH_TRANSFERS] if mid else []),
        *([TRUE_DISTRIBUTION] if generated else []),
    )
    totals = {
        ratio: {
            p: {"demand_units": 0.0, "lost_units": 0.0, "leftover_units": 0.0}
            | ({"units_moved": 0.0} if p == WITH_TRANSFERS else {})
            for p in policies
        }
        for ratio in supply
    }
    items_seen: set[str] = set()
    for origin in rolling_origins(panel, horizon, windows):
        history, known = split_at(panel, origin, horizon, freq)
        _, window = split_at(truth, origin, horizon, freq)
        realised = window.groupby(["store_id", "item_id"], observed=True)[TARGET].sum()
        model = LightGBMForecaster(horizon=horizon, freq=freq).fit(history, items=data.items)
        forecast = model.predict(history, plan=known_covariates(known))
        distribution = coverage_distribution(forecast)
        last_period = (
            history[history[PERIOD] == origin]
            .groupby(["store_id", "item_id"], observed=True)[TARGET]
            .sum()
        )
        keys = ["store_id", "item_id"]
        distribution = distribution.join(realised.rename("demand"), on=keys).join(
            last_period.rename("recent"), on=keys
        )
        distribution[["demand", "recent"]] = distribution[["demand", "recent"]].fillna(0.0)
        if mid:  # the first part's demand, and the forecast of the rest
            step = frequency(freq).step
            early = window[window[PERIOD] <= origin + step * mid]
            later = coverage_distribution(forecast[forecast[PERIOD] > origin + step * mid])
            distribution = distribution.join(
                early.groupby(keys, observed=True)[TARGET].sum().rename("early_demand"), on=keys
            ).join(later.set_index(keys)[["mean", "dispersion"]].add_prefix("rest_"), on=keys)
            distribution = distribution.fillna(
                {"early_demand": 0.0, "rest_mean": 0.0, "rest_dispersion": 1e6}
            )
        if generated:
            days = horizon * frequency(freq).days
            first = np.datetime64(pd.Timestamp(origin).date(), "D") + 1
            exact = pd.DataFrame(demand_distribution(generated, first, days))
            exact["true_dispersion"] = dispersion_of(exact["mean"], exact["variance"])
            distribution = distribution.join(
                exact.set_index(keys)[["mean", "true_dispersion"]].rename(
                    columns={"mean": "true_mean"}
                ),
                on=keys,
            ).fillna({"true_mean": 0.0, "true_dispersion": 1e6})
        for item, stores in distribution.groupby("item_id", observed=True):
            demand = stores["demand"].to_numpy()
            if demand.sum() <= 0:
                continue
            items_seen.add(str(item))
            recent = stores["recent"].to_numpy()
            if generated:  # the true distribution, as allocate reads one
                true_distribution = stores[["store_id", "true_mean", "true_dispersion"]].set_axis(
                    STORE_COLUMNS, axis=1
                )
            if mid:  # what the first part sold and the forecast of the rest: any supply's
                early_demand = stores["early_demand"].to_numpy()
                rest = stores[["store_id", "rest_mean", "rest_dispersion"]].set_axis(
                    STORE_COLUMNS, axis=1
                )
            for ratio in supply:
                total = int(np.rint(demand.sum() * ratio))
                stock = {
                    "policy": allocate(
                        stores[["store_id", "mean", "dispersion"]],
                        total,
                        economics=economics,
                        allocate_all=True,
                    )["send"].to_numpy(),
                    "proportional": split(total, recent),
                    "equal": split(total, np.zeros(len(stores))),
                    "oracle": oracle(total, demand),
                }
                if generated:
                    stock[TRUE_DISTRIBUTION] = allocate(
                        true_distribution, total, economics=economics, allocate_all=True
                    )["send"].to_numpy()
                sales = {policy: np.minimum(demand, units) for policy, units in stock.items()}
                if mid:
                    left, moved = with_transfers(
                        stock["policy"], early_demand, rest, transfer_cost, economics
                    )
                    stock[WITH_TRANSFERS] = stock["policy"]
                    sales[WITH_TRANSFERS] = np.minimum(early_demand, stock["policy"]) + np.minimum(
                        demand - early_demand, left
                    )
                    totals[ratio][WITH_TRANSFERS]["units_moved"] += moved
                for policy, units in stock.items():
                    sold = sales[policy]
                    block = totals[ratio][policy]
                    block["demand_units"] += demand.sum()
                    block["lost_units"] += (demand - sold).sum()
                    block["leftover_units"] += (units - sold).sum()
    by_supply = {
        ratio: {
            policy: {
                "fill_rate": 1 - b["lost_units"] / b["demand_units"] if b["demand_units"] else 1.0,
                **b,
            }
            for policy, b in blocks.items()
        }
        for ratio, blocks in totals.items()
    }
    return SimulationResult(
        by_supply,
        windows,
        len(items_seen),
        time.perf_counter() - started,
        economics=economics,
        transfer_cost=transfer_cost if mid else None,
    )


def _generator_config(data_dir: Path) -> GeneratorConfig | None:
    """The generator's configuration when the data set was generated (``_truth/config.json``)."""
    path = Path(data_dir) / "_truth" / "config.json"
    return GeneratorConfig(**json.loads(path.read_text())) if path.exists() else None


def _true_demand(data_dir: Path, freq: str, panel: pd.DataFrame) -> pd.DataFrame:
    """The generator's uncensored demand per period if present; else the recorded sales."""
    candidates = [
        Path(data_dir) / "_truth" / f"demand{suffix}" for suffix in (".parquet", ".csv.gz", ".csv")
    ]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        return panel[[SERIES, "store_id", "item_id", PERIOD, TARGET]]
    raw = (
        pd.read_parquet(path)
        if path.suffix == ".parquet"
        else pd.read_csv(path, dtype={"store_id": str, "item_id": str})
    )
    raw["date"] = pd.to_datetime(raw["date"])
    raw[PERIOD] = period_end(raw["date"], freq, panel[PERIOD].max())
    return (
        raw.groupby(["store_id", "item_id", PERIOD], observed=True)["demand"]
        .sum()
        .rename(TARGET)
        .reset_index()
    )


def plan(
    model: LightGBMForecaster,
    item_id: str,
    units: int,
    *,
    horizon: int | None = None,
    data: DemandData | None = None,
    on_hand: pd.Series | None = None,
    economics: Economics = Economics(),  # noqa: B008 (frozen, immutable)
    pack_size: int = 1,
) -> pd.DataFrame:
    """A planner's allocation of ``units`` of one item across the stores that sell it."""
    forecast = model.predict(model.history_, plan=data.plan if data is not None else None)
    return plan_item(
        model, forecast, item_id, units,
        horizon=horizon, on_hand=on_hand, economics=economics, pack_size=pack_size,
    )  # fmt: skip


def dcs(data_dir: Path) -> list[str]:
    """The nodes the data directory's stores table calls DCs, in id order (none without one)."""
    tables = load_dataset(data_dir, ("stores",))
    stores = tables["stores"].accepted if "stores" in tables else pd.DataFrame()
    return dc_ids(stores.set_index("store_id")["kind"]) if "kind" in stores else []
