"""Bounded per-window storage of camera frames and 16 kHz audio, filled by stamp, emptied by tick.

Audio samples are placed on a global sample grid (sample i is at i / 16000 s), so a window holds
exactly window_samples samples and chunks split cleanly across window boundaries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .counters import Counters
from .timeline import DEFAULT_WINDOW_NS
from .types import INPUT_SAMPLE_RATE
from .units import NS_PER_S, ns_to_samples, sample_index


@dataclass
class BufferCounters(Counters):
    """Everything that came in, and where whatever was not used went."""

    frames_added: int = 0
    frames_superseded: int = 0   # a newer frame of the same window replaced it (not a drop)
    frames_late: int = 0         # its window was already taken
    frames_future: int = 0       # too far ahead of the newest taken window
    frames_stale: int = 0        # its window was discarded without being taken
    frames_cleared: int = 0      # discarded by clear() (new epoch / reset)
    samples_added: int = 0
    samples_overlap: int = 0     # a sample for that instant had already arrived (first write wins)
    samples_late: int = 0
    samples_future: int = 0
    samples_stale: int = 0
    samples_cleared: int = 0
    windows_taken: int = 0
    windows_stale: int = 0       # windows holding data that were discarded without being taken



class _WindowSlot:
    __slots__ = ("image", "image_stamp_ns", "audio", "filled", "samples", "frames")

    def __init__(self, window_samples: int) -> None:
        self.image: Any = None
        self.image_stamp_ns: Optional[int] = None
        self.audio = np.zeros(window_samples, dtype=np.float32)
        self.filled = np.zeros(window_samples, dtype=bool)
        self.samples = 0   # distinct samples written
        self.frames = 0    # 1 if an image is held


class WindowBuffer:
    """Holds the newest frame and the audio of each open window.

    Accepted windows lie in (newest_taken, newest_taken + max_future_windows]; before the first
    take, any window is accepted but only the newest `max_future_windows + 1` windows are kept.
    Overlapping audio: the first write of a sample wins; later duplicates are counted in
    `samples_overlap` and dropped (a re-delivered chunk then changes nothing).
    Images are stored as given (opaque); the buffer only compares their stamps.
    """

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS, sample_rate: int = INPUT_SAMPLE_RATE,
                 max_future_windows: int = 3) -> None:
        if window_ns <= 0 or sample_rate <= 0 or max_future_windows < 1:
            raise ValueError("window_ns and sample_rate must be positive, max_future_windows >= 1")
        if (window_ns * sample_rate) % NS_PER_S:
            raise ValueError(f"a window of {window_ns} ns is not a whole number of samples "
                             f"at {sample_rate} Hz")
        self.window_ns = int(window_ns)
        self.sample_rate = int(sample_rate)
        self.window_samples = ns_to_samples(self.window_ns, self.sample_rate)
        self.max_future_windows = int(max_future_windows)
        self.counters = BufferCounters()
        self._slots: Dict[int, _WindowSlot] = {}
        self._newest_taken: Optional[int] = None

    @property
    def newest_taken(self) -> Optional[int]:
        return self._newest_taken

    def open_windows(self) -> Tuple[int, ...]:
        return tuple(sorted(self._slots))

    # -- input ---------------------------------------------------------------------------------
    def add_frame(self, stamp_ns: int, image: Any) -> bool:
        """Store `image` if it is the newest frame of its window; False if it was dropped."""
        stamp_ns = int(stamp_ns)
        self.counters.frames_added += 1
        k = stamp_ns // self.window_ns
        if self._newest_taken is not None:
            if k <= self._newest_taken:
                self.counters.frames_late += 1
                return False
            if k > self._newest_taken + self.max_future_windows:
                self.counters.frames_future += 1
                return False
        slot = self._slot(k)
        if slot is None:
            self.counters.frames_stale += 1
            return False
        if slot.image_stamp_ns is not None:
            self.counters.frames_superseded += 1
            if stamp_ns < slot.image_stamp_ns:
                return True   # kept the newer one already held; this frame is superseded
        slot.image = image
        slot.image_stamp_ns = stamp_ns
        slot.frames = 1
        return True

    def add_audio(self, stamp_ns: int, samples: np.ndarray) -> int:
        """Place float32 mono samples (first one at `stamp_ns`) by time; returns samples stored."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = samples.shape[0]
        if n == 0:
            return 0
        self.counters.samples_added += n
        W = self.window_samples
        # Global sample index of the first sample, rounded to the nearest grid point.
        first = sample_index(stamp_ns, self.sample_rate)
        end = first + n
        lo, hi = first, end   # the part that may be stored
        if self._newest_taken is not None:
            accept_from = (self._newest_taken + 1) * W
            accept_to = (self._newest_taken + self.max_future_windows + 1) * W
            late = min(end, accept_from) - first
            if late > 0:
                self.counters.samples_late += late
                lo = first + late
            future = end - max(first, accept_to)
            if future > 0:
                self.counters.samples_future += future
                hi = end - future
        else:
            # Nothing taken yet: only the newest windows are kept; older parts are stale already.
            keep_from = (end - 1) // W - self.max_future_windows
            stale = min(end, keep_from * W) - first
            if stale > 0:
                self.counters.samples_stale += stale
                lo = first + stale
        stored = 0
        pos = lo
        while pos < hi:
            k = pos // W
            seg_end = min(hi, (k + 1) * W)
            slot = self._slot(k)
            if slot is None:
                self.counters.samples_stale += seg_end - pos
            else:
                stored += self._write(slot, pos - k * W, samples[pos - first:seg_end - first])
            pos = seg_end
        return stored

    def _write(self, slot: _WindowSlot, offset: int, chunk: np.ndarray) -> int:
        span = slice(offset, offset + chunk.shape[0])
        filled = slot.filled[span]
        if not filled.any():
            slot.audio[span] = chunk
            filled[:] = True
            written = chunk.shape[0]
        else:
            fresh = ~filled
            written = int(np.count_nonzero(fresh))
            slot.audio[span][fresh] = chunk[fresh]
            filled[fresh] = True
            self.counters.samples_overlap += chunk.shape[0] - written
        slot.samples += written
        return written

    def _slot(self, k: int) -> Optional[_WindowSlot]:
        """The slot of window k, created if needed; None if k is older than every kept window."""
        slot = self._slots.get(k)
        if slot is not None:
            return slot
        capacity = self.max_future_windows + (1 if self._newest_taken is None else 0)
        if len(self._slots) >= capacity:
            oldest = min(self._slots)
            if k < oldest:
                return None
            self._discard(self._slots.pop(oldest), stale=True)
        slot = _WindowSlot(self.window_samples)
        self._slots[k] = slot
        return slot

    def _discard(self, slot: _WindowSlot, stale: bool) -> None:
        if stale:
            self.counters.windows_stale += 1
            self.counters.frames_stale += slot.frames
            self.counters.samples_stale += slot.samples
        else:
            self.counters.frames_cleared += slot.frames
            self.counters.samples_cleared += slot.samples

    # -- output --------------------------------------------------------------------------------
    def take_window(self, k: int) -> Tuple[Any, Optional[int], np.ndarray, float]:
        """(image, image_stamp_ns, audio[window_samples], coverage) of window k.

        Forgets window k and every older window; later data for them counts as late. Silence
        fills whatever did not arrive; coverage is the fraction of samples that did.
        """
        k = int(k)
        for old in [w for w in self._slots if w < k]:
            self._discard(self._slots.pop(old), stale=True)
        slot = self._slots.pop(k, None)
        if self._newest_taken is None or k > self._newest_taken:
            self._newest_taken = k
        self.counters.windows_taken += 1
        if slot is None:
            return None, None, np.zeros(self.window_samples, dtype=np.float32), 0.0
        return slot.image, slot.image_stamp_ns, slot.audio, slot.samples / self.window_samples

    def clear(self) -> None:
        """Drop everything held and forget which windows were taken (new epoch or reset)."""
        for slot in self._slots.values():
            self._discard(slot, stale=False)
        self._slots.clear()
        self._newest_taken = None
