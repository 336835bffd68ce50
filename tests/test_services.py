"""The embedded grid's AWS services process: moto served by waitress, and its SQS fast path."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from moto.core.utils import unix_time
from moto.sqs.models import SQSBackend, sqs_backends
from waitress.server import create_server

from htcgrid.local import services

RETENTION_CHECK = "is_message_valid_based_on_retention_period"


@pytest.fixture
def lightened(monkeypatch):
    """SQS with the retention check replaced; moto's own is put back afterwards."""
    monkeypatch.setattr(SQSBackend, RETENTION_CHECK, getattr(SQSBackend, RETENTION_CHECK))
    assert services.lighten_sqs_receive() is True


def test_the_retention_check_keeps_moto_s_rule(lightened):
    backend = sqs_backends["123456789012"]["us-east-1"]
    backend.create_queue("retention-probe", MessageRetentionPeriod="60")
    message = backend.send_message("retention-probe", "body")

    assert backend.is_message_valid_based_on_retention_period("retention-probe", message)
    message.sent_timestamp = int((unix_time() - 61) * 1000)
    assert not backend.is_message_valid_based_on_retention_period("retention-probe", message)
    backend.delete_queue("retention-probe")


def test_moto_served_by_waitress_keeps_connections_alive_and_answers_every_service():
    server = create_server(services.moto_application(), host=services.LOOPBACK, port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        endpoint = f"http://{services.LOOPBACK}:{server.effective_port}"
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        sqs = session.client("sqs", endpoint_url=endpoint)
        ddb = session.client("dynamodb", endpoint_url=endpoint)
        s3 = session.client("s3", endpoint_url=endpoint)

        url = sqs.create_queue(QueueName="served")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="hello")
        got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
        s3.create_bucket(Bucket="served-bucket")
        s3.put_object(Bucket="served-bucket", Key="k", Body=b"v")
        answers = [
            ddb.list_tables()["ResponseMetadata"]["HTTPHeaders"].get("connection")
            for _ in range(3)
        ]

        assert [m["Body"] for m in got] == ["hello"]
        assert s3.get_object(Bucket="served-bucket", Key="k")["Body"].read() == b"v"
        assert "close" not in answers
    finally:
        server.close()
        time.sleep(0.1)
