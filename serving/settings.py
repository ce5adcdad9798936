"""The service's settings, read from the environment, checked together: ``omni serve`` and
``omni demo`` check them before they start the service, so that a wrong value is one sentence
and exit 2, not a worker that fails to start again and again with the sentence in its log; the
service reads each again when it starts (docs/operations.md, What the service needs)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from features.eventlog import EVENTS_URL_ENV, EventLog, first_line
from features.schema import Bounds
from serving.exposures import control_share
from serving.exposures import enabled as exposures_enabled
from serving.gate import body_limit
from serving.keys import KEYS_ENV
from serving.state import safety_stock


def bento_paths() -> None:
    """In a Bento (served from its ``src/``, beside its ``bento.yaml``), the event log and the
    keys file must be named: their defaults, relative to the working directory, would be inside
    the Bento store or the image — a new log for every build, lost with it, and no keys."""
    if not (Path.cwd().parent / "bento.yaml").is_file():
        return
    unset = [name for name in (EVENTS_URL_ENV, KEYS_ENV) if not os.environ.get(name)]
    if unset:
        raise ValueError(
            f"A Bento needs {' and '.join(unset)} set: the default paths would be inside the "
            "Bento, lost with it."
        )


#: Each reads one or more settings and raises ValueError, one sentence, on a wrong value.
CHECKS: tuple[Callable[[], object], ...] = (
    EventLog.from_env,  # the URL only: nothing is opened
    Bounds.from_env,
    control_share,
    exposures_enabled,
    safety_stock,
    body_limit,
    bento_paths,
)


def problems() -> list[str]:
    """One sentence for each setting the service would refuse to start with."""
    found = []
    for check in CHECKS:
        try:
            check()
        except ValueError as exc:
            found.append(first_line(exc))
    return found
