"""Handing a released model's memory back to the system (lifecycle cleanup)."""
from __future__ import annotations

import ctypes
import gc


def release_memory() -> bool:
    """Collect what is unreachable (objects frozen at start-up included: they may hold the model)
    and have glibc return free heap pages to the kernel; whether glibc's trim ran."""
    gc.unfreeze()
    gc.collect()
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):      # not glibc
        return False
