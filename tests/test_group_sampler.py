"""GroupTaskSampler: one task per group of a table."""

import numpy as np
import pandas as pd
import pytest

from skreptile import GroupTaskSampler, ReptileRegressor

SIZES = [6, 9, 13, 7]


def _table():
    """Rows numbered in X[:, 0], the group's code in X[:, 1]; y is the row number."""
    groups = np.repeat(["d", "b", "a", "c"], SIZES)  # deliberately not sorted
    order = np.random.default_rng(0).permutation(len(groups))  # groups interleaved
    groups = groups[order]
    codes = np.unique(groups, return_inverse=True)[1]
    X = np.column_stack([np.arange(len(groups)), codes]).astype(float)
    return X, X[:, 0].copy(), groups


def test_every_task_is_one_group_drawn_without_replacement():
    X, y, groups = _table()
    sampler = GroupTaskSampler(X, y, groups, n_points=5)
    assert list(sampler.groups_) == ["a", "b", "c", "d"]
    assert list(sampler.group_sizes_) == [13, 9, 7, 6]
    Xs, ys = sampler.sample_batch(np.random.default_rng(1), 400)
    assert Xs.shape == (400, 5, 2) and ys.shape == (400, 5)
    seen = {code: set() for code in range(4)}
    for Xt, yt in zip(Xs, ys):
        codes = np.unique(Xt[:, 1])
        assert len(codes) == 1  # one group per task
        assert len(np.unique(Xt[:, 0])) == 5  # no row twice in a task
        np.testing.assert_array_equal(yt, Xt[:, 0])  # rows keep their targets
        rows = Xt[:, 0].astype(int)
        assert (groups[rows] == groups[rows[0]]).all()
        seen[int(codes[0])].update(rows.tolist())
    # Over many draws every group and every row of it is used.
    assert [len(s) for s in seen.values()] == [(groups == g).sum() for g in "abcd"]


def test_same_generator_same_tasks():
    X, y, groups = _table()
    sampler = GroupTaskSampler(X, y, groups, n_points=4)
    a = sampler.sample_batch(np.random.default_rng(3), 10)
    b = sampler.sample_batch(np.random.default_rng(3), 10)
    np.testing.assert_array_equal(a[0], b[0])


def test_whole_groups_of_different_sizes():
    X, y, groups = _table()
    sampler = GroupTaskSampler(X, y, groups)
    tasks = sampler.sample_batch(np.random.default_rng(0), 8)
    assert isinstance(tasks, list) and len(tasks) == 8
    for Xt, _ in tasks:
        assert len(Xt) in SIZES and len(np.unique(Xt[:, 1])) == 1
        assert len(Xt) == (groups == groups[int(Xt[0, 0])]).sum()
    assert [len(Xt) for Xt, _ in sampler.tasks()] == [13, 9, 7, 6]
    # Equal groups stack.
    even = np.repeat([1, 2, 3], 5)
    Xs, ys = GroupTaskSampler(np.ones((15, 1)), np.ones(15), even).sample_batch(
        np.random.default_rng(0), 4
    )
    assert Xs.shape == (4, 5, 1)


@pytest.mark.parametrize("n_points", [None, 5])
def test_meta_fit_on_groups(n_points):
    # Groups are lines with their own slope; meta-learning must find that structure.
    rng = np.random.default_rng(0)
    n_groups, per = 60, 12
    slopes = rng.uniform(-2, 2, n_groups)
    sizes = rng.integers(8, per + 1, n_groups)
    x = rng.uniform(-1, 1, sizes.sum())
    g = np.repeat(np.arange(n_groups), sizes)
    y = slopes[g] * x + 0.05 * rng.normal(size=len(x))
    sampler = GroupTaskSampler(x[:, None], y, g, n_points=n_points, random_state=0)
    params = dict(n_meta_iter=300, meta_batch_size=4, device="cpu", random_state=0, adapt_steps=16)
    model = ReptileRegressor(**params).meta_fit(sampler)
    scratch = ReptileRegressor(**params)
    errors = {"meta": [], "scratch": []}
    for slope in rng.uniform(-2, 2, 20):
        xs, xq = rng.uniform(-1, 1, (5, 1)), np.linspace(-1, 1, 20)[:, None]
        for name, est in (("meta", model), ("scratch", scratch)):
            pred = est.fit(xs, slope * xs[:, 0]).predict(xq)
            errors[name].append(np.mean((pred - slope * xq[:, 0]) ** 2))
    assert np.mean(errors["meta"]) < 0.5 * np.mean(errors["scratch"]), errors


def test_dataframe_with_feature_names_and_column_names():
    X, y, groups = _table()
    df = pd.DataFrame({"row": X[:, 0], "code": X[:, 1], "target": y, "site": groups})
    sampler = GroupTaskSampler(df, "target", "site", n_points=3)
    assert list(sampler.feature_names_in_) == ["row", "code"]
    assert sampler.n_features_in_ == 2
    same = GroupTaskSampler(df[["row", "code"]], df["target"], df["site"], n_points=3)
    a = sampler.sample_batch(np.random.default_rng(0), 5)
    b = same.sample_batch(np.random.default_rng(0), 5)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(TypeError, match="needs X to be a pandas DataFrame"):
        GroupTaskSampler(X, y, "site")
    with pytest.raises(KeyError, match="not a column"):
        GroupTaskSampler(df, "target", "station")


def test_small_groups_raise_or_are_skipped_with_a_warning():
    X, y, groups = _table()
    with pytest.raises(ValueError, match=r"2 of 4 groups have fewer than 8 rows: 'c' \(7 rows\)"):
        GroupTaskSampler(X, y, groups, n_points=8)
    with pytest.warns(UserWarning, match="2 of 4 groups .* skipped"):
        sampler = GroupTaskSampler(X, y, groups, n_points=8, small_groups="skip")
    assert list(sampler.groups_) == ["a", "b"] and list(sampler.skipped_groups_) == ["c", "d"]
    Xs, _ = sampler.sample_batch(np.random.default_rng(0), 50)
    assert set(groups[Xs[:, :, 0].astype(int).ravel()]) <= {"a", "b"}
    with pytest.raises(ValueError, match="No group is left"):
        GroupTaskSampler(X, y, groups, n_points=20, small_groups="skip")
    # Without n_points a group needs two rows.
    with pytest.raises(ValueError, match="fewer than 2 rows: 9 \\(1 rows\\)"):
        GroupTaskSampler(np.ones((4, 1)), np.ones(4), [1, 1, 1, 9])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(n_points=1), ValueError, "n_points"),
        (dict(small_groups="drop"), ValueError, "small_groups"),
    ],
)
def test_bad_parameters(kwargs, error, message):
    X, y, groups = _table()
    with pytest.raises(error, match=message):
        GroupTaskSampler(X, y, groups, **kwargs)


def test_bad_data_is_reported():
    X, y, groups = _table()
    X_nan = X.copy()
    X_nan[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GroupTaskSampler(X_nan, y, groups)
    with pytest.raises(ValueError, match="different numbers of rows"):
        GroupTaskSampler(X, y[:-1], groups)
    labels = groups.astype(object)
    labels[5] = None
    with pytest.raises(ValueError, match="1 missing label"):
        GroupTaskSampler(X, y, labels)
    with pytest.raises(ValueError, match="missing label"):
        GroupTaskSampler(X, y, np.where(np.arange(len(y)) == 2, np.nan, 1.0))


def test_repr_is_short():
    X, y, groups = _table()
    assert repr(GroupTaskSampler(X, y, groups, n_points=3)) == (
        "GroupTaskSampler(n_groups=4, n_points=3, small_groups='error', random_state=None)"
    )
