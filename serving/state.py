"""What the service serves: the MLflow champions, their context, and the events posted since.

A :class:`ServingState` is built whole (:func:`load_state`) and swapped in whole, so a reload is
atomic. Events posted to the service change it in place at once
(:meth:`ServingState.apply_appended`), and :meth:`ServingState.catch_up` replays the events logged
since the champion was trained (or by another worker), so neither a restart nor a reload forgets
them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.customers import build_habits
from features.eventlog import EventLog
from features.identity import IdentityConfig, key_pseudonyms, new_customer_ids
from features.interactions import InteractionWeights, event_weights
from models.forecast import LightGBMForecaster
from models.probe import probe_forecast, probe_recommender
from models.recommenders import Recommender
from models.rules import DEFAULT_TIMING, BusinessRules
from serving.registry import CONTEXT_DIR, FORECASTER, RECOMMENDER, model_to_serve

logger = logging.getLogger("omnichannel_ml")
#: Events of customers without habits kept before their habits are built anyway.
HABITS_BACKLOG = 10_000


@dataclass
class ServingState:
    """Both champions and what answering with them needs.

    Attributes:
        key_ids: pseudonym of each (channel, customer_key) -> customer_id.
        habits: per customer_id: most engaged recent ``channel``, habitual ``weekday`` / ``hour``.
        salt: the identity salt (the same one training pseudonymised with).
        clock: the time of a request (for when a repurchasable item bought is due again).
        stores, channels: every store and channel the data or the posted events named; a
            request naming another is refused (404), not answered with a guess.
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
    log_seq: int = 0
    events_applied: int = 0
    clock: Callable[[], pd.Timestamp] = field(default=lambda: pd.Timestamp.now(tz="UTC"))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _forecast_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _forecast: pd.DataFrame | None = field(default=None, repr=False)
    _unhabituated: list[pd.DataFrame] = field(default_factory=list, repr=False)

    def customer_of(self, channel: str, customer_key: str) -> str | None:
        """The customer_id of a channel's customer key, None if never seen."""
        key_id = key_pseudonyms(self.salt, pd.Series([channel]), pd.Series([customer_key]))[0]
        return self.key_ids.get(key_id)

    def apply_appended(self, log: EventLog, events: pd.DataFrame, seqs: np.ndarray) -> None:
        """Apply events this process has just appended at log positions ``seqs`` — directly
        when they are the next ones, else by reading the log (another writer came between)."""
        with self._lock:
            contiguous = len(seqs) and seqs.max() - seqs.min() + 1 == len(seqs)
            if contiguous and seqs.min() == self.log_seq + 1:
                self._apply_or_log(events)
                self.log_seq = int(seqs.max())
        self.catch_up(log)

    def catch_up(self, log: EventLog) -> None:
        """Apply the events logged since this state last looked (by any worker or process)."""
        if log.last_seq() == self.log_seq:
            return
        with self._lock:
            last = log.last_seq()
            if last > self.log_seq:
                self._apply_or_log(log.read(after=self.log_seq, upto=last))
                self.log_seq = last

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
        self.stores = self.stores | set(events["store_id"].dropna())  # swapped whole
        self.channels = self.channels | set(events["channel"])
        known = events[events["customer_key"].notna()]
        if known.empty:
            return
        key_ids = key_pseudonyms(self.salt, known["channel"], known["customer_key"])
        customers = np.array([self.key_ids.get(k) for k in key_ids], dtype=object)
        new = pd.isna(customers)
        if new.any():
            customers[new] = new_customer_ids(
                self.salt, known["channel"][new], known["customer_key"][new]
            )
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
        anonymous ones included)."""
        sign = events["event_type"].map({"purchase": 1.0, "return": -1.0})
        moving = sign.notna() & events["store_id"].notna()
        if moving.any():
            units = (sign * events["quantity"])[moving].to_numpy(dtype=np.float64)
            self.rules.record_sales(
                events["store_id"][moving].to_numpy(), events["item_id"][moving], units
            )

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
        mlflow.exceptions.MlflowException: when a champion is missing or cannot be read.
        bentoml.exceptions.NotFound: when a pinned model is not in BentoML's model store.
        UnusableModelError: when a champion's answers on the probe are empty or not finite.
    """
    rec_version, model_dir = model_to_serve(RECOMMENDER)
    fc_version, forecaster_dir = model_to_serve(FORECASTER)
    recommender = Recommender.load(model_dir)
    context = _read_context(model_dir / CONTEXT_DIR)
    rules = BusinessRules.from_tables(
        recommender.item_ids_,
        purchases=context["purchases"],
        items=context.get("items"),
        inventory=context.get("inventory"),
        timing=float(context["meta"].get("timing", DEFAULT_TIMING)),
    )
    meta = context["meta"]
    forecaster = LightGBMForecaster.load(forecaster_dir)
    popularity = recommender.popularity_
    segments = {
        kind: set(popularity.loc[popularity["segment_type"] == kind, "segment"].astype(str))
        for kind in ("store", "channel")
    }
    state = ServingState(
        recommender=recommender,
        recommender_version=rec_version,
        forecaster=forecaster,
        forecaster_version=fc_version,
        rules=rules,
        key_ids=dict(zip(context["keys"]["key_id"], context["keys"]["customer_id"], strict=True)),
        habits=context["habits"].set_index("customer_id"),
        weights=InteractionWeights(**meta.get("weights", {})),
        salt=IdentityConfig.from_env().salt,
        stores=set(meta.get("stores", ()))
        | segments["store"]
        | set(rules.levels)
        | set(forecaster.history_["store_id"].astype(str)),
        channels=set(meta.get("channels", ()))
        | segments["channel"]
        | set(context["habits"]["channel"]),
    )
    state.log_seq = int(meta.get("log_seq", 0))
    probe_recommender(recommender)
    probe_forecast(state.forecast_all())  # computed once per model anyway: now, not on a request
    return state


def _read_context(path: Path) -> dict:
    """The context training wrote beside the recommender (empty parts when it is absent)."""

    def table(name: str, columns: list[str]) -> pd.DataFrame:
        file = path / f"{name}.parquet"
        return pd.read_parquet(file) if file.exists() else pd.DataFrame(columns=columns)

    context: dict = {
        "keys": table("customer_keys", ["key_id", "customer_id"]),
        "habits": table("habits", ["customer_id", "channel", "weekday", "hour", "events"]),
        "purchases": table("purchases", ["customer_id", "item_id"]),
        "meta": json.loads((path / "meta.json").read_text())
        if (path / "meta.json").exists()
        else {},
    }
    for optional in ("items", "inventory"):
        if (path / f"{optional}.parquet").exists():
            context[optional] = pd.read_parquet(path / f"{optional}.parquet")
    return context
