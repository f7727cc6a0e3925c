"""Callbacks: your own code at every monitor interval of ``meta_fit``.

Pass a list to the estimators' ``callbacks`` parameter.  Every
``monitor_interval`` meta-iterations (and after the last), ``meta_fit``
records an entry of ``history_`` and hands each callback a copy of it: a
dict with ``meta_iter``, ``train_loss`` and ``adapted_train_loss`` and, when
tasks are validated, ``validation_loss`` and ``validation_adapt_steps``.  A
callback is any callable taking that dict, or a :class:`Callback`, whose
methods are also told when ``meta_fit`` begins and ends.  Callbacks are
parameters like any other: ``clone`` copies them and pickling keeps them, so
they must be picklable to save the model (a module-level function or class,
not a lambda).  In a data-parallel run every rank calls them with the same
entries; use :func:`skreptile.distributed.is_main_process` to log once.

Logging to TensorBoard, for example::

    from torch.utils.tensorboard import SummaryWriter

    class TensorBoard(Callback):
        def on_meta_fit_begin(self, info):
            self.writer = SummaryWriter()

        def on_monitor(self, record):
            for key, value in record.items():
                if key != "meta_iter":
                    self.writer.add_scalar(key, value, record["meta_iter"])

        def on_meta_fit_end(self, history):
            self.writer.close()
"""

from __future__ import annotations

from typing import Any

__all__ = ["Callback"]


class Callback:
    """Base class of ``meta_fit`` callbacks; every method does nothing unless overridden.

    Examples
    --------
    >>> from skreptile import ReptileRegressor, SineTaskSampler
    >>> from skreptile.callbacks import Callback
    >>> class Losses(Callback):
    ...     def on_meta_fit_begin(self, info):
    ...         self.seen = []
    ...     def on_monitor(self, record):
    ...         self.seen.append((record["meta_iter"], record["train_loss"]))
    >>> losses = Losses()
    >>> model = ReptileRegressor(n_meta_iter=200, monitor_interval=100, callbacks=[losses],
    ...                          random_state=0).meta_fit(SineTaskSampler(random_state=0))
    >>> [it for it, _ in losses.seen]
    [100, 200]
    """

    def on_meta_fit_begin(self, info: dict[str, Any]) -> None:
        """Called once before the first meta-iteration.

        Parameters
        ----------
        info : dict
            ``n_meta_iter`` (the length of the whole run) and ``start_iter``
            (above 0 for a resumed or warm-started run).
        """

    def on_monitor(self, record: dict[str, Any]) -> None:
        """Called with a copy of every new entry of ``history_``.

        Parameters
        ----------
        record : dict
            The entry: ``meta_iter``, ``train_loss``, ``adapted_train_loss``
            and, with validation, ``validation_loss`` and
            ``validation_adapt_steps``.
        """

    def on_meta_fit_end(self, history: dict[str, list]) -> None:
        """Called once after a completed ``meta_fit`` (not after an error or an interruption).

        Parameters
        ----------
        history : dict of str to list
            The run's whole history, as ``history_`` will hold it.
        """
