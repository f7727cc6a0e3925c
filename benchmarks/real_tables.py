"""Few-shot regression on real grouped tables: skreptile with all defaults against baselines.

Tables (none ships with skreptile; each is skipped when its file is absent):

* ``beijing``: the UCI Beijing air-quality readings (``skreptile.datasets``),
  one task per station-day: the temperature against the hour, pressure, dew
  point, rain and wind speed (a random sample of station-days);
* ``txhousing``: a Texas city's monthly median sale price from its sales,
  volume, listings, inventory, year and month;
* ``barrero_maize``: a field-season's plot yields from the plots' traits;
* ``kc_house``: the log price of houses in a zip code from their description;
* ``chem97``: a school's A-level chemistry scores from its students' gender,
  age and GCSE score (schools of at least 10 students).

For every table, several random splits of the *groups* into meta-training
groups and new groups; every new group gives one task with ``K`` support rows
and the rest of its rows as query.  Every method sees the same rows.  Methods:

* ``skreptile``: ``ReptileRegressor(random_state=split)``, every parameter
  at its default but ``n_meta_iter`` (step sizes, validation, early stopping,
  adaptation for 4, 10 and 25 support rows, and the statistician's model
  averaged with the network, chosen automatically);
* ``support mean``: the mean of the support targets;
* ``per-group RidgeCV``: a ridge fitted on the support rows alone;
* ``HGB + offset`` and ``ridge + offset``: a global model fitted on every
  meta-training row, plus the new group's mean residual on its support rows;
* ``HGB + BLUP`` and ``ridge + BLUP``: the same global models plus the mean
  residual shrunk as a random intercept's BLUP
  (:class:`skreptile.evaluation.PooledRandomIntercept`, variances from
  out-of-group residuals of one ``GroupKFold`` cross-fitting per model and split);
* ``LMM (intercept+slopes)``: a linear mixed model with a random intercept and
  random slopes, the new group's effects by their BLUP
  (:class:`skreptile.evaluation.LinearMixedModel`);
* ``pooled net + fine-tune``: the same network trained on all meta-training
  rows pooled, then fine-tuned on the support rows, its fine-tuning steps and
  step size chosen on the same held-out validation groups as skreptile's.

Run ``python benchmarks/real_tables.py`` (full) or ``--quick`` (CI size).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(
    os.environ.get(
        "SKREPTILE_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
)
GROUPED = DATA / "grouped-tables"


def _frame(name):
    import pandas as pd

    return pd.read_csv(GROUPED / name)


def load_txhousing():
    df = _frame("txhousing.csv")
    cols = ["year", "month", "sales", "volume", "listings", "inventory"]
    df = df.dropna(subset=cols + ["median"])
    return df[cols].astype(float), df["median"].to_numpy(float), df["city"].to_numpy()


def load_barrero_maize():
    df = _frame("barrero_maize.csv")
    cols = [
        "daystoflower",
        "plantheight",
        "earheight",
        "population",
        "lodged",
        "moisture",
        "testweight",
    ]
    df = df.dropna(subset=cols + ["yield"])
    return df[cols].astype(float), df["yield"].to_numpy(float), df["env"].astype(str).to_numpy()


def load_kc_house():
    df = _frame("kc_house.csv")
    cols = [c for c in df.columns if c not in ("price", "zipcode")]
    return df[cols].astype(float), np.log(df["price"].to_numpy(float)), df["zipcode"].to_numpy()


def load_beijing(n_days=800, seed=0):
    from skreptile.datasets import beijing_daily_tasks, load_beijing_air_quality

    frame = load_beijing_air_quality(DATA / "beijing-air-quality")
    tasks = beijing_daily_tasks(
        frame, target="TEMP", features=("hour", "PRES", "DEWP", "RAIN", "WSPM"), min_rows=20
    )
    groups = tasks.groups.to_numpy()
    chosen = np.random.default_rng(seed).choice(np.unique(groups), n_days, replace=False)
    keep = np.isin(groups, chosen)
    return tasks.X[keep].reset_index(drop=True), tasks.y.to_numpy()[keep], groups[keep]


def load_chem97(min_students=10):
    df = _frame("chem97.csv")
    df = df[df.groupby("school")["school"].transform("size") >= min_students]
    X = df[["age", "gcsescore"]].astype(float)
    X.insert(0, "female", (df["gender"] == "F").astype(float))
    return X, df["score"].to_numpy(float), df["school"].to_numpy()


TABLES = {
    "beijing": (load_beijing, DATA / "beijing-air-quality"),
    "txhousing": (load_txhousing, GROUPED / "txhousing.csv"),
    "barrero_maize": (load_barrero_maize, GROUPED / "barrero_maize.csv"),
    "kc_house": (load_kc_house, GROUPED / "kc_house.csv"),
    "chem97": (load_chem97, GROUPED / "chem97.csv"),
}


def available_tables():
    return [name for name, (_, path) in TABLES.items() if path.exists()]


def _ci(errors):
    errors = np.asarray(errors, dtype=float)
    half = 1.96 * errors.std(ddof=1) / np.sqrt(len(errors)) if len(errors) > 1 else np.nan
    return float(errors.mean()), float(half)


def _tasks(X, y, groups, test_groups, K, rng):
    """One (Xs, ys, Xq, yq) per test group: K random support rows, the rest as query."""
    out = []
    for label in test_groups:
        rows = np.flatnonzero(groups == label)
        if len(rows) <= K:
            continue
        order = rng.permutation(rows)
        s, q = order[:K], order[K:]
        out.append((X[s], y[s], X[q], y[q]))
    return out


ALPHAS = np.logspace(-3, 3, 13)


def SKLEARN_ONE_THREAD():
    """One OpenMP thread for the baselines: their many small predictions spend
    most of their time synchronising threads on a loaded machine."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="openmp")


def _global_models(X_train, y_train, groups_train):
    """The pooled models of the offset and BLUP baselines, meta-fitted once per split.

    Each pooled model is fitted once on every training row and cross-fitted
    once (``GroupKFold``, the same folds for both) for the variances of its
    BLUP; its offset and BLUP baselines share both fits.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skreptile.evaluation import LinearMixedModel, PooledRandomIntercept

    pooled = {
        "HGB": HistGradientBoostingRegressor(random_state=0),
        "ridge": make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)),
    }
    models = {
        name: PooledRandomIntercept(est).meta_fit(X_train, y_train, groups_train)
        for name, est in pooled.items()
    }
    try:
        models["LMM"] = LinearMixedModel().meta_fit(X_train, y_train, groups_train)
    except ValueError as exc:
        # Too few rows per group to estimate a slope per feature (kc_house's zip codes):
        # the random intercept alone, as a statistician would fall back to.
        print(f"  LMM with random slopes cannot be fitted ({exc}); random intercept only")
        models["LMM"] = LinearMixedModel(random_slopes=False).meta_fit(
            X_train, y_train, groups_train
        )
    return models


def _baselines(models, tasks):
    """Per-task MSE of every baseline."""
    from sklearn.base import clone
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    alphas = ALPHAS
    # Column: (meta-fitted model, its adaptation); the offset and BLUP columns of a
    # pooled model differ only in the adaptation.
    adapted = {
        "HGB + offset": (models["HGB"], {"offset": "mean"}),
        "ridge + offset": (models["ridge"], {"offset": "mean"}),
        "HGB + BLUP": (models["HGB"], {"offset": "blup"}),
        "ridge + BLUP": (models["ridge"], {"offset": "blup"}),
        "LMM (intercept+slopes)": (models["LMM"], {}),
    }
    errors = {"support mean": [], "per-group RidgeCV": [], **{name: [] for name in adapted}}
    for Xs, ys, Xq, yq in tasks:
        errors["support mean"].append(np.mean((yq - ys.mean()) ** 2))
        local = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas)).fit(Xs, ys)
        errors["per-group RidgeCV"].append(np.mean((yq - local.predict(Xq)) ** 2))
        for name, (model, params) in adapted.items():
            fitted = clone(model).set_params(**params).fit(Xs, ys)
            errors[name].append(np.mean((yq - fitted.predict(Xq)) ** 2))
    return errors


def _reptile_errors(model, tasks):
    preds = model.few_shot_predict(
        [t[0] for t in tasks], [t[1] for t in tasks], [t[2] for t in tasks]
    )
    return [np.mean((t[3] - p) ** 2) for t, p in zip(tasks, preds)]


def run_table(name, n_splits, ks, n_meta_iter, test_fraction=0.25, log=print, base="default"):
    from skreptile import GroupTaskSampler, ReptileRegressor

    X, y, groups = TABLES[name][0]()
    X = np.asarray(X, dtype=float)
    labels = np.unique(groups)
    results = {K: {} for K in ks}
    info = []
    for split in range(n_splits):
        rng = np.random.default_rng(1000 + split)
        test = rng.choice(labels, int(round(test_fraction * len(labels))), replace=False)
        train = np.isin(groups, test, invert=True)
        sampler = GroupTaskSampler(X[train], y[train], groups[train], small_groups="skip")
        t0 = time.perf_counter()
        # skreptile with every default (n_meta_iter capped for the benchmark's time).
        own = {} if base == "default" else {"base_estimator": None if base == "none" else base}
        model = ReptileRegressor(random_state=split, n_meta_iter=n_meta_iter, **own)
        model.meta_fit(sampler)
        t1 = time.perf_counter()
        # The same network trained on the pooled rows (Reptile with one inner
        # step is plain minibatch SGD on them), fine-tuned with 'auto' steps
        # chosen on the same held-out groups (same seed, same hold-out).
        pooled = ReptileRegressor(
            random_state=split, n_meta_iter=n_meta_iter, inner_steps=1, base_estimator=None
        ).meta_fit(sampler)
        t2 = time.perf_counter()
        info.append(
            dict(
                split=split,
                meta_fit_s=round(t1 - t0, 1),
                n_meta_iter_=model.n_meta_iter_,
                best_iteration=getattr(model, "best_iteration_", None),
                backoffs=model.step_size_info_["backoffs"],
                base=type(model.__dict__.get("base_estimator_")).__name__,
                base_mode=model.__dict__.get("base_mode_"),
                network_weights=model.__dict__.get("network_weights_"),
                base_scores=model.__dict__.get("base_scores_"),
                adapt_steps_=model.adapt_steps_,
                adapt_lr_=model.adapt_lr_,
                # (n_support, steps, lr) for 4, 10 and 25 support rows: fit picks by its rows.
                by_support=getattr(model, "adaptation_by_support_", np.empty((0, 3))).tolist(),
                pooled_s=round(t2 - t1, 1),
                pooled_n_meta_iter_=pooled.n_meta_iter_,
                pooled_backoffs=pooled.step_size_info_["backoffs"],
                pooled_adapt=(pooled.adapt_steps_, pooled.adapt_lr_),
            )
        )
        with SKLEARN_ONE_THREAD():
            t3 = time.perf_counter()
            models = _global_models(X[train], y[train], groups[train])
        info[-1].update(
            baselines_meta_fit_s=round(time.perf_counter() - t3, 1),
            blup_variances={
                name: (round(models[name].tau2_, 4), round(models[name].sigma2_, 4))
                for name in ("HGB", "ridge")
            },
        )
        log(f"  {name} split {split}: {info[-1]}", flush=True)
        for K in ks:
            tasks = _tasks(X, y, groups, test, K, np.random.default_rng(2000 + 10 * split + K))
            errs = {"skreptile": _reptile_errors(model, tasks)}
            errs["pooled net + fine-tune"] = _reptile_errors(pooled, tasks)
            with SKLEARN_ONE_THREAD():
                errs.update(_baselines(models, tasks))
            for method, e in errs.items():
                results[K].setdefault(method, []).extend(e)
    return results, info


def table_rows(name, results):
    rows = []
    for K, per_method in results.items():
        stats = {m: _ci(e) for m, e in per_method.items()}
        baselines = {m: s for m, s in stats.items() if m != "skreptile"}
        best = min(baselines, key=lambda m: baselines[m][0])
        row = dict(table=name, K=K, n_tasks=len(per_method["skreptile"]), best_baseline=best)
        row["ratio"] = stats["skreptile"][0] / stats[best][0]
        row.update({m: stats[m] for m in per_method})
        rows.append(row)
    return rows


def format_rows(rows):
    methods = [k for k in rows[0] if k not in ("table", "K", "n_tasks", "best_baseline", "ratio")]
    head = "| table | K | tasks | " + " | ".join(methods) + " | ratio to best baseline |"
    lines = [head, "|" + "---|" * (len(methods) + 4)]
    for r in rows:
        cells = [f"{r[m][0]:.4g} ± {r[m][1]:.2g}" for m in methods]
        lines.append(
            f"| {r['table']} | {r['K']} | {r['n_tasks']} | "
            + " | ".join(cells)
            + f" | {r['ratio']:.3f} ({r['best_baseline']}) |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 1 split, 300 iterations")
    parser.add_argument("--tables", nargs="*", default=None)
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--k", type=int, nargs="*", default=[4, 10])
    parser.add_argument("--n-meta-iter", type=int, default=3000)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument(
        "--base-estimator",
        choices=["default", "auto", "none"],
        default="default",
        help="skreptile's base_estimator (default: the estimator's default)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.splits, args.n_meta_iter = 1, 300
    tables = args.tables or available_tables()
    if not tables:
        print("No table found under", DATA, "- nothing to run.")
        return 0
    rows, infos = [], {}
    for name in tables:
        t = time.perf_counter()
        results, info = run_table(
            name, args.splits, args.k, args.n_meta_iter, base=args.base_estimator
        )
        infos[name] = info
        rows.extend(table_rows(name, results))
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
        print(format_rows(rows), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "runs": infos, "args": vars(args)}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
