"""Real data sets for meta-learning, loaded from local files or downloaded on request."""

from ._beijing import (
    BEIJING_FILES,
    BEIJING_URL,
    beijing_daily_tasks,
    get_data_home,
    load_beijing_air_quality,
)

__all__ = [
    "BEIJING_FILES",
    "BEIJING_URL",
    "beijing_daily_tasks",
    "get_data_home",
    "load_beijing_air_quality",
]
