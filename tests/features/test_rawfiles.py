"""Reading contract files as raw text: bad lines are quarantined, not fatal; odd text is read."""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from features import rawfiles
from features.ingest import REASON, ContractError, LoadedTable, load_table
from features.rawfiles import LINE, RAW_TEXT, RAW_TEXT_CHARS, read_raw
from features.schema import EVENTS
from tests.processes import omni

HEADER = "event_time,channel,event_type,item_id,customer_key,quantity,unit_price,store_id,event_id"


def row(i: int, item: str = "I1") -> str:
    return f"2024-01-01T10:00:00,web,view,{item},K{i},1,2.5,S1,e{i}"


def load(path: Path, data: bytes, encoding: str = "utf-8") -> LoadedTable:
    path.write_bytes(data)
    table = load_table(path, EVENTS, encoding=encoding)
    assert table.rows == len(table.accepted) + len(table.quarantined)
    assert table.quarantined.empty or table.quarantined[REASON].notna().all()
    return table


def bad_lines(table: LoadedTable) -> list[tuple[str, int, str]]:
    """The quarantine rows made while reading (those with a line number)."""
    q = table.quarantined
    if LINE not in q:
        return []
    read = q[q[LINE].notna()]
    return list(zip(read[REASON], read[LINE].astype(int), read[RAW_TEXT], strict=True))


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_wrong_field_count_is_quarantined_with_its_line_and_text(
    tmp_path: Path, newline: str
) -> None:
    lines = [
        HEADER + ",note",  # an extra column, kept as given
        row(1) + ",",
        row(2) + ',"a note\nthat spans two lines"',  # lines 3 and 4
        "2024-01-01T10:00:00,web,view,I3",  # line 5: too few fields
        row(4) + ",",
        "",  # a blank line is no row
        row(5) + ",,surplus",  # line 8: too many
        row(6) + ",",
    ]
    data = newline.join(lines).encode() + b"\n2024-01-01,web,view,I\xff\xfe\n"  # line 10
    t = load(tmp_path / "events.csv", data)
    assert t.accepted["event_id"].tolist() == ["e1", "e2", "e4", "e6"]
    assert bad_lines(t) == [
        ("wrong number of fields", 5, "2024-01-01T10:00:00,web,view,I3"),
        ("wrong number of fields", 8, row(5) + ",,surplus"),
        # Undecodable bytes in a bad line used to fail the whole file.
        ("wrong number of fields", 10, "2024-01-01,web,view,I\ufffd\ufffd"),
    ]


def test_cp932_file_is_read_with_its_encoding(tmp_path: Path) -> None:
    text = f"{HEADER}\n{row(1, '商品-ｶﾅ')}\n{row(2, '①髙')}\n".encode("cp932")
    broken = row(3, "I").encode() + b"\x82\xff"  # a lead byte with no valid trail byte
    t = load(tmp_path / "events.csv", text + broken + b"\n", encoding="cp932")
    assert t.accepted["item_id"].tolist() == ["商品-ｶﾅ", "①髙"]
    assert t.reasons() == {"event_id is not valid cp932": 1}


def test_utf16_file_with_a_bom_is_detected(tmp_path: Path) -> None:
    for i, encoding in enumerate(["utf-16", "utf-16-be"]):
        text = f"{HEADER}\r\n{row(1, 'Café')}\r\n{row(2)}\r\n"
        bom = b"\xfe\xff" if encoding == "utf-16-be" else b""
        t = load(tmp_path / f"events{i}.csv", bom + text.encode(encoding))
        assert t.accepted["item_id"].tolist() == ["Café", "I1"] and t.quarantined.empty


@pytest.mark.parametrize("delimiter", ["\t", ";", "|"])
def test_tab_semicolon_and_pipe_files_are_read_with_their_delimiter(
    tmp_path: Path, delimiter: str
) -> None:
    lines = [HEADER, row(1), row(2, "I,with a comma"), row(3)[:-3]]
    text = "\n".join(line.replace(",", delimiter) for line in lines) + "\n"
    text = text.replace("I" + delimiter + "with a comma", "I,with a comma")
    t = load(tmp_path / "events.csv", text.encode())
    assert t.accepted["item_id"].tolist() == ["I1", "I,with a comma"]
    assert [(reason, line) for reason, line, _ in bad_lines(t)] == [("wrong number of fields", 4)]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_2_mb_line_is_quarantined_with_its_first_characters(tmp_path: Path, suffix: str) -> None:
    huge = row(2, "Z" * (2 << 20))
    text = "\n".join([HEADER, row(1), huge, row(3), "2024-01-01,web"]).encode()
    t = load(tmp_path / f"events{suffix}", gzip.compress(text) if suffix.endswith("gz") else text)
    assert t.accepted["event_id"].tolist() == ["e1", "e3"]
    assert bad_lines(t) == [
        (rawfiles.LINE_TOO_LONG, 3, huge[:RAW_TEXT_CHARS]),
        ("wrong number of fields", 5, "2024-01-01,web"),
    ]


def test_a_line_longer_than_a_read_block_is_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rawfiles, "_CSV_BLOCK_SIZE", 1 << 20)  # as a 150 MB line in 64 MB blocks
    huge = row(2, "Z" * (3 << 20))
    t = load(tmp_path / "events.csv", "\n".join([HEADER, row(1), huge, row(3)]).encode())
    assert t.accepted["event_id"].tolist() == ["e1", "e3"]
    assert [(reason, line) for reason, line, _ in bad_lines(t)] == [(rawfiles.LINE_TOO_LONG, 3)]


@pytest.mark.parametrize("small_blocks", [False, True])
def test_a_quote_that_never_closes_costs_only_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: bool
) -> None:
    """Past the line limit, a stray quote's line is dropped, not the rest of the file."""
    rows = 30_000  # ~1.6 MB after the quote: more than the line limit
    if small_blocks:  # the quoted value also outgrows Arrow's read block
        monkeypatch.setattr(rawfiles, "_CSV_BLOCK_SIZE", 1 << 16)
        monkeypatch.setattr(rawfiles, "MAX_LINE_BYTES", 1 << 12)
        rows = 3_000
    lines = [HEADER, row(1), row(2, '"I2'), *(row(i) for i in range(3, rows))]
    t = load(tmp_path / "events.csv", "\n".join(lines).encode())
    assert t.accepted["event_id"].tolist() == ["e1"] + [f"e{i}" for i in range(3, rows)]
    assert bad_lines(t) == [(rawfiles.QUOTE_NOT_CLOSED, 3, row(2, '"I2'))]


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (random.Random(0).randbytes(4096), "control characters"),
        (b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(2000), "it is a PNG image"),
        (b"PK\x03\x04" + random.Random(2).randbytes(2000), "ZIP archive"),
        (gzip.compress(HEADER.encode(), mtime=0), "name it events.csv.gz"),
        (f"{HEADER}\n{row(1)}\n".encode("utf-16-le"), "read it as utf-16-le"),
    ],
    ids=["random", "png", "zip", "gzip", "utf-16-without-bom"],
)
def test_binary_file_is_one_sentence_naming_it(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(content)
    with pytest.raises(ContractError) as info:
        load_table(path, EVENTS)
    message = str(info.value)
    assert message.startswith("events.csv is not a text CSV file (") and message.endswith(").")
    assert what in message and "\n" not in message


def test_header_without_a_line_end_is_an_empty_table(tmp_path: Path) -> None:
    t = load(tmp_path / "events.csv", HEADER.encode())  # Arrow alone calls it "too short"
    assert t.rows == 0 and list(t.accepted.columns[:3]) == ["event_time", "channel", "event_type"]


def test_unknown_encoding_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(f"{HEADER}\n{row(1)}\n")
    for encoding in ("klingon", "zlib"):
        with pytest.raises(ValueError, match=f"Unknown text encoding '{encoding}'"):
            read_raw(path, encoding)


def test_omni_validate_binary_file_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_bytes(random.Random(0).randbytes(4096))
    result = omni("validate", "--data", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: events.csv is not a text CSV file (")


def test_omni_validate_reads_cp932_with_encoding(tmp_path: Path) -> None:
    text = f"{HEADER}\n{row(1, '商品')}\n2024-01-01,web\n".encode("cp932")
    (tmp_path / "events.csv").write_bytes(text)
    result = omni("validate", "--data", str(tmp_path), "--encoding", "cp932", "--json")
    assert result.returncode == 0, result.stderr
    assert '"accepted": 1' in result.stdout and '"wrong number of fields": 1' in result.stdout


def test_a_partition_folder_that_cannot_be_read_is_refused_not_left_out(tmp_path: Path) -> None:
    """Regression: os-level errors under a partitioned table were swallowed, and a month the
    process could not read was silently missing from its rows."""
    for month in (1, 2):
        (tmp_path / "events" / f"month={month}").mkdir(parents=True)
        (tmp_path / "events" / f"month={month}" / "part-0.parquet").write_bytes(b"")
    assert len(rawfiles.partition_files(tmp_path / "events")) == 2
    (tmp_path / "events" / "month=2").chmod(0)
    # As root, drop the capabilities that ignore permissions (as any other user has none).
    drop = "-dac_override,-dac_read_search"
    as_user = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]
    events = str(tmp_path / "events")
    script = (
        "from pathlib import Path; from features.rawfiles import partition_files; "
        f"partition_files(Path({events!r}))"
    )
    try:
        result = subprocess.run(
            [*(as_user if os.geteuid() == 0 else []), sys.executable, "-c", script],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        (tmp_path / "events" / "month=2").chmod(0o755)
    assert result.returncode == 1
    assert "month=2 cannot be read (Permission denied), so the events table" in result.stderr


def test_partitions_whose_types_disagree_are_refused_by_both_engines(tmp_path: Path) -> None:
    """Regression: the Dask engine read each piece alone and accepted what the in-process one
    refused (one month's times as text, the next as timestamps)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    months = {
        1: pa.table({"event_time": ["2024-01-01T00:00:00"], "quantity": pa.array([1], pa.int64())}),
        2: pa.table(
            {"event_time": pa.array([pd.Timestamp("2024-02-01")]), "quantity": pa.array([1.5])}
        ),
    }
    for month, table in months.items():
        (tmp_path / "events" / f"month={month}").mkdir(parents=True)
        pq.write_table(table, tmp_path / "events" / f"month={month}" / "part-0.parquet")
    for read in (read_raw, lambda path: rawfiles.parquet_pieces(path, 1000)):
        with pytest.raises(ContractError, match="The Parquet files of events do not agree"):
            read(tmp_path / "events")
    # Types that widen (an integer and a float quantity) are one table either way.
    widening = pa.table({"event_time": ["2024-02-01T00:00:00"], "quantity": pa.array([1.5])})
    pq.write_table(widening, tmp_path / "events" / "month=2" / "part-0.parquet")
    assert len(rawfiles.parquet_pieces(tmp_path / "events", 1000)) == 2
    assert read_raw(tmp_path / "events")[0].num_rows == 2
    # A column named two ways: in-process, both survived the merge and one month's quantities
    # became the default; on Dask each piece was renamed. Both engines refuse it now.
    pq.write_table(
        widening.rename_columns(["event_time", "Quantity"]),
        tmp_path / "events" / "month=2" / "part-0.parquet",
    )
    for read in (read_raw, lambda path: rawfiles.parquet_pieces(path, 1000)):
        with pytest.raises(ContractError, match="name a column 'quantity' and 'Quantity'"):
            read(tmp_path / "events")
    # A symbolic link to a folder would be skipped by the walk: it is refused instead.
    (tmp_path / "events" / "month=2").rename(tmp_path / "elsewhere")
    (tmp_path / "events" / "month=2").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ContractError, match="month=2 is a symbolic link to a folder"):
        rawfiles.partition_files(tmp_path / "events")


def test_utf16_without_its_byte_order_mark_names_the_file_and_the_fix(tmp_path: Path) -> None:
    """Regression: Python's own "UTF-16 stream does not start with BOM", naming no file."""
    text = "event_time,channel,event_type,item_id\n2024-01-01T00:00:00,web,view,I1\n"
    with pytest.raises(ContractError, match=r"events\.csv does not start with the byte-order mark"):
        load(tmp_path / "events.csv", text.encode("utf-16-le"), encoding="utf-16")
    assert len(load(tmp_path / "events.csv", text.encode("utf-16-le"), "utf-16-le").accepted) == 1
