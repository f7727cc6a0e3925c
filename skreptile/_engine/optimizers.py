"""The inner-loop optimisers: plain SGD, and the Adam of the Reptile paper's code."""

import math

import torch

ADAM_BETA2 = 0.999
ADAM_EPSILON = 1e-8


class InnerOptimizer:
    """The inner-loop optimiser of every task slot of a workspace.

    ``"sgd"``: ``w <- w - lr * g``.

    ``"adam"``: the optimiser of the Reptile paper's code (openai/supervised-
    reptile, TensorFlow's ``AdamOptimizer(beta1=0)``): with ``beta1 = 0`` the
    first moment is the gradient itself, and
    ``v <- beta2 v + (1 - beta2) g^2``,
    ``w <- w - lr * sqrt(1 - beta2^t) * g / (sqrt(v) + 1e-8)``.
    As in that code, the optimiser's state (``v`` and the step count ``t``) is
    *not* part of the model's weights: it is kept across tasks and
    meta-iterations (one state per task slot of a meta-batch), and adaptation
    after meta-training starts from the state meta-training ended with.

    Parameters
    ----------
    kind : {"sgd", "adam"}
    lr : float
    net : BatchedMLP or BatchedModule
    ws : Workspace
        The task slots whose weights the optimiser updates.
    state : dict or None
        ``{"v": Tensor (n_params,) or (n_slots, n_params), "t": int}`` to start
        from (one ``v`` broadcast to every slot, or one per slot); None starts afresh.
    """

    def __init__(self, kind, lr, net, ws, state=None):
        self.kind = kind
        self.lr = float(lr)
        self.net = net
        self.t = 0
        self._v = self._done = None
        self._done_t = 0
        if kind == "adam":
            self._v = net.workspace(ws.n_tasks, ws.params)
            self._v.params.zero_()
            if state is not None:
                v = torch.as_tensor(state["v"], dtype=ws.params.dtype, device=ws.params.device)
                if v.dim() == 1:
                    net.broadcast(v, self._v)
                else:
                    net.set_task_params(self._v, v)
                self.t = int(state["t"])

    def step(self, params, grad):
        """Update ``params`` in place from ``grad``."""
        if self._v is None:
            params.add_(grad, alpha=-self.lr)
            return
        self.t += 1
        v = self._v.params
        v.mul_(ADAM_BETA2).addcmul_(grad, grad, value=1.0 - ADAM_BETA2)
        step = self.lr * math.sqrt(1.0 - ADAM_BETA2**self.t)
        params.addcdiv_(grad, v.sqrt().add_(ADAM_EPSILON), value=-step)

    def mark_done(self):
        """Remember the state as of now (the end of a meta-iteration), on the device.

        An interruption inside the next meta-iteration then checkpoints this
        state, not one that is part-way through it.
        """
        if self._v is None:
            return
        if self._done is None:
            self._done = self._v.params.clone()
        else:
            self._done.copy_(self._v.params)
        self._done_t = self.t

    def state(self, per_slot=True, done=False):
        """The state to continue from: per slot, or averaged over slots; None for SGD.

        ``done=True`` gives the state :meth:`mark_done` last remembered.
        """
        if self._v is None:
            return None
        slots, t = self._v, self.t
        if done and self._done is not None:
            slots = self.net.workspace(self._v.n_tasks, self._v.params)
            slots.params.copy_(self._done)
            t = self._done_t
        v = self.net.all_task_params(slots) if per_slot else self.net.task_mean(slots)
        return {"v": v.detach().cpu().numpy().copy(), "t": t}
