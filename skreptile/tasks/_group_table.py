"""A grouped table checked, preprocessed once and sorted by group, for :class:`GroupTaskSampler`."""

import numbers
import warnings

import numpy as np
from sklearn.utils.validation import check_array

from ._columns import check_columns, check_unique_names, column, missing_labels
from ._targets import fit_target_transformer


def _transform_targets(sampler, y, learned):
    """``y`` through a clone of ``target_transformer`` fitted on it (once), checked."""
    learned["target_transformer_"], out = fit_target_transformer(sampler.target_transformer, y)
    return out


def _preprocess(sampler, X, y, learned):
    """``X`` as a float array: through ``preprocessor`` when given, else checked per column."""
    if sampler.preprocessor is None:
        check_columns(X)
        return X
    from sklearn.base import clone

    learned["preprocessor_"] = preprocessor = clone(sampler.preprocessor).fit(X, y)
    out = preprocessor.transform(X)
    if hasattr(out, "toarray"):  # a sparse one-hot encoding
        out = out.toarray()
    try:
        return check_array(out, dtype=np.float64, input_name="X")
    except ValueError as exc:
        raise ValueError(
            f"The output of preprocessor={sampler.preprocessor!r} is not a numeric table "
            f"without missing values ({exc}). Impute every column with missing values "
            "and encode every categorical or string column (e.g. SimpleImputer and "
            "OneHotEncoder in a ColumnTransformer); remainder='passthrough' passes "
            "such columns through unchanged."
        ) from None


def prepare_table(sampler, X, y, groups):
    """The learned attributes of a :class:`GroupTaskSampler` built on ``X, y, groups``.

    Checks the table and the sampler's parameters, fits its ``preprocessor``
    and ``target_transformer`` once, and sorts the rows by group (dropping
    small groups when ``small_groups="skip"``).
    """
    learned = {}
    if sampler.n_points is not None and (
        not isinstance(sampler.n_points, numbers.Integral)
        or isinstance(sampler.n_points, bool)
        or sampler.n_points < 2
    ):
        raise ValueError(f"n_points must be None or an integer >= 2, got {sampler.n_points!r}.")
    if sampler.small_groups not in ("error", "skip"):
        raise ValueError(f"small_groups must be 'error' or 'skip', got {sampler.small_groups!r}.")
    check_unique_names(X)
    if isinstance(y, str) and isinstance(groups, str) and y == groups:
        raise ValueError(
            f"y and groups both name the column {y!r}: a task's targets would be its group "
            "label, the same number for every row. Pass the target column as y and the "
            "column that tells the tasks apart as groups."
        )
    drop = []
    if isinstance(y, str):
        drop.append(y)
        y = column(X, y, "y")
    if isinstance(groups, str):
        drop.append(groups)
        groups = column(X, groups, "groups")
    if drop:
        X = X.drop(columns=drop)
    columns = getattr(X, "columns", None)
    named = columns is not None and len(columns) and all(isinstance(c, str) for c in columns)
    if named and sampler.preprocessor is None:
        learned["feature_names_in_"] = np.asarray(columns, dtype=object)
    y = check_array(y, dtype=np.float64, ensure_2d=False, input_name="y")
    if y.ndim not in (1, 2):
        raise ValueError(f"y must be 1-D or 2-D, got {y.ndim} dimensions.")
    if sampler.target_transformer is not None:
        y = _transform_targets(sampler, y, learned)
    X = _preprocess(sampler, X, y, learned)
    X = check_array(X, dtype=np.float64, input_name="X")
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {groups.shape}.")
    if not len(X) == len(y) == len(groups):
        raise ValueError(
            f"X, y and groups have different numbers of rows "
            f"({len(X)}, {len(y)} and {len(groups)})."
        )
    missing_labels(groups, "groups")
    try:
        labels, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    except TypeError as exc:
        raise TypeError(f"groups labels must be mutually comparable: {exc}") from None

    needed = 2 if sampler.n_points is None else int(sampler.n_points)
    small = sizes < needed
    if small.any():
        listed = ", ".join(
            f"{lab!r} ({n} rows)"
            for lab, n in zip(labels[small][:5].tolist(), sizes[small].tolist())
        )
        more = f" and {int(small.sum()) - 5} more" if small.sum() > 5 else ""
        message = (
            f"{int(small.sum())} of {len(labels)} groups have fewer than {needed} rows: "
            f"{listed}{more}."
        )
        if sampler.small_groups == "error":
            raise ValueError(
                message + " Lower n_points, drop those groups, or pass small_groups='skip'."
            )
        if small.all():
            raise ValueError(message + " No group is left to draw tasks from.")
        warnings.warn(message + " They are skipped.", UserWarning, stacklevel=3)
    learned["skipped_groups_"] = labels[small]
    keep = ~small
    order = np.argsort(inverse, kind="stable")
    rows_kept = keep[inverse[order]]
    order = order[rows_kept]
    learned["groups_"] = labels[keep]
    learned["group_sizes_"] = sizes[keep]
    learned["n_features_in_"] = X.shape[1]
    learned["_X"] = np.ascontiguousarray(X[order])
    learned["_y"] = np.ascontiguousarray(y[order])
    learned["_starts"] = np.concatenate([[0], np.cumsum(learned["group_sizes_"])[:-1]]).astype(
        np.intp
    )
    return learned
