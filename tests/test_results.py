"""A session's records as a DataFrame: one row per task, in submission order."""

import math

import pandas as pd

from htcgrid.results import COLUMNS, TaskRecord, decode_output, to_dataframe


def test_columns_rows_and_values():
    records = [
        TaskRecord(
            "S_0",
            "finished",
            output="1000",
            retries=0,
            agent="agent-1",
            submitted_ms=1_000,
            started_ms=2_000,
            finished_ms=3_500,
        ),
        TaskRecord(
            "S_1",
            "failed",
            error="ValueError: x",
            retries=2,
            submitted_ms=1_000,
            finished_ms=9_000,
        ),
        TaskRecord("S_2"),
    ]
    inputs = [
        {"worker_arguments": ["1000", "1", "1"], "opt": {"rate": 0.1}},
        {"worker_arguments": ["x"], "opt": {"rate": 0.2}},
        {"worker_arguments": ["5"], "opt": {"rate": 0.3}},
    ]

    frame = to_dataframe(records, inputs)

    assert list(frame.columns) == [*COLUMNS, "input.worker_arguments", "input.opt.rate"]
    assert list(frame.index) == [0, 1, 2]
    assert list(frame["task_id"]) == ["S_0", "S_1", "S_2"]
    assert list(frame["status"]) == ["finished", "failed", "pending"]
    assert frame.loc[0, "output"] == 1000
    assert frame.loc[1, "output"] is None
    assert list(frame["error"]) == ["", "ValueError: x", ""]
    assert frame.loc[0, "duration_s"] == 1.5
    assert frame.loc[1, "duration_s"] == 8.0
    assert math.isnan(frame.loc[2, "duration_s"])
    assert frame.loc[0, "finished_at"] == pd.Timestamp(3_500, unit="ms", tz="UTC")
    assert pd.isna(frame.loc[2, "finished_at"])
    assert frame.loc[1, "retries"] == 2 and pd.isna(frame.loc[2, "retries"])
    assert frame.loc[0, "input.worker_arguments"] == ["1000", "1", "1"]
    assert list(frame["input.opt.rate"]) == [0.1, 0.2, 0.3]


def test_outputs_that_are_not_json_stay_text():
    assert decode_output('{"a": [1, 2]}') == {"a": [1, 2]}
    assert decode_output("plain text") == "plain text"
    assert decode_output(None) is None


def test_without_inputs_there_are_no_input_columns():
    frame = to_dataframe([TaskRecord("S_0")])

    assert list(frame.columns) == list(COLUMNS)
