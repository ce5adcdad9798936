"""Batch recommendations: the list the service would answer every customer the recommender
champion knows, for a CRM or marketing send.

The champion, its business rules and what they filter by are loaded as the service loads them
(:func:`serving.state.load_state`), with every event and stock movement logged since training
replayed, and each list comes from :func:`models.rules.top_for_customer` — so a customer's rows
are what ``/recommend`` would answer them at ``as_of`` (without context items; the personal list
even for a customer of the A/B control arm, whose arm is given beside it). On a Dask cluster the
customers are scored in chunks on the workers by the same function
(:func:`experiments.pipelines.distributed.recommend_on`), with the same result.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from features.eventlog import EventLog
from features.measurement import arms
from models.rules import recommend_with_rules
from serving.exposures import control_share, experiment
from serving.state import ServingState, load_state


def served_state() -> ServingState:
    """The champions as the service loads them (``@champion``, ``$OMNI_EVENTS_URL``), caught up
    with the event log: a purchase posted since training counts, as it does in ``/recommend``."""
    state = load_state()
    log = EventLog.from_env()
    try:
        state.catch_up(log)
    finally:
        log.close()
    return state


def batch_recommendations(
    state: ServingState,
    n: int = 10,
    *,
    as_of: pd.Timestamp,
    channel: str | None = None,
    store_id: str | None = None,
    new_only: bool = False,
    client: Any = None,
) -> pd.DataFrame:
    """Every known customer's best ``n`` items (``customer_id, item_id, score, rank, fallback,
    arm, model_version, as_of``), customers in id order; on ``client``'s cluster when given.

    ``as_of`` is the time the lists are for (a repurchasable item bought shortly before moves
    down); ``channel``, ``store_id`` and ``new_only`` are ``/recommend``'s: at a store, only
    what that store has; elsewhere, what any node has; with ``new_only``, none of the items the
    customer ever bought. ``arm`` is the customer's A/B arm as the service draws
    it: the service shows ``control`` the popular list, so a send that must leave the control
    group untouched filters on it.

    Raises:
        ValueError: a channel or store the service would refuse (404).
    """
    if refusal := state.refusal(channel, store_id):
        raise ValueError(refusal)
    customers = state.recommender.customer_ids_.sort_values()
    ask: dict[str, Any] = {
        "n": n, "now": as_of, "channel": channel, "store_id": store_id, "new_only": new_only
    }  # fmt: skip
    if client is None:
        recs = recommend_with_rules(state.recommender, state.rules, customers, **ask)
    else:
        from experiments.pipelines.distributed import recommend_on

        recs = recommend_on(client, state.recommender, state.rules, customers, **ask)
    arm = dict(zip(customers, arms(list(customers), control_share(), experiment()), strict=True))
    return recs.assign(
        arm=recs["customer_id"].map(arm), model_version=state.recommender_version, as_of=as_of
    )


def score_recommender(
    n: int = 10,
    *,
    as_of: pd.Timestamp,
    channel: str | None = None,
    store_id: str | None = None,
    new_only: bool = False,
    engine: str = "inprocess",
) -> pd.DataFrame:
    """:func:`batch_recommendations` of the served champion (:func:`served_state`), in this
    process or (``engine`` ``dask``) on ``$OMNI_DASK_SCHEDULER``."""
    state = served_state()
    ask: dict[str, Any] = {
        "as_of": as_of, "channel": channel, "store_id": store_id, "new_only": new_only
    }  # fmt: skip
    if engine == "dask":
        from experiments.pipelines.distributed import dask_client

        with dask_client() as client:
            return batch_recommendations(state, n, client=client, **ask)
    return batch_recommendations(state, n, **ask)
