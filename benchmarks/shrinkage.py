"""Does the adapted model shrink a new group's offset as a random effect is shrunk?

Issue 23, item 4.  The truth is a linear model plus a random intercept,
``y = X beta + b_group + noise`` with ``b ~ N(0, tau^2)`` and noise
``N(0, 1)``.  For a new group with ``K`` support rows the best offset is the
BLUP, the mean support residual times ``K tau^2 / (K tau^2 + 1)``.  For each
model this script measures the *effective shrinkage*: the slope, over 300 new
groups, of the shift that adaptation gives the group's query predictions
(adapted minus not adapted) against the group's mean support residual before
adaptation.  A slope at the BLUP factor is a random effect's shrinkage; above
it the model chases noise, below it it ignores the group.  It also prints each
model's query MSE over the oracle BLUP's (the true ``beta`` and variances).

    python benchmarks/shrinkage.py [--taus 0.5 1 2] [--seeds 0]
"""

import argparse

import numpy as np

from skreptile import ReptileRegressor

BETA = np.array([1.0, -2.0, 0.5])
KS = (2, 4, 10, 25)


def table(n_groups, n_rows, tau, rng):
    groups = np.repeat(np.arange(n_groups), n_rows)
    X = rng.normal(size=(n_groups * n_rows, 3))
    y = X @ BETA + tau * rng.normal(size=n_groups)[groups] + rng.normal(size=len(X))
    return X.reshape(n_groups, n_rows, 3), y.reshape(n_groups, n_rows)


def measure(model, X, y, K):
    """(effective shrinkage, query MSE) of ``model`` on new groups with ``K`` support rows.

    The shrinkage is measured for the network alone; with a base model the offset
    is the BLUP by construction (``random_intercept_``), averaged with the
    network at the weights printed after the row (``network_weights_``), and
    NaN is printed.
    """
    Xs, ys, Xq, yq = X[:, :K], y[:, :K], X[:, K:], y[:, K:]
    adapted = model.few_shot_predict(Xs, ys, Xq)
    mse = float(np.mean((adapted - yq) ** 2))
    if getattr(model, "base_estimator_", None) is not None:
        return float("nan"), mse
    steps = model.get_params()["adapt_steps"]
    model.set_params(adapt_steps=0)  # the meta-learned initialisation, knowing nothing of the group
    try:
        start_q = model.few_shot_predict(Xs, ys, Xq)
        start_s = model.few_shot_predict(Xs, ys, Xs)
    finally:
        model.set_params(adapt_steps=steps)
    residual = (ys - start_s).mean(axis=1)
    shift = (adapted - start_q).mean(axis=1)
    return float(residual @ shift / (residual @ residual)), mse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taus", type=float, nargs="*", default=[0.5, 1.0, 2.0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    args = parser.parse_args(argv)
    print("tau seed model            " + "".join(f"   K={K}: slope (BLUP) MSE/oracle" for K in KS))
    for tau in args.taus:
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            X, y = table(100, 40, tau, rng)
            groups = np.repeat(np.arange(100), 40)
            Xn, yn = table(300, 40, tau, rng)
            for name, base in (("network alone", None), ('"auto" (default)', "auto")):
                model = ReptileRegressor(random_state=seed, base_estimator=base, device="cpu")
                model.meta_fit(X.reshape(-1, 3), y.reshape(-1), groups=groups)
                cells = []
                for K in KS:
                    slope, mse = measure(model, Xn, yn, K)
                    blup = K * tau**2 / (K * tau**2 + 1.0)
                    resid = yn[:, :K] - Xn[:, :K] @ BETA
                    oracle_q = Xn[:, K:] @ BETA + blup * resid.mean(axis=1, keepdims=True)
                    oracle = np.mean((oracle_q - yn[:, K:]) ** 2)
                    cells.append(f"   {slope:5.2f} ({blup:4.2f}) {mse / oracle:5.3f}")
                weights = model.__dict__.get("network_weights_")
                print(
                    f"{tau:3.1f} {seed:4d} {name:17s}" + "".join(cells),
                    f"  network weights {weights}" if weights else "",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
