"""Lighter paths through moto for the requests every task of the embedded grid makes.

moto emulates AWS faithfully, but some of its steps cost far more than the work they stand
for, and the embedded grid pays them thousands of times a session. Each function here
replaces one such step, in the services process only, with code that gives the same answer
for less: it checks first that moto is shaped as expected and changes nothing otherwise
(returning ``False``), so a later moto is served unchanged rather than wrongly.

- :func:`lighten_sqs_receive`: a received message's retention is checked without working
  out every attribute of its queue.
- :func:`cheaper_sqs_clock`: moto's SQS reads the time as epoch seconds through two
  ``datetime`` conversions, for every message it looks at (a queue's depth looks at each);
  here it reads ``time.time()``.
- :func:`remember_action_names`: moto lists the methods of a service's response class, with
  ``inspect``, on every request; the list never changes.
- :func:`direct_attribute_values`: moto's DynamoDB answers go through a serializer driven by
  the service model, which looks up each of the ten possible members of every attribute
  value of every item; an attribute value already holds its wire form, so it is written out
  directly.
"""

from __future__ import annotations

import base64
import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def apply_all() -> None:
    """Apply every tuning; log the ones that this moto does not allow.

    A tuning that fails in a way its own checks did not foresee (a moto laid out otherwise)
    is logged and skipped: the services are then served with moto's own step.
    """
    tunings: list[Callable[[], bool]] = [
        lighten_sqs_receive,
        cheaper_sqs_clock,
        remember_action_names,
        direct_attribute_values,
    ]
    for tuning in tunings:
        try:
            applied = tuning()
        except Exception:
            logger.exception("%s failed; that step of moto is served unchanged", tuning.__name__)
            continue
        if not applied:
            logger.info(
                "moto is not as %s expects; that step is served unchanged", tuning.__name__
            )


def lighten_sqs_receive() -> bool:
    """Make moto's SQS check a received message's retention without reading the whole queue.

    For every message it hands out, moto asks the queue for its retention period through
    ``get_queue_attributes``, which works out every attribute of the queue three times,
    reading each of its messages each time: most of the CPU time of a receive. This reads
    the one attribute directly, with the same rule (a message older than the queue's
    retention period is not delivered), and falls back to moto's own check for any message
    or queue that is not shaped as expected.
    """
    from moto.sqs.models import Queue, SQSBackend

    name = "is_message_valid_based_on_retention_period"
    original = getattr(SQSBackend, name, None)
    if original is None or "MessageRetentionPeriod" not in getattr(Queue, "BASE_ATTRIBUTES", ()):
        return False
    if getattr(original, "_htcgrid_original", None) is not None:
        return True
    try:
        parameters = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return False
    if parameters != ["self", "queue_name", "message"]:
        return False

    def is_retained(self: SQSBackend, queue_name: str, message: Any) -> bool:
        try:
            queue: Any = self.get_queue(queue_name)
            retention_sec = float(queue.message_retention_period)
            sent_sec = float(message.sent_timestamp) / 1000
        except (AttributeError, TypeError, ValueError):
            return bool(original(self, queue_name, message))
        return retention_sec + sent_sec > time.time()

    is_retained._htcgrid_original = original  # type: ignore[attr-defined]
    setattr(SQSBackend, name, is_retained)
    return True


def cheaper_sqs_clock() -> bool:
    """Give moto's SQS models the epoch time from ``time.time()``.

    moto's ``unix_time()`` subtracts a naive ``datetime`` of the epoch from a naive
    ``datetime`` of now, both made afresh through time-zone conversions; SQS calls it for
    every message it considers (twice per message to tell whether it is visible), so a
    depth query over a queue of a few dozen messages spends most of its time there. The
    answer is the same number of seconds, rounded to the microsecond as moto's is (queues
    send their creation time as text). A call with an explicit ``datetime`` still goes to
    moto's own function.
    """
    import moto.sqs.models as sqs_models

    seconds = getattr(sqs_models, "unix_time", None)
    millis = getattr(sqs_models, "unix_time_millis", None)
    if not callable(seconds) or not callable(millis):
        return False
    if getattr(seconds, "_htcgrid_original", None) is not None:
        return True
    try:
        if list(inspect.signature(seconds).parameters) != ["dt"]:
            return False
        if list(inspect.signature(millis).parameters) != ["dt"]:
            return False
    except (TypeError, ValueError):
        return False

    def unix_time(dt: Any = None) -> float:
        return round(time.time(), 6) if dt is None else float(seconds(dt))

    def unix_time_millis(dt: Any = None) -> float:
        return round(time.time(), 6) * 1000.0 if dt is None else float(millis(dt))

    unix_time._htcgrid_original = seconds  # type: ignore[attr-defined]
    unix_time_millis._htcgrid_original = millis  # type: ignore[attr-defined]
    sqs_models.unix_time = unix_time
    sqs_models.unix_time_millis = unix_time_millis
    return True


def remember_action_names() -> bool:
    """List the methods of each of moto's response classes once, not on every request.

    moto's ``BaseResponse.call_action`` asks for the names of its class's functions (with
    ``inspect.getmembers``) to tell whether the requested action is one of them. Classes
    are not changed while the server runs, so the answer for a class is kept.
    """
    import moto.core.responses as responses

    original = getattr(responses, "method_names_from_class", None)
    if not callable(original):
        return False
    if getattr(original, "_htcgrid_original", None) is not None:
        return True

    @functools.cache
    def names_of(clazz: type) -> frozenset[str]:
        return frozenset(original(clazz))

    def method_names_from_class(clazz: Any) -> Any:
        try:
            return names_of(clazz)
        except TypeError:  # not hashable: ask moto each time
            return original(clazz)

    method_names_from_class._htcgrid_original = original  # type: ignore[attr-defined]
    responses.method_names_from_class = method_names_from_class
    return True


#: The members of DynamoDB's ``AttributeValue``: one of them names an attribute's type.
_STRING_TYPES = {"S", "N"}
_SET_TYPES = {"SS", "NS"}
_BOOLEAN_TYPES = {"NULL", "BOOL"}


def attribute_value_wire(value: Any) -> Any:
    """The JSON form of a DynamoDB attribute value as moto's backend holds it, or ``None``.

    moto holds ``{"S": "text"}``, ``{"N": "12"}``, ``{"B": b"bytes"}``, ``{"M": {name:
    value}}``, ``{"L": [value]}``, sets as lists, and ``{"NULL": True}`` or ``{"BOOL":
    False}``. The answer is what DynamoDB sends: the same, with binary values in base64.
    ``None`` for anything else, which the caller then leaves to moto's own serializer; a map
    with an attribute named ``""`` too, which moto's serializer writes in its own way.
    """
    if not isinstance(value, dict) or len(value) != 1:
        return None
    ((kind, inner),) = value.items()
    if kind in _STRING_TYPES:
        return {kind: inner} if isinstance(inner, str) else None
    if kind in _BOOLEAN_TYPES:
        return {kind: inner} if isinstance(inner, bool) else None
    if kind == "B":
        return {kind: _base64(inner)} if isinstance(inner, bytes | str) else None
    if kind in _SET_TYPES:
        if isinstance(inner, list) and all(isinstance(v, str) for v in inner):
            return {kind: list(inner)}
        return None
    if kind == "BS":
        if isinstance(inner, list) and all(isinstance(v, bytes | str) for v in inner):
            return {kind: [_base64(v) for v in inner]}
        return None
    if kind == "M" and isinstance(inner, dict) and "" not in inner:
        members = {}
        for name, member in inner.items():
            wire = attribute_value_wire(member)
            if wire is None:
                return None
            members[name] = wire
        return {kind: members}
    if kind == "L" and isinstance(inner, list):
        items = [attribute_value_wire(member) for member in inner]
        return None if any(item is None for item in items) else {kind: items}
    return None


def _base64(value: bytes | str) -> str:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii")


def direct_attribute_values() -> bool:
    """Serialize DynamoDB attribute values directly rather than member by member.

    moto lets a service have a serializer of its own (``SERVICE_SPECIFIC_SERIALIZERS``):
    DynamoDB gets moto's JSON serializer with one change, that a structure of the
    ``AttributeValue`` shape is written by :func:`attribute_value_wire`. Everything else,
    the structures around the items included, is moto's.
    """
    try:
        from moto.core import serialize
    except ImportError:
        return False
    registry = getattr(serialize, "SERVICE_SPECIFIC_SERIALIZERS", None)
    json_serializer = getattr(serialize, "SERIALIZERS", {}).get("json")
    if not isinstance(registry, dict) or json_serializer is None:
        return False
    if not hasattr(json_serializer, "_serialize_type_structure"):
        return False
    own = registry.get("dynamodb", {})
    if not isinstance(own, dict):
        return False
    if getattr(own.get("json"), "_htcgrid_direct", False):
        return True
    if "json" in own:
        # moto has a DynamoDB serializer of its own now: leave it alone.
        return False

    class DirectAttributeValueSerializer(json_serializer):  # type: ignore[misc, valid-type]
        _htcgrid_direct = True

        def _serialize_type_structure(
            self, serialized: Any, value: Any, shape: Any, key: str
        ) -> None:
            if key and shape.name == "AttributeValue":
                wire = attribute_value_wire(value)
                if wire is not None:
                    self._default_serialize(serialized, wire, shape, key)
                    return
            super()._serialize_type_structure(serialized, value, shape, key)

    registry["dynamodb"] = {**own, "json": DirectAttributeValueSerializer}
    return True
