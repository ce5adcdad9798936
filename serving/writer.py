"""Group commit for ``/events``: what concurrent requests post is stored in one transaction.

A till posting one event per request would otherwise pay a whole commit (an fsync) and a whole
state update per event. Here each request queues its events; whichever request holds the commit
lock stores everything queued so far in one transaction, applies it to the served state in one
batch, and hands every request its own answer. A request returns only after the transaction
that holds its events has committed, so every acknowledged event is on disk (kill -9 loses none).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.eventlog import EventLog, events_frame

logger = logging.getLogger("omnichannel_ml")


@dataclass
class _Pending:
    rows: list[tuple]
    stored: np.ndarray | None = None
    error: Exception | None = None


class GroupWriter:
    """Stores validated events in groups; ``on_stored(events, seqs)`` sees each stored group."""

    def __init__(
        self, log: EventLog, on_stored: Callable[[pd.DataFrame, np.ndarray], None]
    ) -> None:
        self._log = log
        self._on_stored = on_stored
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    def write(self, rows: list[tuple]) -> np.ndarray:
        """Store checked event rows (:func:`features.eventlog.check_events`); committed when
        this returns.

        Returns:
            Per event, True if stored now, False if its ``event_id`` was already recorded.

        Raises:
            EventStoreUnavailable: when the store cannot take them (nothing of them is stored).
        """
        mine = _Pending(rows)
        with self._queue_lock:
            self._queue.append(mine)
        with self._commit_lock:
            if mine.stored is None and mine.error is None:  # no one took it along: lead
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit(group)
        if mine.error is not None:
            raise mine.error
        assert mine.stored is not None
        return mine.stored

    def _commit(self, group: list[_Pending]) -> None:
        try:
            events = events_frame([row for pending in group for row in pending.rows])
            stored, seqs = self._log.append(events)
        except Exception as exc:
            for pending in group:
                pending.error = exc
            return
        start = 0
        for pending in group:  # answered first: these events are committed, whatever follows
            pending.stored = stored[start : start + len(pending.rows)]
            start += len(pending.rows)
        try:
            self._on_stored(events[stored], seqs)
        except Exception:  # they are in the log: the next catch-up applies them
            logger.exception("Could not apply %d stored events yet.", int(stored.sum()))
