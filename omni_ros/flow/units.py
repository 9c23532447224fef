"""Time units of omni_ros, in one place: integer nanoseconds on the ROS clock, stamps, sample grids.

No ROS here: a stamp is anything with integer `sec` and `nanosec` (builtin_interfaces/Time).
"""
from __future__ import annotations

from typing import Tuple

NS_PER_S = 1_000_000_000


def seconds_to_ns(seconds: float) -> int:
    """A duration in (float) seconds -> integer nanoseconds, rounded."""
    return int(round(seconds * NS_PER_S))


def stamp_to_ns(stamp) -> int:
    """A stamp (sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_sec_nanosec(ns: int) -> Tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) with 0 <= nanosec < NS_PER_S (floor for negatives)."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return sec, nanosec


def samples_to_ns(samples: int, sample_rate: int) -> int:
    """The duration of `samples` samples at `sample_rate` in nanoseconds (rounded down)."""
    return int(samples) * NS_PER_S // int(sample_rate)


def ns_to_samples(ns: int, sample_rate: int) -> int:
    """How many whole samples at `sample_rate` fit in `ns` nanoseconds (rounded down)."""
    return int(ns) * int(sample_rate) // NS_PER_S


def sample_index(stamp_ns: int, sample_rate: int) -> int:
    """The global sample-grid index (sample i is at i / sample_rate s) nearest to a stamp."""
    return (int(stamp_ns) * int(sample_rate) + NS_PER_S // 2) // NS_PER_S
