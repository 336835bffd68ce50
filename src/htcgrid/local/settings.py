"""The embedded grid's knobs, as they travel in its ``agent_config.json``.

The agents' keys are those of a real deployment (``task_ttl_refresh_interval_sec`` and so on);
the keys prefixed ``local_`` exist only in the embedded grid's file.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import GridConfig

# Keys of a real deployment's file that the embedded grid's agents read.
KEY_STATE_TABLE = "ddb_state_table"
KEY_QUEUE = "tasks_queue_name"
KEY_DLQ = "dlq_name"
KEY_VISIBILITY = "agent_task_visibility_timeout_sec"
KEY_HEARTBEAT_EXPIRY = "task_ttl_expiration_offset_sec"
KEY_HEARTBEAT_INTERVAL = "task_ttl_refresh_interval_sec"
KEY_EMPTY_QUEUE_BACKOFF = "empty_task_queue_backoff_timeout_sec"
# Keys only the embedded grid writes.
KEY_HANDLER = "local_worker_handler"
KEY_CHECKER_PERIOD = "local_checker_period_sec"
KEY_TOKEN_LIFETIME = "local_token_lifetime_sec"
KEY_AGENTS = "local_agents"
KEY_ENDPOINTS = "local_aws_endpoints"

#: moto serves one Python process's worth of requests; each group of services gets a server
#: process of its own, so that data-plane, state-table and queue traffic use every core. The
#: first group's endpoint is the grid's default ``aws_endpoint_url``.
SERVICE_GROUPS = {
    "sqs": ("sqs", "cognito-idp"),
    "s3": ("s3",),
    "dynamodb": ("dynamodb",),
}

DEFAULT_HANDLER = "htcgrid.workers:mock_compute_engine"


@dataclass(frozen=True)
class GridSettings:
    """Timings of the embedded grid's agents, checker and gateway (seconds)."""

    handler: str = DEFAULT_HANDLER
    #: Seconds a message stays hidden after it is received, before an agent claims it.
    visibility_timeout_sec: int = 30
    #: A heartbeat is good for this long; an agent silent for longer loses its task.
    heartbeat_expiry_sec: int = 30
    #: How often a running task's heartbeat is extended.
    heartbeat_interval_sec: float = 5.0
    #: How long an idle agent waits on an empty queue before asking again. Its receive
    #: already waits up to a second for a message (long polling), so a longer pause here only
    #: delays the start of the next session.
    empty_queue_backoff_sec: float = 0.05
    #: How often the checker looks for expired heartbeats.
    checker_period_sec: float = 5.0
    #: ID tokens older than this are refused by the gateway (Cognito's default: one hour).
    token_lifetime_sec: int = 3600

    def to_config(self) -> dict[str, object]:
        return {
            KEY_HANDLER: self.handler,
            KEY_VISIBILITY: self.visibility_timeout_sec,
            KEY_HEARTBEAT_EXPIRY: self.heartbeat_expiry_sec,
            KEY_HEARTBEAT_INTERVAL: self.heartbeat_interval_sec,
            KEY_EMPTY_QUEUE_BACKOFF: self.empty_queue_backoff_sec,
            KEY_CHECKER_PERIOD: self.checker_period_sec,
            KEY_TOKEN_LIFETIME: self.token_lifetime_sec,
        }

    @classmethod
    def from_config(cls, config: GridConfig) -> GridSettings:
        default = cls()
        return cls(
            handler=str(config.get(KEY_HANDLER, default.handler)),
            visibility_timeout_sec=int(config.get(KEY_VISIBILITY, default.visibility_timeout_sec)),
            heartbeat_expiry_sec=int(
                config.get(KEY_HEARTBEAT_EXPIRY, default.heartbeat_expiry_sec)
            ),
            heartbeat_interval_sec=float(
                config.get(KEY_HEARTBEAT_INTERVAL, default.heartbeat_interval_sec)
            ),
            empty_queue_backoff_sec=float(
                config.get(KEY_EMPTY_QUEUE_BACKOFF, default.empty_queue_backoff_sec)
            ),
            checker_period_sec=float(config.get(KEY_CHECKER_PERIOD, default.checker_period_sec)),
            token_lifetime_sec=int(config.get(KEY_TOKEN_LIFETIME, default.token_lifetime_sec)),
        )
