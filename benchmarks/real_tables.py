"""Few-shot regression on real grouped tables: skreptile with all defaults against baselines.

Tables (none ships with skreptile; each is skipped when its file is absent):

* ``beijing``: the UCI Beijing air-quality readings (``skreptile.datasets``),
  one task per station-day: the temperature against the hour, pressure, dew
  point, rain and wind speed (a random sample of station-days);
* ``txhousing``: a Texas city's monthly median sale price from its sales,
  volume, listings, inventory, year and month;
* ``barrero_maize``: a field-season's plot yields from the plots' traits;
* ``kc_house``: the log price of houses in a zip code from their description.

For every table, several random splits of the *groups* into meta-training
groups and new groups; every new group gives one task with ``K`` support rows
and the rest of its rows as query.  Every method sees the same rows.  Methods:

* ``skreptile``: ``ReptileRegressor(random_state=seed, n_support=K)``, every
  other parameter at its default (step sizes, validation, early stopping and
  adaptation chosen automatically);
* ``support mean``: the mean of the support targets;
* ``per-group RidgeCV``: a ridge fitted on the support rows alone;
* ``HGB + offset`` and ``ridge + offset``: a global model fitted on every
  meta-training row, plus the new group's mean residual on its support rows;
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


TABLES = {
    "beijing": (load_beijing, DATA / "beijing-air-quality"),
    "txhousing": (load_txhousing, GROUPED / "txhousing.csv"),
    "barrero_maize": (load_barrero_maize, GROUPED / "barrero_maize.csv"),
    "kc_house": (load_kc_house, GROUPED / "kc_house.csv"),
}


def available_tables():
    return [name for name, (_, path) in TABLES.items() if path.exists()]
