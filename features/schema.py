"""The data contract: every table, its columns and what a valid value is.

This is the only place that names tables and columns; loaders, validators, builders and the
generator read it from here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Kind(StrEnum):
    """How a column's raw text is parsed and checked."""

    TIME = "time"  # ISO 8601 timestamp; naive means UTC; within [time floor, now + clock skew]
    DATE = "date"  # ISO 8601 calendar date of history; within [time floor, now + clock skew]
    PLAN_DATE = "plan_date"  # ISO 8601 calendar date; within [time floor, now + plan ahead]
    ID = "id"  # non-empty string, at most MAX_ID_LENGTH characters, none of ID_FORBIDDEN
    TEXT = "text"  # free string, at most MAX_TEXT_LENGTH characters, no NUL
    NUMBER = "number"  # finite float, |x| <= max amount
    NONNEGATIVE = "nonnegative"  # finite float, 0 <= x <= max amount
    QUANTITY = "quantity"  # finite float, 0 < x <= max quantity
    LATITUDE = "latitude"  # finite float, |x| <= 90
    LONGITUDE = "longitude"  # finite float, |x| <= 180
    STOCK_CHANGE = "stock_change"  # finite float, |x| <= max quantity
    BOOL = "bool"  # true/false, 1/0, yes/no, t/f, y/n
    EVENT_TYPE = "event_type"  # one of EVENT_TYPES
    STORE_KIND = "store_kind"  # one of STORE_KINDS
    MOVEMENT_TYPE = "movement_type"  # one of MOVEMENT_TYPES


EVENT_TYPES = ("view", "cart", "purchase", "return")
STORE_KINDS = ("store", "online", "dc")
#: Stock movements a till, WMS or order system tells the service (features/stock.py says what
#: each does); the last three are written only by the service's reservation routes.
MOVEMENT_TYPES = (
    "receipt",
    "transfer_out",
    "transfer_in",
    "adjustment",
    "count",
    "return_to_stock",
    "reserve",
    "release",
    "fulfil",
)
#: The values a column of each enumerated kind may take.
CHOICES = {
    Kind.EVENT_TYPE: EVENT_TYPES,
    Kind.STORE_KIND: STORE_KINDS,
    Kind.MOVEMENT_TYPE: MOVEMENT_TYPES,
}
MAX_ID_LENGTH = 256
#: What an id may not hold, as a regular-expression character class body that Python's,
#: Arrow's (RE2) and pydantic's (Rust) engines read alike: control characters (C0, DEL, C1) and
#: the invisible ones that make two different ids look the same or reverse how one is shown —
#: zero-width spaces and joiners, directional marks, embeddings, overrides and isolates, line
#: and paragraph separators, the byte-order mark.
ID_FORBIDDEN = r"\x00-\x1f\x7f-\x9f" + "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
MAX_TEXT_LENGTH = 1024
#: An ISO 8601 date or time as people and systems write it (what the fast paths accept whole).
ISO_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?",
    re.ASCII,  # 0-9 only: not the digits of other scripts, which \d also matches
)
COVARIATE_PREFIX = "x_"


@dataclass(frozen=True)
class Bounds:
    """What a valid value is beyond its type: the same for files, live events and stored rows.

    Dates and times outside these bounds are typos or broken clocks; letting one in can make the
    data unloadable later (a year-10000 timestamp) or empty a training window, so it is refused.
    Set per deployment with ``OMNI_TIME_FLOOR`` (ISO date), ``OMNI_CLOCK_SKEW_HOURS`` and
    ``OMNI_MAX_QUANTITY``.
    """

    time_floor: datetime = datetime(2000, 1, 1)
    clock_skew: timedelta = timedelta(hours=24)
    #: How far ahead a date may lie (plans cover forecast horizons of up to a year).
    plan_ahead: timedelta = timedelta(days=2 * 366)
    max_quantity: float = 1e6
    #: Prices, units, stock and covariates: larger magnitudes are corrupt values, not data.
    max_amount: float = 1e12

    @classmethod
    def from_env(cls) -> Bounds:
        """The defaults, overridden by the environment.

        Raises:
            ValueError: when a variable is set but is not a valid value.
        """
        defaults = cls()
        try:
            floor = os.environ.get("OMNI_TIME_FLOOR")
            skew = os.environ.get("OMNI_CLOCK_SKEW_HOURS")
            quantity = os.environ.get("OMNI_MAX_QUANTITY")
            bounds = cls(
                time_floor=datetime.fromisoformat(floor) if floor else defaults.time_floor,
                clock_skew=timedelta(hours=float(skew)) if skew else defaults.clock_skew,
                max_quantity=float(quantity) if quantity else defaults.max_quantity,
            )
        except (ValueError, OverflowError) as exc:
            raise ValueError(
                "OMNI_TIME_FLOOR must be an ISO date, OMNI_CLOCK_SKEW_HOURS and "
                f"OMNI_MAX_QUANTITY numbers ({exc})."
            ) from exc
        if (
            bounds.time_floor.tzinfo is not None
            or not 0 < bounds.max_quantity <= 1e12
            or bounds.clock_skew < timedelta(0)
        ):
            raise ValueError(
                "OMNI_TIME_FLOOR must be naive (UTC), OMNI_MAX_QUANTITY in (0, 1e12] and "
                "OMNI_CLOCK_SKEW_HOURS not negative."
            )
        return bounds


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = False


@dataclass(frozen=True)
class TableSchema:
    """One table of the contract.

    Attributes:
        name: table name, which is also the file stem (``events.csv``, ``events.parquet``).
        columns: known columns in canonical order; required ones must be present in the file.
        unique: columns whose combination must be unique; later duplicates are quarantined.
        covariates: whether ``x_*`` columns are read as numeric covariates.
    """

    name: str
    columns: tuple[Column, ...]
    unique: tuple[str, ...] = ()
    covariates: bool = False

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        if self.covariates and name.startswith(COVARIATE_PREFIX):
            return Column(name, Kind.NUMBER)
        return None


def _c(name: str, kind: Kind, required: bool = False) -> Column:
    return Column(name, kind, required)


EVENTS = TableSchema(
    "events",
    (
        _c("event_time", Kind.TIME, True),
        _c("channel", Kind.ID, True),
        _c("event_type", Kind.EVENT_TYPE, True),
        _c("item_id", Kind.ID, True),
        _c("customer_key", Kind.ID),
        _c("quantity", Kind.QUANTITY),
        _c("unit_price", Kind.NONNEGATIVE),
        _c("store_id", Kind.ID),
        _c("event_id", Kind.ID),
    ),
    unique=("event_id",),
)
IDENTITIES = TableSchema(
    "identities",
    (
        _c("channel", Kind.ID, True),
        _c("customer_key", Kind.ID, True),
        _c("link_type", Kind.ID, True),
        _c("link_value", Kind.ID, True),
    ),
)
ITEMS = TableSchema(
    "items",
    (
        _c("item_id", Kind.ID, True),
        _c("category", Kind.TEXT),
        _c("brand", Kind.TEXT),
        _c("unit_price", Kind.NONNEGATIVE),
        _c("repurchasable", Kind.BOOL),
        _c("repurchase_days", Kind.NONNEGATIVE),
        _c("promotable", Kind.BOOL),
    ),
    unique=("item_id",),
)
STORES = TableSchema(
    "stores",
    (
        _c("store_id", Kind.ID, True),
        _c("kind", Kind.STORE_KIND),
        _c("region", Kind.TEXT),
        _c("lat", Kind.LATITUDE),
        _c("lon", Kind.LONGITUDE),
    ),
    unique=("store_id",),
)
SALES = TableSchema(
    "sales",
    (
        _c("date", Kind.DATE, True),
        _c("store_id", Kind.ID, True),
        _c("item_id", Kind.ID, True),
        # Net units may be negative (a day with more returns than sales); builders decide.
        _c("units", Kind.NUMBER, True),
        _c("unit_price", Kind.NONNEGATIVE),
        _c("on_promo", Kind.BOOL),
    ),
    covariates=True,
)
INVENTORY = TableSchema(
    "inventory",
    (
        _c("date", Kind.DATE, True),
        _c("store_id", Kind.ID, True),
        _c("item_id", Kind.ID, True),
        _c("on_hand", Kind.NONNEGATIVE, True),
    ),
    unique=("date", "store_id", "item_id"),
)
PLAN = TableSchema(
    "plan",
    (
        _c("date", Kind.PLAN_DATE, True),
        _c("store_id", Kind.ID, True),
        _c("item_id", Kind.ID, True),
        _c("unit_price", Kind.NONNEGATIVE),
        _c("on_promo", Kind.BOOL),
    ),
    unique=("date", "store_id", "item_id"),
    covariates=True,
)

#: Stock movements, posted live (``POST /movements``, the reservation routes) and kept in the
#: event store beside the events; ``movement_id`` is the idempotency key of each.
MOVEMENTS = TableSchema(
    "movements",
    (
        _c("movement_time", Kind.TIME, True),
        _c("movement_type", Kind.MOVEMENT_TYPE, True),
        _c("node_id", Kind.ID, True),
        _c("item_id", Kind.ID, True),
        # Signed for an adjustment, absolute for a count, positive otherwise (features/stock.py).
        _c("quantity", Kind.STOCK_CHANGE, True),
        _c("movement_id", Kind.ID, True),
        _c("reservation_id", Kind.ID),
        _c("hold_seconds", Kind.NONNEGATIVE),
        _c("reference", Kind.TEXT),
    ),
    unique=("movement_id",),
)

TABLES: dict[str, TableSchema] = {
    t.name: t for t in (EVENTS, IDENTITIES, ITEMS, STORES, SALES, INVENTORY, PLAN)
}
#: At least one of these must be present in a data directory.
PRIMARY_TABLES = ("events", "sales")
#: File suffixes the loader reads, in the order it looks for them.
SUFFIXES = (".csv", ".csv.gz", ".parquet")

# Columns of what `unify` writes: raw customer keys never leave `features`.
UNIFIED_EVENT_COLUMNS = (
    "event_time",
    "channel",
    "event_type",
    "item_id",
    "customer_id",
    "quantity",
    "unit_price",
    "store_id",
    "event_id",
)
