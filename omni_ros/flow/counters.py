"""The base of the flow's counter records (what /diagnostics shows of each part)."""
from __future__ import annotations


class Counters:
    """Mixed into a dataclass of int fields: `snapshot()` gives them as {name: value}."""

    def snapshot(self) -> dict:
        return dict(vars(self))
