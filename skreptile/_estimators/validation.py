"""Checks of an estimator's parameters and inputs that skip work already done.

``fit`` and ``predict`` are called over and over with the same parameters and
plain arrays; scikit-learn's checks would cost more than a small adaptation.
"""

import numpy as np
from sklearn import get_config

# Parameter names of every estimator class (``_get_param_names`` inspects the signature).
_PARAM_NAMES: dict[type, tuple[str, ...]] = {}


def validate_params_once(est):
    """``_validate_params``, skipped while the parameters are those last validated.

    scikit-learn validates the parameters at every ``fit`` (about 1 ms);
    adaptation is called over and over with the same ones.  The values
    validated last are remembered (the objects themselves: the constraints
    check types and ranges, which an object keeps for its life, or values
    that are immutable), and validation runs again when any of them is
    another object.  ``sklearn.set_config(skip_parameter_validation=True)``
    skips it altogether, as for scikit-learn's own estimators.
    """
    if get_config()["skip_parameter_validation"]:
        return
    cls = type(est)
    names = _PARAM_NAMES.get(cls)
    if names is None:
        names = _PARAM_NAMES[cls] = tuple(cls._get_param_names())
    state = est.__dict__
    values = tuple(state.get(name) for name in names)
    cache = state.setdefault("_cache", {})
    validated = cache.get("validated_params")
    if validated is not None and all(a is b for a, b in zip(validated, values)):
        return
    est._validate_params()
    cache["validated_params"] = values


def quick_X(est, X):
    """``X`` when it is plainly valid for a fitted model (what ``validate_data`` returns), else None.

    ``validate_data`` costs some 100 microseconds, most of it asking
    whether ``X`` is a data frame.  A float64 ndarray of finite values with
    the learned number of features, given to a model that learned no
    feature names, needs none of it; anything else goes through
    ``validate_data``, which checks and raises as before.
    """
    if (
        type(X) is np.ndarray
        and X.dtype == np.float64
        and X.ndim == 2
        and X.shape[0] >= 1
        and X.shape[1] == est.__dict__.get("n_features_in_", -1)
        and "feature_names_in_" not in est.__dict__
        and np.isfinite(X).all()
    ):
        return X
    return None
