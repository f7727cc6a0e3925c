"""What a meta-fitted baseline keeps through ``clone``, as skreptile's own estimators do.

``evaluate_few_shot`` fits a fresh ``clone`` of every baseline on every task.
A baseline trained once on the meta-training table (``meta_fit``) must keep
that training through the clone, and forget only the adaptation of ``fit``,
like :class:`~skreptile.ReptileRegressor` (see
``skreptile/_estimators/learned_state.py``).
"""

from __future__ import annotations

import copy

import joblib
from sklearn.base import clone
from sklearn.exceptions import NotFittedError


class MetaFittedMixin:
    """``clone`` keeps ``_META_STATE``; ``fit`` refuses before ``meta_fit`` or after a change.

    A subclass lists in ``_META_STATE`` the attributes ``meta_fit`` learns,
    calls :meth:`_record_meta_config` at the end of ``meta_fit`` and
    :meth:`_check_meta_fitted` at the start of ``fit``.  Every constructor
    parameter shapes the meta-fitted state unless listed in ``_ADAPT_PARAMS``.
    """

    _META_STATE: tuple[str, ...] = ()
    _ADAPT_PARAMS: tuple[str, ...] = ()

    def _meta_config(self):
        """A hash of the parameters that shaped ``meta_fit``, equal across clones."""
        params = self.get_params(deep=False)
        # clone(safe=False) normalises an estimator parameter to its unfitted copy,
        # which is what ``clone`` of this baseline hands the copy.
        shaping = {
            name: clone(value, safe=False)
            for name, value in params.items()
            if name not in self._ADAPT_PARAMS
        }
        return joblib.hash(shaping)

    def _record_meta_config(self):
        self.meta_config_ = self._meta_config()

    def _check_meta_fitted(self):
        """Raise if ``meta_fit`` has not run, or a parameter that shaped it changed."""
        name = type(self).__name__
        if "meta_config_" not in self.__dict__:
            raise NotFittedError(
                f"This {name} is not meta-fitted yet: call meta_fit(X, y, groups) with the "
                "meta-training table first; fit(X, y) then adapts it to one new group's rows."
            )
        if self.meta_config_ != self._meta_config():
            shaping = sorted(set(self.get_params(deep=False)) - set(self._ADAPT_PARAMS))
            raise ValueError(
                f"A parameter that shaped this {name}'s meta_fit ({', '.join(shaping)}) changed "
                "since meta_fit: call meta_fit again, or set it back."
            )

    def __sklearn_clone__(self):
        """A copy with the same parameters and ``meta_fit`` state, not adapted by ``fit``."""
        new = super().__sklearn_clone__()
        if "meta_config_" in self.__dict__:
            for attr in (*self._META_STATE, "meta_config_"):
                if attr in self.__dict__:
                    new.__dict__[attr] = copy.deepcopy(self.__dict__[attr])
        return new
