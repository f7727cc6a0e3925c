"""Bad parameters and bad data are refused with an error that names the problem (issue 24).

Each test reproduces one defect of issue 24 (items 4, 6 and 7): a value that
was silently accepted, truncated or crashed the process, or an error that did
not say what was wrong.
"""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

from skreptile import (
    ClassTaskSampler,
    GroupTaskSampler,
    ReptileClassifier,
    ReptileRegressor,
    SineTaskSampler,
    TaskError,
)

R = dict(device="cpu", random_state=0)
FAST = dict(n_meta_iter=3, meta_batch_size=2, hidden_layer_sizes=(8,), **R)


def _sampler():
    return SineTaskSampler(random_state=0)


# --------------------------------------------------- item 4: bounds and types
@pytest.mark.parametrize("Estimator", [ReptileRegressor, ReptileClassifier])
@pytest.mark.parametrize(
    "params",
    [
        dict(n_threads=10**6),
        dict(n_threads=True),
        dict(inner_lr=True),
        dict(meta_lr=True),
        dict(n_meta_iter=True),
        dict(n_meta_iter=10**12),
        dict(meta_batch_size=10**7),
        dict(inner_batch_size=10**9),
        dict(n_support=10**9),
        dict(inner_steps=10**7),
        dict(adapt_steps=10**7),
        dict(hidden_layer_sizes=10**6),
    ],
)
def test_out_of_bounds_and_boolean_parameters_are_refused(Estimator, params):
    with pytest.raises(InvalidParameterError, match=list(params)[0]):
        Estimator(**params)._validate_params()


@pytest.mark.parametrize("sizes", [(16.7,), (16.0,), (True, 4), (10**6,), (8,) * 1001])
def test_hidden_layer_sizes_entries_are_checked_not_truncated(sizes):
    # (16.7,) built a 16-wide network without a word.
    with pytest.raises(ValueError, match=r"hidden_layer_sizes .*e\.g\. hidden_layer_sizes"):
        ReptileRegressor(**{**FAST, "hidden_layer_sizes": sizes}).meta_fit(_sampler())


def test_valid_hidden_layer_sizes_still_build_those_widths():
    model = ReptileRegressor(**{**FAST, "hidden_layer_sizes": np.array([3, 2])})
    model.meta_fit(_sampler())
    # 1 input -> 3 -> 2 -> 1 output: weights and biases.
    assert model.meta_params_.shape == ((1 * 3 + 3) + (3 * 2 + 2) + (2 * 1 + 1),)


def _skops_round_trip(model):
    sio = pytest.importorskip("skops.io")
    data = sio.dumps(model)
    # Only skreptile's own types to trust, as the persistence guide says to expect.
    untrusted = sio.get_untrusted_types(data=data)
    assert all(name.startswith("skreptile.") for name in untrusted), untrusted
    return sio.loads(data, trusted=untrusted)


@pytest.mark.parametrize("round_trip", [lambda m: pickle.loads(pickle.dumps(m)), _skops_round_trip])
def test_a_loaded_thread_count_is_checked_before_it_reaches_torch(monkeypatch, round_trip):
    # A file can carry n_threads=10**6; predict never runs _validate_params, and
    # torch.set_num_threads(10**6) crashed the process.
    X = np.linspace(-1, 1, 10)[:, None]
    model = ReptileRegressor(**FAST).meta_fit(_sampler()).fit(X, X[:, 0])
    model.__dict__["n_threads"] = 10**6
    loaded = round_trip(model)
    reached = []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: reached.append(n) or set_threads(1))
    with pytest.raises(ValueError, match=r"n_threads must be .* at most 1024, got 1000000"):
        loaded.predict(np.linspace(-1, 1, 5000)[:, None])
    with pytest.raises(ValueError, match="n_threads"):
        loaded.predict(X)
    assert reached == []


# ------------------------------------------------- item 7: errors that help
def _sine_tasks(n=20):
    x = np.linspace(-1, 1, 10)[:, None]
    return [(x, np.sin(x[:, 0] + i)) for i in range(n)]


def test_a_bad_task_is_named_by_the_users_index_under_the_hold_out():
    # The default validation hold-out removed tasks first: index 12 was called "Task 10".
    tasks = _sine_tasks()
    tasks[12] = (tasks[12][0], np.full(10, np.nan))
    with pytest.raises(TaskError, match=r"^Task 12: .*NaN"):
        ReptileRegressor(**FAST).meta_fit(tasks)
    tasks[12], tasks[3] = _sine_tasks()[12], (tasks[3][0], np.full(10, np.inf))
    with pytest.raises(TaskError, match=r"^Task 3: .*infinity"):
        ReptileRegressor(**FAST).meta_fit(tasks)


class _OneTaskShort(SineTaskSampler):
    def sample_batch(self, rng, n_tasks):
        X, y = super().sample_batch(rng, n_tasks)
        return X[:-1], y[:-1]


@pytest.mark.parametrize("n_meta_iter", [3, 100])
def test_a_batch_with_a_task_too_few_names_the_sampler(n_meta_iter):
    # Accepted below 64 iterations; above, "cannot reshape array of size ...".
    model = ReptileRegressor(**{**FAST, "n_meta_iter": n_meta_iter, "validation_fraction": None})
    with pytest.raises(TaskError, match=r"_OneTaskShort\.sample_batch\(rng, \d+\) returned \d+ "):
        model.meta_fit(_OneTaskShort(random_state=0))


def test_one_data_set_as_a_tuple_suggests_a_list_of_tasks():
    X, y = _sine_tasks(1)[0]
    with pytest.raises(TaskError, match=r"meta_fit\(\[\(X, y\)\]\).*GroupTaskSampler"):
        ReptileRegressor(**FAST).meta_fit((X, y))


def test_a_sampler_tensor_that_requires_grad_is_taken_as_data():
    class Tensors(SineTaskSampler):
        def sample_batch(self, rng, n_tasks):
            X, y = super().sample_batch(rng, n_tasks)
            return torch.tensor(X, requires_grad=True), torch.tensor(y, requires_grad=True)

    # Was torch's "Can't call numpy() on Tensor that requires grad".
    got = ReptileRegressor(**FAST).meta_fit(Tensors(random_state=0)).meta_params_
    same = ReptileRegressor(**FAST).meta_fit(_sampler()).meta_params_
    np.testing.assert_array_equal(got, same)


def test_a_list_task_of_tensors_that_require_grad_is_taken_as_data():
    X, y = _sine_tasks(1)[0]
    tasks = [(torch.tensor(X + i, requires_grad=True), torch.tensor(y)) for i in range(3)]
    plain = [(X + i, y) for i in range(3)]
    got = ReptileRegressor(**FAST).meta_fit(tasks).meta_params_
    np.testing.assert_array_equal(got, ReptileRegressor(**FAST).meta_fit(plain).meta_params_)


def _table():
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"a": rng.normal(size=40), "y": rng.normal(size=40), "g": np.repeat(np.arange(4), 10)}
    )


def test_group_sampler_refuses_duplicated_column_names():
    df = _table()
    df.insert(1, "a", df["a"] + 1, allow_duplicates=True)
    # Was pandas' "The truth value of a Series is ambiguous".
    with pytest.raises(ValueError, match="several columns named 'a'.*X.columns.duplicated"):
        GroupTaskSampler(df, "y", "g")


def test_group_sampler_takes_numbers_stored_as_objects():
    df = _table()
    as_objects = df.assign(a=df["a"].astype(object))
    # Was "Column 'a' of X is not numeric (dtype object, e.g. 0.12...)".
    got = GroupTaskSampler(as_objects, "y", "g", random_state=0)
    want = GroupTaskSampler(df, "y", "g", random_state=0)
    np.testing.assert_array_equal(got._X, want._X)
    with pytest.raises(ValueError, match="Column 'a' of X has 1 missing"):
        GroupTaskSampler(as_objects.assign(a=[None] + list(df["a"][1:])), "y", "g")
    with pytest.raises(ValueError, match="Column 'a' of X is not numeric"):
        GroupTaskSampler(df.assign(a=["x"] * 40), "y", "g")


# ------------------------------------------------- item 6: nothing silent
def _relative_rmse(scale, x_offset, y_offset):
    x = np.linspace(-1, 1, 10)[:, None]
    tasks = [(x * scale + x_offset, np.sin(x[:, 0] + i) * scale + y_offset) for i in range(12)]
    params = {**FAST, "n_meta_iter": 10, "validation_fraction": None}
    model = ReptileRegressor(**params).meta_fit(tasks)
    X, y = tasks[0]
    pred = model.fit(X[:5], y[:5]).predict(X)
    return np.sqrt(np.mean((pred - y) ** 2)) / np.std(y)


def test_data_of_tiny_spread_is_scaled_like_any_other():
    # A spread below 1e-12 was taken for a constant: unscaled, relative RMSE 1e5.
    usual = _relative_rmse(1.0, 0.0, 0.0)
    assert _relative_rmse(1e-13, 0.0, 0.0) == pytest.approx(usual, rel=1e-6)
    # Around an offset, float64 keeps 3 digits of a 1e-13 spread around 5.
    assert _relative_rmse(1e-13, 3.0, 5.0) == pytest.approx(usual, rel=0.1)


def test_a_constant_column_is_still_left_unscaled():
    from skreptile._engine import Scaling

    X = np.column_stack([np.full(10, 0.1 + 0.2), np.linspace(0, 1, 10)])
    X[::2, 0] = 0.3  # 0.1 + 0.2 and 0.3 differ by one rounding
    scaling = Scaling.fit(X, X[:, 1:])
    assert scaling.x_scale[0] == 1.0 and scaling.x_scale[1] == pytest.approx(X[:, 1].std())


def test_classifier_refuses_regression_targets():
    rng = np.random.default_rng(0)
    tasks = [(rng.normal(size=(10, 2)), rng.normal(size=10)) for _ in range(3)]
    # Built a 10-way model: every distinct float became a class.
    with pytest.raises(TaskError, match="Task 0: y must hold class labels.*continuous.*Regressor"):
        ReptileClassifier(**FAST).meta_fit(tasks)
    integral = [(X, np.arange(10) % 2 * 1.0) for X, _ in tasks]  # float labels 0.0 / 1.0 are fine
    assert ReptileClassifier(**FAST).meta_fit(integral).n_outputs_ == 2


def test_class_sampler_refuses_a_missing_label():
    X = np.random.default_rng(0).normal(size=(40, 2))
    y = np.repeat(np.arange(4.0), 10)
    y[5] = np.nan
    # The NaN became a class of its own.
    with pytest.raises(ValueError, match=r"y has 1 missing label\(s\) \(first at row 5\)"):
        ClassTaskSampler(X, y, n_way=2)
    labels = np.repeat(np.array(["a", "b", "c", "d"], dtype=object), 10)
    labels[7] = None
    with pytest.raises(ValueError, match="missing label"):
        ClassTaskSampler(X, labels, n_way=2)


def test_group_sampler_refuses_target_and_group_in_one_column():
    with pytest.raises(ValueError, match="y and groups both name the column 'g'"):
        GroupTaskSampler(_table(), "g", "g")


def test_inner_steps_docs_agree_with_the_constraint():
    # The guide said "must be at least 2" while inner_steps=1 was accepted.
    import pathlib
    import re

    from skreptile._estimators.constraints import PARAMETER_CONSTRAINTS

    lowest = PARAMETER_CONSTRAINTS["inner_steps"][0].left
    import skreptile

    root = pathlib.Path(skreptile.__file__).parent.parent
    text = (root / "docs/user_guide/hyperparameters.rst").read_text()
    text += ReptileRegressor.__doc__ + ReptileClassifier.__doc__
    floors = {int(n) for n in re.findall(r"inner_steps`` must be at least (\d+)", text)}
    assert floors <= {lowest}
    assert lowest == 1 and "inner_steps=1" in text  # documented: pooled training, a baseline
    ReptileRegressor(**FAST, inner_steps=1).meta_fit(_sampler())


def test_a_rows_prediction_does_not_depend_on_the_other_rows():
    # Above about 2,000 rows predict took a float32 path: 8.9e-8 from row by row.
    X = np.linspace(-5, 5, 3000)[:, None]
    # The default width: the rows at which predict leaves numpy for torch depend on it.
    params = {**FAST, "hidden_layer_sizes": (64, 64)}
    model = ReptileRegressor(**params).meta_fit(_sampler()).fit(X[:10], np.sin(X[:10, 0]))
    together = model.predict(X)
    alone = np.concatenate([model.predict(X[i : i + 1]) for i in range(0, 3000, 7)])
    np.testing.assert_allclose(together[::7], alone, rtol=1e-12, atol=1e-12)


def test_a_classification_task_of_tensors_that_require_grad_is_taken_as_data():
    rng = np.random.default_rng(0)
    tasks = [(rng.normal(size=(10, 2)), np.arange(10) % 2) for _ in range(3)]
    as_tensors = [(torch.tensor(X, requires_grad=True), torch.tensor(y)) for X, y in tasks]
    got = ReptileClassifier(**FAST).meta_fit(as_tensors).meta_params_
    np.testing.assert_array_equal(got, ReptileClassifier(**FAST).meta_fit(tasks).meta_params_)


def test_a_baseline_that_cannot_fit_three_rows_is_named():
    from sklearn.neighbors import KNeighborsRegressor

    from skreptile.evaluation import evaluate_few_shot

    X, y = _sampler().sample_batch(np.random.default_rng(0), 3)
    tasks = list(zip(X, y))
    model = ReptileRegressor(**FAST).meta_fit(_sampler())
    # KNeighborsRegressor's 5 neighbours do not fit in 3 support rows.
    with pytest.raises(
        ValueError, match=r"Baseline 'knn' failed on task 0 \(3 support.*n_neighbors"
    ):
        evaluate_few_shot(model, tasks, n_support=3, baselines={"knn": KNeighborsRegressor()})
