"""The BentoML service: recommendations, offers, forecasts and placement from the champions.

Start it with ``omni serve`` (or ``bentoml serve serving.service:OmnichannelService``). At start
it loads ``recommender@champion`` and ``demand_forecaster@champion`` from the MLflow registry
(``MLFLOW_TRACKING_URI``) and replays the events logged since they were trained; ``/readyz``
answers 503 until that is done. Every route but the probes and the API description needs
``Authorization: Bearer <key>`` with the route's scope (:mod:`serving.gate`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from features.demand import SERIES
from features.eventlog import (
    MAX_BATCH,
    EventLog,
    EventStoreUnavailable,
    check_events,
    check_movements,
    events_frame,
    first_line,
    redact_urls,
)
from features.measurement import CONTROL, TREATMENT, arms, measure, period, records, utc_time
from features.schema import ID_FORBIDDEN, MAX_ID_LENGTH, Bounds
from features.stock import COUNT_AHEAD, DEFAULT_HOLD_SECONDS, MAX_HOLD_SECONDS
from models.forecast import forecast_for_planners
from models.placement import (
    DEFAULT_HOLDING,
    Economics,
    plan_item,
    planner_view,
    rebalance,
    units_to_place,
)
from models.rules import top_for_customer
from serving import settings
from serving.errors import (
    REQUEST_ID,
    RETRY_AFTER,
    STORE_DOWN,
    NotFound,
    OneLine,
    QuietRefusals,
    RequestIds,
    Unavailable,
    Unprocessable,
    answers,
    batch_refusal,
    json_errors,
    public_message,
)
from serving.exposures import ExposureWriter, control_share, experiment
from serving.exposures import enabled as exposures_enabled
from serving.gate import KEYS, DocumentedAPI, Gate
from serving.state import ServingState, load_state
from serving.writer import GroupWriter

log = logging.getLogger("omnichannel_ml")

#: The scope each route needs (``admin`` keys may call every route).
ROUTES = {
    "/recommend": "recommend",
    "/similar_items": "recommend",
    "/offers": "recommend",
    "/events": "recommend",
    "/availability": "recommend",
    "/movements": "stock",
    "/reservations": "stock",
    "/reservations/release": "stock",
    "/reservations/fulfil": "stock",
    "/forecast": "plan",
    "/placement": "plan",
    "/model_info": "plan",
    "/kpis": "report",
    "/admin/reload": "admin",
    "/metrics": "admin",
}


#: Seconds between attempts to load the champions while the service is not ready.
LOAD_RETRY_SECONDS = 5.0
#: prctl(2): the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: Event batches up to this size are checked on the event loop (see ``events``).
INLINE_CHECK = 100
#: Stored events that broke the contract when read back (quarantined, never applied).
EVENTS_QUARANTINED = bentoml.metrics.Gauge(
    name="omni_events_quarantined",
    documentation="Stored events that broke the contract when read back (not applied).",
    multiprocess_mode="max",
)


#: /readyz's reason once the event log was moved (its new URL is not said: it names a host).
MOVED = (
    "The event log was moved by omni events move; point OMNI_EVENTS_URL at the store it was "
    "moved to and restart the service."
)


# -- request types: flat JSON, strict types, bounded sizes ---------------------------------------

#: An id a request names: none of the contract's forbidden (control or invisible) characters.
ID_PATTERN = rf"^[^{ID_FORBIDDEN}]+$"
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("may be left out, but not null")
    return value


#: An id that may be left out but is never null (what the JSON schema says, too).
OptionalId = Annotated[
    Id | None,
    BeforeValidator(_not_null),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": ID_PATTERN}
    ),
]


class _Strict(BaseModel):
    # hide_input_in_errors: a rejected body (with its customer keys) never reaches the logs.
    model_config = ConfigDict(strict=True, extra="forbid", hide_input_in_errors=True)


class _Customer(_Strict):
    """A customer by ``customer_id``, or by the ``customer_key`` a ``channel`` knows them by.

    The fields are optional but never null, and exactly one way of naming the customer must be
    given; the JSON schema says so too (``oneOf``), so clients can check before they call.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["customer_id"]}, {"required": ["customer_key", "channel"]}]
        }
    )

    customer_id: OptionalId = Field(default=None, examples=["3f9a0c1d2e4b5a6978c1d2e3"])
    customer_key: OptionalId = Field(default=None, examples=["LC-00009806"])
    channel: OptionalId = Field(default=None, examples=["store"])

    @model_validator(mode="after")
    def _one_customer(self) -> _Customer:
        by_key = self.customer_key is not None and self.channel is not None
        if (self.customer_id is not None) == by_key:
            raise ValueError(
                "give exactly one of customer_id, or customer_key with the channel that knows it"
            )
        return self

    def identify(self, state: ServingState) -> tuple[str | None, str | None]:
        """``(customer_id if known, else None; the id the exposure log records)``. A
        ``customer_id`` the service does not know is none of its pseudonyms (a client's own id,
        an e-mail): answered, but recorded without a customer — never counted as one, and
        never kept in clear in the exposure log."""
        if self.customer_id is not None:
            known = self.customer_id in state.recommender.customer_ids_
            return self.customer_id, (self.customer_id if known else None)
        return state.identify(str(self.channel), str(self.customer_key))


Price = (
    Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]
    | Annotated[int, Field(ge=0, le=10**9)]
)


class _Filters(_Strict):
    """Business rules a caller may add: categories to keep or leave out (at most 50 each, every
    one known to the catalogue), at most ``max_per_category`` items of one category, a price
    range (an item without a price is outside every range), and ``new_only``: none of the items
    the customer ever bought (a list to discover from)."""

    include_categories: list[Id] = Field(default_factory=list, max_length=50, examples=[[]])
    exclude_categories: list[Id] = Field(default_factory=list, max_length=50, examples=[[]])
    max_per_category: int | None = Field(default=None, ge=1, le=100, examples=[None])
    min_price: Price | None = Field(default=None, examples=[None])
    max_price: Price | None = Field(default=None, examples=[None])
    new_only: bool = Field(default=False, examples=[False])

    def rules(self, state: ServingState) -> dict[str, Any]:
        """The keyword arguments of :func:`top_for_customer` for these filters.

        Raises:
            Unprocessable: a category the catalogue does not name, or an empty price range.
        """
        named = {*self.include_categories, *self.exclude_categories}
        unknown = sorted(named - state.rules.categories.keys()) if named else []
        if unknown:
            raise Unprocessable(f"Unknown category {', '.join(map(repr, unknown[:5]))}.")
        low, high = self.min_price, self.max_price
        if low is not None and high is not None and low > high:
            raise Unprocessable(f"min_price {low} is above max_price {high}.")
        return {
            "include_categories": self.include_categories or None,
            "exclude_categories": self.exclude_categories or None,
            "per_category": self.max_per_category,
            "min_price": low,
            "max_price": high,
            "new_only": self.new_only,
        }

    def route(self, name: str) -> str:
        """The route an answer is recorded under: lists asked with ``new_only`` are measured
        apart (``recommend:new_only``)."""
        return f"{name}:new_only" if self.new_only else name


class RecommendRequest(_Customer, _Filters):
    channel: Id = Field(examples=["store"])
    n: int = Field(default=10, ge=1, le=100)
    store_id: OptionalId = Field(default=None, examples=["S001"])
    context_item_ids: list[Id] = Field(default_factory=list, max_length=50, examples=[[]])


class SimilarItemsRequest(_Strict):
    item_id: Id = Field(examples=["I000010"])
    n: int = Field(default=10, ge=1, le=100)


class OffersRequest(_Customer, _Filters):
    n: int = Field(default=5, ge=1, le=50)


Text = Annotated[str, Field(max_length=1024)]
Amount = Annotated[float, Field(allow_inf_nan=False)] | Annotated[int, Field(ge=-(2**53), le=2**53)]


class Event(_Strict):
    """One event as in ``events.csv``; the contract (required fields, types, ranges) is checked
    per event, and a bad event is rejected with its reason without failing the others."""

    event_time: Text | None = Field(default=None, examples=["2026-11-23T10:15:00"])
    channel: Text | None = Field(default=None, examples=["store"])
    event_type: Text | None = Field(default=None, examples=["purchase"])
    item_id: Text | None = Field(default=None, examples=["I000010"])
    customer_key: Text | None = Field(default=None, examples=["card-000123"])
    quantity: Amount | None = Field(default=None, examples=[1])
    unit_price: Amount | None = Field(default=None, examples=[4.99])
    store_id: Text | None = Field(default=None, examples=["S001"])
    event_id: Text | None = Field(default=None, examples=["till-S001-000042"])


class EventsRequest(_Strict):
    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


class Movement(_Strict):
    """One stock movement (features/stock.py says what each type does); checked per movement
    like an event, and a bad one is rejected with its reason."""

    movement_time: Text | None = Field(default=None, examples=["2026-11-23T07:30:00"])
    movement_type: Text | None = Field(default=None, examples=["receipt"])
    node_id: Text | None = Field(default=None, examples=["S001"])
    item_id: Text | None = Field(default=None, examples=["I000010"])
    quantity: Amount | None = Field(default=None, examples=[12])
    movement_id: Text | None = Field(default=None, examples=["wms-S001-delivery-0042-I000010"])
    reference: Text | None = Field(default=None, examples=["delivery 0042"])


class MovementsRequest(_Strict):
    movements: list[Movement] = Field(min_length=1, max_length=MAX_BATCH)


#: An id the service stores as given: none of the contract's forbidden characters, no space at
#: either end (the contract would trim it when read back), and room for the service's own prefix.
PlainId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=rf"^[^{ID_FORBIDDEN}\x20]([^{ID_FORBIDDEN}]*[^{ID_FORBIDDEN}\x20])?$",
    ),
]


class ReserveRequest(_Strict):
    reservation_id: PlainId = Field(examples=["order-778812"])
    node_id: PlainId = Field(examples=["S001"])
    item_id: PlainId = Field(examples=["I000010"])
    quantity: int = Field(ge=1, le=10**6, examples=[1])
    hold_minutes: int = Field(
        default=int(DEFAULT_HOLD_SECONDS // 60), ge=1, le=int(MAX_HOLD_SECONDS // 60)
    )


class ReservationRequest(_Strict):
    reservation_id: PlainId = Field(examples=["order-778812"])


class FulfilRequest(ReservationRequest):
    """``collected_at``: when the customer took the units (ISO time, default now), so that a
    stock count taken after the pick-up but posted before it already holds it."""

    collected_at: Text | None = Field(default=None, examples=["2026-11-29T10:05:00"])


class AvailabilityRequest(_Strict):
    """Items to look up, and optionally where the shopper is: a store, or a latitude and
    longitude (both), to list the nearest stores that have each item."""

    item_ids: list[Id] = Field(min_length=1, max_length=100, examples=[["I000010"]])
    store_id: OptionalId = Field(default=None, examples=["S001"])
    lat: float | None = Field(default=None, ge=-90, le=90, allow_inf_nan=False)
    lon: float | None = Field(default=None, ge=-180, le=180, allow_inf_nan=False)
    n: int = Field(default=5, ge=1, le=50)

    @model_validator(mode="after")
    def _one_place(self) -> AvailabilityRequest:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give lat and lon together")
        if self.store_id is not None and self.lat is not None:
            raise ValueError("give store_id or lat and lon, not both")
        return self


class ForecastRequest(_Strict):
    store_id: Id = Field(examples=["S001"])
    item_ids: list[Id] = Field(min_length=1, max_length=1000, examples=[["I000010"]])
    horizon: int = Field(ge=1, le=365, examples=[2])
    #: Recent periods of actual units to return beside the forecast (what the model last saw).
    history: int = Field(default=0, ge=0, le=156, examples=[0])


class StoreLimit(_Strict):
    min_units: int = Field(default=0, ge=0, le=10**9)
    max_units: int | None = Field(default=None, ge=0, le=10**9)


ServiceLevel = Annotated[
    Annotated[float, Field(ge=0.001, le=0.999, allow_inf_nan=False)] | None,
    BeforeValidator(_not_null),
    WithJsonSchema({"type": "number", "minimum": 0.001, "maximum": 0.999}),
]


#: The cost of moving one unit between two stores, in the margin's units; given, the answer
#: also proposes store-to-store transfers that pay for it.
TransferCost = Annotated[
    Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] | None,
    BeforeValidator(_not_null),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1e9}),
]


class Constraints(_Strict):
    pack_size: int = Field(default=1, ge=1, le=10**6)
    # Inclusive bounds only: exclusive ones do not survive BentoML's OpenAPI 3.0 document.
    unit_margin: float = Field(default=1.0, ge=1e-9, le=1e9, allow_inf_nan=False)
    unit_holding: float = Field(default=DEFAULT_HOLDING, ge=0, le=1e9, allow_inf_nan=False)
    service_level: ServiceLevel = None
    transfer_cost: TransferCost = None
    stores: dict[str, StoreLimit] = Field(  # unknown stores: 404
        default_factory=dict,
        max_length=1000,
        examples=[{"S001": {"min_units": 2, "max_units": 40}}],
    )


#: Units to place; left out: the DC's units of the item available to promise now.
Units = Annotated[
    Annotated[int, Field(ge=0, le=10**9)] | None,
    BeforeValidator(_not_null),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 10**9}),
]


class PlacementRequest(_Strict):
    item_id: Id = Field(examples=["I000010"])
    units_available: Units = Field(default=None, examples=[120])
    dc_id: OptionalId = Field(default=None, examples=["DC"])
    horizon: int = Field(ge=1, le=365, examples=[2])
    constraints: Constraints = Field(default_factory=lambda: Constraints())


# -- the service -----------------------------------------------------------------------------

UNLOADABLE = "The champions could not be loaded (the service's log says why)."
ONE_LINE = OneLine()  # one filter, added once however many instances a process starts


def _own(exc: Exception) -> bool:
    """Whether an error is this project's own, raised as one of its exception classes (a salt
    that differs, a champion that cannot be read): its sentence is safe to show without a key.
    A library's (a driver's, the file system's) may name hosts, users and paths."""
    return type(exc).__module__.split(".")[0] in ("models", "serving", "features", "experiments")


def _unavailable(exc: Exception) -> JSONResponse:
    """The 503 of the mounted GET routes, as the API routes answer it."""
    headers = {"Retry-After": str(RETRY_AFTER)}
    return JSONResponse({"error": public_message(exc)}, status_code=503, headers=headers)


async def _model_info(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    try:
        return JSONResponse(await run_in_threadpool(service.model_info))
    except Unavailable as exc:
        return _unavailable(exc)


#: A number as people write one (``7``, ``0.5``, ``-1``, ``1e3``): not NaN, inf or ``1_0``,
#: which ``float`` also reads; whether it is a window is :func:`period`'s to say.
DAYS = re.compile(r"[-+]?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")


#: KPI reports a worker lets wait for the one being computed, and how long each waits.
KPI_WAITING = 8
KPI_WAIT_SECONDS = 30.0
#: What ``GET /kpis`` reads from its query.
KPI_PARAMETERS = ("since", "until", "window_days")


async def _kpis(request: Request) -> JSONResponse:
    """``GET /kpis?since=...&until=...&window_days=7``: see :meth:`OmnichannelService.kpis`."""
    query = request.query_params
    asked = [name for name, _ in query.multi_items()]
    unknown = sorted(set(asked) - set(KPI_PARAMETERS))
    if unknown:
        return JSONResponse(
            {"error": f"GET /kpis takes since, until and window_days, not {', '.join(unknown)}: "
             "it reports every route and channel (filter its rows)."}, 422,
        )  # fmt: skip
    if twice := sorted({name for name in asked if asked.count(name) > 1}):
        return JSONResponse({"error": f"Give {', '.join(twice)} once."}, 422)
    days = query.get("window_days", "7")
    if not DAYS.fullmatch(days):
        return JSONResponse({"error": "window_days is a number of days, e.g. 7 or 0.5."}, 422)
    try:
        since, until, window = period(query.get("since"), query.get("until"), float(days))
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    service = bentoml.get_current_service()
    try:
        answer = await run_in_threadpool(service.kpis, since, until, window)
    except (Unavailable, EventStoreUnavailable) as exc:
        return _unavailable(exc)
    return JSONResponse(answer)


UI = Path(__file__).parent / "ui"
#: The page's own code only: no other origin, no inline script, no framing.
UI_POLICY = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'"
)


async def _ui(request: Request) -> Response:
    """The planner page (``/ui``) and its script: public, as they hold no data; every call
    they make needs a key."""
    name, media = (
        ("app.js", "text/javascript")
        if request.url.path.endswith(".js")
        else ("index.html", "text/html")
    )
    headers = {"Content-Security-Policy": UI_POLICY, "X-Content-Type-Options": "nosniff"}
    return Response((UI / name).read_bytes(), media_type=media, headers=headers)


info_app = Starlette(
    routes=[
        Route("/model_info", json_errors(_model_info), methods=["GET"]),
        Route("/kpis", json_errors(_kpis), methods=["GET"]),
        Route("/ui", json_errors(_ui), methods=["GET"]),
        Route("/ui/app.js", json_errors(_ui), methods=["GET"]),
    ]
)


class Readiness:
    """ASGI middleware answering ``/readyz`` with the reason and counts as JSON (BentoML's own
    probe says only yes or no); the check runs off the event loop, so ``/livez`` never waits."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != "/readyz":
            await self.app(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            refusal = JSONResponse({"error": "/readyz answers GET."}, 405, {"Allow": "GET, HEAD"})
            await refusal(scope, receive, send)
            return
        service = bentoml.get_current_service()
        details = await run_in_threadpool(service.readiness)
        status = 200 if details["ready"] else 503
        await JSONResponse(details, status_code=status)(scope, receive, send)


def _stop_with_parent() -> None:
    """On Linux, have this process sent SIGTERM when the one that started it dies.
    ``bentoml serve`` starts each worker in a session of its own, so when its arbiter is killed
    (``kill -9``, the OOM killer) the workers would serve on, orphaned, on the port that a
    restarted service needs, answering from state nobody can reload."""
    if sys.platform != "linux":
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(name="omnichannel_ml")
class OmnichannelService:
    def __init__(self) -> None:
        _stop_with_parent()
        logging.getLogger("bentoml._internal.server.http_app").addFilter(QuietRefusals())
        for name in ("bentoml.access", log.name):  # a client's newline makes no line of its own
            logging.getLogger(name).addFilter(ONE_LINE)
        if log.level == logging.NOTSET:  # BentoML leaves the root at WARNING: refusals are INFO
            log.setLevel(logging.INFO)
        wrong = settings.problems()
        if wrong:  # stops the start, every reason said (omni serve says them before starting)
            raise ValueError(" ".join(wrong))
        # Read once: a wrong OMNI_TIME_FLOOR etc. stops the start, not every request.
        self.bounds = Bounds.from_env()
        self.log = EventLog.from_env()
        # See _answer: never waits for a lock (a busy store sends the answer to a thread).
        self._loop_log = self.log.another(wait_seconds=0) if self.log.local else None
        self.writer = GroupWriter(self.log, self._apply_stored)
        self.exposures = ExposureWriter(self.log.another()) if exposures_enabled() else None
        self.control_share, self.experiment = control_share(), experiment()
        self._reporting = threading.Semaphore(1)
        self._waiting = threading.Semaphore(KPI_WAITING)
        self.state: ServingState | None = None
        self._loaded: ServingState | None = None  # loaded, but the log not yet replayed
        #: Why the service is not ready, or why the event store is failing (None when fine).
        self.problem: str | None = None
        self.moved = False  # omni events move has sealed the log: not ready, for good
        self._reload_lock = threading.Lock()
        self._next_attempt = 0.0
        self._try_load()

    @bentoml.on_shutdown
    def _write_exposures(self) -> None:
        """At a stop, what the exposure log has queued is written (if the store answers)."""
        if self.exposures is not None:
            try:
                self.exposures.flush()
            except EventStoreUnavailable:
                log.warning("The event store is down: this worker's last exposures are lost.")

    def _try_load(self) -> None:
        """Load the champions and replay the log, unless another thread is at it or the last
        attempt was under :data:`LOAD_RETRY_SECONDS` ago. On failure the service stays up and
        not ready, and says why (/readyz); it tries again by itself. Models loaded while the
        event store is down are kept: only the replay is tried again."""
        waiting = self._loaded is None and time.monotonic() < self._next_attempt
        if waiting or not self._reload_lock.acquire(blocking=False):
            return
        try:
            if self.state is None:
                if self._loaded is None:
                    self._next_attempt = time.monotonic() + LOAD_RETRY_SECONDS
                    self._loaded = load_state()
                self._loaded.catch_up(self.log)
                self._serve(self._loaded)
        except EventStoreUnavailable as exc:
            self._store_failed(exc)
        except Exception as exc:
            said = redact_urls(f"The champions could not be loaded: {first_line(exc)}")
            log.error("%s", said)
            # /readyz needs no key: our own reasons (a salt that differs, a champion that
            # answers nothing) are said there; a driver's or the file system's (hosts, ports,
            # users, paths) only in the log and to /admin/reload.
            self.problem = said if _own(exc) else UNLOADABLE
        finally:
            self._reload_lock.release()

    def _serve(self, state: ServingState) -> None:
        """Swap in a loaded and replayed state; nothing half-loaded is kept beside it."""
        self.state, self._loaded, self.problem = state, None, None

    def _apply_stored(self, events: pd.DataFrame, seqs: np.ndarray) -> None:
        if self.state is not None:
            self.state.apply_appended(self.log, events, seqs)

    def _store_failed(self, exc: EventStoreUnavailable) -> None:
        if self.problem != STORE_DOWN:  # once per outage, not once per request
            log.warning("%s", exc)
        self.problem = STORE_DOWN

    def _catch_up(self, state: ServingState) -> None:
        """Apply what the log holds that ``state`` has not seen; note whether the store answers."""
        try:
            state.catch_up(self.log)
        except EventStoreUnavailable as exc:
            self._store_failed(exc)
            return
        if self.problem is not None:
            log.info("The event store %s answers again.", self.log.url)
            self.problem = None

    def __is_ready__(self) -> bool:
        return bool(self.readiness()["ready"])

    def readiness(self) -> dict[str, Any]:
        """Ready when the champions are loaded and the event store answers; else why not."""
        if self.state is None:
            self._try_load()
        elif self.problem is not None:
            self._catch_up(self.state)
        state = self.state
        EVENTS_QUARANTINED.set(self.log.quarantined)
        problem = self.problem or _no_keys() or self._moved()
        return {
            "ready": state is not None and problem is None,
            "reason": problem,
            "events_quarantined": self.log.quarantined,
            "recommender_version": state.recommender_version if state else None,
            "forecaster_version": state.forecaster_version if state else None,
        }

    def _moved(self) -> str | None:
        """:data:`MOVED` once ``omni events move`` has sealed the log (a load balancer then
        takes the service out: it can no longer store an event)."""
        if not self.moved:
            with suppress(EventStoreUnavailable):  # a store that does not answer: said above
                self.moved = self.log.moved()
            if self.moved:
                log.warning("The event log %s was moved by omni events move.", self.log.url)
        return MOVED if self.moved else None

    def _state(self) -> ServingState:
        """The state being served, with every event logged so far applied. When the event
        store is down, the state as it is (answers stay up; only /events needs the store)."""
        if self.state is None:
            self._try_load()
        state = self.state
        if state is None:
            why = (self.problem or "the champions are being loaded").rstrip(".")
            why = why[:1].lower() + why[1:]
            raise Unavailable(f"The service is not ready: {why}. See /readyz.")
        self._catch_up(state)
        return state

    async def _answer(self, work: Callable[[ServingState], dict[str, Any]]) -> dict[str, Any]:
        """``work`` on the served state: right here on the event loop when the state is
        current and asking cannot wait on I/O — the store is a SQLite file, read on a
        connection of the loop's own that never waits for a lock (a hop to a worker thread
        costs about as much as the answer); otherwise in a worker thread, after applying what
        is new, so that the loop never waits for a database over the network, a store's lock
        or a load. On the loop, ``work`` takes only the state's in-memory locks, which threads
        hold for as long as applying a batch of events or movements takes."""
        state = self.state
        if state is not None and self.problem is None and self._loop_log is not None:
            with suppress(EventStoreUnavailable):  # the worker thread's path will say so
                if state.is_current(self._loop_log):
                    return work(state)
        return await run_in_threadpool(lambda: work(self._state()))

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    @answers
    async def recommend(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Ranked items for a customer, by ``customer_id`` or by the ``customer_key`` a channel
        knows them by. Bought items are left out unless repurchasable or bought in two baskets
        (all of them with ``new_only``); only items in stock where they would be bought (the
        store, else anywhere) are offered.
        An unknown customer gets the store's / channel's best sellers, flagged ``fallback`` —
        never an error."""
        r = RecommendRequest.model_construct(**request)
        return await self._answer(lambda state: self._recommend(ctx, r, state))

    def _recommend(
        self, ctx: bentoml.Context, r: RecommendRequest, state: ServingState
    ) -> dict[str, Any]:
        if refusal := state.refusal(r.channel, r.store_id):
            raise NotFound(refusal)
        customer, who = r.identify(state)
        arm = self._arm(who)
        filters = r.rules(state)
        model = state.recommender
        context = np.zeros(0, dtype=np.int64)
        extra = None
        if r.context_item_ids:
            context = model.item_ids_.get_indexer(pd.Index(r.context_item_ids, dtype="str"))
            context = np.unique(context[context >= 0])
            weight = state.weights.view or 1.0  # a basket model counts no views: one look
            extra = sp.csr_matrix(
                (np.full(len(context), weight, np.float32), (np.zeros(len(context)), context)),
                shape=(1, len(model.item_ids_)),
            )
        ask = dict(
            channel=r.channel, store_id=r.store_id, extra_history=extra, exclude_columns=context,
            now=state.clock(), **filters,
        )  # fmt: skip
        columns, scores, fallback = top_for_customer(model, state.rules, customer or "", r.n, **ask)
        items = model.item_ids_.take(columns).tolist()  # not the whole index per request
        # The control arm is shown the popular list; what it was not shown is recorded, so that
        # both arms are measured on the same items (the personal ones).
        self._shown(ctx, r.route("recommend"), who, r.channel, r.store_id, arm, state, items)
        if arm == CONTROL:
            columns, scores, fallback = top_for_customer(
                model, state.rules, customer or "", r.n, popular=True, **ask
            )
            items = model.item_ids_.take(columns).tolist()
        where = state.rules.available_at(columns)
        reason = _reason(fallback, bool(len(context)), r.store_id, str(r.channel))
        return {
            "customer_id": customer,
            "fallback": fallback,
            "items": [
                {
                    "item_id": item,
                    "score": float(score),
                    "rank": rank,
                    "reason": reason,
                    "available_at": [node for node in nodes if node in state.shops],
                }
                for rank, (item, score, nodes) in enumerate(
                    zip(items, scores, where, strict=True), start=1
                )
            ],
            "arm": arm,
            "model_version": state.recommender_version,
        }

    def _arm(self, who: str | None) -> str:
        return arms([who], self.control_share, self.experiment)[0] if who else TREATMENT

    def _shown(
        self, ctx: bentoml.Context, route: str, who: str | None, channel: str | None,
        store_id: str | None, arm: str, state: ServingState, items: list[str],
        at: datetime | None = None,
    ) -> None:  # fmt: skip
        """Record an answer in the exposure log (batched off the request path); ``at`` is when
        it reaches the customer (now, unless an offer is to be sent later)."""
        if self.exposures is not None:
            when = (at or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
            request_id = ctx.request.headers.get(REQUEST_ID, "-")
            self.exposures.record(
                (when.isoformat(timespec="microseconds"), request_id, route, who, channel,
                 store_id, arm, state.recommender_version, items)
            )  # fmt: skip

    @bentoml.api(route="/similar_items", input_spec=SimilarItemsRequest)
    @answers
    async def similar_items(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Items most similar to one item (404 when the model does not know it)."""
        r = SimilarItemsRequest.model_construct(**request)
        return await self._answer(lambda state: self._similar_items(r, state))

    def _similar_items(self, r: SimilarItemsRequest, state: ServingState) -> dict[str, Any]:
        similar = state.recommender.similar_items([r.item_id], n=r.n)
        return {
            "item_id": r.item_id,
            "items": [
                {"item_id": row["similar_item_id"], "score": float(row["score"]), "rank": rank}
                for rank, row in enumerate(similar.to_dict(orient="records"), start=1)
            ],
            "model_version": state.recommender_version,
        }

    @bentoml.api(route="/offers", input_spec=OffersRequest)
    @answers
    def offers(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Promotable items for a customer, the channel to send them through (their most
        engaged recent channel) and when (the next of their habitual weekday and hour, UTC),
        under the same rules and rule fields as /recommend's."""
        r = OffersRequest.model_construct(**request)
        state = self._state()
        customer, _ = r.identify(state)
        habit = state.habits_of(customer) if customer is not None else None
        if customer is None or habit is None:
            raise NotFound("Unknown customer: no history to offer from.")
        channel = str(habit["channel"])
        model = state.recommender
        columns, scores, _ = top_for_customer(
            model, state.rules, customer, r.n, channel=channel, promotable_only=True,
            now=state.clock(), **r.rules(state),
        )  # fmt: skip
        arm = self._arm(customer)
        items = model.item_ids_.take(columns).tolist()
        send_at = _next(int(habit["weekday"]), int(habit["hour"]))
        # The control arm is sent nothing; what it was not sent is recorded, to compare with,
        # from when it would have been sent.
        self._shown(ctx, r.route("offers"), customer, channel, None, arm, state, items, at=send_at)
        shown = zip(items, scores, strict=True) if arm == TREATMENT else iter(())
        return {
            "customer_id": customer,
            "channel": channel,
            "send_at": send_at.isoformat(),
            "items": [
                {"item_id": item, "score": float(score), "rank": rank}
                for rank, (item, score) in enumerate(shown, start=1)
            ],
            "arm": arm,
            "model_version": state.recommender_version,
        }

    @bentoml.api(route="/events", input_spec=EventsRequest)
    @answers
    async def events(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Record up to 1,000 events, all or none: when any event breaks the events contract,
        nothing is stored and the 422 names every bad event by index with its reason. Stored
        events are durable before this returns and count at once; an ``event_id`` already
        recorded is not stored again (``already_recorded``), so a retry is always safe — and
        one recorded with other content is a 409 (``recorded_otherwise``): not a retry, but a
        second event under a used id, which would otherwise be lost without a word."""
        r = EventsRequest.model_construct(**request)
        records = [event.model_dump() for event in r.events]
        # Async: BentoML runs plain API methods one at a time per worker, and concurrent posts
        # must be able to share a commit (serving/writer.py). The commit is made in a thread,
        # as is the check of a big batch (1,000 events: ~14 ms); a small one (100: ~0.5 ms) is
        # checked here, where a thread's hop would cost more than the check.
        if len(records) <= INLINE_CHECK:
            rows, reasons = check_events(records, self.bounds)
        else:
            rows, reasons = await run_in_threadpool(check_events, records, self.bounds)
        refusal = _refusal(ctx, reasons, "events")
        if refusal is not None:
            return refusal
        try:
            stored = await run_in_threadpool(self.writer.write, rows)
            again = [row for row, new in zip(rows, stored, strict=True) if not new]
            clashing = []
            if again:  # retries, or new events under used ids
                clashing = await run_in_threadpool(self.log.recorded_otherwise, events_frame(again))
        except EventStoreUnavailable as exc:
            self._store_failed(exc)  # /readyz says so too
            raise
        return _recorded(ctx, "event_id", [row[-1] for row in rows], stored, clashing)

    @bentoml.api(route="/movements", input_spec=MovementsRequest)
    @answers
    async def movements(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Record up to 1,000 stock movements, all or none, as /events does: when any breaks
        the contract or names a node the service does not know, nothing is stored and the 422
        names each by index. A ``movement_id`` already recorded is not applied again
        (``already_recorded``; the first movement with that id stands, and one with other
        content is a 409, as on /events), so a till or WMS may always retry. Stored movements
        change availability at once, in every worker."""
        r = MovementsRequest.model_construct(**request)
        state = await run_in_threadpool(self._state)
        records = [movement.model_dump() for movement in r.movements]
        accepted, reasons = await run_in_threadpool(check_movements, records, self.bounds)
        fine = [i for i, reason in enumerate(reasons) if reason is None]
        for i, node in zip(fine, accepted["node_id"], strict=True):
            if node not in state.network:
                reasons[i] = f"unknown node_id {node!r}: not in the stores table or the data"
        refusal = _refusal(ctx, reasons, "movements")
        if refusal is not None:
            return refusal
        stored = await run_in_threadpool(state.record_movements, self.log, accepted)
        clashing = []
        if not stored.all():
            again = accepted[~stored]
            clashing = await run_in_threadpool(self.log.recorded_otherwise, again, True)
        return _recorded(ctx, "movement_id", list(accepted["movement_id"]), stored, clashing)

    @bentoml.api(route="/reservations", input_spec=ReserveRequest)
    @answers
    async def reserve(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Reserve units at a node — a store, for click-and-collect — for an online order: 409
        when fewer are available to promise, and then nothing is held. Decided on the shared
        log under its lock: of two reservations of the last unit, from any workers, exactly
        one wins. A retry (the same ``reservation_id``, node, item and quantity) holds nothing
        more and answers with the reservation while it is held; 409 once it was released,
        fulfilled or expired. The units are held for
        ``hold_minutes`` (48 h by default), unless released or fulfilled first."""
        r = ReserveRequest.model_construct(**request)
        state = await run_in_threadpool(self._state)
        if r.node_id not in state.network:
            raise NotFound(f"Unknown node_id {r.node_id!r}.")
        new = await run_in_threadpool(
            state.reserve, self.log, r.reservation_id, r.node_id, r.item_id,
            float(r.quantity), r.hold_minutes * 60.0,
        )  # fmt: skip
        answer = await run_in_threadpool(state.reservation, r.reservation_id)
        return {**answer, "recorded": "stored" if new else "already_recorded"}

    @bentoml.api(route="/reservations/release", input_spec=ReservationRequest)
    @answers
    async def release(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Release a reservation (the order was cancelled): its units are available again.
        Safe to retry; releasing one whose hold ran out changes nothing (``expired``)."""
        return await self._close(ReservationRequest.model_construct(**request), "release")

    @bentoml.api(route="/reservations/fulfil", input_spec=FulfilRequest)
    @answers
    async def fulfil(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """The order was collected (at ``collected_at``, default now: within the longest hold
        before now, at most the counts' 5 minutes ahead): the reserved units leave the store's
        stock. Safe to retry; 409 when the reservation was released or its hold ran out."""
        r = FulfilRequest.model_construct(**request)
        at = None
        if r.collected_at is not None:
            try:
                at = utc_time(r.collected_at, "collected_at")
            except ValueError as exc:
                raise Unprocessable(str(exc)) from None
            now = pd.Timestamp.now(tz="UTC").tz_localize(None)
            if not now - pd.Timedelta(seconds=MAX_HOLD_SECONDS) <= at <= now + COUNT_AHEAD:
                raise Unprocessable(
                    f"collected_at must be within the last {MAX_HOLD_SECONDS // 86400:.0f} days "
                    f"and at most {COUNT_AHEAD.seconds // 60} minutes ahead, not {at}."
                )
        return await self._close(r, "fulfil", at)

    async def _close(
        self, r: ReservationRequest, action: str, at: pd.Timestamp | None = None
    ) -> dict[str, Any]:
        state = await run_in_threadpool(self._state)
        await run_in_threadpool(state.close_reservation, self.log, r.reservation_id, action, at)
        return await run_in_threadpool(state.reservation, r.reservation_id)

    @bentoml.api(route="/availability", input_spec=AvailabilityRequest)
    @answers
    async def availability(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Where each item can be bought now: every node that holds a record of it with its
        units on hand, reserved and available to promise (on hand - reserved - safety stock);
        whether it can be bought online (some node has units to promise: shipped, or collected
        at a store); and, given a store or a location, the nearest stores that have it."""
        r = AvailabilityRequest.model_construct(**request)
        if (r.lat is None) != (r.lon is None):
            raise Unprocessable("Give both lat and lon, or neither.")
        return await self._answer(lambda state: self._availability(r, state))

    def _availability(self, r: AvailabilityRequest, state: ServingState) -> dict[str, Any]:
        origin = (r.lat, r.lon) if r.lat is not None and r.lon is not None else None
        if r.store_id is not None:
            if r.store_id not in state.network:
                raise NotFound(f"Unknown store {r.store_id!r}.")
            origin = state.location(r.store_id)
            if origin is None:
                raise Unprocessable(f"The stores table gives no location for {r.store_id!r}.")
        return {"items": [state.availability(item, origin, r.n) for item in r.item_ids]}

    @bentoml.api(route="/forecast", input_spec=ForecastRequest)
    @answers
    def forecast(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Mean, P10, P50 and P90 per item and period for one store."""
        r = ForecastRequest.model_construct(**request)
        state = self._state()
        frame = state.forecaster.forecast(
            r.store_id, r.item_ids, r.horizon, everything=state.forecast_all()
        )
        return {
            "store_id": r.store_id,
            "forecast": forecast_for_planners(frame)
            .drop(columns="store_id")
            .to_dict(orient="records"),
            "interval": state.forecaster.intervals_.label,
            "history_end": state.history_end,
            "freq": state.forecaster.freq,
            **({"actuals": _actuals(state, r)} if r.history else {}),
            "model_version": state.forecaster_version,
        }

    @bentoml.api(route="/placement", input_spec=PlacementRequest)
    @answers
    def placement(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Allocate the units at the DC across the stores that sell the item, by the expected
        margin of each next unit under the forecast's uncertainty, net of their stock now."""
        r = PlacementRequest.model_construct(**request)
        state = self._state()
        c = r.constraints
        limits = pd.DataFrame(
            [{"store_id": store, **limit.model_dump()} for store, limit in c.stores.items()]
        )
        economics = Economics(c.unit_margin, c.unit_holding, c.service_level)
        on_hand = state.rules.available(r.item_id)  # what each node can still promise
        dc_id, units = units_to_place(r.units_available, r.dc_id, state.dcs, on_hand)
        frame = plan_item(
            state.forecaster, state.forecast_all(), r.item_id, units,
            horizon=r.horizon, on_hand=on_hand, economics=economics,
            pack_size=c.pack_size, limits=limits,
        )  # fmt: skip
        stores = planner_view(frame)
        sent = int(frame["send"].sum())
        transfers = (
            rebalance(
                frame, transfer_cost=c.transfer_cost, economics=economics, pack_size=c.pack_size
            )
            if c.transfer_cost is not None
            else None
        )
        return {
            "item_id": r.item_id,
            **({"dc_id": dc_id} if dc_id is not None else {}),
            "units_available": units,
            "units_sent": sent,
            "units_kept_at_dc": units - sent,
            "horizon": r.horizon,
            # Stores that have not sold it take part only when named (a new listing).
            "stores_without_sales": sorted(
                set(state.forecaster.codes_.stores) - set(frame["store_id"].astype(str))
            ),
            "stores": [
                {k: (v if isinstance(v, str) else float(v)) for k, v in row.items()}
                for row in stores.to_dict(orient="records")
            ],
            **({"transfers": transfers.to_dict(orient="records")} if transfers is not None else {}),
            "model_version": state.forecaster_version,
        }

    def kpis(self, since: pd.Timestamp, until: pd.Timestamp, window: pd.Timedelta) -> dict:
        """What the lists and offers shown from ``since`` to ``until`` did, per route and
        channel and across channels (features/measurement.py). Reads the whole event log: a
        dashboard's or an analyst's call, not a per-customer one."""
        state = self._state()
        # One report at a time per worker; a few more wait their turn (a dashboard asks for its
        # panels at once), and beyond those a 503 says to retry: no request thread is tied up.
        if not self._waiting.acquire(blocking=False):
            raise Unavailable("Too many KPI reports are asked for at once; retry in a few seconds.")
        try:
            if not self._reporting.acquire(timeout=KPI_WAIT_SECONDS):
                raise Unavailable("A KPI report is being computed; retry in a few seconds.")
        finally:
            self._waiting.release()
        log = self.log.another()  # the requests' own connection is not held up meanwhile
        try:
            if self.exposures is not None:
                self.exposures.flush()  # this worker's latest answers count too
            prices = pd.Series(state.rules.price, index=state.rules.item_ids)
            table = measure(log, state.salt, state.key_ids, since, until, window, prices)
        finally:
            log.close()
            self._reporting.release()
        return {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "window_days": window / pd.Timedelta(days=1),
            "control_share": self.control_share,
            "experiment": self.experiment,
            "rows": records(table),
        }

    def model_info(self) -> dict[str, Any]:
        """The champions being served, what they know, and the events applied since."""
        state = self._state()
        return {
            "recommender": {
                "version": state.recommender_version,
                "model": state.recommender.name,
                "customers": len(state.recommender.customer_ids_),
                "items": len(state.recommender.item_ids_),
            },
            "demand_forecaster": {
                "version": state.forecaster_version,
                "horizon": state.forecaster.horizon,
                "freq": state.forecaster.freq,
                "series": int(state.forecaster.history_[SERIES].nunique()),
                "interval": state.forecaster.intervals_.label,
                "history_end": state.history_end,
            },
            "events_applied_since_load": state.events_applied,
            "event_log": self.log.url.split(":", 1)[0],
        }

    @bentoml.api(route="/admin/reload")
    @answers
    def reload(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Load the current champions and swap them in at once; on failure the models being
        served stay, and the error is returned (503) and logged."""
        with self._reload_lock:
            try:
                state = load_state()
                state.catch_up(self.log)
            except Exception as exc:
                kept = "the previous champions keep serving" if self.state else "none serve yet"
                message = redact_urls(f"Reload failed; {kept}: {first_line(exc)}")
                log.error("%s", message)
                ctx.response.status_code = HTTPStatus.SERVICE_UNAVAILABLE
                ctx.response.metadata["retry-after"] = str(RETRY_AFTER)
                return {"reloaded": False, "error": message}
            self._serve(state)
        return {
            "reloaded": True,
            "recommender_version": state.recommender_version,
            "forecaster_version": state.forecaster_version,
        }


# The first added is the outermost: request ids on every answer, then keys and sizes.
OmnichannelService.add_asgi_middleware(RequestIds, routes=set(ROUTES))  # type: ignore[attr-defined]
OmnichannelService.add_asgi_middleware(Gate, routes=ROUTES)  # type: ignore[attr-defined]
OmnichannelService.add_asgi_middleware(DocumentedAPI)  # type: ignore[attr-defined]
OmnichannelService.add_asgi_middleware(Readiness)  # type: ignore[attr-defined]


def _no_keys() -> str | None:
    """Why no client can be let in: the keys file is missing, holds no key, or cannot be read
    and no key read before it stays in force."""
    keys = KEYS.current()
    if keys is None:
        return "The keys file cannot be read (the log says why): every key is refused."
    if not keys:
        return "No API keys: the keys file is missing or empty (omni keys create makes it)."
    return None


def _refusal(ctx: bentoml.Context, reasons: list[str | None], what: str) -> dict[str, Any] | None:
    """The 422 of a batch stored all or none, naming every bad row by index with its reason;
    None when every row is fine."""
    bad = [(i, reason) for i, reason in enumerate(reasons) if reason is not None]
    if not bad:
        return None
    ctx.response.status_code = HTTPStatus.UNPROCESSABLE_ENTITY
    said = f"{len(bad)} of {len(reasons)} {what} are refused and none was stored"
    return batch_refusal(said, bad)


def _recorded(
    ctx: bentoml.Context, key: str, ids: list[str], stored: np.ndarray, clashing: list[str]
) -> dict[str, Any]:
    """A stored batch's answer: how many were new, and per row its id and status —
    ``stored``, ``already_recorded`` (a retry), or ``recorded_otherwise``: its id is stored
    with other content, so it was not stored (a 409, though the batch's new rows were)."""
    otherwise = set(clashing)
    status = [
        "stored" if new else "recorded_otherwise" if id_ in otherwise else "already_recorded"
        for id_, new in zip(ids, stored, strict=True)
    ]
    answer: dict[str, Any] = {
        "stored": status.count("stored"),
        "already_recorded": status.count("already_recorded"),
        "results": [
            {"index": i, key: id_, "status": state}
            for i, (id_, state) in enumerate(zip(ids, status, strict=True))
        ],
    }
    if clashing:
        ctx.response.status_code = HTTPStatus.CONFLICT
        first = status.index("recorded_otherwise")
        answer["error"] = (
            f"{status.count('recorded_otherwise')} {key}s (the first at index {first}: "
            f"{ids[first]!r}) are already recorded with other content and were not stored; "
            f"a new one needs a new {key} (the batch's other rows are as results says)."
        )
    return answer


def _actuals(state: ServingState, r: ForecastRequest) -> list[dict[str, Any]]:
    """The last ``r.history`` periods of units the forecaster saw for the store and items."""
    history = state.forecaster.history_
    rows = history[(history["store_id"] == r.store_id) & history["item_id"].isin(r.item_ids)]
    recent = (
        rows[rows["ds"] >= np.sort(rows["ds"].unique())[-r.history :].min()] if len(rows) else rows
    )
    return [
        {"item_id": str(item), "period_end": ds.date().isoformat(), "units": float(y)}
        for item, ds, y in recent[["item_id", "ds", "y"]].itertuples(index=False)
    ]


def _reason(fallback: bool, context: bool, store_id: str | None, channel: str) -> str:
    if fallback:
        return f"popular at store {store_id}" if store_id else f"popular on {channel}"
    if context:
        return "goes with what you are looking at"
    return "based on your purchases and browsing"


def _next(weekday: int, hour: int, now: datetime | None = None) -> datetime:
    """The next time (UTC, on the hour) that falls on ``weekday`` at ``hour``."""
    now = now or datetime.now(UTC)
    start = now.replace(minute=0, second=0, microsecond=0)
    days = (weekday - start.weekday()) % 7
    candidate = (start + timedelta(days=days)).replace(hour=hour)
    return candidate if candidate > now else candidate + timedelta(days=7)
