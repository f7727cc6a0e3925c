"""The Beijing Multi-Site Air-Quality data (UCI, CC BY 4.0).

Hourly readings of 12 monitoring stations in Beijing, 1 March 2013 to
28 February 2017: pollutants (PM2.5, PM10, SO2, NO2, CO, O3) and weather
(TEMP, PRES, DEWP, RAIN, wd, WSPM).  Zhang, S., Guo, B., Dong, A., He, J., Xu, Z.
and Chen, S.X. (2017), "Cautionary Tales on Air-Quality Improvement in Beijing",
Proceedings of the Royal Society A 473(2205).  UCI Machine Learning Repository,
https://doi.org/10.24432/C5RK5G, licence CC BY 4.0.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sklearn.datasets
from sklearn.utils import Bunch

from .._typing import PathLike

if TYPE_CHECKING:
    import pandas as pd

BEIJING_URL = (
    "https://archive.ics.uci.edu/static/public/501/beijing+multi+site+air+quality+data.zip"
)
BEIJING_PAGE = "https://archive.ics.uci.edu/dataset/501/beijing+multi+site+air+quality+data"
_SUFFIX = "_20130301-20170228.csv"

# SHA-256 of every station's CSV as distributed by UCI.
BEIJING_FILES = {
    "PRSA_Data_Aotizhongxin"
    + _SUFFIX: "a94fbcfc71708b6ffdc033360163d91efb7f675e496f6b5860929aa96b96351b",
    "PRSA_Data_Changping"
    + _SUFFIX: "a2e21402a6d95fb7043f87959e6e3dcbecb957aac356a6f8028a85b047c772e7",
    "PRSA_Data_Dingling"
    + _SUFFIX: "3d8dff81f18a80d9f455876a785642bffe1e9b9924ec1e6b7ce8cca790432eeb",
    "PRSA_Data_Dongsi"
    + _SUFFIX: "9c0020214425e5ee2a64d42f97a1f632e1d8f6b53ad50edd85a686cc7999f27e",
    "PRSA_Data_Guanyuan"
    + _SUFFIX: "59390fee3b032597b387491f5230e7edb90a8558e30217ebd6d9befbe669fbf9",
    "PRSA_Data_Gucheng"
    + _SUFFIX: "10ae48801ea55869fee56a48b885fb1127859c130551888d71673f34216ba951",
    "PRSA_Data_Huairou"
    + _SUFFIX: "812dcbe848b3ba2c2d25731064797bff803c46eb0c602156a1fa044df136dc26",
    "PRSA_Data_Nongzhanguan"
    + _SUFFIX: "572cf87b65ef543cd55d3a711b28474def224a46b0ec3fc8add8aaf13b67a487",
    "PRSA_Data_Shunyi"
    + _SUFFIX: "520b59e4ead3b0cfe7f1ed673e30275de8441e999db6f413d5172d2277b8c15a",
    "PRSA_Data_Tiantan"
    + _SUFFIX: "0743e34799cf1ee36195b73321b91baa5625276532e7263c588f68cdef3b4daa",
    "PRSA_Data_Wanliu"
    + _SUFFIX: "0b1a6d754a07f0def2f55434ddfa3870dcd0063b7f766a6f66b6c11bb05a377a",
    "PRSA_Data_Wanshouxigong"
    + _SUFFIX: "ab1d6a356d6997a45f6d657ad47de1e05a4a08d4a7015b38a329a90665ab74d0",
}

_COLUMNS = [
    "No", "year", "month", "day", "hour", "PM2.5", "PM10", "SO2", "NO2", "CO", "O3",
    "TEMP", "PRES", "DEWP", "RAIN", "wd", "WSPM", "station",
]  # fmt: skip


def get_data_home(data_home: PathLike | None = None) -> Path:
    """Return the folder of skreptile's data sets, created if needed.

    Parameters
    ----------
    data_home : str, path-like or None, default=None
        The folder; None uses the environment variable ``SKREPTILE_DATA``, else
        ``~/skreptile_data``.

    Returns
    -------
    path : pathlib.Path
        The folder, which exists.
    """
    if data_home is None:
        data_home = os.environ.get("SKREPTILE_DATA", os.path.join("~", "skreptile_data"))
    return Path(sklearn.datasets.get_data_home(data_home))


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _how_to_get(directory):
    return (
        f"Download the archive from {BEIJING_PAGE} ({BEIJING_URL}), unzip it (it holds "
        "another zip, PRSA2017_Data_20130301-20170228.zip: unzip that too) and put the 12 "
        f"files PRSA_Data_<station>{_SUFFIX} in {directory}; or call "
        "load_beijing_air_quality(..., download=True)."
    )


def _csv_members(archive):
    """Yield ``(basename, bytes)`` of the station CSVs in a zip, looking into nested zips."""
    for name in archive.namelist():
        base = name.rsplit("/", 1)[-1]
        if base.lower().endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(archive.read(name))) as inner:
                yield from _csv_members(inner)
        elif base in BEIJING_FILES:
            yield base, archive.read(name)


def _download(directory, url, checksums):
    """Fetch the UCI archive, extract the station CSVs into ``directory``, check them."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        archive_path = Path(tmp) / "archive.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive_path, "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as exc:
            raise OSError(f"Could not download {url}: {exc}. {_how_to_get(directory)}") from exc
        with zipfile.ZipFile(archive_path) as archive:
            members = dict(_csv_members(archive))
        missing = sorted(set(checksums) - set(members))
        if missing:
            raise OSError(f"The archive from {url} lacks {missing}. {_how_to_get(directory)}")
        for name, expected in checksums.items():
            digest = hashlib.sha256(members[name]).hexdigest()
            if digest != expected:
                raise OSError(
                    f"Checksum mismatch for {name} downloaded from {url}: SHA-256 {digest}, "
                    f"expected {expected}. The file was not kept. {_how_to_get(directory)}"
                )
        for name, data in members.items():
            part = Path(tmp) / name
            part.write_bytes(data)
            os.replace(part, directory / name)


def load_beijing_air_quality(
    data_dir: PathLike | None = None, *, download: bool = False, verify: bool = False
) -> pd.DataFrame:
    """Load the hourly readings of the 12 Beijing air-quality stations (2013-2017).

    Reads the station CSVs ``PRSA_Data_<station>_20130301-20170228.csv`` of
    the UCI data set "Beijing Multi-Site Air Quality" (Zhang et al., 2017;
    CC BY 4.0) from ``data_dir``.  Needs pandas.

    Parameters
    ----------
    data_dir : str, path-like or None, default=None
        Folder holding the CSVs; None uses ``get_data_home() / "beijing-air-quality"``.
        Every station file found there is read.
    download : bool, default=False
        If the files are missing, download the archive from the UCI repository
        (about 8 MB), extract the CSVs into ``data_dir`` and check their SHA-256
        checksums.  Without it, missing files raise ``FileNotFoundError``
        saying how to get them.
    verify : bool, default=False
        Also check the checksums of files already present.

    Returns
    -------
    frame : pandas.DataFrame
        One row per station and hour: ``station``, ``datetime``, ``year``,
        ``month``, ``day``, ``hour``, the readings ``PM2.5``, ``PM10``, ``SO2``,
        ``NO2``, ``CO``, ``O3``, ``TEMP`` (degrees C), ``PRES`` (hPa), ``DEWP``
        (dew point, degrees C), ``RAIN`` (mm), ``wd`` (wind direction) and ``WSPM``
        (wind speed, m/s).  Missing readings (``NA`` in the files) are NaN:
        nothing is imputed.

    See Also
    --------
    beijing_daily_tasks : One few-shot task per station-day.
    """
    import pandas as pd

    directory = Path(data_dir) if data_dir is not None else get_data_home() / "beijing-air-quality"
    found = sorted(directory.glob("PRSA_Data_*" + _SUFFIX)) if directory.is_dir() else []
    if not found:
        if not download:
            raise FileNotFoundError(
                f"No Beijing air-quality CSVs in {directory}. " + _how_to_get(directory)
            )
        _download(directory, BEIJING_URL, BEIJING_FILES)
        found = sorted(directory.glob("PRSA_Data_*" + _SUFFIX))
    if verify:
        for path in found:
            expected = BEIJING_FILES.get(path.name)
            if expected is not None and _sha256(path) != expected:
                raise ValueError(
                    f"{path} does not match the UCI file (SHA-256 {_sha256(path)}, expected "
                    f"{expected}). {_how_to_get(directory)}"
                )
    frames = []
    for path in found:
        part = pd.read_csv(path, na_values=["NA", ""], keep_default_na=False)
        absent = [c for c in _COLUMNS if c not in part.columns]
        if absent:
            raise ValueError(f"{path} lacks the columns {absent} of the UCI station files.")
        frames.append(part)
    frame = pd.concat(frames, ignore_index=True)
    frame["datetime"] = pd.to_datetime(frame[["year", "month", "day", "hour"]])
    order = ["station", "datetime"] + [c for c in _COLUMNS if c not in ("No", "station")]
    return frame[order]


def beijing_daily_tasks(
    frame: pd.DataFrame,
    *,
    target: str = "TEMP",
    features: Sequence[str] = ("hour",),
    min_rows: int = 20,
) -> Bunch:
    """One task per station-day: a reading against the hour of day (and other columns).

    Missing values are handled explicitly, never imputed: an hour whose target
    or any feature is missing is dropped, then a station-day with fewer than
    ``min_rows`` hours left is dropped whole (its query points would not cover
    the day).

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`load_beijing_air_quality` (any extra columns may be used as
        features).
    target : str, default="TEMP"
        Column to predict.
    features : sequence of str, default=("hour",)
        Columns used as inputs.
    min_rows : int, default=20
        Least hours a station-day must keep.

    Returns
    -------
    tasks : Bunch
        ``X`` (DataFrame of the features), ``y`` (Series of the target) and
        ``groups`` (Series of ``"<station> <YYYY-MM-DD>"`` labels), ready for
        :class:`~skreptile.GroupTaskSampler`; ``days``, a DataFrame with one row
        per kept station-day (``group``, ``station``, ``date``, ``n_rows``); and
        ``n_rows_dropped``, ``n_days_dropped`` counting what was left out.
    """
    import pandas as pd

    features = list(features)
    absent = [c for c in [target, *features] if c not in frame.columns]
    if absent:
        raise KeyError(f"frame lacks the columns {absent}.")
    date = frame["datetime"].dt.strftime("%Y-%m-%d")
    group = frame["station"].astype(str) + " " + date
    complete = frame[[target, *features]].notna().all(axis=1).to_numpy()
    n_days_before = group.nunique()
    counts = group[complete].value_counts()
    keep_day = group.map(counts).fillna(0).to_numpy() >= min_rows
    keep = complete & keep_day
    kept = frame.loc[keep]
    groups = group[keep].rename("group")
    days = (
        pd.DataFrame({"group": groups, "station": kept["station"], "date": date[keep]})
        .groupby("group", sort=True)
        .agg(station=("station", "first"), date=("date", "first"), n_rows=("station", "size"))
        .reset_index()
    )
    days["date"] = pd.to_datetime(days["date"])
    return Bunch(
        X=kept[features].reset_index(drop=True).astype(np.float64),
        y=kept[target].reset_index(drop=True).astype(np.float64),
        groups=groups.reset_index(drop=True),
        days=days,
        n_rows_dropped=int(len(frame) - keep.sum()),
        n_days_dropped=int(n_days_before - len(days)),
    )
