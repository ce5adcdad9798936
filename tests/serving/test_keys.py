"""The keys file: private from the first instant, never seen half-written, no key ever lost."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.keys import create_key, load_keys, scopes_of


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Threads swap as often as they can, so that a reader meets a writer mid-write."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_a_new_keys_file_and_its_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / ".omni" / "keys.json"
    key = create_key(["plan"], path)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert scopes_of(key, load_keys(path)) == ["plan"]
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]  # no temporary file left


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o750)
    directory.chmod(0o750)
    create_key(["plan"], directory / "keys.json")
    assert mode(directory) == 0o750 and mode(directory / "keys.json") == 0o600


def test_a_reader_never_sees_a_partial_or_readable_keys_file(
    tmp_path: Path, busy_switching: None
) -> None:
    """Each round a fresh file: the reader must never see it empty, half-written or 0644."""
    rounds, per_round = 60, 5
    current: list[Path] = []
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            if not current:
                continue
            path = current[-1]
            try:
                file_mode = mode(path)
                text = path.read_text()
            except FileNotFoundError:
                continue
            if file_mode != 0o600:
                seen.append(f"mode {file_mode:o}")
            try:
                json.loads(text)
            except json.JSONDecodeError:
                seen.append(f"invalid JSON: {text[:40]!r}")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(rounds):
            current.append(tmp_path / f"round-{round_}" / "keys.json")
            for _ in range(per_round):
                create_key(["recommend"], current[-1])
    finally:
        done.set()
        reader.join()
    assert not seen, f"{len(seen)} bad reads, e.g. {sorted(set(seen))[:3]}"


def test_keys_created_at_the_same_time_all_survive(tmp_path: Path, busy_switching: None) -> None:
    path = tmp_path / "keys.json"
    first = create_key(["admin"], path)
    made: list[str] = []
    errors: list[BaseException] = []

    def create(n: int) -> None:
        try:
            for _ in range(n):
                made.append(create_key(["recommend", "plan"], path))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    writers = [threading.Thread(target=create, args=(15,)) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert not errors, errors
    keys = load_keys(path)
    assert len(keys) == 1 + 60
    assert scopes_of(first, keys) == ["admin"]
    assert all(scopes_of(key, keys) == ["plan", "recommend"] for key in made)
    assert mode(path) == 0o600


def test_a_failed_write_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.json"
    first = create_key(["admin"], path)
    before = path.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        create_key(["plan"], path)
    monkeypatch.undo()
    assert path.read_bytes() == before and scopes_of(first, load_keys(path)) == ["admin"]
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]  # no temporary file left


def test_keys_are_listed_by_name_and_revoked_by_id_or_whole_key(tmp_path: Path) -> None:
    """Regression: rotating a key meant pasting a Python heredoc, and keys had no name or date,
    so nobody could tell which to revoke; `make demo` piled up keys that stayed valid."""
    from tests.processes import omni

    env = {"OMNI_KEYS_FILE": str(tmp_path / "keys.json")}
    made = omni("keys", "create", "--scope", "recommend", "--name", "till-app", env=env)
    assert made.returncode == 0, made.stderr
    till = made.stdout.strip()
    other = create_key(["plan"], tmp_path / "keys.json")
    # Regression: the refusal listed every scope asked for, not the one that is none.
    with pytest.raises(ValueError, match=r"Scopes must be among .*: not events\.$"):
        create_key(["recommend", "events", "report"], tmp_path / "keys.json")
    with pytest.raises(ValueError, match=r": at least one\.$"):
        create_key([], tmp_path / "keys.json")
    listed = omni("keys", "list", env=env)
    till_id, other_id = till.split("_")[1], other.split("_")[1]
    assert till_id in listed.stdout and "till-app" in listed.stdout and "recommend" in listed.stdout
    assert till.split("_", 2)[2] not in listed.stdout  # never a key, only ids
    gone = omni("keys", "revoke", till, env=env)  # the whole key names its id
    assert gone.returncode == 0 and f"Removed {till_id}" in gone.stdout
    keys = load_keys(tmp_path / "keys.json")
    assert set(keys) == {other_id} and scopes_of(till, keys) is None
    assert mode(tmp_path / "keys.json") == 0o600
    again = omni("keys", "revoke", till_id, other_id, env=env)
    said = " ".join(again.stderr.split())
    assert again.returncode == 2 and f"No key {till_id} in" in said
    assert f"removed {other_id}" in said
    assert load_keys(tmp_path / "keys.json") == {}


def test_a_demo_run_revokes_the_keys_the_last_one_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from experiments.cli.service import demo_keys

    monkeypatch.setenv("OMNI_KEYS_FILE", str(tmp_path / "keys.json"))
    kept = create_key(["admin"], name="ops")
    first = demo_keys()
    second = demo_keys()
    keys = load_keys()
    assert len(keys) == 1 + len(second)  # the operator's key and this run's
    assert all(scopes_of(key, keys) is None for key in first.values())
    assert scopes_of(second["planner"], keys) == ["plan", "report"]
    assert scopes_of(kept, keys) == ["admin"]


def test_a_key_name_is_short_and_printable_and_a_hand_edited_one_is_shown_safely(
    tmp_path: Path,
) -> None:
    """Regressions: a name with an escape sequence reached the terminal raw through keys list;
    a hand-edited name of 5 stopped keys list with an internal error."""
    from tests.processes import omni

    path = tmp_path / "keys.json"
    for name in ("a\nb\x1b[31mRED", "x" * 101):
        with pytest.raises(ValueError, match="at most 100 printable characters"):
            create_key(["plan"], path, name=name)
    create_key(["plan"], path, name="till-app")
    store = json.loads(path.read_text())
    (key_id,) = store
    store[key_id]["name"] = 5
    store["0" * 12] = {**store[key_id], "name": "evil\x1b[2J"}
    path.write_text(json.dumps(store))
    listed = omni("keys", "list", env={"OMNI_KEYS_FILE": str(path)})
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "evil [2J" in listed.stdout and " 5 " in listed.stdout
