"""What the service serves: the MLflow champions, their context, the events posted since, and
the stock picture.

A :class:`ServingState` is built whole (:func:`load_state`) and swapped in whole, so a reload is
atomic. Events posted to the service change it in place at once
(:meth:`ServingState.apply_appended`), and :meth:`ServingState.catch_up` replays the events logged
since the champion was trained (or by another worker), so neither a restart nor a reload forgets
them. The stock picture (:mod:`features.stock`) starts from the inventory snapshot training saw
and replays every stock movement ever logged, and every posted sale.

Locks, always taken in this order, never the other way: the state's ``_lock`` (events), the
event log's own lock (a transaction), ``_stock_lock`` (the stock picture and the rules' levels).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.customers import build_habits
from features.eventlog import MOVEMENT_COLUMNS, EventLog
from features.identity import IdentityConfig, customers_of_keys, salt_check
from features.interactions import InteractionWeights, event_weights
from features.stock import RESERVATION_PREFIX, Pair, StockLedger, StockRefusal, dc_ids
from models.forecast import LightGBMForecaster
from models.probe import probe_forecast, probe_recommender
from models.recommenders import Recommender
from models.rules import DEFAULT_TIMING, BusinessRules
from serving.registry import CONTEXT_DIR, FORECASTER, RECOMMENDER, model_to_serve

logger = logging.getLogger("omnichannel_ml")
#: Events of customers without habits kept before their habits are built anyway.
HABITS_BACKLOG = 10_000
SAFETY_STOCK_ENV = "OMNI_SAFETY_STOCK"


@dataclass
class ServingState:
    """Both champions and what answering with them needs.

    Attributes:
        key_ids: pseudonym of each (channel, customer_key) -> customer_id.
        habits: per customer_id: most engaged recent ``channel``, habitual ``weekday`` / ``hour``.
        salt: the identity salt (the same one training pseudonymised with).
        clock: the time of a request (for when an item bought, and bought again, is due again).
        stores, channels: every store and channel the data or the posted events named; a
            request naming another is refused (404), not answered with a guess.
        network: the stock nodes — the stores table's (:func:`stock_network`): fixed until
            the next load, so that an event naming a store nobody set up (a till's typo)
            cannot make it a place to move, reserve or promise
            stock. Sales there are kept in the log and count for customers, not for stock.
        stock: on hand, reserved and available to promise per node and item.
        nodes: the stores table (``kind``, ``lat``, ``lon`` by ``store_id``), as training saw it.
        movement_seq: the position of the last stock movement applied.
    """

    recommender: Recommender
    recommender_version: str
    forecaster: LightGBMForecaster
    forecaster_version: str
    rules: BusinessRules
    key_ids: dict[str, str]
    habits: pd.DataFrame
    weights: InteractionWeights
    salt: str
    stores: set[str] = field(default_factory=set)
    channels: set[str] = field(default_factory=set)
    network: frozenset[str] = frozenset()
    stock: StockLedger = field(default_factory=StockLedger)
    nodes: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["kind", "lat", "lon"], index=pd.Index([]))
    )
    log_seq: int = 0
    movement_seq: int = 0
    events_applied: int = 0
    clock: Callable[[], pd.Timestamp] = field(default=lambda: pd.Timestamp.now(tz="UTC"))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _forecast_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stock_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _past_sales_counted: bool = field(default=False, repr=False)
    _forecast: pd.DataFrame | None = field(default=None, repr=False)
    _unhabituated: list[pd.DataFrame] = field(default_factory=list, repr=False)

    def refusal(self, channel: str | None, store_id: str | None) -> str | None:
        """The sentence refusing a channel or store nothing ever named (a 404), or None."""
        if channel is not None and channel not in self.channels:
            known = ", ".join(sorted(self.channels))
            return f"Unknown channel {channel!r} (known: {known})."
        if store_id is not None and store_id not in self.stores:
            return f"Unknown store {store_id!r}."
        return None

    def identify(self, channel: str, customer_key: str) -> tuple[str | None, str]:
        """A channel's customer key as ``(customer_id, or None if never seen; the customer_id
        it is known by, or will get with its first event)``, from one look-up."""
        ids, new, _ = customers_of_keys(
            self.salt, self.key_ids, pd.Series([channel]), pd.Series([customer_key])
        )
        who = str(ids[0])
        return (None if new[0] else who), who

    def apply_appended(self, log: EventLog, events: pd.DataFrame, seqs: np.ndarray) -> None:
        """Apply events this process has just appended at log positions ``seqs`` — directly
        when they are the next ones, else by reading the log (another writer came between)."""
        with self._lock:
            contiguous = len(seqs) and seqs.max() - seqs.min() + 1 == len(seqs)
            if contiguous and seqs.min() == self.log_seq + 1:
                self._apply_or_log(events)
                self.log_seq = int(seqs.max())
        self.catch_up(log)

    def is_current(self, log: EventLog) -> bool:
        """Whether this state has applied everything ``log`` holds and no hold has run out —
        one read of the log's positions, no lock taken."""
        return (
            self._past_sales_counted
            and log.positions() == (self.log_seq, self.movement_seq)
            and not self.stock.due(self.clock())
        )

    def catch_up(self, log: EventLog) -> None:
        """Apply the events and stock movements logged since this state last looked (by any
        worker or process), and end the reservations whose hold has run out."""
        seen = (self.log_seq, self.movement_seq)  # before the log's: it only grows meanwhile
        events, movements = log.positions()
        if events < seen[0] or movements < seen[1]:
            self._log_went_back(events, movements)
        if not self._past_sales_counted:
            self._count_past_sales(log)
        if events > self.log_seq:
            with self._lock:
                if events > self.log_seq:
                    self._apply_or_log(log.read(after=self.log_seq, upto=events))
                    self.log_seq = events
        if movements > self.movement_seq:
            fresh = log.read_movements(after=self.movement_seq, upto=movements)
            with self._stock_lock:
                self._apply_movements(fresh, movements)
        now = self.clock()
        if self.stock.due(now):
            with self._stock_lock:
                self._restock(self.stock.expire(now))

    def _log_went_back(self, events: int, movements: int) -> None:
        """The log ends before positions already applied: it is an older copy (restored from a
        backup) or another store. What it gets from now on is new — applied from its end, not
        passed over until its positions come back to where they were."""
        with self._lock, self._stock_lock:
            if events < self.log_seq or movements < self.movement_seq:
                logger.warning(
                    "The event log ends at event %d and movement %d, before this state's %d and "
                    "%d (a log restored from a backup, or another one): what it gets from now on "
                    "is applied from there.",
                    events, movements, self.log_seq, self.movement_seq,
                )  # fmt: skip
                self.log_seq = min(self.log_seq, events)
                self.movement_seq = min(self.movement_seq, movements)

    def _count_past_sales(self, log: EventLog) -> None:
        """Once, at load: the sales and returns logged before the champion was trained count
        in the stock picture too (the model learned from them; the snapshot may be older, and
        what it already holds, dated before it, changes nothing)."""
        with self._lock:
            if not self._past_sales_counted:
                past = log.read(upto=self.log_seq) if self.log_seq else None
                if past is not None and len(past):
                    self._move_stock(past)
                self._past_sales_counted = True

    def _apply_movements(self, movements: pd.DataFrame, upto: int) -> None:
        """Apply logged movements (with their ``seq``) not applied yet, read up to position
        ``upto`` (under ``_stock_lock``); a quarantined one is passed over, not read again."""
        fresh = movements[movements["seq"] > self.movement_seq]
        if len(fresh):
            self._restock(self.stock.apply_movements(fresh))
        self.movement_seq = max(self.movement_seq, upto)

    def _restock(self, pairs: set[Pair]) -> None:
        """Tell the rules the units available to promise of these pairs now."""
        if pairs:
            available = self.stock.available(pairs)
            nodes, items = zip(*available, strict=True) if available else ((), ())
            self.rules.set_available(list(nodes), list(items), list(available.values()))

    def record_movements(self, log: EventLog, movements: pd.DataFrame) -> np.ndarray:
        """Store checked movements (:func:`features.eventlog.check_movements`) and apply them;
        returns per movement whether it was stored now (False: its id was already logged)."""
        stored, _ = log.append_movements(movements)
        self.catch_up(log)
        return stored

    def reserve(
        self, log: EventLog, reservation_id: str, node_id: str, item_id: str, quantity: float,
        hold_seconds: float,
    ) -> bool:  # fmt: skip
        """Reserve units at a node if that many are available to promise, decided under the
        log's lock on the log as it is, so two workers never both take the last unit.

        Returns:
            True when reserved now, False when a reservation with this id, node, item and
            quantity is held already (a retry: it is not made again).

        Raises:
            StockRefusal: 404, an item nobody lists or stocks; 409, not enough available, the
                id used for another reservation, or for this one after it was released,
                fulfilled or expired.
        """
        if not self.knows_item(item_id):
            raise StockRefusal(
                404,
                f"Unknown item_id {item_id!r}: the catalogue does not list it and no node "
                "stocks it.",
            )

        def decision() -> dict | None:
            problem = self.stock.reservation_refusal(reservation_id, node_id, item_id, quantity)
            if problem is not None:
                raise problem
            if reservation_id in self.stock.reservations:
                return None
            return {
                "movement_type": "reserve", "node_id": node_id, "item_id": item_id,
                "quantity": float(quantity), "reservation_id": reservation_id,
                "hold_seconds": float(hold_seconds),
            }  # fmt: skip

        return self._decide(log, decision)

    def close_reservation(
        self, log: EventLog, reservation_id: str, action: str, at: pd.Timestamp | None = None
    ) -> str:
        """Release (``release``) or collect (``fulfil``) a reservation; returns its state
        after (``released``, ``fulfilled``, or ``expired`` when released after its hold). The
        movement is dated ``at`` (naive UTC; the store's clock by default): a collection dated
        before a stock count is in that count.

        Raises:
            StockRefusal: 404 unknown; 409 already closed the other way (or expired, for
                ``fulfil``).
        """

        def decision() -> dict | None:
            problem = self.stock.closing_refusal(reservation_id, action)
            if problem is not None:
                raise problem
            held = self.stock.reservations[reservation_id]
            if held.state != "reserved":
                return None  # a retry, or the release of one that expired: nothing new
            return {
                "movement_type": action, "node_id": held.node_id, "item_id": held.item_id,
                "quantity": held.quantity, "reservation_id": reservation_id,
                "hold_seconds": None, **({} if at is None else {"movement_time": at}),
            }  # fmt: skip

        self._decide(log, decision)
        return self.stock.reservations[reservation_id].state

    def _decide(self, log: EventLog, decision: Callable[[], dict | None]) -> bool:
        """Store the reservation movement ``decision()`` makes, asked under the log's lock with
        every movement logged so far applied and the store's clock as now (one clock for every
        replica: the hold one worker sees run out has run out for all); it raises a refusal, or
        returns None when there is nothing new to store. Returns whether a movement was
        stored."""

        def decide(fresh: pd.DataFrame, last: int, now: pd.Timestamp) -> pd.DataFrame:
            with self._stock_lock:
                self._apply_movements(fresh, last)
                self._restock(self.stock.expire(now))
                row = decision()
            if row is None:
                return pd.DataFrame()
            decided.append(row)
            kind, reservation = row["movement_type"], row["reservation_id"]
            return pd.DataFrame(
                [{"movement_time": now.tz_localize(None), **row,
                  "movement_id": f"{RESERVATION_PREFIX}{reservation}:{kind}", "reference": None}],
                columns=list(MOVEMENT_COLUMNS),
            )  # fmt: skip

        decided: list[dict] = []
        stored, _ = log.append_movements(pd.DataFrame(), decide, after=self.movement_seq)
        if decided and not stored.all():  # its id taken: nothing may be answered as done
            raise RuntimeError(f"The {decided[0]['movement_type']} movement was not stored.")
        self.catch_up(log)
        return bool(stored.any())

    def reservation(self, reservation_id: str) -> dict[str, Any]:
        """A reservation as the API shows it, with its node's units available after it."""
        with self._stock_lock:
            held = self.stock.reservations[reservation_id]
            picture = self.stock.picture((held.node_id, held.item_id)) or {"available": 0.0}
        return {
            "reservation_id": reservation_id,
            "status": held.state,
            "node_id": held.node_id,
            "item_id": held.item_id,
            "quantity": held.quantity,
            "expires_at": pd.Timestamp(held.expires_at, tz="UTC").isoformat(),
            "available_after": picture["available"],
        }

    @cached_property
    def _kinds(self) -> dict[str, str]:
        """Each node's kind (store, online, dc) as the stores table gives it."""
        kinds = self.nodes["kind"].dropna() if "kind" in self.nodes else pd.Series(dtype=str)
        return {str(node): str(kind) for node, kind in kinds.items()}

    @cached_property
    def dcs(self) -> list[str]:
        """The nodes the stores table calls DCs, in id order."""
        return dc_ids(self._kinds)

    def location(self, store_id: str) -> tuple[float, float] | None:
        """A store's (lat, lon) from the stores table, None when it gives none."""
        return self._locations.get(store_id)

    @cached_property
    def _locations(self) -> dict[str, tuple[float, float]]:
        if not {"lat", "lon"} <= set(self.nodes.columns):
            return {}
        places = self.nodes[["lat", "lon"]].apply(pd.to_numeric, errors="coerce").dropna()
        return {str(node): (float(lat), float(lon)) for node, lat, lon in places.itertuples()}

    def availability(
        self, item_id: str, origin: tuple[float, float] | None, n: int
    ) -> dict[str, Any]:
        """Where an item can be bought now (see ``POST /availability``)."""
        with self._stock_lock:
            pictures = self.stock.item(item_id)
        nodes: list[dict[str, Any]] = [
            {"node_id": node, "kind": self._kinds.get(node), **picture}
            for node, picture in pictures.items()
        ]
        answer: dict[str, Any] = {
            "item_id": item_id,
            "known": bool(nodes),
            "available_online": any(node["available"] > 0 for node in nodes),
            "nodes": nodes,
        }
        if origin is not None:
            near = []
            for node in nodes:
                where = self.location(node["node_id"])
                if node["available"] > 0 and node["kind"] == "store" and where is not None:
                    near.append({**node, "distance_km": round(distance_km(origin, where), 3)})
            answer["nearest_stores"] = sorted(near, key=lambda node: node["distance_km"])[:n]
        return answer

    def _apply_or_log(self, events: pd.DataFrame) -> None:
        """Apply events; if that fails, log it and go on: the events are safe in the log (the
        next training reads them), and no request should fail because one batch could not be
        applied."""
        try:
            self._apply(events)
        except Exception:
            logger.exception(
                "Could not apply %d logged events; they count from the next training.", len(events)
            )

    def _apply(self, events: pd.DataFrame) -> None:
        """Make logged events count: stock, histories (and ALS vectors) and purchases.

        A key never seen before becomes a customer of its own, named as training would name it.
        Events of items the recommender does not know are kept in the log, not applied.
        """
        self._move_stock(events)
        named = set(events["store_id"].dropna())
        if outside := sorted(named - self.stores):
            logger.warning(
                "Events name stores outside the stock network (%s): their sales are kept and "
                "count for customers, but move no stock; a new store joins the network once "
                "the stores table names it and the champions are trained and reloaded.",
                ", ".join(outside[:10]),
            )
        self.stores = self.stores | named  # swapped whole
        self.channels = self.channels | set(events["channel"])
        known = events[events["customer_key"].notna()]
        if known.empty:
            return
        customers, new, key_ids = customers_of_keys(
            self.salt, self.key_ids, known["channel"], known["customer_key"]
        )
        if new.any():
            self.key_ids.update(zip(key_ids[new], customers[new], strict=True))
        model = self.recommender
        columns = model.item_ids_.get_indexer(pd.Index(known["item_id"]))
        inside = columns >= 0
        ids, rows = np.unique(customers[inside].astype(str), return_inverse=True)
        additions = sp.csr_matrix(
            (event_weights(known, self.weights)[inside], (rows, columns[inside])),
            shape=(len(ids), len(model.item_ids_)),
        )
        model.partial_fit_users(pd.Index(ids), additions)
        bought = (known["event_type"] == "purchase").to_numpy()
        if bought.any():
            self.rules.add_purchases(
                customers[bought].astype(str),
                known["item_id"][bought],
                known["event_time"][bought],
            )
        self._add_habits(known.assign(customer_id=customers))
        self.events_applied += len(known)

    def _move_stock(self, events: pd.DataFrame) -> None:
        """Purchases take stock from their store or node, returns put it back (any customer,
        anonymous ones included); a store outside the stock network has no stock to move."""
        counted = events["store_id"].isna() | events["store_id"].isin(self.network)
        with self._stock_lock:
            self._restock(self.stock.apply_sales(events[counted]))

    def knows_item(self, item_id: str) -> bool:
        """Whether the catalogue the champions learned lists an item, or a node stocks it."""
        if item_id in self.recommender.item_ids_:
            return True
        with self._stock_lock:
            return bool(self.stock.item(item_id))

    @cached_property
    def shops(self) -> frozenset[str]:
        """The stock nodes that are shops: the stores table's ``kind`` store, or no kind."""
        return frozenset(node for node in self.network if self._kinds.get(node, "store") == "store")

    def _add_habits(self, events: pd.DataFrame) -> None:
        """Keep the events of customers without habits yet (first seen here), so that they can
        be sent offers before the next training; their habits are built when asked for
        (:meth:`habits_of`), not on the path of every posted event."""
        ids = pd.Index(events["customer_id"].astype(str))
        fresh = events[self.habits.index.get_indexer(ids) < 0]
        if len(fresh):
            self._unhabituated.append(fresh)
        if sum(map(len, self._unhabituated)) > HABITS_BACKLOG:  # memory stays bounded
            self._build_habits()

    def habits_of(self, customer_id: str) -> dict | None:
        """A customer's ``channel``, ``weekday`` and ``hour``, or None when never seen."""
        if customer_id not in self.habits.index and self._unhabituated:
            with self._lock:
                self._build_habits()
        if customer_id not in self.habits.index:
            return None
        return dict(self.habits.loc[customer_id].to_dict())

    def _build_habits(self) -> None:
        """Habits of the customers whose events wait in the backlog (under ``_lock``)."""
        if self._unhabituated:
            fresh = pd.concat(self._unhabituated, ignore_index=True)
            self._unhabituated = []
            habits = build_habits(fresh).set_index("customer_id")
            self.habits = pd.concat([self.habits, habits])  # swapped whole

    @cached_property
    def history_end(self) -> str:
        """The end of the last period of sales the forecaster learned from (ISO date): its
        forecasts are of the periods after it, until the next training."""
        return self.forecaster.history_end_.date().isoformat()

    def forecast_all(self) -> pd.DataFrame:
        """The forecaster's forecast of every store and item it knows (computed once)."""
        with self._forecast_lock:
            if self._forecast is None:
                self._forecast = self.forecaster.predict(self.forecaster.history_)
            return self._forecast


def load_state() -> ServingState:
    """Load both models and their context: the ``@champion`` of each from MLflow, or the
    versions pinned in the Bento being served (:func:`serving.registry.model_to_serve`); then
    :meth:`ServingState.catch_up` replays the events logged since.

    Raises:
        NoChampion, UnreadableChampion: when a champion is missing or its files cannot be read.
        mlflow.exceptions.MlflowException: when the registry cannot be read.
        bentoml.exceptions.NotFound: when a pinned model is not in BentoML's model store.
        UnusableModelError: when a champion's answers on the probe are empty or not finite.
    """
    held_back = safety_stock()
    rec_version, model_dir = model_to_serve(RECOMMENDER)
    fc_version, forecaster_dir = model_to_serve(FORECASTER)
    recommender = Recommender.load(model_dir)
    context = _read_context(model_dir / CONTEXT_DIR)
    stock = StockLedger.from_snapshot(context.get("inventory"), held_back)
    available = stock.frame()[["node_id", "item_id", "available"]].set_axis(
        ["store_id", "item_id", "on_hand"], axis=1
    )  # what the rules filter by: units available to promise
    rules = BusinessRules.from_tables(
        recommender.item_ids_,
        purchases=context["purchases"],
        items=context.get("items"),
        inventory=available,
        timing=float(context["meta"].get("timing", DEFAULT_TIMING)),
    )  # fmt: skip
    meta = context["meta"]
    salt = IdentityConfig.from_env().salt
    if meta.get("salt_check") not in (None, salt_check(salt)):  # None: trained before it
        raise SaltMismatch(
            f"OMNI_SALT differs from the salt recommender v{rec_version} was trained with (no "
            "customer key would find its customer)."
        )
    forecaster = LightGBMForecaster.load(forecaster_dir)
    popularity = recommender.popularity_
    segments = {
        kind: set(popularity.loc[popularity["segment_type"] == kind, "segment"].astype(str))
        for kind in ("store", "channel")
    }
    named = (
        set(meta.get("stores", ()))
        | segments["store"]
        | set(rules.levels)
        | set(forecaster.history_["store_id"].astype(str))
    )
    network = stock_network(set(context["stores"]["store_id"].astype(str)), named)
    state = ServingState(
        recommender=recommender,
        recommender_version=rec_version,
        forecaster=forecaster,
        forecaster_version=fc_version,
        rules=rules,
        key_ids=dict(zip(context["keys"]["key_id"], context["keys"]["customer_id"], strict=True)),
        habits=context["habits"].set_index("customer_id"),
        weights=InteractionWeights(**meta.get("weights", {})),
        salt=salt,
        stock=stock,
        nodes=context["stores"].set_index("store_id"),
        stores=named | network,
        network=network,
        channels=set(meta.get("channels", ()))
        | segments["channel"]
        | set(context["habits"]["channel"]),
    )
    state.log_seq = int(meta.get("log_seq", 0))
    probe_recommender(recommender)
    probe_forecast(state.forecast_all())  # computed once per model anyway: now, not on a request
    return state


class SaltMismatch(ValueError):
    """``$OMNI_SALT`` is not the salt the champion was trained with."""


def stock_network(table: set[str], named: set[str]) -> frozenset[str]:
    """The nodes stock may be moved, reserved and promised at: the stores table's, when there
    is one — the stores the data named (what training read of the event log included, so a
    till's typo too) only without a table."""
    return frozenset(table or named)


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lon) points in degrees (haversine, 6371 km)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def safety_stock() -> float:
    """Units kept back from available-to-promise at every node: ``$OMNI_SAFETY_STOCK`` (0)."""
    text = os.environ.get(SAFETY_STOCK_ENV, "0")
    try:
        units = float(text)
    except ValueError:
        units = math.nan
    if not 0 <= units <= 1e9:
        raise ValueError(f"{SAFETY_STOCK_ENV}={text!r} is not a number of units in [0, 1e9].")
    return units


def _read_context(path: Path) -> dict:
    """The context training wrote beside the recommender (empty parts when it is absent)."""

    def table(name: str, columns: list[str]) -> pd.DataFrame:
        file = path / f"{name}.parquet"
        return pd.read_parquet(file) if file.exists() else pd.DataFrame(columns=columns)

    context: dict = {
        "keys": table("customer_keys", ["key_id", "customer_id"]),
        "habits": table("habits", ["customer_id", "channel", "weekday", "hour", "events"]),
        "purchases": table("purchases", ["customer_id", "item_id"]),
        "stores": table("stores", ["store_id", "kind", "lat", "lon"]),
        "meta": json.loads((path / "meta.json").read_text())
        if (path / "meta.json").exists()
        else {},
    }
    for optional in ("items", "inventory"):
        if (path / f"{optional}.parquet").exists():
            context[optional] = pd.read_parquet(path / f"{optional}.parquet")
    return context
