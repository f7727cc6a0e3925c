"""Does a forked child's torch work hang after the parent used torch (issue 24, item 8)?

``python benchmarks/fork_check.py VARIANT [THREADS]``, VARIANT one of

* ``fork``: fork as is (hung: the GNU OpenMP pool does not survive a fork);
* ``threads1``: ``torch.set_num_threads(1)`` in the parent before forking;
* ``param``: the estimator's ``n_threads=1`` only (its predict finishes, a
  plain product in the child still hangs);
* ``spawn``: multiprocessing's ``"spawn"`` start method.

A child that has not finished after 20 s is killed and reported as hung.
"""

import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch

from skreptile import ReptileRegressor, SineTaskSampler


def child_predict(model, q):
    x = np.linspace(-5, 5, 20000)[:, None]
    q.put(float(model.fit(x[:10], np.sin(x[:10, 0])).predict(x).sum()))


def child_matmul(q):
    a = torch.randn(512, 512)
    q.put(float((a @ a).sum()))


def run(method, target, args, timeout=20):
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    t = time.time()
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return f"HUNG (killed after {timeout} s)"
    return f"ok in {time.time() - t:.1f} s (exit {p.exitcode})"


if __name__ == "__main__":
    variant = sys.argv[1]
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else os.cpu_count())
    model = ReptileRegressor(n_meta_iter=50, device="cpu", random_state=0).meta_fit(
        SineTaskSampler(random_state=0)
    )
    a = torch.randn(512, 512)
    (a @ a).sum()  # the parent's OpenMP pool is up
    print("threads", torch.get_num_threads(), "cpus", os.cpu_count())
    if variant == "threads1":
        torch.set_num_threads(1)
    if variant == "param":  # the estimator's own parameter; torch's count unchanged
        model.set_params(n_threads=1)
    method = "spawn" if variant == "spawn" else "fork"
    print(variant, "predict:", run(method, child_predict, (model,)))
    print(variant, "matmul:", run(method, child_matmul, ()))
