"""What a Reptile estimator keeps through ``clone``, pickling and parameter changes.

A meta-fitted estimator holds two kinds of learned state:

* the *meta-learned* state, set by ``meta_fit``: the initialisation
  ``meta_params_``, the scaling statistics and ``meta_config_``, the parameters
  that shaped them;
* the *adapted* state, set by ``fit``: ``params_``, ``classes_`` and, for
  networks with batch normalisation, ``support_X_``.

Everything that shapes the initialisation is meta-learned state, kept by
``clone``, pickling, ``warm_start`` and checkpoints: the number, names and
order of the features (``n_features_in_``, ``feature_names_in_``: ``fit``
checks them in scikit-learn's words), the image shape, the number of outputs,
the scaling, and the inner optimiser's state.

``clone`` keeps the first and drops the second, so that cross-validation and
grid search adapt every fold from the meta-learned initialisation.  Pickling
keeps both, as numpy arrays only: the torch network and the tensors on the
device are a cache rebuilt after loading.
"""

import abc
import contextlib
import copy
import warnings

import joblib
import numpy as np
import torch

from .._engine.device import resolve_device
from .._version import __version__

# Parameters that shape the meta-learned initialisation: changing one after
# meta_fit makes fit and predict refuse until meta_fit is called again.
# ``hidden_layer_sizes`` and ``activation`` only count without a custom ``module``.
ARCHITECTURE_PARAMS = ("hidden_layer_sizes", "activation")
META_SHAPING_PARAMS = (
    "module",
    "standardize",
    "n_meta_iter",
    "meta_batch_size",
    "meta_lr",
    "meta_lr_schedule",
    "inner_steps",
    "inner_batch_size",
    "inner_lr",
    "inner_optimizer",
    "base_estimator",  # the regressor's
)

# The learned attributes of meta_fit, which clone keeps.
META_STATE = (
    "meta_params_",
    "meta_config_",
    "x_mean_",
    "x_scale_",
    "y_mean_",
    "y_scale_",
    "n_features_in_",
    "feature_names_in_",
    "n_outputs_",
    "input_shape_",
    "inner_optimizer_state_",
    "history_",
    "n_meta_iter_",
    "best_iteration_",
    "best_validation_loss_",
    "inner_lr_",
    "step_size_info_",
    "adapt_steps_",
    "adapt_lr_",
    "adaptation_scores_",
    "adaptation_by_support_",
    "base_estimator_",
    "base_scores_",
    "random_intercept_",
    "base_mode_",
    "network_weights_",
)

_VERSION_KEY = "_skreptile_version"


class InconsistentVersionWarning(UserWarning):
    """Warning raised when an estimator is loaded with another version of skreptile.

    The learned state of one version is not guaranteed to be valid in another:
    meta-fit the model again with the installed version where possible.

    Parameters
    ----------
    estimator_name : str
        Class name of the loaded estimator.
    current_version : str
        Version of skreptile installed now.
    original_version : str
        Version of skreptile that saved the estimator.
    """

    def __init__(self, *, estimator_name, current_version, original_version):
        self.estimator_name = estimator_name
        self.current_version = current_version
        self.original_version = original_version

    def __str__(self):
        return (
            f"Loading {self.estimator_name} saved with skreptile {self.original_version} "
            f"using skreptile {self.current_version}. The learned state may not be valid "
            "in this version; meta-fit the model again with it where possible."
        )


def _same(a, b):
    """Whether two parameter values are the same, also across copies and pickling."""
    if a is b:
        return True
    try:
        if bool(a == b):
            return True
    except Exception:  # comparisons of arrays and exotic objects
        pass
    # Copies of a functools.partial (clone deep-copies parameters) are not ==,
    # but pickle to the same bytes; a lambda cannot be hashed and is only itself.
    try:
        return joblib.hash(a) == joblib.hash(b)
    except Exception:
        return False


class LearnedStateMixin(abc.ABC):
    """``clone``, pickling and parameter-change semantics of the Reptile estimators.

    It uses only the estimator's parameters and the members declared below as
    abstract, which :class:`~skreptile._estimators.base.BaseReptile` defines.
    """

    @abc.abstractmethod
    def _is_meta_fitted(self):
        """Whether ``meta_fit`` has learned an initialisation."""

    @abc.abstractmethod
    def _hidden_sizes(self):
        """``hidden_layer_sizes`` as a tuple of ints."""

    # ------------------------------------------------------- meta-shaping params
    def _meta_config(self):
        """The current values of the parameters that shape the meta-learned weights."""
        config = {}
        if self.module is None:
            config["hidden_layer_sizes"] = self._hidden_sizes()
            config["activation"] = self.activation
        for name in META_SHAPING_PARAMS:
            if hasattr(self, name):
                config[name] = getattr(self, name)
        return config

    def _check_meta_config(self):
        """Raise if a parameter that shaped ``meta_params_`` changed since ``meta_fit``."""
        recorded = self.__dict__.get("meta_config_")
        if recorded is None:
            return
        current = self._meta_config()
        # The architecture is only recorded without a custom module; a change of
        # module is reported as such.
        changed = [
            name
            for name in recorded
            if name in current and not _same(recorded[name], current[name])
        ]
        if not changed:
            return
        raise ValueError(
            f"{type(self).__name__} was meta-fitted with "
            + ", ".join(f"{name}={recorded[name]!r}" for name in changed)
            + ", but now has "
            + ", ".join(f"{name}={current[name]!r}" for name in changed)
            + ". These parameters shape the meta-learned initialisation: call meta_fit "
            "again to learn one for the new values, or set them back. Adaptation "
            "parameters (adapt_steps, adapt_lr, device) can be changed freely."
        )

    # --------------------------------------------------------------------- clone
    def __sklearn_clone__(self):
        """A copy with the same parameters and meta-learned initialisation, not adapted.

        ``sklearn.base.clone`` calls this.  The meta-learned state (see
        ``META_STATE``) is copied; the adaptation of :meth:`fit` is not, so the
        clone is unfitted for ``check_is_fitted`` until it is fitted.
        """
        new = super().__sklearn_clone__()
        if self._is_meta_fitted():
            for attr in META_STATE:
                if attr in self.__dict__:
                    new.__dict__[attr] = copy.deepcopy(self.__dict__[attr])
        fallback = self.__dict__.get("_device_fallback")
        if fallback is not None:
            new._device_fallback = fallback
        return new

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        # Copy: BaseEstimator may hand back the instance's own __dict__.
        state = dict(super().__getstate__())
        state.pop("_cache", None)  # torch objects, rebuilt after loading
        state[_VERSION_KEY] = __version__
        return state

    def __setstate__(self, state):
        state = dict(state)
        version = state.pop(_VERSION_KEY, None)
        if version != __version__:
            warnings.warn(
                InconsistentVersionWarning(
                    estimator_name=type(self).__name__,
                    current_version=__version__,
                    original_version=version or "unknown",
                ),
                stacklevel=2,
            )
        warned_before = state.pop("_device_fallback", None)
        super().__setstate__(state)
        self._fall_back_to_cpu_if_needed(warned_before)

    def _fall_back_to_cpu_if_needed(self, warned_before=None):
        """Run a loaded model on the CPU when the device it was saved with is missing."""
        if not (self._is_meta_fitted() or hasattr(self, "params_")):
            return  # nothing learned: fit reports an unavailable device as usual
        try:
            resolve_device(self.device)
        except ValueError as exc:
            self._device_fallback = str(self.device)
            if warned_before != str(self.device):
                warnings.warn(
                    f"This {type(self).__name__} was saved with device={self.device!r}, "
                    f"which is not available here: {exc} It runs on the CPU instead; "
                    "set device='cpu' to silence this warning.",
                    UserWarning,
                    stacklevel=3,
                )

    def _device_of_fallback(self):
        """The CPU if this loaded model falls back from its saved device, else None."""
        if self.__dict__.get("_device_fallback") == str(self.device):
            return torch.device("cpu")
        return None


def store_meta_fit(est, result):
    """Only now, after meta-training succeeded, does the estimator change."""
    state = est.__dict__
    for attr in (
        "params_",
        "support_X_",
        "classes_",
        "_y_1d",
        "feature_names_in_",
        "group_offset_",
        "network_weight_",
    ):
        state.pop(attr, None)
    est.meta_params_ = result.meta_params
    est.x_mean_, est.x_scale_, est.y_mean_, est.y_scale_ = result.scaling.as_tuple()
    est.n_features_in_, est.n_outputs_ = result.signature
    if result.feature_names is not None:
        est.feature_names_in_ = np.asarray(result.feature_names, dtype=object)
    est.inner_optimizer_state_ = result.optimizer_state
    state.update(est._family_attributes(result.input_shape))
    est.meta_config_ = est._meta_config()
    est.history_ = result.history
    est.n_meta_iter_ = result.n_meta_iter
    if result.best is not None:
        est.best_iteration_ = int(result.best["iteration"])
        est.best_validation_loss_ = float(result.best["loss"])
    else:
        state.pop("best_iteration_", None)
        state.pop("best_validation_loss_", None)
    # The network holds no tensors: it serves every device.  The device of
    # meta-training is not kept: under "auto" each later call chooses its own.
    est._cache = {"net": result.net}
    est.inner_lr_, est.step_size_info_ = result.inner_lr, result.step_size_info
    est.adapt_steps_, est.adapt_lr_ = result.adapt_steps, result.adapt_lr
    est.adaptation_scores_ = result.adaptation_scores
    for attr in ("base_estimator_", "base_scores_", "random_intercept_", "base_mode_"):
        state.pop(attr, None)
    state.pop("network_weights_", None)
    if result.base is not None:  # network_weights_ is the family's to settle
        state.update(result.base.attributes())
    if result.adaptation_by_support is None:
        state.pop("adaptation_by_support_", None)
    else:
        est.adaptation_by_support_ = result.adaptation_by_support


def adopt_meta_state(est, other):
    """Give ``est`` what ``other`` meta-learned (its parameters and ``meta_config_`` stay)."""
    for attr in META_STATE:
        if attr == "meta_config_":
            continue
        if attr in other.__dict__:
            est.__dict__[attr] = other.__dict__[attr]
        else:
            est.__dict__.pop(attr, None)
    est._cache = dict(other._cache)


def _snapshot(value):
    """A copy of ``value`` that no later in-place write can reach (arrays and their containers)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (dict, list, tuple)):
        return copy.deepcopy(value)
    return value


@contextlib.contextmanager
def unchanged_on_error(est):
    """Leave ``est`` exactly as it was if the block raises (or is interrupted).

    Learned arrays are saved as copies, containers of them deeply: the engine
    may train a view of one in place (a warm start's weights), and a rollback
    must give back the values, not the objects.
    """
    saved = {k: v if k == "_cache" else _snapshot(v) for k, v in est.__dict__.items()}
    cache = dict(saved.get("_cache", {}))
    try:
        yield
    except BaseException:
        est.__dict__.clear()
        est.__dict__.update(saved)
        if "_cache" in saved:
            est._cache = cache
        raise
