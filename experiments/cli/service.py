"""``omni serve``, ``omni build``, ``omni demo`` and ``omni keys``: running the service, building
it into a Bento, and its API keys."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from experiments.cli.app import (
    Port,
    UsageError,
    app,
    err,
    events_app,
    identity_config,
    keys_app,
    out,
)


@keys_app.command("create")
def keys_create_cmd(
    scope: Annotated[
        list[str],
        typer.Option("--scope", help="recommend, plan, stock, report or admin (repeatable)."),
    ],
    name: Annotated[str, typer.Option(help="What the key is for (shown by keys list).")] = "",
) -> None:
    """Create a key and print it once; only its hash is kept (in $OMNI_KEYS_FILE)."""
    from serving.keys import create_key, keys_file

    key = create_key(scope, name=name)
    out.print(key, highlight=False, soft_wrap=True)
    err.print(f"Stored its hash in {keys_file()}; this is the only time the key is shown.")


@keys_app.command("list")
def keys_list_cmd() -> None:
    """Every key's id, name, scopes and creation time (never the key: only its hash is kept)."""
    from rich.table import Table

    from serving.keys import keys_file, load_keys

    keys = load_keys()
    table = Table("id", "name", "scopes", "created", title=f"{len(keys)} key(s) in {keys_file()}")
    for key_id, entry in keys.items():
        name, created = (_shown(entry.get(field, "")) for field in ("name", "created"))
        table.add_row(key_id, name, ", ".join(entry["scopes"]), created)
    out.print(table)


def _shown(value: object) -> str:
    """A keys file's field as a terminal may show it: a hand edit's number as text, a control
    character (an escape sequence) as a space, at most 100 characters."""
    return "".join(c if c.isprintable() else " " for c in str(value))[:100]


@keys_app.command("revoke")
def keys_revoke_cmd(
    key: Annotated[list[str], typer.Argument(help="Key ids (or whole keys) to remove.")],
) -> None:
    """Remove keys: the service refuses them (401) from its next request, no restart."""
    from serving.keys import key_id, keys_file, revoke_keys

    removed = revoke_keys(key)
    unknown = sorted({key_id(k) for k in key} - set(removed))
    if unknown:
        raise UsageError(
            f"No key {', '.join(unknown)} in {keys_file()}"
            + (f"; removed {', '.join(removed)}." if removed else "; nothing was removed.")
        )
    out.print(f"Removed {', '.join(removed)} from {keys_file()}.", highlight=False)


#: The two stores of ``omni events copy`` and ``move``.
Target = Annotated[
    str, typer.Option("--to", help="The empty store: postgresql://... or sqlite:///PATH.")
]
Source = Annotated[
    str | None, typer.Option("--from", help="The log to copy (default: $OMNI_EVENTS_URL).")
]


@events_app.command("copy")
def events_copy_cmd(to: Target, source: Source = None) -> None:
    """Copy the whole event log — events, stock movements, exposures, positions kept — into an
    empty store (a copy to look at, or a backup); the log itself is left as it is."""
    _copy_log(to, source, seal=False)


@events_app.command("move")
def events_move_cmd(to: Target, source: Source = None) -> None:
    """Move the whole event log into an empty store — e.g. from SQLite to PostgreSQL when the
    service grows: copied as by copy, then the old log refuses every new row, so a service
    left running on it cannot acknowledge what the new one would not hold."""
    _copy_log(to, source, seal=True)


def _copy_log(to: str, source: str | None, seal: bool) -> None:
    from features.eventlog import EventLog

    if source is not None and not source.strip():
        raise UsageError("--from is empty; leave it out to copy $OMNI_EVENTS_URL's log.")
    origin = (
        EventLog(source, setting="--from", create=False)
        if source is not None
        else EventLog.from_env(create=False)
    )
    target = EventLog(to, setting="--to")
    try:
        counts = origin.copy_to(target, seal=seal)
    finally:
        origin.close()
        target.close()
    copied = ", ".join(f"{n:,} {table}" for table, n in counts.items())
    then = (
        f"{origin.url} now refuses new rows (kept as a backup). Point OMNI_EVENTS_URL at the "
        "new store and start the service."
        if seal
        else f"{origin.url} is unchanged."
    )
    out.print(
        f"Copied {copied} from {origin.url} to {target.url}, positions kept. {then}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("serve")
def serve_cmd(port: Port = 3000) -> None:
    """Start the BentoML service on the MLflow champions (foreground; Ctrl-C stops it)."""
    from experiments.deploy.process import serve_command

    _preflight(port)
    command = serve_command(port)
    os.execv(command[0], command)


def _preflight(port: int) -> None:
    """What would stop the service's start, said before it starts: its settings (one sentence
    each) and a port already in use."""
    from serving.settings import problems

    wrong = problems()
    if wrong:
        raise UsageError(" ".join(wrong))
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"Port {port} on 127.0.0.1 is in use; choose another with --port."
                ) from None
            raise UsageError(
                f"Port {port} on 127.0.0.1 cannot be opened: {exc.strerror}."
            ) from None


@app.command("build")
def build_cmd(
    bentofile: Annotated[
        Path | None, typer.Option(help="Build options (default: the project's bentofile.yaml).")
    ] = None,
    version: Annotated[str | None, typer.Option(help="The Bento's version.")] = None,
) -> None:
    """Build a Bento serving the current MLflow champions, pinned: it serves exactly those
    versions, with no MLflow at run time."""
    from experiments.deploy.bento import BENTOFILE, build

    built = build(bentofile or BENTOFILE, version)
    for model in built.models:
        out.print(f"pinned {model.name} v{model.version} (BentoML model {model.model_tag})")
    out.print(f"built Bento {built.tag}", highlight=False)
    err.print(
        "Serve it with OMNI_SALT (training's), OMNI_EVENTS_URL and OMNI_KEYS_FILE set (their "
        f"defaults would be inside the Bento): bentoml serve {built.tag}; make an image with: "
        f"bentoml containerize {built.tag}",
        highlight=False,
    )


@app.command("demo")
def demo_cmd(port: Port = 3000) -> None:
    """Train both models on data_samples, register the champions, create demo keys, start the
    service and print ready-to-paste curl examples; it keeps serving until Ctrl-C."""
    from experiments.deploy import process as serve
    from serving.keys import write_private

    identity_config()
    _preflight(port)  # before minutes of training
    out.print(f"[bold]1/3[/] training both models on {serve.DEMO_DATA} ...", markup=True)
    for message in serve.train_demo_models():
        out.print(message)
    keys = demo_keys()
    keys_out = Path(".omni/demo/keys.json")
    keys_out.parent.mkdir(parents=True, exist_ok=True)
    write_private(keys_out, json.dumps(keys, indent=2))  # the keys themselves: 0600 from the start
    out.print(f"[bold]2/3[/] created demo keys (saved for you in {keys_out}).", markup=True)
    out.print(f"[bold]3/3[/] starting the service on port {port} ...", markup=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does, workers too
    process = serve.start(port)
    try:
        serve.wait_ready(port, process)
        out.print(
            f"\n[bold green]ready[/] on http://127.0.0.1:{port} (docs: /docs). Try:\n", markup=True
        )
        for example in serve.curl_examples(port, keys, customer_key="LC-00009806"):
            out.print(example, highlight=False, soft_wrap=True)
        out.print(
            f"\nThe planner page: http://127.0.0.1:{port}/ui with the planner key (plan and "
            f"report scopes): {keys['planner']}",
            highlight=False,
            soft_wrap=True,
        )
        out.print("\nThe service keeps running; Ctrl-C stops it.", highlight=False)
        sys.stdout.flush()
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.stop(process)  # the workers too: they run in sessions of their own


#: The name of the keys ``omni demo`` makes: the next run revokes them.
DEMO = "demo"


def demo_keys() -> dict[str, str]:
    """One key per scope and a planner's (plan and report, what the page needs), named
    :data:`DEMO`; the keys an earlier demo made are revoked first, not left valid."""
    from serving.keys import SCOPES, create_key, load_keys, revoke_keys

    revoke_keys([key_id for key_id, entry in load_keys().items() if entry.get("name") == DEMO])
    keys = {scope: create_key([scope], name=DEMO) for scope in SCOPES}
    keys["planner"] = create_key(["plan", "report"], name=DEMO)
    return keys


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
