"""The wire format: ids, state names, keys and encodings, byte for byte."""

import base64
import hashlib
import json

import pytest

from htcgrid import protocol


def test_session_partition_is_md5_of_the_id_modulo_32():
    session_id = "2b5d3e6a-1c4f-4f6e-9a0b-7d1e2f3a4b5c"
    expected = int(hashlib.md5(session_id.encode()).hexdigest(), 16) % 32

    assert protocol.partition(session_id) == expected
    assert protocol.status_value("finished", session_id) == f"finished{expected}"
    assert protocol.state_of(f"processing{expected}") == "processing"


def test_status_value_refuses_an_unknown_state():
    with pytest.raises(ValueError, match="unknown task state 'done'"):
        protocol.status_value("done", "abc")


def test_task_ids_are_session_underscore_index_in_order():
    assert protocol.task_ids("abc-1", 3) == ["abc-1_0", "abc-1_1", "abc-1_2"]
    assert protocol.session_of("abc-1_2") == "abc-1"
    assert protocol.task_index("abc-1_2") == 2


def test_new_session_ids_are_uuids_without_underscores():
    session_id = protocol.new_session_id()

    assert "_" not in session_id
    assert protocol.check_session_id(session_id) == session_id


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "a_b", "a b", "ab\n", "x" * 65, None, 7])
def test_session_ids_outside_the_safe_alphabet_are_refused(bad):
    with pytest.raises(ValueError, match="invalid session id"):
        protocol.check_session_id(bad)


def test_data_plane_keys():
    assert protocol.input_key("S_0") == "S_0-input"
    assert protocol.output_key("S_0") == "S_0-output"
    assert protocol.error_key("S_0") == "S_0-error"
    assert protocol.payload_key("S") == "S-payload"
    with pytest.raises(ValueError):
        protocol.input_key("../etc/passwd_0")


def test_input_is_standard_base64_of_json():
    task = {"worker_arguments": ["1000", "1", "1"], "x": "??>>"}

    data = protocol.encode_input(task)

    assert data == base64.b64encode(json.dumps(task, separators=(",", ":")).encode())
    assert protocol.decode_input(data) == task


def test_payload_is_url_safe_base64_of_json():
    envelope = protocol.make_envelope("S", ["S_0"], task_timeout_sec=10, retry_count=2)

    data = protocol.encode_payload(envelope)

    assert json.loads(base64.urlsafe_b64decode(data)) == envelope
    assert envelope["scheduler_data"] == {"task_timeout_sec": 10, "retry_count": 2}
    assert envelope["tasks_list"] == {"tasks": ["S_0"]}
    assert set(envelope["stats"]) == set(protocol.STATS_KEYS)
    assert all(set(v) == {"label", "tstmp"} for v in envelope["stats"].values())
    assert "context" not in envelope


def test_output_and_error_are_standard_base64_of_text():
    assert protocol.encode_output(1000) == base64.b64encode(b"1000")
    assert protocol.decode_output(base64.b64encode(b'{"a":1}')) == '{"a":1}'
    assert protocol.decode_error(protocol.encode_error("ValueError: é")) == "ValueError: é"


def test_query_keeps_padding_and_round_trips():
    text = protocol.encode_query({"session_id": "ab"})

    assert text.endswith("=")
    assert protocol.decode_query(text) == {"session_id": "ab"}


@pytest.mark.parametrize("bad", ["%%%", "abc", base64.urlsafe_b64encode(b"not json").decode()])
def test_decode_query_says_what_is_wrong(bad):
    with pytest.raises(ValueError, match="submission_content"):
        protocol.decode_query(bad)


def test_results_answer_has_the_documented_keys():
    answer = protocol.results_answer({"finished": ["S_0"], "failed": ["S_1"]})

    assert answer == {
        "finished": ["S_0"],
        "finished_OUTPUT": [protocol.OUTPUT_PLACEHOLDER],
        "failed": ["S_1"],
        "failed_OUTPUT": [protocol.OUTPUT_PLACEHOLDER],
        "cancelled": [],
        "cancelled_OUTPUT": [],
        "metadata": {"tasks_in_response": 2},
    }
