"""Class and group tasks drawn on the training device (issue 21, item 2), the keyed
subsets they are drawn with, and the samplers whose values are checked when built."""

import numpy as np
import pytest
import torch

from skreptile import (
    ClassTaskSampler,
    GroupTaskSampler,
    ReptileClassifier,
    ReptileRegressor,
    SineTaskSampler,
)
from skreptile._engine.keyed_random import KeyedRandom
from skreptile.tasks import TaskSampler
from skreptile.tasks._base import TaskError, draws_on_device, finite_by_construction

CPU = torch.device("cpu")


def test_keyed_subsets_are_distinct_in_range_uniform_and_keyed_by_task():
    random, ids = KeyedRandom(5), torch.arange(30000)
    sizes = torch.tensor([5, 9, 1000])[ids % 3]
    subsets = random.subsets(0, ids, sizes, 3)
    assert subsets.shape == (30000, 3)
    assert (subsets >= 0).all() and (subsets < sizes[:, None]).all()
    ordered = subsets.sort(dim=1).values
    assert (ordered[:, 1:] > ordered[:, :-1]).all()  # distinct
    # Of 5 elements, each of the 10 subsets of 3 about equally often.
    fives = [tuple(row) for row in ordered[sizes == 5].tolist()]
    counts = np.unique(fives, axis=0, return_counts=True)[1]
    assert len(counts) == 10 and counts.min() > 0.85 * counts.mean()
    # Of 1000, every element about equally often (no bias to the top of the range).
    thousands = subsets[sizes == 1000].reshape(-1)
    assert abs(float(thousands.float().mean()) - 499.5) < 10
    # A task's subset does not depend on the others drawn with it; several per task.
    assert torch.equal(random.subsets(0, ids[7::11], sizes[7::11], 3), subsets[7::11])
    many = random.subsets(1, ids[:4], torch.tensor([[3, 10], [5, 7], [4, 4], [100, 3]]), 3)
    assert many.shape == (4, 2, 3) and (many.sort(-1).values[3, 1] == torch.arange(3)).all()


def _digits_like(n_classes=12, per_class=6):
    """Images whose every pixel says the class and the example: class * 100 + example."""
    values = np.arange(n_classes)[:, None] * 100.0 + np.arange(per_class)[None, :]
    X = np.broadcast_to(values.reshape(-1, 1, 1, 1), (n_classes * per_class, 1, 3, 3)).copy()
    X[:, 0, 0, 0] += 0.5  # a corner marks the orientation
    return X.astype(np.float64), np.repeat(np.arange(n_classes), per_class)


def test_class_tasks_drawn_on_the_device_have_the_host_tasks_distribution():
    X, y = _digits_like()
    sampler = ClassTaskSampler(X, y, n_way=4, k_shot=2, augment="rot90")
    images, labels = sampler.draw_tasks(KeyedRandom(0), torch.arange(4000), CPU)
    assert images.shape == (4000, 8, 1, 3, 3) and images.dtype == torch.float32
    assert labels.shape == (4000, 8) and labels.dtype == torch.int64
    values = images[:, :, 0, 1, 1].numpy()  # the centre: class * 100 + example
    classes, examples = values // 100, values % 100
    corner = images[:, :, 0].reshape(4000, 8, 9).argmax(-1).numpy()  # rotated corner
    for t in range(200):
        for label in range(4):
            mine = labels[t].numpy() == label
            # Each label is k_shot distinct examples of one class in one orientation.
            assert mine.sum() == 2 and len(set(classes[t, mine])) == 1
            assert len(set(examples[t, mine])) == 2 and len(set(corner[t, mine])) == 1
        # n_way distinct (class, orientation) pairs per task.
        pairs = {(classes[t, i], corner[t, i]) for i in range(8)}
        assert len(pairs) == 4
    # Every class and every rotation about equally often.
    class_counts = np.bincount(classes.reshape(-1).astype(int), minlength=12)
    assert class_counts.min() > 0.85 * class_counts.mean()
    turn_counts = np.unique(corner, return_counts=True)[1]
    assert len(turn_counts) == 4 and turn_counts.min() > 0.85 * turn_counts.mean()
    # Flat X comes back flat.
    flat = ClassTaskSampler(X.reshape(len(X), -1), y, n_way=3, k_shot=1)
    assert flat.draw_tasks(KeyedRandom(0), torch.arange(5), CPU)[0].shape == (5, 3, 9)


def test_class_samplers_with_callable_augmentations_draw_on_the_host():
    X, y = _digits_like()
    flip = [lambda a: a, lambda a: a[..., ::-1].copy()]
    sampler = ClassTaskSampler(X, y, n_way=3, augment=flip)
    assert not draws_on_device(sampler, torch.device("cuda"))
    assert draws_on_device(ClassTaskSampler(X, y, n_way=3), torch.device("cuda"))
    with pytest.raises(ValueError, match="draw_on='device' is not possible here: augment"):
        ClassTaskSampler(X, y, n_way=3, augment=flip, draw_on="device")
    with pytest.raises(ValueError, match="draw_on must be one of"):
        ClassTaskSampler(X, y, n_way=3, draw_on="gpu")


def test_group_tasks_drawn_on_the_device_are_distinct_rows_of_one_group():
    sizes = [3, 8, 40, 400]
    groups = np.repeat(np.arange(4), sizes)
    X = np.stack([groups, np.arange(len(groups))], axis=1).astype(float)  # group, row
    y = np.stack([X[:, 1], -X[:, 1]], axis=1)
    sampler = GroupTaskSampler(X, y, groups, n_points=3)
    Xt, yt = sampler.draw_tasks(KeyedRandom(1), torch.arange(8000), CPU)
    assert Xt.shape == (8000, 3, 2) and yt.shape == (8000, 3, 2) and Xt.dtype == torch.float32
    group, row = Xt[..., 0].numpy(), Xt[..., 1].numpy()
    assert (group == group[:, :1]).all()  # one group per task
    assert (np.diff(np.sort(row, axis=1), axis=1) > 0).all()  # distinct rows
    np.testing.assert_array_equal(yt[..., 0].numpy(), row)  # each row's own targets
    counts = np.bincount(group[:, 0].astype(int), minlength=4)
    assert counts.min() > 0.9 * counts.mean()  # groups uniformly, whatever their size
    big = row[group[:, 0] == 3] - sum(sizes[:3])
    assert big.min() >= 0 and big.max() < 400 and abs(big.mean() - 199.5) < 12
    # Groups of one size without n_points: whole groups.
    equal = GroupTaskSampler(X[:16], y[:16, 0], np.repeat([0, 1], 8))
    whole, _ = equal.draw_tasks(KeyedRandom(1), torch.arange(6), CPU)
    assert sorted(whole[0, :, 1].tolist()) in (list(range(8)), list(range(8, 16)))


def test_group_samplers_of_unequal_tasks_draw_on_the_host():
    groups = np.repeat([0, 1, 2], [4, 5, 6])
    X, y = np.arange(30.0).reshape(15, 2), np.arange(15.0)
    assert not draws_on_device(GroupTaskSampler(X, y, groups), torch.device("cuda"))
    assert draws_on_device(GroupTaskSampler(X, y, groups, n_points=4), torch.device("cuda"))
    with pytest.raises(ValueError, match="groups differ in size and n_points is None"):
        GroupTaskSampler(X, y, groups, draw_on="device")


def test_classifier_meta_trains_on_device_drawn_class_tasks():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train = digits.target < 5
    params = dict(n_meta_iter=150, meta_batch_size=8, device="cpu", random_state=0)
    params.update(monitor_interval=10)

    def sampler(draw_on):
        return ClassTaskSampler(
            digits.data[train] / 16, digits.target[train], n_way=3, k_shot=5, draw_on=draw_on
        )

    device = ReptileClassifier(**params).meta_fit(sampler("device"))
    again = ReptileClassifier(**params).meta_fit(sampler("device"))
    np.testing.assert_array_equal(device.meta_params_, again.meta_params_)
    host = ReptileClassifier(**params).meta_fit(sampler("host"))
    default = ReptileClassifier(**params).meta_fit(sampler("auto"))
    np.testing.assert_array_equal(default.meta_params_, host.meta_params_)  # CPU: the host
    assert not np.array_equal(device.meta_params_, host.meta_params_)
    # Both learned alike: the loss after the inner steps fell from about 0.7 to about 0.02.
    ends = []
    for model in (device, host):
        loss = np.asarray(model.history_["adapted_train_loss"])
        assert loss[-3:].mean() < 0.1 * loss[:3].mean()
        ends.append(loss[-3:].mean())
    assert max(ends) < 1.5 * min(ends)


def _grouped_table(n_groups=40, per_group=12, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    X = rng.normal(size=(len(groups), 2))
    slope = rng.normal(size=n_groups)[groups]
    return X, slope * X[:, 0] + np.sin(X[:, 1]) + 0.1 * rng.normal(size=len(groups)), groups


def test_regressor_meta_trains_on_device_drawn_group_tasks():
    X, y, groups = _grouped_table()
    params = dict(n_meta_iter=200, meta_batch_size=8, device="cpu", random_state=0)

    def fitted(draw_on):
        sampler = GroupTaskSampler(X, y, groups, n_points=8, draw_on=draw_on)
        return ReptileRegressor(**params).meta_fit(sampler)

    device = fitted("device")
    np.testing.assert_array_equal(device.meta_params_, fitted("device").meta_params_)
    host = fitted("host")
    np.testing.assert_array_equal(fitted("auto").meta_params_, host.meta_params_)
    assert not np.array_equal(device.meta_params_, host.meta_params_)
    # The same held-out groups score both (validation_fraction holds them out): alike.
    d, h = device.history_["validation_loss"][-1], host.history_["validation_loss"][-1]
    assert d < 1.5 * h and h < 1.5 * d


def test_sine_sampler_parameters_are_checked_when_built():
    for bad in (
        dict(noise_std=float("nan")),
        dict(noise_std=-1.0),
        dict(noise_std=float("inf")),
        dict(amplitude_range=(1.0, float("nan"))),
        dict(phase_range=(3.0, 1.0)),
        dict(x_range=(0.0,)),
        dict(n_points=1),
        dict(n_points=2.5),
        dict(draw_on="gpu"),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SineTaskSampler(**bad)


def test_only_skreptiles_own_samplers_skip_the_finiteness_scan():
    X, y = _digits_like()
    groups = np.repeat(np.arange(4), 18)
    assert finite_by_construction(SineTaskSampler())
    assert finite_by_construction(GroupTaskSampler(X.reshape(len(X), -1), y, groups))
    assert finite_by_construction(ClassTaskSampler(X, y, n_way=3))
    assert not finite_by_construction(ClassTaskSampler(X, y, n_way=3, augment=[lambda a: a]))

    class NaNSine(SineTaskSampler):  # a subclass may return anything
        def sample_batch(self, rng, n_tasks):
            X, y = super().sample_batch(rng, n_tasks)
            return X, np.where(np.arange(y.shape[1]) == 3, np.nan, y)

    class Mine(TaskSampler):
        def sample_batch(self, rng, n_tasks):
            return SineTaskSampler().sample_batch(rng, n_tasks)

    assert not finite_by_construction(NaNSine()) and not finite_by_construction(Mine())
    with pytest.raises(TaskError, match="y contains NaN"):
        ReptileRegressor(n_meta_iter=5, device="cpu", random_state=0).meta_fit(NaNSine())


def test_image_tasks_drawn_on_the_device_reach_the_classifier_flat_with_their_shape():
    X, y = _digits_like()
    params = dict(n_meta_iter=10, meta_batch_size=4, device="cpu", random_state=0)
    fitted = {
        draw_on: ReptileClassifier(**params).meta_fit(
            ClassTaskSampler(X, y, n_way=3, k_shot=2, augment="rot90", draw_on=draw_on)
        )
        for draw_on in ("device", "host")
    }
    assert fitted["device"].input_shape_ == fitted["host"].input_shape_ == (1, 3, 3)
    assert fitted["device"].meta_params_.shape == fitted["host"].meta_params_.shape
    model = fitted["device"].fit(X[:12], y[:12])  # two classes of images, adapted
    assert set(model.predict(X[:12])) <= {0, 1}
