"""The estimator as the meta-training loop sees it: :class:`EstimatorHooks`.

The loop in :mod:`skreptile._training` calls only the public methods of
:class:`~skreptile._training.interface.MetaFitHooks`; this class answers them
with the estimator's hooks (the abstract methods of
:class:`~skreptile._estimators.base.BaseReptile`), so that nothing outside
the estimators calls an estimator's private method.
"""

from .._training.fingerprints import fingerprint_params
from .._training.interface import MetaFitHooks, Settings, WarmStart
from .._training.stepsize import carried_backoffs
from .adaptation import fixed_adapt_lr


class EstimatorHooks(MetaFitHooks):
    """:class:`MetaFitHooks` answered by the estimator ``est``."""

    def __init__(self, est):
        self._est = est
        self.settings = Settings.from_params(est.get_params(deep=False))
        self.fingerprint = fingerprint_params(est)
        self.loss_name = est._loss
        self.shots_per_class = est._shots_per_class

    def meta_training_tasks(self, task_sampler):
        return self._est._meta_training_tasks(task_sampler)

    def pooled_base(self, sampler, by_size, validation_tasks):
        return self._est._pooled_base(sampler, by_size, validation_tasks)

    def scaling_modes(self, input_shape):
        return self._est._scaling_modes(input_shape)

    def build_net(self, n_features, n_outputs, seed, input_shape):
        return self._est._build_net(n_features, n_outputs, seed, input_shape)

    def prepare_tasks(self, tasks, with_query_y, signature):
        return self._est._prepare_tasks(tasks, with_query_y=with_query_y, signature=signature)

    def adaptation_curve(self, tasks, steps, init, lr):
        return self._est._adaptation_curve(tasks, steps, init, lr=lr)

    def query_losses(self, tasks, scaled, scaling):
        return self._est._query_losses(tasks, scaled, scaling)

    def fixed_adapt_lr(self, inner_lr):
        # The run's own inner step size, not the estimator's inner_lr_ of a previous run.
        return fixed_adapt_lr(self._est.adapt_lr, inner_lr, {})

    def warm_start(self):
        est = self._est
        if not est._is_meta_fitted():
            return None
        return WarmStart(
            theta=est.meta_params_,
            scaling=est._scaling(),
            signature=(int(est.n_features_in_), int(est.n_outputs_)),
            feature_names=getattr(est, "feature_names_in_", None),
            family_state=est._meta_family_state(),
            optimizer_state=getattr(est, "inner_optimizer_state_", None),
            n_meta_iter_done=int(getattr(est, "n_meta_iter_", 0)),
            history=getattr(est, "history_", None) or {},
            backoffs=carried_backoffs(getattr(est, "step_size_info_", None), est.inner_lr),
        )
