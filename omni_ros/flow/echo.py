"""Echo cancelling against the played reference: the robot's published speech, stamped on the
ROS clock, removed from the microphone signal.

* `ReferenceBuffer`: the far-end signal on the 16 kHz sample grid of the ROS clock, a bounded ring
  read back by stamp.
* `FdafEchoCanceller`: a partitioned-block frequency-domain NLMS filter (our own numpy code) with
  a Geigel double-talk detector that freezes adaptation while the person talks; it models an
  echo path up to `tail_ms` long.
* `WebRtcEchoCanceller`: the WebRTC audio-processing module's AEC3, used when the optional
  `aec_audio_processing` package is installed.
* `make_echo_canceller`: picks one by name (the `echo_canceller` parameter).

A canceller takes mic and reference blocks already aligned by its user; `lead` says how many
samples of reference it wants ahead of the mic. No ROS here.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .audio import float_to_s16le, s16le_to_float
from .types import INPUT_SAMPLE_RATE
from .units import sample_index

ECHO_CANCELLERS = ("auto", "fdaf", "webrtc", "none")


class ReferenceBuffer:
    """The far-end (robot speech) signal on the 16 kHz sample grid of the ROS clock, bounded."""

    def __init__(self, seconds: float = 8.0, sample_rate: int = INPUT_SAMPLE_RATE) -> None:
        self.sample_rate = int(sample_rate)
        self.size = int(seconds * sample_rate)
        self._data = np.zeros(self.size, dtype=np.float32)
        self._owner = np.full(self.size, -1, dtype=np.int64)   # grid index held by each slot
        self._ramp = np.arange(self.size, dtype=np.int64)
        self.newest_end: Optional[int] = None                   # grid index after the newest sample

    def index(self, stamp_ns: int) -> int:
        return sample_index(stamp_ns, self.sample_rate)

    def add(self, stamp_ns: int, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.shape[0] == 0:
            return
        first = self.index(stamp_ns) + max(0, samples.shape[0] - self.size)   # keeps the newest
        samples = samples[-self.size:]
        idx = np.arange(first, first + samples.shape[0])
        self._data[idx % self.size] = samples
        self._owner[idx % self.size] = idx
        end = first + samples.shape[0]
        self.newest_end = end if self.newest_end is None else max(self.newest_end, end)

    def get(self, first: int, n: int) -> np.ndarray:
        """n samples from grid index `first` (zeros where nothing was published)."""
        start = first % self.size
        if n > self.size or start + n > self.size:   # wraps around the ring
            idx = first + np.arange(n)
            slots = idx % self.size
            return np.where(self._owner[slots] == idx, self._data[slots], 0.0).astype(np.float32)
        held = self._owner[start:start + n] - first == self._ramp[:n]
        out = self._data[start:start + n].copy()
        out[~held] = 0.0
        return out

    def clear(self) -> None:
        self._owner[:] = -1
        self.newest_end = None


class FdafEchoCanceller:
    """Partitioned-block frequency-domain adaptive filter (overlap-save NLMS) with a Geigel
    double-talk detector. `process(near, far)` takes blocks of `block` samples."""

    lead = 0   # samples of reference given ahead of the mic: none, it models a zero-delay echo

    def __init__(self, block: int = 256, tail_ms: float = 128.0, step: float = 0.5,
                 sample_rate: int = INPUT_SAMPLE_RATE, geigel: float = 0.8) -> None:
        self.block = int(block)
        self.partitions = max(1, int(round(tail_ms * sample_rate / 1000.0 / block)))
        self.step = float(step)
        self.geigel = float(geigel)
        self.reset()

    def reset(self) -> None:
        B, P = self.block, self.partitions
        self._weights = np.zeros((P, B + 1), dtype=np.complex128)
        self._spectra = np.zeros((P, B + 1), dtype=np.complex128)
        self._previous_far = np.zeros(B, dtype=np.float64)
        self._power = np.full(B + 1, 1e-6)
        self._far_peaks = np.zeros(P + 1)
        self.double_talk_blocks = 0

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancel `far`'s echo from `near`; both a whole number of blocks long."""
        B = self.block
        return np.concatenate([self._process_block(near[i:i + B], far[i:i + B])
                               for i in range(0, len(near), B)] or [np.zeros(0, np.float32)])

    def _process_block(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        B = self.block
        near = np.asarray(near, dtype=np.float64)
        far = np.asarray(far, dtype=np.float64)
        X = np.fft.rfft(np.concatenate([self._previous_far, far]))
        self._previous_far = far
        self._spectra = np.roll(self._spectra, 1, axis=0)
        self._spectra[0] = X
        self._far_peaks = np.roll(self._far_peaks, 1)
        self._far_peaks[0] = np.max(np.abs(far)) if far.size else 0.0
        echo = np.fft.irfft(np.sum(self._weights * self._spectra, axis=0), n=2 * B)[B:]
        error = near - echo
        far_peak = float(np.max(self._far_peaks))
        if far_peak < 1e-4:
            return near.astype(np.float32)    # no reference: nothing to cancel, nothing to learn
        self._power = 0.9 * self._power + 0.1 * (np.abs(X) ** 2)
        if np.max(np.abs(near)) > self.geigel * far_peak and np.max(np.abs(near)) > 4 * np.max(np.abs(echo)) + 1e-3:
            self.double_talk_blocks += 1     # the person talks: do not learn from it
        else:
            E = np.fft.rfft(np.concatenate([np.zeros(B), error]))
            gradient = self.step * np.conj(self._spectra) * E / (self._power * self.partitions + 1e-8)
            # Constrain each partition to a causal B-tap filter (overlap-save gradient constraint).
            taps = np.fft.irfft(gradient, n=2 * B, axis=1)
            taps[:, B:] = 0.0
            self._weights += np.fft.rfft(taps, axis=1)
        return error.astype(np.float32)


class WebRtcEchoCanceller:
    """The WebRTC audio-processing AEC through the optional `aec_audio_processing` package.

    AEC3 expects the echo to lag the reference it was given; an echo in the same 10 ms block
    as its reference (a microphone next to the speaker, or a simulation) is not cancelled and
    the robot would interrupt itself. So it gets the reference one block ahead of the mic."""

    def __init__(self, sample_rate: int = INPUT_SAMPLE_RATE, block: int = 160) -> None:
        from aec_audio_processing import AudioProcessor  # noqa: PLC0415 - optional dependency
        self.block = int(block)   # 10 ms at 16 kHz, what the module takes
        self.lead = self.block
        self._ap = AudioProcessor(enable_aec=True, enable_ns=False, enable_agc=False,
                                  enable_vad=False)
        self._ap.set_stream_format(sample_rate, 1, sample_rate, 1)
        self._ap.set_reverse_stream_format(sample_rate, 1)
        self.double_talk_blocks = 0

    def reset(self) -> None:
        pass

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancel `far`'s echo from `near`; both a whole number of 10 ms blocks long."""
        near16, far16, size = float_to_s16le(near), float_to_s16le(far), 2 * self.block
        out = b"".join(self._process_block(near16[i:i + size], far16[i:i + size])
                       for i in range(0, len(near16), size))
        return s16le_to_float(out)

    def _process_block(self, near16: bytes, far16: bytes) -> bytes:
        self._ap.process_reverse_stream(far16)
        return self._ap.process_stream(near16)


def make_echo_canceller(kind: str = "auto", tail_ms: float = 128.0):
    """'fdaf' | 'webrtc' | 'none' | 'auto' (webrtc when installed, else fdaf) -> canceller or None."""
    if kind not in ECHO_CANCELLERS:
        raise ValueError(f"echo_canceller must be one of {ECHO_CANCELLERS}, got {kind!r}")
    if kind == "none":
        return None
    if kind in ("webrtc", "auto"):
        try:
            return WebRtcEchoCanceller()
        except Exception:  # noqa: BLE001 - not installed or not working here
            if kind == "webrtc":
                raise
    return FdafEchoCanceller(tail_ms=tail_ms)
