"""The HTC-Grid wire format: ids, state names, data-plane keys and encodings.

This module is the one place that spells the protocol of a real HTC-Grid deployment: every
other module (the client, the embedded grid's gateway and agents) builds and reads ids, keys,
state names, envelopes and answers through it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# --- task states -------------------------------------------------------------------------

PENDING = "pending"
PROCESSING = "processing"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"

STATES = (PENDING, PROCESSING, FINISHED, FAILED, CANCELLED)
TERMINAL_STATES = (FINISHED, FAILED, CANCELLED)
STATE_DESCRIPTIONS = {
    PENDING: "waiting in the queue for an agent",
    PROCESSING: "claimed by an agent, handler running",
    FINISHED: "the handler returned; the output is in the data plane",
    FAILED: "every attempt failed; the error is in the data plane",
    CANCELLED: "cancelled before it finished",
}

#: The state table spreads each state over this many partitions, by session.
PARTITIONS = 32

#: The value the state table keeps in ``task_owner`` while no agent holds the task.
NO_OWNER = "None"


def partition(session_id: str) -> int:
    """Return the state-table partition of a session (0 to 31), as the reference grid does."""
    return int(hashlib.md5(session_id.encode("utf-8")).hexdigest(), 16) % PARTITIONS


def status_value(state: str, session_id: str) -> str:
    """Return the ``task_status`` value of a state for a session, e.g. ``finished7``."""
    if state not in STATES:
        raise ValueError(f"unknown task state {state!r}; expected one of {', '.join(STATES)}")
    return f"{state}{partition(session_id)}"


def state_of(status: str) -> str:
    """Return the state name of a ``task_status`` value (``finished7`` -> ``finished``)."""
    state = status.rstrip("0123456789")
    if state not in STATES:
        raise ValueError(f"unknown task status {status!r}")
    return state


# --- state-table attributes --------------------------------------------------------------

TASK_ID = "task_id"
SESSION_ID = "session_id"
PARENT_SESSION_ID = "parent_session_id"
SUBMISSION_TIMESTAMP = "submission_timestamp"
TASK_COMPLETION_TIMESTAMP = "task_completion_timestamp"
TASK_STATUS = "task_status"
TASK_OWNER = "task_owner"
RETRIES = "retries"
TASK_PRIORITY = "task_priority"
TASK_DEFINITION = "task_definition"
SQS_HANDLER_ID = "sqs_handler_id"
HEARTBEAT_EXPIRATION_TIMESTAMP = "heartbeat_expiration_timestamp"
# Attributes the embedded grid adds; a real grid's rows lack them.
MAX_RETRIES = "max_retries"
TASK_TIMEOUT_SEC = "task_timeout_sec"
START_TIMESTAMP = "task_start_timestamp"

SESSION_INDEX = "gsi_session_index"
TTL_INDEX = "gsi_ttl_index"

# --- ids ---------------------------------------------------------------------------------

_SESSION_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
MAX_TASK_ID_LENGTH = 80


def new_session_id() -> str:
    """Return a fresh session id (a UUID, which never contains ``_``)."""
    return str(uuid.uuid4())


def check_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is a valid session id, else raise ``ValueError``.

    A valid id has 1 to 64 characters of ``[A-Za-z0-9-]``; it becomes part of data-plane keys,
    so nothing else may pass.
    """
    if not isinstance(session_id, str) or not _SESSION_ID_RE.fullmatch(session_id):
        raise ValueError(
            f"invalid session id {session_id!r}: expected 1 to 64 characters of A-Z, a-z, 0-9 "
            "and '-' (for example a UUID)"
        )
    return session_id


def check_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is a valid task id (``<session>_<n>``), else raise."""
    if not isinstance(task_id, str) or not _TASK_ID_RE.fullmatch(task_id) or "_" not in task_id:
        raise ValueError(
            f"invalid task id {task_id!r}: expected '<session id>_<number>' of at most "
            f"{MAX_TASK_ID_LENGTH} characters of A-Z, a-z, 0-9, '_' and '-'"
        )
    return task_id


def task_ids(session_id: str, count: int) -> list[str]:
    """Return the ids of a session's tasks, ``S_0`` to ``S_{count-1}``, in submission order."""
    check_session_id(session_id)
    ids = [f"{session_id}_{i}" for i in range(count)]
    if ids and len(ids[-1]) > MAX_TASK_ID_LENGTH:
        raise ValueError(f"task id {ids[-1]!r} is longer than {MAX_TASK_ID_LENGTH} characters")
    return ids


def check_session_tasks(session_id: str, ids: Iterable[object]) -> list[str]:
    """Return ``ids`` if every one is a valid task id of ``session_id``, else raise."""
    checked = []
    for task_id in ids:
        task = check_task_id(task_id)
        if session_of(task) != session_id:
            raise ValueError(f"task {task_id!r} is not a task of session {session_id}")
        checked.append(task)
    return checked


def session_of(task_id: str) -> str:
    """Return the session id that a task id belongs to."""
    return check_task_id(task_id).rsplit("_", 1)[0]


def task_index(task_id: str) -> int:
    """Return a task's position in its session (the number after the last ``_``)."""
    return int(check_task_id(task_id).rsplit("_", 1)[1])


# --- data-plane keys ---------------------------------------------------------------------


def input_key(task_id: str) -> str:
    return f"{check_task_id(task_id)}-input"


def output_key(task_id: str) -> str:
    return f"{check_task_id(task_id)}-output"


def error_key(task_id: str) -> str:
    return f"{check_task_id(task_id)}-error"


def payload_key(session_id: str) -> str:
    return f"{check_session_id(session_id)}-payload"


# --- data-plane encodings ----------------------------------------------------------------


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_input(task: Mapping[str, Any]) -> bytes:
    """Encode a task definition as the agent reads it: standard base64 of its UTF-8 JSON."""
    return base64.b64encode(_json_bytes(task))


def decode_input(data: bytes) -> Any:
    return json.loads(base64.b64decode(data, validate=True).decode("utf-8"))


def encode_payload(envelope: Mapping[str, Any]) -> bytes:
    """Encode a session envelope: URL-safe base64 of its UTF-8 JSON."""
    return base64.urlsafe_b64encode(_json_bytes(envelope))


def decode_payload(data: bytes) -> Any:
    return json.loads(base64.urlsafe_b64decode(data).decode("utf-8"))


def encode_output(value: Any) -> bytes:
    """Encode a handler's return value: standard base64 of its JSON text."""
    return base64.b64encode(_json_bytes(value))


def decode_output(data: bytes) -> str:
    """Decode an output to its text (the JSON the handler's return value became)."""
    return base64.b64decode(data).decode("utf-8")


def encode_error(text: str) -> bytes:
    """Encode the text of a task's last failure: standard base64 of UTF-8."""
    return base64.b64encode(text.encode("utf-8"))


def decode_error(data: bytes) -> str:
    return base64.b64decode(data).decode("utf-8")


# --- API query parameter -----------------------------------------------------------------

#: The one query parameter of every API call.
QUERY_PARAMETER = "submission_content"


def encode_query(value: Any) -> str:
    """Encode ``value`` for ``submission_content``: URL-safe base64 of JSON, padding kept."""
    return base64.urlsafe_b64encode(_json_bytes(value)).decode("ascii")


def decode_query(text: str) -> Any:
    """Decode a ``submission_content`` value; raise ``ValueError`` saying what is wrong."""
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ValueError(f"submission_content is not URL-safe base64: {exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"submission_content is not base64 of UTF-8 JSON: {exc}") from None


# --- session envelope --------------------------------------------------------------------

STATS_KEYS = (
    "stage1_grid_api_01_task_creation_tstmp",
    "stage1_grid_api_02_task_submission_tstmp",
    "stage2_sbmtlmba_01_invocation_tstmp",
    "stage2_sbmtlmba_02_before_batch_write_tstmp",
    "stage3_agent_01_task_acquired_sqs_tstmp",
    "stage3_agent_02_task_acquired_ddb_tstmp",
    "stage4_agent_01_user_code_finished_tstmp",
    "stage4_agent_02_S3_stdout_delivered_tstmp",
)

DEFAULT_TASK_TIMEOUT_SEC = 3600
DEFAULT_RETRY_COUNT = 5


def now_ms() -> int:
    return int(time.time() * 1000)


def make_stats(created_ms: int | None = None) -> dict[str, dict[str, Any]]:
    """Return the eight stage timestamps the reference grid requires in an envelope."""
    created = now_ms() if created_ms is None else created_ms
    stats: dict[str, dict[str, Any]] = {key: {"label": "", "tstmp": 0} for key in STATS_KEYS}
    stats[STATS_KEYS[0]] = {"label": "client_task_creation", "tstmp": created}
    return stats


def make_envelope(
    session_id: str,
    ids: Sequence[str],
    *,
    task_timeout_sec: int = DEFAULT_TASK_TIMEOUT_SEC,
    retry_count: int = DEFAULT_RETRY_COUNT,
    priority: int | None = None,
) -> dict[str, Any]:
    """Return the envelope written at ``<session_id>-payload`` before /submit."""
    stats = make_stats()
    stats[STATS_KEYS[1]] = {"label": "client_task_submission", "tstmp": now_ms()}
    envelope: dict[str, Any] = {
        "session_id": check_session_id(session_id),
        "scheduler_data": {"task_timeout_sec": task_timeout_sec, "retry_count": retry_count},
        "stats": stats,
        "tasks_list": {"tasks": list(ids)},
    }
    if priority is not None:
        envelope["context"] = {"tasks_priority": priority}
    return envelope


# --- API answers -------------------------------------------------------------------------

OUTPUT_SUFFIX = "_OUTPUT"
#: What a real grid puts in the ``_OUTPUT`` lists of /result: the output is in the data plane.
OUTPUT_PLACEHOLDER = "read_from_dataplane"
#: The embedded grid's additional /result field: counts by state, all states included.
COUNTS_FIELD = "counts"
#: The embedded grid's additional /result field: per-task details (retries, times, agent).
TASKS_FIELD = "tasks"
# Keys of each task's entry in TASKS_FIELD (times in epoch ms, None until they happen).
TASK_INFO_STATUS = "status"
TASK_INFO_RETRIES = "retries"
TASK_INFO_SUBMITTED_MS = "submitted_ms"
TASK_INFO_STARTED_MS = "started_ms"
TASK_INFO_FINISHED_MS = "finished_ms"
TASK_INFO_AGENT = "agent"


def results_answer(
    by_state: Mapping[str, Sequence[str]], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Build a /result answer from the ids of the finished, failed and cancelled tasks."""
    answer: dict[str, Any] = {}
    total = 0
    for state in TERMINAL_STATES:
        ids = list(by_state.get(state, ()))
        answer[state] = ids
        answer[state + OUTPUT_SUFFIX] = [OUTPUT_PLACEHOLDER] * len(ids)
        total += len(ids)
    answer["metadata"] = {"tasks_in_response": total}
    if extra:
        answer.update(extra)
    return answer


def terminal_ids(answer: Mapping[str, Any]) -> dict[str, list[str]]:
    """Return the task ids of each terminal state in a /result answer."""
    return {state: list(answer.get(state) or []) for state in TERMINAL_STATES}


def cancel_counts(pending: int, processing: int) -> dict[str, int]:
    return {
        "cancelled_pending": pending,
        "cancelled_processing": processing,
        "total_cancelled_tasks": pending + processing,
    }


def json_dumps(value: Any) -> str:
    """Serialise a value as compact JSON (the form used on the wire)."""
    return _json_bytes(value).decode("utf-8")


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
