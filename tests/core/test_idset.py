"""The writer's set of counted task ids behaves like a set, in bulk as one by one."""

from hypothesis import given
from hypothesis import strategies as st

from pipeloom._idset import IdSet

IDS = st.one_of(st.integers(0, 300), st.integers(-5, -1), st.integers(2**27 - 3, 2**27 + 3))


@given(st.lists(st.tuples(st.booleans(), st.lists(IDS, max_size=20)), max_size=12))
def test_bulk_operations_match_a_plain_set(steps: list[tuple[bool, list[int]]]) -> None:
    ids = IdSet()
    model: set[int] = set()
    for bulk, batch in steps:
        pairs = [(task_id, f"status of {task_id}") for task_id in batch]
        expected, seen = [], set()
        for pair in pairs:
            if pair[0] not in model and pair[0] not in seen:
                expected.append(pair)
            seen.add(pair[0])
        assert ids.fresh(pairs) == expected
        if len(set(batch)) == len(batch):
            assert ids.fresh(pairs, unique=True) == expected
        if bulk:
            ids.add_all(batch)
        else:
            for task_id in batch:
                assert ids.add(task_id) == (task_id not in model)
                model.add(task_id)
        model.update(batch)
        assert all(task_id in ids for task_id in model)
        assert not any(task_id in ids for task_id in range(-5, 301) if task_id not in model)
