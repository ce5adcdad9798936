"""The MLflow pyfunc of every saved model of this project, logged as code (MLflow "models from
code"): nothing is pickled.

MLflow stores this file; the model directory written by the model's ``save``, as one artifact
named after its family; and the ``features`` and ``models`` packages (``code_paths``), so that a
logged model loads wherever its pip requirements (``REQUIREMENTS``, pinned when logged) are
installed — this project itself need not be.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from models.forecast import LightGBMForecaster
from models.recommenders.base import Recommender

LOADERS = {"recommender": Recommender.load, "forecaster": LightGBMForecaster.load}
#: The distributions the saved models need at load and predict time.
REQUIREMENTS = (
    "numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "threadpoolctl", "implicit", "lightgbm",
)  # fmt: skip


class SavedModel(PythonModel):
    """A recommender's ``predict`` takes a frame with ``customer_id`` (``n`` in params, default
    10); a forecaster's takes a demand panel (history) and forecasts the periods after its end."""

    def load_context(self, context: PythonModelContext) -> None:
        [(self.family, path)] = context.artifacts.items()
        self.model: Any = LOADERS[self.family](path)

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        if self.family == "recommender":
            n = int((params or {}).get("n", 10))
            return self.model.recommend(model_input["customer_id"].astype("str").tolist(), n=n)
        return self.model.predict(model_input)


mlflow.models.set_model(SavedModel())
