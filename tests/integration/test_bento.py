"""``omni build`` then ``bentoml serve <bento>``: the Bento serves the champions of its build.

Built in a BentoML home of its own from the session's champions, the Bento is served by a real
``bentoml serve`` process after a newer champion has been promoted in MLflow: it still serves,
and reloads, the versions pinned at build.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from serving.registry import CHAMPION, FORECASTER, RECOMMENDER
from tests.processes import OMNI, post, readyz, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAMES = (RECOMMENDER, FORECASTER)


@pytest.fixture
def newer_champions(champions: Path) -> Iterator[dict[str, str]]:
    """Promote a new version of each registered model (a copy of its champion); the champions
    the session had are given back afterwards. Yields the versions promoted."""
    client = MlflowClient()
    before = {name: client.get_model_version_by_alias(name, CHAMPION) for name in NAMES}
    promoted: dict[str, str] = {}
    try:
        for name, current in before.items():
            newer = client.create_model_version(
                name, current.source, run_id=current.run_id, model_id=current.model_id
            )
            client.set_registered_model_alias(name, CHAMPION, newer.version)
            promoted[name] = str(newer.version)
        yield promoted
    finally:
        for name, current in before.items():
            client.set_registered_model_alias(name, CHAMPION, current.version)
            if name in promoted:
                client.delete_model_version(name, promoted[name])


def test_a_built_bento_serves_the_champions_of_its_build(
    champions: Path, keys: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    client = MlflowClient()
    pinned = {
        name: str(client.get_model_version_by_alias(name, CHAMPION).version) for name in NAMES
    }
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "OMNI_EVENTS_URL": f"sqlite:///{tmp_path}/events.db",
        "COLUMNS": "200",
    }

    built = subprocess.run(
        [*OMNI, "build"], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert built.returncode == 0, built.stderr
    found = re.search(r"built Bento (\S+)", built.stdout)
    assert found, built.stdout
    tag = found.group(1)
    for name, version in pinned.items():
        assert f"pinned {name} v{version} " in built.stdout
    bento_name, bento_version = tag.split(":")
    source = tmp_path / "bentoml" / "bentos" / bento_name / bento_version / "src"
    assert {p.name for p in source.iterdir()} == {"bentofile.yaml", "features", "models", "serving"}

    newer = request.getfixturevalue("newer_champions")  # promoted after the build
    assert newer != pinned
    # MLflow answers, and its champions are newer: the Bento serves (and reloads) its own.
    with serving(env, tmp_path / "server.log", tag, timeout=90) as (port, _):
        ready = readyz(port)
        assert ready["ready"] is True
        served = {
            RECOMMENDER: ready["recommender_version"],
            FORECASTER: ready["forecaster_version"],
        }
        assert served == pinned

        body = {"customer_key": "LC-00009806", "channel": "store", "n": 5}
        status, answer = post(port, "/recommend", body, keys["recommend"])
        assert status == 200, answer
        assert answer["items"] and answer["model_version"] == pinned[RECOMMENDER]

        status, reloaded = post(port, "/admin/reload", {}, keys["admin"])
        assert status == 200, reloaded
        assert reloaded["recommender_version"] == pinned[RECOMMENDER]
        assert reloaded["forecaster_version"] == pinned[FORECASTER]

    # No MLflow at all: a registry that cannot even be opened.
    offline = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/absent/mlflow.db"}
    with serving(offline, tmp_path / "offline.log", tag, timeout=90) as (port, _):
        ready = readyz(port)
        assert ready["ready"] is True, ready
        assert ready["recommender_version"] == pinned[RECOMMENDER]
        assert ready["forecaster_version"] == pinned[FORECASTER]
        status, answer = post(port, "/recommend", body, keys["recommend"])
        assert status == 200 and answer["items"], answer


@pytest.mark.parametrize(
    ("options", "bentofile", "said"),
    [
        ([], "- a list\n", "is not a bentofile: a YAML mapping of build options."),
        ([], "service: [unclosed\n", "is not YAML"),
        (["--version", "../../evil"], None, "is not a valid BentoML tag"),
    ],
)
def test_a_build_refused_copies_no_model(
    champions: Path, tmp_path: Path, options: list[str], bentofile: str | None, said: str
) -> None:
    """Regression: both champions were copied into BentoML's model store before the options
    were read — a copy of each left behind by every failed build — and a bentofile that was not
    a mapping was an internal error."""
    home = tmp_path / "bentoml"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    if bentofile is not None:
        (tmp_path / "bentofile.yaml").write_text(bentofile)
        options = ["--bentofile", str(tmp_path / "bentofile.yaml")]
    built = subprocess.run(
        [*OMNI, "build", *options], env=env, capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 2 and said in " ".join(built.stderr.split()), built.stderr
    assert "internal error" not in built.stderr
    assert not list(home.glob("models/*/*"))  # no model copied
