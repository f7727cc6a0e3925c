"""The parameters both estimators share and the values each may take (scikit-learn's validation)."""

import os
from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .._engine import ACTIVATIONS

PARAMETER_CONSTRAINTS = {
    "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
    "activation": [StrOptions(set(ACTIVATIONS))],
    "module": [callable, None],
    "n_meta_iter": [Interval(Integral, 0, None, closed="left")],
    "meta_batch_size": [Interval(Integral, 1, None, closed="left")],
    "meta_lr": [Interval(Real, 0, None, closed="neither")],
    "meta_lr_schedule": [StrOptions({"linear", "constant"})],
    "inner_steps": [Interval(Integral, 1, None, closed="left")],
    "inner_batch_size": [Interval(Integral, 1, None, closed="left"), None],
    "inner_lr": [Interval(Real, 0, None, closed="neither")],
    "inner_optimizer": [StrOptions({"sgd", "adam"})],
    "adapt_steps": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
    "adapt_lr": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"}), None],
    "standardize": ["boolean"],
    "transductive": ["boolean"],
    "device": [str, torch.device],
    "n_threads": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"}), None],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "early_stopping": ["boolean", StrOptions({"auto"})],
    "validation_fraction": [Interval(Real, 0, 1, closed="left"), None],
    "n_support": [Interval(Integral, 1, None, closed="left"), None],
    "tol": [Interval(Real, 0, 1, closed="left")],
    "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
    "monitor_interval": [Interval(Integral, 1, None, closed="left")],
    "warm_start": ["boolean"],
    "checkpoint_path": [str, os.PathLike, None],
    "checkpoint_interval": [Interval(Integral, 1, None, closed="left")],
    "callbacks": [list, None],
}
