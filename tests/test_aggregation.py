import numpy as np
import pytest
import torch

from sfdd_flwr.aggregators.fedavg import fedavg, weight_problem, weighted_mean
from sfdd_flwr.methods.base import state_problem

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


def test_fedavg_averages_every_array_of_the_states():
    states = [{"a": torch.full((2,), 1.0), "b": torch.zeros(3)}, {"a": torch.full((2,), 4.0), "b": torch.ones(3)}]
    combined = fedavg(states, [3, 1])
    assert torch.allclose(combined["a"], torch.full((2,), 1.75)) and torch.allclose(combined["b"], torch.full((3,), 0.25))
    assert combined["a"].dtype == torch.float32


SENT = {"images": torch.zeros(SHAPE)}


def test_a_good_update_has_no_problem():
    assert state_problem(SENT, {"images": np.zeros(SHAPE, np.float32)}) is None
    assert weight_problem(120) is None


@pytest.mark.parametrize(
    ("returned", "fragment"),
    [
        ({}, "lacks array(s) 'images'"),
        ({"images": np.zeros(SHAPE, np.float32), "extra": np.zeros(1, np.float32)}, "unexpected array(s) 'extra'"),
        ({"images": np.zeros((10, 1, 28, 27), np.float32)}, "shape"),
        ({"images": np.zeros(SHAPE, np.int64)}, "dtype"),
        ({"images": np.full(SHAPE, np.nan, np.float32)}, "NaN/Inf"),
        ({"images": np.where(np.arange(7840).reshape(SHAPE) == 5, np.inf, 0).astype(np.float32)}, "1 NaN/Inf"),
    ],
)
def test_bad_states_are_named(returned, fragment):
    problem = state_problem(SENT, returned)
    assert problem is not None and fragment in problem


@pytest.mark.parametrize(
    ("num_examples", "fragment"),
    [(None, "num-examples"), (0, "positive"), (float("nan"), "positive"), (True, "num-examples")],
)
def test_bad_weights_are_named(num_examples, fragment):
    problem = weight_problem(num_examples)
    assert problem is not None and fragment in problem
