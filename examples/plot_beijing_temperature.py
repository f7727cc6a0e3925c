"""
=============================================================
Few-shot daily temperature curves at Beijing weather stations
=============================================================

Real data, honestly evaluated.  Twelve Beijing air-quality stations report the
temperature every hour (UCI "Beijing Multi-Site Air Quality", Zhang et al.
2017, CC BY 4.0).  A task is one station-day: the 24 hourly temperatures
against the hour of day.  Given 4 to 8 readings of a new day, predict the rest
of the day.

* Meta-train on days of 2013 to 2015 (15% of those dates held out for
  validation: early stopping and the few choices made below), test on days of
  2016 and 2017, never seen.
* Inputs: the hour, and the time of year as ``sin``/``cos`` of the day of year
  (constant within a day; it lets the initialisation depend on the season).
* Missing values: an hour without a temperature is dropped, never imputed;
  a station-day left with fewer than 20 hours is dropped whole.
* Test tasks: one station drawn at random per test date, so that tasks are
  not twelve near-copies of the same weather; support hours drawn at random,
  the day's other hours are the query.
* Baselines fitted on the same support hours: per-day linear interpolation, a
  per-day Gaussian process, a per-day Ridge on a spline basis of the hour, the
  average daily curve of the training years (as is, and shifted to the day's
  level), the average curve of the day's month shifted to the day's level,
  and that curve plus a Gaussian process on the day's residuals.

Errors are the root mean squared error over a day's query hours, in degrees
Celsius, averaged over test days with 95% confidence intervals.

Run ``python examples/plot_beijing_temperature.py --data-dir DIR``; without
``--data-dir`` it looks in ``../shared/data/beijing-air-quality`` beside the
repository and in skreptile's data home; ``--download`` fetches the data from
UCI.  A few minutes on two CPU cores.  The figure goes to ``--out`` (default
``beijing_temperature.png`` in the current directory).  ``--quick`` (what the
documentation's gallery runs) meta-trains for 300 iterations and scores 30 test
days: its figures are rougher than the full run's (see the real-data guide).
Without the data files (and without ``--download``) the example runs on
synthetic station-days, and says so, so that it runs anywhere.
"""

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import SplineTransformer
from threadpoolctl import threadpool_limits

from skreptile import GroupTaskSampler, ReptileRegressor
from skreptile.datasets import beijing_daily_tasks, get_data_home, load_beijing_air_quality
from skreptile.evaluation import evaluate_few_shot, plot_few_shot, split_support_query

parser = argparse.ArgumentParser(
    description="Few-shot daily temperature curves at Beijing weather stations."
)
parser.add_argument("--data-dir", help="folder of the station CSVs")
parser.add_argument("--download", action="store_true", help="download the data from UCI")
parser.add_argument("--n-meta-iter", type=int, default=10000)
parser.add_argument("--quick", action="store_true", help="a short run (the docs' gallery)")
parser.add_argument("--out", default="beijing_temperature.png", help="where to save the figure")
args, _ = parser.parse_known_args()

# Tiny networks and 8-point Gaussian processes do not gain from several
# threads, and on a busy machine threads waiting on each other cost far more
# than they give (10x or more, measured on two shared cores).
torch.set_num_threads(1)
threadpool_limits(1)
warnings.filterwarnings("ignore", category=ConvergenceWarning)

SHOTS = (4, 6, 8)
MIN_HOURS = 20


def find_data_dir():
    if args.data_dir:
        return Path(args.data_dir)
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    for candidate in (
        here.parent.parent / "shared" / "data" / "beijing-air-quality",
        get_data_home() / "beijing-air-quality",
    ):
        if any(candidate.glob("PRSA_Data_*.csv")):
            return candidate
    return get_data_home() / "beijing-air-quality"


def synthetic_stations(seed=0):
    """Station-hours in the layout of the UCI files: a seasonal and a daily cycle, and noise."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range("2013-03-01", "2017-02-28 23:00", freq="h")
    frames = []
    for station in ("Synthetic-A", "Synthetic-B", "Synthetic-C"):
        n_days = len(hours) // 24
        season = 13 - 15 * np.cos(2 * np.pi * (hours.day_of_year - 15) / 365.25)
        day_level = np.repeat(rng.normal(0, 3, n_days), 24)  # the day's weather
        swing = np.repeat(rng.uniform(3, 8, n_days), 24)  # its daily amplitude
        daily = swing * np.sin(2 * np.pi * (hours.hour - 9) / 24)
        temp = season + day_level + daily + rng.normal(0, 0.5, len(hours))
        frames.append(
            pd.DataFrame({"station": station, "datetime": hours, "hour": hours.hour, "TEMP": temp})
        )
    return pd.concat(frames, ignore_index=True)


# %%
# Load the table and make one task per station-day
# -------------------------------------------------
t_start = time.perf_counter()
try:
    frame = load_beijing_air_quality(find_data_dir(), download=args.download)
except FileNotFoundError as exc:
    print(
        f"{exc}\n\nSYNTHETIC DATA: the UCI files are absent, so this run uses synthetic "
        "station-days (a seasonal and a daily cycle); its numbers say nothing about Beijing."
    )
    frame = synthetic_stations()
day_of_year = frame["datetime"].dt.day_of_year.to_numpy()
angle = 2 * np.pi * (day_of_year - 1) / 365.25
frame["season_sin"], frame["season_cos"] = np.sin(angle), np.cos(angle)
data = beijing_daily_tasks(
    frame, target="TEMP", features=["hour", "season_sin", "season_cos"], min_rows=MIN_HOURS
)
print(
    f"{len(frame)} station-hours, {frame['TEMP'].isna().sum()} without a temperature; "
    f"kept {len(data.days)} station-days, dropped {data.n_days_dropped} with fewer than "
    f"{MIN_HOURS} hours ({data.n_rows_dropped} rows dropped in all)"
)

days = data.days.set_index("group")
row_date = data.groups.map(days["date"]).to_numpy()
row_year = pd.DatetimeIndex(row_date).year
train_dates = np.unique(row_date[row_year <= 2015])
rng = np.random.default_rng(0)
val_dates = rng.choice(train_dates, size=int(0.15 * len(train_dates)), replace=False)
is_val = np.isin(row_date, val_dates)
is_train = (row_year <= 2015) & ~is_val
is_test = row_year >= 2016


def one_station_per_date(mask, seed):
    """Held-out tasks: every date once, at a station drawn at random."""
    sampler = GroupTaskSampler(data.X[mask], data.y[mask], data.groups[mask])
    info = days.loc[sampler.groups_].reset_index()
    pick = np.random.default_rng(seed).random(len(info))
    chosen = info.assign(pick=pick).sort_values("pick").groupby("date").head(1).index
    tasks = sampler.tasks()
    return [tasks[i] for i in sorted(chosen)]


train = GroupTaskSampler(data.X[is_train], data.y[is_train], data.groups[is_train], random_state=0)
val_tasks = one_station_per_date(is_val, seed=1)
test_tasks = one_station_per_date(is_test, seed=2)
if args.quick:
    val_tasks, test_tasks = val_tasks[:20], test_tasks[:30]
print(
    f"meta-training: {train.n_groups_} station-days of 2013-2015; validation: "
    f"{len(val_tasks)} dates; test: {len(test_tasks)} dates of 2016-2017"
)

# %%
# Meta-train, with early stopping on the validation days
# ------------------------------------------------------
n_meta_iter = 300 if args.quick else args.n_meta_iter
model = ReptileRegressor(
    inner_steps=10,
    n_meta_iter=n_meta_iter,
    early_stopping=True,
    monitor_interval=50 if args.quick else 250,
    n_iter_no_change=8,
    random_state=0,
    device="cpu",
)
t0 = time.perf_counter()
model.meta_fit(train, validation_tasks=split_support_query(val_tasks, 6, random_state=0))
history = pd.DataFrame(model.history_)
print(
    f"meta_fit: {time.perf_counter() - t0:.0f} s, {model.n_meta_iter_} meta-iterations (early "
    f"stopping), best validation MSE {model.best_validation_loss_:.3f} at {model.best_iteration_}"
)


# %%
# Baselines
# ---------
# They see the same support hours.  Those that only use the hour select it
# with a ColumnTransformer; the climatologies were computed on the training days.
def month_of(X):
    doy = np.mod(np.arctan2(X[:, 1], X[:, 2]), 2 * np.pi) * 365.25 / (2 * np.pi)
    return np.minimum((doy / (365.25 / 12)).astype(int), 11)


X_train = data.X[is_train].to_numpy()
y_train = data.y[is_train].to_numpy()
hours_train = X_train[:, 0].astype(int)
curve = pd.Series(y_train).groupby(hours_train).mean().reindex(range(24)).to_numpy()
month_curves = (
    pd.Series(y_train).groupby([month_of(X_train), hours_train]).mean().unstack().to_numpy()
)


class HourInterpolation(RegressorMixin, BaseEstimator):
    """Linear interpolation between the support hours, flat beyond them."""

    def fit(self, X, y):
        order = np.argsort(X[:, 0])
        self.hours_, self.values_ = X[order, 0], np.asarray(y)[order]
        return self

    def predict(self, X):
        return np.interp(X[:, 0], self.hours_, self.values_)


class DailyClimatology(RegressorMixin, BaseEstimator):
    """An average daily curve (overall or of the day's month), shifted to the day's level.

    With ``residual_gp``, a Gaussian process on the hour models what the
    shifted curve leaves in the support hours.
    """

    def __init__(self, curves=None, by_month=False, shift=True, residual_gp=False):
        self.curves = curves
        self.by_month = by_month
        self.shift = shift
        self.residual_gp = residual_gp

    def _curve(self, X):
        hours = X[:, 0].astype(int)
        if self.by_month:
            return np.asarray(self.curves)[month_of(X), hours]
        return np.asarray(self.curves)[hours]

    def fit(self, X, y):
        residual = np.asarray(y) - self._curve(X)
        self.offset_ = float(residual.mean()) if self.shift else 0.0
        if self.residual_gp:
            kernel = ConstantKernel(1.0, (1e-2, 1e2)) * RBF(4.0, (1.0, 50.0)) + WhiteKernel(
                0.1, (1e-3, 10.0)
            )
            self.gp_ = GaussianProcessRegressor(kernel).fit(X[:, :1], residual - self.offset_)
        return self

    def predict(self, X):
        out = self._curve(X) + self.offset_
        return out + self.gp_.predict(X[:, :1]) if self.residual_gp else out


def hour_only(estimator):
    return make_pipeline(ColumnTransformer([("hour", "passthrough", [0])]), estimator)


def spline_ridge(alpha):
    knots = np.linspace(0, 23, 5)[:, None]
    spline = SplineTransformer(degree=3, knots=knots, extrapolation="linear")
    return make_pipeline(ColumnTransformer([("hour", spline, [0])]), Ridge(alpha=alpha))


gp_kernel = ConstantKernel(1.0, (1e-2, 1e2)) * RBF(4.0, (1.0, 50.0)) + WhiteKernel(
    0.1, (1e-3, 10.0)
)

# %%
# Choices made on the validation days, never on the test days: the number of
# adaptation steps for each number of support hours, and Ridge's penalty.
STEPS = (0, 8, 16, 32, 64, 128)
chosen_steps, chosen_alpha = {}, {}
for k in SHOTS:
    split = split_support_query(val_tasks, k, random_state=100 + k)
    ridges = {alpha: spline_ridge(alpha) for alpha in (0.001, 0.01, 0.1, 1.0)}
    res = evaluate_few_shot(model, split, adapt_steps=STEPS, baselines=ridges, metric="rmse")
    chosen_steps[k] = int(STEPS[int(np.argmin(res.model_errors.mean(axis=1)))])
    chosen_alpha[k] = min(ridges, key=lambda a: res.errors(a).mean())
print(f"chosen on validation days: adaptation steps {chosen_steps}, Ridge alpha {chosen_alpha}")

# %%
# Scores on the test days of 2016-2017
# ------------------------------------
results = {}
for k in SHOTS:
    baselines = {
        "per-day linear interpolation": HourInterpolation(),
        "per-day Gaussian process": hour_only(
            GaussianProcessRegressor(gp_kernel, normalize_y=True)
        ),
        f"per-day Ridge, spline basis (alpha={chosen_alpha[k]})": spline_ridge(chosen_alpha[k]),
        "average daily curve": DailyClimatology(curve, shift=False),
        "average daily curve + day offset": DailyClimatology(curve),
        "month's average curve + day offset": DailyClimatology(month_curves, by_month=True),
        "month's curve + offset + GP on residuals": DailyClimatology(
            month_curves, by_month=True, residual_gp=True
        ),
    }
    split = split_support_query(test_tasks, k, random_state=k)
    t0 = time.perf_counter()
    results[k] = evaluate_few_shot(
        model, split, adapt_steps=STEPS, baselines=baselines, metric="rmse"
    )
    print(f"\n{k} support hours, {len(split)} test days ({time.perf_counter() - t0:.0f} s):")
    print(results[k])


def cell(row):
    return f"{row['mean']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


rows = {}
for k in SHOTS:
    res = results[k]
    named = [
        ("skreptile, no adaptation (the initialisation)", res.model_name, 0),
        ("skreptile, adapted (steps chosen on validation)", res.model_name, chosen_steps[k]),
    ]
    for method in res.baseline_errors:
        label = method
        if method.startswith("per-day Ridge"):
            label = "per-day Ridge, spline basis (alpha chosen on validation)"
        named.append((label, method, None))
    for label, method, steps in named:
        row = res._row(method, steps, res.errors(method, steps))
        rows.setdefault(label, {})[k] = cell(row)
print("\nHeld-out days of 2016-2017: RMSE over the day's other hours, degrees C, mean [95% CI]")
print("| method | " + " | ".join(f"{k} readings" for k in SHOTS) + " |")
print("|---|" + "---|" * len(SHOTS))
for name, cells in rows.items():
    print(f"| {name} | " + " | ".join(cells[k] for k in SHOTS) + " |")

print()
for k in SHOTS:
    res = results[k]
    best = res.best_baseline()
    diff = res.compare(res.model_name, best, adapt_steps=chosen_steps[k])
    print(
        f"{k} readings: skreptile ({chosen_steps[k]} steps) minus the best baseline ({best}): "
        f"{diff['mean']:+.3f} C [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}] "
        f"(paired over the same days), ratio {diff['ratio']:.3f}"
    )
print(f"total time: {time.perf_counter() - t_start:.0f} s")

# %%
# Error against adaptation steps; the baselines are lines.  And one test day.
fig, axes = plt.subplots(2, 2, figsize=(13, 9))
axes = axes.ravel()
for ax, k in zip(axes[:3], SHOTS):
    plot_few_shot(results[k], ax=ax)
    ax.set_ylim(0, 4.5)
    ax.set_title(f"{k} readings of a new day (test days 2016-2017)")
    ax.set_ylabel("RMSE on the other hours (C)")
Xs, ys, Xq, yq = split_support_query(test_tasks[:1], 6, random_state=0)[0]
ax = axes[3]
hours = np.arange(24.0)
X_day = np.column_stack([hours, np.repeat(Xs[:1, 1], 24), np.repeat(Xs[:1, 2], 24)])
ax.plot(Xq[:, 0], yq, "k.", label="other hours (truth)")
ax.plot(Xs[:, 0], ys, "ko", label="6 readings")
ax.plot(
    hours,
    model.set_params(adapt_steps=chosen_steps[6]).fit(Xs, ys).predict(X_day),
    label="skreptile",
)
ax.plot(
    hours,
    hour_only(GaussianProcessRegressor(gp_kernel, normalize_y=True)).fit(Xs, ys).predict(X_day),
    label="Gaussian process",
)
ax.plot(hours, HourInterpolation().fit(Xs, ys).predict(X_day), label="interpolation")
ax.set_xlabel("hour of day")
ax.set_ylabel("temperature (C)")
ax.set_title("A test day")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(args.out, dpi=90)
