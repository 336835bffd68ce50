"""The data plane: task inputs, outputs, errors and session payloads, in S3 (Redis later).

Keys and encodings come from :mod:`htcgrid.protocol`. Reads and writes of many keys run on a
bounded thread pool, so a session of thousands of tasks costs a few round trips of wall time,
not thousands.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Container, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from . import aws, protocol
from .config import STORAGE_S3, GridConfig
from .errors import ConfigError, DataPlaneError

logger = logging.getLogger(__name__)

#: Default number of concurrent data-plane requests of one client.
DEFAULT_MAX_WORKERS = 32


class DataPlane(ABC):
    """A key-value store of bytes, with concurrent bulk reads and writes.

    Subclasses implement :meth:`put`, :meth:`get` and :meth:`delete`; the bulk and task-level
    methods are built on them.
    """

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """Return the bytes at ``key``, or ``None`` if there are none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if it is absent)."""

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="htcgrid-io")
        return self._pool

    def put_many(self, items: Mapping[str, bytes]) -> None:
        """Store every item, concurrently; raise the first failure after all have ended."""
        if len(items) <= 1:
            for key, data in items.items():
                self.put(key, data)
            return
        futures = [self._executor().submit(self.put, key, data) for key, data in items.items()]
        errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            raise DataPlaneError(
                f"{len(failed)} of {len(items)} data-plane writes failed; first: {failed[0]}"
            ) from failed[0]

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Return the bytes at each key (``None`` where absent), read concurrently."""
        keys = list(keys)
        if len(keys) <= 1:
            return {key: self.get(key) for key in keys}
        return dict(zip(keys, self._executor().map(self.get, keys)))

    # --- task-level operations (keys and encodings of the protocol) ----------------------

    def write_inputs(self, ids: Sequence[str], tasks: Sequence[Mapping[str, Any]]) -> None:
        self.put_many(
            {protocol.input_key(t): protocol.encode_input(d) for t, d in zip(ids, tasks)}
        )

    def read_input(self, task_id: str) -> Any:
        data = self.get(protocol.input_key(task_id))
        if data is None:
            raise DataPlaneError(f"task {task_id} has no input in the data plane")
        return protocol.decode_input(data)

    def write_payload(self, envelope: Mapping[str, Any]) -> None:
        session_id = envelope["session_id"]
        self.put(protocol.payload_key(session_id), protocol.encode_payload(envelope))

    def read_payload(self, session_id: str) -> Any | None:
        data = self.get(protocol.payload_key(session_id))
        return None if data is None else protocol.decode_payload(data)

    def write_output(self, task_id: str, value: Any) -> None:
        self.put(protocol.output_key(task_id), protocol.encode_output(value))

    def read_outputs(self, ids: Iterable[str]) -> dict[str, str | None]:
        """Return each task's output text (``None`` where there is none)."""
        ids = list(dict.fromkeys(ids))
        raw = self.get_many(protocol.output_key(t) for t in ids)
        return {
            t: None if data is None else protocol.decode_output(data)
            for t in ids
            for data in [raw[protocol.output_key(t)]]
        }

    def write_error(self, task_id: str, text: str) -> None:
        self.put(protocol.error_key(task_id), protocol.encode_error(text))

    def read_errors(self, ids: Iterable[str]) -> dict[str, str | None]:
        """Return the text of each task's last failure (``None`` where there is none)."""
        ids = list(dict.fromkeys(ids))
        raw = self.get_many(protocol.error_key(t) for t in ids)
        return {
            t: None if data is None else protocol.decode_error(data)
            for t in ids
            for data in [raw[protocol.error_key(t)]]
        }

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class S3DataPlane(DataPlane):
    """The data plane in an S3 bucket, keys at the bucket root."""

    def __init__(self, config: GridConfig, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        super().__init__(max_workers)
        self.bucket = config.s3_bucket
        self.kms_key_id = config.s3_kms_key_id
        self._s3 = aws.client(config, "s3", max_pool_connections=max_workers)

    def put(self, key: str, data: bytes) -> None:
        extra: dict[str, str] = {}
        if self.kms_key_id:
            # A key id is valid only with aws:kms encryption; without one, send neither.
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except (BotoCoreError, ClientError) as exc:
            raise DataPlaneError(f"cannot write s3://{self.bucket}/{key}: {exc}") from exc

    def get(self, key: str) -> bytes | None:
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=key)
            return answer["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise DataPlaneError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise DataPlaneError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise DataPlaneError(f"cannot delete s3://{self.bucket}/{key}: {exc}") from exc


def open_dataplane(config: GridConfig, max_workers: int = DEFAULT_MAX_WORKERS) -> DataPlane:
    """Return the data plane a configuration names."""
    if config.storage == STORAGE_S3:
        return S3DataPlane(config, max_workers)
    raise ConfigError(
        f"grid_storage_service {config.storage!r} is not supported by this version of htcgrid "
        "yet; only 'S3' is"
    )


class EndedTexts:
    """The outputs of finished tasks and the errors of failed ones, each read once.

    An output or error text is written before its task ends and is not written again, so
    what was read stays true; a text found missing is looked for again only when asked
    (``retry_missing``).
    """

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane
        self.outputs: dict[str, str | None] = {}
        self.errors: dict[str, str | None] = {}

    def read_new(
        self,
        by_state: Mapping[str, Iterable[str]],
        wanted: Container[str],
        *,
        retry_missing: bool = False,
    ) -> None:
        """Read the texts of the tasks of ``wanted`` that ended since the last call."""
        for state, texts, read in (
            (protocol.FINISHED, self.outputs, self._dataplane.read_outputs),
            (protocol.FAILED, self.errors, self._dataplane.read_errors),
        ):
            new = [
                t
                for t in dict.fromkeys(by_state.get(state, ()))
                if t in wanted and (t not in texts or (retry_missing and texts[t] is None))
            ]
            if new:
                texts.update(read(new))
