"""The client under faults, over loopback: a flaky API, a grid that goes away, expiring tokens.

Most tests put a :class:`~faultproxy.FaultProxy` between the client and an embedded grid,
script faults on /submit, /result or /cancel, and check the exact outcome: what the client
returns or raises, what the grid received, and how often each task ran (the test handler
``handlers:record_execution`` writes one line per attempt).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import htcgrid
from conftest import start_grid
from faultproxy import RESET_AFTER, RESET_BEFORE, Fault, FaultProxy, status_after, status_before
from htcgrid import AWSConnector, GridClient, aws, protocol
from htcgrid.controlplane import RetryPolicy
from htcgrid.errors import APIError, GridUnreachableError, SubmissionUncertainError
from htcgrid.local import LocalGrid
from htcgrid.session import SessionTimeoutError

pytestmark = pytest.mark.integration

#: Retries that play out in well under a second.
FAST = RetryPolicy(
    attempts=4,
    backoff_sec=0.02,
    max_backoff_sec=0.1,
    connect_timeout_sec=2,
    read_timeout_sec=10,
    give_up_after_sec=10,
)
#: The ID token lifetime of the grid that tests token refresh (seconds).
TOKEN_LIFETIME_SEC = 2
REFERENCE_543 = "Batch write to SQS failed"


# --- grids, proxies and connectors -------------------------------------------------------


@pytest.fixture(scope="module")
def fault_grid() -> Iterator[LocalGrid]:
    """A grid whose handler records each attempt, for exactly-once checks."""
    grid = start_grid(handler="handlers:record_execution", agents=2)
    try:
        yield grid
    finally:
        grid.stop()


@pytest.fixture(scope="module")
def idle_grid() -> Iterator[LocalGrid]:
    """A grid without agents: every task stays pending until it is cancelled."""
    grid = start_grid(agents=0)
    try:
        yield grid
    finally:
        grid.stop()


def connector_for(
    grid: LocalGrid, api_url: str, *, private: bool = False, policy: RetryPolicy = FAST
) -> AWSConnector:
    """A signed-in connector for ``grid`` whose API calls go to ``api_url``."""
    config = {
        **grid.config.raw,
        "public_api_gateway_url": api_url,
        "private_api_gateway_url": api_url,
    }
    connector = AWSConnector()
    connector.init(
        config,
        username=grid.username,
        password=grid.password,
        private=private,
        retry_policy=policy,
    )
    connector.authenticate()
    return connector


@pytest.fixture
def proxy(fault_grid: LocalGrid) -> Iterator[FaultProxy]:
    with FaultProxy(fault_grid.api_url) as proxy:
        yield proxy


@pytest.fixture
def via_proxy(fault_grid: LocalGrid, proxy: FaultProxy) -> Iterator[AWSConnector]:
    connector = connector_for(fault_grid, proxy.url)
    try:
        yield connector
    finally:
        connector.close()


@pytest.fixture
def direct(fault_grid: LocalGrid) -> Iterator[AWSConnector]:
    connector = connector_for(fault_grid, fault_grid.api_url)
    try:
        yield connector
    finally:
        connector.close()


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "executions.txt"


def recorded_tasks(record: Path, n: int, **extra: Any) -> list[dict[str, Any]]:
    """``n`` tasks that record each attempt in ``record`` and return their index."""
    return [{"record_to": str(record), "return": i, **extra} for i in range(n)]


def executions(record: Path) -> Counter[str]:
    """How often each task started, by task id."""
    return Counter(record.read_text().split()) if record.exists() else Counter()


def table_size(grid: LocalGrid) -> int:
    """The number of rows in the grid's state table (every session's tasks)."""
    dynamodb = aws.client(grid.config, "dynamodb")
    request: dict[str, Any] = {"TableName": grid.config.get("ddb_state_table"), "Select": "COUNT"}
    total = 0
    while True:
        page = dynamodb.scan(**request)
        total += page["Count"]
        if "LastEvaluatedKey" not in page:
            return total
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def wait_for(condition: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL that refuses connections: its port is bound but never listens."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{reserved.getsockname()[1]}"


# --- /submit -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "submits", "first_result"),
    [
        # The grid never saw the request: it says so (404), and the session is sent again.
        (RESET_BEFORE, ["reset before", "pass 200"], "pass 404"),
        (status_before(502), ["502 before", "pass 200"], "pass 404"),
        (status_before(503), ["503 before", "pass 200"], "pass 404"),
        # Throttled by the gateway: retried at once, no question asked.
        (status_before(429), ["429 before", "pass 200"], "pass 200"),
        # The grid took the session, the answer was lost: it holds every task, no resubmit.
        (RESET_AFTER, ["reset after 200"], "pass 200"),
        (status_after(502), ["502 after 200"], "pass 200"),
        (status_after(543, REFERENCE_543), ["543 after 200"], "pass 200"),
    ],
    ids=lambda value: value.name.replace(" ", "-") if isinstance(value, Fault) else None,
)
def test_a_submit_fault_ends_in_one_session_whose_tasks_run_once(
    fault, submits, first_result, fault_grid, proxy, via_proxy, record
):
    rows_before = table_size(fault_grid)
    proxy.script("submit", fault)

    submission = via_proxy.send(recorded_tasks(record, 3))
    results = via_proxy.get_results(submission, timeout_sec=30)

    session_id = submission["session_id"]
    assert submission["task_ids"] == [f"{session_id}_{i}" for i in range(3)]
    assert proxy.outcomes("submit") == submits
    assert {e.query for e in proxy.exchanges("submit")} == {f"submission_content={session_id}"}
    assert proxy.outcomes("result")[0] == first_result
    assert results["finished"] == submission["task_ids"]
    assert results["finished_OUTPUT"] == ["0", "1", "2"]
    assert executions(record) == Counter(submission["task_ids"])
    assert table_size(fault_grid) == rows_before + 3


def test_a_resubmit_that_meets_its_own_earlier_success_recognises_it(
    fault_grid, proxy, via_proxy, record
):
    # The answer of the first /submit is lost, and so is the grid's first answer to /result,
    # which stands in for "no such session" (as while a first attempt is still under way):
    # the client submits again, is told 409, and finds every task held.
    rows_before = table_size(fault_grid)
    proxy.script("submit", status_after(502))
    proxy.script("result", status_before(404, '{"message": "the grid knows no session"}'))

    submission = via_proxy.send(recorded_tasks(record, 2))
    results = via_proxy.get_results(submission, timeout_sec=30)

    assert proxy.outcomes("submit") == ["502 after 200", "pass 409"]
    assert proxy.outcomes("result")[:2] == ["404 before", "pass 200"]
    assert results["finished_OUTPUT"] == ["0", "1"]
    assert executions(record) == Counter(submission["task_ids"])
    assert table_size(fault_grid) == rows_before + 2


def test_a_submit_the_grid_never_receives_fails_saying_nothing_was_submitted(
    fault_grid, proxy, via_proxy, record
):
    rows_before = table_size(fault_grid)
    proxy.script("submit", *[status_before(503)] * FAST.attempts)

    with pytest.raises(APIError) as caught:
        via_proxy.send(recorded_tasks(record, 2))

    assert caught.value.status == 503
    assert str(caught.value).endswith(
        "failed 4 times (last: HTTP 503: injected 503), and the grid holds none of its tasks: "
        "nothing of it will run. Send the tasks again once the grid is healthy."
    )
    # Before each new attempt the grid was asked, and said that it knows no such session.
    assert proxy.outcomes("submit") == ["503 before"] * 4
    assert proxy.outcomes("result") == ["pass 404"] * 4
    assert table_size(fault_grid) == rows_before
    assert not record.exists()


def test_the_reference_grids_543_is_uncertain_and_never_resubmitted(
    fault_grid, proxy, via_proxy, record
):
    # A grid that lists only ended tasks cannot show a queued session: the client must say
    # so and leave the session alone, not submit it again.
    proxy.reference_results = True
    proxy.script("submit", status_after(543, REFERENCE_543))

    with pytest.raises(SubmissionUncertainError) as caught:
        via_proxy.send(recorded_tasks(record, 2, sleep=1))
    error = caught.value
    results = via_proxy.get_results(error.session_id, timeout_sec=30)

    session_id = error.session_id
    assert error.task_ids == [f"{session_id}_0", f"{session_id}_1"]
    assert error.reason == f"HTTP 543: {REFERENCE_543}"
    assert str(error) == (
        f"/submit of session {session_id} failed (HTTP 543: {REFERENCE_543}), and the grid "
        "cannot tell whether it holds the session's 2 tasks: they may be queued and running. "
        f"Do not submit this session id again; watch it with get_results('{session_id}') or "
        f"cancel it with cancel_sessions(['{session_id}'])."
    )
    assert proxy.outcomes("submit") == ["543 after 200"]
    assert results["finished_OUTPUT"] == ["0", "1"]
    assert results["metadata"]["counts"] == {
        "pending": 0,
        "processing": 0,
        "finished": 2,
        "failed": 0,
        "cancelled": 0,
    }
    assert executions(record) == Counter(error.task_ids)


def test_a_submit_to_an_api_that_refuses_connections_submits_nothing(
    fault_grid, refused_url, record
):
    rows_before = table_size(fault_grid)
    connector = connector_for(fault_grid, f"{refused_url}/v1", private=True)
    try:
        with pytest.raises(GridUnreachableError) as caught:
            connector.send(recorded_tasks(record, 2))
    finally:
        connector.close()

    session_id = caught.value.session_id
    assert str(caught.value) == (
        f"the grid is unreachable: its API at {refused_url}/v1 did not answer /submit in 4 "
        "attempts (connection refused); check that the grid is running and that the "
        f"configuration names it. Session {session_id} was not submitted: send the tasks "
        "again once the grid is back"
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert table_size(fault_grid) == rows_before


# --- /result -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        (RESET_BEFORE, "reset before"),
        (RESET_AFTER, "reset after 200"),
        (status_before(502), "502 before"),
        (status_before(503), "503 before"),
        (status_before(429), "429 before"),
        (status_after(502), "502 after 200"),
    ],
    ids=lambda value: value.name.replace(" ", "-") if isinstance(value, Fault) else None,
)
def test_a_poll_fault_is_retried_and_the_results_are_exact(
    fault, outcome, proxy, via_proxy, direct, record
):
    submission = direct.send(recorded_tasks(record, 2))
    direct.get_results(submission, timeout_sec=30)
    proxy.script("result", fault, fault)

    results = via_proxy.get_results(submission, timeout_sec=30)

    assert proxy.outcomes("result") == [outcome, outcome, "pass 200"]
    assert results["finished"] == submission["task_ids"]
    assert results["finished_OUTPUT"] == ["0", "1"]
    assert results["metadata"]["complete"] is True
    assert executions(record) == Counter(submission["task_ids"])


def test_a_poll_that_keeps_failing_stops_at_the_retry_bound(proxy, via_proxy, direct, record):
    submission = direct.send(recorded_tasks(record, 1))
    proxy.always(status_before(503))

    started = time.monotonic()
    with pytest.raises(APIError, match=r"^/result failed with HTTP 503 after 4 attempt\(s\)"):
        via_proxy.get_results(submission, timeout_sec=30)

    assert time.monotonic() - started < 2
    assert proxy.outcomes("result") == ["503 before"] * 4


def test_a_lost_api_mid_wait_says_how_to_pick_the_session_up_again(
    proxy, via_proxy, direct, record
):
    submission = direct.send(recorded_tasks(record, 2, sleep=0.5))
    session_id = submission["session_id"]
    proxy.always(RESET_BEFORE)

    with pytest.raises(GridUnreachableError) as caught:
        via_proxy.get_results(submission, timeout_sec=30)
    proxy.always(None)
    results = via_proxy.get_results(session_id, timeout_sec=30)

    assert str(caught.value) == (
        f"the grid is unreachable: its API at {proxy.url} did not answer /result in 4 attempts "
        "(connection lost); check that the grid is running and that the configuration names "
        f"it. Session {session_id} may still be running on the grid: once the grid is "
        f"reachable again, get_results('{session_id}') picks it up"
    )
    assert caught.value.session_id == session_id
    assert results["finished_OUTPUT"] == ["0", "1"]
    assert executions(record) == Counter(submission["task_ids"])


# --- /cancel -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "outcomes", "moved"),
    [
        (RESET_BEFORE, ["reset before", "pass 200"], 3),
        (status_before(502), ["502 before", "pass 200"], 3),
        (status_before(503), ["503 before", "pass 200"], 3),
        (status_before(429), ["429 before", "pass 200"], 3),
        # The grid cancelled on the first attempt; the retry moves nothing more.
        (RESET_AFTER, ["reset after 200", "pass 200"], 0),
        (status_after(502), ["502 after 200", "pass 200"], 0),
    ],
    ids=lambda value: value.name.replace(" ", "-") if isinstance(value, Fault) else None,
)
def test_a_cancel_fault_is_retried_and_every_task_ends_cancelled(
    fault, outcomes, moved, idle_grid
):
    connector = connector_for(idle_grid, idle_grid.api_url)
    try:
        submission = connector.send([{"worker_arguments": ["1", "1", "1"]}] * 3)
        session_id = submission["session_id"]
        with FaultProxy(idle_grid.api_url) as proxy:
            proxy.script("cancel", fault)
            flaky = connector_for(idle_grid, proxy.url)
            try:
                counts = flaky.cancel_sessions([session_id])
            finally:
                flaky.close()
            seen = proxy.outcomes("cancel")
        results = connector.get_results(submission, timeout_sec=10)
    finally:
        connector.close()

    assert seen == outcomes
    assert counts == {
        session_id: {
            "cancelled_pending": moved,
            "cancelled_processing": 0,
            "total_cancelled_tasks": moved,
        }
    }
    assert results["cancelled"] == submission["task_ids"]
    assert results["metadata"]["counts"]["cancelled"] == 3


# --- the notebook API: uncertain submits, lost grids ---------------------------------------


def test_a_session_whose_submit_is_uncertain_is_watched_until_the_grid_shows_it(
    fault_grid, proxy, record
):
    # /submit's answer is lost and /result fails while the connector asks about it: the
    # session is neither failed nor sent again, but watched, and then followed as usual.
    proxy.script("submit", status_after(543, REFERENCE_543))
    proxy.script("result", *[status_before(503)] * FAST.attempts)
    client = GridClient(connector_for(fault_grid, proxy.url), unconfirmed_watch_sec=30)
    try:
        session = client.submit(recorded_tasks(record, 2))
        frame = session.result(timeout=30)
    finally:
        client.close()

    assert list(frame["status"]) == ["finished", "finished"]
    assert list(frame["output"]) == [0, 1]
    assert proxy.outcomes("submit") == ["543 after 200"]
    assert proxy.outcomes("result")[: FAST.attempts + 1] == ["503 before"] * 4 + ["pass 200"]
    assert executions(record) == Counter(session.task_ids)


def test_a_session_the_grid_never_shows_fails_after_the_watch(fault_grid, proxy, record):
    rows_before = table_size(fault_grid)
    proxy.reference_results = True
    proxy.script("submit", status_before(503))
    client = GridClient(connector_for(fault_grid, proxy.url), unconfirmed_watch_sec=1.0)
    try:
        session = client.submit(recorded_tasks(record, 2))
        started = time.monotonic()
        with pytest.raises(SubmissionUncertainError) as caught:
            session.result(timeout=20)
        waited = time.monotonic() - started
    finally:
        client.close()

    session_id = session.session_id
    assert 0.5 < waited < 5
    assert str(caught.value) == (
        f"session {session_id}: /submit failed (HTTP 503: injected 503), and while it was "
        "watched the grid showed none of its 2 tasks. It may hold them still (a grid that "
        "lists only ended tasks cannot tell a queued session from one never submitted). Do "
        "not submit the tasks again blindly: reattach with "
        f"client.session('{session_id}') to watch it longer, or cancel it with "
        f"client.session('{session_id}').cancel()."
    )
    assert caught.value.task_ids == session.task_ids
    assert proxy.outcomes("submit") == ["503 before"]
    assert table_size(fault_grid) == rows_before
    assert not record.exists()


def test_a_watched_session_fails_at_once_when_the_grid_says_it_has_none_of_it(
    fault_grid, proxy, record
):
    proxy.script("submit", status_before(503))
    proxy.script("result", *[status_before(503)] * FAST.attempts)
    client = GridClient(connector_for(fault_grid, proxy.url), unconfirmed_watch_sec=30)
    try:
        session = client.submit(recorded_tasks(record, 1))
        with pytest.raises(APIError) as caught:
            session.result(timeout=10)
    finally:
        client.close()

    assert caught.value.status == 404
    assert str(caught.value) == (
        f"session {session.session_id} is not on the grid: /submit failed (HTTP 503: injected "
        "503) and the grid knows no such session, so none of its tasks will run. Submit the "
        "tasks again."
    )
    assert proxy.outcomes("submit") == ["503 before"]
    assert not record.exists()


def test_a_session_that_lost_the_grid_is_picked_up_again_by_its_id(fault_grid, proxy, record):
    client = GridClient(connector_for(fault_grid, proxy.url))
    try:
        session = client.submit(recorded_tasks(record, 2, sleep=1))
        wait_for(lambda: proxy.outcomes("submit") == ["pass 200"])
        proxy.always(RESET_BEFORE)
        with pytest.raises(GridUnreachableError) as caught:
            session.result(timeout=20)
        proxy.always(None)
        again = client.session(session.session_id)
        frame = again.result(timeout=30)
    finally:
        client.close()

    session_id = session.session_id
    assert str(caught.value).endswith(
        f"Session {session_id} may still be running on the grid: once the grid is reachable "
        f"again, reattach with client.session('{session_id}')"
    )
    assert str(caught.value).startswith("the grid is unreachable: its API at ")
    assert caught.value.session_id == session_id
    assert again is not session
    assert list(frame["output"]) == [0, 1]
    assert executions(record) == Counter(session.task_ids)


# --- a grid that stops, an endpoint that refuses -------------------------------------------


def test_a_grid_that_stops_mid_wait_is_reported_with_how_to_reattach():
    # Two waits at once on one grid: get_results in a thread, Session.result here.
    grid = start_grid(agents=0)
    client = GridClient(connector_for(grid, grid.api_url))
    connector = connector_for(grid, grid.api_url)
    caught: dict[str, BaseException] = {}

    def wait_for_results(submission: dict[str, Any]) -> None:
        try:
            connector.get_results(submission, timeout_sec=60)
        except GridUnreachableError as exc:
            caught["get_results"] = exc

    stopper = threading.Timer(0.5, grid.stop)
    try:
        session = client.submit([{"worker_arguments": ["1", "1", "1"]}] * 2)
        submission = connector.send([{"worker_arguments": ["1", "1", "1"]}])
        waiter = threading.Thread(target=wait_for_results, args=(submission,))
        waiter.start()
        stopper.start()
        started = time.monotonic()
        with pytest.raises(GridUnreachableError) as in_session:
            session.result(timeout=60)
        waiter.join(timeout=30)
        waited = time.monotonic() - started
    finally:
        stopper.cancel()
        stopper.join()
        client.close()
        connector.close()
        grid.stop()

    # FAST gives up within half a second of the API going away; the rest is the grid's own
    # stop, which gives each group of its processes up to 5 s.
    assert 0.5 <= waited < 12.0
    for error, session_id, hint in (
        (
            in_session.value,
            session.session_id,
            f"reattach with client.session('{session.session_id}')",
        ),
        (
            caught["get_results"],
            submission["session_id"],
            f"get_results('{submission['session_id']}') picks it up",
        ),
    ):
        message = str(error)
        assert isinstance(error, GridUnreachableError)
        assert message.startswith("the grid is unreachable: its API at http://127.0.0.1:")
        assert message.endswith(
            f"Session {session_id} may still be running on the grid: once the grid is "
            f"reachable again, {hint}"
        )
        assert "urllib3" not in message and "HTTPConnectionPool" not in message
        assert error.session_id == session_id
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__


def test_the_default_retry_policy_reports_a_lost_grid_within_eight_seconds():
    # Once every connection is refused, only the backoff between attempts takes time.
    policy = RetryPolicy()
    longest = [policy.backoff_sec * 2**n for n in range(policy.attempts - 1)]

    delays = [policy.delay(n) for n in range(policy.attempts - 1) for _ in range(200)]

    assert sum(longest) == 7.75
    assert all(0.5 * policy.backoff_sec <= d <= policy.max_backoff_sec for d in delays)
    assert max(policy.delay(n) for n in range(policy.attempts - 1)) <= longest[-1]
    assert policy.delay(0, retry_after=30) == policy.max_backoff_sec


def test_an_endpoint_that_refuses_connections_from_the_start_is_reported_clearly(refused_url):
    config = {
        "region": "us-east-1",
        "grid_storage_service": "S3",
        "s3_bucket": "htc-stdout-bucket",
        "public_api_gateway_url": f"{refused_url}/v1",
        "private_api_gateway_url": f"{refused_url}/v1",
        "api_gateway_key": "not-a-real-key-0123456789",
        "user_pool_id": "us-east-1_pool",
        "cognito_userpool_client_id": "client",
        "aws_endpoint_url": refused_url,
        "local_aws_access_key_id": "testing",
        "local_aws_secret_access_key": "testing",
        "local_cognito_auth_flow": "USER_PASSWORD_AUTH",
    }
    private = AWSConnector()
    private.init(config, private=True, retry_policy=FAST)

    with pytest.raises(GridUnreachableError) as signing_in:
        htcgrid.connect(config, username="alice", password="password-123")
    with pytest.raises(GridUnreachableError) as cancelling:
        private.cancel_sessions(["0b1c2d3e-0000-4000-8000-000000000000"])
    private.close()

    assert str(signing_in.value).startswith(
        "the grid is unreachable: its Cognito service did not answer the sign-in (Could not "
        f'connect to the endpoint URL: "{refused_url}/"); check that the grid is running'
    )
    assert str(cancelling.value) == (
        f"the grid is unreachable: its API at {refused_url}/v1 did not answer /cancel in 4 "
        "attempts (connection refused); check that the grid is running and that the "
        "configuration names it. The cancel request may or may not have reached the grid; "
        "cancelling again once it is back is harmless"
    )


# --- tokens that expire during a wait ------------------------------------------------------


def count_refreshes(connector: AWSConnector, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the time of each token refresh of ``connector``."""
    auth = connector._auth
    assert auth is not None
    refreshes: list[float] = []
    original = auth.refresh

    def refresh() -> None:
        refreshes.append(time.monotonic())
        original()

    monkeypatch.setattr(auth, "refresh", refresh)
    return refreshes


def test_waits_carry_on_across_token_expiries(monkeypatch):
    # The gateway refuses ID tokens older than two seconds; both waits below take six.
    grid = start_grid(agents=2, settings={"token_lifetime_sec": TOKEN_LIFETIME_SEC})
    try:
        client = GridClient(connector_for(grid, grid.api_url))
        refreshes = count_refreshes(client.connector, monkeypatch)
        try:
            session = client.submit([{"worker_arguments": ["6000", "1", "1"]}])
            submission = client.connector.send([{"worker_arguments": ["6000", "1", "1"]}])
            results = client.connector.get_results(submission, timeout_sec=30)
            frame = session.result(timeout=30)
        finally:
            client.close()
    finally:
        grid.stop()

    assert results["finished_OUTPUT"] == ["6000"]
    assert list(frame["output"]) == [6000]
    # Six seconds of polling with tokens good for two: at least three refreshes.
    assert len(refreshes) >= 3


# --- bounded, informative waits ----------------------------------------------------------


@pytest.fixture
def idle_client(idle_grid: LocalGrid) -> Iterator[GridClient]:
    client = GridClient(connector_for(idle_grid, idle_grid.api_url))
    try:
        yield client
    finally:
        for session in client._sessions.values():
            session.cancel()
        client.close()


def test_get_results_that_times_out_keeps_the_documented_shape(idle_grid):
    connector = connector_for(idle_grid, idle_grid.api_url)
    try:
        submission = connector.send([{"worker_arguments": ["1", "1", "1"]}] * 2)
        started = time.monotonic()
        results = connector.get_results(submission, timeout_sec=0.5)
        waited = time.monotonic() - started
        connector.cancel_sessions(submission["session_id"])
    finally:
        connector.close()

    assert waited < 3
    assert {k: v for k, v in results.items() if k != "metadata"} == {
        state + suffix: []
        for state in protocol.TERMINAL_STATES
        for suffix in ("", protocol.OUTPUT_SUFFIX)
    }
    assert results["metadata"] == {
        "tasks_in_response": 0,
        "session_id": submission["session_id"],
        "complete": False,
        "not_terminal": submission["task_ids"],
        "counts": {"pending": 2, "processing": 0, "finished": 0, "failed": 0, "cancelled": 0},
    }


def test_session_result_that_times_out_names_the_tasks_and_counts(idle_client):
    session = idle_client.submit([{"worker_arguments": ["1", "1", "1"]}] * 2)

    with pytest.raises(SessionTimeoutError) as caught:
        session.result(timeout=0.5)

    first, second = session.task_ids
    assert str(caught.value) == (
        f"session {session.session_id}: 2 of 2 tasks not done after 0.5 s (2 pending); not "
        f"done: {first}, {second}. The session goes on running: wait again, or cancel() it."
    )
    assert caught.value.not_terminal == [first, second]
    assert caught.value.counts == {
        "pending": 2,
        "processing": 0,
        "finished": 0,
        "failed": 0,
        "cancelled": 0,
        "total": 2,
    }


def test_gather_and_as_completed_bound_the_whole_wait(idle_client):
    sessions = idle_client.map([{"worker_arguments": ["1", "1", "1"]}] * 3, chunk_size=2)

    started = time.monotonic()
    with pytest.raises(SessionTimeoutError) as gathering:
        idle_client.gather(sessions, timeout=0.6)
    gathered = time.monotonic() - started
    with pytest.raises(SessionTimeoutError) as completing:
        list(idle_client.as_completed(sessions, timeout=0.3))

    ids = [t for s in sessions for t in s.task_ids]
    assert gathered < 1.5
    assert str(gathering.value) == (
        f"2 of 2 sessions not done: 3 of 3 tasks not done after 0.6 s (3 pending); not done: "
        f"{', '.join(ids)}. The sessions go on running: wait again, or cancel() them."
    )
    assert completing.value.not_terminal == ids
    assert completing.value.counts["pending"] == 3
