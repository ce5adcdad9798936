"""The framework's floor for ``omni bench serve``: a bare BentoML service whose ``/recommend``
takes the same request and returns a constant list of the same shape and size as the real
service's answer — no model, no auth, no state, no work."""

from __future__ import annotations

from typing import Any

import bentoml

STORES = ["DC", "ONLINE", "S001", "S002", "S003", "S004", "S005"]
ITEMS = [
    {
        "item_id": f"I{i:06d}",
        "score": 1.0 - i / 100,
        "rank": i + 1,
        "reason": "based on your purchases and browsing",
        "available_at": STORES,
    }
    for i in range(100)
]


@bentoml.service(name="floor")
class FloorService:
    @bentoml.api(route="/recommend")
    def recommend(
        self,
        customer_id: str | None = None,
        customer_key: str | None = None,
        channel: str | None = None,
        n: int = 10,
        store_id: str | None = None,
        context_item_ids: list[str] | None = None,
    ) -> dict[str, Any]:
        return {
            "customer_id": customer_id,
            "fallback": False,
            "items": ITEMS[:n],
            "model_version": "0",
        }
