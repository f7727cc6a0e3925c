"""The columns of a user's table: named columns, missing values, numeric checks."""

import numpy as np


def is_missing(value):
    return value is None or (isinstance(value, float) and value != value)


def missing_labels(labels, name):
    """A ``ValueError`` when the 1-D array ``labels`` has missing values (NaN or None).

    np.unique would make each NaN a label (of a class, a group) of its own.
    """
    missing = (
        np.isnan(labels)
        if labels.dtype.kind == "f"
        else np.array([is_missing(v) for v in labels.tolist()], dtype=bool)
        if labels.dtype.kind == "O"
        else np.zeros(len(labels), dtype=bool)
    )
    if missing.any():
        raise ValueError(
            f"{name} has {int(missing.sum())} missing label(s) (first at row "
            f"{int(np.argmax(missing))}); give every row a label or drop those rows."
        )


def column(frame, name, what):
    if not hasattr(frame, "columns"):
        raise TypeError(
            f"{what}={name!r} names a column, which needs X to be a pandas DataFrame; "
            f"got {type(frame).__name__}. Pass the {what} as an array instead."
        )
    if name not in frame.columns:
        raise KeyError(
            f"{what}={name!r} is not a column of X; its columns are {list(frame.columns)}."
        )
    return frame[name]


def check_unique_names(X):
    """A ``ValueError`` naming the column names that ``X`` has more than once."""
    columns = getattr(X, "columns", None)
    if columns is None or columns.is_unique:
        return
    repeated = list(dict.fromkeys(columns[columns.duplicated()].tolist()))
    raise ValueError(
        f"X has several columns named {_listed(repeated)}; a column must be named once, "
        "so that it can be told apart. Rename or drop the copies, e.g. "
        "X = X.loc[:, ~X.columns.duplicated()] to keep the first of each."
    )


def _listed(names):
    return ", ".join(repr(n) for n in names[:5]) + (
        f" and {len(names) - 5} more" if len(names) > 5 else ""
    )


def check_columns(X):
    """A ``ValueError`` naming the first DataFrame column that is not numeric or has missing values."""
    if not hasattr(X, "columns") or not hasattr(X, "dtypes"):
        return
    import pandas as pd

    check_unique_names(X)
    for name in X.columns:
        col = X[name]
        # Numbers stored with dtype object (read from a mixed source, or built row by
        # row) are numbers: check_array converts them.
        numbers_as_objects = col.dtype == object and pd.api.types.infer_dtype(col, skipna=True) in (
            "floating",
            "integer",
            "mixed-integer-float",
        )
        if not (
            pd.api.types.is_numeric_dtype(col)
            or pd.api.types.is_bool_dtype(col)
            or numbers_as_objects
        ):
            example = col.dropna().iloc[0] if col.notna().any() else None
            raise ValueError(
                f"Column {name!r} of X is not numeric (dtype {col.dtype}, e.g. {example!r}). "
                "Pass preprocessor= to GroupTaskSampler, e.g. a ColumnTransformer with a "
                f"OneHotEncoder for {name!r}, fitted once on the meta-training rows; or drop "
                "the column."
            )
        n_missing = int(col.isna().sum())
        if n_missing:
            raise ValueError(
                f"Column {name!r} of X has {n_missing} missing value(s). Pass preprocessor= "
                "to GroupTaskSampler, e.g. a ColumnTransformer with a SimpleImputer for "
                f"{name!r}, fitted once on the meta-training rows; or drop those rows."
            )
