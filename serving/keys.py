"""API keys: created by the CLI, checked by the service; only their hashes are ever stored.

A key reads ``omni_<id>_<secret>``; the file keeps, per id, the SHA-256 of
the secret (a random 256-bit token needs no slow hash), the key's scopes, and its name and
creation time (for ``omni keys list``).

The file is private from its first instant (0600, in a 0700 directory when we create that) and
is replaced atomically, so the service never reads it half-written; a lock on its directory keeps
two ``create_key`` calls from losing each other's key.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

SCOPES = ("recommend", "plan", "stock", "report", "admin")
KEYS_ENV = "OMNI_KEYS_FILE"
DEFAULT_KEYS_FILE = Path(".omni/keys.json")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Characters a key's name may have (printable ones only: ``omni keys list`` shows it).
MAX_NAME = 100


def keys_file() -> Path:
    return Path(os.environ.get(KEYS_ENV, DEFAULT_KEYS_FILE))


def create_key(scopes: list[str], path: Path | None = None, name: str = "") -> str:
    """Make a key with these scopes, store its hash, its ``name`` (what it is for) and when it
    was made, and return the key (shown once)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        which = f"not {', '.join(unknown)}" if unknown else "at least one"
        raise ValueError(f"Scopes must be among {', '.join(SCOPES)}: {which}.")
    if len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"A key's name is at most {MAX_NAME} printable characters.")
    path = path or keys_file()
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(path):
        store = load_keys(path)
        store[key_id] = {
            "sha256": hashlib.sha256(secret.encode()).hexdigest(),
            "scopes": sorted(set(scopes)),
            "name": name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_private(path, json.dumps(store, indent=2))
    return f"omni_{key_id}_{secret}"


def revoke_keys(key_ids: list[str], path: Path | None = None) -> list[str]:
    """Remove these keys (an id, or a whole key: its id is read from it) at once; returns the
    ids that were there. The service refuses them from its next request."""
    path = path or keys_file()
    wanted = {key_id(k) for k in key_ids}
    if not path.exists():
        return []
    with _locked(path):
        store = load_keys(path)
        found = sorted(wanted & set(store))
        if found:
            kept = {k: v for k, v in store.items() if k not in wanted}
            write_private(path, json.dumps(kept, indent=2))
    return found


def key_id(key: str) -> str:
    """A key's id: the key itself when it is an id, else the field after ``omni_``."""
    parts = key.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "omni" else key


class KeysFileError(ValueError):
    """The keys file cannot be read or is not what ``create_key`` writes."""


def load_keys(path: Path | None = None) -> dict[str, dict]:
    """The keys file's entries by key id ({} when there is no file).

    Raises:
        KeysFileError: the file cannot be read, or an entry lacks a SHA-256 or known scopes
            (one sentence naming the file; a hand edit or a copy cut short).
    """
    path = path or keys_file()
    if not path.exists():
        return {}
    try:
        store = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeysFileError(f"The keys file {path} cannot be read: {exc}.") from None
    if not isinstance(store, dict):
        raise KeysFileError(f"The keys file {path} is not a JSON object of keys by id.")
    for key_id, entry in store.items():
        entry = entry if isinstance(entry, dict) else {}
        digest, scopes = entry.get("sha256"), entry.get("scopes")
        if not (
            isinstance(digest, str)
            and _SHA256.fullmatch(digest)
            and isinstance(scopes, list)
            and scopes
            and all(scope in SCOPES for scope in scopes)
        ):
            raise KeysFileError(
                f"The keys file {path} has an entry {key_id!r} without a SHA-256 and known scopes."
            )
    return store


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive use of the keys file between its read and its replacement, across processes
    (an flock on its directory: no lock file to leave behind)."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically: a 0600 temporary file beside it, synced, renamed."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)  # exactly 0600, whatever the umask
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def scopes_of(key: str, keys: dict[str, dict]) -> list[str] | None:
    """The scopes of a presented key, or None when it is not a valid key (constant-time check)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "omni":
        return None
    entry = keys.get(parts[1])
    digest = hashlib.sha256(parts[2].encode()).hexdigest()
    expected = entry["sha256"] if entry else "0" * 64
    valid = hmac.compare_digest(digest, expected)
    return list(entry["scopes"]) if entry and valid else None
