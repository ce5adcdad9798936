"""``omni train recommender``: select on a time split, log to MLflow, register, guard champion."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import ModelSignature, infer_signature

import features
import models
from experiments.pipelines import data as pipelines
from experiments.pipelines.forecaster import BacktestResult, DemandData, backtest
from experiments.pipelines.forecaster import engine as forecaster_engine
from experiments.pipelines.recommender import (
    DEFAULT_CONFIG,
    Candidate,
    CandidateResult,
    SelectionConfig,
    TrainingInput,
    evaluate_served,
    known_keys,
    read_config,
    select,
    selection_config,
)
from features.baskets import basket_starts
from features.customers import build_habits, purchases, with_learned_repurchase
from features.demand import PERIOD, SERIES, TARGET
from features.eventlog import EventLog
from features.identity import IdentityConfig, salt_check
from features.ingest import LoadedTable, load_dataset
from features.interactions import InteractionWeights, split_by_time
from models import mlflow_code
from models.errors import NoChampion, UnreadableChampion
from models.forecast import LightGBMForecaster, Trainer
from models.probe import probe_forecast, probe_recommender
from models.recommenders import Recommender
from models.recommenders.models import is_whole
from models.rules import DEFAULT_TIMING, BusinessRules
from serving.registry import (
    CHAMPION,
    CONTEXT_DIR,
    FORECASTER,
    RECOMMENDER,
    champion,
    champion_version,
)

REGISTERED_NAME = RECOMMENDER
#: The share of the latest events that does not move the end of the validation window.
LATE_SHARE = 0.001
EXPERIMENT = "recommender"


@dataclass
class TrainResult:
    selected: CandidateResult
    version: str
    promoted: bool
    champion_metric: float | None
    message: str
    seconds: float
    skipped: list[tuple[Candidate, str]]


#: What a customer's list is scored against: their next basket after the cutoff (the items of
#: their first basket in the window, :func:`features.baskets.basket_starts`; the list asked for
#: as that basket began), or everything they bought in the window (the list asked for at the
#: cutoff).
TARGETS = ("next_basket", "window")


@dataclass(frozen=True)
class ValidationSplit:
    """Events before ``cutoff`` to fit on; per known customer, the items their list is scored
    against (``relevant``: repeats and new items alike) and the time it is asked for (``now``)."""

    before: pd.DataFrame
    relevant: pd.DataFrame
    cutoff: pd.Timestamp
    now: dict[str, pd.Timestamp]


def split_for_validation(
    events: pd.DataFrame, days: int, target: str = "next_basket"
) -> ValidationSplit:
    """Hold out the last ``days`` (from midnight); customers known before them are scored on
    their next basket in them or on all they bought in them (:data:`TARGETS`).

    The data's end is where all but its latest 0.1% of events lie, not its latest event: a few
    events posted to the service after the files were exported (or a till with a wrong clock)
    would otherwise leave the files' own last weeks out of the window, and it would be empty.
    """
    if target not in TARGETS:
        raise ValueError(f"Unknown validation target {target!r}; use one of {', '.join(TARGETS)}.")
    if events.empty:
        raise ValueError("there are no accepted events to train on (omni validate says why).")
    times = events["event_time"].sort_values().to_numpy()
    end = pd.Timestamp(times[int((len(times) - 1) * (1 - LATE_SHARE))])
    cutoff = (end - pd.Timedelta(days=days)).floor("D")  # midnight: few baskets cross it
    before, after = split_by_time(events, cutoff)
    known = before["customer_id"].dropna().astype("str").unique()
    bought = after[(after["event_type"] == "purchase") & after["customer_id"].isin(known)]
    bought = bought.assign(customer_id=bought["customer_id"].astype("str"))
    if target == "next_basket" and len(bought):
        start = basket_starts(bought["customer_id"], bought["event_time"])
        first = start.groupby(bought["customer_id"]).min()
        bought = bought[start == bought["customer_id"].map(first)]
        now = dict(zip(first.index.astype("str"), first, strict=True))
    else:  # all they bought in the window (or nothing bought in it)
        now = dict.fromkeys(bought["customer_id"].unique(), cutoff)
    relevant = bought[["customer_id", "item_id"]].astype("str").drop_duplicates()
    return ValidationSplit(before, relevant.reset_index(drop=True), cutoff, now)


def rules_from_events(
    events: pd.DataFrame, item_ids: pd.Index, catalogue: pd.DataFrame | None, timing: float
) -> BusinessRules:
    """The rules the service holds after training on ``events`` (the tables
    :func:`write_context` writes): purchases with their times, and repurchase flags and
    intervals learned from them where the catalogue is silent. Stock is left out."""
    return BusinessRules.from_tables(
        item_ids,
        purchases=purchases(events),
        items=with_learned_repurchase(catalogue, events),
        timing=timing,
    )


@dataclass(frozen=True)
class TrainingOptions:
    """Everything ``omni train recommender`` reads from its TOML: the candidates, the
    ``[interactions]`` weights, ``[selection] validation_days`` and ``target``
    (:data:`TARGETS`), and the rules' ``[rules] timing`` values to choose from
    (:class:`models.rules.BusinessRules`; candidates are scored with the first)."""

    selection: SelectionConfig
    weights: InteractionWeights
    validation_days: int = 28
    target: str = "next_basket"
    timings: tuple[float, ...] = (DEFAULT_TIMING,)
    config: Path = DEFAULT_CONFIG  # the file read, and a SHA-256 of its contents
    config_sha256: str = ""

    def as_params(self) -> dict[str, Any]:
        return {
            **self.weights.as_params(),
            "validation_days": self.validation_days,
            "validation_target": self.target,
            "config": str(self.config.resolve()),
            "config_sha256": self.config_sha256,
        }


def load_training_options(path: Path | None) -> TrainingOptions:
    path = Path(path) if path else DEFAULT_CONFIG
    raw = read_config(path)
    config = selection_config(raw, path)  # checks the file's tables and [selection]'s keys
    selection, rules = raw.get("selection", {}), raw.get("rules", {})
    known_keys(path, "[rules]", rules)
    interactions = raw.get("interactions", {})
    known_keys(path, "[interactions]", interactions, WEIGHT_KEYS)
    try:
        weights = InteractionWeights(
            **{("return_" if k == "return" else k): v for k, v in interactions.items()}
        )
    except ValueError as exc:
        raise ValueError(f"{path}: [interactions] {exc}") from exc
    days = selection.get("validation_days", 28)
    if not is_whole(days):
        raise ValueError(
            f"{path}: [selection] validation_days must be a whole number of days of at least 1, "
            f"not {days!r}."
        )
    timings = rules.get("timing", DEFAULT_TIMING)
    listed = timings if isinstance(timings, list) else [timings]
    if not listed or not all(
        isinstance(t, int | float) and not isinstance(t, bool) and t >= 0 for t in listed
    ):
        raise ValueError(
            f"{path}: [rules] timing must be numbers of at least 0 (0 turns timing off), "
            f"not {timings!r}."
        )
    return TrainingOptions(
        config,
        weights,
        days,
        str(selection.get("target", "next_basket")),
        tuple(float(t) for t in listed),
        path,
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )


#: The ``[interactions]`` keys: the weights' fields (``return`` spelled as the event type).
WEIGHT_KEYS = ("view", "cart", "purchase", "return", "return_", "use_quantity", "half_life_days")

#: A champion is replaced only by a model validated on at least this many customers' baskets.
MIN_VALIDATION_CUSTOMERS = 20
#: ... and only by a model of at least this share of the customers or series the champion
#: serves: a run on a sample (a few stores, a month of events) never takes over from one
#: trained on the whole chain. Each registered version carries its count as a tag.
MIN_SHARE_OF_CHAMPION = 0.5


@dataclass(frozen=True)
class Served:
    """A recommender as the service answers with it: the model, how events count and the
    rules' timing — what a champion is compared by."""

    candidate: Candidate
    weights: InteractionWeights
    timing: float


@dataclass
class Selection:
    """What selection found: the candidates' results (best first), those that refused the
    data with the reason, the rules' timing chosen for the best and the best's metrics with it
    (what it will serve), and a scorer of any other configuration on the same split (for the
    champion)."""

    results: list[CandidateResult]
    skipped: list[tuple[Candidate, str]]
    timing: float
    rescore: Callable[[Served], float]
    customers: int  # scored on validation
    metrics: dict[str, float]


def select_recommender(
    unified: pd.DataFrame,
    catalogue: pd.DataFrame | None,
    options: TrainingOptions,
    on_result: Callable[[CandidateResult], None] | None = None,
) -> Selection:
    """Every candidate fitted on the events before the validation window and scored on what
    customers bought in it (:func:`split_for_validation`) through the service's own rules;
    then the rules' timing that scores the best candidate highest."""
    split = split_for_validation(unified, options.validation_days, options.target)
    if split.relevant.empty:
        days = options.validation_days
        if not (unified["event_type"] == "purchase").any():
            raise ValueError(
                "the events hold no purchase, and a recommender is validated on what customers "
                "bought next; add the tills' or the orders' purchase events."
            )
        if split.before.empty:
            raise ValueError(
                f"every event is in the last {days} days, the validation window: no history is "
                "left to train on before it; add older data, or lower [selection] "
                "validation_days in a --config file."
            )
        raise ValueError(
            f"no customer seen before the last {days} days bought anything in them, so there "
            "is nothing to validate on; lower [selection] validation_days in a --config file, "
            "or add data."
        )
    data = TrainingInput.from_events(split.before, options.weights)
    # The rules as the service would hold them at the cutoff (stock then is not known).
    rules = rules_from_events(
        split.before, data.interactions.item_ids, catalogue, options.timings[0]
    )
    k, metric = options.selection.k, options.selection.metric

    def score(model: Recommender, timing: float = options.timings[0]) -> dict[str, float]:
        rules.timing = timing
        return evaluate_served(model, rules, split.relevant, k, split.now)

    def rescore(champion: Served) -> float:
        """``champion`` fitted on this training split with its own weights and scored on this
        validation split with its own timing."""
        same = champion.weights == options.weights
        if same and champion.timing == options.timings[0]:  # as every candidate was scored
            scored = next(
                (r.metrics[metric] for r in results if r.candidate == champion.candidate), None
            )
            if scored is not None:
                return scored
        if same:
            return score(data.fit(champion.candidate.build()), champion.timing)[metric]
        theirs = TrainingInput.from_events(split.before, champion.weights)
        their_rules = rules_from_events(
            split.before, theirs.interactions.item_ids, catalogue, champion.timing
        )
        model = theirs.fit(champion.candidate.build())
        return evaluate_served(model, their_rules, split.relevant, k, split.now)[metric]

    results, skipped = select(options.selection, data.fit, score, on_result)
    best = results[0]
    served = {options.timings[0]: best.metrics}  # candidates were scored with it
    for timing in options.timings[1:]:
        served.setdefault(timing, score(best.model, timing))
    timing = max(served, key=lambda t: served[t][metric])  # ties: the first
    customers = split.relevant["customer_id"].nunique()
    return Selection(results, skipped, timing, rescore, customers, served[timing])


def fit_final(
    unified: pd.DataFrame, candidate: Candidate, weights: InteractionWeights
) -> Recommender:
    """``candidate`` fitted on every event: the model to register."""
    return TrainingInput.from_events(unified, weights).fit(candidate.build())


def train_recommender(
    data_dir: Path, config_path: Path | None = None, engine: str = "inprocess"
) -> TrainResult:
    """Validate + unify ``data_dir``, select a model, register it, move the champion if it wins.

    ``engine="dask"`` validates and unifies on a Dask cluster (the same events, bit for bit);
    selection and fitting run here, on the unified events.
    """
    started = time.perf_counter()
    options = load_training_options(config_path)
    logged, log_seq = logged_events()
    identity = IdentityConfig.from_env()
    unify_result = pipelines.unify(data_dir, identity, logged, engine=engine)
    unified = unify_result.unified
    extras = load_dataset(data_dir, ("items", "inventory", "stores"))
    catalogue = extras["items"].accepted if "items" in extras else None
    mlflow.set_experiment(EXPERIMENT)
    common = {**options.as_params(), **provenance(data_dir)}

    def log_candidate(result: CandidateResult) -> None:
        with mlflow.start_run(run_name=result.candidate.label):
            mlflow.log_params(
                {"model": result.candidate.model, **result.candidate.params, **common}
            )
            mlflow.log_metrics({metric_key(k): v for k, v in result.metrics.items()})
            mlflow.log_metric("fit_seconds", result.fit_seconds)
            mlflow.log_figure(_metrics_figure(result), "metrics.png")

    try:
        selection = select_recommender(unified, catalogue, options, log_candidate)
    except ValueError as exc:
        raise ValueError(f"{data_dir}: {exc}") from exc
    best, skipped = selection.results[0], selection.skipped
    for candidate, reason in skipped:  # in MLflow too, not only on the console
        with mlflow.start_run(run_name=f"skipped {candidate.label}"):
            mlflow.log_params({"model": candidate.model, **candidate.params, **common})
            mlflow.set_tag("skipped", reason)
    metric = options.selection.metric
    champion = _champion(options)
    customers = int(unified["customer_id"].nunique())
    narrower = _narrower_than_champion(REGISTERED_NAME, "customers", customers)
    cannot_replace = selection.customers < MIN_VALIDATION_CUSTOMERS or narrower is not None
    # Refitted on this training split and scored on this validation split — the same data the
    # challenger was scored on; not at all when these data cannot replace it.
    champion_metric = None if champion is None or cannot_replace else selection.rescore(champion)
    metrics = selection.metrics  # the best's, with the timing it will serve with
    promoted = champion is None or (
        champion_metric is not None and metrics[metric] >= champion_metric
    )

    final = fit_final(unified, best.candidate, options.weights)
    probe_recommender(final)  # never register a model that answers NaN or nothing

    def save(path: Path) -> Path:
        final.save(path)
        write_context(
            path / CONTEXT_DIR, unify_result, extras, final, options.weights, selection.timing,
            log_seq, identity.salt,
        )  # fmt: skip
        return path

    version = _register(
        REGISTERED_NAME,
        "recommender",
        save,
        run_name=f"register {best.candidate.label}",
        params={
            "model": best.candidate.model,
            **best.candidate.params,
            **common,
            "timing": selection.timing,
        },
        metrics={metric_key(k): v for k, v in metrics.items()},
        # predict(frame of customer_id, params={"n": ...}): the list's length a caller asks.
        signature=infer_signature(pd.DataFrame({"customer_id": ["c"]}), params={"n": 10}),
    )
    client = MlflowClient()
    chosen = Served(best.candidate, options.weights, selection.timing)
    client.set_model_version_tag(
        REGISTERED_NAME, version, "candidate", json.dumps(_served_json(chosen))
    )
    client.set_model_version_tag(
        REGISTERED_NAME, version, f"validation_{metric_key(metric)}", f"{metrics[metric]:.6f}"
    )
    client.set_model_version_tag(REGISTERED_NAME, version, "customers", str(customers))
    score = f"{metric} {metrics[metric]:.4f}"
    registered = f"{best.candidate.label} registered as {REGISTERED_NAME} v{version}"
    if champion is None:
        message = f"{registered} and is now {CHAMPION} (there was none); {score}."
    elif narrower is not None:
        message = f"{registered}; the {CHAMPION} stays: {narrower}"
    elif champion_metric is None:
        message = (
            f"{registered}; the {CHAMPION} stays: its validation held {selection.customers} "
            f"customers, too few to replace it (at least {MIN_VALIDATION_CUSTOMERS})."
        )
    elif promoted:
        message = f"{registered} and is now {CHAMPION}: {score} >= its {champion_metric:.4f}."
    else:
        message = (
            f"{registered}; the {CHAMPION} stays: {score} < its {champion_metric:.4f} "
            "on the same validation data."
        )
    if promoted:
        client.set_registered_model_alias(REGISTERED_NAME, CHAMPION, version)
    selected = replace(best, metrics=metrics)
    return TrainResult(
        selected, version, promoted, champion_metric, message, time.perf_counter() - started,
        skipped,
    )  # fmt: skip


def logged_events() -> tuple[pd.DataFrame, int]:
    """Every event the service accepted (``$OMNI_EVENTS_URL``, default ``.omni/events.db``),
    and the log position they reach (serving replays what came after)."""
    log = EventLog.from_env()
    try:
        seq = log.last_seq()
        return log.read(upto=seq), seq
    finally:
        log.close()


def write_context(
    out: Path,
    result: pipelines.UnifyResult,
    extras: dict[str, LoadedTable],
    model: Recommender,
    weights: InteractionWeights,
    timing: float,
    log_seq: int,
    salt: str,
) -> None:
    """What serving needs beside the recommender: pseudonymous key map, habits, purchases (with
    their last times), the catalogue's rule columns (``repurchasable`` and ``repurchase_days``
    learned from purchases where the catalogue is silent), each store's latest stock, the
    stores table, how posted events count for this model, the rules' timing, the event log
    position training read up to and the fingerprint of the salt the keys were pseudonymised
    with."""
    out.mkdir(parents=True, exist_ok=True)
    result.resolution.nodes[["key_id", "customer_id"]].to_parquet(out / "customer_keys.parquet")
    build_habits(result.unified).to_parquet(out / "habits.parquet")
    purchases(result.unified).to_parquet(out / "purchases.parquet")
    catalogue = extras["items"].accepted if "items" in extras else None
    with_learned_repurchase(catalogue, result.unified).to_parquet(out / "items.parquet")
    if "inventory" in extras:
        stock = extras["inventory"].accepted.sort_values("date")
        latest = stock.drop_duplicates(["store_id", "item_id"], keep="last")
        latest.to_parquet(out / "inventory.parquet")
    if "stores" in extras:  # the nodes stock may be told about, and where they are
        extras["stores"].accepted.to_parquet(out / "stores.parquet")
    unified = result.unified
    meta = {
        "weights": asdict(model.posted_weights or weights),
        "timing": timing,
        "log_seq": log_seq,
        "salt_check": salt_check(salt),
        "stores": sorted(unified["store_id"].dropna().astype(str).unique()),
        "channels": sorted(unified["channel"].astype(str).unique()),
    }
    (out / "meta.json").write_text(json.dumps(meta))


def _register(
    name: str,
    family: str,
    save: Callable[[Path], Path],
    *,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    signature: ModelSignature | None = None,
) -> str:
    """Log a saved model as an MLflow pyfunc *from code* (nothing pickled) and register it.

    Args:
        name: registered model name.
        family: the key of ``mlflow_code.LOADERS`` that loads it.
        save: writes the model directory, given a path.
        signature: what ``predict`` takes (its params, e.g. a list's length, need one).
    """
    with mlflow.start_run(run_name=run_name), tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=mlflow_code.__file__,
            artifacts={family: str(save(Path(tmp) / "model"))},
            code_paths=[*features.__path__, *models.__path__],
            pip_requirements=[
                f"{d}=={metadata.version(d)}" for d in models.mlflow_code.REQUIREMENTS
            ],
            registered_model_name=name,
            signature=signature,
        )
    return str(info.registered_model_version)


def _champion(options: TrainingOptions) -> Served | None:
    """The champion's configuration (None without a champion, or one registered without it);
    one registered before its weights and timing were recorded is taken to have this run's."""
    version = champion_version(REGISTERED_NAME)
    raw = version.tags.get("candidate") if version is not None else None
    if raw is None:
        return None
    spec = json.loads(raw)
    weights = spec.get("weights")
    return Served(
        Candidate(spec["model"], spec["params"]),
        options.weights if weights is None else InteractionWeights(**weights),
        float(spec.get("timing", options.timings[0])),
    )


def _served_json(served: Served) -> dict[str, Any]:
    return {
        "model": served.candidate.model,
        "params": served.candidate.params,
        "weights": asdict(served.weights),
        "timing": served.timing,
    }


def provenance(data_dir: Path) -> dict[str, str]:
    """What a run needs to be reproduced beside its parameters: the data directory (absolute),
    a SHA-256 of its files' contents (quarantine output left out) and the code's version (the
    git commit, ``+changes`` when the checkout differs from it; else the package's version)."""
    digest = hashlib.sha256()
    files = sorted(f for f in Path(data_dir).rglob("*") if f.is_file())
    for path in files:
        relative = path.relative_to(data_dir)
        if relative.parts[0] == pipelines.QUARANTINE_DIR:
            continue
        digest.update(f"{relative.as_posix()}\0".encode())
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return {
        "data": str(Path(data_dir).resolve()),
        "data_sha256": digest.hexdigest(),
        "code_version": code_version(),
    }


def code_version() -> str:
    """The git commit of this checkout (``+changes`` if it differs), or the package's version."""
    root = Path(__file__).resolve().parents[2]
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return f"omnichannel-ml {metadata.version('omnichannel-ml')}"
    return commit.stdout.strip() + ("+changes" if status.stdout.strip() else "")


def metric_key(name: str) -> str:
    """An MLflow metric name for ``name`` (MLflow refuses "@")."""
    return name.replace("@", "_at_")


def pyplot() -> Any:
    """matplotlib's pyplot, drawing off screen (imported only when a figure is logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metrics_figure(result: CandidateResult) -> Any:
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(5, 3))
    names = list(result.metrics)
    axis.bar(names, [result.metrics[n] for n in names], color="#4C72B0")
    axis.set_title(result.candidate.label, fontsize=8)
    axis.set_ylim(0, 1)
    figure.tight_layout()
    plt.close(figure)
    return figure


# -- demand forecaster ------------------------------------------------------------------------

FORECASTER_NAME = FORECASTER
FORECAST_EXPERIMENT = "demand_forecaster"


#: The forecaster's settings a backtest run logs beside its features (the objective chosen and
#: the rounds kept are logged as found).
MODEL_PARAMS = (
    "n_estimators", "learning_rate", "num_leaves", "min_child_samples", "strategy", "refit",
    "quantiles", "calibration_effort", "early_stopping", "random_state", "max_train_rows",
)  # fmt: skip


def log_backtest(result: BacktestResult, params: dict[str, Any]) -> str:
    """One MLflow run: parameters, model and baseline metrics, two plots. Returns the run id."""
    mlflow.set_experiment(FORECAST_EXPERIMENT)
    with mlflow.start_run(run_name=f"backtest h={params.get('horizon')}") as run:
        model = result.model
        mlflow.log_params(
            {
                **params,
                **model.spec().as_params(),
                **{k: v for k, v in model.get_params().items() if k in MODEL_PARAMS},
                "objective": model.objective_,
                "rounds": ",".join(map(str, model.rounds_)),
            }
        )
        intervals = model.intervals_
        mlflow.log_params(
            {
                "series": result.series,
                "interval": intervals.label,
                "interval_held_out_rows": intervals.held_out,
            }
        )
        mlflow.set_tag("calibration", " ".join(result.warnings) or "calibrated")
        if result.gaps:
            mlflow.set_tag("data_gaps", " ".join(result.gaps))
        if result.notes:
            mlflow.set_tag("backtest_notes", " ".join(result.notes))
        mlflow.log_metrics(result.metrics)
        mlflow.log_metrics({f"interval_pinball_{k}": v for k, v in intervals.pinball.items()})
        for name, metrics in {**result.baselines, **result.others}.items():
            mlflow.log_metrics({f"{name}_{k}": v for k, v in metrics.items()})
        mlflow.log_figure(_forecast_figure(result), "forecast_vs_actual.png")
        mlflow.log_figure(_importance_figure(model), "feature_importance.png")
        mlflow.log_figure(_calibration_figure(result.coverage), "calibration.png")
        mlflow.log_dict(  # named as the metrics are: q1 the lowest fifth; null where none
            {
                f"q{q:.0f}": {f"lead_{k:.0f}": None if pd.isna(v) else v for k, v in row.items()}
                for q, row in result.coverage.iterrows()
            },
            "coverage_by_volume_quintile_and_lead.json",
        )
        return str(run.info.run_id)


@dataclass
class ForecasterTraining:
    """What ``omni train forecaster`` did: the backtest, the registered version, whether it became
    champion, the champion's WAPE it was compared with (None when it was not compared) and one
    sentence saying so."""

    backtest: BacktestResult
    version: str
    promoted: bool
    champion_wape: float | None
    message: str


def train_forecaster(
    data_dir: Path, *, horizon: int, freq: str, windows: int = 3, engine: str = "inprocess"
) -> ForecasterTraining:
    """Backtest, fit on all data, register ``demand_forecaster``; champion only if it wins —
    against the best baseline's backtest (never a model a baseline beats) and the
    champion's.

    The champion's WAPE is its configuration backtested on the same data and windows; a
    champion for another horizon or frequency is replaced without comparison, one forecasting
    more than twice as many series is not replaced (:data:`MIN_SHARE_OF_CHAMPION`).
    ``engine="dask"`` sums the daily sales and trains LightGBM on a Dask cluster
    (:func:`experiments.pipelines.forecaster.engine`).
    """
    with forecaster_engine(engine) as (load, trainer):
        data = load(data_dir, freq, lambda: logged_events()[0])
        result = backtest(data, horizon=horizon, freq=freq, windows=windows, trainer=trainer)
        final = LightGBMForecaster(horizon=horizon, freq=freq).fit(
            data.panel, items=data.items, trainer=trainer, plan=data.plan
        )
        probe_forecast(final.predict(final.history_))
        narrower = _narrower_than_champion(FORECASTER_NAME, "series", result.series)
        current, unreadable = None, None
        if narrower is None:
            try:
                current = _champion_forecaster()
            except UnreadableChampion as exc:  # replaced: nothing can serve it anyway
                unreadable = str(exc)
        champion_wape = None
        if current is not None and (current.horizon, current.freq) == (horizon, freq):
            champion_wape = _champion_wape(current, final, result, data, windows, trainer)
    params = {
        **provenance(data_dir), "horizon": horizon, "freq": freq, "windows": windows,
        "engine": engine,
    }  # fmt: skip
    log_backtest(result, params)
    wape = result.metrics["wape"]
    baseline, scores = min(result.baselines.items(), key=lambda named: named[1]["wape"])
    beaten = wape > scores["wape"]  # a planner would do better with the baseline
    promoted = not beaten and narrower is None and (champion_wape is None or wape <= champion_wape)
    version = _register(
        FORECASTER_NAME,
        "forecaster",
        final.save,
        run_name=f"register forecaster h={horizon}",
        params={**params, "rounds": ",".join(map(str, final.rounds_))},
        metrics=result.metrics,
    )
    client = MlflowClient()
    tags = {
        "backtest_wape": f"{wape:.6f}", "freq": freq, "horizon": str(horizon),
        "interval": final.intervals_.label, "series": str(result.series),
    }  # fmt: skip
    for key, value in tags.items():
        client.set_model_version_tag(FORECASTER_NAME, version, key, value)
    registered = f"registered {FORECASTER_NAME} v{version} (intervals: {final.intervals_.label})"
    if beaten:
        stays = "there is none" if current is None else f"the {CHAMPION} stays"
        message = (
            f"{registered}; not {CHAMPION} ({stays}): its backtest WAPE is above the "
            f"{baseline.replace('_', ' ')}'s ({wape:.4f} > {scores['wape']:.4f}), so a planner "
            "would do better with the baseline — look for outliers or gaps in the sales."
        )
    elif narrower is not None:
        message = f"{registered}; the {CHAMPION} stays: {narrower}"
    elif unreadable is not None:
        message = (
            f"{registered}; it is now {CHAMPION}, replacing one that cannot serve: {unreadable}"
        )
    elif current is None:
        message = f"{registered}; it is now {CHAMPION} (there was none)."
    elif champion_wape is None:
        message = (
            f"{registered}; it is now {CHAMPION}, replacing one for {current.horizon} "
            f"periods of {current.freq} (not compared: another horizon or frequency)."
        )
    else:
        outcome = f"it is now {CHAMPION}" if promoted else f"the {CHAMPION} stays"
        message = (
            f"{registered}; {outcome}: WAPE {wape:.4f} {'<=' if promoted else '>'} "
            f"{champion_wape:.4f}, the {CHAMPION}'s configuration on the same backtest."
        )
    if promoted:
        client.set_registered_model_alias(FORECASTER_NAME, CHAMPION, version)
    return ForecasterTraining(result, version, promoted, champion_wape, message)


def _champion_forecaster() -> LightGBMForecaster | None:
    try:
        return LightGBMForecaster.load(champion(FORECASTER_NAME)[1])
    except NoChampion:
        return None


def _narrower_than_champion(name: str, unit: str, count: int) -> str | None:
    """Why a model of ``count`` ``unit`` (customers, series) may not replace ``name``'s champion:
    it serves fewer than :data:`MIN_SHARE_OF_CHAMPION` of the champion's; None when it may (or
    the champion was registered without the count)."""
    version = champion_version(name)
    held = version.tags.get(unit) if version is not None else None
    if held is None or count >= MIN_SHARE_OF_CHAMPION * int(held):
        return None
    return (
        f"these data hold {count:,} {unit}, fewer than {MIN_SHARE_OF_CHAMPION:.0%} of its "
        f"{int(held):,} (a sample?). To replace it on purpose, point the {CHAMPION} alias of "
        f"{name} at this version in MLflow."
    )


def _champion_wape(
    current: LightGBMForecaster,
    candidate: LightGBMForecaster,
    result: BacktestResult,
    data: DemandData,
    windows: int,
    trainer: Trainer,
) -> float:
    """The champion forecaster's WAPE on the candidate's backtest: its configuration refitted at
    the same origins of the same data (a WAPE stored from another run measured other data). The
    same configuration scores what the candidate scored."""
    if _configuration(current) == _configuration(candidate):
        return result.metrics["wape"]
    config = current.get_params()
    rescored = backtest(
        data,
        horizon=candidate.horizon,
        freq=candidate.freq,
        windows=windows,
        model=lambda: LightGBMForecaster(**config),
        trainer=trainer,
    )
    return rescored.metrics["wape"]


def _configuration(model: LightGBMForecaster) -> dict[str, Any]:
    """What a forecaster is, whether its lags are given or the defaults (threads aside)."""
    spec = model.spec()
    params = model.get_params()
    return {**params, "lags": spec.lags, "rolling": spec.rolling, "n_jobs": None}


def _forecast_figure(result: BacktestResult) -> Any:
    plt = pyplot()

    actual = result.last_actual
    largest = actual.groupby(SERIES)[TARGET].sum().idxmax()
    truth = actual[actual[SERIES] == largest]
    forecast = result.last_forecast[result.last_forecast[SERIES] == largest]
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.fill_between(
        forecast[PERIOD], forecast["p10"], forecast["p90"], alpha=0.3, label="P10-P90"
    )
    axis.plot(forecast[PERIOD], forecast["mean"], label="forecast (mean)")
    axis.plot(truth[PERIOD], truth[TARGET], "k.", label="actual")
    axis.set_title(f"{largest}: last backtest window", fontsize=9)
    axis.legend(fontsize=7)
    figure.autofmt_xdate()
    figure.tight_layout()
    plt.close(figure)
    return figure


def _calibration_figure(coverage: pd.DataFrame) -> Any:
    """80% interval coverage by lead, one line per volume quintile of series, and the target."""
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for quintile, row in coverage.iterrows():
        axis.plot(row.index, row.to_numpy(), marker="o", label=f"volume quintile {quintile}")
    axis.axhline(0.8, color="k", linestyle="--", linewidth=0.8, label="target 0.8")
    axis.axhspan(0.72, 0.88, color="k", alpha=0.06)
    axis.set_xlabel("lead (periods)")
    axis.set_ylabel("P10-P90 coverage")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=6)
    figure.tight_layout()
    plt.close(figure)
    return figure


def _importance_figure(model: LightGBMForecaster) -> Any:
    plt = pyplot()

    importance = model.feature_importance().head(20)[::-1]
    figure, axis = plt.subplots(figsize=(6, 5))
    axis.barh(importance.index, importance.to_numpy())
    axis.set_title("feature importance (gain)", fontsize=9)
    figure.tight_layout()
    plt.close(figure)
    return figure
