"""What the KPI report needs beside the logs: the champion's key map and prices, and MLflow."""

from __future__ import annotations

import json

import mlflow
import pandas as pd

from experiments.pipelines.training import pyplot
from serving.registry import CONTEXT_DIR, RECOMMENDER, champion

EXPERIMENT = "kpis"


def champion_context() -> tuple[dict[str, str], pd.Series | None]:
    """The recommender champion's key map (key pseudonym -> customer_id) and catalogue
    prices by item (None without a catalogue)."""
    context = champion(RECOMMENDER)[1] / CONTEXT_DIR
    keys = pd.read_parquet(context / "customer_keys.parquet")
    items = context / "items.parquet"
    prices = None
    if items.exists():
        catalogue = pd.read_parquet(items)
        if "unit_price" in catalogue:
            prices = catalogue.set_index("item_id")["unit_price"].astype(float)
    return dict(zip(keys["key_id"], keys["customer_id"], strict=True)), prices


def log_kpis(table: pd.DataFrame, since: pd.Timestamp, until: pd.Timestamp, days: float) -> None:
    """One MLflow run: every figure as a metric (``route.channel.figure``), the table as JSON
    and the uplift per channel with its interval as a plot."""
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=f"kpis {since:%Y-%m-%d} - {until:%Y-%m-%d}"):
        mlflow.log_params({"since": str(since), "until": str(until), "window_days": days})
        figures = table.melt(id_vars=["route", "channel"]).dropna(subset=["value"])
        names = (
            figures["route"] + "." + figures["channel"] + "." + figures["variable"]
        ).str.replace(
            r"[^\w.\- /]", "_", regex=True
        )  # channels are named by clients; MLflow takes only these characters
        mlflow.log_metrics(dict(zip(names, figures["value"].astype(float), strict=True)))
        mlflow.log_text(json.dumps(table.to_dict(orient="records"), default=str), "kpis.json")
        measured = table.dropna(subset=["uplift"])
        if len(measured):
            plt = pyplot()
            fig, ax = plt.subplots(figsize=(7, 0.5 + 0.4 * len(measured)))
            labels = measured["route"] + " / " + measured["channel"]
            ax.errorbar(
                measured["uplift"], range(len(measured)), fmt="o",
                xerr=[measured["uplift"] - measured["uplift_low"],
                      measured["uplift_high"] - measured["uplift"]],
            )  # fmt: skip
            ax.axvline(0, color="grey", lw=0.8)
            ax.set_yticks(range(len(measured)), labels)
            ax.set_xlabel("uplift of conversion against control (95% interval)")
            fig.tight_layout()
            mlflow.log_figure(fig, "uplift.png")
            plt.close(fig)
