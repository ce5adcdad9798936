"""A synthetic omnichannel retailer that gives models something real to find.

The simulation runs day by day and streams every table to disk, so memory is bounded by one day's
events plus the per-(node, item) stock state, whatever the number of days.

* Customers have latent tastes (three favourite categories and some exploration), a home store,
  channel preferences (store / web / app / call centre), a habitual weekday and hour, and a trip
  rate. Each channel knows them under its own key; some keys are linked through hashed e-mail or
  phone in ``identities`` — for a realistic fraction only — and a few loyalty cards carry a shop's
  generic e-mail (the over-shared link identity resolution must not follow).
* Items have a category, brand, price, a long-tail (Zipf) popularity, a price elasticity and
  ``repurchasable`` / ``promotable`` flags. Chain-wide weekly promotions and flyer features lift
  demand through the elasticity; categories have their own yearly season; weekdays differ.
* Online sessions view before they cart and cart before they buy; some are browse-only. A share
  of web/app orders are click-and-collect: fulfilled by the customer's home store.
* Every fulfilling node holds stock, refilled weekly to an order-up-to level (sometimes a delivery
  fails); demand beyond stock is lost — censored — and recorded only in ``_truth/demand``.
* With ``store_variety`` (0 by default: stores alike), stores differ as real ones do — sizes,
  local assortments and tastes, channel mix, response to promotions — so that a placement
  backtest has something to find (see ``_vary_stores``).
* ``bad_fraction`` of the ``events`` and ``sales`` rows are corrupted on purpose (unparseable time,
  unknown event type, negative or non-numeric quantity, missing id, over-long id, duplicate id).

Written tables: events, identities, items, stores, sales (daily POS totals per fulfilling node),
inventory (end-of-day snapshots, written when a node's stock of an item changed; DC weekly), plan
(the promotions and flyers of the ``plan_days`` after the history). ``_truth/`` holds the true
customer of every key, the uncensored daily demand and the count of corrupted rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CHANNELS = ("store", "web", "app", "call_centre")
STORE, WEB, APP, CALL = range(4)
KEY_PREFIX = ("LC", "W", "DEV", "CC")
CATEGORY_NAMES = (
    "dairy", "bakery", "produce", "snacks", "beverages", "frozen", "household", "personal_care",
    "baby", "pet", "apparel", "footwear", "toys", "electronics", "home", "garden", "sports",
    "books", "beauty", "stationery",
)  # fmt: skip
WEEKDAY_FACTOR = np.array([0.9, 0.85, 0.9, 0.95, 1.1, 1.35, 1.2])  # Monday .. Sunday
PARTITIONED = "parquet-partitioned"
FORMATS = ("csv", "csv.gz", "parquet", PARTITIONED)


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Everything derives from ``seed``: same config, same bytes."""

    customers: int = 1000
    items: int = 200
    stores: int = 5
    days: int = 270
    seed: int = 0
    start: str = "2024-01-01"
    format: str = "csv"
    bad_fraction: float = 0.001
    trip_rate: float = 0.04  # mean shopping trips per customer per day
    plan_days: int = 28
    promo_share: float = 0.06  # promotable items on promotion in a given week
    store_variety: float = 0.0  # 0: stores alike; 1: sizes, assortments, tastes, channel mix and
    # promotion response differ as real stores' do (see _vary_stores)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}.")
        for name in ("customers", "items", "stores", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if not 0 <= self.bad_fraction < 0.5:
            raise ValueError(f"bad_fraction must be in [0, 0.5), not {self.bad_fraction}.")
        if not 0 <= self.store_variety <= 1:
            raise ValueError(f"store_variety must be in [0, 1], not {self.store_variety}.")


class _TableWriter:
    """Streams record batches to one CSV, CSV.gz or Parquet file, or, for
    ``parquet-partitioned``, to a directory of Parquet files, one per month of the rows' dates
    (``events/month=2024-01/part-0.parquet``: a hive layout; a table without dates is one file).
    """

    def __init__(self, path_stem: Path, fmt: str) -> None:
        self.partitioned = fmt == PARTITIONED
        self.path = (
            path_stem if self.partitioned else path_stem.with_name(f"{path_stem.name}.{fmt}")
        )
        self.fmt = fmt
        self._writer: pacsv.CSVWriter | pq.ParquetWriter | None = None
        self._stream: pa.NativeFile | None = None
        self._part: str | None = None
        self.rows = 0

    def write(self, columns: dict[str, pa.Array], date: np.datetime64 | None = None) -> None:
        # A day without rows has text columns of no type: text, as on the other days.
        columns = {k: v.cast(pa.string()) if v.type == pa.null() else v for k, v in columns.items()}
        if not self.fmt.startswith("parquet"):  # CSV is text; Parquet keeps its types
            columns = {k: _as_text(v) for k, v in columns.items()}
        table = pa.table(columns)
        if self.partitioned:
            part = f"month={str(date)[:7]}" if date is not None else "all"
            if part != self._part:  # a new month: a new file
                self.close()
                (self.path / part).mkdir(parents=True, exist_ok=True)
                self._writer = pq.ParquetWriter(self.path / part / "part-0.parquet", table.schema)
                self._part = part
        elif self._writer is None:
            if self.fmt == "parquet":
                self._writer = pq.ParquetWriter(self.path, table.schema)
            else:
                compression = "gzip" if self.fmt == "csv.gz" else None
                self._stream = (
                    pa.CompressedOutputStream(self.path, compression)
                    if compression
                    else pa.OSFile(str(self.path), "wb")
                )
                self._writer = pacsv.CSVWriter(self._stream, table.schema)
        assert self._writer is not None
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _truth_format(fmt: str) -> str:
    """The truth beside the data is one file, whatever the data's layout."""
    return "parquet" if fmt == PARTITIONED else fmt


def _as_text(values: pa.Array) -> pa.Array:
    if pa.types.is_timestamp(values.type):
        return pc.strftime(values, format="%Y-%m-%dT%H:%M:%S")
    return values.cast(pa.string())


@dataclass
class _World:
    """Everything fixed for the whole simulation."""

    item_ids: np.ndarray
    item_category: np.ndarray
    item_price: np.ndarray
    item_popularity: np.ndarray
    item_elasticity: np.ndarray
    item_repurchasable: np.ndarray
    item_promotable: np.ndarray
    category_amplitude: np.ndarray
    category_peak: np.ndarray
    node_ids: np.ndarray  # physical stores, then ONLINE (DC is not a selling node)
    favourite: np.ndarray  # (customers, 3) category indices
    favourite_weight: np.ndarray  # (customers, 3) cumulative weights, explore beyond
    home: np.ndarray
    channel_cum: np.ndarray  # (customers, 4) cumulative channel preferences
    habit_day: np.ndarray
    habit_hour: np.ndarray
    rate: np.ndarray
    keys: np.ndarray  # (4, customers) object: the channel's key, or None (anonymous / guest)
    promo: np.ndarray  # (weeks, items) discount, 0 = none
    flyer: np.ndarray  # (weeks, items) bool
    node_taste: np.ndarray | None = None  # (nodes, items) local taste; 0 = not carried there
    node_promo_response: np.ndarray | None = None  # (nodes,) exponent on the promotion lift


def generate(
    config: GeneratorConfig, out: Path, progress: Callable[[int], None] | None = None
) -> dict[str, int]:
    """Write a synthetic data set to ``out``; return rows written per table.

    Args:
        config: sizes, seed and format.
        out: target directory (created); ``_truth/`` is written inside it.
        progress: called with the number of days just simulated (for a progress bar).
    """
    out = Path(out)
    (out / "_truth").mkdir(parents=True, exist_ok=True)
    (out / "_truth" / "config.json").write_text(json.dumps(dataclasses.asdict(config)) + "\n")
    rng = np.random.default_rng(config.seed)
    world = _build_world(config, rng)
    fmt = config.format
    writers = {
        name: _TableWriter(out / name, fmt)
        for name in ("events", "sales", "inventory", "plan", "identities", "items", "stores")
    }
    truth_demand = _TableWriter(out / "_truth" / "demand", _truth_format(fmt))
    _write_static(config, world, writers, out, rng)

    n_nodes = len(world.node_ids)
    start = np.datetime64(config.start, "D")
    # Order-up-to levels from a burn-in fortnight of unconstrained demand.
    burn_in = np.zeros((n_nodes, len(world.item_ids)))
    for day in range(-14, 0):
        weight, _ = _item_weights(world, day, start + day)
        lines = _simulate_demand(config, world, rng, start + day, weight)
        np.add.at(burn_in, (lines["node"], lines["item"]), lines["qty"])
    weekly = burn_in / 14 * 7
    level = np.ceil(weekly * rng.uniform(0.9, 1.5, size=weekly.shape)).astype(np.int64) + 1
    stock = level.copy()
    dc_stock = level.sum(axis=0) * 3
    delivery_day = np.arange(n_nodes) % 7

    bad = {"events": 0, "sales": 0}
    typed = fmt.startswith("parquet")
    event_seq = 0
    for day in range(config.days):
        date = start + day
        weight, price = _item_weights(world, day, date)
        lines = _simulate_demand(config, world, rng, date, weight)
        fulfilled = _censor(lines, stock, len(world.item_ids))
        before = stock.copy()
        np.subtract.at(
            stock, (lines["node"][fulfilled], lines["item"][fulfilled]), lines["qty"][fulfilled]
        )
        events = _events_for_day(config, world, rng, date, lines, fulfilled, event_seq, price)
        event_seq += len(events["event_type"])
        bad["events"] += _corrupt(events, rng, config.bad_fraction, _corrupt_event, typed)
        writers["events"].write(events, date)
        sales = _sales_for_day(world, date, day, lines, fulfilled, price)
        bad["sales"] += _corrupt(sales, rng, config.bad_fraction, _corrupt_sale, typed)
        writers["sales"].write(sales, date)
        truth_demand.write(_demand_for_day(world, date, lines))
        # Deliveries arrive at the end of the node's delivery day; some fail.
        due = delivery_day == date.astype("datetime64[D]").item().weekday()
        if due.any():
            ok = rng.random((int(due.sum()), stock.shape[1])) > 0.04
            refill = np.where(ok, np.maximum(level[due] - stock[due], 0), 0)
            refill = np.minimum(refill, dc_stock)  # never ship what the DC has not got
            stock[due] += refill
            dc_stock -= refill.sum(axis=0)
        if day % 28 == 0:
            dc_stock += level.sum(axis=0) * 2  # monthly inbound from suppliers
        writers["inventory"].write(
            _inventory_changes(world, date, before, stock, dc_stock, day), date
        )
        if progress:
            progress(1)
    writers["plan"].write(_plan(config, world, start + config.days))
    for writer in [*writers.values(), truth_demand]:
        writer.close()
    (out / "_truth" / "corrupted_rows.json").write_text(json.dumps(bad, indent=2) + "\n")
    return {name: w.rows for name, w in writers.items()}


def _build_world(config: GeneratorConfig, rng: np.random.Generator) -> _World:
    n_items, n_cust = config.items, config.customers
    n_cat = int(np.clip(n_items // 25, 3, 40))
    item_category = np.sort(rng.integers(0, n_cat, n_items))
    base_price = rng.lognormal(1.2, 0.8, n_cat)
    item_price = np.round(base_price[item_category] * rng.lognormal(0, 0.35, n_items), 2) + 0.49
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity = popularity[rng.permutation(n_items)]
    repurchasable_category = rng.permutation(n_cat) < (n_cat + 1) // 2  # grocery-like half
    n_weeks = (config.days + config.plan_days) // 7 + 2
    promotable = rng.random(n_items) < 0.7
    promo = np.zeros((n_weeks, n_items))
    flyer = np.zeros((n_weeks, n_items), dtype=bool)
    for week in range(n_weeks):
        on = promotable & (rng.random(n_items) < config.promo_share)
        promo[week, on] = rng.choice([0.15, 0.25, 0.35], size=int(on.sum()))
        flyer[week] = (on & (rng.random(n_items) < 0.5)) | (rng.random(n_items) < 0.01)

    favourite = np.stack([rng.integers(0, n_cat, n_cust) for _ in range(3)], axis=1)
    weights = rng.dirichlet([3.0, 1.5, 1.0], n_cust) * 0.85  # 15% exploration beyond
    channel_pref = rng.dirichlet([2.0, 1.0, 1.0, 0.2], n_cust)
    keys = np.full((4, n_cust), None, dtype=object)
    has_key = np.stack(
        [
            rng.random(n_cust) < 0.65,  # loyalty card
            channel_pref[:, WEB] > 0.08,  # web account (else guest checkout)
            channel_pref[:, APP] > 0.08,  # app with login
            channel_pref[:, CALL] > 0.02,  # call-centre account
        ]
    )
    for channel in range(4):
        token = rng.permutation(n_cust * 10)[:n_cust]  # unrelated to the customer's index
        keys[channel, has_key[channel]] = np.char.add(
            f"{KEY_PREFIX[channel]}-", np.char.zfill(token[has_key[channel]].astype(str), 8)
        ).astype(object)
    n_stores = config.stores
    world = _World(
        item_ids=np.char.add("I", np.char.zfill(np.arange(n_items).astype(str), 6)).astype(object),
        item_category=item_category,
        item_price=item_price,
        item_popularity=popularity,
        item_elasticity=rng.uniform(1.2, 2.5, n_items),
        item_repurchasable=repurchasable_category[item_category],
        item_promotable=promotable,
        category_amplitude=rng.uniform(0.05, 0.4, n_cat),
        category_peak=rng.integers(0, 365, n_cat),
        node_ids=np.array([f"S{i + 1:03d}" for i in range(n_stores)] + ["ONLINE"], dtype=object),
        favourite=favourite,
        favourite_weight=np.cumsum(weights, axis=1),
        home=rng.integers(0, n_stores, n_cust),
        channel_cum=np.cumsum(channel_pref, axis=1),
        habit_day=rng.integers(0, 7, n_cust),
        habit_hour=rng.integers(8, 21, n_cust),
        rate=rng.gamma(2.0, config.trip_rate / 2.0, n_cust),
        keys=keys,
        promo=promo,
        flyer=flyer,
    )
    return _vary_stores(config, world, channel_pref) if config.store_variety else world


def _vary_stores(config: GeneratorConfig, world: _World, channel_pref: np.ndarray) -> _World:
    """Stores that differ as real ones do, scaled by ``store_variety`` (v): sizes (the share of
    customers homed there, lognormal with sigma 0.8 v), local assortments (each store leaves out
    10% v of the items) and tastes (a lognormal multiplier per store and item, sigma 0.6 v),
    channel mix (the web and app preference of a store's customers times a lognormal digital
    affinity, sigma 0.6 v) and promotion response (each store's promotion lift raised to a power
    from 1 - 0.7 v to 1 + 0.7 v). A generator of its own, so the rest of the data set is drawn
    exactly as without variety."""
    v = config.store_variety
    rng = np.random.default_rng([config.seed, 7])
    n_stores, n_items = config.stores, len(world.item_ids)
    size = rng.lognormal(0.0, 0.8 * v, n_stores)
    home = rng.choice(n_stores, len(world.home), p=size / size.sum())
    taste = rng.lognormal(0.0, 0.6 * v, (n_stores, n_items))
    taste[rng.random((n_stores, n_items)) < 0.1 * min(v, 1.0)] = 0.0
    digital = rng.lognormal(0.0, 0.6 * v, n_stores)[home]
    preference = channel_pref.copy()
    preference[:, [WEB, APP]] *= digital[:, None]
    preference /= preference.sum(axis=1, keepdims=True)
    response = rng.uniform(1 - 0.7 * v, 1 + 0.7 * v, n_stores)
    return dataclasses.replace(
        world,
        home=home,
        channel_cum=np.cumsum(preference, axis=1),
        node_taste=np.vstack([taste, np.ones((1, n_items))]),  # online carries everything
        node_promo_response=np.append(response, 1.0),
    )


def demand_distribution(
    config: GeneratorConfig, first: np.datetime64, days: int, replicas: int = 100
) -> dict[str, np.ndarray]:
    """The true distribution of each node's demand for each item over ``days`` days from
    ``first``: those days simulated ``replicas`` times from the data set's own world (its
    customers, tastes, promotions and seasons), each time with fresh randomness. Returns
    ``store_id``, ``item_id``, and the ``mean`` and ``variance`` of the total, per node x item.
    """
    world = _build_world(config, np.random.default_rng(config.seed))
    offset = int((first.astype("datetime64[D]") - np.datetime64(config.start, "D")).astype(int))
    n_nodes, n_items = len(world.node_ids), len(world.item_ids)
    totals = np.zeros((replicas, n_nodes, n_items))
    dates = [np.datetime64(config.start, "D") + day for day in range(offset, offset + days)]
    # The days' item weights hold no randomness: the same in every replica.
    weights = [_item_weights(world, offset + i, date)[0] for i, date in enumerate(dates)]
    for replica in range(replicas):
        rng = np.random.default_rng([config.seed, 99, replica])
        for date, weight in zip(dates, weights, strict=True):
            lines = _simulate_demand(config, world, rng, date, weight)
            node, item, units = _group_units(world, lines, ~lines["browse"])  # as _truth/demand
            totals[replica, node, item] += units
    return {
        "store_id": np.repeat(world.node_ids, n_items),
        "item_id": np.tile(world.item_ids, n_nodes),
        "mean": totals.mean(axis=0).ravel(),
        "variance": totals.var(axis=0, ddof=1).ravel(),
    }


def _category_names(n_cat: int) -> list[str]:
    return [
        CATEGORY_NAMES[i % len(CATEGORY_NAMES)]
        + ("" if i < len(CATEGORY_NAMES) else f"_{i // len(CATEGORY_NAMES)}")
        for i in range(n_cat)
    ]


def _email_hash(kind: str, person: np.ndarray) -> np.ndarray:
    return np.array(
        [hashlib.sha256(f"{kind}:{p}".encode()).hexdigest()[:20] for p in person], dtype=object
    )


def _write_static(
    config: GeneratorConfig,
    world: _World,
    writers: dict[str, _TableWriter],
    out: Path,
    rng: np.random.Generator,
) -> None:
    n_items = len(world.item_ids)
    names = np.array(_category_names(int(world.item_category.max()) + 1), dtype=object)
    brand = rng.integers(0, 6, n_items)
    writers["items"].write(
        {
            "item_id": pa.array(world.item_ids),
            "category": pa.array(names[world.item_category]),
            "brand": pa.array(np.char.add("brand_", brand.astype(str)).astype(object)),
            "unit_price": pa.array(world.item_price),
            "repurchasable": pa.array(world.item_repurchasable),
            "promotable": pa.array(world.item_promotable),
        }
    )
    writers["items"].close()
    n_stores = config.stores
    node_ids = [*world.node_ids, "DC"]
    writers["stores"].write(
        {
            "store_id": pa.array(node_ids),
            "kind": pa.array(["store"] * n_stores + ["online", "dc"]),
            "region": pa.array(
                [f"R{i % 4 + 1}" for i in range(n_stores)] + ["national", "national"]
            ),
            "lat": pa.array(np.round(rng.uniform(34.0, 43.0, n_stores + 2), 4)),
            "lon": pa.array(np.round(rng.uniform(131.0, 141.0, n_stores + 2), 4)),
        }
    )
    writers["stores"].close()

    # Identity links: how often each channel's key carries an e-mail / phone link.
    email_rate = (0.45, 0.9, 0.5, 0.3)
    phone_rate = (0.3, 0.1, 0.2, 0.9)
    rows: dict[str, list[np.ndarray]] = {
        "channel": [],
        "customer_key": [],
        "link_type": [],
        "link_value": [],
    }
    truth: dict[str, list[np.ndarray]] = {"channel": [], "customer_key": [], "true_customer": []}
    n_cust = config.customers
    for channel in range(4):
        people = np.flatnonzero(world.keys[channel] != None)  # noqa: E711 (object array)
        truth["channel"].append(np.full(len(people), CHANNELS[channel], dtype=object))
        truth["customer_key"].append(world.keys[channel, people])
        truth["true_customer"].append(np.char.add("T", people.astype(str)).astype(object))
        for link, rate in (
            ("email_sha256", email_rate[channel]),
            ("phone_sha256", phone_rate[channel]),
        ):
            linked = people[rng.random(len(people)) < rate]
            values = _email_hash(link, linked)
            rows["channel"].append(np.full(len(linked), CHANNELS[channel], dtype=object))
            rows["customer_key"].append(world.keys[channel, linked])
            rows["link_type"].append(np.full(len(linked), link, dtype=object))
            rows["link_value"].append(values)
    # Cashiers who type the shop's own e-mail for customers who have none.
    loyalty = np.flatnonzero(world.keys[STORE] != None)  # noqa: E711
    n_generic = min(len(loyalty), max(12, n_cust // 400))
    generic_people = (
        rng.choice(loyalty, n_generic, replace=False) if n_generic else np.array([], int)
    )
    n_values = max(1, n_generic // 12)
    rows["channel"].append(np.full(n_generic, "store", dtype=object))
    rows["customer_key"].append(world.keys[STORE, generic_people])
    rows["link_type"].append(np.full(n_generic, "email_sha256", dtype=object))
    rows["link_value"].append(_email_hash("shop", rng.integers(0, n_values, n_generic)))
    writers["identities"].write({k: pa.array(np.concatenate(v)) for k, v in rows.items()})
    writers["identities"].close()
    truth_writer = _TableWriter(out / "_truth" / "keys", _truth_format(config.format))
    truth_writer.write({k: pa.array(np.concatenate(v)) for k, v in truth.items()})
    truth_writer.close()


def _item_weights(world: _World, day: int, date: np.datetime64) -> tuple[np.ndarray, np.ndarray]:
    """Today's attractiveness of each item (popularity x season x price x flyer) and price."""
    week = day // 7 + 1  # burn-in days (negative) map to week 0
    week = max(week, 0)
    discount = world.promo[week]
    price = world.item_price * (1 - discount)
    doy = (date - date.astype("datetime64[Y]")).astype(int)
    season = 1 + world.category_amplitude * np.cos(2 * np.pi * (doy - world.category_peak) / 365.0)
    lift = (1 - discount) ** (-world.item_elasticity) * np.where(world.flyer[week], 1.3, 1.0)
    weight = world.item_popularity * season[world.item_category] * lift
    if world.node_taste is not None and world.node_promo_response is not None:
        # Per node: its taste, and its own response to the promotion (lift ** response).
        exponent = world.node_promo_response[:, None] - 1.0
        weight = weight[None, :] * world.node_taste * lift[None, :] ** exponent
    return weight, price


def _simulate_demand(
    config: GeneratorConfig,
    world: _World,
    rng: np.random.Generator,
    date: np.datetime64,
    weight: np.ndarray,
) -> dict[str, np.ndarray]:
    """Today's shopping lines: who, channel, trip, node, item, quantity, second of day, browse."""
    weekday = date.astype("datetime64[D]").item().weekday()
    doy = (date - date.astype("datetime64[Y]")).astype(int)
    trip_weight = world.rate * np.where(world.habit_day == weekday, 3.0, 0.7)
    trip_weight *= WEEKDAY_FACTOR[weekday] * (1 + 0.15 * np.cos(2 * np.pi * (doy - 350) / 365.0))
    total = trip_weight.sum()
    n_trips = rng.poisson(total)
    cust = np.searchsorted(np.cumsum(trip_weight), rng.random(n_trips) * total, side="right")
    cust = np.minimum(cust, len(trip_weight) - 1)
    channel = (rng.random((n_trips, 1)) > world.channel_cum[cust]).sum(axis=1).clip(0, 3)
    basket = 1 + rng.poisson(np.array([2.5, 1.0, 1.0, 0.5])[channel])
    browse = np.isin(channel, (WEB, APP)) & (rng.random(n_trips) < 0.35)
    collect = np.isin(channel, (WEB, APP)) & (rng.random(n_trips) < 0.15)
    elsewhere = rng.random(n_trips) < 0.1
    node = np.where(
        channel == STORE,
        np.where(elsewhere, rng.integers(0, config.stores, n_trips), world.home[cust]),
        np.where(collect, world.home[cust], config.stores),
    )
    second = (world.habit_hour[cust] * 3600 + rng.normal(0, 5400, n_trips)).clip(
        7 * 3600, 22 * 3600
    )

    trip = np.repeat(np.arange(n_trips), basket)
    lc = cust[trip]
    u = rng.random(len(trip))
    fav_slot = (u[:, None] > world.favourite_weight[lc]).sum(axis=1)
    explore = fav_slot >= 3
    n_cat = len(world.category_amplitude)
    category = np.where(
        explore, rng.integers(0, n_cat, len(trip)), world.favourite[lc, np.minimum(fav_slot, 2)]
    )
    if weight.ndim == 1:
        item = _sample_items(world, weight, category, rng)
    else:  # each node's own weights (stores that differ)
        item = np.empty(len(trip), dtype=np.int64)
        line_node = node[trip]
        for n in np.unique(line_node):
            at = line_node == n
            item[at] = _sample_items(world, weight[n], category[at], rng)
    qty = np.where(world.item_repurchasable[item], 1 + rng.poisson(0.4, len(trip)), 1)
    return {
        "cust": lc,
        "channel": channel[trip],
        "trip": trip,
        "node": node[trip],
        "item": item,
        "qty": qty.astype(np.int64),
        "second": (second[trip] + np.arange(len(trip)) % 7 * 40).astype(np.int64),
        "browse": browse[trip],
    }


def _sample_items(
    world: _World, weight: np.ndarray, category: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One item per line from its category, with probability proportional to ``weight``."""
    cum = np.cumsum(weight)  # items are sorted by category
    n_cat = len(world.category_amplitude)
    end = np.searchsorted(world.item_category, np.arange(n_cat), side="right")
    start = np.searchsorted(world.item_category, np.arange(n_cat), side="left")
    empty = start == end
    # An empty category (possible in tiny catalogues) falls back to the whole catalogue.
    lo = np.where(empty, 0.0, np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0))
    hi = np.where(empty, cum[-1], cum[np.maximum(end - 1, 0)])
    target = lo[category] + rng.random(len(category)) * (hi[category] - lo[category])
    return np.minimum(np.searchsorted(cum, target, side="right"), len(weight) - 1)


def _censor(lines: dict[str, np.ndarray], stock: np.ndarray, n_items: int) -> np.ndarray:
    """Which purchase lines the node's stock can fill, first come first served."""
    wants = ~lines["browse"]
    key = lines["node"] * n_items + lines["item"]
    order = np.lexsort((lines["second"], key))
    qty = np.where(wants, lines["qty"], 0)[order]
    sorted_key = key[order]
    cum = np.cumsum(qty)
    group_start = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
    offset = np.maximum.accumulate(np.where(group_start, cum - qty, 0))
    within = cum - offset
    ok_sorted = within <= stock.reshape(-1)[sorted_key]
    fulfilled = np.empty(len(key), dtype=bool)
    fulfilled[order] = ok_sorted
    return fulfilled & wants


def _timestamps(date: np.datetime64, seconds: np.ndarray) -> pa.Array:
    return pa.array(date.astype("datetime64[s]") + seconds.astype("timedelta64[s]"))


def _dates(date: np.datetime64, n: int) -> pa.Array:
    return pa.array(np.full(n, date, dtype="datetime64[D]"))


def _events_for_day(
    config: GeneratorConfig,
    world: _World,
    rng: np.random.Generator,
    date: np.datetime64,
    lines: dict[str, np.ndarray],
    fulfilled: np.ndarray,
    first_id: int,
    price: np.ndarray,
) -> dict[str, pa.Array]:
    """Turn shopping lines into events: views and carts before online purchases, POS purchases,
    stock-outs seen as views, browse-only sessions, and occasional later returns."""
    channel, item, second, browse = (
        lines["channel"],
        lines["item"],
        lines["second"],
        lines["browse"],
    )
    online = channel != STORE
    phone = channel == CALL
    parts = []

    def part(
        mask: np.ndarray, kind: str, shift: np.ndarray | int, qty: np.ndarray | None = None
    ) -> None:
        idx = np.flatnonzero(mask)
        parts.append(
            (idx, kind, second[idx] + (shift[idx] if isinstance(shift, np.ndarray) else shift), qty)
        )

    intent = ~browse
    view_lead = rng.integers(60, 900, len(item))
    part(online & ~phone & (intent | browse), "view", -view_lead)
    part(online & ~phone & intent & fulfilled, "cart", -30)
    part(browse & (rng.random(len(item)) < 0.2), "cart", 0)
    part(fulfilled, "purchase", 0)
    returned = fulfilled & ~world.item_repurchasable[item] & (rng.random(len(item)) < 0.03)
    part(returned, "return", rng.integers(1, 15, len(item)) * 86400)

    idx = np.concatenate([p[0] for p in parts])
    kinds = np.concatenate([np.full(len(p[0]), p[1], dtype=object) for p in parts])
    seconds = np.concatenate([p[2] for p in parts])
    last_second = (config.days - (date - np.datetime64(config.start, "D")).astype(int)) * 86400 - 1
    seconds = np.minimum(seconds, last_second)  # a return never lands after the history ends
    qty = np.where(np.isin(kinds, ("view",)), 1, lines["qty"][idx])
    n = len(idx)
    event_ids = pc.binary_join_element_wise(
        "E", pa.array(np.arange(first_id, first_id + n)).cast(pa.string()), ""
    )
    return {
        "event_id": event_ids,
        "event_time": _timestamps(date, seconds),
        "channel": pa.array(np.array(CHANNELS, dtype=object)[channel[idx]]),
        "event_type": pa.array(kinds),
        "item_id": pa.array(world.item_ids[item[idx]]),
        "customer_key": pa.array(world.keys[channel[idx], lines["cust"][idx]], type=pa.string()),
        "quantity": pa.array(qty),
        "unit_price": pa.array(np.round(price[item[idx]], 2)),
        "store_id": pa.array(world.node_ids[lines["node"][idx]]),
    }


def _group_units(
    world: _World, lines: dict[str, np.ndarray], mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Units per (node, item) over the masked lines: (node, item, units), nonzero only."""
    n_items = len(world.item_ids)
    key = lines["node"][mask] * n_items + lines["item"][mask]
    units = np.bincount(key, weights=lines["qty"][mask], minlength=len(world.node_ids) * n_items)
    nonzero = np.flatnonzero(units)
    return nonzero // n_items, nonzero % n_items, units[nonzero].astype(np.int64)


def _sales_for_day(
    world: _World,
    date: np.datetime64,
    day: int,
    lines: dict[str, np.ndarray],
    fulfilled: np.ndarray,
    price: np.ndarray,
) -> dict[str, pa.Array]:
    node, item, units = _group_units(world, lines, fulfilled)
    week = day // 7 + 1
    return {
        "date": _dates(date, len(node)),
        "store_id": pa.array(world.node_ids[node]),
        "item_id": pa.array(world.item_ids[item]),
        "units": pa.array(units),
        "unit_price": pa.array(np.round(price[item], 2)),
        "on_promo": pa.array((world.promo[week, item] > 0).astype(np.int8)),
        "x_flyer": pa.array(world.flyer[week, item].astype(np.int8)),
    }


def _demand_for_day(
    world: _World, date: np.datetime64, lines: dict[str, np.ndarray]
) -> dict[str, pa.Array]:
    node, item, units = _group_units(world, lines, ~lines["browse"])
    return {
        "date": _dates(date, len(node)),
        "store_id": pa.array(world.node_ids[node]),
        "item_id": pa.array(world.item_ids[item]),
        "demand": pa.array(units),
    }


def _inventory_changes(
    world: _World,
    date: np.datetime64,
    before: np.ndarray,
    after: np.ndarray,
    dc: np.ndarray,
    day: int,
) -> dict[str, pa.Array]:
    node, item = np.nonzero(before != after)
    on_hand = after[node, item]
    store_ids = world.node_ids[node]
    item_ids = world.item_ids[item]
    if day % 7 == 0:  # the DC reports weekly
        store_ids = np.concatenate([store_ids, np.full(len(dc), "DC", dtype=object)])
        item_ids = np.concatenate([item_ids, world.item_ids])
        on_hand = np.concatenate([on_hand, dc])
    return {
        "date": _dates(date, len(store_ids)),
        "store_id": pa.array(store_ids),
        "item_id": pa.array(item_ids),
        "on_hand": pa.array(on_hand),
    }


def _plan(config: GeneratorConfig, world: _World, first: np.datetime64) -> dict[str, pa.Array]:
    """Planned promotions and flyers for the days after the history, at every selling node."""
    n_nodes = len(world.node_ids)
    days, items = [], []
    for day in range(config.plan_days):
        planned = np.flatnonzero(
            (world.promo[(config.days + day) // 7 + 1] > 0)
            | world.flyer[(config.days + day) // 7 + 1]
        )
        days.append(np.full(len(planned) * n_nodes, day))
        items.append(np.tile(planned, n_nodes))
    offset = np.concatenate(days).astype(np.int64)
    item = np.concatenate(items).astype(np.int64)
    node = np.concatenate([np.repeat(np.arange(n_nodes), len(i) // n_nodes) for i in items])
    week = (config.days + offset) // 7 + 1
    discount = world.promo[week, item]
    return {
        "date": pa.array(first + offset.astype("timedelta64[D]")),
        "store_id": pa.array(world.node_ids[node.astype(np.int64)]),
        "item_id": pa.array(world.item_ids[item]),
        "unit_price": pa.array(np.round(world.item_price[item] * (1 - discount), 2)),
        "on_promo": pa.array((discount > 0).astype(np.int8)),
        "x_flyer": pa.array(world.flyer[week, item].astype(np.int8)),
    }


Corruptor = Callable[[dict[str, list], int, int | None, np.random.Generator, bool], None]


def _corrupt(
    columns: dict[str, pa.Array],
    rng: np.random.Generator,
    fraction: float,
    corruptor: Corruptor,
    typed: bool,
) -> int:
    """Corrupt about ``fraction`` of the rows in place; return how many.

    Text (CSV) can hold any garbage; typed columns (Parquet) only what their type allows, so
    corruptions there are missing, negative, unknown, over-long or duplicate values.
    """
    n = len(next(iter(columns.values())))
    if n == 0 or fraction <= 0:
        return 0
    rows = np.flatnonzero(rng.random(n) < fraction)
    if len(rows) == 0:
        return 0
    types = {k: v.type for k, v in columns.items()} if typed else {}
    values = {k: (v if typed else _as_text(v)).to_pylist() for k, v in columns.items()}
    clean = np.setdiff1d(np.arange(n), rows)
    for row in rows:
        # A duplicate copies the id of an earlier row that stays clean, so exactly this row is
        # quarantined for it.
        earlier = clean[clean < row]
        corruptor(values, int(row), int(earlier[-1]) if len(earlier) else None, rng, typed)
    for k, column in values.items():
        columns[k] = pa.array(column, type=types.get(k, pa.string()))
    return len(rows)


def _corrupt_event(
    values: dict[str, list], row: int, partner: int | None, rng: np.random.Generator, typed: bool
) -> None:
    kind = int(rng.integers(0, 7))
    if kind == 0:
        values["event_time"][row] = None if typed else "2024-13-45T99:61:00"
    elif kind == 1:
        values["event_type"][row] = "teleport"
    elif kind == 2:
        values["quantity"][row] = -3 if typed else "-3"
    elif kind == 3:
        values["item_id"][row] = None
    elif kind == 4:
        if typed:
            values["unit_price"][row] = -1.0
        else:
            values["quantity"][row] = "two"
    elif kind == 5:
        values["item_id"][row] = "X" * 500
    elif partner is not None:
        values["event_id"][row] = values["event_id"][partner]
    else:  # a duplicate needs a clean earlier row
        values["item_id"][row] = None


def _corrupt_sale(
    values: dict[str, list], row: int, partner: int | None, rng: np.random.Generator, typed: bool
) -> None:
    kind = int(rng.integers(0, 3))
    if kind == 0:
        values["date"][row] = None if typed else "31/31/2024"
    elif kind == 1:
        values["units"][row] = None if typed else "n/a"
    else:
        values["store_id"][row] = None
