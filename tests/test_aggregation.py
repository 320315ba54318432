import numpy as np
import pytest

from sfdd_flwr.aggregation import update_problem, weighted_mean

SHAPE = (10, 1, 28, 28)


def test_weighted_mean_of_known_inputs():
    a = np.full(SHAPE, 1.0, dtype=np.float32)
    b = np.full(SHAPE, 4.0, dtype=np.float32)
    result = weighted_mean([a, b], [3, 1])
    assert result.dtype == np.float32
    assert np.allclose(result, (3 * 1.0 + 1 * 4.0) / 4)


def test_equal_weights_give_the_plain_mean_and_order_does_not_matter():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(5)]
    assert np.allclose(weighted_mean(arrays, [7] * 5), np.mean(arrays, axis=0), atol=1e-6)
    assert np.allclose(weighted_mean(arrays, [1, 2, 3, 4, 5]), weighted_mean(arrays[::-1], [5, 4, 3, 2, 1]))


def test_weighted_mean_rejects_bad_input():
    with pytest.raises(ValueError):
        weighted_mean([], [])
    with pytest.raises(ValueError):
        weighted_mean([np.zeros(3)], [1, 2])
    with pytest.raises(ValueError):
        weighted_mean([np.zeros(3)], [0])


def test_a_good_update_has_no_problem():
    assert update_problem(np.zeros(SHAPE, np.float32), SHAPE, 120) is None


@pytest.mark.parametrize(
    ("images", "num_examples", "fragment"),
    [
        (None, 10, "no synthetic images"),
        (np.zeros((10, 1, 28, 27), np.float32), 10, "shape"),
        (np.zeros(SHAPE, np.int64), 10, "dtype"),
        (np.full(SHAPE, np.nan, np.float32), 10, "NaN/Inf"),
        (np.where(np.arange(7840).reshape(SHAPE) == 5, np.inf, 0).astype(np.float32), 10, "1 NaN/Inf"),
        (np.zeros(SHAPE, np.float32), None, "num-examples"),
        (np.zeros(SHAPE, np.float32), 0, "positive"),
        (np.zeros(SHAPE, np.float32), float("nan"), "positive"),
        (np.zeros(SHAPE, np.float32), True, "num-examples"),
    ],
)
def test_bad_updates_are_named(images, num_examples, fragment):
    problem = update_problem(images, SHAPE, num_examples)
    assert problem is not None and fragment in problem
