"""Stamps <-> windows on the ROS clock, clock epochs and the tick schedule of the clock node.

Window k covers [k * window_ns, (k + 1) * window_ns), so every node derives the same windows from
a stamp alone. All times are integer nanoseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .counters import Counters
from .units import NS_PER_S

DEFAULT_WINDOW_NS = NS_PER_S   # one second
DEFAULT_BACKWARD_TOLERANCE_NS = 10_000_000   # NTP slews and sim-time jitter of a few ms are not a new epoch
DEFAULT_MAX_BURST_WINDOWS = 3


def window_index(stamp_ns: int, window_ns: int = DEFAULT_WINDOW_NS) -> int:
    """The window a stamp falls in (floor division, so negative stamps work too)."""
    return int(stamp_ns) // int(window_ns)


def window_start(index: int, window_ns: int = DEFAULT_WINDOW_NS) -> int:
    return int(index) * int(window_ns)


def window_end(index: int, window_ns: int = DEFAULT_WINDOW_NS) -> int:
    """Exclusive end of a window: the start of the next one."""
    return (int(index) + 1) * int(window_ns)


@dataclass(frozen=True)
class Timeline:
    """The window grid for one window length."""

    window_ns: int = DEFAULT_WINDOW_NS

    def __post_init__(self) -> None:
        if int(self.window_ns) <= 0:
            raise ValueError(f"window_ns must be positive, got {self.window_ns}")

    def window_index(self, stamp_ns: int) -> int:
        return window_index(stamp_ns, self.window_ns)

    def window_start(self, index: int) -> int:
        return window_start(index, self.window_ns)

    def window_end(self, index: int) -> int:
        return window_end(index, self.window_ns)


@dataclass(frozen=True)
class ClockObservation:
    """What one clock reading meant."""

    now_ns: int
    epoch: int
    new_epoch: bool            # the clock went backwards beyond the tolerance
    backward_jump_ns: int      # how far back it went (0 if it did not)
    forward_leap_windows: int  # windows jumped over beyond max_forward_windows (0 if none)


class ClockWatcher:
    """Follows successive clock readings: backward jumps start a new epoch, big leaps are reported.

    Readings that go back by no more than `backward_tolerance_ns` are treated as jitter: the
    watcher keeps the highest reading seen, so time never appears to go backwards within an epoch.
    """

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS,
                 backward_tolerance_ns: int = DEFAULT_BACKWARD_TOLERANCE_NS,
                 max_forward_windows: int = DEFAULT_MAX_BURST_WINDOWS) -> None:
        if window_ns <= 0:
            raise ValueError(f"window_ns must be positive, got {window_ns}")
        if backward_tolerance_ns < 0 or max_forward_windows < 1:
            raise ValueError("backward_tolerance_ns must be >= 0 and max_forward_windows >= 1")
        self.window_ns = int(window_ns)
        self.backward_tolerance_ns = int(backward_tolerance_ns)
        self.max_forward_windows = int(max_forward_windows)
        self.epoch = 0
        self.latest_ns: Optional[int] = None   # highest reading in the current epoch
        self.backward_jumps = 0
        self.forward_leaps = 0

    def observe(self, now_ns: int) -> ClockObservation:
        now_ns = int(now_ns)
        previous = self.latest_ns
        if previous is None:
            self.latest_ns = now_ns
            return ClockObservation(now_ns, self.epoch, False, 0, 0)
        if now_ns < previous - self.backward_tolerance_ns:
            self.epoch += 1
            self.backward_jumps += 1
            self.latest_ns = now_ns
            return ClockObservation(now_ns, self.epoch, True, previous - now_ns, 0)
        leap = window_index(now_ns, self.window_ns) - window_index(previous, self.window_ns)
        forward_leap_windows = leap if leap > self.max_forward_windows else 0
        if forward_leap_windows:
            self.forward_leaps += 1
        self.latest_ns = max(previous, now_ns)
        return ClockObservation(now_ns, self.epoch, False, 0, forward_leap_windows)

    def reset(self) -> None:
        """Forget the last reading (the epoch counter keeps counting)."""
        self.latest_ns = None


@dataclass(frozen=True)
class Tick:
    """Window `index` of `epoch` has closed at `end_ns`."""

    index: int
    epoch: int
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class TickBatch:
    ticks: List[Tick] = field(default_factory=list)
    windows_skipped: int = 0   # due windows not announced because the clock leapt forward
    new_epoch: bool = False


@dataclass
class TickCounters(Counters):
    ticks_emitted: int = 0
    windows_skipped: int = 0
    epochs_started: int = 0



class TickScheduler:
    """Called on every timer tick of the clock node; returns the window ends that became due.

    Up to `max_burst_windows` due windows are returned at once (a late timer catching up); after a
    larger forward leap only the newest due window is returned and the others are counted as
    skipped. A backward jump starts a new epoch and announces nothing until the next window closes.
    The first call only anchors the schedule (the window in progress is announced when it ends).
    """

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS,
                 max_burst_windows: int = DEFAULT_MAX_BURST_WINDOWS,
                 backward_tolerance_ns: int = DEFAULT_BACKWARD_TOLERANCE_NS) -> None:
        self.window_ns = int(window_ns)
        self.watcher = ClockWatcher(window_ns, backward_tolerance_ns, max_burst_windows)
        self.max_burst_windows = int(max_burst_windows)
        self.counters = TickCounters()
        self._last_announced: Optional[int] = None

    @property
    def epoch(self) -> int:
        return self.watcher.epoch

    def poll(self, now_ns: int) -> TickBatch:
        observation = self.watcher.observe(now_ns)
        newest_closed = window_index(self.watcher.latest_ns, self.window_ns) - 1
        if self._last_announced is None or observation.new_epoch:
            self._last_announced = newest_closed
            if observation.new_epoch:
                self.counters.epochs_started += 1
            return TickBatch([], 0, observation.new_epoch)
        due = newest_closed - self._last_announced
        if due <= 0:
            return TickBatch()
        skipped = 0
        first = self._last_announced + 1
        if due > self.max_burst_windows:
            skipped = due - 1
            first = newest_closed
        ticks = [Tick(k, observation.epoch, window_start(k, self.window_ns),
                      window_end(k, self.window_ns)) for k in range(first, newest_closed + 1)]
        self._last_announced = newest_closed
        self.counters.ticks_emitted += len(ticks)
        self.counters.windows_skipped += skipped
        return TickBatch(ticks, skipped, False)

    def next_due_ns(self) -> Optional[int]:
        """When the next window closes (for timer programming); None before the first poll."""
        if self._last_announced is None:
            return None
        return window_end(self._last_announced + 1, self.window_ns)
