"""Read a contract file (CSV, CSV.gz or Parquet) as raw values, before any check.

What cannot be read as a row (a wrong field count, bytes that are not text) becomes a quarantine
row with its line number and raw text; what cannot be read at all is one sentence.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REASON = "reason"
# For CSV rows that cannot be read: the line number where known, and the line's text.
LINE = "line"
RAW_TEXT = "raw_text"
# Big blocks let a single absurdly long line parse (and then be quarantined) instead of failing.
_CSV_BLOCK_SIZE = 64 << 20


class ContractError(ValueError):
    """The data directory breaks the contract in a way no quarantine can fix (one sentence)."""


def read_raw(path: Path) -> tuple[pa.Table, pd.DataFrame, np.ndarray]:
    """Read a CSV, CSV.gz or Parquet file without interpreting values.

    Returns:
        The rows (CSV values as text, Parquet in its own types); the CSV lines whose field count
        is wrong, as quarantine rows; and, per row, a reason when a value was not valid UTF-8,
        else None (the value is kept with the bad bytes replaced, so the quarantine shows it).
    """
    path = Path(path)
    if path.name.endswith(".parquet"):
        try:
            # Batch by batch: reading the whole file at once peaks at twice the table's size.
            parquet = pq.ParquetFile(path)
            batches = list(parquet.iter_batches(batch_size=1 << 20))
            table = pa.Table.from_batches(batches, schema=parquet.schema_arrow)
        except (pa.ArrowException, OSError) as exc:
            raise ContractError(f"{path.name} is not a readable Parquet file ({exc}).") from exc
        return (
            _large_strings(table),
            _malformed_frame([]),
            np.full(table.num_rows, None, dtype=object),
        )
    return _read_csv(path)


def _large_strings(table: pa.Table) -> pa.Table:
    """Strings as ``large_string``: pandas' own string storage, so no copy is made later."""
    for i, column in enumerate(table.schema):
        if pa.types.is_string(column.type):
            table = table.set_column(i, column.name, table.column(i).cast(pa.large_string()))
    return table


def _read_header(path: Path) -> list[str] | None:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            first = fh.readline()
    except (OSError, EOFError) as exc:
        raise ContractError(f"{path.name} cannot be read ({exc}).") from exc
    text = first.decode("utf-8-sig", errors="replace").strip("\r\n")
    if not text.strip():
        return None
    header = next(csv.reader(io.StringIO(text)))
    names = [h.strip() for h in header]
    for name in names:
        if names.count(name) > 1:
            raise ContractError(f"{path.name} has the column {name!r} twice in its header.")
    return names


def _read_csv(path: Path) -> tuple[pa.Table, pd.DataFrame, np.ndarray]:
    header = _read_header(path)
    if header is None:  # an empty file: a table with no rows and no columns
        return pa.table({}), _malformed_frame([]), np.full(0, None, dtype=object)
    malformed: list[tuple[int | None, str]] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        malformed.append((row.number, row.text))
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(
                column_names=header, skip_rows=1, block_size=_CSV_BLOCK_SIZE
            ),
            parse_options=pacsv.ParseOptions(
                invalid_row_handler=on_invalid_row, newlines_in_values=True
            ),
            convert_options=pacsv.ConvertOptions(
                # Binary first: a value that is not UTF-8 must fail its row, not the file.
                column_types={name: pa.binary() for name in header},
                strings_can_be_null=True,
                null_values=[""],
                quoted_strings_can_be_null=True,
            ),
        )
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise ContractError(f"{path.name} is not a readable CSV file ({exc}).") from exc
    columns: dict[str, pa.ChunkedArray] = {}
    undecodable = np.full(table.num_rows, None, dtype=object)
    for name in header:
        chunked = table.column(name)
        try:
            columns[name] = chunked.cast(pa.large_string())
        except pa.ArrowInvalid:
            decoded: list[str | None] = []
            for i, value in enumerate(chunked.to_pylist()):
                try:
                    decoded.append(None if value is None else value.decode("utf-8"))
                except UnicodeDecodeError:
                    decoded.append(value.decode("utf-8", errors="replace"))
                    if undecodable[i] is None:
                        undecodable[i] = f"{name} is not valid UTF-8"
            columns[name] = pa.chunked_array([pa.array(decoded, type=pa.large_string())])
    return pa.table(columns), _malformed_frame(malformed), undecodable


def _malformed_frame(rows: list[tuple[int | None, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            REASON: ["wrong number of fields"] * len(rows),
            LINE: pd.array([r[0] for r in rows], dtype="Int64"),
            RAW_TEXT: [r[1] for r in rows],
        }
    )
