"""The S3 data plane writes every key in the protocol's encoding (moto in-process)."""

import base64
import json

import boto3
import pytest
from moto import mock_aws

from htcgrid import protocol
from htcgrid.config import load_config
from htcgrid.dataplane import EndedTexts, S3DataPlane

CONFIG = {
    "region": "us-east-1",
    "grid_storage_service": "S3",
    "s3_bucket": "htc-stdout-bucket-test",
    "public_api_gateway_url": "http://127.0.0.1:1/v1",
    "user_pool_id": "us-east-1_x",
    "cognito_userpool_client_id": "c",
}


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=CONFIG["s3_bucket"])
        yield client


def raw(s3, key):
    return s3.get_object(Bucket=CONFIG["s3_bucket"], Key=key)["Body"].read()


def test_inputs_payload_output_and_error_bytes(s3):
    plane = S3DataPlane(load_config(CONFIG, private=False), max_workers=4)
    ids = protocol.task_ids("S", 3)
    tasks = [{"worker_arguments": [str(i), "1", "1"]} for i in range(3)]

    plane.write_inputs(ids, tasks)
    plane.write_payload(protocol.make_envelope("S", ids))
    plane.write_output("S_1", 1000)
    plane.write_error("S_2", "ValueError: bad\nTraceback ...")

    for task_id, task in zip(ids, tasks):
        assert json.loads(base64.b64decode(raw(s3, f"{task_id}-input"))) == task
    envelope = json.loads(base64.urlsafe_b64decode(raw(s3, "S-payload")))
    assert envelope["tasks_list"]["tasks"] == ids
    assert raw(s3, "S_1-output") == base64.b64encode(b"1000")
    assert base64.b64decode(raw(s3, "S_2-error")) == b"ValueError: bad\nTraceback ..."


def test_reads_give_none_for_absent_keys(s3):
    plane = S3DataPlane(load_config(CONFIG, private=False), max_workers=4)
    plane.write_output("S_0", {"price": 1.5})

    assert plane.read_outputs(["S_0", "S_1"]) == {"S_0": '{"price":1.5}', "S_1": None}
    assert plane.read_errors(["S_0"]) == {"S_0": None}
    assert plane.read_payload("nosuch") is None


def test_kms_key_is_sent_with_aws_kms_only(s3, monkeypatch):
    sent = []
    plane = S3DataPlane(load_config(dict(CONFIG, s3_kms_key_id="key-1"), private=False))
    monkeypatch.setattr(plane._s3, "put_object", lambda **kw: sent.append(kw))
    plain = S3DataPlane(load_config(CONFIG, private=False))
    monkeypatch.setattr(plain._s3, "put_object", lambda **kw: sent.append(kw))

    plane.put("k", b"v")
    plain.put("k", b"v")

    assert sent[0]["ServerSideEncryption"] == "aws:kms"
    assert sent[0]["SSEKMSKeyId"] == "key-1"
    assert "ServerSideEncryption" not in sent[1] and "SSEKMSKeyId" not in sent[1]


def test_texts_of_ended_tasks_are_read_once_each_and_never_mixed_up(s3):
    plane = S3DataPlane(load_config(CONFIG, private=False), max_workers=4)
    a, b, c = protocol.task_ids("S", 3)
    plane.write_output(a, 1000)
    plane.write_output(b, 2000)
    plane.write_error(c, "boom")
    texts = EndedTexts(plane)
    reads = []
    original = plane.get
    plane.get = lambda key: reads.append(key) or original(key)

    # A /result answer may list a task twice; each keeps its own text.
    texts.read_new({protocol.FINISHED: [a, a, b], protocol.FAILED: [c]}, {a, b, c})
    texts.read_new({protocol.FINISHED: [a, b], protocol.FAILED: [c]}, {a, b, c})

    assert texts.outputs == {a: "1000", b: "2000"}
    assert texts.errors == {c: "boom"}
    assert sorted(reads) == sorted(
        [protocol.output_key(a), protocol.output_key(b), protocol.error_key(c)]
    )
    assert plane.read_outputs([b, a, b]) == {b: "2000", a: "1000"}
