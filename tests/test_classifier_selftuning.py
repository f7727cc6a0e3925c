"""The classifier's self-tuning (issue 22, item 1): held-out classes or examples, early
stopping, 'auto' adaptation chosen per number of shots."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone

from skreptile import ClassTaskSampler, ReptileClassifier
from skreptile._training.selftune import _split_by_class
from skreptile.tasks._class_split import hold_out_classes

SMALL = dict(hidden_layer_sizes=(16,), n_meta_iter=60, device="cpu", random_state=0)


def labelled(n_classes=12, per_class=8, n_features=6, seed=0):
    """Examples whose first feature says their class and second their index in it."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    X = rng.normal(size=(len(y), n_features))
    X[:, 0], X[:, 1] = y, np.tile(np.arange(per_class), n_classes)
    return X, y


def _classes_of(episodes):
    return {int(c) for Xs, ys, Xq, yq in episodes for c in np.concatenate([Xs[:, 0], Xq[:, 0]])}


def test_whole_classes_are_held_out_when_enough_stay_for_n_way_tasks():
    X, y = labelled()
    sampler = ClassTaskSampler(X, y, n_way=3, k_shot=2)
    rng = np.random.default_rng
    train, by_shots = hold_out_classes(sampler, 0.2, (1, 5), rng(0), rng(1), 16)
    held = set(range(12)) - set(train.classes_.tolist())
    assert len(held) == 2 and len(train.classes_) == 10  # 20% of 12 classes
    for shots, episodes in by_shots.items():
        assert len(episodes) == 16 and _classes_of(episodes) <= held
        for Xs, ys, Xq, yq in episodes:
            # k support examples of each class, distinct from the query examples.
            assert np.bincount(np.unique(ys, return_inverse=True)[1]).tolist() == [shots] * 2
            assert set(np.unique(yq)) == set(np.unique(ys))
            support = {tuple(r[:2]) for r in Xs}
            assert not support & {tuple(r[:2]) for r in Xq}
    # Variants of a held class are held with it: rot90 images.
    images = np.random.default_rng(0).random((96, 1, 3, 3))
    rot = ClassTaskSampler(images, y, n_way=5, augment="rot90")
    train, _ = hold_out_classes(rot, 0.2, (1,), rng(0), rng(1), 4)
    assert len(train.classes_) == 10 and train.n_task_classes_ == 40


def test_examples_are_held_out_when_too_few_classes_stay():
    X, y = labelled(n_classes=5, per_class=20)
    sampler = ClassTaskSampler(X, y, n_way=5, k_shot=1)
    rng = np.random.default_rng
    train, by_shots = hold_out_classes(sampler, 0.2, (1, 5), rng(0), rng(1), 8)
    assert len(train.classes_) == 5 and len(train.X) == 80  # 4 of every 20 examples held
    kept = {tuple(r[:2]) for r in train.X}
    for episodes in by_shots.values():
        for Xs, ys, Xq, _ in episodes:
            seen = {tuple(r[:2]) for r in np.concatenate([Xs, Xq])}
            assert not seen & kept and len(np.unique(ys)) == 5
    # 5 shots need 6 held examples of a class: only 4 are, so only 1-shot episodes.
    assert sorted(by_shots) == [1]
    # Nothing can be held out where meta-training would lack examples.
    few = ClassTaskSampler(*labelled(n_classes=5, per_class=3), n_way=5, k_shot=2)
    assert hold_out_classes(few, 0.2, (1,), rng(0), rng(1), 8) is None


def test_fresh_tasks_are_split_by_class_with_every_query_class_in_the_support():
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    X = np.arange(len(y), dtype=float)[:, None]
    ((Xs, ys, Xq, yq),) = _split_by_class([(X, y)], 2, rng)
    assert np.bincount(ys).tolist() == [2, 1, 2, 1]  # a class of 2 keeps one to query
    assert set(yq) <= set(ys) and len(Xs) + len(Xq) == len(y)
    assert not set(Xs[:, 0]) & set(Xq[:, 0])


def test_defaults_hold_out_stop_early_and_choose_adaptation_per_number_of_shots():
    X, y = labelled(n_classes=12, per_class=12)
    model = ReptileClassifier(**dict(SMALL, n_meta_iter=200, monitor_interval=20))
    model.meta_fit(ClassTaskSampler(X, y, n_way=3, k_shot=5))
    assert "validation_loss" in model.history_ and np.isfinite(model.best_validation_loss_)
    rows = model.adaptation_by_support_
    assert rows[:, 0].tolist() == [1, 5]
    chosen = {int(shots): (int(steps), float(lr)) for shots, steps, lr in rows}
    assert (model.adapt_steps_, model.adapt_lr_) == chosen[1]  # the monitored number of shots
    # fit uses the choice of the nearest number of shots per class, whatever the rows.
    model.adaptation_by_support_ = np.array([[1, 0, 0.05], [5, 16, 0.05]])
    Xq = X[::7]
    for shots, steps in ((1, 0), (2, 0), (4, 16), (6, 16)):
        rows_ = np.concatenate([np.flatnonzero(y == c)[:shots] for c in (0, 1, 2)])
        explicit = clone(model).set_params(adapt_steps=steps, adapt_lr=0.05)
        explicit.__dict__.update({k: v for k, v in vars(model).items() if k.endswith("_")})
        expected = explicit.fit(X[rows_], y[rows_]).predict_proba(Xq)
        got = model.fit(X[rows_], y[rows_]).predict_proba(Xq)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.adaptation_by_support_, model.adaptation_by_support_)


def test_selftuning_parameters_go_through_clone_and_explicit_values_win():
    X, y = labelled()
    params = dict(validation_fraction=0.3, n_support=2, tol=0.01, early_stopping=False)
    model = ReptileClassifier(**SMALL, **params)
    assert {k: clone(model).get_params()[k] for k in params} == params
    model.set_params(adapt_steps=7, adapt_lr=0.02).meta_fit(ClassTaskSampler(X, y, n_way=3))
    assert (model.adapt_steps_, model.adapt_lr_) == (7, 0.02)
    assert not hasattr(model, "adaptation_by_support_")
    with pytest.raises(ValueError, match="validation_fraction"):
        ReptileClassifier(validation_fraction=1.5).meta_fit(ClassTaskSampler(X, y, n_way=3))


def test_checkpoint_and_warm_start_resume_the_self_tuned_run(tmp_path):
    X, y = labelled(n_classes=12, per_class=12)
    params = dict(SMALL, n_meta_iter=40, monitor_interval=10, meta_lr_schedule="constant")
    params.update(early_stopping=False)  # a warm start continues one run, without stopping
    whole = ReptileClassifier(**params).meta_fit(ClassTaskSampler(X, y, n_way=3))
    warm = ReptileClassifier(**dict(params, n_meta_iter=20, warm_start=True))
    warm.meta_fit(ClassTaskSampler(X, y, n_way=3))
    warm.set_params(n_meta_iter=40).meta_fit(ClassTaskSampler(X, y, n_way=3))
    np.testing.assert_allclose(warm.meta_params_, whole.meta_params_, atol=1e-6)
    assert (warm.adapt_steps_, warm.adapt_lr_) == (whole.adapt_steps_, whole.adapt_lr_)
