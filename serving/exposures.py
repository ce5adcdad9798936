"""The exposure log: what every /recommend and /offers answer showed, written in batches off the
request path.

A request only appends a tuple to a list; a background thread writes what has gathered every
:data:`FLUSH_SECONDS` (or sooner, at :data:`BATCH` rows) in one transaction. Exposures are
measurement, not orders: when the store is down they wait, up to :data:`BACKLOG` rows (the
oldest are dropped beyond, with a warning); a stop writes what is queued, a crash loses at most
the last second's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque

from features.eventlog import EventLog, EventStoreUnavailable

logger = logging.getLogger("omnichannel_ml")

FLUSH_SECONDS = 1.0
BATCH = 1000
BACKLOG = 100_000
CONTROL_SHARE_ENV = "OMNI_CONTROL_SHARE"
EXPERIMENT_ENV = "OMNI_EXPERIMENT"
EXPOSURES_ENV = "OMNI_EXPOSURES"


def control_share() -> float:
    """The share of customers in the control arm: ``$OMNI_CONTROL_SHARE`` (default 0: none)."""
    text = os.environ.get(CONTROL_SHARE_ENV, "0")
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0 <= share <= 0.5:
        raise ValueError(f"{CONTROL_SHARE_ENV}={text!r} is not a share in [0, 0.5].")
    return share


def experiment() -> str:
    """The experiment's name (``$OMNI_EXPERIMENT``, default ``default``): renaming it draws new
    arms."""
    return os.environ.get(EXPERIMENT_ENV, "default")


def enabled() -> bool:
    """Whether answers are recorded (``$OMNI_EXPOSURES``, default on; ``off`` for none)."""
    text = os.environ.get(EXPOSURES_ENV, "on")
    switch = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
    if text.strip().lower() not in switch:
        raise ValueError(f"{EXPOSURES_ENV}={text!r} is neither on nor off.")
    return switch[text.strip().lower()]


class ExposureWriter:
    """Gathers exposure rows (:data:`features.eventlog.EXPOSURE_COLUMNS`) and writes them in
    batches from one daemon thread (and at shutdown: :meth:`flush`)."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._rows: deque[tuple] = deque(maxlen=BACKLOG)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="exposures", daemon=True)
        self._thread.start()

    def record(self, row: tuple) -> None:
        """Queue one answer's exposure; never blocks on the store."""
        with self._lock:
            self._dropped += len(self._rows) == BACKLOG  # the oldest makes room
            self._rows.append(row)
            full = len(self._rows) >= BATCH
        if full:
            self._wake.set()

    def flush(self) -> None:
        """Write everything queued now. When the store is down the rows go back in front (and
        EventStoreUnavailable is raised); a row the store refuses is dropped alone, logged."""
        with self._lock:
            rows = list(self._rows)
            self._rows.clear()
        try:
            self._log.append_exposures(rows)
        except EventStoreUnavailable:
            with self._lock:
                self._dropped += max(len(rows) + len(self._rows) - BACKLOG, 0)
                self._rows.extendleft(reversed(rows))  # back in front; the newest kept
            raise
        except Exception:
            self._one_by_one(rows)

    def _one_by_one(self, rows: list[tuple]) -> None:
        refused = 0
        for row in rows:
            try:
                self._log.append_exposures([row])
            except EventStoreUnavailable:
                raise
            except Exception:
                refused += 1
        logger.warning("The event store refused %d exposure(s); the others are written.", refused)

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            try:
                self.flush()
            except EventStoreUnavailable:
                pass  # /readyz says so; the rows wait
            except Exception:
                logger.exception("Could not write exposures.")
            with self._lock:
                dropped, self._dropped = self._dropped, 0
            if dropped:
                logger.warning("Dropped %d exposures: the event store was down too long.", dropped)
