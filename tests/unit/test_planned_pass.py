"""The planned training pass (data.planned_pass): positions -> rows, decided by the seed alone."""
import numpy as np

from clipsep_ray.data.shards import plan_rows


def test_each_run_of_set_size_positions_visits_every_row_once():
    rows, seed = 7, 3
    plan = plan_rows(np.arange(5 * rows), rows, seed)
    for p in range(5):
        assert sorted(plan[p * rows:(p + 1) * rows]) == list(range(rows))
    # epochs are shuffled differently, not the same order repeated
    assert len({tuple(plan[p * rows:(p + 1) * rows]) for p in range(5)}) > 1


def test_the_plan_depends_on_the_seed_and_not_on_how_positions_are_cut_into_blocks():
    rows = 11
    whole = plan_rows(np.arange(40), rows, seed=0)
    pieces = np.concatenate([plan_rows(np.arange(a, b), rows, seed=0) for a, b in ((0, 3), (3, 25), (25, 40))])
    np.testing.assert_array_equal(whole, pieces)
    np.testing.assert_array_equal(whole, plan_rows(np.arange(40), rows, seed=0))
    assert not np.array_equal(whole, plan_rows(np.arange(40), rows, seed=1))
