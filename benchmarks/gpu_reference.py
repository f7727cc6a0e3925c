"""A hand-batched Reptile sine loop in plain PyTorch: the speed reference of ``gpu_benchmark.py``.

Everything stays on the device: every meta-iteration draws its ``T`` sine tasks
with torch (amplitude U(0.1, 5), phase U(0, 2*pi), the 50-point grid of
[-5, 5], each task's points in a random order cut into 5 minibatches of 10),
adapts a 1-64-64-1 tanh perceptron per task with 5 plain SGD steps (the
weights of all tasks stacked as ``(T, in, out)`` tensors, the forward pass
with ``torch.baddbmm``, the backward pass written out and fused into the
in-place update), then moves the initialisation ``theta += eps * (mean(phi) -
theta)``.  ``lr`` 0.02 on the raw targets, as the original demo (speed does not
depend on it); a fixed ``eps``.

``ReferenceLoop.step()`` runs one meta-iteration eagerly; ``capture()`` records
one meta-iteration in a ``torch.cuda.CUDAGraph`` (random draws included: the
default CUDA generator is graph-safe), after which ``replay()`` runs it with one
launch.  Nothing in the package uses this module.
"""

import math

import torch

SIZES = (1, 64, 64, 1)
N_POINTS, N_STEPS, BATCH = 50, 5, 10


def n_params(sizes=SIZES):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


class ReferenceLoop:
    """Reptile on ``n_tasks`` sine tasks per meta-iteration, batched by hand."""

    def __init__(self, n_tasks, device, lr=0.02, eps=0.1, seed=0):
        self.T, self.device, self.lr = n_tasks, torch.device(device), lr
        torch.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        # theta: one set of weights, (1, in, out) and (1, 1, out), PyTorch's default init.
        self.theta = []
        for a, b in zip(SIZES[:-1], SIZES[1:]):
            bound = 1 / math.sqrt(a)
            self.theta.append((torch.rand(1, a, b, device=self.device) * 2 - 1) * bound)
            self.theta.append((torch.rand(1, 1, b, device=self.device) * 2 - 1) * bound)
        self.phi = [p.expand(n_tasks, *p.shape[1:]).clone() for p in self.theta]
        self.eps = torch.tensor(eps, device=self.device)
        self.grid = torch.linspace(-5, 5, N_POINTS, device=self.device)
        self.graph = None

    def _draw(self):
        T, dev = self.T, self.device
        amplitude = torch.rand(T, 1, device=dev) * 4.9 + 0.1
        phase = torch.rand(T, 1, device=dev) * (2 * math.pi)
        order = torch.rand(T, N_POINTS, device=dev).argsort(dim=1)
        x = self.grid[order]  # (T, 50): the grid in each task's own random order
        y = amplitude * torch.sin(x + phase)
        return x.unsqueeze(-1), y.unsqueeze(-1)

    def step(self):
        """One meta-iteration: draw, 5 inner SGD steps on every task, the outer step."""
        x_all, y_all = self._draw()
        for p, t in zip(self.phi, self.theta):
            p.copy_(t.expand_as(p))
        W1, b1, W2, b2, W3, b3 = self.phi
        lr = self.lr
        for s in range(N_STEPS):
            x = x_all[:, s * BATCH : (s + 1) * BATCH]  # (T, 10, 1)
            y = y_all[:, s * BATCH : (s + 1) * BATCH]
            h1 = torch.tanh(torch.baddbmm(b1, x, W1))  # (T, 10, 64)
            h2 = torch.tanh(torch.baddbmm(b2, h1, W2))  # (T, 10, 64)
            out = torch.baddbmm(b3, h2, W3)  # (T, 10, 1)
            d3 = (out - y) * (2.0 / BATCH)  # d mean((out - y)^2) / d out, per task
            d2 = torch.bmm(d3, W3.transpose(1, 2)).mul_(1 - h2 * h2)
            W3.baddbmm_(h2.transpose(1, 2), d3, alpha=-lr)
            b3.sub_(d3.sum(1, keepdim=True), alpha=lr)
            d1 = torch.bmm(d2, W2.transpose(1, 2)).mul_(1 - h1 * h1)
            W2.baddbmm_(h1.transpose(1, 2), d2, alpha=-lr)
            b2.sub_(d2.sum(1, keepdim=True), alpha=lr)
            W1.baddbmm_(x.transpose(1, 2), d1, alpha=-lr)
            b1.sub_(d1.sum(1, keepdim=True), alpha=lr)
        for p, t in zip(self.phi, self.theta):
            t.add_((p.mean(0, keepdim=True) - t) * self.eps)

    def capture(self, warm_up=3):
        """Record one meta-iteration in a CUDA graph (after a warm-up on a side stream)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(warm_up):
                self.step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step()
        self.graph = graph

    def replay(self):
        self.graph.replay()

    def finite(self):
        return all(bool(torch.isfinite(t).all()) for t in self.theta)
