"""Real-time pacing of a unit's speech: fixed-length S16LE chunks released on a monotonic clock.

The caller passes `now_ns` in; nothing here sleeps. Pending speech is bounded to a few windows.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Deque, List, Optional

import numpy as np

from .audio import float_to_s16le
from .counters import Counters
from .types import OUTPUT_SAMPLE_RATE
from .units import samples_to_ns


@dataclass(frozen=True)
class SpeechChunk:
    window_index: int
    index_in_unit: int
    data_bytes: bytes      # S16LE mono
    num_samples: int
    sample_offset: int     # of the chunk's first sample within the unit's speech
    due_ns: int = 0        # when it is to be played (monotonic clock)
    # The same stretch of speech as float32 at another rate (the echo canceller's reference at
    # the microphone's rate), when the unit was enqueued with one.
    reference: Optional[np.ndarray] = None


@dataclass
class PacerCounters(Counters):
    units_enqueued: int = 0
    chunks_enqueued: int = 0
    chunks_released: int = 0
    chunks_flushed: int = 0          # dropped by flush() (barge-in, reset)
    chunks_dropped_overflow: int = 0  # dropped because too many windows were pending
    units_dropped_overflow: int = 0



class _PendingUnit:
    __slots__ = ("window_index", "start_ns", "chunks", "next_chunk", "end_ns")

    def __init__(self, window_index: int, start_ns: int, chunks: List[SpeechChunk],
                 end_ns: int) -> None:
        self.window_index = window_index
        self.start_ns = start_ns
        self.chunks = chunks
        self.next_chunk = 0
        self.end_ns = end_ns


class SpeechPacer:
    """Schedules chunk i of a unit at start + i * chunk duration.

    A unit's speech starts where the previously scheduled speech ends (or now, if that is past),
    so consecutive speaking units play back to back. At most `max_pending_windows` units wait;
    enqueueing another drops the oldest pending one, and the units after it move up to take its
    place in time, keeping the latency bounded.
    """

    def __init__(self, sample_rate: int = OUTPUT_SAMPLE_RATE, chunk_ms: int = 200,
                 max_pending_windows: int = 3) -> None:
        if sample_rate <= 0 or chunk_ms <= 0 or max_pending_windows < 1:
            raise ValueError("sample_rate and chunk_ms must be positive, max_pending_windows >= 1")
        if (sample_rate * chunk_ms) % 1000:
            raise ValueError(f"chunk_ms={chunk_ms} is not a whole number of samples at "
                             f"{sample_rate} Hz")
        self.sample_rate = int(sample_rate)
        self.chunk_ms = int(chunk_ms)
        self.chunk_samples = self.sample_rate * self.chunk_ms // 1000
        self.max_pending_windows = int(max_pending_windows)
        self.counters = PacerCounters()
        self._pending: Deque[_PendingUnit] = deque()
        self._play_end_ns: Optional[int] = None   # end of the last scheduled speech

    def _offset_ns(self, samples: int) -> int:
        return samples_to_ns(samples, self.sample_rate)

    @property
    def pending_chunks(self) -> int:
        return sum(len(u.chunks) - u.next_chunk for u in self._pending)

    @property
    def pending_windows(self) -> int:
        return len(self._pending)

    @property
    def play_end_ns(self) -> Optional[int]:
        return self._play_end_ns

    def enqueue(self, window_index: int, speech: np.ndarray, now_ns: int,
                reference: Optional[np.ndarray] = None) -> int:
        """Schedule one unit's float speech; returns the number of chunks made (0 if empty).
        `reference`: the same speech at another rate, cut into the same stretches."""
        speech = np.asarray(speech, dtype=np.float32).reshape(-1)
        total = speech.shape[0]
        if total == 0:
            return 0
        now_ns = int(now_ns)
        start_ns = now_ns if self._play_end_ns is None else max(now_ns, self._play_end_ns)
        pcm = float_to_s16le(speech)
        chunks = []
        for i, offset in enumerate(range(0, total, self.chunk_samples)):
            n = min(self.chunk_samples, total - offset)
            part = None
            if reference is not None:
                scale = reference.shape[0] / total
                part = reference[int(round(offset * scale)):int(round((offset + n) * scale))]
            chunks.append(SpeechChunk(int(window_index), i, pcm[2 * offset:2 * (offset + n)], n,
                                      offset, start_ns + self._offset_ns(offset), part))
        end_ns = start_ns + self._offset_ns(total)
        self._pending.append(_PendingUnit(int(window_index), start_ns, chunks, end_ns))
        self._play_end_ns = end_ns
        self.counters.units_enqueued += 1
        self.counters.chunks_enqueued += len(chunks)
        while len(self._pending) > self.max_pending_windows:
            self._drop_oldest()
        return len(chunks)

    def _drop_oldest(self) -> None:
        dropped = self._pending.popleft()
        remaining = len(dropped.chunks) - dropped.next_chunk
        self.counters.chunks_dropped_overflow += remaining
        self.counters.units_dropped_overflow += 1
        # The next unit takes over from where the dropped one would have continued.
        resume_ns = dropped.chunks[dropped.next_chunk].due_ns if remaining else dropped.end_ns
        shift = self._pending[0].start_ns - resume_ns
        if shift <= 0:
            return
        for unit in self._pending:
            unit.start_ns -= shift
            unit.end_ns -= shift
            unit.chunks = [replace(c, due_ns=c.due_ns - shift) for c in unit.chunks]
        self._play_end_ns -= shift

    def due(self, now_ns: int) -> List[SpeechChunk]:
        """Chunks whose time has come, oldest first (each is returned once)."""
        now_ns = int(now_ns)
        released: List[SpeechChunk] = []
        while self._pending:
            unit = self._pending[0]
            while unit.next_chunk < len(unit.chunks) and unit.chunks[unit.next_chunk].due_ns <= now_ns:
                released.append(unit.chunks[unit.next_chunk])
                unit.next_chunk += 1
            if unit.next_chunk < len(unit.chunks):
                break
            self._pending.popleft()
        self.counters.chunks_released += len(released)
        return released

    def next_due_ns(self) -> Optional[int]:
        """When the next chunk is due (for timer programming); None if nothing is pending."""
        if not self._pending:
            return None
        unit = self._pending[0]
        return unit.chunks[unit.next_chunk].due_ns

    def drop_unstarted(self, now_ns: int) -> int:
        """Drop pending units none of whose chunks has been released and whose start is still
        ahead (the turn ended; the unit playing now finishes); returns the chunks dropped."""
        now_ns = int(now_ns)
        kept: Deque[_PendingUnit] = deque()
        dropped = 0
        for unit in self._pending:
            if unit.next_chunk == 0 and unit.start_ns > now_ns:
                dropped += len(unit.chunks)
            else:
                kept.append(unit)
        if dropped:
            self._pending = kept
            self._play_end_ns = kept[-1].end_ns if kept else None
            self.counters.chunks_flushed += dropped
        return dropped

    def flush(self) -> int:
        """Drop all pending speech (barge-in, reset); returns how many chunks were dropped."""
        dropped = self.pending_chunks
        self._pending.clear()
        self._play_end_ns = None
        self.counters.chunks_flushed += dropped
        return dropped
