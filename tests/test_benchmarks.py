"""The benchmark suite still runs: its smallest sizes, one benchmark, no timing asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<name>`` with this interpreter; fail with its stderr if it fails."""
    finished = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


def test_rewrite_config_sends_every_loopback_url_through_the_proxy(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.latency import loopback_endpoints, rewrite_config

    config = {
        "region": "us-east-1",
        "aws_endpoint_url": "http://127.0.0.1:5000",
        "public_api_gateway_url": "http://127.0.0.1:6000/v1",
        "local_aws_endpoints": {"s3": "http://127.0.0.1:5001", "sqs": "http://127.0.0.1:5000"},
        "local_agents": 2,
    }
    routes = {
        "127.0.0.1:5000": "127.0.0.1:7000",
        "127.0.0.1:5001": "127.0.0.1:7001",
        "127.0.0.1:6000": "127.0.0.1:7002",
    }

    assert loopback_endpoints(config) == sorted(routes)
    assert rewrite_config(config, routes) == {
        "region": "us-east-1",
        "aws_endpoint_url": "http://127.0.0.1:7000",
        "public_api_gateway_url": "http://127.0.0.1:7002/v1",
        "local_aws_endpoints": {"s3": "http://127.0.0.1:7001", "sqs": "http://127.0.0.1:7000"},
        "local_agents": 2,
    }


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_send_benchmark_runs_at_smoke_size_and_writes_its_figures(tmp_path):
    results = tmp_path / "results.json"

    finished = run_script(
        "run.py", "--smoke", "--only", "send", "--json", str(results), timeout=200
    )

    assert "send 5 tasks, loopback" in finished.stdout
    document = json.loads(results.read_text(encoding="utf-8"))
    assert document["preset"] == "smoke"
    speed = document["machine"]["loop_speed"]
    assert [reading["after"] for reading in speed["readings"]] == [None, "send"]
    values = [reading["value"] for reading in speed["readings"]]
    assert min(values) <= speed["median"] <= max(values)
    assert f"loop speed {speed['median']:.1f} M iterations/s" in finished.stdout
    # Linux says how much CPU time the host took: a share, however small.
    assert 0 <= document["benchmarks"][0]["stolen_percent"] <= 100
    figures = {figure["key"]: figure for figure in document["figures"]}
    assert sorted(figures) == ["send.latency", "send.loopback"]
    for figure in figures.values():
        # A number and a verdict, whatever they are: timings are the benchmark's business.
        assert isinstance(figure["value"], float), figure
        assert figure["status"] in ("PASS", "MISS")
    assert figures["send.latency"]["data"]["network"]["delay_ms"] == 20.0


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_cpu_split_names_every_process_of_the_grid_and_the_client():
    finished = run_script(
        "cpu_split.py", "--tasks", "20", "--agents", "1", "--repeats", "1", timeout=150
    )

    out = finished.stdout
    assert out.startswith("20 zero-work tasks on 1 agents")
    rows = {line.split()[0] for line in out.splitlines()[3:] if line and line[0].isalpha()}
    for process in (
        "services-sqs",
        "services-s3",
        "services-dynamodb",
        "gateway",
        "checker",
        "agents",
        "workers",
        "client",
        "all",
    ):
        assert process in rows, out
    assert "tasks ran for" in out
