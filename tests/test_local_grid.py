"""The embedded grid's control side: resources, configuration, the gateway, the handlers.

Real processes over loopback HTTP: one grid for the module, started without agents so that
queued messages stay where the tests can see them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.test import Client

from htcgrid import aws, protocol
from htcgrid.config import load_config
from htcgrid.dataplane import open_dataplane
from htcgrid.errors import LocalGridError
from htcgrid.local import LocalGrid
from htcgrid.local import dispatcher as dispatcher_module
from htcgrid.local import grid as grid_module
from htcgrid.local.gateway import Gateway
from htcgrid.local.handlers import (
    GridHandlers,
    InvalidRequestError,
    SessionExistsError,
    SubmitFailedError,
    UnknownSessionError,
    check_envelope,
)
from htcgrid.local.processes import announcement, spawn, terminate
from htcgrid.local.statetable import StateTable
from htcgrid.local.taskqueue import TaskQueue
from htcgrid.local.tokens import InvalidTokenError, TokenVerifier

pytestmark = pytest.mark.integration

HTTP_TIMEOUT = 10
#: Tokens older than this are refused by the module's grid.
TOKEN_LIFETIME_SEC = 3

#: The keys of section 1 of PROTOCOL.md: what a real deployment's agent_config.json holds.
DEPLOYMENT_KEYS = (
    "region",
    "grid_storage_service",
    "s3_bucket",
    "s3_kms_key_id",
    "redis_url",
    "redis_password",
    "public_api_gateway_url",
    "private_api_gateway_url",
    "api_gateway_key",
    "user_pool_id",
    "cognito_userpool_client_id",
    "dynamodb_results_pull_interval_sec",
    "task_input_passed_via_external_storage",
    "ddb_state_table",
    "tasks_queue_name",
    "dlq_name",
    "sqs_endpoint",
    "agent_task_visibility_timeout_sec",
    "task_ttl_expiration_offset_sec",
    "task_ttl_refresh_interval_sec",
    "empty_task_queue_backoff_timeout_sec",
)


@pytest.fixture(scope="module")
def grid():
    grid = LocalGrid(
        agents=0,
        settings={
            "heartbeat_interval_sec": 0.5,
            "heartbeat_expiry_sec": 3,
            "checker_period_sec": 0.5,
            "visibility_timeout_sec": 5,
            "empty_queue_backoff_sec": 0.2,
            "token_lifetime_sec": TOKEN_LIFETIME_SEC,
        },
        results_pull_interval_sec=0.1,
    )
    grid.start()
    try:
        yield grid
    finally:
        grid.stop()


@pytest.fixture(scope="module")
def dataplane(grid):
    dataplane = open_dataplane(grid.config, max_workers=4)
    yield dataplane
    dataplane.close()


@pytest.fixture(scope="module")
def table(grid):
    return StateTable(grid.config)


@pytest.fixture(scope="module")
def handlers(grid, table, dataplane):
    return GridHandlers(table, TaskQueue(grid.config), dataplane)


# --- helpers -----------------------------------------------------------------------------


def sign_in(grid: LocalGrid) -> dict[str, str]:
    cognito = aws.client(grid.config, "cognito-idp")
    answer = cognito.initiate_auth(
        ClientId=grid.config.client_id,
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": grid.username, "PASSWORD": grid.password},
    )
    return answer["AuthenticationResult"]


def auth(grid: LocalGrid) -> dict[str, str]:
    """Headers with a fresh ID token (the module's tokens expire in seconds)."""
    return {"Authorization": sign_in(grid)["IdToken"]}


def call(
    grid: LocalGrid,
    method: str,
    path: str,
    content: str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    params = None if content is None else {protocol.QUERY_PARAMETER: content}
    return requests.request(
        method,
        f"{grid.api_url}/{path}",
        params=params,
        headers=auth(grid) if headers is None else headers,
        timeout=HTTP_TIMEOUT,
    )


def write_session(dataplane, count: int = 2, **envelope_options: Any) -> tuple[str, list[str]]:
    """Write a session's inputs and envelope to the data plane, as a client does."""
    session_id = protocol.new_session_id()
    ids = protocol.task_ids(session_id, count)
    tasks = [{"worker_arguments": [str(10 * (i + 1)), "1", "1"]} for i in range(count)]
    dataplane.write_inputs(ids, tasks)
    dataplane.write_payload(protocol.make_envelope(session_id, ids, **envelope_options))
    return session_id, ids


def result_query(session_id: str) -> str:
    return protocol.encode_query({"session_id": session_id})


def message(response: requests.Response) -> str:
    return response.json()["message"]


def listening_sockets(pids: list[int]) -> list[tuple[str, int]]:
    """The (address, port) of every TCP socket in LISTEN state held by the given processes."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table_name in ("tcp", "tcp6"):
        lines = Path(f"/proc/net/{table_name}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                address, port = local.split(":")
                found.append((address, int(port, 16)))
    return found


def assert_gone(pids) -> None:
    """No process, nor anything left in its process group, is alive."""
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def port_open(url: str) -> bool:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


# --- resources and configuration ---------------------------------------------------------


def test_the_grid_has_the_resources_of_a_real_deployment(grid):
    config = grid.config
    tag = config.s3_bucket.removeprefix("htc-stdout-bucket-")
    assert config.get("ddb_state_table") == f"htc_tasks_state_table-{tag}"
    assert config.get("tasks_queue_name") == f"htc_task_queue-{tag}"
    assert config.get("dlq_name") == f"htc_task_queue_dlq-{tag}"

    aws.client(config, "s3").head_bucket(Bucket=config.s3_bucket)

    sqs = aws.client(config, "sqs")
    queue_url = sqs.get_queue_url(QueueName=config.get("tasks_queue_name"))["QueueUrl"]
    dlq_url = sqs.get_queue_url(QueueName=config.get("dlq_name"))["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    assert attributes["Attributes"]["VisibilityTimeout"] == "5"
    redrive = json.loads(attributes["Attributes"]["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn["Attributes"]["QueueArn"]

    description = aws.client(config, "dynamodb").describe_table(
        TableName=config.get("ddb_state_table")
    )["Table"]
    assert description["KeySchema"] == [{"AttributeName": "task_id", "KeyType": "HASH"}]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    indexes = {
        index["IndexName"]: (
            [(key["AttributeName"], key["KeyType"]) for key in index["KeySchema"]],
            index["Projection"]["ProjectionType"],
        )
        for index in description["GlobalSecondaryIndexes"]
    }
    assert indexes == {
        "gsi_session_index": ([("session_id", "HASH"), ("task_status", "RANGE")], "ALL"),
        "gsi_ttl_index": (
            [("task_status", "HASH"), ("heartbeat_expiration_timestamp", "RANGE")],
            "ALL",
        ),
    }
    types = {a["AttributeName"]: a["AttributeType"] for a in description["AttributeDefinitions"]}
    assert types["heartbeat_expiration_timestamp"] == "N"

    cognito = aws.client(config, "cognito-idp")
    client = cognito.describe_user_pool_client(
        UserPoolId=config.user_pool_id, ClientId=config.client_id
    )["UserPoolClient"]
    assert "ClientSecret" not in client
    assert set(client["ExplicitAuthFlows"]) == {
        "ALLOW_USER_SRP_AUTH",
        "ALLOW_USER_PASSWORD_AUTH",
        "ALLOW_REFRESH_TOKEN_AUTH",
    }
    user = cognito.admin_get_user(UserPoolId=config.user_pool_id, Username=grid.username)
    assert user["UserStatus"] == "CONFIRMED"


def test_agent_config_has_every_deployment_key_and_loads(grid):
    data = json.loads(grid.config_path.read_text())

    assert [key for key in DEPLOYMENT_KEYS if key not in data] == []
    assert data["grid_storage_service"] == "S3"
    assert data["task_input_passed_via_external_storage"] == 1
    assert data["public_api_gateway_url"] == data["private_api_gateway_url"] == grid.api_url
    assert data["aws_endpoint_url"] == data["sqs_endpoint"] == grid.endpoint
    assert data["local_cognito_auth_flow"] == "USER_PASSWORD_AUTH"
    assert grid.password not in grid.config_path.read_text()
    config = load_config(grid.config_path)
    assert config.is_local and config.api_url == grid.api_url
    assert config.results_pull_interval_sec == 0.1
    assert load_config(grid.config_path, private=True).api_key == data["api_gateway_key"]


def test_config_and_credentials_are_readable_by_their_owner_only(grid):
    credentials = grid.workdir / "credentials.env"

    for path in (grid.config_path, credentials):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.read_text() == f"USERNAME={grid.username}\nPASSWORD={grid.password}\n"
    assert grid.password not in repr(grid)
    assert "api_url" in repr(grid)


def test_the_user_signs_in_with_the_password_and_not_without(grid):
    assert sign_in(grid)["IdToken"]
    cognito = aws.client(grid.config, "cognito-idp")
    with pytest.raises(cognito.exceptions.NotAuthorizedException):
        cognito.initiate_auth(
            ClientId=grid.config.client_id,
            AuthFlow="USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": grid.username, "PASSWORD": grid.password + "x"},
        )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_every_listening_socket_is_bound_to_loopback(grid):
    sockets = listening_sockets(list(grid.pids.values()))

    ports = {
        int(url.rsplit(":", 1)[1].split("/")[0])
        for url in (*grid.endpoints.values(), grid.api_url)
    }
    assert ports <= {port for _, port in sockets}
    assert {address for address, _ in sockets} == {"0100007F"}  # 127.0.0.1


# --- authentication ----------------------------------------------------------------------


def test_a_request_without_a_token_is_refused_with_401(grid):
    answer = call(grid, "GET", "result", result_query(protocol.new_session_id()), headers={})
    assert answer.status_code == 401
    assert "Authorization" in message(answer)


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "Bearer x", "eyJhbGciOiJub25lIn0.e30."], ids=repr
)
def test_a_malformed_token_is_refused_with_401(grid, token):
    answer = call(grid, "GET", "result", result_query("s"), headers={"Authorization": token})
    assert answer.status_code == 401
    assert token not in answer.text


def test_the_id_token_with_a_bearer_prefix_is_refused_with_a_hint(grid):
    token = sign_in(grid)["IdToken"]
    answer = call(grid, "GET", "result", result_query("s"), {"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert "without the 'Bearer ' prefix" in message(answer)


def test_a_token_signed_by_another_key_is_refused_with_401(grid):
    real = jwt.decode(
        sign_in(grid)["IdToken"],
        TokenVerifier(
            grid.endpoint, grid.config.region, grid.config.user_pool_id, grid.config.client_id, 60
        ).keys(),
    )
    forged = jwt.encode(
        {"alg": "RS256", "kid": real.header["kid"]},
        real.claims,
        RSAKey.generate_key(2048, auto_kid=False),
    )

    answer = call(grid, "GET", "result", result_query("s"), {"Authorization": forged})
    assert answer.status_code == 401
    assert "badly signed" in message(answer)


def test_the_access_token_is_refused_with_401(grid):
    token = sign_in(grid)["AccessToken"]
    answer = call(grid, "GET", "result", result_query("s"), {"Authorization": token})
    assert answer.status_code == 401


def test_a_token_older_than_the_token_lifetime_is_refused_with_401(grid):
    headers = auth(grid)
    assert call(grid, "GET", "result", result_query("s"), headers).status_code == 404

    time.sleep(TOKEN_LIFETIME_SEC + 1.5)
    answer = call(grid, "GET", "result", result_query("s"), headers)
    assert answer.status_code == 401
    assert message(answer) == "token has expired"


def test_the_api_key_is_accepted_and_a_wrong_one_refused(grid):
    key = grid.config.raw["api_gateway_key"]
    query = result_query(protocol.new_session_id())

    assert call(grid, "GET", "result", query, {"x-api-key": key}).status_code == 404
    assert call(grid, "GET", "result", query, {"x-api-key": key + "x"}).status_code == 403


# --- malformed requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "content", "says"),
    [
        ("GET", "result", None, "missing the submission_content"),
        ("POST", "submit", None, "missing the submission_content"),
        ("POST", "cancel", None, "missing the submission_content"),
        ("GET", "result", "%%%not-base64", "not URL-safe base64"),
        ("GET", "result", base64.urlsafe_b64encode(b"{nope").decode(), "not base64 of UTF-8 JSON"),
        ("GET", "result", protocol.encode_query(["s"]), "with a 'session_id' key"),
        ("GET", "result", protocol.encode_query({"session_id": 7}), "must be a string"),
        ("GET", "result", protocol.encode_query({"session_id": "a_b"}), "invalid session id"),
        ("GET", "result", protocol.encode_query({"session_id": "../x"}), "invalid session id"),
        ("POST", "submit", "a b", "invalid session id"),
        ("POST", "submit", "a_0", "invalid session id"),
        ("POST", "cancel", protocol.encode_query({"session_ids_to_cancel": "s"}), "a list"),
        ("POST", "cancel", protocol.encode_query({"session_ids_to_cancel": ["a/b"]}), "invalid"),
    ],
)
def test_a_malformed_request_gets_400_saying_what_is_wrong(grid, method, path, content, says):
    answer = call(grid, method, path, content)

    assert answer.status_code == 400
    assert says in message(answer)
    assert "Traceback" not in answer.text


def test_submit_without_a_payload_gets_400(grid):
    answer = call(grid, "POST", "submit", protocol.new_session_id())
    assert answer.status_code == 400
    assert "has no payload in the data plane" in message(answer)


def test_an_unknown_session_gets_404_on_result(grid):
    session_id = protocol.new_session_id()
    answer = call(grid, "GET", "result", result_query(session_id))
    assert answer.status_code == 404
    assert message(answer) == f"the grid knows no session {session_id}"


def test_an_unknown_path_gets_404_and_a_wrong_method_405(grid):
    assert call(grid, "GET", "status", result_query("s")).status_code == 404
    answer = call(grid, "GET", "submit", "s")
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "POST"
    assert call(grid, "POST", "result", result_query("s")).status_code == 405


# --- submit, result, cancel through the gateway ------------------------------------------


def test_submit_writes_pending_rows_and_queues_one_message_per_task(grid, dataplane, table):
    sqs = aws.client(grid.config, "sqs")
    queue_url = sqs.get_queue_url(QueueName=grid.config.get("tasks_queue_name"))["QueueUrl"]
    sqs.purge_queue(QueueUrl=queue_url)
    session_id, ids = write_session(dataplane, 3, retry_count=2, task_timeout_sec=60, priority=1)

    answer = call(grid, "POST", "submit", session_id)

    assert answer.status_code == 200
    assert answer.json() == {"session_id": session_id, "task_ids": ids}
    rows = sorted(table.session_rows(session_id), key=lambda r: r[protocol.TASK_ID])
    assert [row[protocol.TASK_ID] for row in rows] == ids
    pending = protocol.status_value(protocol.PENDING, session_id)
    for row in rows:
        assert row[protocol.TASK_STATUS] == pending
        assert row[protocol.TASK_OWNER] == protocol.NO_OWNER
        assert (row[protocol.MAX_RETRIES], row[protocol.TASK_TIMEOUT_SEC]) == (2, 60)
        assert row[protocol.TASK_PRIORITY] == 1
    messages = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
    ).get("Messages", [])
    bodies = sorted((json.loads(m["Body"]) for m in messages), key=lambda b: b["task_id"])
    assert [body[protocol.TASK_ID] for body in bodies] == ids
    assert all(set(body["stats"]) == set(protocol.STATS_KEYS) for body in bodies)
    assert bodies[0]["stats"][protocol.STATS_KEYS[2]]["tstmp"] > 0


def test_the_same_session_again_gets_409_and_changes_nothing(grid, dataplane, table):
    session_id, ids = write_session(dataplane, 2)
    assert call(grid, "POST", "submit", session_id).status_code == 200
    before = table.session_rows(session_id)

    answer = call(grid, "POST", "submit", session_id)

    assert answer.status_code == 409
    assert "submitted already" in message(answer)
    assert table.session_rows(session_id) == before


def test_result_lists_terminal_tasks_and_adds_counts_and_details(grid, dataplane, table):
    session_id, ids = write_session(dataplane, 3)
    call(grid, "POST", "submit", session_id)
    assert table.claim(ids[0], session_id, "agent-x", "receipt", int(time.time()) + 60)
    assert table.finish(ids[0], session_id, "agent-x")

    answer = call(grid, "GET", "result", result_query(session_id)).json()

    assert answer["finished"] == [ids[0]]
    assert answer["finished_OUTPUT"] == [protocol.OUTPUT_PLACEHOLDER]
    assert answer["failed"] == answer["cancelled"] == []
    assert answer["metadata"] == {"tasks_in_response": 1}
    assert answer[protocol.COUNTS_FIELD] == {
        "pending": 2,
        "processing": 0,
        "finished": 1,
        "failed": 0,
        "cancelled": 0,
    }
    done = answer[protocol.TASKS_FIELD][ids[0]]
    assert done[protocol.TASK_INFO_STATUS] == "finished"
    assert done[protocol.TASK_INFO_AGENT] == "agent-x"
    assert done[protocol.TASK_INFO_SUBMITTED_MS] <= done[protocol.TASK_INFO_STARTED_MS]
    assert done[protocol.TASK_INFO_STARTED_MS] <= done[protocol.TASK_INFO_FINISHED_MS]
    waiting = answer[protocol.TASKS_FIELD][ids[1]]
    assert waiting == {
        protocol.TASK_INFO_STATUS: "pending",
        protocol.TASK_INFO_RETRIES: 0,
        protocol.TASK_INFO_SUBMITTED_MS: done[protocol.TASK_INFO_SUBMITTED_MS],
        protocol.TASK_INFO_STARTED_MS: None,
        protocol.TASK_INFO_FINISHED_MS: None,
        protocol.TASK_INFO_AGENT: None,
    }


def test_cancel_counts_pending_and_processing_and_spares_finished(grid, dataplane, table):
    session_id, ids = write_session(dataplane, 4)
    other_id, _ = write_session(dataplane, 1)
    call(grid, "POST", "submit", session_id)
    call(grid, "POST", "submit", other_id)
    heartbeat = int(time.time()) + 60
    table.claim(ids[0], session_id, "agent-x", "r0", heartbeat)
    table.finish(ids[0], session_id, "agent-x")
    table.claim(ids[1], session_id, "agent-x", "r1", heartbeat)
    query = protocol.encode_query({"session_ids_to_cancel": [session_id, other_id]})

    first = call(grid, "POST", "cancel", query)
    second = call(grid, "POST", "cancel", query)

    assert first.status_code == second.status_code == 200
    assert first.json() == {
        session_id: {
            "cancelled_pending": 2,
            "cancelled_processing": 1,
            "total_cancelled_tasks": 3,
        },
        other_id: {"cancelled_pending": 1, "cancelled_processing": 0, "total_cancelled_tasks": 1},
    }
    assert second.json() == {s: protocol.cancel_counts(0, 0) for s in (session_id, other_id)}
    answer = call(grid, "GET", "result", result_query(session_id)).json()
    assert answer["finished"] == [ids[0]]
    assert answer["cancelled"] == ids[1:]


def test_the_gateway_logs_one_line_per_request_without_token_or_key(grid):
    token = sign_in(grid)["IdToken"]
    key = grid.config.raw["api_gateway_key"]
    call(grid, "GET", "result", result_query("s"), {"Authorization": token})
    call(grid, "GET", "result", result_query("s"), {"x-api-key": key})

    log = (grid.workdir / "gateway.log").read_text()
    assert "GET '/v1/result' 404" in log
    assert token not in log and key not in log and "submission_content" not in log


class _BrokenHandlers:
    def submit(self, session_id):
        raise KeyError("a bug")

    result = cancel = submit


@pytest.mark.parametrize(
    ("method", "path", "content", "status"),
    [
        ("POST", "submit", "s", 543),
        ("GET", "result", result_query("s"), 542),
        ("POST", "cancel", protocol.encode_query({"session_ids_to_cancel": ["s"]}), 542),
    ],
)
def test_a_backend_failure_gets_542_or_543_with_a_short_text(method, path, content, status):
    app = Gateway(_BrokenHandlers(), verifier=None, api_key="k")
    client = Client(app)

    answer = client.open(
        f"/v1/{path}",
        method=method,
        query_string={"submission_content": content},
        headers={"x-api-key": "k"},
    )

    assert answer.status_code == status
    assert answer.text == f"internal error of the grid in /v1/{path}"


# --- the handlers, in this process -------------------------------------------------------


def envelope(session_id: str = "s-1", **changes: Any) -> dict[str, Any]:
    value = protocol.make_envelope(session_id, [f"{session_id}_0", f"{session_id}_1"])
    value.update(changes)
    return value


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ([], "must be a JSON object"),
        (envelope(session_id="s-2"), "is for session 's-2'"),
        (envelope(tasks_list={"tasks": []}), "non-empty list"),
        (envelope(tasks_list=["s-1_0"]), "non-empty list"),
        (envelope(tasks_list={"tasks": ["s-2_0"]}), "is not a task of session s-1"),
        (envelope(tasks_list={"tasks": ["s-1_0", "s-1_0"]}), "twice"),
        (envelope(tasks_list={"tasks": ["s-1"]}), "invalid task id"),
        (envelope(scheduler_data={"retry_count": 1}), "task_timeout_sec"),
        (envelope(scheduler_data={"task_timeout_sec": 0, "retry_count": 1}), "task_timeout"),
        (envelope(scheduler_data={"task_timeout_sec": 5, "retry_count": -1}), "retry_count"),
        (envelope(scheduler_data={"task_timeout_sec": True, "retry_count": 1}), "task_timeout"),
        (envelope(scheduler_data={"task_timeout_sec": 5, "retry_count": "1"}), "retry_count"),
        (envelope(stats={}), "stats lack stage1_grid_api_01_task_creation_tstmp"),
        (envelope(context={"tasks_priority": -2}), "tasks_priority"),
    ],
)
def test_a_malformed_envelope_is_refused_naming_the_problem(value, says):
    with pytest.raises(InvalidRequestError, match=says.replace("(", r"\(")):
        check_envelope("s-1", value)


def test_a_well_formed_envelope_gives_its_scheduling_values():
    checked = check_envelope("s-1", protocol.make_envelope("s-1", ["s-1_0"], retry_count=0))
    assert checked["task_ids"] == ["s-1_0"]
    assert (checked["retry_count"], checked["task_timeout_sec"], checked["priority"]) == (
        0,
        protocol.DEFAULT_TASK_TIMEOUT_SEC,
        0,
    )


def test_a_payload_that_is_not_base64_json_is_refused(handlers, dataplane):
    session_id = protocol.new_session_id()
    dataplane.put(protocol.payload_key(session_id), b"not base64 at all!")
    with pytest.raises(InvalidRequestError, match="not URL-safe base64"):
        handlers.submit(session_id)


class _FailingTable:
    """The real state table, but writing rows fails after the first batch of them."""

    def __init__(self, table: StateTable) -> None:
        self.table = table

    def put_rows(self, rows):
        self.table.put_rows(rows[:1])
        raise RuntimeError("table down")

    def __getattr__(self, name):
        return getattr(self.table, name)


def test_a_session_that_cannot_be_stored_leaves_no_row_and_can_be_sent_again(
    handlers, table, dataplane
):
    session_id, ids = write_session(dataplane, 3)
    failing = GridHandlers(_FailingTable(table), handlers.queue, dataplane)

    with pytest.raises(SubmitFailedError, match=session_id):
        failing.submit(session_id)

    assert table.session_rows(session_id) == []
    assert handlers.submit(session_id)["task_ids"] == ids


class _FlakyQueue:
    """The real queue, but the first send of a batch loses its last message."""

    def __init__(self, queue: TaskQueue) -> None:
        self.queue = queue
        self.sends = 0

    def send(self, rows, stats):
        self.sends += 1
        if self.sends == 1:
            self.queue.send(rows[:-1], stats)
            return [rows[-1][protocol.TASK_ID]]
        return self.queue.send(rows, stats)

    def __getattr__(self, name):
        return getattr(self.queue, name)


def test_tasks_the_queue_refused_are_queued_again(handlers, table, dataplane, monkeypatch):
    # Other tests leave messages in this grid's queue: feed whatever its depth.
    monkeypatch.setattr(dispatcher_module, "LOW_WATER", 10_000)
    monkeypatch.setattr(dispatcher_module, "HIGH_WATER", 10_010)
    session_id, ids = write_session(dataplane, 3)
    flaky = _FlakyQueue(handlers.queue)
    refused_once = GridHandlers(table, flaky, dataplane)
    refused_once.submit(session_id)
    assert refused_once.dispatcher.get(session_id).unsent == [ids[-1]]
    refused_once.dispatcher.feed_once()

    received: set[str] = set()
    for _ in range(20):
        received |= {m.task_id for m in handlers.queue.receive(10, 0)}

    assert flaky.sends == 2
    assert set(ids) <= received
    assert {protocol.state_of(r["task_status"]) for r in table.session_rows(session_id)} == {
        "pending"
    }


def test_handlers_refuse_duplicates_and_unknown_sessions(handlers, dataplane):
    session_id, _ = write_session(dataplane, 1)
    handlers.submit(session_id)
    with pytest.raises(SessionExistsError):
        handlers.submit(session_id)
    with pytest.raises(UnknownSessionError):
        handlers.result(protocol.new_session_id())
    unknown = protocol.new_session_id()
    assert handlers.cancel([unknown]) == {unknown: protocol.cancel_counts(0, 0)}


# --- tokens, in this process -------------------------------------------------------------


def verifier(grid: LocalGrid, **changes: Any) -> TokenVerifier:
    options = {
        "endpoint": grid.endpoint,
        "region": grid.config.region,
        "user_pool_id": grid.config.user_pool_id,
        "client_id": grid.config.client_id,
        "lifetime_sec": 60,
        **changes,
    }
    return TokenVerifier(**options)


def test_a_valid_id_token_yields_its_claims(grid):
    claims = verifier(grid).verify(sign_in(grid)["IdToken"])
    assert claims["cognito:username"] == grid.username
    assert claims["token_use"] == "id"


@pytest.mark.parametrize(
    ("changes", "now_offset", "reason"),
    [
        ({"client_id": "another-client"}, 0, "another app client"),
        ({"region": "eu-west-1"}, 0, "another user pool"),
        ({"lifetime_sec": 1}, 2, "token has expired"),
        ({}, 3601, "token has expired"),
        ({}, -60, "issued in the future"),
    ],
)
def test_a_token_failing_a_claim_check_is_refused_with_the_reason(
    grid, changes, now_offset, reason
):
    token = sign_in(grid)["IdToken"]
    with pytest.raises(InvalidTokenError, match=reason) as refused:
        verifier(grid, **changes).verify(token, now=time.time() + now_offset)
    assert token not in str(refused.value)


# --- lifecycle ---------------------------------------------------------------------------


def test_stop_leaves_no_process_and_no_open_port(tmp_path):
    grid = LocalGrid(agents=1, workdir=tmp_path / "grid")
    started = time.perf_counter()
    grid.start()
    elapsed = time.perf_counter() - started
    pids = grid.pids
    urls = (*grid.endpoints.values(), grid.api_url)
    assert set(pids) == {
        "services-sqs",
        "services-s3",
        "services-dynamodb",
        "gateway",
        "checker",
        "agent-0",
    }
    assert all(port_open(url) for url in urls)

    grid.stop()
    grid.stop()

    assert_gone(pids.values())
    assert not any(port_open(url) for url in urls)
    assert grid.pids == {} and not grid.running
    # A workdir the caller chose is kept, logs included.
    assert (tmp_path / "grid" / "gateway.log").exists()
    assert elapsed < 10, f"start() took {elapsed:.1f} s"


def test_stop_interrupted_by_ctrl_c_still_kills_every_process(monkeypatch):
    grid = LocalGrid(agents=1).start()
    pids = grid.pids

    def interrupted(children, timeout=0):
        raise KeyboardInterrupt

    monkeypatch.setattr(grid_module, "terminate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        grid.stop()

    assert_gone(pids.values())
    assert not grid.running


def test_an_interpreter_exit_without_stop_leaves_nothing_running(tmp_path):
    script = (
        "import json\n"
        "from htcgrid.local import LocalGrid\n"
        "grid = LocalGrid(agents=1).start()\n"
        "print(json.dumps(list(grid.pids.values())), flush=True)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )

    assert_gone(json.loads(done.stdout))


def test_a_child_that_dies_before_announcing_gives_its_log(tmp_path):
    child = spawn("broken", "htcgrid.local.no_such_module", [], tmp_path, os.environ)

    try:
        with pytest.raises(LocalGridError, match="(?s)broken process exited with code 1.*No mod"):
            announcement(child, "url", timeout=30)
    finally:
        terminate([child])


def test_a_submitted_task_reaches_finished_on_an_agent(grid, dataplane):
    grid.scale_agents(1)
    try:
        session_id, ids = write_session(dataplane, 1)
        assert call(grid, "POST", "submit", session_id).status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = call(grid, "GET", "result", result_query(session_id)).json()
            if answer["finished"]:
                break
            time.sleep(0.2)
        assert answer["finished"] == ids
        assert answer[protocol.TASKS_FIELD][ids[0]][protocol.TASK_INFO_AGENT] == "agent-0"
        assert dataplane.read_outputs(ids) == {ids[0]: "10"}
    finally:
        grid.scale_agents(0)
    assert grid.agents == 0
