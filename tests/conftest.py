"""Shared fixtures: one embedded grid over real loopback HTTP for the integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from htcgrid import AWSConnector

TESTS_DIR = Path(__file__).resolve().parent

# jupyter_core warns about its old path layout unless told to use the new one; the warning
# would fail every notebook test, since warnings are errors here.
os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")

#: Short timings so that fault scenarios play out in seconds.
FAST_SETTINGS = {
    "heartbeat_interval_sec": 0.5,
    "heartbeat_expiry_sec": 3,
    "checker_period_sec": 0.5,
    "visibility_timeout_sec": 5,
    "empty_queue_backoff_sec": 0.2,
}


@pytest.fixture(autouse=True)
def _no_ambient_grid(monkeypatch):
    """Tests see no grid configuration or credentials from the developer's shell."""
    for name in ("AGENT_CONFIG_FILE", "INTRA_VPC", "USERNAME", "PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTCGRID_PROGRESS", "0")


def start_grid(**kwargs):
    from htcgrid.local import LocalGrid
    from htcgrid.local.settings import GridSettings

    settings = GridSettings(**{**FAST_SETTINGS, **kwargs.pop("settings", {})})
    kwargs.setdefault("agents", 2)
    kwargs.setdefault("extra_pythonpath", [str(TESTS_DIR)])
    return LocalGrid(settings=settings, **kwargs).start()


@pytest.fixture(scope="session")
def grid():
    """An embedded grid with the mock compute engine, shared by the integration tests."""
    grid = start_grid()
    try:
        yield grid
    finally:
        grid.stop()


@pytest.fixture
def connector(grid):
    """An authenticated AWSConnector on the shared embedded grid."""
    connector = AWSConnector()
    connector.init(grid.config_path, username=grid.username, password=grid.password)
    connector.authenticate()
    try:
        yield connector
    finally:
        connector.close()


def pytest_configure(config):
    # Agents and workers spawned by the tests import test handlers from this folder.
    path = os.environ.get("PYTHONPATH", "")
    if str(TESTS_DIR) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), path) if p)


@pytest.fixture
def untuned_moto(monkeypatch):
    """Put moto's tunable steps in this process back as they were, whatever the test tuned."""
    import moto.core.responses
    import moto.sqs.models
    from moto.core import serialize
    from moto.sqs.models import SQSBackend

    retention_check = "is_message_valid_based_on_retention_period"
    monkeypatch.setattr(SQSBackend, retention_check, getattr(SQSBackend, retention_check))
    for name in ("unix_time", "unix_time_millis"):
        monkeypatch.setattr(moto.sqs.models, name, getattr(moto.sqs.models, name))
    monkeypatch.setattr(
        moto.core.responses,
        "method_names_from_class",
        moto.core.responses.method_names_from_class,
    )
    monkeypatch.delitem(serialize.SERVICE_SPECIFIC_SERIALIZERS, "dynamodb", raising=False)
