"""Barge-in: notice, mic chunk by mic chunk, that a person starts speaking while the robot speaks.

The microphone hears the robot's own voice too, so before voice-activity detection the robot's
published speech (the far-end reference, stamped on the ROS clock when it was published) is
cancelled from the mic signal by an echo canceller of flow/echo.py.

The strategy in full: reference and mic are aligned by stamp (mic sample at t is compared with
the reference published at t - echo_delay, the speaker latency and the sound's flight); the
canceller removes the linear echo, taking the mic as one gap-free stream; each 32 ms frame of the
residual whose power shows it is mostly echo is ruled out there (no VAD run: the cheap common case
while the robot speaks alone), the VAD scores the others; `min_speech_ms` of consecutive frames
above the threshold while the robot is speaking is a barge-in, reported with the onset's stamp.
Without a reference in the frame (the robot silent) nothing is cancelled and nothing triggers.

The VAD is any callable scoring a 512-sample frame; omni_node passes flow/vad.py's VoiceActivity,
silero-vad's ONNX model run in onnxruntime. No ROS and no torch here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .counters import Counters
from .echo import ReferenceBuffer
from .types import INPUT_SAMPLE_RATE
from .units import samples_to_ns

FRAME = 512                 # silero-vad's frame at 16 kHz (32 ms)
ECHO_TAIL_FRAMES = 4        # how far back (128 ms) a frame's echo can come from in the reference


@dataclass
class BargeInCounters(Counters):
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
        self.set_min_speech_ms(min_speech_ms)
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

    def set_min_speech_ms(self, min_speech_ms: float) -> None:
        """How long a person must be heard before it is a barge-in (whole VAD frames, at least one)."""
        self.min_speech_frames = max(1, int(np.ceil(min_speech_ms * self.sample_rate / 1000.0 / FRAME)))

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
