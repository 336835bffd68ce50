"""boto3 clients built from a grid configuration, with timeouts and bounded retries."""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

from .config import GridConfig

#: Seconds to wait for a connection and for an answer from an AWS endpoint.
CONNECT_TIMEOUT_SEC = 5
READ_TIMEOUT_SEC = 30
#: Attempts per AWS call (botocore's standard mode backs off between them).
MAX_ATTEMPTS = 5

# One boto3 session per process, so that service models are read from disk once. Sessions
# are not safe to share between threads while clients are being made; the clients are.
_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def client(config: GridConfig, service: str, *, max_pool_connections: int = 10) -> Any:
    """Return a boto3 client for ``service`` that reaches the grid's AWS services.

    On the embedded grid the client points at its loopback endpoint with the credentials it
    hands out; on a real deployment it uses the region and the usual credential chain.
    """
    global _session
    kwargs: dict[str, Any] = {
        "region_name": config.region,
        "config": Config(
            connect_timeout=CONNECT_TIMEOUT_SEC,
            read_timeout=READ_TIMEOUT_SEC,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            max_pool_connections=max_pool_connections,
        ),
    }
    endpoint = config.service_endpoints.get(service) or config.aws_endpoint_url
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if config.aws_access_key_id and config.aws_secret_access_key:
        kwargs["aws_access_key_id"] = config.aws_access_key_id
        kwargs["aws_secret_access_key"] = config.aws_secret_access_key
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(service, **kwargs)
