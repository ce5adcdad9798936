"""Load contract tables from a data directory and route every bad row to quarantine.

The invariant every function here keeps: ``rows = accepted + quarantined``. A bad row never stops a
load and is never dropped silently; a missing required table or column is a :class:`ContractError`
whose message is one sentence naming the file and the column.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.rawfiles import (
    REASON,
    ContractError,
    ParquetPiece,
    named_twice,
    partition_files,
    read_raw,
)
from features.schema import (
    CHOICES,
    ID_FORBIDDEN,
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    PRIMARY_TABLES,
    SUFFIXES,
    TABLES,
    Bounds,
    Kind,
    TableSchema,
)

_TRUE = frozenset({"true", "1", "yes", "y", "t", "1.0"})
_FALSE = frozenset({"false", "0", "no", "n", "f", "0.0"})
# Below this many rows, columns are checked one after the other (e.g. a batch posted to the API).
_PARALLEL_ROWS = 50_000


@dataclass
class LoadedTable:
    """One table after validation.

    Attributes:
        name: table name.
        source: the file it came from (or a label for in-memory data).
        accepted: typed rows that passed every check, canonical columns first.
        quarantined: the rejected rows as text, with ``reason`` (and ``line``/``raw_text``).
    """

    name: str
    source: str
    accepted: pd.DataFrame
    quarantined: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def rows(self) -> int:
        return len(self.accepted) + len(self.quarantined)

    def reasons(self) -> dict[str, int]:
        """Quarantine reasons with their counts, most frequent first."""
        if self.quarantined.empty:
            return {}
        counts = self.quarantined[REASON].value_counts()
        return {str(k): int(v) for k, v in counts.items()}

    def repeated_rows(self) -> int:
        """Accepted rows equal in every column to an earlier one and without the table's key
        (e.g. ``event_id``) to tell them apart: kept — a till can scan the same item twice in
        a second — but many of them suggest a file loaded twice."""
        key = [k for k in TABLES[self.name].unique if k in self.accepted]
        rows = self.accepted
        if key:
            rows = rows[rows[key].isna().any(axis=1)]
        if len(rows) < 2:
            return 0
        hashed = pd.util.hash_pandas_object(rows, index=False)
        candidates = rows[hashed.duplicated(keep=False).to_numpy()]  # then compared exactly
        return int(candidates.duplicated().sum())


def find_table_files(data_dir: Path) -> dict[str, Path]:
    """Map table name to its file in ``data_dir`` (file stem = table name), or its directory of
    Parquet files (a partitioned dataset, e.g. ``events/month=2024-01/part-0.parquet``).

    Raises:
        ContractError: if the directory is missing, a table has two files, or neither of the
            primary tables (events, sales) is present.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        what = "is a file, not a directory" if data_dir.exists() else "does not exist"
        raise ContractError(f"Data directory {data_dir} {what}.")
    found: dict[str, Path] = {}
    for name in TABLES:
        candidates = [data_dir / f"{name}{suffix}" for suffix in SUFFIXES]
        present = [p for p in candidates if p.is_file()]
        if (data_dir / name).is_dir() and partition_files(data_dir / name):
            present.append(data_dir / name)  # a partitioned Parquet dataset
        if len(present) > 1:
            names = " and ".join(p.name for p in present)
            raise ContractError(f"Table {name} has two files in {data_dir} ({names}); keep one.")
        if present:
            found[name] = present[0]
    if not any(name in found for name in PRIMARY_TABLES):
        raise ContractError(
            f"{data_dir} has no events or sales table "
            "(expected events.csv, events.csv.gz, events.parquet or the same for sales)."
        )
    return found


def load_dataset(
    data_dir: Path, tables: tuple[str, ...] | None = None, *, encoding: str = "utf-8"
) -> dict[str, LoadedTable]:
    """Load and validate every contract table present in ``data_dir``.

    ``encoding`` is for CSV files without a byte-order mark (e.g. ``cp932``).
    """
    files = find_table_files(data_dir)
    wanted = tables if tables is not None else tuple(files)
    return {
        name: load_table(files[name], TABLES[name], encoding=encoding)
        for name in wanted
        if name in files
    }


def load_table(
    path: Path | ParquetPiece,
    schema: TableSchema,
    *,
    encoding: str = "utf-8",
    source: str | None = None,
    bounds: Bounds | None = None,
) -> LoadedTable:
    """Read one file (CSV text in ``encoding`` unless it has a BOM) or piece of a Parquet file
    and validate it; messages name ``source`` (default: the file's name)."""
    raw, malformed, undecodable = read_raw(path, encoding)
    holder = [raw]
    del raw  # validation owns the raw table from here, so it can free it column by column
    accepted, quarantined = _validate(
        holder, schema, source=source or path.name, initial_reasons=undecodable, bounds=bounds
    )
    if not malformed.empty:
        quarantined = pd.concat([quarantined, malformed], ignore_index=True)
    return LoadedTable(schema.name, str(path), accepted, quarantined)


def validate_table(
    raw: pd.DataFrame | pa.Table,
    schema: TableSchema,
    *,
    source: str,
    initial_reasons: np.ndarray | None = None,
    bounds: Bounds | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into typed accepted rows and quarantined rows with a reason.

    Pure: ``raw`` is not modified. Each quarantined row carries the first reason found, checking
    columns in contract order. Unknown extra columns are kept (as given) and not checked. The
    checks run on Arrow arrays (vectorised, GIL-free); pandas is made once, at the end.

    Args:
        raw: the rows as read (text from CSV, or already typed from Parquet).
        schema: the table's contract.
        source: the file name, used in error messages.
        initial_reasons: per row, a reason found while reading (e.g. invalid UTF-8), or None.
        bounds: valid ranges of times and numbers (default :meth:`Bounds.from_env`).

    Returns:
        ``(accepted, quarantined)``; ``len(accepted) + len(quarantined) == len(raw)``.

    Raises:
        ContractError: if a required column is missing.
    """
    table = raw if isinstance(raw, pa.Table) else pa.Table.from_pandas(raw, preserve_index=False)
    return _validate([table], schema, source=source, initial_reasons=initial_reasons, bounds=bounds)


def _contract_names(table: pa.Table, schema: TableSchema, source: str) -> pa.Table:
    """Columns named as the contract's but for case (``Quantity``, ``Event_Time``) under the
    contract's names: left as unknown extra columns, an optional one would be replaced by its
    default without a word. A contract column named two ways (``item_id``, ``Item_ID``) is
    refused: which one holds the values is not for us to guess."""
    known = {column.name for column in schema.columns}
    names = table.column_names
    twice = [name for name in named_twice(names) if name.lower() in known]
    if twice:
        raise ContractError(
            f"{source} names a column {' and '.join(map(repr, twice))}; name it one way."
        )
    renamed = [name.lower() if name.lower() in known else name for name in names]
    return table.rename_columns(renamed) if renamed != names else table


def _typed_columns(table: pa.Table, schema: TableSchema, source: str) -> pa.Table:
    """The table, its binary contract columns as text; a contract column of a type that holds
    no single value (a list, a struct, a duration, bytes that are not UTF-8) is refused in one
    sentence naming it (Parquet files carry types; CSV is text)."""
    for name in table.column_names:
        kind = table.schema.field(name).type
        if schema.column(name) is None:
            continue
        if pa.types.is_nested(kind) or pa.types.is_duration(kind) or pa.types.is_interval(kind):
            raise ContractError(
                f"{source} has a column {name!r} of type {kind}, which holds no value the "
                "contract can read; write it as text or a number."
            )
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            try:
                text = table.column(name).cast(pa.large_string())
            except pa.ArrowInvalid:
                raise ContractError(
                    f"{source} has a column {name!r} of bytes that are not UTF-8 text; write "
                    "it as a string column."
                ) from None
            table = table.set_column(table.column_names.index(name), name, text)
    return table


def _validate(
    holder: list[pa.Table],
    schema: TableSchema,
    *,
    source: str,
    initial_reasons: np.ndarray | None,
    bounds: Bounds | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`validate_table` on a table it takes out of ``holder`` and may free as it goes."""
    table = _typed_columns(_contract_names(holder.pop(), schema, source), schema, source)
    limits = _Limits.of(bounds or Bounds.from_env())
    if table.num_columns == 0 and table.num_rows == 0:
        table = pa.table({c: pa.array([], pa.large_string()) for c in schema.required})
    for required in schema.required:
        if required not in table.column_names:
            raise ContractError(
                f"{source} has no column {required!r}, which the {schema.name} table requires."
            )
    reasons = _Reasons(table.num_rows)
    if initial_reasons is not None and len(initial_reasons) == table.num_rows:
        reasons.note(pd.notna(initial_reasons), initial_reasons)

    columns = [(name, c) for name in table.column_names if (c := schema.column(name)) is not None]
    single_key = schema.unique[0] if len(schema.unique) == 1 else None

    def check(
        job: tuple[pa.ChunkedArray, str, Kind],
    ) -> tuple[pa.ChunkedArray, Problems, np.ndarray | None]:
        values, problems = _parse(*job, limits)
        # Hashing the key is the costliest step: do it here, beside the other columns.
        return values, problems, _dictionary_codes(values) if job[1] == single_key else None

    jobs = [(table.column(name), name, column.kind) for name, column in columns]
    if table.num_rows < _PARALLEL_ROWS:  # threads would cost more than they save
        checked = [check(job) for job in jobs]
    else:  # Arrow compute releases the GIL: columns are checked side by side.
        with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
            checked = list(pool.map(check, jobs))
    del jobs
    typed: dict[str, pa.ChunkedArray] = {}
    key_codes = None
    for (name, column), (values, problems, codes) in zip(columns, checked, strict=True):
        if column.required:
            invalid = np.logical_or.reduce([m for m, _ in problems]) if problems else False
            reasons.note(_is_null(values) & ~invalid, f"missing {name}")
        for mask, reason in problems:
            reasons.note(mask, reason)
        typed[name] = values
        key_codes = codes if codes is not None else key_codes

    if schema.unique and all(k in typed for k in schema.unique):
        if key_codes is None:
            key_codes = _row_codes([typed[k] for k in schema.unique])
        reasons.note(_repeats(key_codes, ~reasons.flagged), f"duplicate {', '.join(schema.unique)}")

    bad = reasons.flagged
    quarantined = _to_pandas(table.filter(pa.array(bad))).astype("str")
    quarantined[REASON] = reasons.text[bad]
    accepted = _assemble(table, typed, schema)
    del table, typed, checked
    if bad.any():
        # One column at a time: each unfiltered column is freed before the next is copied.
        keep = pa.array(~bad)
        for name in list(accepted):
            accepted[name] = accepted[name].filter(keep)
    return _to_pandas(pa.table(accepted)), quarantined


Problems = list[tuple[np.ndarray, str]]


def _is_null(values: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(values.is_null(nan_is_null=True).to_numpy(zero_copy_only=False), dtype=bool)


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Boolean Arrow result as numpy, nulls as False."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _repeats(codes: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Eligible rows whose key code (-1 = missing key) occurred in an earlier eligible row."""
    eligible = eligible & (codes >= 0)
    counts = np.bincount(codes[eligible], minlength=int(codes.max()) + 1 if len(codes) else 0)
    candidates = eligible & (counts[np.maximum(codes, 0)] > 1) if len(counts) else eligible
    repeats = np.zeros(len(codes), dtype=bool)
    repeats[candidates] = pd.Series(codes[candidates]).duplicated(keep="first").to_numpy()
    return repeats


def _row_codes(keys: list[pa.ChunkedArray]) -> np.ndarray:
    """One code per distinct combination of the key columns; -1 where any of them is missing."""
    frame = pd.DataFrame({str(i): key.to_pandas() for i, key in enumerate(keys)})
    groups = frame.groupby(list(frame.columns), sort=False, dropna=True).ngroup()
    return groups.fillna(-1).to_numpy(dtype=np.int64)


def _dictionary_codes(values: pa.ChunkedArray) -> np.ndarray:
    """Codes into one shared dictionary of the column's distinct values; -1 for null."""
    encoded = values.combine_chunks().dictionary_encode()
    return np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(), dtype=np.int64)


class _Reasons:
    """The first reason found for each row (None while the row is still good)."""

    def __init__(self, n: int) -> None:
        self.text = np.full(n, None, dtype=object)
        self.flagged = np.zeros(n, dtype=bool)

    def note(self, mask: np.ndarray, reason: str | np.ndarray) -> None:
        target = mask & ~self.flagged
        if target.any():
            self.text[target] = reason if isinstance(reason, str) else reason[target]
            self.flagged |= target


def _as_text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text with surrounding ASCII whitespace removed and empty strings as null.

    Clean columns (the common case) are returned as they are, without a copy.
    """
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = (
            values.cast(pa.large_string())
            if not pa.types.is_floating(values.type)
            else _float_text(values)
        )
    trimmed = pc.ascii_trim_whitespace(values)
    changed = pc.any(pc.not_equal(pc.binary_length(trimmed), pc.binary_length(values))).as_py()
    empty = pc.any(pc.equal(trimmed, "")).as_py()
    if changed:
        values = trimmed
    if empty:
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, values.type), values)
    return values


def _float_text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Floats as text, without the '.0' a float id picks up (1.0 -> '1'); NaN and infinities
    are missing, not the ids 'nan' and 'inf'."""
    finite = pc.if_else(pc.is_finite(values), values, pa.scalar(None, values.type))
    text = finite.cast(pa.large_string())
    return pc.replace_substring_regex(text, r"\.0$", "")


@dataclass(frozen=True)
class _Limits:
    """:class:`Bounds` resolved for one validation: ``now`` is read once, at its start."""

    earliest: np.datetime64
    latest_time: np.datetime64
    latest_date: np.datetime64
    floor_text: str
    max_quantity: float
    max_amount: float
    skew_hours: float

    def top(self, kind: Kind) -> float:
        """The largest magnitude a number of ``kind`` may have."""
        if kind in (Kind.QUANTITY, Kind.STOCK_CHANGE):
            return self.max_quantity
        return {Kind.LATITUDE: 90.0, Kind.LONGITUDE: 180.0}.get(kind, self.max_amount)

    @classmethod
    def of(cls, bounds: Bounds) -> _Limits:
        now = pd.Timestamp.now(tz="UTC").tz_localize(None)
        return cls(
            earliest=np.datetime64(pd.Timestamp(bounds.time_floor).as_unit("us")),
            latest_time=np.datetime64((now + bounds.clock_skew).as_unit("us")),
            latest_date=np.datetime64((now + bounds.plan_ahead).as_unit("us")),
            floor_text=pd.Timestamp(bounds.time_floor).isoformat(),
            max_quantity=bounds.max_quantity,
            max_amount=bounds.max_amount,
            skew_hours=bounds.clock_skew.total_seconds() / 3600,
        )


_MISSING_NUMBER = pa.array(["na", "n/a", "null", "none", "nan", "#n/a"])
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# C0 controls and DEL: invisible, break logs and terminals, and PostgreSQL refuses NUL.
_FORBIDDEN_IN_ID = f"[{ID_FORBIDDEN}]"


#: Kinds read as numbers (:func:`_parse_number`).
_NUMBERS = (
    Kind.NUMBER, Kind.NONNEGATIVE, Kind.QUANTITY, Kind.STOCK_CHANGE, Kind.LATITUDE, Kind.LONGITUDE,
)  # fmt: skip


def _parse(
    values: pa.ChunkedArray, name: str, kind: Kind, limits: _Limits
) -> tuple[pa.ChunkedArray, Problems]:
    """Check one column: typed values (invalid ones as null) and (mask, reason) per problem."""
    if kind in (Kind.TIME, Kind.DATE, Kind.PLAN_DATE):
        return _parse_time(values, name, kind, limits)
    if kind in _NUMBERS:
        return _parse_number(values, name, kind, limits)
    if kind is Kind.BOOL:
        if pa.types.is_boolean(values.type):
            return values, []
        text = pc.utf8_lower(_as_text(values))
        true = pc.is_in(text, value_set=pa.array(sorted(_TRUE)))
        false = pc.is_in(text, value_set=pa.array(sorted(_FALSE)))
        missing = _is_null(text)
        bad = ~missing & ~_mask(true) & ~_mask(false)
        parsed = pc.if_else(pa.array(bad | missing), pa.scalar(None, pa.bool_()), true)
        return parsed, [(bad, f"{name} is not a boolean (true/false, 1/0)")]
    text = _as_text(values)
    if kind in CHOICES:
        allowed = pa.array(CHOICES[kind])
        present = ~_is_null(text)
        if not (_mask(pc.is_in(text, value_set=allowed)) | ~present).all():
            text = pc.utf8_lower(text)  # only copy what needs lowering
        bad = present & ~_mask(pc.is_in(text, value_set=allowed))
        if bad.any():
            text = pc.if_else(pa.array(bad), pa.scalar(None, text.type), text)
        return text, [(bad, f"{name} is not one of {', '.join(allowed.to_pylist())}")]
    limit = MAX_ID_LENGTH if kind is Kind.ID else MAX_TEXT_LENGTH
    long = _mask(pc.greater(pc.binary_length(text), limit))
    if long.any():  # bytes over the limit: count characters before calling it too long
        long &= _mask(pc.greater(pc.utf8_length(text), limit))
    control = _mask(pc.match_substring_regex(text, _FORBIDDEN_IN_ID if kind is Kind.ID else "\x00"))
    bad = long | control
    if bad.any():
        text = pc.if_else(pa.array(bad), pa.scalar(None, text.type), text)
    what = "a control or invisible character" if kind is Kind.ID else "a NUL character"
    return text, [
        (long, f"{name} is longer than {limit} characters"),
        (control, f"{name} has {what}"),
    ]


def _parse_number(
    values: pa.ChunkedArray, name: str, kind: Kind, limits: _Limits
) -> tuple[pa.ChunkedArray, Problems]:
    if (
        pa.types.is_boolean(values.type)
        or pa.types.is_integer(values.type)
        or pa.types.is_floating(values.type)
        or pa.types.is_decimal(values.type)
    ):
        parsed = values.cast(pa.float64(), safe=False)  # 2^62 is over every bound anyway
        given = ~_is_null(values)
    else:
        text = _as_text(values)
        lowered = pc.utf8_lower(text)
        # Exports write "NA" or "NULL" for a missing number, and TRUE / FALSE for flags.
        text = pc.if_else(
            pc.is_in(lowered, value_set=_MISSING_NUMBER), pa.scalar(None, text.type), text
        )
        text = pc.if_else(pc.equal(lowered, "true"), pa.scalar("1", text.type), text)
        text = pc.if_else(pc.equal(lowered, "false"), pa.scalar("0", text.type), text)
        given = ~_is_null(text)
        parsed = pc.if_else(
            pc.match_substring_regex(text, _NUMBER), text, pa.scalar(None, text.type)
        ).cast(pa.float64())
    number = given & _mask(pc.is_finite(parsed))
    x = np.asarray(pc.fill_null(parsed, 0.0).to_numpy(zero_copy_only=False), dtype=np.float64)
    top = limits.top(kind)
    high, high_text = number & (x > top), f"is over {top:g}"
    if kind is Kind.QUANTITY:
        low, low_text = number & (x <= 0), "is not positive"
    elif kind is Kind.NONNEGATIVE:
        low, low_text = number & (x < 0), "is negative"
    else:
        low, low_text = number & (x < -top), f"is below -{top:g}"
    not_number = given & ~number
    invalid = not_number | low | high
    if invalid.any():
        parsed = pc.if_else(pa.array(invalid), pa.scalar(None, pa.float64()), parsed)
    return parsed, [
        (not_number, f"{name} is not a finite number"),
        (low, f"{name} {low_text}"),
        (high, f"{name} {high_text}"),
    ]


def _parse_time(
    values: pa.ChunkedArray, name: str, kind: Kind, limits: _Limits
) -> tuple[pa.ChunkedArray, Problems]:
    what = "timestamp" if kind is Kind.TIME else "date"
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        if getattr(values.type, "tz", None) is not None:
            values = values.cast(pa.timestamp(values.type.unit, tz="UTC")).cast(
                pa.timestamp(values.type.unit)
            )
        # A Parquet time beyond what microseconds hold is out of bounds anyway: saturate it.
        parsed = values.cast(pa.timestamp("us"), safe=False)
        bad = np.zeros(len(values), dtype=bool)
    else:
        text = _as_text(values).to_pandas()
        times = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce").dt.tz_localize(
            None
        )
        bad = (text.notna() & times.isna()).to_numpy()
        parsed = pa.chunked_array(
            [pa.array(times.astype("datetime64[us]"), type=pa.timestamp("us"))]
        )
    if kind is not Kind.TIME:
        parsed = pc.floor_temporal(parsed, unit="day")
    stamps = np.asarray(parsed.to_numpy(), dtype="datetime64[us]")
    present = ~np.isnat(stamps)
    latest = limits.latest_date if kind is Kind.PLAN_DATE else limits.latest_time
    early = present & (stamps < limits.earliest)
    late = present & (stamps > latest)
    if early.any() or late.any():
        parsed = pc.if_else(pa.array(early | late), pa.scalar(None, parsed.type), parsed)
    ahead = (
        "too far in the future"
        if kind is Kind.PLAN_DATE
        else f"more than {limits.skew_hours:g} h ahead of now (clock skew)"
    )
    return parsed, [
        (bad, f"{name} is not an ISO 8601 {what}"),
        (early, f"{name} is before {limits.floor_text}"),
        (late, f"{name} is {ahead}"),
    ]


def _assemble(
    table: pa.Table, typed: dict[str, pa.ChunkedArray], schema: TableSchema
) -> dict[str, pa.ChunkedArray | pa.Array]:
    """Canonical column order: contract columns (missing optional ones added empty), x_*, extras."""
    n = table.num_rows
    out: dict[str, pa.ChunkedArray | pa.Array] = {}
    for column in schema.columns:
        out[column.name] = (
            typed[column.name] if column.name in typed else pa.nulls(n, _ARROW_TYPE[column.kind])
        )
    for name in table.column_names:
        if name not in out:
            out[name] = typed.get(name, table.column(name))
    if schema.name == "events":
        # A missing quantity means one unit: the contract's default for an interaction.
        out["quantity"] = pc.fill_null(out["quantity"], 1.0)
    return out


_ARROW_TYPE = {
    Kind.TIME: pa.timestamp("us"),
    Kind.DATE: pa.timestamp("us"),
    Kind.PLAN_DATE: pa.timestamp("us"),
    Kind.NUMBER: pa.float64(),
    Kind.NONNEGATIVE: pa.float64(),
    Kind.QUANTITY: pa.float64(),
    Kind.STOCK_CHANGE: pa.float64(),
    Kind.LATITUDE: pa.float64(),
    Kind.LONGITUDE: pa.float64(),
    Kind.BOOL: pa.bool_(),
    Kind.ID: pa.large_string(),
    Kind.TEXT: pa.large_string(),
    Kind.EVENT_TYPE: pa.large_string(),
    Kind.STORE_KIND: pa.large_string(),
    Kind.MOVEMENT_TYPE: pa.large_string(),
}


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow to pandas: strings as pandas ``str``, booleans as nullable ``boolean``."""
    return table.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get, split_blocks=True)


def write_quarantine(tables: dict[str, LoadedTable], out_dir: Path) -> list[Path]:
    """Write each table's quarantined rows to ``out_dir/<table>.csv``; return the files written.
    They are raw rows, customer keys included: the folder and files are the owner's only."""
    out_dir = Path(out_dir)
    written = []
    for name, table in tables.items():
        target = out_dir / f"{name}.csv"
        if table.quarantined.empty:
            target.unlink(missing_ok=True)
            continue
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(descriptor, 0o600)  # a file there before kept its mode: before any row
        with os.fdopen(descriptor, "w") as f:
            table.quarantined.to_csv(f, index=False)
        written.append(target)
    return written
