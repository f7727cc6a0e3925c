"""The Beijing loader on small generated CSVs, and on the real files when they are present."""

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import skreptile.datasets._beijing as beijing
from skreptile import GroupTaskSampler
from skreptile.datasets import beijing_daily_tasks, load_beijing_air_quality

HEADER = (
    '"No","year","month","day","hour","PM2.5","PM10","SO2","NO2","CO","O3","TEMP","PRES",'
    '"DEWP","RAIN","wd","WSPM","station"'
)
ROOT = Path(__file__).resolve().parents[1]
N_DATES = 42 + 15


def _write_station(directory, station, dates, missing_temp=(), seed=0):
    """A CSV in the UCI layout: 24 hours a date, NA where a reading is missing."""
    rng = np.random.default_rng(seed)
    lines, n = [HEADER], 0
    for date in pd.to_datetime(dates):
        level = 10 + 10 * np.sin(2 * np.pi * date.day_of_year / 365) + rng.normal()
        for hour in range(24):
            n += 1
            temp = level + 6 * np.sin(2 * np.pi * (hour - 9) / 24)
            temp = "NA" if (date.strftime("%Y-%m-%d"), hour) in missing_temp else f"{temp:.1f}"
            lines.append(
                f"{n},{date.year},{date.month},{date.day},{hour},5,NA,3,7,300,77,{temp},1020.5,"
                f'-10.2,0,"NNW",2.1,"{station}"'
            )
    path = Path(directory) / f"PRSA_Data_{station}_20130301-20170228.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def small_data(tmp_path):
    # Dates through every season, for training (2013-2015) and testing (2016-2017).
    dates = list(pd.date_range("2013-03-01", "2015-12-31", freq="25D")) + list(
        pd.date_range("2016-01-01", "2017-02-28", freq="30D")
    )
    # Station A misses 2 temperatures on one day and 6 on another (which is then dropped).
    missing = {("2013-03-26", 5), ("2013-03-26", 6)} | {("2013-04-20", h) for h in range(6)}
    _write_station(tmp_path, "Aotizhongxin", dates, missing, seed=0)
    _write_station(tmp_path, "Dingling", dates, seed=1)
    return tmp_path


def test_loader_reads_every_station_and_keeps_missing_values(small_data):
    frame = load_beijing_air_quality(small_data)
    assert len(frame) == 2 * N_DATES * 24
    assert list(frame.columns[:3]) == ["station", "datetime", "year"]
    assert "No" not in frame.columns and frame["TEMP"].isna().sum() == 8
    assert frame["PM10"].isna().all()  # "NA" is missing, not a string
    assert frame["datetime"].iloc[5] == pd.Timestamp("2013-03-01 05:00")
    assert sorted(frame["station"].unique()) == ["Aotizhongxin", "Dingling"]


def test_daily_tasks_drop_missing_hours_and_short_days(small_data):
    frame = load_beijing_air_quality(small_data)
    tasks = beijing_daily_tasks(frame, min_rows=20)
    assert tasks.n_days_dropped == 1  # 2013-04-20 at Aotizhongxin kept only 18 hours
    assert tasks.n_rows_dropped == 8 + 18
    assert len(tasks.days) == 2 * N_DATES - 1
    day = tasks.days.set_index("group").loc["Aotizhongxin 2013-03-26"]
    assert day["n_rows"] == 22 and day["date"] == pd.Timestamp("2013-03-26")
    assert tasks.X.notna().all().all() and tasks.y.notna().all()
    sampler = GroupTaskSampler(tasks.X, tasks.y, tasks.groups)
    assert sampler.n_groups_ == 2 * N_DATES - 1 and list(sampler.feature_names_in_) == ["hour"]
    assert beijing_daily_tasks(frame, min_rows=18).n_days_dropped == 0
    with pytest.raises(KeyError, match="WIND"):
        beijing_daily_tasks(frame, features=["hour", "WIND"])


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="archive.ics.uci.edu.*download=True"):
        load_beijing_air_quality(tmp_path / "nothing-here")


def _nested_archive(path, files):
    """The UCI layout: a zip holding a zip holding a folder of CSVs."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for name, data in files.items():
            z.writestr(f"PRSA_Data_20130301-20170228/{name}", data)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("PRSA2017_Data_20130301-20170228.zip", inner.getvalue())
    return path.as_uri()


def test_download_extracts_nested_archives_and_checks_checksums(tmp_path, small_data, monkeypatch):
    # A local file:// archive stands in for UCI: no network in tests.
    files = {p.name: p.read_bytes() for p in small_data.glob("*.csv")}
    sums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    monkeypatch.setattr(beijing, "BEIJING_FILES", sums)
    monkeypatch.setattr(beijing, "BEIJING_URL", _nested_archive(tmp_path / "uci.zip", files))
    target = tmp_path / "fetched"
    frame = load_beijing_air_quality(target, download=True, verify=True)
    assert len(frame) == 2 * N_DATES * 24
    assert sorted(p.name for p in target.iterdir()) == sorted(files)  # no leftovers

    bad = dict(sums, **{next(iter(sums)): "0" * 64})
    monkeypatch.setattr(beijing, "BEIJING_FILES", bad)
    elsewhere = tmp_path / "bad"
    with pytest.raises(OSError, match="Checksum mismatch"):
        load_beijing_air_quality(elsewhere, download=True)
    assert list(elsewhere.iterdir()) == []  # nothing kept
    with pytest.raises(ValueError, match="does not match the UCI file"):
        load_beijing_air_quality(target, verify=True)


def _real_data_dir():
    for candidate in (
        os.environ.get("SKREPTILE_BEIJING_DIR"),
        ROOT.parent / "shared" / "data" / "beijing-air-quality",
    ):
        if candidate and any(Path(candidate).glob("PRSA_Data_*.csv")):
            return Path(candidate)
    return None


REAL = _real_data_dir()
needs_real_data = pytest.mark.skipif(
    REAL is None,
    reason="the Beijing air-quality CSVs are absent (set SKREPTILE_BEIJING_DIR or put them in "
    "../shared/data/beijing-air-quality)",
)


@needs_real_data
def test_real_files_match_the_published_checksums():
    frame = load_beijing_air_quality(REAL, verify=True)
    assert frame.shape == (420768, 18)
    assert frame["station"].nunique() == 12
    assert frame["datetime"].min() == pd.Timestamp("2013-03-01")
    assert frame["datetime"].max() == pd.Timestamp("2017-02-28 23:00")
    tasks = beijing_daily_tasks(frame)
    assert len(tasks.days) + tasks.n_days_dropped == 12 * 1461


def test_example_runs_on_small_data(small_data, tmp_path):
    out = tmp_path / "figure.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "plot_beijing_temperature.py"),
            "--data-dir",
            str(small_data),
            "--quick",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| skreptile, adapted (steps chosen on validation) |" in run.stdout
    assert "minus the best baseline" in run.stdout
    assert out.exists()
