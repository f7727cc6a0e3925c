"""Behaviour of ReptileClassifier: the loss, meta-learning, labels, images, batch norm."""

import functools
import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skreptile import ClassTaskSampler, ReptileClassifier, TaskError, TaskSampler
from skreptile._engine.losses import CrossEntropy
from skreptile.nn import ConvNet


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    half = np.random.default_rng(0).random(len(y)) < 0.5
    return X, y, half


def _sampler(X, y, **kwargs):
    return ClassTaskSampler(X, y, **{"n_way": 5, "k_shot": 10, "random_state": 0, **kwargs})


# ----------------------------------------------------------------------- loss
def test_cross_entropy_matches_torch_and_its_gradient_matches_autograd():
    gen = torch.Generator().manual_seed(0)
    outputs = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (3, 7), generator=gen)
    y = torch.nn.functional.one_hot(labels, 4).to(torch.float64)
    value = CrossEntropy.value(outputs, y, 1.0 / 7)
    expected = torch.stack(
        [torch.nn.functional.cross_entropy(outputs[t], labels[t]) for t in range(3)]
    )
    torch.testing.assert_close(value, expected)
    (autograd,) = torch.autograd.grad(value.sum(), outputs)
    torch.testing.assert_close(CrossEntropy.output_grad(outputs.detach(), y, 1.0 / 7), autograd)


def test_cross_entropy_ignores_padding_and_is_stable_for_huge_logits():
    outputs = torch.tensor([[[1e4, 0.0], [0.0, -1e4], [5.0, 5.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    weight = torch.tensor([[[0.5], [0.5], [0.0]]])  # the third point is padding
    value = CrossEntropy.value(outputs, y, weight)
    grad = CrossEntropy.output_grad(outputs, y, weight, out=torch.empty_like(outputs))
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(value, torch.tensor([0.5 * 1e4]))
    torch.testing.assert_close(grad[0, 2], torch.zeros(2))
    torch.testing.assert_close(grad[0, 1], torch.tensor([0.5, -0.5]))


# -------------------------------------------------------------- meta-learning
def test_meta_learning_beats_a_random_initialisation_on_new_digit_images(digits):
    X, y, half = digits
    meta = ReptileClassifier(n_meta_iter=500, device="cpu", random_state=0)
    meta.meta_fit(_sampler(X[half], y[half]))
    episodes = _sampler(X[~half], y[~half], k_shot=1).sample_episodes(
        np.random.default_rng(1), 60, n_query=2
    )
    Xs, ys, Xq, yq = episodes
    meta_acc = (meta.few_shot_predict(Xs, ys, Xq) == yq).mean()
    scratch = ReptileClassifier(device="cpu", random_state=0)
    scratch_acc = np.mean(
        [(scratch.fit(Xs[e], ys[e]).predict(Xq[e]) == yq[e]).mean() for e in range(60)]
    )
    # Measured 0.90 against 0.60 (one shot, 5 ways; chance is 0.2).
    assert meta_acc > scratch_acc + 0.15, (meta_acc, scratch_acc)


def test_few_shot_predict_is_fit_then_predict_for_every_task(digits):
    X, y, half = digits
    model = ReptileClassifier(n_meta_iter=30, adapt_steps=10, device="cpu", random_state=0)
    model.meta_fit(_sampler(X[half], y[half]))
    Xs, ys, Xq, _ = _sampler(X[~half], y[~half], k_shot=2).sample_episodes(
        np.random.default_rng(1), 5, n_query=3
    )
    ys = np.array(["abcde"[i] for i in ys.ravel()]).reshape(ys.shape)  # any labels
    batched = model.few_shot_predict(Xs, ys, Xq)
    one_by_one = np.stack([model.fit(Xs[e], ys[e]).predict(Xq[e]) for e in range(5)])
    np.testing.assert_array_equal(batched, one_by_one)


def test_any_labels_and_fewer_classes_than_outputs(digits):
    X, y, half = digits
    model = ReptileClassifier(n_meta_iter=30, device="cpu", random_state=0)
    model.meta_fit(_sampler(X[half], y[half]))
    assert model.n_outputs_ == 5
    pick = np.flatnonzero(~half & (y < 3))[:12]
    names = np.array(["zero", "one", "two"])[y[pick]]
    model.fit(X[pick], names)
    np.testing.assert_array_equal(model.classes_, ["one", "two", "zero"])
    proba = model.predict_proba(X[pick])
    assert proba.shape == (12, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.classes_[proba.argmax(axis=1)], model.predict(X[pick]))
    np.testing.assert_allclose(np.exp(model.predict_log_proba(X[pick])), proba, atol=1e-12)
    too_many = np.flatnonzero(~half)[:30]
    with pytest.raises(ValueError, match="meta-learned for 5-way"):
        model.fit(X[too_many], y[too_many])


def test_tasks_from_callables_and_sequences_with_their_own_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 4))

    def task(rng):
        classes = rng.choice(20, 3, replace=False)
        labels = np.repeat(classes, 4)
        return centres[labels] + 0.1 * rng.normal(size=(12, 4)), [f"c{c}" for c in labels]

    model = ReptileClassifier(n_meta_iter=20, device="cpu", random_state=0).meta_fit(task)
    assert model.n_outputs_ == 3
    tasks = [task(rng) for _ in range(4)]
    ReptileClassifier(n_meta_iter=5, device="cpu", random_state=0).meta_fit(tasks)
    bad = tasks + [(centres[:4], [0, 1, 2, 3])]
    with pytest.raises(TaskError, match="Task 4 has 4 classes, but earlier tasks have 3"):
        ReptileClassifier(n_meta_iter=5, device="cpu").meta_fit(bad)
    with pytest.raises(TaskError, match="Task 0: y must be a 1-D array"):
        ReptileClassifier(n_meta_iter=5, device="cpu").meta_fit([(centres[:4], np.eye(4))])


def test_a_sampler_with_its_own_labels_is_remapped_per_task():
    class OwnLabels(TaskSampler):
        def sample_batch(self, rng, n_tasks):
            labels = np.tile([10**9, 10**9 + 7, 5], (n_tasks, 2))
            return rng.normal(size=(n_tasks, 6, 2)) + labels[..., None] % 3, labels

    model = ReptileClassifier(n_meta_iter=3, device="cpu", random_state=0)
    assert model.meta_fit(OwnLabels()).n_outputs_ == 3


def test_same_random_state_gives_the_same_model(digits):
    X, y, half = digits
    a, b = (
        ReptileClassifier(n_meta_iter=20, device="cpu", random_state=3).meta_fit(
            _sampler(X[half], y[half])
        )
        for _ in range(2)
    )
    np.testing.assert_array_equal(a.meta_params_, b.meta_params_)


def test_flat_features_are_standardised_per_feature_images_globally(digits):
    X, y, half = digits
    flat = ReptileClassifier(n_meta_iter=2, device="cpu").meta_fit(_sampler(X[half], y[half]))
    assert flat.input_shape_ is None and np.ptp(flat.x_mean_) > 1
    np.testing.assert_array_equal(flat.y_mean_, 0.0)
    np.testing.assert_array_equal(flat.y_scale_, 1.0)
    images = X.reshape(-1, 1, 8, 8)
    img = ReptileClassifier(n_meta_iter=2, device="cpu").meta_fit(_sampler(images[half], y[half]))
    assert img.input_shape_ == (1, 8, 8)
    assert np.ptp(img.x_mean_) == 0 and np.ptp(img.x_scale_) == 0


def test_paper_inner_optimiser_adam_runs(digits):
    X, y, half = digits
    params = dict(n_meta_iter=10, device="cpu", random_state=0)
    sgd = ReptileClassifier(**params).meta_fit(_sampler(X[half], y[half]))
    adam = ReptileClassifier(inner_optimizer="adam", inner_lr=0.001, **params)
    adam.meta_fit(_sampler(X[half], y[half]))
    assert np.isfinite(adam.meta_params_).all()
    assert not np.allclose(adam.meta_params_, sgd.meta_params_)


# ---------------------------------------------------- images, conv, batch norm
@pytest.fixture(scope="module")
def conv_model(digits):
    X, y, half = digits
    images = X.reshape(-1, 1, 8, 8)
    model = ReptileClassifier(
        module=functools.partial(ConvNet, n_filters=4, n_layers=2),
        n_meta_iter=15,
        adapt_steps=5,
        device="cpu",
        random_state=0,
    )
    return model.meta_fit(_sampler(images[half], y[half], k_shot=2)), images, y, half


def test_images_as_4d_arrays_or_flat_with_input_shape(conv_model):
    model, images, y, half = conv_model
    support = np.flatnonzero(~half & (y < 5))[:20]
    query = np.flatnonzero(~half & (y < 5))[20:30]
    as_images = model.fit(images[support], y[support]).predict_proba(images[query])
    as_flat = model.fit(images[support].reshape(20, -1), y[support]).predict_proba(
        images[query].reshape(10, -1)
    )
    np.testing.assert_allclose(as_images, as_flat)
    with pytest.raises(ValueError, match="images of shape \\(1, 4, 16\\)"):
        model.predict(images[query].reshape(10, 1, 4, 16))
    flat_meta = ReptileClassifier(
        module=functools.partial(ConvNet, n_filters=4, n_layers=2),
        input_shape=(8, 8),
        n_meta_iter=15,
        adapt_steps=5,
        device="cpu",
        random_state=0,
    ).meta_fit(_sampler(images[half].reshape(-1, 64), y[half], k_shot=2))
    assert flat_meta.input_shape_ == (1, 8, 8)
    np.testing.assert_allclose(flat_meta.meta_params_, model.meta_params_, atol=1e-6)


def test_batch_norm_is_not_transductive_unless_asked(conv_model):
    model, images, y, half = conv_model
    support = np.flatnonzero(~half & (y < 5))[:20]
    query = np.flatnonzero(~half & (y >= 5))[:12]
    model.fit(images[support], y[support])
    assert model.support_X_.shape == (20, 64)
    alone = np.concatenate([model.predict_proba(images[query[i : i + 1]]) for i in range(12)])
    together = model.predict_proba(images[query])
    np.testing.assert_allclose(alone, together, atol=1e-6)
    # Transductive: the query batch's own statistics, so a point's neighbours matter.
    model.set_params(transductive=True)
    first_half = model.predict_proba(images[query[:6]])
    together = model.predict_proba(images[query])
    assert not np.allclose(first_half, together[:6], atol=1e-4)
    model.set_params(transductive=False)


def test_pickled_conv_classifier_predicts_the_same(conv_model):
    model, images, y, half = conv_model
    support = np.flatnonzero(~half & (y < 5))[:20]
    model.fit(images[support], y[support])
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(clone.predict_proba(images[:5]), model.predict_proba(images[:5]))
    clone_tasks = clone.few_shot_predict(images[support][None], y[support][None], images[None, :5])
    np.testing.assert_array_equal(clone_tasks[0], model.predict(images[:5]))
    module = clone.torch_module()
    assert isinstance(module, torch.nn.Module)


def test_plain_classifier_on_images_without_meta_fit(digits):
    X, y, _ = digits
    images = X[:200].reshape(-1, 1, 8, 8)
    model = ReptileClassifier(
        module=functools.partial(ConvNet, n_filters=8, n_layers=2),
        adapt_steps=100,
        device="cpu",
        random_state=0,
    )
    assert model.fit(images, y[:200]).score(images, y[:200]) > 0.9
    assert model.input_shape_ == (1, 8, 8) and model.n_features_in_ == 64


def test_a_batch_normalised_network_needs_two_samples():
    from test_common_classifier import BatchNormMLP

    with pytest.raises(ValueError, match="cannot fit 1 sample"):
        ReptileClassifier(module=BatchNormMLP, device="cpu").fit(np.ones((1, 3)), [0])


def test_few_shot_predict_checks_its_input(digits):
    X, y, half = digits
    model = ReptileClassifier(n_meta_iter=2, device="cpu").meta_fit(_sampler(X[half], y[half]))
    with pytest.raises(ValueError, match="X_support \\(n_tasks, n_support, ...\\)"):
        model.few_shot_predict(X[:10], y[:10], X[:10])
    with pytest.raises(ValueError, match="expecting 64 features"):
        model.few_shot_predict(X[None, :10, :5], y[None, :10], X[None, :3, :5])
    with pytest.raises(ValueError, match="Task 0 has 10 classes"):
        ten = np.concatenate([np.flatnonzero(y == c)[:1] for c in range(10)])
        model.few_shot_predict(X[None, ten], y[None, ten], X[None, :3])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ReptileClassifier().few_shot_predict(X[None, :10], y[None, :10], X[None, :3])


def test_image_tasks_from_a_callable(digits):
    X, y, _ = digits
    images = X.reshape(-1, 1, 8, 8)

    even, odd = np.flatnonzero(y % 2 == 0), np.flatnonzero(y % 2 == 1)

    def task(rng):  # two classes, six examples each
        pick = np.concatenate(
            [rng.choice(even, 6, replace=False), rng.choice(odd, 6, replace=False)]
        )
        return images[pick], y[pick] % 2

    model = ReptileClassifier(n_meta_iter=3, device="cpu", random_state=0).meta_fit(task)
    assert model.input_shape_ == (1, 8, 8) and model.n_features_in_ == 64
    assert model.fit(images[:10], y[:10] % 2).predict(images[:3]).shape == (3,)
