"""The embedded grid's lighter paths through moto give moto's own answers.

Each tuning is checked against moto as shipped, in this process; the ``untuned_moto``
fixture puts moto back after every test. The services process applies them all, so every
test that starts a grid runs on them too.
"""

from __future__ import annotations

import json
import time

import moto.core.responses
import moto.sqs.models
import pytest
from moto.core import serialize
from moto.core.responses import get_service_model
from moto.core.utils import unix_time
from moto.dynamodb.responses import DynamoHandler
from moto.sqs.models import SQSBackend, sqs_backends

from htcgrid.local import moto_tuning

RETENTION_CHECK = "is_message_valid_based_on_retention_period"

#: An item with a value of every DynamoDB type, as moto's backend hands it to the serializer.
EVERY_TYPE_ITEM = {
    "task_id": {"S": "s_0"},
    "retries": {"N": "12.5"},
    "blob": {"B": b"\x00\xffbytes"},
    "names": {"SS": ["x", "y"]},
    "numbers": {"NS": ["1", "2"]},
    "blobs": {"BS": [b"a", b"\x01"]},
    "nested": {"M": {"k": {"S": "v"}, "l": {"L": [{"N": "1"}, {"NULL": True}]}}},
    "flag": {"BOOL": False},
    "nothing": {"NULL": True},
}


# --- SQS ----------------------------------------------------------------------------------


def test_the_lighter_retention_check_keeps_moto_s_rule(untuned_moto):
    backend = sqs_backends["123456789012"]["us-east-1"]
    backend.create_queue("retention-probe", MessageRetentionPeriod="60")
    fresh = backend.send_message("retention-probe", "fresh")
    old = backend.send_message("retention-probe", "old")
    old.sent_timestamp = int((unix_time() - 61) * 1000)
    try:
        assert moto_tuning.lighten_sqs_receive() is True

        assert backend.is_message_valid_based_on_retention_period("retention-probe", fresh)
        assert not backend.is_message_valid_based_on_retention_period("retention-probe", old)
        got = backend.receive_message("retention-probe", 10, 0, 30)
        assert [m.body for m in got] == ["fresh"]
    finally:
        backend.delete_queue("retention-probe")


def test_an_unexpected_moto_is_left_unchanged(monkeypatch, untuned_moto):
    def other_shape(self, queue):  # a later moto with another signature
        return True

    monkeypatch.setattr(SQSBackend, RETENTION_CHECK, other_shape)

    assert moto_tuning.lighten_sqs_receive() is False
    assert getattr(SQSBackend, RETENTION_CHECK) is other_shape


def test_a_message_not_shaped_as_expected_gets_moto_s_own_check(untuned_moto):
    calls = []

    def recording(self, queue_name, message):
        calls.append(message)
        return True

    SQSBackend.is_message_valid_based_on_retention_period = recording
    assert moto_tuning.lighten_sqs_receive() is True
    backend = sqs_backends["123456789012"]["us-east-1"]
    backend.create_queue("shape-probe")
    try:
        assert backend.is_message_valid_based_on_retention_period("shape-probe", object())
        assert len(calls) == 1
    finally:
        backend.delete_queue("shape-probe")


def test_the_sqs_clock_reads_the_same_epoch_seconds(untuned_moto):
    shipped_seconds = moto.sqs.models.unix_time
    shipped_millis = moto.sqs.models.unix_time_millis

    assert moto_tuning.cheaper_sqs_clock() is True
    assert moto_tuning.cheaper_sqs_clock() is True  # a second call changes nothing

    assert moto.sqs.models.unix_time() == pytest.approx(shipped_seconds(), abs=0.05)
    assert moto.sqs.models.unix_time_millis() == pytest.approx(shipped_millis(), abs=50)
    assert moto.sqs.models.unix_time._htcgrid_original is shipped_seconds


def test_delayed_and_received_messages_keep_their_visibility_on_the_sqs_clock(untuned_moto):
    assert moto_tuning.cheaper_sqs_clock() is True
    backend = sqs_backends["123456789012"]["us-east-1"]
    backend.create_queue("clock-probe")
    try:
        backend.send_message("clock-probe", "later", delay_seconds=1)
        backend.send_message("clock-probe", "now")

        first = backend.receive_message("clock-probe", 10, 0, 30)
        again = backend.receive_message("clock-probe", 10, 0, 30)
        time.sleep(1.1)
        late = backend.receive_message("clock-probe", 10, 0, 30)

        assert [m.body for m in first] == ["now"]
        assert again == []
        assert [m.body for m in late] == ["later"]
    finally:
        backend.delete_queue("clock-probe")


# --- every service ------------------------------------------------------------------------


def test_action_names_are_listed_once_per_class_with_moto_s_answer(untuned_moto):
    shipped = moto.core.responses.method_names_from_class(DynamoHandler)

    assert moto_tuning.remember_action_names() is True
    first = moto.core.responses.method_names_from_class(DynamoHandler)
    second = moto.core.responses.method_names_from_class(DynamoHandler)

    assert first == set(shipped)
    assert "update_item" in first
    assert second is first


# --- DynamoDB -----------------------------------------------------------------------------


def _serialized(serializer_class, operation: str, result: dict) -> dict:
    operation_model = get_service_model("dynamodb").operation_model(operation)
    serializer = serializer_class(
        operation_model=operation_model,
        pretty_print=False,
        value_picker=serialize.XFormedAttributePicker(),
    )
    return json.loads(serializer.serialize(result)["body"])


@pytest.mark.parametrize(
    ("operation", "result"),
    [
        ("GetItem", {"Item": EVERY_TYPE_ITEM}),
        ("UpdateItem", {"Attributes": EVERY_TYPE_ITEM}),
        (
            "BatchGetItem",
            {
                "Responses": {"table": [EVERY_TYPE_ITEM, {"task_id": {"S": "s_1"}}]},
                "UnprocessedKeys": {},
                "ConsumedCapacity": [{"CapacityUnits": 2, "TableName": "table"}],
            },
        ),
        (
            "Query",
            {
                "Items": [EVERY_TYPE_ITEM],
                "Count": 1,
                "ScannedCount": 1,
                "LastEvaluatedKey": {"task_id": {"S": "s_0"}},
            },
        ),
    ],
)
def test_attribute_values_are_written_as_moto_s_serializer_writes_them(
    untuned_moto, operation, result
):
    shipped = _serialized(serialize.SERIALIZERS["json"], operation, result)

    assert moto_tuning.direct_attribute_values() is True
    tuned_class = serialize.get_serializer_class("dynamodb", "json")
    tuned = _serialized(tuned_class, operation, result)

    assert tuned_class is not serialize.SERIALIZERS["json"]
    assert tuned == shipped


@pytest.mark.parametrize(
    "value",
    [
        {"S": 5},
        {"S": "a", "N": "1"},
        {"X": "?"},
        {"M": {"k": {"S": None}}},
        {"L": [{"S": 1}]},
        {"M": {"": {"S": "an attribute with an empty name"}}},
    ],
)
def test_values_not_shaped_as_expected_are_left_to_moto_s_serializer(untuned_moto, value):
    result = {"Item": {"task_id": {"S": "s_0"}, "odd": value}}
    shipped = _serialized(serialize.SERIALIZERS["json"], "GetItem", result)

    assert moto_tuning.attribute_value_wire(value) is None
    assert moto_tuning.direct_attribute_values() is True
    tuned = _serialized(serialize.get_serializer_class("dynamodb", "json"), "GetItem", result)

    assert tuned == shipped


def test_a_dynamodb_serializer_of_moto_s_own_is_left_alone(monkeypatch, untuned_moto):
    class MotoOwn(serialize.SERIALIZERS["json"]):
        pass

    monkeypatch.setitem(serialize.SERVICE_SPECIFIC_SERIALIZERS, "dynamodb", {"json": MotoOwn})

    assert moto_tuning.direct_attribute_values() is False
    assert serialize.get_serializer_class("dynamodb", "json") is MotoOwn


def test_a_tuning_that_fails_unforeseen_is_skipped_and_the_others_applied(
    monkeypatch, untuned_moto, caplog
):
    def broken() -> bool:
        raise ImportError("moto laid out otherwise")

    monkeypatch.setattr(moto_tuning, "cheaper_sqs_clock", broken)

    moto_tuning.apply_all()

    assert "broken failed" in caplog.text
    assert serialize.get_serializer_class("dynamodb", "json")._htcgrid_direct is True
    assert not hasattr(moto.sqs.models.unix_time, "_htcgrid_original")
