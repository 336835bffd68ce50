"""The embedded grid's AWS services: moto served by waitress, and its lighter SQS receive.

These run moto in this process (its server, over loopback HTTP); the grid's own services
process is exercised by every test that starts a grid.
"""

from __future__ import annotations

import resource
import socket
import threading

import boto3
import pytest
from moto.core.utils import unix_time
from moto.sqs.models import SQSBackend, sqs_backends

from htcgrid.local import services

RETENTION_CHECK = "is_message_valid_based_on_retention_period"


@pytest.fixture
def moto_retention_check(monkeypatch):
    """moto's own retention check, put back after the test whatever the test changed."""
    original = getattr(SQSBackend, RETENTION_CHECK)
    monkeypatch.setattr(SQSBackend, RETENTION_CHECK, original)
    return original


@pytest.fixture
def served(moto_retention_check):
    """The services' server, as the services process makes it, with the lighter receive."""
    assert services.lighten_sqs_receive() is True
    server = services.make_server()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    endpoint = f"http://{services.LOOPBACK}:{server.effective_port}"
    try:
        yield server, lambda service: session.client(service, endpoint_url=endpoint)
    finally:
        server.close()
        thread.join(5)


def test_the_lighter_retention_check_keeps_moto_s_rule(moto_retention_check):
    backend = sqs_backends["123456789012"]["us-east-1"]
    backend.create_queue("retention-probe", MessageRetentionPeriod="60")
    fresh = backend.send_message("retention-probe", "fresh")
    old = backend.send_message("retention-probe", "old")
    old.sent_timestamp = int((unix_time() - 61) * 1000)
    try:
        assert services.lighten_sqs_receive() is True

        assert backend.is_message_valid_based_on_retention_period("retention-probe", fresh)
        assert not backend.is_message_valid_based_on_retention_period("retention-probe", old)
        got = backend.receive_message("retention-probe", 10, 0, 30)
        assert [m.body for m in got] == ["fresh"]
    finally:
        backend.delete_queue("retention-probe")


def test_an_unexpected_moto_is_left_unchanged(monkeypatch, moto_retention_check):
    def other_shape(self, queue):  # a later moto with another signature
        return True

    monkeypatch.setattr(SQSBackend, RETENTION_CHECK, other_shape)

    assert services.lighten_sqs_receive() is False
    assert getattr(SQSBackend, RETENTION_CHECK) is other_shape


def test_a_message_not_shaped_as_expected_gets_moto_s_own_check(moto_retention_check):
    calls = []

    def recording(self, queue_name, message):
        calls.append(message)
        return True

    SQSBackend.is_message_valid_based_on_retention_period = recording
    assert services.lighten_sqs_receive() is True
    backend = sqs_backends["123456789012"]["us-east-1"]
    backend.create_queue("shape-probe")
    try:
        assert backend.is_message_valid_based_on_retention_period("shape-probe", object())
        assert len(calls) == 1
    finally:
        backend.delete_queue("shape-probe")


def test_the_server_answers_sqs_s3_and_dynamodb_on_kept_alive_connections(served):
    _, client = served
    sqs, s3, ddb = client("sqs"), client("s3"), client("dynamodb")

    url = sqs.create_queue(QueueName="served")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
    s3.create_bucket(Bucket="served-bucket")
    s3.put_object(Bucket="served-bucket", Key="k", Body=b"v" * 3_000_000)
    closes = [
        ddb.list_tables()["ResponseMetadata"]["HTTPHeaders"].get("connection") for _ in range(3)
    ]

    assert [m["Body"] for m in got] == ["hello"]
    assert s3.get_object(Bucket="served-bucket", Key="k")["Body"].read() == b"v" * 3_000_000
    assert "close" not in closes


def test_the_server_listens_on_loopback_and_outlives_a_thousand_connections(served):
    server, client = served
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500:
        if hard != resource.RLIM_INFINITY and hard < 2500:
            pytest.skip(f"this process may open only {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2500, hard))
    assert server.effective_host == services.LOOPBACK
    # Past descriptor 1023, where a select()-based loop would stop serving for good.
    held = []
    try:
        for _ in range(1100):
            held.append(socket.create_connection((services.LOOPBACK, server.effective_port)))
        assert client("sqs").list_queues()["ResponseMetadata"]["HTTPStatusCode"] == 200
    finally:
        for conn in held:
            conn.close()


def test_s3_keys_with_question_marks_and_escaped_slashes_stay_apart(served):
    _, client = served
    s3 = client("s3")
    s3.create_bucket(Bucket="keys-bucket")
    keys = ["report?v=1", "report?v=2", "a%2Fb", "a/b"]
    for key in keys:
        s3.put_object(Bucket="keys-bucket", Key=key, Body=key.encode())

    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="keys-bucket")["Contents"]]

    assert sorted(listed) == sorted(keys)
    for key in keys:
        assert s3.get_object(Bucket="keys-bucket", Key=key)["Body"].read() == key.encode()
