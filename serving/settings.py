"""The service's settings, read from the environment, checked together: ``omni serve`` and
``omni demo`` check them before they start the service, so that a wrong value is one sentence
and exit 2, not a worker that fails to start again and again with the sentence in its log; the
service reads each again when it starts (docs/operations.md, What the service needs)."""

from __future__ import annotations

from collections.abc import Callable

from features.eventlog import EventLog, first_line
from features.schema import Bounds
from serving.exposures import control_share
from serving.exposures import enabled as exposures_enabled
from serving.gate import body_limit
from serving.state import safety_stock

#: Each reads one or more settings and raises ValueError, one sentence, on a wrong value.
CHECKS: tuple[Callable[[], object], ...] = (
    EventLog.from_env,  # the URL only: nothing is opened
    Bounds.from_env,
    control_share,
    exposures_enabled,
    safety_stock,
    body_limit,
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
