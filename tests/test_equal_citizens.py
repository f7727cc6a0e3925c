"""Every scikit-learn tool and ability against every kind of model (issue "Equal citizens").

The matrix: the regressor with its MLP, the regressor with a custom module
holding BatchNorm and Dropout, the classifier with its MLP, and the classifier
with ConvNet on images; against validation and early stopping, warm start,
checkpoints, clone, cross_val_score, GridSearchCV (n_jobs=2), pipelines from
meta_fit_pipeline, pickle/joblib/skops, batched few-shot prediction and
evaluate_few_shot.
"""

import functools
import io
import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import skreptile._engine.outer as engine_module
from skreptile import ClassTaskSampler, ReptileClassifier, ReptileRegressor
from skreptile.evaluation import evaluate_few_shot, split_support_query
from skreptile.nn import ConvNet
from skreptile.pipeline import meta_fit_pipeline

COMMON = dict(device="cpu", random_state=0, n_meta_iter=20, monitor_interval=5)


class BatchNormDropoutNet(torch.nn.Module):
    """A small regression network with batch normalisation and dropout."""

    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.Tanh(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(16, n_outputs),
        )

    def forward(self, x):
        return self.net(x)


def _line_tasks(n_tasks, seed, n_points=16):
    rng = np.random.default_rng(seed)
    tasks = []
    for _ in range(n_tasks):
        X = rng.normal(size=(n_points, 2))
        a, b, c = rng.normal(size=3)
        tasks.append((X, a * X[:, 0] + b * X[:, 1] + c))
    return tasks


@functools.lru_cache
def _digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def _class_tasks(n_tasks, seed, images):
    X, y = _digits()
    sampler = ClassTaskSampler(X[y >= 5], y[y >= 5], n_way=3, k_shot=8, random_state=seed)
    Xt, yt = sampler.sample_batch(np.random.default_rng(seed), n_tasks)
    if images:
        Xt = Xt.reshape(n_tasks, -1, 1, 8, 8)
    return list(zip(Xt, yt + 10))  # labels that are not 0..N-1


KINDS = {
    "regressor-mlp": lambda: ReptileRegressor(hidden_layer_sizes=(16,), **COMMON),
    "regressor-batchnorm-dropout": lambda: ReptileRegressor(
        module=BatchNormDropoutNet, adapt_lr=0.02, **COMMON
    ),
    "classifier-mlp": lambda: ReptileClassifier(hidden_layer_sizes=(16,), **COMMON),
    "classifier-convnet-images": lambda: ReptileClassifier(
        module=functools.partial(ConvNet, n_filters=4, n_layers=2), input_shape=(1, 8, 8), **COMMON
    ),
}


def _meta_tasks(kind):
    if kind.startswith("regressor"):
        return _line_tasks(30, 0)
    X, y = _digits()
    sampler = ClassTaskSampler(
        X[y < 5],
        y[y < 5],
        n_way=3,
        k_shot=5,
        random_state=0,
        image_shape=(1, 8, 8) if "images" in kind else None,
    )
    return sampler


def _new_tasks(kind, n_tasks=4, seed=1):
    if kind.startswith("regressor"):
        return _line_tasks(n_tasks, seed)
    return _class_tasks(n_tasks, seed, images="images" in kind)


@functools.lru_cache
def _meta_fitted(kind):
    return KINDS[kind]().meta_fit(_meta_tasks(kind))


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


def _fitted_copy(kind):
    return pickle.loads(pickle.dumps(_meta_fitted(kind)))


def _predict(model, X):
    return model.predict_proba(X) if hasattr(model, "predict_proba") else model.predict(X)


def _support_query(kind, n_support=8):
    (X, y), *_ = _new_tasks(kind, 1)
    return X[:n_support], y[:n_support], X[n_support:]


# ------------------------------------------------------------------ abilities
def _validation_tasks(kind):
    if kind.startswith("regressor"):
        return split_support_query(_new_tasks(kind, 4, seed=2), 6, random_state=0)
    X, y = _digits()
    sampler = ClassTaskSampler(X[y >= 5], y[y >= 5], n_way=3, k_shot=4)
    Xs, ys, Xq, yq = sampler.sample_episodes(np.random.default_rng(2), 4, n_query=2)
    if "images" in kind:
        Xs, Xq = Xs.reshape(4, -1, 1, 8, 8), Xq.reshape(4, -1, 1, 8, 8)
    return list(zip(Xs, ys, Xq, yq))


def test_validation_tasks_and_early_stopping(kind):
    val = _validation_tasks(kind)
    model = KINDS[kind]().set_params(early_stopping=True, n_iter_no_change=2)
    model.meta_fit(_meta_tasks(kind), validation_tasks=val)
    losses = model.history_["validation_loss"]
    assert np.isfinite(losses).all() and model.best_validation_loss_ == min(losses)
    assert model.best_iteration_ in model.history_["meta_iter"]


def test_warm_start_twice_equals_one_run(kind):
    # Early stopping off: with it (the default for a finite list of tasks) one
    # run keeps its best validated weights rather than its last ones.
    params = dict(meta_lr_schedule="constant", early_stopping=False)
    warm = KINDS[kind]().set_params(warm_start=True, n_meta_iter=10, **params)
    warm.meta_fit(_meta_tasks(kind))
    warm.set_params(n_meta_iter=20).meta_fit(_meta_tasks(kind))
    once = KINDS[kind]().set_params(**params).meta_fit(_meta_tasks(kind))
    np.testing.assert_allclose(warm.meta_params_, once.meta_params_, atol=1e-5)
    assert warm.n_meta_iter_ == 20


def test_checkpoint_resume_equals_one_run(kind, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    real = engine_module.meta_lr_at

    def interrupt(meta_lr, schedule, iteration, n_meta_iter):
        if iteration == 13:
            raise KeyboardInterrupt
        return real(meta_lr, schedule, iteration, n_meta_iter)

    model = KINDS[kind]().set_params(checkpoint_path=path, checkpoint_interval=5)
    with monkeypatch.context() as m, pytest.warns(RuntimeWarning), pytest.raises(KeyboardInterrupt):
        m.setattr(engine_module, "meta_lr_at", interrupt)
        model.meta_fit(_meta_tasks(kind))
    assert path.exists() and not hasattr(model, "meta_params_")
    model.meta_fit(_meta_tasks(kind))
    np.testing.assert_allclose(model.meta_params_, _meta_fitted(kind).meta_params_, atol=1e-6)


def test_clone_keeps_the_initialisation_and_the_shapes(kind):
    model = _fitted_copy(kind)
    Xs, ys, Xq = _support_query(kind)
    fresh = clone(model)
    assert not hasattr(fresh, "params_")
    for attr in ("n_features_in_", "n_outputs_", "input_shape_"):
        assert getattr(fresh, attr, None) == getattr(model, attr, None)
    np.testing.assert_allclose(
        _predict(fresh.fit(Xs, ys), Xq), _predict(model.fit(Xs, ys), Xq), atol=1e-6
    )


def test_cross_val_score_and_grid_search_with_two_jobs(kind):
    model = _fitted_copy(kind)
    (X, y), *_ = _new_tasks(kind, 1)
    scores = cross_val_score(model, X, y, cv=KFold(2, shuffle=True, random_state=0))
    assert np.isfinite(scores).all()
    search = GridSearchCV(model, {"adapt_steps": [1, 8]}, cv=KFold(2), n_jobs=2).fit(X, y)
    assert search.best_params_["adapt_steps"] in (1, 8)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_meta_fit_pipeline_and_its_evaluation(kind):
    if "images" in kind:
        front = FunctionTransformer(lambda X: np.asarray(X) * 2.0)  # keeps the image shape
    else:
        front = StandardScaler()
    pipe = meta_fit_pipeline(make_pipeline(front, KINDS[kind]()), _flat_or_image_tasks(kind))
    Xs, ys, Xq = _support_query(kind)
    assert _predict(pipe.fit(Xs, ys), Xq).shape[0] == len(Xq)
    results = evaluate_few_shot(pipe, _new_tasks(kind, 3), n_support=6, adapt_steps=[0, 4])
    assert np.isfinite(results.errors(results.model_name)).all()


def _flat_or_image_tasks(kind):
    """meta_fit_pipeline's transformers see the tasks' points as rows of the table."""
    if kind.startswith("regressor"):
        return _line_tasks(30, 0)
    return _class_tasks(12, 0, images="images" in kind)


@pytest.mark.parametrize("how", ["pickle", "joblib", "skops"])
def test_persistence_round_trips(kind, how, tmp_path):
    model = _fitted_copy(kind)
    Xs, ys, Xq = _support_query(kind)
    model.fit(Xs, ys)
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(model))
    elif how == "joblib":
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        buffer.seek(0)
        loaded = joblib.load(buffer)
    else:
        sio = pytest.importorskip("skops.io")
        data = sio.dumps(model)
        loaded = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    np.testing.assert_array_equal(_predict(loaded, Xq), _predict(model, Xq))
    np.testing.assert_allclose(
        _predict(clone(loaded).fit(Xs, ys), Xq), _predict(model, Xq), atol=1e-6
    )


def test_few_shot_predict_equals_fit_then_predict(kind):
    model = _fitted_copy(kind)
    tasks = split_support_query(_new_tasks(kind, 3), 8, random_state=0)
    Xs, ys, Xq, _ = (np.stack(part) for part in zip(*tasks))
    batched = model.few_shot_predict(Xs, ys, Xq)
    for t in range(len(tasks)):
        single = clone(model).fit(Xs[t], ys[t]).predict(Xq[t])
        if "dropout" in kind:
            # Dropout draws its masks for a batch of tasks at once: the same
            # adaptation in distribution, not to the bit.
            assert np.mean((batched[t] - single) ** 2) < 0.1 * np.var(single)
        elif kind.startswith("regressor"):  # float32 in a batch, float64 alone
            np.testing.assert_allclose(batched[t], single, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(batched[t], single)


def test_evaluate_few_shot_uses_the_estimators_metric(kind):
    model = _fitted_copy(kind)
    results = evaluate_few_shot(model, _new_tasks(kind, 3), n_support=8, adapt_steps=[0, 8])
    expected = "mse" if kind.startswith("regressor") else "accuracy"
    assert results.metric == expected and results.greater_is_better == (expected == "accuracy")
    scores = results.errors(results.model_name)
    assert np.isfinite(scores).all()
    if expected == "accuracy":
        assert ((scores >= 0) & (scores <= 1)).all()
        loss = evaluate_few_shot(model, _new_tasks(kind, 3), n_support=8, metric="log_loss")
        assert (loss.errors(loss.model_name) > 0).all()
