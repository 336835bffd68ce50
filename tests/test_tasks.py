"""Task lists are checked before anything is uploaded."""

import pytest

from htcgrid.errors import TaskValidationError
from htcgrid.tasks import MAX_TASK_BYTES, MAX_TASKS_PER_SESSION, validate_tasks


def test_a_list_of_dicts_passes_as_copies():
    tasks = [{"worker_arguments": ["1000", "1", "1"]}]

    checked = validate_tasks(tasks)

    assert checked == tasks
    assert checked[0] is not tasks[0]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([], "the task list is empty"),
        ({"worker_arguments": []}, "tasks must be a list of dicts, not dict"),
        ("tasks", "tasks must be a list of dicts, not str"),
        (None, "tasks must be a list of dicts, not NoneType"),
        ([{"a": 1}, ["a", 1]], "task 1 is a list, not a dict"),
        ([{"a": {1, 2}}], "task 0 cannot be sent as JSON"),
        ([{"a": float("nan")}], "task 0 cannot be sent as JSON"),
        ([{"a": "x" * MAX_TASK_BYTES}], "over the 1048576 byte limit"),
    ],
)
def test_bad_task_lists_are_refused_with_a_specific_message(tasks, message):
    with pytest.raises(TaskValidationError, match=message):
        validate_tasks(tasks)


def test_too_many_tasks_for_one_session():
    tasks = [{}] * (MAX_TASKS_PER_SESSION + 1)

    with pytest.raises(TaskValidationError, match="split the list into several sessions"):
        validate_tasks(tasks)
