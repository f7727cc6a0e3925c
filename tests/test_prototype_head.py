"""The classifier's ``head_init="prototypes"``: the output layer from class prototypes (Proto-MAML)."""

import pickle

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from sklearn.base import clone
from sklearn.datasets import load_digits

from skreptile import ClassTaskSampler, ReptileClassifier, ReptileRegressor
from skreptile._engine.prototypes import EMPTY_MARGIN, prototype_head
from skreptile.nn import ConvNet


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X, y


def _episode(X, y, classes, k_shot, n_query, seed):
    rng = np.random.default_rng(seed)
    sup, que = [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        sup.append(idx[:k_shot])
        que.append(idx[k_shot : k_shot + n_query])
    sup, que = np.concatenate(sup), np.concatenate(que)
    return X[sup], y[sup], X[que], y[que]


def _penultimate(module, x):
    """Inputs of the module's last ``nn.Linear``, by a hook (independent of skreptile's code)."""
    last = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen = []
    handle = last.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        module.eval()(torch.as_tensor(x, dtype=torch.float32))
    handle.remove()
    return seen[0].reshape(len(x), -1).double().numpy()


def _nearest_centroid(model, Xs, ys, Xq):
    """Nearest-centroid predictions and log-probabilities in the model's embedding."""
    module = model.torch_module()
    scale = lambda X: (X.reshape(len(X), -1) - model.x_mean_) / model.x_scale_  # noqa: E731
    zs, zq = _penultimate(module, scale(Xs)), _penultimate(module, scale(Xq))
    classes = np.unique(ys)
    centroids = np.stack([zs[ys == c].mean(0) for c in classes])
    d2 = ((zq[:, None, :] - centroids[None]) ** 2).sum(-1)
    return classes[np.argmin(d2, 1)], log_softmax(-d2, axis=1)


def _meta_fitted(X, y, **params):
    train = y < 5
    sampler = ClassTaskSampler(X[train], y[train], n_way=5, k_shot=2, random_state=0)
    params = {"n_meta_iter": 10, "random_state": 0, "device": "cpu", **params}
    return ReptileClassifier(head_init="prototypes", **params).meta_fit(sampler)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])  # numpy's fit path, and torch's
def test_zero_steps_is_nearest_centroid_in_the_embedding(digits, optimizer):
    X, y = digits
    model = _meta_fitted(X, y, hidden_layer_sizes=(32, 16), inner_optimizer=optimizer)
    Xs, ys, Xq, _ = _episode(X, y, [5, 6, 7, 8, 9], 3, 30, seed=1)
    model.set_params(adapt_steps=0).fit(Xs, ys)
    expected, log_proba = _nearest_centroid(model, Xs, ys, Xq)
    np.testing.assert_array_equal(model.predict(Xq), expected)
    # The formulas themselves: softmax(W z + b) is softmax(-||z - c_k||^2).
    np.testing.assert_allclose(model.predict_log_proba(Xq), log_proba, rtol=1e-3, atol=1e-3)
    # few_shot_predict (the batched path) agrees.
    batched = model.few_shot_predict(Xs[None], ys[None], Xq[None])[0]
    np.testing.assert_array_equal(batched, expected)
    staged = model.staged_few_shot_predict([Xs], [ys], [Xq], [0], method="predict_proba")[0][0]
    np.testing.assert_allclose(staged, np.exp(log_proba), atol=1e-4)


def test_zero_steps_is_nearest_centroid_for_a_convnet(digits):
    X, y = digits
    X = X.reshape(-1, 1, 8, 8)

    def net(n_features, n_outputs, input_shape=None):
        # Without batch normalisation: a point's embedding is then its own, not its batch's.
        return ConvNet(
            n_features,
            n_outputs,
            input_shape=input_shape,
            n_filters=4,
            n_layers=2,
            batch_norm=False,
        )

    model = _meta_fitted(X, y, module=net, n_meta_iter=3, inner_steps=2)
    Xs, ys, Xq, _ = _episode(X, y, [5, 6, 7], 2, 10, seed=2)  # 3 of 5 outputs used
    model.set_params(adapt_steps=0).fit(Xs, ys)
    expected, log_proba = _nearest_centroid(model, Xs, ys, Xq)
    np.testing.assert_array_equal(model.predict(Xq), expected)
    np.testing.assert_allclose(model.predict_log_proba(Xq), log_proba, rtol=1e-3, atol=1e-3)


def test_adaptation_and_meta_training_run_and_leave_the_meta_head_alone(digits):
    X, y = digits
    short = _meta_fitted(X, y, hidden_layer_sizes=(16,), n_meta_iter=2)
    long = _meta_fitted(X, y, hidden_layer_sizes=(16,), n_meta_iter=12)
    head = slice(-(16 + 1) * 5, None)  # the output layer: no outer update
    np.testing.assert_array_equal(short.meta_params_[head], long.meta_params_[head])
    assert not np.array_equal(short.meta_params_[: head.start], long.meta_params_[: head.start])
    Xs, ys, Xq, yq = _episode(X, y, [5, 6, 7], 2, 10, seed=3)  # fewer classes than outputs
    long.set_params(adapt_steps=5).fit(Xs, ys)
    assert np.isfinite(long.predict_proba(Xq)).all()
    assert set(long.predict(Xq)) <= {5, 6, 7}


def test_prototype_head_formulas_masks_and_empty_classes():
    gen = torch.Generator().manual_seed(0)
    z = torch.rand(2, 7, 4, generator=gen)  # non-negative, as after a ReLU
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 0, 1, 0, 0]])
    onehot = torch.nn.functional.one_hot(labels, 4)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, -1] = False  # a padding point
    W, b = prototype_head(z, onehot, mask)
    c = torch.stack([z[0, :2].mean(0), z[0, 2:4].mean(0), z[0, 4:6].mean(0)])
    torch.testing.assert_close(W[0, :3], 2 * c)
    torch.testing.assert_close(b[0, :3], -(c * c).sum(1))
    # Classes without points: a zero row, a bias below every present class's.
    assert not W[0, 3].any() and not W[1, 2:].any()
    torch.testing.assert_close(b[1, 2], b[1, :2].min() - EMPTY_MARGIN)
    logits = z @ W.transpose(1, 2) + b[:, None]
    d2 = ((z[:, :, None] - W[:, None] / 2) ** 2).sum(-1)
    present = [3, 2]
    for t in range(2):
        assert torch.equal(logits[t, :, : present[t]].argmax(1), d2[t, :, : present[t]].argmin(1))
        assert (logits[t].argmax(1) < present[t]).all()  # an empty class is never predicted


def test_clone_and_pickle_keep_the_parameter_and_bad_values_are_refused(digits):
    model = ReptileClassifier(head_init="prototypes")
    assert clone(model).head_init == "prototypes"
    assert pickle.loads(pickle.dumps(model)).head_init == "prototypes"
    assert ReptileClassifier().head_init == "meta"
    X, y = digits
    with pytest.raises(ValueError, match="head_init"):
        ReptileClassifier(head_init="centroids").fit(X[:20], y[:20])
    assert "head_init" not in ReptileRegressor().get_params()


@pytest.mark.parametrize(
    "layers, message",
    [
        (lambda n, k: [torch.nn.Linear(n, k), torch.nn.LayerNorm(k)], "LayerNorm"),
        (lambda n, k: [torch.nn.Linear(n, k, bias=False)], "without a bias"),
        (lambda n, k: [torch.nn.Linear(n, k), torch.nn.Tanh()], "something follows it"),
    ],
)
def test_a_module_without_a_final_linear_is_refused(digits, layers, message):
    X, y = digits
    train = y < 5
    sampler = ClassTaskSampler(X[train], y[train], n_way=5, k_shot=1, random_state=0)
    model = ReptileClassifier(
        module=lambda n, k: torch.nn.Sequential(*layers(n, k)),
        head_init="prototypes",
        n_meta_iter=2,
        random_state=0,
        device="cpu",
    )
    with pytest.raises(ValueError, match=message):
        model.meta_fit(sampler)
    with pytest.raises(ValueError, match=message):
        model.fit(X[:20], y[:20] % 5)  # without meta-training too


def test_tasks_of_unequal_sizes_leave_the_padding_out(digits):
    X, y = digits
    # Meta-training on tasks of different sizes: padded minibatches, weights zero on padding.
    rng = np.random.default_rng(0)
    tasks = []
    for k in (2, 3, 4, 5):  # 3-way tasks of 2 to 5 shots
        classes = rng.choice(5, 3, replace=False)
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(y == c), k, replace=False) for c in classes]
        )
        tasks.append((X[idx], y[idx]))
    model = ReptileClassifier(
        head_init="prototypes",
        hidden_layer_sizes=(16,),
        n_meta_iter=4,
        meta_batch_size=3,
        random_state=0,
        device="cpu",
    )
    model.meta_fit(tasks)
    assert np.isfinite(model.meta_params_).all()
    # few_shot_predict of tasks with different support sizes, at zero steps.
    episodes = [_episode(X, y, [5, 6, 7], k, 8, seed=k) for k in (1, 4)]
    model.set_params(adapt_steps=0)
    preds = model.few_shot_predict(*[[e[i] for e in episodes] for i in range(3)])
    for (Xs, ys, Xq, _), pred in zip(episodes, preds):
        expected, _ = _nearest_centroid(model.fit(Xs, ys), Xs, ys, Xq)
        np.testing.assert_array_equal(pred, expected)


def test_fit_without_meta_training(digits):
    X, y = digits
    Xs, ys, Xq, _ = _episode(X, y, [1, 2, 3], 3, 10, seed=4)
    model = ReptileClassifier(
        head_init="prototypes", hidden_layer_sizes=(16,), adapt_steps=0, random_state=0
    )
    expected, _ = _nearest_centroid(model.fit(Xs, ys), Xs, ys, Xq)
    np.testing.assert_array_equal(model.predict(Xq), expected)
