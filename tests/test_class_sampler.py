"""ClassTaskSampler: N-way K-shot tasks with disjoint classes and random label orders."""

import numpy as np
import pytest

from skreptile import ClassTaskSampler


def _identifiable(n_classes=6, per_class=4):
    """Flat data whose two features are the example's class and its index."""
    y = np.repeat(np.arange(n_classes) * 10 + 3, per_class)  # labels 3, 13, 23, ...
    X = np.column_stack([y, np.arange(len(y))]).astype(float)
    return X, y


def test_tasks_are_n_way_k_shot_with_distinct_classes_and_examples():
    X, y = _identifiable()
    sampler = ClassTaskSampler(X, y, n_way=3, k_shot=2)
    Xt, yt = sampler.sample_batch(np.random.default_rng(0), 200)
    assert Xt.shape == (200, 6, 2) and yt.shape == (200, 6)
    for X_task, y_task in zip(Xt, yt):
        # Every point's label is the same for all points of its original class ...
        original = X_task[:, 0]
        assert len(np.unique(original)) == 3
        for label in range(3):
            assert len(np.unique(original[y_task == label])) == 1
            assert (y_task == label).sum() == 2
        # ... and no example is drawn twice.
        assert len(np.unique(X_task[:, 1])) == 6


def test_labels_are_assigned_to_classes_in_a_random_order():
    X, y = _identifiable(n_classes=3)
    sampler = ClassTaskSampler(X, y, n_way=3, k_shot=1)
    Xt, yt = sampler.sample_batch(np.random.default_rng(0), 300)
    # Which label does class 3 get?  Each of the three, about equally often.
    labels_of_first_class = yt[Xt[:, :, 0] == 3]
    counts = np.bincount(labels_of_first_class, minlength=3)
    assert counts.min() > 60, counts


def test_rotations_make_new_classes_of_rotated_images():
    rng = np.random.default_rng(0)
    # Two classes of asymmetric 4x4 images, three noisy copies each.
    base = rng.random((2, 1, 4, 4))
    X = np.repeat(base, 3, axis=0) + 0.01 * rng.random((6, 1, 4, 4))
    y = np.repeat([0, 1], 3)
    sampler = ClassTaskSampler(X, y, n_way=8, k_shot=3, augment="rot90")
    assert sampler.n_task_classes_ == 8
    Xt, yt = sampler.sample_batch(np.random.default_rng(1), 5)
    assert Xt.shape == (5, 24, 1, 4, 4)
    for X_task, y_task in zip(Xt, yt):
        found = set()
        for label in range(8):
            image = X_task[y_task == label][0, 0]
            matches = [
                (c, k)
                for c in range(2)
                for k in range(4)
                if np.allclose(np.rot90(base[c, 0], k), image, atol=0.02)
            ]
            assert len(matches) == 1
            found.add(matches[0])
        assert len(found) == 8  # all (class, rotation) pairs, each once


def test_flat_images_with_image_shape_come_back_flat_and_rotated():
    X = np.arange(2 * 9, dtype=float).reshape(2, 9).repeat(2, axis=0)
    y = [0, 0, 1, 1]
    sampler = ClassTaskSampler(X, y, n_way=8, k_shot=1, augment="rot90", image_shape=(3, 3))
    Xt, _ = sampler.sample_batch(np.random.default_rng(0), 1)
    assert Xt.shape == (1, 8, 9)
    expected = {tuple(np.rot90(X[i].reshape(3, 3), k).ravel()) for i in (0, 2) for k in range(4)}
    assert {tuple(row) for row in Xt[0]} == expected


def test_custom_augmentations():
    X, y = _identifiable(n_classes=2)
    sampler = ClassTaskSampler(X, y, n_way=4, k_shot=1, augment=[lambda a: a, lambda a: -a])
    Xt, _ = sampler.sample_batch(np.random.default_rng(0), 1)
    assert sorted(np.sign(Xt[0, :, 0])) == [-1, -1, 1, 1]


def test_episodes_share_the_label_map_and_never_reuse_an_example():
    X, y = _identifiable(n_classes=5, per_class=6)
    sampler = ClassTaskSampler(X, y, n_way=4, k_shot=2)
    Xs, ys, Xq, yq = sampler.sample_episodes(np.random.default_rng(0), 50, n_query=3)
    assert Xs.shape == (50, 8, 2) and Xq.shape == (50, 12, 2)
    for e in range(50):
        assert not set(Xs[e, :, 1]) & set(Xq[e, :, 1])
        support_map = dict(zip(Xs[e, :, 0], ys[e]))
        query_map = dict(zip(Xq[e, :, 0], yq[e]))
        assert support_map == query_map


def test_sampler_is_deterministic_given_the_generator_and_one_task_per_call():
    X, y = _identifiable()
    sampler = ClassTaskSampler(X, y, n_way=2, k_shot=2)
    a = sampler.sample_batch(np.random.default_rng(3), 4)
    b = sampler.sample_batch(np.random.default_rng(3), 4)
    np.testing.assert_array_equal(a[0], b[0])
    X_task, y_task = sampler(np.random.default_rng(0))
    assert X_task.shape == (4, 2) and y_task.shape == (4,)
    assert "6 classes" in repr(sampler)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_way=7), "n_way=7 classes per task, but there are only 6"),
        (dict(k_shot=5), "has 4 example\\(s\\), fewer than the 5"),
        (dict(augment="rot90"), "needs images"),
        (dict(augment="flip"), "augment must be"),
        (dict(image_shape=(3, 3)), "image_shape"),
        (dict(n_way=0), "positive"),
    ],
)
def test_bad_sampler_arguments(kwargs, message):
    X, y = _identifiable()
    with pytest.raises(ValueError, match=message):
        ClassTaskSampler(X, y, **kwargs)


def test_episodes_need_enough_examples_per_class():
    X, y = _identifiable(per_class=2)
    sampler = ClassTaskSampler(X, y, n_way=2, k_shot=1)
    with pytest.raises(ValueError, match="k_shot \\+ n_query"):
        sampler.sample_episodes(np.random.default_rng(0), 1, n_query=2)
