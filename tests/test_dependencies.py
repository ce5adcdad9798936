"""What the code imports is what pyproject.toml declares, and requirements.lock pins it.

Every absolute import in ``features``, ``models``, ``serving`` and ``experiments`` (inside
functions too) that is neither the standard library nor our own packages must come from a
distribution declared in ``[project]``. The ``omni`` command (``experiments.cli``) is installed
with the project and reaches all of ``experiments``, so nothing that the four packages import may
live only in the ``dev`` extra: the core dependencies and the ``postgres`` extra must do.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from features.eventlog import EventLog

ROOT = Path(__file__).resolve().parents[1]
OWN = ("features", "models", "serving", "experiments")
#: Runs in a venv of its own with mlforecast (started by ``mlforecast_reference.py``).
EXCLUDED = {ROOT / "experiments" / "benchmarks" / "mlforecast_job.py"}
LOCK = ROOT / "requirements.lock"
SERVE_LOCK = ROOT / "requirements-serve.lock"  # what a Bento installs


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging comes with pip's and our tools' installs
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, requirement
        return _normalise(match.group(1))
    return _normalise(Requirement(requirement).name)


@cache
def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared(*extras: str) -> set[str]:
    """The names of the core dependencies and of those of ``extras``."""
    project = _project()
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {_requirement_name(r) for r in requirements} - {_normalise(project["name"])}


@cache
def _providers() -> dict[str, list[str]]:
    return dict(packages_distributions())


@cache
def _imports(package: str) -> dict[str, set[str]]:
    """Top-level module names of the absolute imports in ``package`` -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if path in EXCLUDED:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _all_extras() -> list[str]:
    return list(_project().get("optional-dependencies", {}))


def _needed(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """The distributions that ``packages`` import -> the files importing them."""
    providers = _providers()
    needed: dict[str, set[str]] = {}
    for package in packages:
        for module, files in _imports(package).items():
            distributions = providers.get(module)
            assert distributions, f"{module} (imported by {sorted(files)}) is not installed"
            # mlflow's modules come from mlflow, mlflow-skinny and mlflow-tracing: one will do.
            key = " or ".join(sorted({_normalise(d) for d in distributions}))
            needed.setdefault(key, set()).update(files)
    return needed


def _missing(needed: dict[str, set[str]], declared: set[str]) -> dict[str, list[str]]:
    return {
        distributions: sorted(files)
        for distributions, files in needed.items()
        if not declared & set(distributions.split(" or "))
    }


def test_every_imported_distribution_is_declared() -> None:
    assert _missing(_needed(OWN), _declared(*_all_extras())) == {}


#: Modules reached only through an option that needs an extra, and that extra: the CLI says
#: which one to install when it is missing (``--engine dask``).
OPTIONAL = {"experiments/pipelines/distributed.py": "dask"}


@pytest.mark.parametrize("packages", [("features", "models", "serving"), ("experiments",)])
def test_the_service_and_the_cli_need_only_core_and_postgres(packages: tuple[str, ...]) -> None:
    needed = {
        distributions: core
        for distributions, files in _needed(packages).items()
        if (core := files - set(OPTIONAL))
    }
    assert _missing(needed, _declared("postgres")) == {}


def test_an_optional_engine_needs_only_its_extra() -> None:
    for path, extra in OPTIONAL.items():
        mine = {d: {path} for d, files in _needed(("experiments",)).items() if path in files}
        assert _missing(mine, _declared("postgres", extra)) == {}, path


def test_a_logged_model_requires_what_features_and_models_import() -> None:
    """A registered model carries ``features`` and ``models`` as code and pins REQUIREMENTS."""
    from models.mlflow_code import REQUIREMENTS

    listed = {_normalise(d) for d in REQUIREMENTS} | {"mlflow"}  # MLflow adds itself
    listed |= _declared("postgres") - _declared()  # the event log's driver: no model reads it
    assert _missing(_needed(("features", "models")), listed) == {}


def test_nothing_declared_goes_unused() -> None:
    """Each core dependency and runtime extra is imported somewhere (tools live in ``dev``)."""
    imported = {d for key in _needed(OWN) for d in key.split(" or ")}
    assert _declared("postgres") - imported == set()


def _pins(lock: Path) -> dict[str, str]:
    found = re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", lock.read_text(), re.M)
    return {_normalise(m.group(1)): m.group(2) for m in found}


def test_the_lock_pins_every_declared_distribution() -> None:
    pins = _pins(LOCK)
    assert _declared(*_all_extras()) - set(pins) == set()
    assert "psycopg-binary" in pins  # psycopg[binary]: no libpq needed on the machine


def test_the_bento_installs_the_tested_versions_without_the_dev_tools() -> None:
    serve, tested = _pins(SERVE_LOCK), _pins(LOCK)
    assert _declared("postgres") - set(serve) == set()
    assert {name: v for name, v in serve.items() if tested.get(name) != v} == {}
    assert not {"pytest", "mypy", "ruff"} & set(serve)


def test_the_mlforecast_reference_is_pinned_and_shares_numpy_with_the_lock() -> None:
    from experiments.benchmarks.mlforecast_reference import MLFORECAST_STACK

    assert all(requirement.count("==") == 1 for requirement in MLFORECAST_STACK)  # all exact
    pins = dict(requirement.split("==") for requirement in MLFORECAST_STACK)
    assert pins["numpy"] == _pins(LOCK)["numpy"]


def test_postgresql_without_the_driver_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "psycopg" not in _declared()  # only PostgreSQL users need it: the postgres extra
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    with pytest.raises(ValueError, match=re.escape("pip install 'omnichannel-ml[postgres]'")) as e:
        EventLog("postgresql://omni:Secret@127.0.0.1:1/test")
    assert "Secret" not in str(e.value)
    log = EventLog("sqlite:///unused.db")  # SQLite needs no driver; nothing is opened yet
    assert not log.quarantined
