"""The data contract: every table, its columns and what a valid value is.

This is the only place that names tables and columns; loaders, validators, builders and the
generator read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """How a column's raw text is parsed and checked."""

    TIME = "time"  # ISO 8601 timestamp; naive means UTC
    DATE = "date"  # ISO 8601 calendar date
    ID = "id"  # non-empty string, at most MAX_ID_LENGTH characters
    TEXT = "text"  # free string, at most MAX_TEXT_LENGTH characters
    NUMBER = "number"  # finite float, may be negative
    NONNEGATIVE = "nonnegative"  # finite float >= 0
    BOOL = "bool"  # true/false, 1/0, yes/no, t/f, y/n
    EVENT_TYPE = "event_type"  # one of EVENT_TYPES
    STORE_KIND = "store_kind"  # one of STORE_KINDS


EVENT_TYPES = ("view", "cart", "purchase", "return")
STORE_KINDS = ("store", "online", "dc")
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 1024
COVARIATE_PREFIX = "x_"


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
        _c("quantity", Kind.NONNEGATIVE),
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
        _c("lat", Kind.NUMBER),
        _c("lon", Kind.NUMBER),
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
        _c("date", Kind.DATE, True),
        _c("store_id", Kind.ID, True),
        _c("item_id", Kind.ID, True),
        _c("unit_price", Kind.NONNEGATIVE),
        _c("on_promo", Kind.BOOL),
    ),
    unique=("date", "store_id", "item_id"),
    covariates=True,
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
