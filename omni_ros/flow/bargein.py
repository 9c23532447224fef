"""Barge-in: notice, mic chunk by mic chunk, that a person starts speaking while the robot speaks.

The microphone hears the robot's own voice too. Before voice-activity detection the robot's
published speech (the far-end reference, known exactly, stamped on the ROS clock when it was
published) is cancelled from the mic signal by an adaptive echo canceller:

* `FdafEchoCanceller`: a partitioned-block frequency-domain NLMS filter (our own numpy code),
  with a Geigel double-talk detector that freezes adaptation while the person talks; it models
  an echo path up to `tail_ms` long after a fixed bulk delay (`echo_delay_ms`, the speaker
  latency and the sound's flight), and
* `WebRtcEchoCanceller`: the WebRTC audio-processing module's AEC, used when the optional
  `aec_audio_processing` package is installed (`echo_canceller="webrtc"`).

The strategy in full: reference and mic are aligned by stamp (mic sample at t is compared with
the reference published at t - echo_delay); the canceller removes the linear echo, taking the mic as
one gap-free stream; each 32 ms frame of the residual whose power shows it is mostly echo is
ruled out there (no VAD run: the cheap common case while the robot speaks alone), silero-vad
scores the others; `min_speech_ms` of consecutive frames above the
threshold while the robot is speaking is a barge-in, reported with the onset's stamp. Without
a reference in the frame (the robot silent) nothing is cancelled and nothing triggers.
No ROS and no torch here: the VAD (flow/vad.py) runs silero-vad in onnxruntime.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .audio import float_to_s16le, s16le_to_float
from .types import INPUT_SAMPLE_RATE
from .units import sample_index, samples_to_ns
FRAME = 512                 # silero-vad's frame at 16 kHz (32 ms)
ECHO_TAIL_FRAMES = 4        # how far back (128 ms) a frame's echo can come from in the reference
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


@dataclass
class BargeInCounters:
    mic_samples: int = 0
    frames_scored: int = 0          # 32 ms frames looked at while the robot spoke
    speech_frames: int = 0          # ...of which above the threshold
    triggers: int = 0
    reference_samples: int = 0
    double_talk_blocks: int = 0
    frames_echo_gated: int = 0      # ...of which mostly echo after cancelling: VAD not run
    frames_vad: int = 0             # ...of which scored by the VAD
    cpu_us: int = 0                 # CPU time in push_mic (cancelling and VAD), microseconds
    onsets: int = 0                 # runs of speech frames begun (speech held until decided)

    def snapshot(self) -> dict:
        return dict(vars(self))


class BargeInDetector:
    """Feed mic audio (16 kHz float, stamped) as it arrives and the robot's published speech
    (16 kHz, stamped when published); `push_mic` returns the onset stamp of a barge-in or None.

    `vad(frame) -> probability` scores one 512-sample frame (a VoiceActivity instance fits).
    """

    def __init__(self, vad: Callable[[np.ndarray], float], echo_canceller=None,
                 threshold: float = 0.5, min_speech_ms: float = 64, echo_delay_ms: float = 0.0,
                 reference_hangover_ms: float = 300.0, residual_gate_db: float = 6.0,
                 sample_rate: int = INPUT_SAMPLE_RATE) -> None:
        self.vad = vad
        self.canceller = echo_canceller
        self.threshold = float(threshold)
        self.sample_rate = int(sample_rate)
        self.min_speech_frames = max(1, int(np.ceil(min_speech_ms * sample_rate / 1000.0 / FRAME)))
        self.echo_delay = int(round(echo_delay_ms * sample_rate / 1000.0))
        self.hangover = int(round(reference_hangover_ms * sample_rate / 1000.0))
        self.residual_gate = 10.0 ** (-float(residual_gate_db) / 10.0)
        self.reference = ReferenceBuffer(sample_rate=sample_rate)
        self.counters = BargeInCounters()
        self._pending = np.zeros(0, dtype=np.float32)
        self._pending_first: Optional[int] = None   # grid index of _pending[0]
        self._mic = np.zeros(0, dtype=np.float32)     # cancelled, not yet framed: raw mic...
        self._clean = np.zeros(0, dtype=np.float32)   # ...and the canceller's output
        self._frame_first = 0                         # grid index of _mic[0] and _clean[0]
        self._run = 0                                 # consecutive speech frames
        self._onset: Optional[int] = None
        self._run_began = 0.0                         # time.monotonic() of the run's first frame
        self._erle_db = 0.0
        self.last_probability = 0.0

    def push_reference(self, stamp_ns: int, samples_16k: np.ndarray) -> None:
        self.reference.add(stamp_ns, samples_16k)
        self.counters.reference_samples += int(np.asarray(samples_16k).size)

    def robot_speaking_at(self, grid_index: int) -> bool:
        end = self.reference.newest_end
        if end is not None and end - (grid_index - self.echo_delay) > self.reference.size:
            self.reference.clear()   # the clock jumped back: that reference is of another epoch
            return False
        return end is not None and grid_index - self.echo_delay < end + self.hangover

    def holds_speech(self, now: float) -> bool:
        """Whether speech output should wait: a run of speech frames has begun and is not yet
        long enough to be a barge-in (`min_speech_ms`). Holding the next chunk until the run is
        decided means a barge-in stops the robot's voice from its first speech frame on, not
        from the last one it needs; a run that ends without triggering only delays a chunk.
        Bounded in time (two frames beyond `min_speech_ms`) in case the mic stops mid-run."""
        if not 0 < self._run < self.min_speech_frames:
            return False
        limit = (self.min_speech_frames + 2) * FRAME / self.sample_rate
        return now - self._run_began < limit

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self._pending_first = None
        self._mic = self._clean = np.zeros(0, dtype=np.float32)
        self._run, self._onset = 0, None
        self.reference.clear()
        if self.canceller is not None:
            self.canceller.reset()
        reset = getattr(self.vad, "reset", None)
        if callable(reset):
            reset()

    def push_mic(self, stamp_ns: int, samples_16k: np.ndarray) -> Optional[int]:
        started = time.thread_time_ns()
        try:
            return self._push_mic(stamp_ns, samples_16k)
        finally:
            self.counters.cpu_us += (time.thread_time_ns() - started) // 1000

    def _push_mic(self, stamp_ns: int, samples_16k: np.ndarray) -> Optional[int]:
        samples = np.asarray(samples_16k, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
        if samples.shape[0] == 0:
            return None
        self.counters.mic_samples += samples.shape[0]
        first = self.reference.index(stamp_ns)
        if self._pending_first is None or first != self._pending_first + self._pending.shape[0]:
            # A gap or a jump in the mic timeline: start the frames afresh from this chunk.
            self._pending, self._pending_first = samples, first
            self._mic = self._clean = np.zeros(0, dtype=np.float32)
            self._frame_first = first
        else:
            self._pending = np.concatenate([self._pending, samples])
        # The canceller takes the mic as one gap-free stream in its own block size...
        step = self.canceller.block if self.canceller is not None else self._pending.shape[0]
        whole = self._pending.shape[0] - self._pending.shape[0] % step
        if whole:
            mic, start = self._pending[:whole], self._pending_first
            self._pending = self._pending[whole:]
            self._pending_first += whole
            clean = mic
            if self.canceller is not None and (self.robot_speaking_at(start)
                                               or self.robot_speaking_at(start + whole - 1)):
                far = self.reference.get(start - self.echo_delay + self.canceller.lead, whole)
                clean = self.canceller.process(mic, far).astype(np.float32, copy=False)
                self.counters.double_talk_blocks = getattr(self.canceller, "double_talk_blocks", 0)
            self._mic = np.concatenate([self._mic, mic])
            self._clean = np.concatenate([self._clean, clean])
        # ...and the VAD scores the cancelled stream in its 32 ms frames.
        onset = None
        while self._clean.shape[0] >= FRAME:
            hit = self._frame(self._mic[:FRAME], self._clean[:FRAME], self._frame_first)
            self._mic, self._clean = self._mic[FRAME:], self._clean[FRAME:]
            self._frame_first += FRAME
            if hit is not None and onset is None:
                onset = hit
        return onset

    def _echo_like(self, mic: np.ndarray, clean: np.ndarray, far: np.ndarray) -> bool:
        """Whether a frame's residual is mostly echo (decided before, and instead of, the VAD).

        The canceller leaves -20..-30 dB of the echo, which silero still hears as speech; a
        person talking keeps the residual near the mic level. Until the canceller has converged
        (ERLE < 6 dB) the person must also be louder than the reference itself: than its
        loudest frame within the echo tail, where the echo in this frame comes from."""
        mic_power = float(np.dot(mic, mic)) / mic.shape[0] + 1e-12
        clean_power = float(np.dot(clean, clean)) / clean.shape[0] + 1e-12
        frames = far.reshape(-1, FRAME)
        far_power = float(np.max(np.einsum("ij,ij->i", frames, frames))) / FRAME
        echo_like = clean_power < self.residual_gate * mic_power
        if self._erle_db < 6.0 and far_power > 1e-7:
            echo_like = echo_like or mic_power < far_power
        if echo_like and far_power > 1e-7:
            # Echo-only frames show how much of the echo the canceller removes (ERLE).
            self._erle_db = 0.9 * self._erle_db + 0.1 * 10.0 * np.log10(mic_power / clean_power)
        return echo_like

    def _frame(self, mic: np.ndarray, clean: np.ndarray, start: int) -> Optional[int]:
        if not self.robot_speaking_at(start):
            self._run, self._onset = 0, None
            return None
        self.counters.frames_scored += 1
        tail = ECHO_TAIL_FRAMES * FRAME
        far = self.reference.get(start - self.echo_delay - tail, tail + FRAME)
        if self.canceller is not None and self._echo_like(mic, clean, far):
            # Echo: no person's speech to look for, so the VAD is not run at all (most frames
            # while the robot speaks alone end here, at the cost of a few means).
            self.counters.frames_echo_gated += 1
            p = 0.0
        else:
            p = float(self.vad(clean))
            self.counters.frames_vad += 1
        self.last_probability = p
        if p < self.threshold:
            self._run, self._onset = 0, None
            return None
        self.counters.speech_frames += 1
        if self._run == 0:
            self._onset = start
            self._run_began = time.monotonic()
            self.counters.onsets += 1
        self._run += 1
        if self._run == self.min_speech_frames:
            self.counters.triggers += 1
            return samples_to_ns(self._onset, self.sample_rate)
        return None
