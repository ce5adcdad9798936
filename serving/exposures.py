"""The exposure log: what every /recommend and /offers answer showed, written in batches off the
request path.

A request only appends a tuple to a list; a background thread writes what has gathered every
:data:`FLUSH_SECONDS` (or sooner, at :data:`BATCH` rows) in one transaction. Exposures are
measurement, not orders: when the store is down they wait, up to :data:`BACKLOG` rows (the
oldest are dropped beyond, with a warning), and a crash loses at most the last second's.
"""

from __future__ import annotations

import logging
import os
import threading

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
    return os.environ.get(EXPOSURES_ENV, "on").lower() not in ("off", "0", "false")


class ExposureWriter:
    """Gathers exposure rows (:data:`features.eventlog.EXPOSURE_COLUMNS`) and writes them in
    batches from one daemon thread."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._rows: list[tuple] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="exposures", daemon=True)
        self._thread.start()

    def record(self, row: tuple) -> None:
        """Queue one answer's exposure; never blocks on the store."""
        with self._lock:
            self._rows.append(row)
            if len(self._rows) > BACKLOG:
                del self._rows[: len(self._rows) - BACKLOG]
                self._dropped += 1
            full = len(self._rows) >= BATCH
        if full:
            self._wake.set()

    def flush(self) -> None:
        """Write everything queued now (the thread does so by itself; for tests and stops)."""
        with self._lock:
            rows, self._rows = self._rows, []
        try:
            self._log.append_exposures(rows)
        except EventStoreUnavailable:
            with self._lock:  # back in front, to be written when the store answers
                self._rows[:0] = rows
            raise

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            try:
                self.flush()
            except EventStoreUnavailable:
                pass  # /readyz says so; the rows wait
            except Exception:
                logger.exception("Could not write exposures; they wait for the next attempt.")
            if self._dropped:
                logger.warning("Dropped %d exposures: the event store is down.", self._dropped)
                self._dropped = 0
