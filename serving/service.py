"""The BentoML service: recommendations and forecasts from the MLflow champions.

First step of the serving issue: it loads both champions at start-up and answers
``/recommend``, ``/similar_items`` and ``/forecast`` with strict, bounded request types.
Every API needs ``Authorization: Bearer <key>`` with its scope (``omni keys create``).
``/events``, ``/offers``, ``/placement``, reload and the event log are not built
yet (see the README's known gaps). Start: ``bentoml serve serving.service:OmnichannelService``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound
from pydantic import BaseModel, ConfigDict, Field

from models.keys import load_keys, scopes_of
from models.recommenders import UnknownItemError
from serving.models import load_champions


class Unauthorized(BentoMLException):
    error_code = HTTPStatus.UNAUTHORIZED


class Forbidden(BentoMLException):
    error_code = HTTPStatus.FORBIDDEN


def require(ctx: bentoml.Context, keys: dict[str, dict], scope: str) -> None:
    """401 without a valid ``Authorization: Bearer`` key; 403 when it lacks ``scope``."""
    header = ctx.request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise Unauthorized("Missing 'Authorization: Bearer <key>' header.")
    scopes = scopes_of(header[7:].strip(), keys)
    if scopes is None:
        raise Unauthorized("Invalid API key.")
    if scope not in scopes and "admin" not in scopes:
        raise Forbidden(f"This key lacks the {scope!r} scope.")


_ID = Field(min_length=1, max_length=128)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class RecommendRequest(_Strict):
    customer_id: str = Field(min_length=1, max_length=128, examples=["c_1a2b3c"])
    n: int = Field(default=10, ge=1, le=100)
    channel: str | None = Field(default=None, min_length=1, max_length=64, examples=["app"])
    store_id: str | None = Field(default=None, min_length=1, max_length=128, examples=["S001"])


class SimilarItemsRequest(_Strict):
    item_id: str = Field(min_length=1, max_length=128, examples=["I000010"])
    n: int = Field(default=10, ge=1, le=100)


class ForecastRequest(_Strict):
    store_id: str = Field(min_length=1, max_length=128, examples=["S001"])
    item_ids: list[str] = Field(min_length=1, max_length=1000, examples=[["I000010"]])
    horizon: int = Field(ge=1, le=365, examples=[2])


@bentoml.service(name="omnichannel_ml")
class OmnichannelService:
    def __init__(self) -> None:
        self.champions = load_champions()
        self.keys = load_keys()

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    def recommend(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Ranked items for a customer; unknown customers get their store's / channel's best
        sellers, flagged ``fallback``."""
        require(ctx, self.keys, "recommend")
        r = RecommendRequest(**request)
        model = self.champions.recommender
        recs = model.recommend([r.customer_id], n=r.n, store_id=r.store_id, channel=r.channel)
        return {
            "customer_id": r.customer_id,
            "fallback": bool(recs["fallback"].any()) if len(recs) else True,
            "items": [
                {"item_id": row["item_id"], "score": float(row["score"]), "rank": int(row["rank"])}
                for row in recs.to_dict(orient="records")
            ],
            "model_version": self.champions.recommender_version,
        }

    @bentoml.api(route="/similar_items", input_spec=SimilarItemsRequest)
    def similar_items(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Items most similar to one item (404 when the model does not know it)."""
        require(ctx, self.keys, "recommend")
        r = SimilarItemsRequest(**request)
        try:
            similar = self.champions.recommender.similar_items([r.item_id], n=r.n)
        except UnknownItemError as exc:
            raise NotFound(str(exc)) from exc
        return {
            "item_id": r.item_id,
            "items": [
                {
                    "item_id": row["similar_item_id"],
                    "score": float(row["score"]),
                    "rank": int(row["rank"]),
                }
                for row in similar.to_dict(orient="records")
            ],
            "model_version": self.champions.recommender_version,
        }

    @bentoml.api(route="/forecast", input_spec=ForecastRequest)
    def forecast(self, ctx: bentoml.Context, **request: Any) -> dict[str, Any]:
        """Mean, P10, P50 and P90 per item and period for one store."""
        require(ctx, self.keys, "plan")
        r = ForecastRequest(**request)
        try:
            frame = self.champions.forecaster.forecast(r.store_id, r.item_ids, r.horizon)
        except ValueError as exc:
            error = NotFound if "not in the forecaster's history" in str(exc) else InvalidArgument
            raise error(str(exc)) from exc
        return {
            "store_id": r.store_id,
            "forecast": [
                {
                    "item_id": row["item_id"],
                    "period_end": row["ds"].date().isoformat(),
                    **{k: float(row[k]) for k in ("mean", "p10", "p50", "p90")},
                    "method": row["method"],
                }
                for row in frame.to_dict(orient="records")
            ],
            "model_version": self.champions.forecaster_version,
        }
