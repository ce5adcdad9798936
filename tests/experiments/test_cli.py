"""The `omni` command as a user runs it: real processes, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from features.eventlog import EventLog, validate_events
from tests.processes import OMNI, omni


@pytest.fixture
def data(small_dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(small_dataset, copy)
    return copy


def test_validate_json_counts_every_hand_appended_corrupt_line(data: Path) -> None:
    """The issue's "Done when": appended corrupt lines are all quarantined; counts add up."""
    events = data / "events.csv"
    lines_before = len(events.read_text().splitlines()) - 1
    first_id = pd.read_csv(events, nrows=1)["event_id"].iloc[0]
    corrupt = [
        "E900001,not-a-time,web,view,I000001,W-1,1,1.0,ONLINE",
        "E900002,2024-03-01T10:00:00,web,teleport,I000001,W-1,1,1.0,ONLINE",
        "E900003,2024-03-01T10:00:00,web,purchase,I000001,W-1,-4,1.0,ONLINE",
        "E900004,2024-03-01T10:00:00,web,purchase,I000001,W-1,lots,1.0,ONLINE",
        "E900005,2024-03-01T10:00:00,web,view,,W-1,1,1.0,ONLINE",
        f"{first_id},2024-03-01T10:00:00,web,view,I000001,W-1,1,1.0,ONLINE",
        "E900007,2024-03-01T10:00:00,web,view",
        "E900008,2024-03-01T10:00:00,web,view,I000001,W-1,1,1.0,ONLINE,surplus",
        "E900009,2024-03-01T10:00:00,web,view," + "Z" * 5000 + ",W-1,1,1.0,ONLINE",
    ]
    with events.open("ab") as fh:
        fh.write(("\n".join(corrupt) + "\n").encode())
        fh.write(b"E900010,2024-03-01T10:00:00,web,view,I\xe9\xff,W-1,1,1.0,ONLINE\n")
    corrupted = json.loads((data / "_truth" / "corrupted_rows.json").read_text())

    result = omni("validate", "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["tables"]["events"]
    assert report["rows"] == lines_before + len(corrupt) + 1
    assert report["quarantined"] == corrupted["events"] + len(corrupt) + 1
    assert report["rows"] == report["accepted"] + report["quarantined"]
    assert sum(report["reasons"].values()) == report["quarantined"]  # every reason, not the top 5
    quarantine = pd.read_csv(data / "_quarantine" / "events.csv", dtype=str)
    assert len(quarantine) == report["quarantined"] and quarantine["reason"].notna().all()
    assert "wrong number of fields" in set(quarantine["reason"])
    # Raw rows, customer keys included: the owner's only (they were 0644 in a 0755 folder).
    assert (data / "_quarantine" / "events.csv").stat().st_mode & 0o777 == 0o600
    assert (data / "_quarantine").stat().st_mode & 0o777 == 0o700


def test_validate_table_output_and_custom_quarantine_dir(data: Path, tmp_path: Path) -> None:
    with (data / "events.csv").open("a") as events:  # a line twice, with no event_id
        events.write(",2024-03-01T10:00:00,web,view,I000001,W-1,1,1.0,ONLINE\n" * 2)
    sales = (data / "sales.csv").read_text().splitlines()
    (data / "sales.csv").write_text("\n".join([*sales, sales[1], sales[2], sales[1]]) + "\n")
    result = omni("validate", "--data", str(data), "--out", str(tmp_path / "q"))
    assert result.returncode == 0, result.stderr
    assert "events" in result.stdout and "quarantined" in result.stdout
    assert "events: 1 accepted row repeats an earlier row in every column, with no event_id" in (
        result.stdout
    )
    assert "sales: 3 accepted rows repeat an earlier row in every column; kept," in result.stdout
    assert (tmp_path / "q" / "events.csv").exists()


def test_an_output_inside_the_data_directory_is_refused_and_the_data_kept(data: Path) -> None:
    """Regression: ``--out`` = ``--data`` deleted five tables and overwrote two with their
    quarantined rows (validate), or the raw events with pseudonymised ones (unify)."""
    before = {f.name: f.read_bytes() for f in data.iterdir() if f.is_file()}
    for command, out in (("validate", data), ("validate", data / "events"), ("unify", data)):
        result = omni(command, "--data", str(data), "--out", str(out))
        assert result.returncode == 2 and "is inside the data directory" in result.stderr
        assert "Traceback" not in result.stderr
    assert {f.name: f.read_bytes() for f in data.iterdir() if f.is_file()} == before
    assert not (data / "events").exists()
    bad = omni("validate", "--data", str(data), "--out", "/proc/omni-quarantine")
    assert bad.returncode == 2 and "cannot use /proc/omni-quarantine" in bad.stderr
    # Regression: rich read "[/]" in a path as markup and stopped with a traceback.
    odd = omni("validate", "--data", str(data / "x[/]y"))
    assert odd.returncode == 2 and "x[/]y does not exist" in odd.stderr
    shutil.copytree(data, data.parent / "x[/]y")
    odd = omni("validate", "--data", str(data.parent / "x[/]y"))
    assert odd.returncode == 0 and "x[/]y/_quarantine/" in odd.stdout, odd.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["forecast", "--store", "S001", "--out"],
        ["placement", "plan", "--item", "I000010", "--out"],
        ["score", "recommender", "--out"],
        ["stock", "report", "--data", "data_samples/retail", "--pairs-out"],
        ["report", "kpis", "--metrics-out"],
    ],
)
def test_a_file_to_write_in_a_missing_folder_is_refused_before_the_work(
    args: list[str], tmp_path: Path
) -> None:
    """Regression: the command did its work, printed it, then stopped with "internal error:
    OSError: Cannot save file into a non-existent directory" (exit 1)."""
    target = tmp_path / "missing" / "out.csv"
    result = omni(*args, str(target))
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .replace("\n", " ")
        .endswith(f"Cannot write {target}: there is no folder {target.parent}.")
    ), result.stderr
    assert not result.stdout


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d / "events.csv").write_text("event_time,channel\n2024-01-01,web\n"),
         "events.csv has no column 'event_type', which the events table requires."),
        (lambda d: None, "has no events or sales table"),
    ],
)  # fmt: skip
def test_contract_errors_are_one_sentence_with_exit_2(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path)
    result = omni("validate", "--data", str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_unify_writes_pseudonymous_tables_only(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "unified"
    result = omni("unify", "--data", str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "customers" in result.stdout
    events = pd.read_parquet(out / "events.parquet")
    customers = pd.read_parquet(out / "customers.parquet")
    keys = pd.read_parquet(out / "customer_keys.parquet")
    assert "customer_key" not in events.columns
    raw_keys = set(pd.read_csv(data / "identities.csv", dtype=str)["customer_key"])
    raw_links = set(pd.read_csv(data / "identities.csv", dtype=str)["link_value"])
    for frame in (events, customers, keys):
        text = frame.astype(str)
        assert not text.isin(raw_keys | raw_links).any().any()
    report = json.loads((out / "identity_report.json").read_text())
    assert report["ignored_links"] and report["customers"] == customers.shape[0]
    assert set(events["customer_id"].dropna()) <= set(customers["customer_id"])


def test_unify_warns_loudly_about_the_demo_salt(data: Path, tmp_path: Path) -> None:
    result = omni("unify", "--data", str(data), "--out", str(tmp_path / "u"), env={"OMNI_SALT": ""})
    assert result.returncode == 0
    assert "DEMO salt" in result.stderr


def test_generate_is_deterministic_and_rejects_bad_options(tmp_path: Path) -> None:
    args = ["--customers", "50", "--items", "20", "--stores", "2", "--days", "10", "--seed", "1"]
    assert omni("generate", "--out", str(tmp_path / "a"), *args).returncode == 0
    assert omni("generate", "--out", str(tmp_path / "b"), *args).returncode == 0
    assert (tmp_path / "a" / "events.csv").read_bytes() == (
        tmp_path / "b" / "events.csv"
    ).read_bytes()
    bad = omni("generate", "--out", str(tmp_path / "c"), "--format", "xlsx")
    assert bad.returncode == 2 and "format must be one of" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_bench_ingest_prints_figures(tmp_path: Path) -> None:
    result = omni("bench", "ingest", "--events", "20000", "--cache", str(tmp_path))
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["events"] > 10_000 and figures["events_per_second"] > 0
    assert figures["peak_rss_mb"] > 0


def test_bench_scale_times_every_step_of_the_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["bench", "scale", "--events", "20000", "--cache", str(tmp_path), "--metrics-out"]
    result = omni(*args, str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert list(figures["steps"]) == [
        "generate", "validate and unify", "interactions", "recommender (ALS)", "demand panel",
        "forecaster (LightGBM)",
    ]  # fmt: skip
    assert "interactions: " in result.stderr  # each step told as it ends
    assert figures["events"] > 10_000 and figures["series"] > 0
    assert all(s["peak_gb"] > 0 for s in figures["steps"].values())
    assert omni(*args, str(out), "--engine", "spark").returncode == 2


def test_bench_fit_memory_measures_a_fit() -> None:
    result = omni(
        "bench", "fit-memory", "--model", "item_knn", "--customers", "2000", "--items", "300"
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert (figures["customers"], figures["items"]) == (2000, 300) and figures["nonzeros"] > 0
    assert {"fit_seconds", "peak_above_matrix_mb", "matrix_mb", "post_new_max_ms"} <= set(figures)
    assert omni("bench", "fit-memory", "--model", "svd").returncode == 2


def test_bench_placement_allocates_the_whole_chain() -> None:
    result = omni("bench", "placement", "--stores", "20", "--items", "50")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert (figures["stores"], figures["items"]) == (20, 50) and figures["units_allocated"] > 0


@pytest.mark.integration
def test_placement_simulate_writes_the_documented_json(tmp_path: Path) -> None:
    from tests.conftest import SAMPLE

    out = tmp_path / "placement.json"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    result = subprocess.run(
        [*OMNI, "placement", "simulate", "--data", str(SAMPLE), "--horizon", "2", "--windows", "1",
         "--metrics-out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, check=False, timeout=600,
        env={**os.environ, **env, "OPENBLAS_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["supply"] == [0.9, 1.1]
    assert set(figures["baselines"]) == {"proportional", "equal"}
    assert set(figures["gap_closed"]) == {"0.9", "1.1"}
    for ratio, blocks in figures["by_supply"].items():  # the oracle is the bound
        assert blocks["oracle"]["lost_units"] <= min(b["lost_units"] for b in blocks.values())
        if ratio == "1.1":
            assert blocks["oracle"]["lost_units"] == 0
    policy, proportional = figures["policy"], figures["baselines"]["proportional"]
    assert set(policy) == {"fill_rate", "lost_units", "leftover_units"}
    # The policy played again with transfers after the first week: the same stock, moved.
    assert figures["transfers"]["transfer_cost"] == 0.1
    for ratio, moved in figures["transfers"]["by_supply"].items():
        blocks = figures["by_supply"][ratio]
        fewer = blocks["policy"]["lost_units"] - blocks["policy_with_transfers"]["lost_units"]
        assert moved["fewer_lost_units"] == pytest.approx(fewer)
        assert moved["net_value"] == pytest.approx(1.25 * fewer - 0.1 * moved["units_moved"])
    # Equal total stock: what one policy loses less, it leaves over less.
    assert policy["lost_units"] - proportional["lost_units"] == pytest.approx(
        policy["leftover_units"] - proportional["leftover_units"]
    )
    assert policy["lost_units"] < proportional["lost_units"]


def test_the_event_store_password_never_reaches_a_cli_message(tmp_path: Path) -> None:
    """Regression (#11): the store's errors carried its whole URL, password included."""
    env = {
        "OMNI_EVENTS_URL": "postgresql://omni:Sup3r-Secret-pw@127.0.0.1:1/test",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
    }
    result = omni("train", "recommender", "--data", str(tmp_path), env=env)
    assert result.returncode == 2, result.stderr
    assert "Sup3r-Secret-pw" not in result.stderr + result.stdout
    assert "omni:***@127.0.0.1:1" in result.stderr and "Traceback" not in result.stderr


def test_events_move_takes_the_log_to_postgresql_once(tmp_path: Path, postgres_url: str) -> None:
    from features.eventlog import EventLog, validate_events

    source = f"sqlite:///{tmp_path}/events.db"
    log = EventLog(source)
    view = {"event_time": "2026-11-23T10:00:00", "channel": "app", "event_type": "view"}
    log.append(
        validate_events([{**view, "item_id": "I1", "event_id": f"e{i}"} for i in range(3)])[0]
    )
    log.close()
    moved = omni("events", "move", "--to", postgres_url, env={"OMNI_EVENTS_URL": source})
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.startswith("Copied 3 events, 0 movements, 0 exposures from sqlite:///")
    assert "now refuses new rows" in moved.stdout
    again = omni("events", "copy", "--from", source, "--to", postgres_url)
    assert again.returncode == 2 and "already holds 3 rows of omni_events" in again.stderr
    assert "Traceback" not in again.stderr
    # Regression: the --from and --to URLs' mistakes were blamed on OMNI_EVENTS_URL, and an
    # empty --from (an unset variable) copied the default log.
    for args, said in [
        (("--from", "sqlite:///nowhere/events.db"), "There is no event log at nowhere/events.db."),
        (("--from", ""), "--from is empty"),
        (("--from", f"{tmp_path}/events.db"), "--from="),
    ]:
        wrong = omni("events", "copy", *args, "--to", f"sqlite:///{tmp_path}/copy.db")
        assert wrong.returncode == 2 and said in wrong.stderr, wrong.stderr
    assert not (tmp_path / "copy.db").exists()


def test_the_embedded_mlflow_database_is_created_private(tmp_path: Path) -> None:
    """Regression (#11): mlflow.db was created world-readable (0644); and only the commands
    that use MLflow create it."""
    (tmp_path / "sub").mkdir()
    env = {"MLFLOW_TRACKING_URI": ""}
    result = subprocess.run(
        [*OMNI, "forecast", "--help"],
        capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mlflow.db").stat().st_mode & 0o777 == 0o600
    result = subprocess.run(
        [*OMNI, "generate", "--help"], cwd=tmp_path / "sub", check=False,
        capture_output=True, env={**os.environ, **env},
    )  # fmt: skip
    assert result.returncode == 0 and not (tmp_path / "sub" / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("forecast", "--store", "S001"), "has no demand_forecaster@champion. Run omni train"),
        (("build",), "no champion yet: the MLflow registry has no recommender@champion"),
        # Regression: an internal error (LookupError) instead.
        (("score", "recommender", "--out", "recs.parquet"), "has no recommender@champion"),
        (("report", "kpis", "--since", "2026-01-01"), "has no recommender@champion"),
    ],
)
def test_commands_that_need_a_champion_say_so_when_there_is_none(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    tracking = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    result = omni(*args, env={**tracking, "BENTOML_HOME": str(tmp_path / "bentoml")})
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


def test_stock_report_reads_the_snapshot_and_the_logged_movements(tmp_path: Path) -> None:
    from features.eventlog import EventLog, check_movements
    from features.schema import Bounds
    from tests.conftest import SAMPLE

    url = f"sqlite:///{tmp_path}/events.db"
    stock = pd.read_csv(SAMPLE / "inventory.csv.gz").sort_values("date")
    store, item, on_hand = stock.drop_duplicates(["store_id", "item_id"], keep="last").iloc[0][
        ["store_id", "item_id", "on_hand"]
    ]
    count = {
        "movement_time": "2026-11-01T08:00:00", "movement_type": "count", "node_id": store,
        "item_id": item, "quantity": on_hand + 2, "movement_id": "count-1",
    }  # fmt: skip
    empty = {**count, "movement_type": "adjustment", "quantity": -(on_hand + 2),
             "movement_time": "2026-11-01T20:00:00", "movement_id": "shrink-1"}  # fmt: skip
    movements, reasons = check_movements([count, empty], Bounds())
    assert reasons == [None, None]
    log = EventLog(url)
    log.append_movements(movements)
    log.close()
    out = tmp_path / "stock.json"
    result = omni(
        "stock", "report", "--data", str(SAMPLE), "--until", "2026-11-02T08:00:00",
        "--metrics-out", str(out), env={"OMNI_EVENTS_URL": url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["counts"] == 1 and figures["count_mean_error"] == 2.0  # 2 more than the books
    assert figures["stockout_hours"] >= 12.0  # that pair, empty since 20:00
    assert "most hours out" in result.stdout and "1 stock counts" in result.stdout
    # Regression: with no stock anywhere it reported "0 node/item pairs ... 0.0%" and exit 0.
    sales_only = tmp_path / "sales-only"
    sales_only.mkdir()
    shutil.copy(SAMPLE / "sales.csv.gz", sales_only)
    nothing = omni(
        "stock", "report", "--data", str(sales_only), env={"OMNI_EVENTS_URL": f"{url}-none"}
    )
    assert nothing.returncode == 2 and "No stock to report" in nothing.stderr, nothing.stderr
    early = omni(
        "stock", "report", "--data", str(SAMPLE), "--until", "2000-01-01T00:00:00",
        env={"OMNI_EVENTS_URL": url},
    )  # fmt: skip
    assert early.returncode == 2 and "the stock starts later" in early.stderr, early.stderr


def test_a_tracking_server_that_does_not_answer_is_one_sentence_in_seconds(
    tmp_path: Path,
) -> None:
    """Regression: nothing for 4 min 12 s (MLflow's seven retries), then an internal error."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # nothing listens on 9
    env.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
    result = subprocess.run(
        [*OMNI, "forecast", "--store", "S001"],
        capture_output=True, text=True, cwd=tmp_path, check=False, timeout=120, env=env,
    )  # fmt: skip
    said = " ".join(result.stderr.split())
    assert result.returncode == 2 and said.startswith("error: MLflow at http://127.0.0.1:9:"), said


def test_placement_plan_says_what_it_sends_and_keeps(champions: Path, tmp_path: Path) -> None:
    from tests.conftest import SAMPLE

    written = tmp_path / "plan.csv"
    args = ("placement", "plan", "--item", "I000010", "--units", "50", "--horizon", "2")
    result = omni(*args, "--data", str(SAMPLE), "--out", str(written))
    assert result.returncode == 0, result.stderr[-2000:]
    plan = pd.read_csv(written)
    assert list(plan.columns) == [  # /placement's stores
        "store_id", "on_hand", "send", "final_stock", "expected_demand", "expected_sales",
        "expected_fill_rate", "expected_lost", "expected_leftover",
    ]  # fmt: skip
    sent = int(plan["send"].sum())
    assert f"{sent} units sent, {50 - sent} kept at the DC." in result.stdout
    assert "Stock: the latest inventory snapshot in" in result.stderr
    over = omni(*args[:4], "--units", "1000000001")  # the API's bound: 10^9
    assert over.returncode == 2 and "less than or equal to 1000000000" in over.stderr
    # No units: the DC's in the snapshot (the sample's stores table names one DC, "DC").
    inventory = pd.read_csv(SAMPLE / "inventory.csv.gz", dtype={"on_hand": str})
    at_dc = inventory[(inventory["store_id"] == "DC") & (inventory["item_id"] == "I000010")]
    units = int(float(at_dc.sort_values("date")["on_hand"].iloc[-1]))
    dc = omni(*args[:4], "--horizon", "2", "--data", str(SAMPLE))
    assert dc.returncode == 0 and f"I000010: {units} units" in dc.stdout, dc.stderr[-2000:]
    assert "kept at DC." in dc.stdout
    wrong = omni(*args[:4], "--dc", "S001", "--data", str(SAMPLE))
    assert wrong.returncode == 2 and "'S001' is not a DC in the stores table" in wrong.stderr


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ({"OMNI_MAX_BODY_BYTES": "1MB"}, "OMNI_MAX_BODY_BYTES='1MB' is not a number of bytes"),
        ({"OMNI_CONTROL_SHARE": "10%"}, "OMNI_CONTROL_SHARE='10%' is not a share in [0, 0.5]."),
        ({"OMNI_EXPOSURES": "no"}, "OMNI_EXPOSURES='no' is neither on nor off."),
        ({"OMNI_EVENTS_URL": "mysql://h/db"}, "is neither sqlite:///PATH nor postgresql://"),
    ],
)
def test_omni_serve_refuses_a_wrong_setting_before_it_starts(
    setting: dict[str, str], said: str, tmp_path: Path
) -> None:
    """Regression: a wrong setting restarted the worker again and again (a traceback each
    time); OMNI_MAX_BODY_BYTES=1MB answered every route, /livez too, with a 500."""
    env = {**os.environ, **setting}
    result = subprocess.run(
        [*OMNI, "serve", "--port", "1"], capture_output=True, text=True, env=env, cwd=tmp_path,
        check=False, timeout=60,
    )  # fmt: skip
    said_all = " ".join(result.stderr.split())
    assert result.returncode == 2 and said in said_all, said_all
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_omni_serve_refuses_a_port_out_of_range(port: str) -> None:
    """Regression: 'internal error: OverflowError: bind(): port must be 0-65535', exit 1."""
    result = omni("serve", "--port", port)
    assert result.returncode == 2 and "--port" in result.stderr and "Traceback" not in result.stderr


def test_omni_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    """Regression: about 50 lines of BentoML's traceback, exit 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = omni("serve", "--port", str(port))
    said = " ".join(result.stderr.split())
    assert result.returncode == 2 and f"Port {port} on 127.0.0.1 is in use" in said, said


def test_omni_forecast_writes_the_columns_of_the_api(champions: Path, tmp_path: Path) -> None:
    """Regression: the CSV said ds and unique_id where /forecast says period_end, and the table
    gave the mean to one decimal beside a P90 to two."""
    written = tmp_path / "forecast.csv"
    result = omni(
        "forecast", "--store", "S001", "--items", "I000010", "--items", "I000020",
        "--horizon", "2", "--out", str(written),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    frame = pd.read_csv(written)
    assert list(frame.columns) == [
        "store_id", "item_id", "period_end", "mean", "p10", "p50", "p90", "method",
    ]  # fmt: skip
    assert len(frame) == 4 and set(frame["item_id"]) == {"I000010", "I000020"}
    assert "Trained on sales to 20" in result.stdout


def test_a_dask_scheduler_that_does_not_answer_is_one_sentence(tmp_path: Path) -> None:
    """Regression: it was an "internal error: OSError" (exit 1), a bug to report."""
    from tests.processes import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    result = omni(
        "validate", "--data", "data_samples/retail", "--out", str(tmp_path), "--engine", "dask",
        env={"OMNI_DASK_SCHEDULER": address, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"No Dask scheduler answers at {address} ($OMNI_DASK_SCHEDULER)" in result.stderr
    assert "internal error" not in result.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["validate"], "Missing option '--data' (see omni validate --help)."),
        (["placement", "plan", "--item", "I1", "--units", "-5"], "Invalid value for '--units'"),
        (["train", "nosuch"], "No such command 'nosuch' (see omni train --help)."),
    ],
)
def test_a_mistyped_command_line_is_one_sentence(args: list[str], said: str) -> None:
    """Regression: Click's refusals were a usage line and a box of five lines."""
    result = omni(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and said in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout
    assert omni("train", "--help").returncode == 0
    bare = omni()  # the help, and nothing said wrong
    assert bare.returncode == 2 and "Usage" in bare.stdout and not bare.stderr


def test_a_backtest_whose_baseline_forecast_exactly_says_so(tmp_path: Path) -> None:
    """Regression: demand the same every day gives a baseline WAPE of 0, and the backtest's
    summary line was a ZeroDivisionError (exit 1; after `omni train forecaster` had
    registered its model)."""
    data = tmp_path / "flat"
    data.mkdir()
    days = pd.date_range("2024-01-01", periods=280, freq="D").strftime("%Y-%m-%d")
    items = [f"I{i}" for i in range(6)]
    sales = pd.DataFrame(
        {"date": list(days) * 6, "store_id": "S1", "item_id": sorted(items * 280), "units": 5}
    )
    sales.to_csv(data / "sales.csv", index=False)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    args = ["backtest", "forecaster", "--data", str(data), "--horizon", "4", "--freq", "W"]
    result = omni(*args, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "a baseline forecast every test period exactly (WAPE 0);" in result.stdout


def test_a_backtest_reads_the_service_event_log_as_training_does(tmp_path: Path) -> None:
    """Regression: omni backtest forecaster left out the events the service logged, which
    omni train forecaster reads: the same --data scored two ways (WAPE 0.9405 and 0.9604)."""
    data = tmp_path / "flat"
    data.mkdir()
    times = pd.date_range("2024-01-01T10:00", periods=280, freq="D").strftime("%Y-%m-%dT%H:%M:%S")
    items = sorted([f"I{i}" for i in range(6)] * 280)
    pd.DataFrame(
        {"event_id": [f"e{i}" for i in range(6 * 280)], "event_time": list(times) * 6,
         "channel": "store", "event_type": "purchase", "item_id": items,
         "customer_key": "LC-1", "quantity": 5, "unit_price": 1.0, "store_id": "S1"}
    ).to_csv(data / "events.csv", index=False)  # fmt: skip
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    accepted, _ = validate_events(
        [{"event_time": "2024-10-05T12:00:00", "channel": "store", "event_type": "purchase",
          "item_id": "I1", "customer_key": "LC-1", "quantity": 40, "store_id": "S1",
          "event_id": "logged-1"}]
    )  # fmt: skip
    log.append(accepted)
    log.close()
    args = ["backtest", "forecaster", "--data", str(data), "--horizon", "4", "--freq", "W"]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    alone = omni(*args, env={**env, "OMNI_EVENTS_URL": f"sqlite:///{tmp_path}/none.db"})
    assert alone.returncode == 0 and "exactly (WAPE 0)" in alone.stdout, alone.stderr[-2000:]
    logged = omni(*args, env={**env, "OMNI_EVENTS_URL": f"sqlite:///{tmp_path}/events.db"})
    assert logged.returncode == 0, logged.stderr[-2000:]
    assert "exactly (WAPE 0)" not in logged.stdout  # the logged purchase is a test week's
