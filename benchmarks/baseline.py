"""The sequential baseline: how HTC-Grid's reference client moves data, one request at a time.

The reference client uploads each task's input with one S3 ``put_object`` after another, then
the session's envelope, then calls /submit; it collects results by asking /result which tasks
finished and downloading each output with one ``get_object`` after another. This module does
exactly that, with the wire format of :mod:`htcgrid.protocol` (so that the grid accepts it as
it accepts htcgrid's client), one boto3 S3 client and one ``requests`` session. From htcgrid
it borrows only the sign-in (never timed) and the making of the boto3 client (which endpoint,
which timeouts), so that both clients reach the grid the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from htcgrid import aws, protocol
from htcgrid.auth import CognitoAuth
from htcgrid.config import load_config


@dataclass(frozen=True)
class SendTiming:
    """Seconds of one sequential send, by phase."""

    session_id: str
    upload_sec: float
    submit_sec: float

    @property
    def total_sec(self) -> float:
        return self.upload_sec + self.submit_sec


class SequentialClient:
    """A client that makes one request at a time, as the reference client does.

    Parameters
    ----------
    config : mapping
        The grid's ``agent_config.json`` as a dict (possibly with proxied URLs).
    username, password : str
        The grid's Cognito user.
    """

    def __init__(self, config: Mapping[str, Any], username: str, password: str) -> None:
        self.config = load_config(dict(config), private=False)
        # A plain boto3 client; htcgrid's helper only finds the grid's S3 endpoint and sets
        # timeouts. One connection: the reference client makes one request at a time.
        self._s3 = aws.client(self.config, "s3", max_pool_connections=1)
        self._auth = CognitoAuth(self.config, username, password)
        self._auth.sign_in()
        self._http = requests.Session()

    def close(self) -> None:
        self._http.close()
        self._s3.close()

    def _api(self, method: str, path: str, content: str) -> Any:
        answer = self._http.request(
            method,
            f"{self.config.api_url}/{path}",
            params={protocol.QUERY_PARAMETER: content},
            headers=self._auth.headers(),
            timeout=(5, 60),
        )
        if answer.status_code != 200:
            raise RuntimeError(f"/{path} answered {answer.status_code}: {answer.text[:300]}")
        return answer.json()

    def send(self, tasks: Sequence[Mapping[str, Any]]) -> SendTiming:
        """Upload each input, then the envelope, then call /submit; time both phases."""
        session_id = protocol.new_session_id()
        ids = protocol.task_ids(session_id, len(tasks))
        bucket = self.config.s3_bucket

        started = time.perf_counter()
        for task_id, task in zip(ids, tasks):
            self._s3.put_object(
                Bucket=bucket, Key=protocol.input_key(task_id), Body=protocol.encode_input(task)
            )
        envelope = protocol.make_envelope(session_id, ids)
        self._s3.put_object(
            Bucket=bucket,
            Key=protocol.payload_key(session_id),
            Body=protocol.encode_payload(envelope),
        )
        uploaded = time.perf_counter()
        self._api("POST", "submit", session_id)
        return SendTiming(session_id, uploaded - started, time.perf_counter() - uploaded)

    def collect(self, session_id: str) -> dict[str, str]:
        """Ask /result once, then download each finished task's output, one after another."""
        answer = self._api("GET", "result", protocol.encode_query({"session_id": session_id}))
        outputs: dict[str, str] = {}
        for task_id in answer.get(protocol.FINISHED) or []:
            body = self._s3.get_object(
                Bucket=self.config.s3_bucket, Key=protocol.output_key(task_id)
            )
            outputs[task_id] = protocol.decode_output(body["Body"].read())
        return outputs
