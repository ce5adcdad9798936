"""Train -> MLflow (a real SQLite registry in a temporary directory) -> champion guard."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from experiments.pipelines.training import CHAMPION, REGISTERED_NAME, train_recommender
from features.baskets import BASKET_WEIGHTS
from models.recommenders import RankedTIFURecommender, Recommender
from serving.registry import CONTEXT_DIR
from tests.conftest import SAMPLE

pytestmark = pytest.mark.integration

GOOD = """
[selection]
metric = "ndcg@10"
validation_days = 28
[[candidates]]
model = "ease"
grid = { l2 = [100.0, 300.0] }
"""
WORSE = """
[selection]
metric = "ndcg@10"
validation_days = 28
[[candidates]]
model = "popularity"
"""


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text)
    return path


def test_register_alias_and_keep_the_champion_when_the_challenger_is_worse(
    own_tracking: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = train_recommender(SAMPLE, write(own_tracking, "good.toml", GOOD))
    assert first.promoted and first.champion_metric is None
    client = MlflowClient()
    champion = client.get_model_version_by_alias(REGISTERED_NAME, CHAMPION)
    assert str(champion.version) == first.version == "1"

    runs = mlflow.search_runs(experiment_names=["recommender"])
    assert len(runs) == 3  # two candidates and the registering run
    assert {"metrics.ndcg_at_10", "metrics.map", "params.l2", "params.weight_purchase"} <= set(
        runs.columns
    )
    # What reproducing a run needs: the data's and the config's contents, the code's version.
    provenance = runs[["params.data_sha256", "params.config_sha256", "params.code_version"]]
    assert provenance.notna().all().all() and runs["params.data_sha256"].nunique() == 1

    second = train_recommender(SAMPLE, write(own_tracking, "worse.toml", WORSE))
    assert not second.promoted and "stays" in second.message
    assert second.champion_metric == pytest.approx(first.selected.metrics["ndcg@10"])
    assert str(client.get_model_version_by_alias(REGISTERED_NAME, CHAMPION).version) == "1"
    assert second.version == "2"

    # What serving will do: load the champion's files, without pickle, and recommend.
    local = mlflow.artifacts.download_artifacts(f"models:/{REGISTERED_NAME}@{CHAMPION}")
    model = Recommender.load(Path(local) / "artifacts" / "model")
    recs = model.recommend(["unknown-customer"], n=5)
    assert len(recs) == 5 and recs["fallback"].all()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED_NAME}@{CHAMPION}")
    predicted = pyfunc.predict(pd.DataFrame({"customer_id": list(model.customer_ids_[:3])}))
    assert set(predicted["customer_id"]) == set(model.customer_ids_[:3])
    assert (predicted.groupby("customer_id").size() == 10).all()
    # A list's length is a param the signature declares (it was ignored, with a warning).
    three = pyfunc.predict(pd.DataFrame({"customer_id": ["unknown"]}), params={"n": 3})
    assert len(three) == 3

    # Regression: a model validated on a handful of customers replaced a good champion.
    few = own_tracking / "few"
    shutil.copytree(SAMPLE, few)
    events = pd.read_csv(few / "events.csv.gz")
    times = pd.to_datetime(events["event_time"], errors="coerce")  # the sample has bad rows
    late = times > times.max() - pd.Timedelta(days=20)
    buyers = events.loc[late & (events["event_type"] == "purchase"), "customer_key"].dropna()
    events[events["customer_key"].isin(buyers.unique()[:8])].to_csv(
        few / "events.csv.gz", index=False
    )
    # An event log of its own: the session's holds other tests' events, dated today, which
    # would be more than the 0.1% of stragglers the validation window ignores in so few.
    monkeypatch.setenv("OMNI_EVENTS_URL", f"sqlite:///{own_tracking}/few-events.db")
    third = train_recommender(few, write(own_tracking, "good-again.toml", GOOD))
    assert not third.promoted and third.champion_metric is None
    customers = client.get_model_version(REGISTERED_NAME, "1").tags["customers"]
    assert f"fewer than 50% of its {int(customers):,}" in third.message, third.message
    assert str(client.get_model_version_by_alias(REGISTERED_NAME, CHAMPION).version) == "1"
    # A champion registered before versions carried their customers: the validation's own size
    # still keeps it.
    client.delete_model_version_tag(REGISTERED_NAME, "1", "customers")
    fourth = train_recommender(few, write(own_tracking, "good-again.toml", GOOD))
    assert not fourth.promoted and "too few to replace it" in fourth.message, fourth.message
    assert str(client.get_model_version_by_alias(REGISTERED_NAME, CHAMPION).version) == "1"


REPEATS = """
[selection]
metric = "ndcg@10"
validation_days = 28
[rules]
timing = [0.25, 1.0]
[[candidates]]
model = "tifu_ranked"
grid = { neighbours = [50], rounds = [30] }
"""


def test_a_two_stage_champion_is_served_with_basket_weights_timing_and_intervals(
    own_tracking: Path,
) -> None:
    result = train_recommender(SAMPLE, write(own_tracking, "repeats.toml", REPEATS))
    assert result.promoted and result.selected.candidate.model == "tifu_ranked"
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{REGISTERED_NAME}@{CHAMPION}"))
    files = local / "artifacts" / "model"
    model = Recommender.load(files)
    assert isinstance(model, RankedTIFURecommender) and model.ranker_ is not None
    meta = json.loads((files / CONTEXT_DIR / "meta.json").read_text())
    assert meta["weights"] == asdict(BASKET_WEIGHTS)  # posted views do not enter baskets
    assert meta["timing"] in (0.25, 1.0)
    assert pd.read_parquet(files / CONTEXT_DIR / "items.parquet")["repurchase_days"].notna().any()
    # Its lists hold what customers bought before: repeat purchases are recommended.
    bought = pd.read_parquet(files / CONTEXT_DIR / "purchases.parquet")
    customers = bought["customer_id"].drop_duplicates().head(20)
    recs = model.recommend(customers, n=10, exclude_seen=False)
    repeats = recs.merge(bought, on=["customer_id", "item_id"])
    assert len(repeats) >= len(recs) // 4


SKIPS = """
[selection]
metric = "ndcg@10"
[[candidates]]
model = "popularity"
[[candidates]]
model = "ease"
grid = { max_items = [10] }
"""


def test_a_candidate_that_refuses_the_data_is_skipped_with_its_reason_in_mlflow(
    own_tracking: Path,
) -> None:
    result = train_recommender(SAMPLE, write(own_tracking, "skips.toml", SKIPS))
    assert result.selected.candidate.model == "popularity" and len(result.skipped) == 1
    runs = mlflow.search_runs(experiment_names=["recommender"])
    skipped = runs[runs["tags.mlflow.runName"].str.startswith("skipped")]
    assert len(skipped) == 1 and "max_items=10" in skipped["tags.skipped"].iloc[0]


KNN = """
[selection]
validation_days = 28
[[candidates]]
model = "item_knn"
grid = { similarity = ["bm25"], neighbours = [200] }
"""


def test_the_champion_is_rescored_with_its_own_weights_and_timing(own_tracking: Path) -> None:
    """Regression: the champion was refitted with the challenger's interaction weights, so
    the same model on badly weighted events tied with itself and took over (0.1457 against
    the champion's 0.3294)."""
    first = train_recommender(SAMPLE, write(own_tracking, "knn.toml", KNN))
    weights = "[interactions]\nview = 5.0\ncart = 0.0\npurchase = 0.1\nhalf_life_days = 1.0\n"
    worse = train_recommender(SAMPLE, write(own_tracking, "weights.toml", weights + KNN))
    assert worse.selected.metrics["ndcg@10"] < first.selected.metrics["ndcg@10"]
    assert not worse.promoted and "stays" in worse.message, worse.message
    assert worse.champion_metric == pytest.approx(first.selected.metrics["ndcg@10"])
    tag = json.loads(MlflowClient().get_model_version(REGISTERED_NAME, "1").tags["candidate"])
    assert tag["weights"]["purchase"] == 5.0 and "timing" in tag
    # Another k: its own metrics, the champion compared on them (ndcg@10 was looked up).
    at_five = KNN.replace("validation_days = 28", 'validation_days = 28\nk = 5\nmetric = "ndcg@5"')
    fifth = train_recommender(SAMPLE, write(own_tracking, "k5.toml", at_five))
    assert {"ndcg@5", "recall@5"} <= set(
        fifth.selected.metrics
    ) and "ndcg@10" not in fifth.selected.metrics


def selection(lines: str) -> str:
    """KNN with ``lines`` added to its [selection]."""
    return KNN.replace("validation_days = 28", f"validation_days = 28\n{lines}")


@pytest.mark.parametrize(
    ("config", "refusal"),
    [
        (selection('metric = "ndgc@10"'), "metric must be one of map, ndcg@10"),
        (selection('k = 5\nmetric = "ndcg@10"'), "metric must be one of map, ndcg@5"),
        (selection("k = 0"), "k must be a whole number of at least 1"),
        (KNN.replace("[selection]", "[selecton]"), "the file has no 'selecton'"),
        (selection("validaton_days = 14"), "[selection] has no 'validaton_days'"),
        (
            KNN.replace("validation_days = 28", "validation_days = 14.7"),
            "validation_days must be a whole",
        ),
        (KNN.replace("[[candidates]]", "[[candidate]]"), "the file has no 'candidate'"),
        (KNN.replace("grid =", "params ="), "[[candidates]] has no 'params'"),
        (KNN.replace("[200]", "200"), "a grid gives each parameter a list of values"),
        (KNN + "[rules]\ntiming = [-3.0, 7.0]\n", "timing must be numbers of at least 0"),
        ("[interactions]\nweight_view = 2.0\n" + KNN, "[interactions] has no 'weight_view'"),
        ('[interactions]\nview = "heavy"\n' + KNN, "[interactions] view must be a number"),
    ],
)
def test_a_config_that_cannot_be_meant_is_refused_before_training(
    own_tracking: Path, config: str, refusal: str
) -> None:
    """Regression: a metric for another k crashed after registering and moving the champion;
    a misspelt table or key, a grid value that is not a list, a negative timing were ignored or
    taken, each without a word."""
    with pytest.raises(ValueError, match=re.escape(refusal)):
        train_recommender(SAMPLE, write(own_tracking, "bad.toml", config))


def test_a_return_weight_may_be_spelt_as_its_event_type(own_tracking: Path) -> None:
    config = "[interactions]\nreturn = -3.0\n" + KNN
    result = train_recommender(SAMPLE, write(own_tracking, "return.toml", config))
    assert result.promoted
    run = mlflow.search_runs(experiment_names=["recommender"]).iloc[0]
    assert float(run["params.weight_return"]) == -3.0


def test_events_without_a_purchase_are_refused_for_what_they_lack(
    own_tracking: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: views alone were told to lower validation_days or add data."""
    # An event log of its own: the session's may hold other tests' purchases.
    monkeypatch.setenv("OMNI_EVENTS_URL", f"sqlite:///{own_tracking}/views-events.db")
    views = own_tracking / "views"
    views.mkdir()
    events = pd.read_csv(SAMPLE / "events.csv.gz")
    events[events["event_type"] == "view"].to_csv(views / "events.csv", index=False)
    with pytest.raises(ValueError, match="the events hold no purchase"):
        train_recommender(views, write(own_tracking, "knn.toml", KNN))
