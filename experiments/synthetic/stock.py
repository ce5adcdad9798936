"""A day of stock at generated stores, told to the service step by step, with the truth beside it.

:func:`scenario` plays a chain's stock operations — deliveries, transfers between stores, till
sales and returns, damage, stock counts that find the books off, and click-and-collect orders
that are placed, cancelled or picked up — keeping its own books (plain dictionaries, nothing
shared with the service's ledger). :func:`replay` sends each step to the service as a till, a
WMS or an order system would, and after every step compares the service's available-to-promise
of the item with the truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: ``post(path, body) -> (status, answer)``: one call to the service.
Post = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


@dataclass
class Step:
    """One operation: what to send, the status it must get, and the truth after it."""

    kind: str
    path: str
    body: dict[str, Any]
    item_id: str
    expect: int = 200
    #: After this step, per node holding a record of the item: (on hand, available).
    truth: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class _Books:
    on_hand: dict[tuple[str, str], float]
    reserved: dict[tuple[str, str], float]
    open: dict[str, tuple[str, str, float]]  # reservation id -> (node, item, units)

    def available(self, pair: tuple[str, str]) -> float:
        return max(self.on_hand.get(pair, 0.0) - self.reserved.get(pair, 0.0), 0.0)

    def of(self, item: str) -> dict[str, tuple[float, float]]:
        return {
            node: (units, self.available((node, it)))
            for (node, it), units in self.on_hand.items()
            if it == item
        }


def scenario(
    inventory: pd.DataFrame, stores: list[str], steps: int = 300, seed: int = 0
) -> list[Step]:
    """``steps`` operations on the items of ``inventory`` (latest ``store_id, item_id,
    on_hand`` per pair, as the service was trained on) at ``stores``; each step carries the
    truth after it. Times are stamped when the step is sent (:func:`replay`)."""
    rng = np.random.default_rng(seed)
    items = sorted(inventory["item_id"].astype(str).unique())[:20]  # a few, so steps meet
    known = inventory[inventory["item_id"].astype(str).isin(items)]
    books = _Books(
        on_hand={
            (str(s), str(i)): float(u)
            for s, i, u in known[["store_id", "item_id", "on_hand"]].itertuples(index=False)
        },
        reserved={},
        open={},
    )
    kinds = ["delivery", "transfer", "sale", "return", "damage", "count", "order", "cancel",
             "pickup"]  # fmt: skip
    chances = np.array([3, 2, 6, 1, 1, 2, 4, 1, 2], dtype=float)
    played: list[Step] = []
    counter = 0
    while len(played) < steps:
        kind = str(rng.choice(kinds, p=chances / chances.sum()))
        item, store = str(rng.choice(items)), str(rng.choice(stores))
        pair = (store, item)
        counter += 1
        key = f"sim-{seed}-{counter}"
        step: Step | None = None
        if kind == "delivery":
            units = float(rng.integers(1, 25))
            books.on_hand[pair] = books.on_hand.get(pair, 0.0) + units
            step = _movements(kind, item, [("receipt", store, units, key)])
        elif kind in ("transfer", "damage", "sale") and books.available(pair) >= 1:
            units = float(rng.integers(1, int(books.available(pair)) + 1))
            books.on_hand[pair] -= units
            if kind == "transfer":
                other = str(rng.choice([s for s in stores if s != store]))
                books.on_hand[(other, item)] = books.on_hand.get((other, item), 0.0) + units
                step = _movements(
                    kind, item,
                    [("transfer_out", store, units, f"{key}-out"),
                     ("transfer_in", other, units, f"{key}-in")],
                )  # fmt: skip
            elif kind == "damage":
                step = _movements(kind, item, [("adjustment", store, -units, key)])
            else:
                step = _event(kind, item, store, "purchase", units, key)
        elif kind == "return" and pair in books.on_hand:
            books.on_hand[pair] += 1.0
            step = _event(kind, item, store, "return", 1.0, key)
        elif kind == "count" and pair in books.on_hand:
            # The shelf is rarely what the books say: the count is the truth from now on.
            found = max(books.on_hand[pair] + float(rng.integers(-2, 3)), 0.0)
            books.on_hand[pair] = found
            step = _movements(kind, item, [("count", store, found, key)])
        elif kind == "order":
            units = float(rng.integers(1, 3))
            fits = units <= books.available(pair)
            if fits:
                books.reserved[pair] = books.reserved.get(pair, 0.0) + units
                books.open[key] = (store, item, units)
            body = {"reservation_id": key, "node_id": store, "item_id": item,
                    "quantity": int(units)}  # fmt: skip
            step = Step(kind, "/reservations", body, item, 200 if fits else 409)
        elif kind in ("cancel", "pickup") and books.open:
            reservation = str(rng.choice(sorted(books.open)))
            store, item, units = books.open.pop(reservation)
            books.reserved[(store, item)] -= units
            if kind == "pickup":
                books.on_hand[(store, item)] -= units
            path = "/reservations/release" if kind == "cancel" else "/reservations/fulfil"
            step = Step(kind, path, {"reservation_id": reservation}, item)
        if step is not None:
            step.truth = books.of(step.item_id)
            played.append(step)
    return played


def _movements(kind: str, item: str, rows: list[tuple[str, str, float, str]]) -> Step:
    movements = [
        {"movement_type": t, "node_id": node, "item_id": item, "quantity": units,
         "movement_id": key}
        for t, node, units, key in rows
    ]  # fmt: skip
    return Step(kind, "/movements", {"movements": movements}, item)


def _event(kind: str, item: str, store: str, event_type: str, units: float, key: str) -> Step:
    event = {"channel": "store", "event_type": event_type, "item_id": item, "quantity": units,
             "store_id": store, "event_id": key}  # fmt: skip
    return Step(kind, "/events", {"events": [event]}, item)


@dataclass
class Report:
    steps: int
    by_kind: dict[str, int]
    refused_as_expected: int
    #: Steps after which the service's on hand or ATP of the item differed from the truth.
    mismatches: list[str]
    #: Steps after which the item was shown unavailable online while a store had it.
    unavailable_online_while_in_store: int


def replay(post: Post, steps: list[Step]) -> Report:
    """Send each step (stamped now), check its status, then ask ``/availability`` for its item
    and compare every node with the truth."""
    mismatches: list[str] = []
    refused = unavailable = 0
    by_kind: dict[str, int] = {}
    for number, step in enumerate(steps, start=1):
        body = _stamped(step)
        status, answer = post(step.path, body)
        by_kind[step.kind] = by_kind.get(step.kind, 0) + 1
        if status != step.expect:
            mismatches.append(f"step {number} ({step.kind}): {status} not {step.expect}: {answer}")
            continue
        refused += status == 409
        status, seen = post("/availability", {"item_ids": [step.item_id]})
        shown = seen["items"][0]
        nodes = {n["node_id"]: (n["on_hand"], n["available"]) for n in shown["nodes"]}
        if nodes != step.truth:
            mismatches.append(f"step {number} ({step.kind}): {nodes} not {step.truth}")
        in_store = any(available > 0 for _, available in step.truth.values())
        unavailable += in_store and not shown["available_online"]
    return Report(len(steps), by_kind, refused, mismatches, unavailable)


def _stamped(step: Step) -> dict[str, Any]:
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).isoformat()
    if step.path == "/movements":
        return {"movements": [{**m, "movement_time": now} for m in step.body["movements"]]}
    if step.path == "/events":
        return {"events": [{**e, "event_time": now} for e in step.body["events"]]}
    return step.body
