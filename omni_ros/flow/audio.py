"""Streaming microphone input conversion (raw PCM bytes -> float32 mono 16 kHz) and speech output.

One `AudioInputStream` per microphone stream keeps the resampler state between chunks and a
continuous output timeline, restarted when the stamps show a gap or jump.

Stamps are smoothed against the sample count: a chunk is expected at the timeline's anchor plus
the samples received since, and a stamp within one chunk's duration of that (at least
`max_gap_ns`) is snapped to it, so a driver that stamps each chunk from its own clock never makes
the output overlap or leave holes. A larger difference (a gap, a clock jump, the same stretch
sent again) restarts the timeline at the new stamp: what that makes overlap is counted downstream
(WindowBuffer's `samples_overlap`). A format change restarts the resampler, not the driver's
clock: the new timeline goes on where the output stopped when the next stamp is that close to it
(audio that came before its AudioInfo, read in the previous format, then overlaps nothing).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .counters import Counters
from .types import INPUT_SAMPLE_RATE
from .units import samples_to_ns
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
SUPPORTED_CHANNELS = (1, 2)
# Sample format -> numpy dtype. Spellings of ros-drivers audio_common (S16LE, F32LE) and lowercase.
SAMPLE_DTYPES = {"S16LE": np.dtype("<i2"), "F32LE": np.dtype("<f4")}
_FORMAT_ALIASES = {"S16": "S16LE", "INT16": "S16LE", "F32": "F32LE", "FLOAT32": "F32LE"}
DEFAULT_MAX_GAP_NS = 50_000_000
LAG_CHUNKS = 4   # a lag every one of this many chunks in a row shows is lost audio, not jitter


class AudioFormatError(ValueError):
    """The audio stream's format, rate or channel count is not one we can convert."""


def normalize_sample_format(sample_format: str) -> str:
    """'s16le', 'S16LE', 'f32le', ... -> 'S16LE' | 'F32LE'; anything else raises AudioFormatError."""
    name = str(sample_format).strip().upper()
    name = _FORMAT_ALIASES.get(name, name)
    if name not in SAMPLE_DTYPES:
        raise AudioFormatError(
            f"unsupported audio sample_format {sample_format!r}: supported are S16LE and F32LE "
            f"(little-endian 16-bit integer or 32-bit float PCM, case-insensitive)")
    return name


@dataclass
class AudioCounters(Counters):
    chunks: int = 0
    input_frames: int = 0
    output_samples: int = 0
    nonfinite_samples: int = 0     # NaN/inf replaced by 0
    partial_frame_bytes: int = 0   # trailing bytes that did not make a whole frame, dropped
    resets: int = 0                # stream restarted (gap, jump or format change)
    samples_dropped_on_reset: int = 0   # resampler tail discarded when the stream restarted
    duplicate_chunks: int = 0      # same stamp and bytes as the chunk before (re-delivered): dropped
    lag_restarts: int = 0          # ...of the resets: chunks kept coming late (audio lost within a chunk)



class AudioInputStream:
    """Decodes and resamples one microphone stream.

    `push(stamp_ns, raw_bytes)` returns `(stamp_ns, samples)` where samples is float32 mono at
    16 kHz (possibly empty while the resampler fills) and the stamp is the time of its first
    sample. Output stamps follow a continuous timeline anchored at the first chunk after each
    reset, so stamp jitter never makes output overlap or leave holes; a stamp that differs from
    the expected one by more than the chunk's own duration, and by more than `max_gap_ns`,
    restarts the stream, and so do LAG_CHUNKS chunks in a row each stamped more than half a
    chunk late (a lost chunk shorter than that bound: jitter scatters both ways, a loss shifts
    every later stamp), at the lag they share.
    """

    def __init__(self, sample_rate: int, channels: int, sample_format: str = "S16LE",
                 max_gap_ns: int = DEFAULT_MAX_GAP_NS, quality: str = "HQ") -> None:
        self.counters = AudioCounters()
        self.max_gap_ns = int(max_gap_ns)
        self.quality = quality
        self._resampler = None
        self._anchor_ns: Optional[int] = None   # stamp of the first input frame since the reset
        self._resume_ns: Optional[int] = None   # where the output stopped at a format change
        self._frames_in = 0                      # input frames since the reset
        self._samples_out = 0                    # output samples since the reset
        self._last_chunk = None                  # (stamp_ns, length, hash) of the previous chunk
        self._offsets: deque = deque(maxlen=LAG_CHUNKS)   # the last chunks' stamp - expected
        self.set_format(sample_rate, channels, sample_format)

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def sample_format(self) -> str:
        return self._format

    def set_format(self, sample_rate: int, channels: int, sample_format: str) -> None:
        """Change the input format (e.g. a new AudioInfo); restarts the stream if it differs."""
        fmt = normalize_sample_format(sample_format)
        try:
            rate, chans = int(sample_rate), int(channels)
        except (TypeError, ValueError):
            raise AudioFormatError(f"audio sample_rate/channels must be integers, got "
                                   f"{sample_rate!r}/{channels!r}") from None
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise AudioFormatError(f"unsupported audio sample_rate {rate} Hz: supported are "
                                   f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
        if chans not in SUPPORTED_CHANNELS:
            raise AudioFormatError(f"unsupported audio channel count {chans}: supported are 1 "
                                   f"(mono) and 2 (stereo, mixed down to mono)")
        if getattr(self, "_format", None) == fmt and self._rate == rate and self._channels == chans:
            return
        heard_until = None if self._anchor_ns is None else \
            self._anchor_ns + samples_to_ns(self._samples_out, INPUT_SAMPLE_RATE)
        self._end_timeline()   # counted in the old format
        self._format, self._rate, self._channels = fmt, rate, chans
        self._dtype = SAMPLE_DTYPES[fmt]
        self._frame_bytes = self._dtype.itemsize * chans
        self.reset()
        self._resume_ns = heard_until   # the driver's clock goes on across its format change

    def _end_timeline(self) -> None:
        """Count the restart of a stream that has a timeline, and the resampler tail it drops."""
        if self._anchor_ns is not None:
            self.counters.resets += 1
            if self._resampler is not None:
                expected = self._frames_in * INPUT_SAMPLE_RATE // self._rate
                self.counters.samples_dropped_on_reset += max(0, expected - self._samples_out)
        self._anchor_ns = None

    def reset(self) -> None:
        """Start a fresh stream: the next chunk anchors a new timeline."""
        self._end_timeline()
        self._resume_ns = None
        self._frames_in = 0
        self._samples_out = 0
        self._offsets.clear()
        self._resampler = None
        if self._rate != INPUT_SAMPLE_RATE:
            import soxr  # noqa: PLC0415 - only needed when resampling
            self._resampler = soxr.ResampleStream(self._rate, INPUT_SAMPLE_RATE, 1,
                                                  dtype="float32", quality=self.quality)

    def decode(self, raw_bytes) -> np.ndarray:
        """Raw interleaved PCM -> float32 mono at the input rate (no resampling, no state)."""
        if isinstance(raw_bytes, (bytes, bytearray)):
            data = raw_bytes
        else:   # array.array('B') from rclpy, memoryview, numpy; a list as a last resort
            try:
                data = memoryview(raw_bytes).cast("B")
            except TypeError:
                data = bytes(raw_bytes)
        usable = len(data) - len(data) % self._frame_bytes
        if usable != len(data):
            self.counters.partial_frame_bytes += len(data) - usable
        pcm = np.frombuffer(data, dtype=self._dtype, count=usable // self._dtype.itemsize)
        if self._dtype.kind == "i":
            samples = s16_to_float(pcm)
        else:
            samples = pcm.astype(np.float32)   # native-endian copy we may modify
            bad = ~np.isfinite(samples)
            if bad.any():
                self.counters.nonfinite_samples += int(np.count_nonzero(bad))
                samples[bad] = 0.0
        if self._channels == 2:
            samples = samples.reshape(-1, 2).mean(axis=1, dtype=np.float32)
        return samples

    def _snaps(self, offset_ns: int, chunk_ns: int) -> bool:
        """Whether a chunk lasting `chunk_ns` stamped `offset_ns` away from where the timeline
        expects it is snapped to it: within the chunk's duration, or within max_gap_ns."""
        offset_ns = abs(offset_ns)
        return offset_ns <= self.max_gap_ns or offset_ns <= chunk_ns

    def push(self, stamp_ns: int, raw_bytes) -> Tuple[int, np.ndarray]:
        stamp_ns = int(stamp_ns)
        data = raw_bytes if isinstance(raw_bytes, (bytes, bytearray)) else bytes(raw_bytes)
        signature = (stamp_ns, len(data), hash(bytes(data)))
        if signature == self._last_chunk and len(data):
            # The same chunk again (a re-delivery): it must not be heard twice.
            self.counters.duplicate_chunks += 1
            return stamp_ns, np.zeros(0, dtype=np.float32)
        self._last_chunk = signature
        mono = self.decode(data)
        self.counters.chunks += 1
        anchor_ns = stamp_ns
        chunk_ns = samples_to_ns(mono.shape[0], self._rate)
        if self._anchor_ns is not None:   # jitter up to a chunk is snapped to the timeline
            expected_ns = self._anchor_ns + samples_to_ns(self._frames_in, self._rate)
            offset_ns = stamp_ns - expected_ns
            if not self._snaps(offset_ns, chunk_ns):
                self.reset()
            else:
                self._offsets.append(offset_ns)
                lag_ns = min(self._offsets)
                if len(self._offsets) == LAG_CHUNKS and 2 * lag_ns > chunk_ns:
                    # Each of the last few chunks came more than half a chunk later than the
                    # timeline expects: audio was lost (a chunk dropped), which jitter, scattering
                    # both ways, does not do. Snapped over, the mic would lag the time it was
                    # heard at until the next restart; restart where the lag puts this chunk.
                    self.counters.lag_restarts += 1
                    self.reset()
                    anchor_ns = expected_ns + lag_ns
        if self._anchor_ns is None:
            resume_ns, self._resume_ns = self._resume_ns, None
            near = resume_ns is not None and self._snaps(stamp_ns - resume_ns, chunk_ns)
            self._anchor_ns = resume_ns if near else anchor_ns
        out_stamp = self._anchor_ns + samples_to_ns(self._samples_out, INPUT_SAMPLE_RATE)
        self._frames_in += mono.shape[0]
        self.counters.input_frames += mono.shape[0]
        if self._resampler is None:
            out = mono
        elif mono.shape[0]:
            out = self._resampler.resample_chunk(mono)
        else:
            out = np.zeros(0, dtype=np.float32)
        out = np.ascontiguousarray(out, dtype=np.float32)
        self._samples_out += out.shape[0]
        self.counters.output_samples += out.shape[0]
        return out_stamp, out


def as_published(samples: np.ndarray) -> np.ndarray:
    """float audio as 16-bit PCM carries it: NaN -> 0, clipped to [-1, 1] (a new float32 array)."""
    x = np.nan_to_num(np.asarray(samples, dtype=np.float32).reshape(-1), nan=0.0)
    np.clip(x, -1.0, 1.0, out=x)
    return x


def float_to_s16le(samples: np.ndarray) -> bytes:
    """float audio in [-1, 1] (clipped; NaN -> 0) -> little-endian 16-bit PCM bytes."""
    return (as_published(samples) * 32767.0).round().astype("<i2").tobytes()


def s16_to_float(pcm: np.ndarray) -> np.ndarray:
    """16-bit integer samples -> float32 in [-1, 1) (divided by 32768), a new array."""
    samples = np.asarray(pcm).astype(np.float32)
    samples *= 1.0 / 32768.0
    return samples


def s16le_to_float(data) -> np.ndarray:
    """Little-endian 16-bit PCM bytes -> float32 in [-1, 1) (whole samples only)."""
    usable = len(data) - len(data) % 2
    return s16_to_float(np.frombuffer(data, dtype="<i2", count=usable // 2))
