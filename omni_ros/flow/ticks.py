"""A bounded hand-over of window ticks from the clock callback to the unit worker.

The worker takes the newest tick waiting (or, with max_lag n, the one n ticks behind it): ticks
that queued up while a unit ran longer than a window are superseded (counted), and the unit
runner skips or merges their windows (overload_policy). The queue never grows past `maxsize`;
when full, the oldest tick goes.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Optional, Tuple

from .counters import Counters


@dataclass
class TickQueueCounters(Counters):
    ticks_put: int = 0
    ticks_superseded: int = 0       # a newer tick was waiting when the worker took one
    ticks_dropped_overflow: int = 0



class TickQueue:
    def __init__(self, maxsize: int = 16) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = int(maxsize)
        self.counters = TickQueueCounters()
        self._items: Deque[Tuple[Any, float]] = deque()
        self._ready = threading.Condition()

    def put(self, tick: Any, received: float) -> None:
        with self._ready:
            self.counters.ticks_put += 1
            self._items.append((tick, received))
            while len(self._items) > self.maxsize:
                self._items.popleft()
                self.counters.ticks_dropped_overflow += 1
            self._ready.notify()

    def get_newest(self, timeout: Optional[float] = None,
                   max_lag: int = 0) -> Optional[Tuple[Any, float]]:
        """The newest waiting (tick, received); older ones are superseded. None on timeout.

        With `max_lag` n, up to n newer ticks may stay waiting (a unit that ran a little over a
        window costs no window; the runner catches up within n windows once units are fast).
        A tick of an older epoch than one before it never supersedes it (`epoch` attribute)."""
        with self._ready:
            if not self._items and not self._ready.wait_for(lambda: bool(self._items), timeout):
                return None
            newest = self._items.popleft()
            while len(self._items) > max_lag:
                candidate = self._items.popleft()
                if getattr(candidate[0], "epoch", 0) >= getattr(newest[0], "epoch", 0):
                    newest = candidate
                self.counters.ticks_superseded += 1
            return newest

    def clear(self) -> None:
        with self._ready:
            self._items.clear()

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)
