"""The interface every engine implements, and what the torch engines share.

A backend computes the inner steps of many tasks at once, each task with its
own copy of the weights, in a *workspace* of task slots.  The one inner-step
loop (:func:`skreptile._engine.inner.run_steps`) and the one Reptile outer
loop (:func:`skreptile._engine.outer.meta_train`) call nothing else, so a new
engine (an accelerator's, say) is one new module implementing
:class:`Backend`, and one more case in
:func:`skreptile._engine.choice.choose_backend`.
"""

import abc

import torch


class Workspace:
    """Per-task parameters and gradients of ``n_tasks`` tasks (torch backends), and their views.

    Attributes
    ----------
    params, grad : Tensor
        Flat buffers, updated in place by the optimiser.
    n_tasks : int
    rng : torch.Generator or None
        Seeds of the dropout masks of each step, for modules with random layers.
    scratch : dict
        Buffers reused from step to step and from call to call.
    """

    def __init__(self, n_tasks, params, grad, param_views=None, grad_views=None):
        self.n_tasks = n_tasks
        self.rng = None  # the generator of dropout seeds, for modules with random layers
        self.params = params
        self.grad = grad
        self.param_views = param_views
        self.grad_views = grad_views
        self.scratch = {}


class Backend(abc.ABC):
    """One engine: workspaces of task slots, inner steps, outputs, and combining adapted weights.

    Attributes
    ----------
    kind : str
        ``"torch"`` or ``"numpy"``: which arrays the workspaces and the data are.
    blockable : bool
        Whether tasks may be adapted in cache-sized slices of a workspace
        (:func:`~skreptile._engine.threads.task_blocks`).
    block_threads : bool
        Whether such slices may run on several threads at once.
    """

    kind = "torch"
    blockable = True
    block_threads = True

    # -- workspaces ----------------------------------------------------------
    @abc.abstractmethod
    def workspace(self, n_tasks, theta):
        """Slots for ``n_tasks`` copies of weights shaped like ``theta``."""

    @abc.abstractmethod
    def broadcast(self, theta, ws):
        """Set every task's weights to ``theta``."""

    @abc.abstractmethod
    def view(self, ws, start, stop, scratch=None):
        """The tasks ``start:stop`` of ``ws`` as a workspace sharing its memory."""

    def slots(self, ws, theta, start, stop, scratch, keep_slots, n_points=None):
        """The workspace that adapts tasks ``start:stop`` of ``ws`` (of its meta-batch).

        All of ``ws`` for all its tasks; else a view onto them
        (``keep_slots``), or a workspace of the thread's own, reused.
        """
        if start == 0 and stop == ws.n_tasks:
            return ws
        if keep_slots:
            return self.view(ws, start, stop, scratch)
        sub = scratch.get(("block", stop - start))
        if sub is None:
            sub = scratch[("block", stop - start)] = self.workspace(stop - start, theta)
        return sub

    def task_data(self, x):
        """The data as this backend reads it (torch tensors, or numpy arrays on their memory)."""
        return x

    def can_slice(self, optimizer):
        """Whether tasks may be adapted in slices (blocks): plain SGD, a network that allows it.

        ``optimizer``: an :class:`~skreptile._engine.optimizers.InnerOptimizer`
        or its kind.  Adam's state is one flat buffer over all slots, and a
        custom module with random layers draws its dropout masks from one
        stream per workspace.
        """
        return getattr(optimizer, "kind", optimizer) == "sgd" and self.blockable

    # -- steps ---------------------------------------------------------------
    def fuses(self, optimizer):
        """Whether a step's outputs are those of the weights before it (the loss at ``theta``)."""
        return optimizer.kind == "sgd" and hasattr(self, "sgd_step")

    def stepper(self, ws, loss, optimizer, x=None, y=None):
        """``step(x, y, weight, measure)``: one step of every task of ``ws``, in place.

        ``x`` and ``y``: the full batch the steps will use, for a backend that
        lays it out once (:class:`~skreptile._engine.numpy_mlp.NumpyMLP`).

        Returns each task's loss on the step's outputs when ``measure``, else
        None.  Plain SGD on the perceptron is one fused pass
        (:meth:`~skreptile._engine.torch_mlp.BatchedMLP.sgd_step`); otherwise
        the gradient, then the optimiser's update.
        """
        value = loss.value
        if self.fuses(optimizer):
            sgd_step, lr = self.sgd_step, optimizer.lr

            def step(x, y, weight, measure):
                outputs = sgd_step(ws, x, y, weight, loss, lr)
                return value(outputs, y, weight) if measure else None

            return step
        gradient, update = self.gradient, optimizer.step

        def step(x, y, weight, measure):
            outputs = gradient(ws, x, y, weight, loss)
            measured = value(outputs, y, weight) if measure else None
            update(ws.params, ws.grad)
            return measured

        return step

    def task_losses(self, ws, x, y, weight, loss):
        """Each task's loss at its current weights (outputs in evaluation mode)."""
        return loss.value(self.forward_tasks(ws, x), y, weight)

    @abc.abstractmethod
    def forward_tasks(self, ws, x):
        """Outputs of every task's network on that task's inputs."""

    @abc.abstractmethod
    def predict(self, theta, x):
        """Outputs of the single network ``theta`` on ``x``."""

    # -- losses of meta-training (history) ----------------------------------
    def new_loss_sums(self, like):
        """Zeroed sums of the loss at the first and last step, for one slice of tasks."""
        return torch.zeros_like(like)

    def add_losses(self, sums, first, last, n_total):
        """``sums += `` the slice's task losses at the first and last steps over ``n_total``."""
        if first is not None:
            sums[0].add_(first.sum() / n_total)
        if last is not None:
            sums[1].add_(last.sum() / n_total)

    def add_loss_sums(self, loss_sums, sums):
        """``loss_sums += sums`` (a slice's, from :meth:`new_loss_sums`)."""
        loss_sums.add_(sums)

    # -- combining adapted weights ------------------------------------------
    @abc.abstractmethod
    def task_mean(self, ws):
        """The mean over tasks of the weights, as a flat tensor like ``theta``."""

    @abc.abstractmethod
    def task_sum(self, ws, out):
        """The sum over tasks of the weights, into ``out`` (returned)."""

    @abc.abstractmethod
    def add_task_sum(self, ws, total):
        """``total += `` the sum over tasks of the weights, as :meth:`task_sum` computes it."""

    def new_sum(self, theta):
        """A buffer for one slice's :meth:`task_sum`."""
        return torch.empty_like(theta)

    def zero_total(self, ws, theta):
        """The zeroed total of a meta-batch's slices, kept with ``ws`` across meta-iterations."""
        total = ws.scratch.get("total")
        if total is None:
            total = ws.scratch["total"] = torch.empty_like(theta)
        return total.zero_()

    def add_sum(self, total, part):
        """``total += part`` (a kept :meth:`task_sum`)."""
        total.add_(part)

    def total_mean(self, total, n_tasks):
        """The tasks' mean weights from their summed ``total``, a tensor."""
        return total.div(n_tasks)

    # -- sizes ---------------------------------------------------------------
    @abc.abstractmethod
    def block_size(self, n_points, device):
        """Tasks adapted together so that they stay in cache; None: all at once."""

    @abc.abstractmethod
    def work(self, n_tasks, n_points):
        """Multiply-adds of the largest product of one step (to choose thread counts)."""
