"""A faithful re-implementation of the original Reptile sine-wave demo.

One task per outer step, 5 plain-SGD steps of 10 points (one pass over the
task's 50 points), lr 0.02, outer step 0.1 annealed linearly to 0, state_dict
interpolation, as in the seed article's loop.  It is the speed and quality
reference of the benchmarks; nothing in the package uses it.
"""

import time
from copy import deepcopy

import numpy as np
import torch
from torch import nn


def make_model():
    return nn.Sequential(
        nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )


def train_on_batch(model, x, y, lr):
    x, y = torch.Tensor(x), torch.Tensor(y)
    model.zero_grad()
    loss = (model(x) - y).pow(2).mean()
    loss.backward()
    for p in model.parameters():
        p.data -= lr * p.grad.data


def meta_train(n_iterations=30000, seed=0, inner_lr=0.02, outer_lr0=0.1, ntrain=10):
    """Run the demo's loop; return the model and the wall time in seconds."""
    rng = np.random.RandomState(seed)
    torch.manual_seed(seed)
    x_all = np.linspace(-5, 5, 50)[:, None]
    model = make_model()
    t0 = time.perf_counter()
    for iteration in range(n_iterations):
        weights_before = deepcopy(model.state_dict())
        phase = rng.uniform(low=0, high=2 * np.pi)
        ampl = rng.uniform(0.1, 5)
        y_all = np.sin(x_all + phase) * ampl
        inds = rng.permutation(len(x_all))
        for start in range(0, len(x_all), ntrain):
            mb = inds[start : start + ntrain]
            train_on_batch(model, x_all[mb], y_all[mb], inner_lr)
        weights_after = model.state_dict()
        outer = outer_lr0 * (1 - iteration / n_iterations)
        model.load_state_dict(
            {
                n: weights_before[n] + (weights_after[n] - weights_before[n]) * outer
                for n in weights_before
            }
        )
    return model, time.perf_counter() - t0


def adapt_and_predict(model, x_support, y_support, x_query, steps, lr=0.02):
    """The demo's test procedure: full-batch SGD on the support points from the meta weights."""
    weights = deepcopy(model.state_dict())
    predictions = {}
    for step in range(max(steps) + 1):
        if step in steps:
            with torch.no_grad():
                predictions[step] = model(torch.Tensor(x_query)).numpy()[:, 0]
        if step < max(steps):
            train_on_batch(model, x_support, y_support[:, None], lr)
    model.load_state_dict(weights)
    return predictions
