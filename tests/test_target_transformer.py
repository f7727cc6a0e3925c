"""Raw tables end to end: a target transform learned at meta time and frozen, and evaluation."""

import pickle

import numpy as np
import pandas as pd
import pytest
from conftest import raw_group_table
from sklearn.base import clone
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    Normalizer,
    OneHotEncoder,
    PowerTransformer,
    StandardScaler,
)

from skreptile import GroupTaskSampler, ReptileClassifier, ReptileRegressor
from skreptile._training.selftune import hold_out
from skreptile.evaluation import evaluate_few_shot, split_support_query

SMALL = dict(random_state=0, n_meta_iter=100, hidden_layer_sizes=(16,))


def _priced_frame():
    """The raw group table with a skewed positive target: a price per city."""
    frame = raw_group_table().rename(columns={"group": "city"})
    frame["price"] = 1000.0 * np.exp(0.4 * frame.pop("y"))
    return frame


def _preprocessor():
    return ColumnTransformer(
        [
            ("num", SimpleImputer(), ["x"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["kind", "grade"]),
        ]
    )


def _log():
    return FunctionTransformer(np.log, inverse_func=np.exp)


def _raw_tasks(frame):
    """One (raw rows, price) pair per city, as a user would cut a table of new cities."""
    return [
        (rows.drop(columns=["price", "city"]), rows["price"]) for _, rows in frame.groupby("city")
    ]


@pytest.fixture(scope="module")
def table():
    frame = _priced_frame()
    return frame[frame["city"] < 12], frame[frame["city"] >= 12]


def test_fitted_once_on_the_meta_training_targets_and_never_again(table, monkeypatch):
    train, new = table
    calls = []
    real_fit = PowerTransformer.fit

    def counting_fit(self, X, y=None):
        calls.append(len(X))
        return real_fit(self, X, y)

    monkeypatch.setattr(PowerTransformer, "fit", counting_fit)
    given = PowerTransformer()
    sampler = GroupTaskSampler(
        train, "price", "city", preprocessor=_preprocessor(), target_transformer=given
    )
    model = ReptileRegressor(**SMALL).meta_fit(sampler)
    pipe = sampler.pipeline(model)
    support = new[new["city"] == 12].iloc[:5]
    pipe.fit(support.drop(columns=["price", "city"]), support["price"])
    monkeypatch.undo()

    # One fit, on every meta-training row's target: none per task, none at pipe.fit.
    assert calls == [len(train)]
    assert sampler.target_transformer_ is not given and not hasattr(given, "lambdas_")
    reference = PowerTransformer().fit(train[["price"]].to_numpy())
    np.testing.assert_allclose(sampler.target_transformer_.lambdas_, reference.lambdas_)
    assert pipe.transformer_.estimator is sampler.target_transformer_
    # Every group's targets, as tasks are drawn from them, are the transformed ones.
    for label, (_, y_task) in zip(sampler.groups_, sampler.tasks()):
        raw = train.loc[train["city"] == label, ["price"]].to_numpy()
        np.testing.assert_allclose(y_task, reference.transform(raw)[:, 0])


def test_held_out_validation_groups_get_the_same_transformed_targets(table):
    train, _ = table
    X_raw = train[["x"]].fillna(0.0)
    numeric = GroupTaskSampler(
        X_raw.assign(price=train["price"], city=train["city"]),
        "price",
        "city",
        target_transformer=_log(),
    )
    rest, held = numeric._split_groups([0, 3])
    for (_, y_held), label in zip(held, numeric.groups_[[0, 3]]):
        np.testing.assert_allclose(y_held, np.log(train.loc[train["city"] == label, "price"]))
    np.testing.assert_allclose(rest._y, np.log(train.loc[~train["city"].isin([0, 3]), "price"]))
    # What meta_fit holds out for validation: support and query targets in log units.
    model = ReptileRegressor(**SMALL)
    _, by_size, finite = hold_out(model, numeric, seed=0)
    log_prices = np.log(train["price"].to_numpy())
    assert finite and by_size
    for splits in by_size.values():
        for _, ys, _, yq in splits:
            assert np.isin(np.concatenate([ys, yq]), log_prices).all()


def test_predictions_come_back_in_original_units(table):
    train, new = table
    sampler = GroupTaskSampler(
        train, "price", "city", preprocessor=_preprocessor(), target_transformer=_log()
    )
    by_hand = GroupTaskSampler(
        train.assign(price=np.log(train["price"])), "price", "city", preprocessor=_preprocessor()
    )
    model = ReptileRegressor(**SMALL).meta_fit(sampler)
    model_by_hand = ReptileRegressor(**SMALL).meta_fit(by_hand)
    np.testing.assert_array_equal(model.meta_params_, model_by_hand.meta_params_)

    rows = new[new["city"] == 13]
    Xs, ys = rows.drop(columns=["price", "city"]).iloc[:6], rows["price"].iloc[:6]
    Xq = rows.drop(columns=["price", "city"]).iloc[6:]
    pred = sampler.pipeline(model).fit(Xs, ys).predict(Xq)
    expected = np.exp(by_hand.pipeline(model_by_hand).fit(Xs, np.log(ys)).predict(Xq))
    assert pred.shape == (len(Xq),)
    np.testing.assert_allclose(pred, expected, rtol=1e-10)
    # In price units (thousands), not log price (single digits).
    assert np.median(pred) > 100


def test_clone_and_pickle_keep_the_initialisation_and_the_frozen_transform(table):
    train, new = table
    sampler = GroupTaskSampler(
        train, "price", "city", preprocessor=_preprocessor(), target_transformer=PowerTransformer()
    )
    model = ReptileRegressor(**SMALL).meta_fit(sampler)
    pipe = sampler.pipeline(model)
    assert isinstance(pipe, TransformedTargetRegressor) and isinstance(pipe.regressor, Pipeline)
    lambdas = sampler.target_transformer_.lambdas_.copy()

    cloned = clone(pipe)
    np.testing.assert_array_equal(cloned.regressor[-1].meta_params_, model.meta_params_)
    assert cloned.transformer.estimator is sampler.target_transformer_

    rows = new[new["city"] == 14]
    Xs, ys = rows.drop(columns=["price", "city"]).iloc[:5], rows["price"].iloc[:5]
    Xq = rows.drop(columns=["price", "city"]).iloc[5:]
    pred = pipe.fit(Xs, ys).predict(Xq)
    np.testing.assert_allclose(cloned.fit(Xs, ys).predict(Xq), pred, rtol=1e-10)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(pipe)).predict(Xq), pred, rtol=1e-10)
    # Adapting to a group of larger prices leaves the meta-time statistics as they were.
    clone(pipe).fit(Xs, 50 * ys)
    np.testing.assert_array_equal(sampler.target_transformer_.lambdas_, lambdas)
    # The estimator given to pipeline is not adapted: fit adapts a clone of it.
    assert not hasattr(model, "params_")


def test_a_bad_target_transformer_is_refused_clearly(table):
    train, _ = table
    with pytest.raises(TypeError, match="has no inverse_transform method.*inverse_func=np.expm1"):
        GroupTaskSampler(
            train, "price", "city", preprocessor=_preprocessor(), target_transformer=Normalizer()
        )
    # No inverse_func: inverse_transform is the identity, predictions would be in log units.
    no_inverse = FunctionTransformer(np.log1p)
    with pytest.raises(ValueError, match="inverse_transform does not invert transform"):
        GroupTaskSampler(train, "price", "city", target_transformer=no_inverse)
    negative = train.assign(price=train["price"] - 3000.0)
    # sklearn's own warning (log then exp does not give the negative prices back), then ours.
    with pytest.warns(UserWarning, match="not strictly inverse"):
        with pytest.raises(ValueError, match="non-finite value.*np.log1p needs targets > -1"):
            GroupTaskSampler(negative, "price", "city", target_transformer=_log())


def test_a_target_transformer_is_refused_for_classification():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 2))
    labels = (X[:, 0] > 0).astype(int)
    groups = np.repeat(np.arange(12), 10)
    sampler = GroupTaskSampler(X, labels, groups, target_transformer=StandardScaler())
    with pytest.raises(ValueError, match="class labels cannot be transformed"):
        ReptileClassifier(n_meta_iter=5, random_state=0).meta_fit(sampler)
    with pytest.raises(
        ValueError, match="ReptileClassifier is a classifier.*without target_transformer"
    ):
        sampler.pipeline(ReptileClassifier())


def _with_adapt_steps(pipe, steps):
    """A clone of ``pipe`` whose Reptile estimator adapts with ``steps`` steps."""
    pipe = clone(pipe)
    inner = pipe.regressor if isinstance(pipe, TransformedTargetRegressor) else pipe
    inner[-1].set_params(adapt_steps=steps)
    return pipe


@pytest.mark.parametrize("target", ["none", "log, frozen", "scaler refitted per task"])
def test_evaluate_few_shot_on_raw_rows_equals_the_manual_loop(table, target):
    train, new = table
    sampler = GroupTaskSampler(
        train,
        "price",
        "city",
        preprocessor=_preprocessor(),
        target_transformer=_log() if target == "log, frozen" else None,
    )
    model = ReptileRegressor(**SMALL).meta_fit(sampler)
    pipe = sampler.pipeline(model)
    if target == "scaler refitted per task":  # what fit does, however unwise
        pipe = TransformedTargetRegressor(regressor=pipe, transformer=StandardScaler())
    tasks = _raw_tasks(new)
    steps = [0, model.adapt_steps_]
    results = evaluate_few_shot(
        pipe, tasks, n_support=5, adapt_steps=steps, baselines={"ridge": Ridge()}, random_state=0
    )

    split = split_support_query(tasks, 5, random_state=0)
    assert isinstance(split[0][0], pd.DataFrame) and not pd.api.types.is_numeric_dtype(
        split[0][0]["kind"]
    )
    assert split[0][0]["x"].isna().any() or split[0][2]["x"].isna().any()
    expected = [
        [
            np.mean((_with_adapt_steps(pipe, s).fit(Xs, ys).predict(Xq) - yq) ** 2)
            for Xs, ys, Xq, yq in split
        ]
        for s in steps
    ]
    assert np.isfinite(results.model_errors).all()
    np.testing.assert_allclose(results.model_errors, expected, rtol=1e-5)
    # The baseline sees the same rows after the frozen preprocessing, targets in price units.
    prep = sampler.preprocessor_
    ridge = [
        np.mean((Ridge().fit(prep.transform(Xs), ys).predict(prep.transform(Xq)) - yq) ** 2)
        for Xs, ys, Xq, yq in split
    ]
    np.testing.assert_allclose(results.baseline_errors["ridge"], ridge, rtol=1e-10)


def test_evaluate_few_shot_names_a_raw_column_without_the_pipeline(table):
    train, new = table
    sampler = GroupTaskSampler(train, "price", "city", preprocessor=_preprocessor())
    model = ReptileRegressor(**SMALL).meta_fit(sampler)
    with pytest.raises(ValueError, match="Column 'x' of the tasks' X has .* missing value"):
        evaluate_few_shot(model, _raw_tasks(new), n_support=5)
    imputed = new.assign(x=new["x"].fillna(0.0))
    with pytest.raises(
        ValueError, match="Column 'kind' of the tasks' X is not numeric.*sampler.pipeline"
    ):
        evaluate_few_shot(model, _raw_tasks(imputed), n_support=5)
