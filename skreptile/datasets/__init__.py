"""Real data sets for meta-learning, loaded from local files (Beijing air quality may be
downloaded on request)."""

from ._beijing import (
    BEIJING_FILES,
    BEIJING_URL,
    beijing_daily_tasks,
    get_data_home,
    load_beijing_air_quality,
)
from ._omniglot import load_omniglot

__all__ = [
    "BEIJING_FILES",
    "BEIJING_URL",
    "beijing_daily_tasks",
    "get_data_home",
    "load_beijing_air_quality",
    "load_omniglot",
]
