"""Group commit: concurrent requests' events stored together, each request told its own fate."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.eventlog import EventLog, check_events
from features.schema import Bounds
from serving.writer import GroupWriter

EVENT = {"event_time": "2026-11-23T10:00:00", "channel": "app", "event_type": "view",
         "item_id": "I000010"}  # fmt: skip


def test_concurrent_requests_share_commits_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    groups: list[int] = []

    def applied(events: pd.DataFrame, seqs: np.ndarray) -> None:
        groups.append(len(events))
        time.sleep(0.005)  # applying takes a while: requests arriving meanwhile queue up

    writer = GroupWriter(log, applied)
    answers: dict[int, np.ndarray] = {}

    def post(i: int) -> None:
        # Request i repeats request i - 1's second id: stored once, by whichever came first.
        ids = [f"r{i}", f"shared-{i // 2}"]
        rows, _ = check_events([{**EVENT, "event_id": e} for e in ids], Bounds.from_env())
        answers[i] = writer.write(rows)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = pd.Series({i: int(a.sum()) for i, a in answers.items()})
    assert all(answers[i][0] for i in answers)  # every own id stored
    assert stored.sum() == 40 + 20 == log.last_seq() == sum(groups)
    assert log.event_ids() == {f"r{i}" for i in range(40)} | {f"shared-{i}" for i in range(20)}
    assert len(groups) < 40  # some requests rode along with another's commit
