"""Docstring blocks shared by the Reptile estimators, written once.

A class docstring holds markers such as ``{shared_meta}``; :func:`fill`
replaces them with the blocks below (plain ``str.replace``, so docstrings need
no brace escaping).
"""

BLOCKS = {
    "shared_meta": """\
    meta_lr_schedule : {"linear", "constant"}, default="linear"
        "linear" anneals ``eps`` linearly to 0 over ``n_meta_iter``, as in the paper.
    inner_steps : int, default=5
        Gradient steps on each task per meta-iteration, at least 2 for
        meta-learning: ``inner_steps=1`` is ordinary training on all tasks
        pooled (a baseline to compare with).
    inner_batch_size : int or None, default=10
        Points per inner step, visited in shuffled passes over the task; None
        uses all of a task's points at every step.
    inner_lr : float, default=0.1
        Step size of the inner optimiser (on standardised data).
    inner_optimizer : {"sgd", "adam"}, default="sgd"
        Inner optimiser.  "sgd": ``w <- w - inner_lr * g``.  "adam": the
        optimiser of the Reptile paper's code (TensorFlow's Adam with
        ``beta1 = 0``: ``v <- 0.999 v + 0.001 g^2``, ``w <- w - inner_lr *
        sqrt(1 - 0.999^t) g / (sqrt(v) + 1e-8)``), whose state ``v, t`` is not
        part of the weights: it is kept across tasks and meta-iterations (one
        state per task of a meta-batch), and :meth:`fit` starts from the state
        meta-training ended with (``inner_optimizer_state_``), as the paper's
        evaluation does.  The paper pairs it with ``inner_lr=0.001``.""",
    "shared_run": """\
    transductive : bool, default=False
        Only matters for networks with batch normalisation, which always
        normalises with the statistics of the batch at hand (there are no
        running statistics: every task is new).  False (non-transductive)
        predicts every query point in a batch made of the training points of
        :meth:`fit` and that one point, so that a prediction never depends on
        the other query points.  True normalises over the query batch itself,
        as the paper's transductive results do.
    device : str or torch.device, default="auto"
        Where the computation runs: "cpu", "cuda", "cuda:N", "mps" or a
        ``torch.device`` runs every call there; "auto" decides per call from
        its work: :meth:`fit` and :meth:`predict` (one task) run on the CPU,
        and :meth:`meta_fit` and the batched calls (:meth:`few_shot_predict`,
        evaluation, the choice of adaptation) run on the accelerator (CUDA,
        then MPS) when there is one and a step is large enough to win there
        (about 32 tasks of ten points for the default network), else on the
        CPU (see :doc:`/user_guide/devices`).  A device that is not available
        is reported by :meth:`meta_fit` and :meth:`fit`, not when the
        estimator is created.
    n_threads : int, "auto" or None, default="auto"
        The CPU threads of every call (:meth:`meta_fit`, :meth:`fit`,
        :meth:`predict`, ...), restored when the call returns.  Many tasks at
        once (a large meta-batch, :meth:`few_shot_predict`, evaluation) are
        adapted in cache-sized blocks, and blocks run on several threads:
        "auto" uses one per available core, an integer that many (at most one
        per block); results do not depend on it.  Within a thread, "auto"
        runs small matrix products (under 2**23 multiply-adds, as for the
        default networks) on one torch thread, which is as fast on a quiet
        machine and many times faster on a busy one, and larger ones with the
        caller's count; an integer (1 to 1024, checked again before a loaded
        model's :meth:`predict`) pins the count.  None leaves torch's
        setting alone and adapts blocks on the calling thread only.  With
        torch's OpenMP backend the count belongs to the calling thread: other
        threads of the program keep theirs.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation, the order of points and, unless the sampler
        has its own seed, the tasks drawn.  Same seed, same result on the CPU.
    verbose : int, default=0
        If positive, :meth:`meta_fit` shows a progress bar (rate, time left,
        latest losses); from 2, it also prints every entry of ``history_``.
    {early_stopping}
    n_iter_no_change : int, default=10
        Patience of early stopping, in validation checks (each
        ``monitor_interval`` meta-iterations).
    monitor_interval : int, default=100
        Meta-iterations between two entries of ``history_`` (and validation
        checks).
    warm_start : bool, default=False
        If True and the estimator is meta-fitted, :meth:`meta_fit` continues
        the run: as ``n_estimators`` in scikit-learn's gradient boosting,
        ``n_meta_iter`` is the length of the whole run, and the call goes on
        from the ``n_meta_iter_`` meta-iterations done to ``n_meta_iter``, on
        the step-size schedule of the whole run, with the tasks an
        uninterrupted run would have drawn.  Two calls (``n_meta_iter=100``,
        then ``200``) give the weights of one call of 200 with a constant
        schedule; with the linear one, the first call annealed to 0 at 100
        and the second goes on from the step size of iteration 100 of 200.
    checkpoint_path : str, path-like or None, default=None
        File where :meth:`meta_fit` saves its state every ``checkpoint_interval``
        meta-iterations and when interrupted (atomically: a crash while
        writing keeps the previous one).  The path is checked before training
        starts.  If the file exists when :meth:`meta_fit` starts, it resumes
        from it, to the result an uninterrupted run would have had; the
        parameters and the tasks must be the same.  The file is kept when
        :meth:`meta_fit` completes, marked completed: the same call then
        gives the model back without training; remove it once the model is
        saved (see :doc:`/user_guide/persistence`).
    checkpoint_interval : int, default=1000
        Meta-iterations between two checkpoints.
    callbacks : list or None, default=None
        Your own code at every ``monitor_interval``: each callback, a callable
        or a :class:`skreptile.callbacks.Callback`, gets a copy of every new
        entry of ``history_`` (for TensorBoard, MLflow or a live plot).  They
        do not change what is learned.""",
    "shared_attributes": """\
    meta_params_ : ndarray of shape (n_params,)
        Meta-learned initial weights, flattened (set by :meth:`meta_fit`).
    params_ : ndarray of shape (n_params,)
        Weights after the last :meth:`fit`.
    x_mean_, x_scale_ : ndarray of shape (n_features,)
        Input standardisation, computed once on tasks of their own (all of a
        finite list of tasks, else 256), whatever ``n_meta_iter``.
    n_features_in_ : int
        Number of features of the meta-training tasks (or of :meth:`fit`
        without meta-training); :meth:`fit` refuses others.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of the meta-training tasks (or of :meth:`fit` without
        meta-training), when they are all strings; :meth:`fit` checks them,
        and their order, in scikit-learn's words.
    meta_config_ : dict
        The parameters that shaped ``meta_params_``, as :meth:`meta_fit` saw
        them; :meth:`fit` refuses to adapt if one has changed since.
    inner_optimizer_state_ : dict or None
        With ``inner_optimizer="adam"``, the optimiser's state at the end of
        meta-training (per task slot); None for SGD.
    history_ : dict of list
        Set by :meth:`meta_fit`, one entry every ``monitor_interval``
        meta-iterations: ``"meta_iter"`` (counted over the whole run),
        ``"train_loss"`` (mean loss of the meta-batch tasks at their first
        inner step, i.e. of the initialisation, averaged since the previous
        entry), ``"adapted_train_loss"`` (the same at the last inner step)
        and, with validation tasks, ``"validation_loss"`` (query loss after
        adaptation: squared error in the targets' units for regressors, log
        loss for classifiers; with ``adapt_steps='auto'`` the lowest over the
        candidate step counts) and ``"validation_adapt_steps"`` (the number of
        adaptation steps that gave it).  ``pandas.DataFrame(history_)``
        tabulates it.
    n_meta_iter_ : int
        Meta-iterations run so far, over warm starts (fewer than asked after
        early stopping).
    best_iteration_ : int
        Meta-iteration of the lowest validation loss (with validation tasks).
    best_validation_loss_ : float
        That loss.""",
    "shared_notes": """\
    **Two kinds of learned state.** :meth:`meta_fit` learns the initialisation
    and everything that shapes it (``meta_params_``, the scaling, the number,
    names and order of the features, the number of outputs, the image shape,
    the inner optimiser's state, ``meta_config_``); :meth:`fit` adapts a copy
    of it (``params_``).  Only :meth:`fit` makes the model fitted for
    ``check_is_fitted``.  Every call validates everything before it changes
    anything: a refused or failed :meth:`fit`, and a failed or interrupted
    :meth:`meta_fit`, leave the estimator exactly as it was (an interrupted
    run's progress is in its checkpoint, when ``checkpoint_path`` is set).

    **Clone, cross-validation, grid search.** ``sklearn.base.clone`` keeps the
    meta-learned state and drops the adaptation (through
    ``__sklearn_clone__``), so ``cross_val_score`` and ``GridSearchCV`` on a
    meta-fitted model adapt every fold from the meta-learned initialisation,
    in joblib workers too.  The adaptation parameters (``adapt_steps``,
    ``adapt_lr``, ``transductive``, ``device``, ``n_threads``, ``verbose``, and
    ``random_state``, which :meth:`fit` only uses without :meth:`meta_fit`)
    can be changed and searched freely.  The parameters that shaped the
    initialisation (``module``, ``hidden_layer_sizes`` and ``activation``
    without a ``module``, ``standardize``, and the meta-training parameters
    ``n_meta_iter`` to ``inner_optimizer``) are recorded in ``meta_config_``:
    once one of them changes, :meth:`fit` and :meth:`predict` raise a
    ``ValueError`` until :meth:`meta_fit` is called again.

    **Persistence.** ``pickle``, ``joblib`` and ``skops.io`` save the learned
    state as numpy arrays with the skreptile version; the torch network is
    rebuilt after loading.  A model saved with a device that the loading
    machine lacks (a CUDA model loaded without CUDA) runs on the CPU, with a
    warning; a model saved by another version of skreptile loads with an
    :class:`~skreptile.InconsistentVersionWarning`.  ``module`` is saved by
    reference, so a lambda or a class defined inside a function cannot be
    pickled: use a class or a ``functools.partial`` of one defined in a module.""",
}


EARLY_STOPPING_FIXED = """\
    early_stopping : bool, default=False
        Stop :meth:`meta_fit` when the validation loss has not improved for
        ``n_iter_no_change`` consecutive checks, and keep the weights with the
        best validation loss.  Needs ``validation_tasks`` in :meth:`meta_fit`."""

EARLY_STOPPING_AUTO = """\
    early_stopping : bool or "auto", default="auto"
        Stop :meth:`meta_fit` when the validation loss has not improved by a
        factor ``1 - tol`` for ``n_iter_no_change`` consecutive checks, and
        keep the weights with the best validation loss.  "auto" stops early
        when there are validation tasks held out from a finite set of tasks
        (``validation_fraction``) or given as ``validation_tasks``: a few dozen
        tasks are overfitted by a long run.  With an infinite sampler every
        task is new, and "auto" runs all ``n_meta_iter`` iterations (as it
        does with ``warm_start=True``, which continues one run).
    validation_fraction : float in [0, 1) or None, default=0.2
        Share of the tasks of a finite sampler (a sequence of tasks, a
        :class:`~skreptile.GroupTaskSampler`) held out, as whole tasks, before
        meta-training: at least 2 and at most 100, and none when fewer than 8
        would be left.  An infinite sampler gives 64 fresh held-out tasks
        instead.  Each held-out task is split (up to 4 times at random) into
        ``n_support`` support points and the rest as query.  They serve early
        stopping and the choice of ``adapt_steps``/``adapt_lr`` "auto".
        Ignored when :meth:`meta_fit` gets ``validation_tasks``; None or 0
        holds nothing out.
    n_support : int or None, default=None
        The number of labelled points you plan to give :meth:`fit` for a new
        task: the support size of the held-out validation tasks (half of a
        task's points for smaller tasks).  None monitors meta-training with
        10 and, for a finite sampler, chooses "auto" adaptation for 4, 10 and
        25 support rows, each used by :meth:`fit` for the number of rows
        nearest it (``adaptation_by_support_``); for an infinite sampler, None
        is 10.
    tol : float in [0, 1), default=1e-3
        Relative improvement of the best validation loss that counts as
        progress for early stopping."""


_STOPPING_AUTO = EARLY_STOPPING_AUTO[: EARLY_STOPPING_AUTO.index("    validation_fraction")]

EARLY_STOPPING_AUTO_CLASSES = (
    _STOPPING_AUTO
    + """\
    validation_fraction : float in [0, 1) or None, default=0.2
        Share held out before meta-training, to validate on classes (or
        examples) meta-training never sees.  With a
        :class:`~skreptile.ClassTaskSampler`: that share of its classes, with
        all their augmented variants, when enough classes are left for
        ``n_way``-way tasks; otherwise that share of every class's examples
        (with few base classes, new examples of the same classes).  64
        validation episodes are drawn from what is held out.  Any other
        sampler gives 64 fresh tasks, split by class.  They serve early
        stopping and the choice of ``adapt_steps``/``adapt_lr`` "auto".
        Ignored when :meth:`meta_fit` gets ``validation_tasks``; None or 0
        holds nothing out.
    n_support : int or None, default=None
        The number of labelled examples per class ("shots") you plan to give
        :meth:`fit` for a new task: the support size of the validation
        episodes, with up to 5 query examples per class.  None monitors
        meta-training with 1 shot and, with a ``ClassTaskSampler``, chooses
        "auto" adaptation for 1 and 5 shots, each used by :meth:`fit` for the
        number of examples per class nearest it
        (``adaptation_by_support_``).
    tol : float in [0, 1), default=1e-3
        Relative improvement of the best validation loss that counts as
        progress for early stopping."""
)


def fill(cls):
    """Class decorator: put the shared blocks into ``cls.__doc__``."""
    doc = cls.__doc__
    for name, block in BLOCKS.items():
        doc = doc.replace("    {" + name + "}", block)
    auto = "validation_fraction" in cls.__init__.__code__.co_varnames
    stopping = EARLY_STOPPING_AUTO_CLASSES if cls._shots_per_class else EARLY_STOPPING_AUTO
    doc = doc.replace("    {early_stopping}", stopping if auto else EARLY_STOPPING_FIXED)
    cls.__doc__ = doc
    return cls
