"""The network's weight beside the pooled base model, chosen on held-out groups."""

import numpy as np

from skreptile._estimators.base_choice import (
    WEIGHTS,
    averaged,
    choose_weight,
    clearly_lower,
)


def splits_of(truths, rng):
    """One held-out split per group: support rows drawn at random, query targets ``truths``."""
    return [(rng.normal(size=(4, 2)), rng.normal(size=4), np.zeros((len(t), 2)), t) for t in truths]


def test_two_models_with_independent_errors_of_equal_size_are_averaged_half_and_half():
    rng = np.random.default_rng(0)
    truths = [rng.normal(size=30) for _ in range(40)]
    network = [t + rng.normal(size=30) for t in truths]
    statistician = [t + rng.normal(size=30) for t in truths]
    weight, errors, by_weight = choose_weight(
        network, statistician, splits_of(truths, rng), nested=False
    )
    # Independent errors of variance 1: the average's is (1 - w)^2 + w^2, least at w = 1/2.
    assert weight == 0.5
    assert set(by_weight) == set(WEIGHTS)
    np.testing.assert_allclose(errors.mean(), 0.5, atol=0.05)
    np.testing.assert_allclose(by_weight[0.0].mean(), 1.0, atol=0.1)


def test_a_nested_correction_whose_gain_is_within_the_noise_is_left_out():
    rng = np.random.default_rng(1)
    truths = [np.zeros(5) for _ in range(3)]
    statistician = [np.ones(5)] * 3  # error 1 on every group
    # The network is exact on one group and a little worse on the two others: on average the
    # half-and-half mix (errors 0.25, 1.21, 1.21) beats weight 0, but by less than two
    # standard errors of the per-group gains (0.75, -0.21, -0.21).
    network = [np.zeros(5), np.full(5, 1.2), np.full(5, 1.2)]
    splits = splits_of(truths, rng)
    weight, errors, by_weight = choose_weight(network, statistician, splits, nested=True)
    assert min(WEIGHTS, key=lambda w: by_weight[w].mean()) == 0.5
    assert not clearly_lower(by_weight[0.5], by_weight[0.0], splits)
    assert weight == 0.0
    np.testing.assert_array_equal(errors, by_weight[0.0])
    # A network apart from the mixed model (not nested) gets the best weight as it is.
    assert choose_weight(network, statistician, splits, nested=False)[0] == 0.5
    # The same gain on forty groups of each kind is clear.
    many = splits_of(truths * 40, rng)
    assert choose_weight(network * 40, statistician * 40, many, nested=True)[0] == 0.5


def test_averaged_is_the_statistician_plus_the_weight_times_the_difference():
    network, statistician = [np.array([3.0, 5.0])], [np.array([1.0, 1.0])]
    np.testing.assert_allclose(averaged(network, statistician, 0.25)[0], [1.5, 2.0])
    np.testing.assert_allclose(averaged(network, statistician, 0.0)[0], statistician[0])
    np.testing.assert_allclose(averaged(network, statistician, 1.0)[0], network[0])
