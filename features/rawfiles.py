"""Read a contract file (CSV, CSV.gz or Parquet) as raw values, before any check.

A line that cannot be read as a row becomes a quarantine row with a reason, its line number
(line 1 is the header) and its first ``RAW_TEXT_CHARS`` characters; the rest of the file is read:

* a line with the wrong number of fields: "wrong number of fields";
* a line over ``MAX_LINE_BYTES`` (1 MiB of UTF-8): "line longer than 1 MiB" (such a line is never
  held in memory whole);
* a line whose quote is still open 1 MiB later: "quote not closed within 1 MiB" (see below);
* a value with bytes the encoding cannot decode is read with those bytes replaced by U+FFFD and
  its row gets the reason "<column> is not valid <encoding>", so the quarantine shows it.

A file that cannot be read at all is a :class:`ContractError` of one sentence naming the file:
binary data (an image, a ZIP or Excel workbook, random bytes), a broken gzip, a bad header.

What kind of text a CSV file holds is decided from its first 64 KiB only, so that clean UTF-8
files are read at full speed:

* Encoding: a byte-order mark decides (UTF-8, UTF-16 or UTF-32); otherwise ``encoding`` (UTF-8
  unless told, e.g. ``cp932`` for Shift-JIS exports). Other encodings are transcoded to UTF-8
  as the file streams in.
* Delimiter: whichever of comma, tab, semicolon and ``|`` occurs most often in the header line
  outside quotes (comma on a tie or when none occurs); the whole file is read with it.
* Line ends: LF or CRLF; CR alone when the first 64 KiB hold no LF.
* Binary: a known file signature, or more than 3% control characters, refuses the file.

Quoted values may span lines. A quote that never closes turns what follows into one value, as in
any CSV reader, and its row is quarantined. Only when such a row would run past
``MAX_LINE_BYTES`` (which Arrow may also report as a row outgrowing its read block) is the file
read a second time, through a filter that leaves out over-long lines and each line that opens a
quote still open ``MAX_LINE_BYTES`` later (counting quotes per line: an odd count opens or closes
one); the lines after it are then read as rows again.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import os
import re
import tempfile
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REASON = "reason"
# For CSV rows that cannot be read: the line number where it starts, and the line's text.
LINE = "line"
RAW_TEXT = "raw_text"
# A longer line (in UTF-8 bytes) is quarantined unread: no contract row needs a megabyte.
MAX_LINE_BYTES = 1 << 20
# How much of a quarantined line's text is kept.
RAW_TEXT_CHARS = 200
WRONG_FIELD_COUNT = "wrong number of fields"
LINE_TOO_LONG = "line longer than 1 MiB"
QUOTE_NOT_CLOSED = "quote not closed within 1 MiB"

_CSV_BLOCK_SIZE = 64 << 20  # Arrow's read block: big blocks parse fastest
_HEAD_BYTES = 64 << 10  # what encoding, delimiter and binary detection look at
_SCAN_BYTES = 8 << 20  # read size when scanning a file for line numbers
_PROBES = 8  # up to this many bad rows are searched for chunk by chunk, not line by line
_DELIMITERS = (",", "\t", ";", "|")
_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),  # before UTF-16's, which it starts with
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
_SIGNATURES = (
    (b"\x89PNG", "it is a PNG image"),
    (b"\xff\xd8\xff", "it is a JPEG image"),
    (b"PK\x03\x04", "it is a ZIP archive, such as an Excel workbook"),
    (b"\xd0\xcf\x11\xe0", "it is an old Office file, such as an .xls workbook"),
    (b"%PDF", "it is a PDF document"),
    (b"PAR1", "it is a Parquet file; name it {stem}.parquet"),
    (b"\x1f\x8b", "it is gzip-compressed; name it {stem}.csv.gz"),
)
# Control characters that text files do not hold (tab, LF, VT, FF and CR are allowed).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")


class ContractError(ValueError):
    """The data directory breaks the contract in a way no quarantine can fix (one sentence)."""


def partition_files(path: Path) -> list[Path]:
    """The Parquet files of a partitioned dataset directory, in path order (months, days, ...):
    the order its rows are read in, wherever they are read. A folder that cannot be read is
    refused, as is a symbolic link to a folder: its rows would be left out without a word."""

    def refuse(error: OSError) -> None:
        raise ContractError(
            f"{error.filename} cannot be read ({error.strerror}), so the {path.name} table "
            "would be read without it; give this process access to it or move it out."
        )

    files = []
    for folder, folders, names in os.walk(path, onerror=refuse):
        linked = [Path(folder) / name for name in folders if (Path(folder) / name).is_symlink()]
        if linked:
            raise ContractError(
                f"{linked[0]} is a symbolic link to a folder, which is not followed (it could "
                f"loop, or lead outside); put the files themselves in {path.name}."
            )
        files += [Path(folder) / name for name in names if name.endswith(".parquet")]
    return sorted(files)


class ParquetPiece(NamedTuple):
    """Some consecutive row groups of one Parquet file (:func:`read_raw` reads them)."""

    file: Path
    row_groups: tuple[int, ...]

    @property
    def name(self) -> str:
        """The file's name, as messages name it."""
        return self.file.name


def parquet_pieces(path: Path, max_rows: int) -> list[ParquetPiece]:
    """The Parquet files of ``path`` (one file or a partitioned directory) in the order their
    rows are read, each cut into pieces of whole row groups of at most ``max_rows`` rows (a
    larger group alone): what can be read and checked at once in bounded memory."""
    pieces = []
    schemas = []
    for file in partition_files(path) if path.is_dir() else [path]:
        with _readable(file):
            parquet = pq.ParquetFile(file)
            metadata = parquet.metadata
            schemas.append(parquet.schema_arrow)
        groups: list[int] = []
        rows = 0
        for group in range(metadata.num_row_groups):
            size = metadata.row_group(group).num_rows
            if groups and rows + size > max_rows:
                pieces.append(ParquetPiece(file, tuple(groups)))
                groups, rows = [], 0
            groups.append(group)
            rows += size
        pieces.append(ParquetPiece(file, tuple(groups)))  # no row groups: an empty piece
    _check_agreement(path, schemas)  # as read_raw does, before any row is read
    return pieces


def _check_agreement(path: Path, schemas: list[pa.Schema]) -> None:
    """The files of one table must make one: types that cannot be reconciled (text in one
    month, timestamps in the next) or a column named two ways (``Quantity``, ``quantity``:
    the contract reads either, but not both) are refused."""
    try:
        names = pa.unify_schemas(schemas, promote_options="permissive").names
    except pa.ArrowException as exc:
        raise ContractError(f"The Parquet files of {path.name} do not agree ({exc}).") from exc
    twice = named_twice(names)
    if twice:
        raise ContractError(
            f"The Parquet files of {path.name} do not agree: they name a column "
            f"{' and '.join(map(repr, twice))}; name it one way."
        )


def named_twice(names: list[str]) -> list[str]:
    """The names that another one repeats but for case (``Quantity``, ``quantity``)."""
    lowered = [name.lower() for name in names]
    return [name for name, low in zip(names, lowered, strict=True) if lowered.count(low) > 1]


def _read_piece(piece: ParquetPiece) -> pa.Table:
    with _readable(piece.file):
        parquet = pq.ParquetFile(piece.file)
        if not piece.row_groups:
            return parquet.schema_arrow.empty_table()
        return parquet.read_row_groups(list(piece.row_groups))


def _read_parquet(path: Path) -> pa.Table:
    with _readable(path):
        # Batch by batch: reading the whole file at once peaks at twice the table's size.
        parquet = pq.ParquetFile(path)
        batches = list(parquet.iter_batches(batch_size=1 << 20))
        return pa.Table.from_batches(batches, schema=parquet.schema_arrow)


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Arrow's and the file system's errors as the one sentence a user gets."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(f"{path.name} is not a readable Parquet file ({exc}).") from exc


def read_raw(
    path: Path | ParquetPiece, encoding: str = "utf-8"
) -> tuple[pa.Table, pd.DataFrame, np.ndarray]:
    """Read a CSV, CSV.gz or Parquet file, a directory of Parquet files or a piece of one
    (:func:`parquet_pieces`), without interpreting values.

    Args:
        path: the file (its name says its format), the directory or the piece.
        encoding: a Python codec name for CSV text without a byte-order mark (e.g. ``cp932``).

    Returns:
        The rows (CSV values as text, Parquet in its own types); the CSV lines that are not rows,
        as quarantine rows (``reason``, ``line``, ``raw_text``), in file order; and, per row, a
        reason when a value held undecodable bytes, else None.

    Raises:
        ContractError: if the file cannot be read at all (one sentence naming it).
        ValueError: if ``encoding`` is not a text encoding Python knows.
    """
    if isinstance(path, ParquetPiece):
        table = _read_piece(path)
    elif (path := Path(path)).name.endswith(".parquet") or path.is_dir():
        # A directory is a partitioned dataset: its files in path order (months, days, ...);
        # partition keys in the paths are not columns — the rows carry their own.
        files = partition_files(path) if path.is_dir() else [path]
        tables = [_read_parquet(file) for file in files]
        _check_agreement(path, [t.schema for t in tables])
        table = pa.concat_tables(tables, promote_options="permissive")
    else:
        return _read_csv(path, _codec(encoding))
    return (
        _large_strings(table),
        _quarantine_frame([]),
        np.full(table.num_rows, None, dtype=object),
    )


def _large_strings(table: pa.Table) -> pa.Table:
    """Strings as ``large_string``: pandas' own string storage, so no copy is made later."""
    for i, column in enumerate(table.schema):
        if pa.types.is_string(column.type):
            table = table.set_column(i, column.name, table.column(i).cast(pa.large_string()))
    return table


def _codec(encoding: str) -> str:
    """The canonical name of a text encoding (``UTF8`` -> ``utf-8``, ``sjis`` -> ``shift_jis``)."""
    try:
        name = codecs.lookup(encoding).name
        b"\0\0\0\0".decode(name, "replace")
    except LookupError:  # also raised for codecs that are not text encodings (zlib, rot13)
        raise ValueError(
            f"Unknown text encoding {encoding!r} (try utf-8, cp932 or utf-16)."
        ) from None
    return name


@dataclasses.dataclass(frozen=True)
class _Dialect:
    """What :func:`_sniff` found out about a CSV file, and how to read it."""

    source: str  # the file's name, for messages
    encoding: str  # the codec its bytes are decoded with
    label: str  # the encoding's name in quarantine reasons
    delimiter: str
    newline: str
    header: tuple[str, ...]
    header_only: bool = False  # the header has no line end: nothing follows it
    replaced: bool = False  # the text already holds U+FFFD for undecodable bytes
    filtered: bool = False  # the file is the filtered copy: an oversized row is only a bad row


class _BadRow(NamedTuple):
    """A row Arrow could not read, as reported by its invalid-row handler."""

    text: str  # its first RAW_TEXT_CHARS characters
    probe: bytes  # the start of its first line, to find the chunk that holds it
    digest: int  # the hash of its first line (UTF-8), to find the line


class _Oversized(Exception):
    """A line or a row ran past MAX_LINE_BYTES: the file is read again through a filter."""


def _read_csv(path: Path, encoding: str) -> tuple[pa.Table, pd.DataFrame, np.ndarray]:
    dialect = _sniff(path, encoding)
    if dialect is None:  # an empty file: a table with no rows and no columns
        return pa.table({}), _quarantine_frame([]), np.full(0, None, dtype=object)
    if dialect.header_only:  # (which Arrow, told to skip the header, calls too short)
        table = pa.table({name: pa.array([], pa.large_string()) for name in dialect.header})
        return table, _quarantine_frame([]), np.full(0, None, dtype=object)
    try:
        table, bad, undecodable = _parse(path, dialect)
        return table, _quarantine_frame(bad), undecodable
    except _Oversized:
        pass  # rare: read a filtered copy (so the fast path stays a single pass)
    with tempfile.TemporaryDirectory(prefix="omni-rawfiles-") as tmp:
        kept = Path(tmp) / "kept.csv"
        dropped, replaced = _filter_oversized(path, dialect, kept)
        kept_dialect = dataclasses.replace(
            dialect, encoding="utf-8", newline="\n", replaced=replaced, filtered=True
        )
        table, bad, undecodable = _parse(kept, kept_dialect)
    return table, _quarantine_frame(bad + dropped), undecodable


def _parse(
    path: Path, dialect: _Dialect
) -> tuple[pa.Table, list[tuple[str, int | None, str]], np.ndarray]:
    """Read every row as text with Arrow; rows it cannot read are returned as quarantine rows.

    Raises:
        _Oversized: a line, or a row Arrow could not read, is over MAX_LINE_BYTES, or a row
            outgrew a read block (a quote that never closes); unless ``dialect.filtered``.
        ContractError: Arrow cannot read the file (a row outgrew a block despite the filter: its
            quote counting and Arrow's parser disagree).
    """
    stream = _Utf8Stream(dialect.encoding, dialect.newline)
    bad_rows: list[_BadRow] = []
    oversized: list[bool] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        bad_rows.append(_bad_row(row.text, dialect.newline))
        if len(row.text) > MAX_LINE_BYTES // 4 and len(row.text.encode()) > MAX_LINE_BYTES:
            oversized.append(True)
        return "skip"

    names = list(dialect.header)
    try:
        with pa.input_stream(path) as raw:  # gzip is decompressed by its file name
            table = pacsv.read_csv(
                pa.TransformInputStream(raw, stream),
                read_options=pacsv.ReadOptions(
                    column_names=names,
                    skip_rows=1,
                    block_size=_CSV_BLOCK_SIZE,
                    # Read in this thread: Arrow's threads reading ahead call the stream (Python)
                    # and, still doing so as a command exits, abort it ("terminate called
                    # without an active exception", exit 134; 2-7% of refused files).
                    use_threads=False,
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=dialect.delimiter,
                    invalid_row_handler=on_invalid_row,
                    newlines_in_values=True,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.large_string() for name in names},
                    # The stream checked (or made) the text valid UTF-8: no second check.
                    check_utf8=False,
                    strings_can_be_null=True,
                    null_values=[""],
                    quoted_strings_can_be_null=True,
                ),
            )
    except (pa.ArrowException, OSError, EOFError) as exc:
        if "straddl" in str(exc) and not dialect.filtered:  # a row longer than a block
            raise _Oversized from exc
        raise ContractError(
            f"{dialect.source} is not a readable CSV file ({_brief(exc)})."
        ) from exc
    if oversized and not dialect.filtered:
        raise _Oversized
    lines = _line_numbers(path, dialect, bad_rows) if bad_rows else []
    bad = [(WRONG_FIELD_COUNT, line, row.text) for line, row in zip(lines, bad_rows, strict=True)]
    undecodable = np.full(table.num_rows, None, dtype=object)
    if stream.replaced or dialect.replaced:
        _note_replacements(table, dialect.label, undecodable)
    return table, bad, undecodable


def _brief(exc: BaseException) -> str:
    """The first line of an error, without the row text Arrow may append."""
    return str(exc).strip().splitlines()[0][:RAW_TEXT_CHARS] if str(exc).strip() else repr(exc)


def _bad_row(text: str, newline: str) -> _BadRow:
    end = text.find(newline)
    first = (text if end < 0 else text[:end]).removesuffix("\r").encode()
    return _BadRow(text[:RAW_TEXT_CHARS], first[:RAW_TEXT_CHARS], hash(first))


def _preview(line: bytes) -> str:
    """A dropped line's first characters, for the quarantine."""
    start = line[: 4 * RAW_TEXT_CHARS]  # may cut a character: not final, so it is left out
    return codecs.getincrementaldecoder("utf-8")("replace").decode(start)[:RAW_TEXT_CHARS]


def _note_replacements(table: pa.Table, label: str, reasons: np.ndarray) -> None:
    """Give each row holding U+FFFD (an undecodable byte) a reason naming its first such column."""
    flagged = np.zeros(table.num_rows, dtype=bool)
    for name in table.column_names:
        found = pc.fill_null(pc.match_substring(table.column(name), "\ufffd"), False)
        mask = np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool) & ~flagged
        reasons[mask] = f"{name} is not valid {label}"
        flagged |= mask


class _Utf8Stream:
    """A file's bytes as UTF-8, for ``pa.TransformInputStream`` and for scans.

    UTF-8 passes through unchanged and uncopied once Arrow has checked it (the fast path).
    Other encodings, and UTF-8 from its first invalid byte on, are decoded with undecodable
    bytes replaced by U+FFFD. Called by Arrow, it also stops the read (:class:`_Oversized`)
    at a line over MAX_LINE_BYTES.
    """

    def __init__(self, encoding: str, newline: str) -> None:
        self._passthrough = encoding == "utf-8"
        self._decoder = codecs.getincrementaldecoder(encoding)("replace")
        self._carry = b""  # the start of a UTF-8 character cut by the end of a block
        self._newline = re.compile(re.escape(newline.encode()))
        # The last line end: a match per line end, each looking ahead only to the next one.
        self._last_newline = re.compile(
            re.escape(newline.encode()) + b"(?=[^" + re.escape(newline.encode()) + b"]*\\Z)"
        )
        self._run = 0  # bytes of the current line in earlier blocks
        self.replaced = False

    def __call__(self, buf: pa.Buffer) -> Any:
        data = self.utf8(buf)
        self._check_lines(data)
        return data

    def utf8(self, buf: Any) -> Any:
        """The block as UTF-8 (bytes or a buffer); a character cut by its end comes next time."""
        final = len(buf) == 0  # the stream's end is an empty block
        if self._passthrough:
            data = self._carry + bytes(buf) if self._carry else buf
            end = len(data) if final else _char_boundary(data)
            if _is_utf8(data, end):
                self._carry = bytes(memoryview(data)[end:])
                return data if end == len(data) else memoryview(data)[:end]
            self._passthrough, self._carry, buf = False, b"", data
        text = self._decoder.decode(bytes(buf), final)
        self.replaced = self.replaced or "\ufffd" in text
        return text.encode()

    def _check_lines(self, data: Any) -> None:
        """Raise _Oversized when a line over the limit ends or grows in ``data``.

        A few searches a block, without copying it: the line in progress must end within what
        it may still take; then every half limit a probe finds the end of the line it falls in,
        which is short only if another line end lies within the limit before that end (every
        line over the limit holds a probe).
        """
        limit, size, search = MAX_LINE_BYTES, len(data), self._newline.search
        budget = limit - self._run
        first = search(data, 0, min(size, budget + 1))
        if first is None:
            if size > budget:
                raise _Oversized
            self._run += size
            return
        last = first.start()  # the latest line end known
        for probe in range(last + 1 + limit // 2, size, limit // 2):
            if probe <= last:  # in a line already measured
                continue
            end = search(data, probe, size)
            if end is None:
                break
            if search(data, max(end.start() - limit - 1, last), probe) is None:
                raise _Oversized
            last = end.start()
        found = self._last_newline.search(data, last)
        last = found.start() if found else last
        if size - last - 1 > limit:
            raise _Oversized
        self._run = size - last - 1


def _char_boundary(data: Any) -> int:
    """Where a UTF-8 character cut by the end of ``data`` starts (its length if none is)."""
    tail = memoryview(data)[-4:].tobytes()
    for back in range(1, len(tail) + 1):
        byte = tail[-back]
        if byte < 0x80:  # ASCII: no character is cut
            return len(data)
        if byte >= 0xC0:  # a lead byte, and how many bytes its character takes
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if need > back else len(data)
    return len(data)  # not UTF-8: the check says so


def _is_utf8(data: Any, end: int) -> bool:
    """Whether ``data[:end]`` is valid UTF-8: Arrow's check, fast and without a copy."""
    offsets = pa.array([0, end], pa.int64()).buffers()[1]
    buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, buffer]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _utf8_chunks(path: Path, stream: _Utf8Stream) -> Iterator[bytes]:
    with pa.input_stream(path) as source:
        while True:
            raw = source.read(_SCAN_BYTES)
            data = bytes(stream.utf8(raw))
            if data:
                yield data
            if not raw:
                return


def _line_numbers(path: Path, dialect: _Dialect, rows: list[_BadRow]) -> list[int | None]:
    """The line where each bad row starts, found in one scan of the file.

    Arrow's parallel reader does not know line numbers, so each row is looked up by the hash of
    its first line; identical lines are numbered in file order.
    """
    wanted: dict[int, deque[int]] = defaultdict(deque)
    for i, row in enumerate(rows):
        wanted[row.digest].append(i)
    # Few bad rows: chunks that hold none of them are only counted, in C.
    probes = {row.probe for row in rows} if len(wanted) <= _PROBES else None
    numbers: list[int | None] = [None] * len(rows)
    newline = dialect.newline.encode()
    line = 0  # lines before ``pending``
    pending = b""  # the start of a line cut by the end of a chunk
    stream = _Utf8Stream(dialect.encoding, dialect.newline)
    for chunk in _utf8_chunks(path, stream):
        text = pending + chunk
        cut = text.rfind(newline) + 1
        # An over-long line cannot be a bad row: keep only enough of it to know that.
        body, pending = text[:cut], text[cut:][: MAX_LINE_BYTES + 1]
        if probes is not None and not any(probe in body for probe in probes):
            line += body.count(newline)
            continue
        for part in body.split(newline)[:-1]:
            line += 1
            _claim(wanted, numbers, part, line)
        if not wanted:
            return numbers
    if pending:
        _claim(wanted, numbers, pending, line + 1)
    return numbers


def _claim(
    wanted: dict[int, deque[int]], numbers: list[int | None], part: bytes, line: int
) -> None:
    """Number the next bad row whose first line is ``part`` (line 1, the header, is none)."""
    key = hash(part.removesuffix(b"\r"))
    if line > 1 and key in wanted:
        queue = wanted[key]
        numbers[queue.popleft()] = line
        if not queue:
            del wanted[key]


def _filter_oversized(
    path: Path, dialect: _Dialect, out: Path
) -> tuple[list[tuple[str, int | None, str]], bool]:
    """Copy the file to ``out`` as UTF-8, leaving empty the lines that cannot make a row.

    Those are the lines over the limit and the lines that open a quote still open the limit's
    characters later. The CSV reader skips empty lines, so line numbers in ``out`` are the file's
    (line ends become LF, CRs kept; a file with CR line ends gets LF ones).

    Returns:
        A quarantine row (reason, line, first characters) per line left empty; whether
        undecodable bytes were replaced.
    """
    stream = _Utf8Stream(dialect.encoding, dialect.newline)
    dropped: list[tuple[str, int | None, str]] = []
    lines = _physical_lines(_utf8_chunks(path, stream), dialect.newline.encode())
    with out.open("wb") as sink:
        for line in _kept_lines(lines, dropped):
            sink.write(line + b"\n")  # a CR stays: values keep their CRLF
    return dropped, stream.replaced


def _kept_lines(
    lines: Iterable[tuple[bytes, int]], dropped: list[tuple[str, int | None, str]]
) -> Iterator[bytes]:
    """Each line in order, or b"" for a line dropped (and added to ``dropped``)."""
    source = enumerate(lines, start=1)
    redo: deque[tuple[int, bytes, int]] = deque()  # lines to read again after a stray quote
    region: list[tuple[int, bytes, int]] = []  # lines since a quote opened
    size = 0  # their characters
    while True:
        if redo:
            number, text, length = redo.popleft()
        elif (item := next(source, None)) is not None:
            number, (text, length) = item
        else:
            break
        if length > MAX_LINE_BYTES:
            dropped.append((LINE_TOO_LONG, number, _preview(text)))
            text, length = b"", 0  # from here on, an empty line
        odd = text.count(b'"') % 2 == 1  # an odd count of quotes opens or closes a quote
        if not region and not odd:
            yield text
            continue
        region.append((number, text, length))
        size += length
        if odd and len(region) > 1:  # the quote closes: its lines make one row
            yield from (line for _, line, _ in region)
            region, size = [], 0
        elif size > MAX_LINE_BYTES:  # a stray quote: drop its line, read the next ones again
            first, *rest = region
            dropped.append((QUOTE_NOT_CLOSED, first[0], _preview(first[1])))
            yield b""
            redo.extendleft(reversed(rest))
            region, size = [], 0
    yield from (line for _, line, _ in region)  # the file's end closes an open quote


def _physical_lines(chunks: Iterable[bytes], newline: bytes) -> Iterator[tuple[bytes, int]]:
    """Each line without its line end, and its length; a long line is cut after the limit."""
    head, size = b"", 0
    for chunk in chunks:
        for i, part in enumerate(chunk.split(newline)):
            if i:
                yield head, size
                head, size = b"", 0
            size += len(part)
            if len(head) <= MAX_LINE_BYTES:
                head += part[: MAX_LINE_BYTES + 1 - len(head)]
    if size:
        yield head, size


def _sniff(path: Path, encoding: str) -> _Dialect | None:
    """Encoding, delimiter, line end and header from the file's first bytes (None if empty).

    Raises:
        ContractError: the file is binary, unreadable, or its first line is not a header.
    """
    head = _head(path)
    encoding = next((name for bom, name in _BOMS if head.startswith(bom)), encoding)
    try:
        text = codecs.getincrementaldecoder(encoding)("replace").decode(
            head, len(head) < _HEAD_BYTES
        )
    except UnicodeError:  # utf-16 and utf-32 without their byte-order mark
        raise ContractError(
            f"{path.name} does not start with the byte-order mark that {encoding} needs; give "
            "the byte order in --encoding (e.g. utf-16-le or utf-16-be)."
        ) from None
    _refuse_binary(path, head, text)
    text = text.removeprefix("\ufeff")
    if not text.strip() and len(head) < _HEAD_BYTES:
        return None
    newline = "\r" if "\r" in text and "\n" not in text else "\n"
    first, ended, _ = text.partition(newline)
    if not ended and len(head) >= _HEAD_BYTES:
        raise ContractError(
            f"{path.name} has no line end in its first {_HEAD_BYTES >> 10} KiB, "
            "so its first line is not a CSV header."
        )
    first = first.removesuffix("\r")
    if not first.strip():
        raise ContractError(
            f"{path.name} starts with a blank line; its first line must be the header."
        )
    delimiter = _delimiter(first)
    header = _header(path, first, delimiter)
    label = _label(encoding)
    return _Dialect(path.name, encoding, label, delimiter, newline, header, header_only=not ended)


def _label(encoding: str) -> str:
    """How quarantine reasons name an encoding: UTF-8, UTF-16, cp932."""
    return encoding.upper() if encoding.startswith("utf") else encoding


def _head(path: Path) -> bytes:
    """The first bytes of the file (decompressed)."""
    try:
        with pa.input_stream(path) as source:
            return source.read(_HEAD_BYTES)
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise ContractError(f"{path.name} cannot be read ({_brief(exc)}).") from exc


def _refuse_binary(path: Path, head: bytes, text: str) -> None:
    """Raise a one-sentence ContractError if the file's first bytes are not text."""
    what = next((kind for signature, kind in _SIGNATURES if head.startswith(signature)), None)
    if what is None:
        controls = len(_CONTROL.findall(text))
        if controls <= max(2, len(text) // 32):
            return
        what = f"{controls} of its first {len(text)} characters are control characters"
        zeros = max(head[0::2].count(0), head[1::2].count(0))
        if zeros * 4 > len(head):  # a zero in about every other byte: UTF-16 without a BOM
            order = "le" if head[1::2].count(0) > head[0::2].count(0) else "be"
            what += f"; if it is UTF-16 without a byte-order mark, read it as utf-16-{order}"
    stem = path.name.split(".")[0]
    raise ContractError(f"{path.name} is not a text CSV file ({what.format(stem=stem)}).")


def _delimiter(header_line: str) -> str:
    """The delimiter most frequent in the header outside quotes; comma on a tie or if none."""
    unquoted = re.sub(r'"[^"]*"', "", header_line)
    counts = {d: unquoted.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=counts.__getitem__)  # the first of equals: comma wins ties
    return best if counts[best] else ","


def _header(path: Path, line: str, delimiter: str) -> tuple[str, ...]:
    try:
        fields = next(csv.reader([line], delimiter=delimiter))
    except csv.Error as exc:
        raise ContractError(f"{path.name} has a header that cannot be read ({exc}).") from exc
    names = [field.strip() for field in fields]
    for name in names:
        if names.count(name) > 1:
            raise ContractError(f"{path.name} has the column {name!r} twice in its header.")
    return tuple(names)


def _quarantine_frame(rows: list[tuple[str, int | None, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            REASON: [r[0] for r in rows],
            LINE: pd.array([r[1] for r in rows], dtype="Int64"),
            RAW_TEXT: [r[2] for r in rows],
        }
    )
    return frame.sort_values(LINE, kind="stable", na_position="last", ignore_index=True)
