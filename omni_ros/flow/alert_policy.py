"""Which proactive alerts reach the operator: a minimum confidence and a cooldown per standing
instruction. Plain Python on plain values (the node passes its clock's time), no ROS here.

- An alert whose confidence (the speak probability of the turn's first unit) is below
  `min_confidence` is not published (`below_confidence`).
- After a published alert, further alerts raised under the same standing instruction within
  `cooldown_ns` are not published (`in_cooldown`). Suppressed alerts do not extend the cooldown,
  so a model that keeps alerting is heard once every `cooldown_ns`.
- A changed standing instruction starts fresh: the first alert under it is published at once
  (`instruction_in_force` tells the policy what the node's parameter says now; an alert carrying
  another instruction than the last published one is fresh too).
- Time is whatever clock the caller reads (the node's ROS clock, sim time aware); a clock that
  jumps backwards (a bag replayed again, a simulator reset) ends the cooldown.

The state is one instruction and one time: memory stays the same however long it runs. The
methods may be called from different threads (the unit worker, a reset, a parameter change).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

from .counters import Counters
from .units import NS_PER_S

PUBLISH = "published"
BELOW_CONFIDENCE = "below_confidence"
IN_COOLDOWN = "in_cooldown"


@dataclass
class AlertPolicyCounters(Counters):
    alerts_published: int = 0
    alerts_below_confidence: int = 0
    alerts_in_cooldown: int = 0


class AlertPolicy:
    def __init__(self, min_confidence: float = 0.0, cooldown_sec: float = 0.0,
                 instruction: str = "") -> None:
        self.min_confidence = 0.0
        self.cooldown_ns = 0
        self.configure(min_confidence, cooldown_sec)
        self.counters = AlertPolicyCounters()
        self._lock = threading.Lock()
        self._in_force = instruction
        self._last_instruction: Optional[str] = None   # of the last published alert
        self._last_ns: Optional[int] = None            # when it was published

    def configure(self, min_confidence: float, cooldown_sec: float) -> None:
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
        if float(cooldown_sec) < 0.0:
            raise ValueError(f"cooldown_sec must not be negative, got {cooldown_sec!r}")
        self.min_confidence = float(min_confidence)
        self.cooldown_ns = int(round(float(cooldown_sec) * NS_PER_S))

    def instruction_in_force(self, instruction: str) -> None:
        """The standing instruction now in force; a change ends the cooldown."""
        with self._lock:
            if instruction != self._in_force:
                self._in_force = instruction
                self._last_instruction = self._last_ns = None

    def cooldown_left_ns(self, instruction: str, now_ns: int) -> int:
        """How long alerts under `instruction` stay held back at `now_ns` (0: not at all)."""
        with self._lock:
            return self._cooldown_left_ns(instruction, now_ns)

    def _cooldown_left_ns(self, instruction: str, now_ns: int) -> int:
        if self._last_ns is None or instruction != self._last_instruction or now_ns < self._last_ns:
            return 0
        return max(0, self._last_ns + self.cooldown_ns - now_ns)

    def decide(self, instruction: str, confidence: float, now_ns: int) -> str:
        """PUBLISH, BELOW_CONFIDENCE or IN_COOLDOWN for an alert raised now; counted, and a
        published alert starts its instruction's cooldown."""
        with self._lock:
            if float(confidence) < self.min_confidence:
                outcome = BELOW_CONFIDENCE
            elif self._cooldown_left_ns(instruction, int(now_ns)) > 0:
                outcome = IN_COOLDOWN
            else:
                outcome = PUBLISH
                self._last_instruction, self._last_ns = instruction, int(now_ns)
            name = f"alerts_{outcome}"
            setattr(self.counters, name, getattr(self.counters, name) + 1)
        return outcome
