"""The embedded grid's AWS services: moto served by waitress, with the grid's tunings.

These run moto in this process (its server, over loopback HTTP); the grid's own services
process is exercised by every test that starts a grid.
"""

from __future__ import annotations

import resource
import socket
import threading

import boto3
import pytest

from htcgrid.local import moto_tuning, services


@pytest.fixture
def served(untuned_moto):
    """The services' server, as the services process makes it, with every tuning applied."""
    moto_tuning.apply_all()
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


def test_items_of_every_type_come_back_as_they_were_put(served):
    _, client = served
    ddb = client("dynamodb")
    ddb.create_table(
        TableName="round-trip",
        KeySchema=[{"AttributeName": "task_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "task_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    item = {
        "task_id": {"S": "s_0"},
        "retries": {"N": "12.5"},
        "blob": {"B": b"\x00\xffbytes"},
        "names": {"SS": ["x", "y"]},
        "blobs": {"BS": [b"\x01"]},
        "nested": {"M": {"k": {"S": "v"}, "l": {"L": [{"N": "1"}, {"NULL": True}]}}},
        "flag": {"BOOL": False},
    }
    ddb.put_item(TableName="round-trip", Item=item)

    got = ddb.get_item(TableName="round-trip", Key={"task_id": {"S": "s_0"}})["Item"]
    old = ddb.update_item(
        TableName="round-trip",
        Key={"task_id": {"S": "s_0"}},
        AttributeUpdates={"retries": {"Value": {"N": "13"}, "Action": "PUT"}},
        ReturnValues="ALL_OLD",
    )["Attributes"]
    rows = ddb.batch_get_item(RequestItems={"round-trip": {"Keys": [{"task_id": {"S": "s_0"}}]}})

    got["names"]["SS"].sort()
    assert got == item
    assert old == item
    assert rows["Responses"]["round-trip"][0]["retries"] == {"N": "13"}
