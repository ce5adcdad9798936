"""The MLflow pyfunc wrapper of a saved demand forecaster, logged as code (no pickle).

MLflow loads this file as the model's code; nothing in the project imports it.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from models.forecast import LightGBMForecaster

ARTIFACT = "forecaster"


class ForecasterModel(PythonModel):
    """``predict`` takes a demand panel (history) and returns the forecast after its end."""

    def load_context(self, context: PythonModelContext) -> None:
        self.model = LightGBMForecaster.load(context.artifacts[ARTIFACT])

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        return self.model.predict(model_input)


mlflow.models.set_model(ForecasterModel())
