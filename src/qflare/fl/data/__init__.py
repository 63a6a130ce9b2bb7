"""Data for the QFLARE tasks (numpy only): digits, the synthetic city, CSV series, windows, partitioners."""

from __future__ import annotations

from qflare.fl.data.city import CityNetwork, SensorProfile
from qflare.fl.data.csv_series import load_series_csv
from qflare.fl.data.digits import DigitsSplit, digits_split
from qflare.fl.data.partition import dirichlet_partition, group_partition, iid_partition
from qflare.fl.data.series import SensorSeries
from qflare.fl.data.windows import CALENDAR_FEATURES, WindowSet, calendar_features, make_windows

__all__ = [
    "CALENDAR_FEATURES",
    "CityNetwork",
    "DigitsSplit",
    "SensorProfile",
    "SensorSeries",
    "WindowSet",
    "calendar_features",
    "digits_split",
    "dirichlet_partition",
    "group_partition",
    "iid_partition",
    "load_series_csv",
    "make_windows",
]
