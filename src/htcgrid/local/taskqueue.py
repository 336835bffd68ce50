"""The embedded grid's task queue (SQS): one message per task attempt to be made."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .. import aws, protocol
from ..config import GridConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskMessage:
    """A message taken from the queue: which task, and the handle to delete it with."""

    task_id: str
    session_id: str
    receipt: str
    body: dict[str, Any]


class TaskQueue:
    """The task queue named by the configuration's ``tasks_queue_name``."""

    def __init__(self, config: GridConfig, *, max_pool_connections: int = 10) -> None:
        name = config.get("tasks_queue_name")
        if not name:
            raise ValueError(f"{config.source} has no 'tasks_queue_name' key")
        self.name = name
        self._sqs = aws.client(config, "sqs", max_pool_connections=max_pool_connections)
        self.url = self._sqs.get_queue_url(QueueName=name)["QueueUrl"]

    def send(
        self,
        rows: Sequence[Mapping[str, Any]],
        stats: Mapping[str, Any],
        *,
        delay_sec: int = 0,
    ) -> list[str]:
        """Queue one message per row (the row plus ``stats``, as JSON), in batches of 10.

        Returns the task ids that could not be queued (empty when all were); a batch whose
        request failed counts as not queued, so the caller can send it again (a task queued
        twice is harmless: only one claim of it can succeed).
        """
        failed: list[str] = []
        for batch in protocol.chunks(list(rows), 10):
            entries = [
                {
                    "Id": row[protocol.TASK_ID],
                    "MessageBody": protocol.json_dumps({**row, "stats": stats}),
                    "DelaySeconds": delay_sec,
                }
                for row in batch
            ]
            try:
                answer = self._sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
            except (BotoCoreError, ClientError) as exc:
                logger.warning("could not queue %d tasks: %s", len(entries), exc)
                failed.extend(entry["Id"] for entry in entries)
                continue
            failed.extend(entry["Id"] for entry in answer.get("Failed") or [])
        return failed

    def receive(self, max_messages: int = 1, wait_sec: int = 1) -> list[TaskMessage]:
        answer = self._sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=wait_sec
        )
        messages = []
        for message in answer.get("Messages", []):
            try:
                body = json.loads(message["Body"])
                task_id = protocol.check_task_id(body[protocol.TASK_ID])
                session_id = protocol.check_session_id(body[protocol.SESSION_ID])
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("dropping a malformed queue message: %s", exc)
                self.delete(message["ReceiptHandle"])
                continue
            messages.append(TaskMessage(task_id, session_id, message["ReceiptHandle"], body))
        return messages

    def delete(self, receipt: str) -> None:
        try:
            self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)
        except ClientError as exc:
            # A handle that has gone stale means the message was received again elsewhere.
            logger.debug("could not delete a queue message: %s", exc)

    def delete_many(self, receipts: Sequence[str]) -> None:
        """Delete messages, ten to a request."""
        for batch in protocol.chunks(list(receipts), 10):
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(batch)]
            try:
                answer = self._sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
            except ClientError as exc:
                logger.debug("could not delete queue messages: %s", exc)
                continue
            for failure in answer.get("Failed") or []:
                logger.debug("could not delete a queue message: %s", failure.get("Message"))

    def release_many(self, receipts: Sequence[str]) -> None:
        """Make received messages visible again at once, ten to a request."""
        for batch in protocol.chunks(list(receipts), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0}
                for i, r in enumerate(batch)
            ]
            try:
                self._sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)
            except ClientError as exc:
                # They come back by themselves when their visibility timeout ends.
                logger.debug("could not release queue messages: %s", exc)

    def counts(self) -> tuple[int, int]:
        """Messages in the queue: (visible, in flight), as SQS approximates them."""
        # "All" rather than the two names: moto works out every attribute of the queue
        # (reading each message) three times over for each name asked for, once for "All".
        attrs = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["All"])[
            "Attributes"
        ]
        return (
            int(attrs.get("ApproximateNumberOfMessages", 0)),
            int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        )

    def approximate_depth(self) -> int:
        """Messages waiting to be received."""
        return self.counts()[0]
