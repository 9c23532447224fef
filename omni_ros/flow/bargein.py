"""Barge-in: notice, mic chunk by mic chunk, that a person starts speaking while the robot speaks.

The microphone hears the robot's own voice too, so before voice-activity detection the robot's
published speech (the far-end reference, stamped on the ROS clock when it was published) is
cancelled from the mic signal by an echo canceller of flow/echo.py.

The strategy in full: reference and mic are aligned by stamp (mic sample at t is compared with
the reference played at t - echo_delay, the speaker latency and the sound's flight; the
reference buffer lays chunks back to back as the loudspeaker plays them); the canceller removes
the linear echo, taking the mic as one gap-free stream; each 32 ms frame whose residual does not
stand above what the canceller leaves of the robot's voice in at least two of its frequency
bands (its echo estimate there times the residual ratio of the robot's own frames, an upper
quantile learnt band by band as it speaks, from the frames in which its voice plays and the
bands in which its echo stands above the room's noise, and above the floor), whose residual
as a whole lies near its floor, or whose mic has fallen well under the echo estimated just
before (the robot's voice stopping, its echo dying away) is ruled out there (no VAD run: the
cheap common case while the robot speaks alone), the VAD scores the others with the expected
residual echo taken out of each band, from a fresh state each time the robot starts speaking;
`min_speech_ms` of consecutive frames above the threshold while the robot is speaking is a
barge-in, reported with the onset's stamp. Until the canceller has learnt the echo path (over at
least a second of the robot's echo) nothing triggers (barge-in is not armed), nor without a
reference in the frame (the robot silent). Where
the robot's voice does not reach the mic at all (a headset, a far loudspeaker, an array that
cancels its own echo), the mic itself is judged against its floor and goes to the VAD, not the
canceller's output.

The VAD is any callable scoring a 512-sample frame; omni_node passes flow/vad.py's VoiceActivity,
silero-vad's ONNX model run in onnxruntime. No ROS and no torch here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np

from .counters import Counters
from .echo import ReferenceBuffer
from .types import INPUT_SAMPLE_RATE
from .units import samples_to_ns

FRAME = 512                 # silero-vad's frame at 16 kHz (32 ms)
ECHO_TAIL_FRAMES = 4        # how far back (128 ms) a frame's echo can come from in the reference
CONVERGED_ERLE_DB = 6.0     # the canceller has learnt the echo path: barge-in is armed...
CONVERGED_FRAMES = 31       # ...measured over at least this many frames of audible echo (1 s)
RESIDUAL_QUANTILE = 0.9     # the share of echo frames whose residual the expected one covers
RESIDUAL_STEP_DB = 1.0      # the quantile tracker's step per frame
FAR_PAUSE_DB = 20.0         # a reference frame this far under its recent peak: a pause
RESIDUAL_DECAY_DB = 3.84    # per 32 ms frame: 60 dB in 0.5 s, a reverberant room's decay
RESIDUAL_DECAY = 10.0 ** (-RESIDUAL_DECAY_DB / 10.0)
NOISE_RISE_DB = 0.3         # per frame (9 dB/s): how fast the residual floor follows a rise
NOISE_RISE = 10.0 ** (NOISE_RISE_DB / 10.0)
NOISE_MARGIN_DB = 6.0       # a person's frame stands this far above the floor
NOISE_MARGIN = 10.0 ** (NOISE_MARGIN_DB / 10.0)
MIC_FLOOR_RISE_DB = 0.1     # per frame (3 dB/s): how fast the mic's floor follows a rise
ECHO_AUDIBLE_DB = 6.0       # a frame of the robot's voice carries its echo this far above it
INAUDIBLE_SHARE = 0.2       # ...and echo is inaudible when fewer than this share of them do
AUDIBLE_SHARE = 0.5         # ...and audible again when more than this share do
ECHO_SHARE_STEP = 0.05      # the audible share's smoothing per frame of the robot's voice
ECHO_DYING_DB = 6.0         # a mic this far under the echo just estimated: the echo dying away
ECHO_DYING = 10.0 ** (ECHO_DYING_DB / 10.0)
# The residual gate's bands: rfft bins of a 512-sample frame (31.25 Hz each) from 62 Hz to 8 kHz,
# two bins wide at the bottom, about a quarter of an octave from 1 kHz up.
BAND_EDGES = np.array([2, 4, 6, 8, 10, 12, 15, 18, 22, 26, 31, 37, 44, 52, 62, 74, 88, 105,
                       125, 149, 177, 211, 257])
BANDS = BAND_EDGES.shape[0] - 1
BAND_OF_BIN = np.concatenate([[BANDS, BANDS],                   # below 62 Hz: in no band
                              np.repeat(np.arange(BANDS), np.diff(BAND_EDGES))])
GATE_BANDS = 2              # a person's voice stands over the expected residual in this many bands
# In double talk (the canceller's echo estimate for the frame within 10 dB of the mic), a frame
# standing out in this many bands needs only this margin over the residual's floor, not
# NOISE_MARGIN_DB.
DOUBLE_TALK_BANDS = 4
DOUBLE_TALK_MARGIN_DB = 3.0
DOUBLE_TALK_ECHO_DB = 10.0
DOUBLE_TALK_ECHO = 10.0 ** (-DOUBLE_TALK_ECHO_DB / 10.0)
SUPPRESSION_FLOOR = 0.1     # the least gain the residual-echo suppressor leaves a band (-20 dB)


@dataclass
class BargeInCounters(Counters):
    mic_samples: int = 0
    frames_scored: int = 0          # 32 ms frames looked at while the robot spoke
    speech_frames: int = 0          # ...of which above the threshold
    triggers: int = 0
    reference_samples: int = 0
    canceller_restarts: int = 0     # the canceller diverged and started afresh
    frames_echo_gated: int = 0      # ...of which mostly echo after cancelling: VAD not run
    frames_vad: int = 0             # ...of which scored by the VAD
    cpu_us: int = 0                 # CPU time in push_mic (cancelling and VAD), microseconds
    onsets: int = 0                 # runs of speech frames begun (speech held until decided)
    mic_gaps: int = 0               # mic chunks not following on from the one before
    reference_reread: int = 0       # speech chunks published after the canceller read their start



class BargeInDetector:
    """Feed mic audio (16 kHz float, stamped) as it arrives and the robot's published speech
    (16 kHz, stamped when published); `push_mic` returns the onset stamp of a barge-in or None.

    `vad(frame) -> probability` scores one 512-sample frame (a VoiceActivity instance fits).
    """

    def __init__(self, vad: Callable[[np.ndarray], float], echo_canceller=None,
                 threshold: float = 0.3, min_speech_ms: float = 64, echo_delay_ms: float = 0.0,
                 reference_hangover_ms: float = 300.0, residual_gate_db: float = 10.0,
                 vad_gain_db: float = 12.0, fresh_vad_per_turn: bool = True,
                 sample_rate: int = INPUT_SAMPLE_RATE) -> None:
        self.vad = vad
        self.canceller = echo_canceller
        self._estimates = hasattr(echo_canceller, "echo_estimate")   # the canceller's own estimate
        self.threshold = float(threshold)
        self.sample_rate = int(sample_rate)
        self.fresh_vad_per_turn = bool(fresh_vad_per_turn)
        self.set_min_speech_ms(min_speech_ms)
        self.set_vad_gain_db(vad_gain_db)
        self.echo_delay = int(round(echo_delay_ms * sample_rate / 1000.0))
        self.hangover = int(round(reference_hangover_ms * sample_rate / 1000.0))
        self.residual_gate_db = float(residual_gate_db)
        self._gate = 10.0 ** (self.residual_gate_db / 10.0)
        self._window = np.hanning(FRAME).astype(np.float32)
        self._band_residual_db = np.zeros(BANDS)      # per band: residual / estimate, quantile
        self._band_echo = np.zeros(BANDS)             # ...the echo estimate, held and decaying
        self._band_floor = np.ones(BANDS)             # ...the residual's floor (power)
        self._band_powers = (np.zeros(BANDS), np.zeros(BANDS))  # ...this frame's residual, echo
        self.reference = ReferenceBuffer(sample_rate=sample_rate)
        self.counters = BargeInCounters()
        self._pending = np.zeros(0, dtype=np.float32)
        self._pending_first: Optional[int] = None   # grid index of _pending[0]
        self._mic = np.zeros(0, dtype=np.float32)     # cancelled, not yet framed: raw mic...
        self._clean = np.zeros(0, dtype=np.float32)   # ...the canceller's output...
        self._echo = np.zeros(0, dtype=np.float32)    # ...and its echo estimate (zeros: none)
        self._frame_first = 0                         # grid index of _mic[0] and _clean[0]
        self._run = 0                                 # consecutive speech frames
        self._onset: Optional[int] = None
        self._run_began = 0.0                         # time.monotonic() of the run's first frame
        self._erle_db = 0.0                           # what the canceller removes of the echo
        self._erle_frames = 0                         # ...measured on so many frames
        self._frame_powers = (0.0, 0.0, 0.0, 0.0)     # mic, residual, echo estimate, reference
        self._far_peak_db = -120.0                    # the reference's recent peak
        self._decaying_echo = 0.0                     # the echo estimate, held and decaying
        self._noise_db = 0.0                          # the residual's floor
        self._watching = False                        # the robot spoke in the last frame
        self._converged = False                       # ERLE passed CONVERGED_ERLE_DB
        self._inaudible = False                       # the robot's echo is not heard at all
        self._mic_floor_db: Optional[float] = None    # the mic's floor while the robot is silent
        self._audible_share = 1.0                     # robot frames carrying audible echo
        self._restarts_seen = 0                       # canceller restarts already disarmed for
        reset = getattr(vad, "reset", None)
        self._vad_reset = reset if callable(reset) else (lambda: None)
        self.last_probability = 0.0
        # flow/bargein_record.BargeInRecorder, when what the detector is given is recorded
        self.recorder = None

    def diagnostic_values(self) -> dict:
        """The counters, and how far the canceller has learnt the echo path: its echo return
        loss enhancement (`erle_db`), the residual it leaves against its echo estimate
        (`residual_db`, the median over its bands), and whether barge-in is `armed`; with a
        recorder, how much it has written (`recorded_mb`), whether it still records, and why it
        ended (`record_ended`)."""
        values = self.counters.snapshot()
        values.update(erle_db=round(float(self._erle_db), 1),
                      residual_db=round(float(np.median(self._band_residual_db)), 1),
                      armed=self.armed)
        if self.recorder is not None:
            values.update(recorded_mb=round(self.recorder.bytes / 1e6, 1),
                          recording=self.recorder.recording)
            if self.recorder.ended:
                values["record_ended"] = self.recorder.ended
        return values

    @property
    def armed(self) -> bool:
        """Whether a person's voice can trigger: the canceller has learnt the echo path (its
        ERLE, measured on frames that carry the robot's echo, passed CONVERGED_ERLE_DB, and over
        at least CONVERGED_FRAMES of them: ERLE passes 6 dB a few hundred ms after a start,
        before the canceller has heard every band of the robot's voice, and a sound in a band
        new to it is not cancelled), or the
        robot's voice is not audible in the mic at all (a loudspeaker far away, a headset, a
        microphone array that cancels echo itself: under INAUDIBLE_SHARE of the robot's frames
        stand ECHO_AUDIBLE_DB above the mic's floor while it is silent; the mic itself then goes
        to the VAD, against that floor, not the canceller's output, in which a canceller
        following a steady tone or hum leaves the robot's speech rhythm; if the echo becomes
        audible later, `_echo_heard_again` arms it afresh on the canceller). Once converged it
        stays armed, through double talk and gaps in the echo, until the canceller diverges and
        starts afresh."""
        return self._converged or self._inaudible

    def set_min_speech_ms(self, min_speech_ms: float) -> None:
        """How long a person must be heard before it is a barge-in (whole VAD frames, at least one)."""
        self.min_speech_frames = max(1, int(np.ceil(min_speech_ms * self.sample_rate / 1000.0 / FRAME)))

    def set_vad_gain_db(self, gain_db: float) -> None:
        """The gain on what the VAD hears. silero-vad's probability follows the level it hears:
        a person at 2-3 m, 20 dB under the robot's echo at a mic whose gain keeps that echo from
        clipping (about -40 dBFS), scores under the threshold for the first few hundred ms of
        their phrase, where the same voice louder scores speech from its first frames. A fixed
        gain (not one per frame: silero's recurrent state must hear one level throughout) lifts
        the person and what the gate lets through of the robot's residual alike."""
        self.vad_gain_db = float(gain_db)
        self._vad_gain = np.float32(10.0 ** (self.vad_gain_db / 20.0))

    def push_reference(self, stamp_ns: int, samples_16k: np.ndarray) -> None:
        """The robot's speech as it is played (published), stamped on the mic's clock."""
        if self.recorder is not None:
            self.recorder.reference(stamp_ns, samples_16k)
        first = self.reference.add(stamp_ns, samples_16k)
        self.counters.reference_samples += int(np.asarray(samples_16k).size)
        if first is None or self.canceller is None or self._pending_first is None:
            return
        # The canceller reads the reference `lead` ahead of the mic, so it has often read the
        # start of a chunk published just now as silence: it rereads what it holds of the
        # reference (the echo of those samples has not reached the mic yet). Otherwise the
        # head of each new stretch of speech would go uncancelled into the residual.
        read_until = self._far_index(self._pending_first)
        if first < read_until and self._resume_canceller(read_until):
            self.counters.reference_reread += 1

    def _far_index(self, mic_index: int) -> int:
        """The reference index the canceller reads with the mic sample at `mic_index`."""
        return mic_index - self.echo_delay + self.canceller.lead

    def _resume_canceller(self, far_first: int) -> bool:
        """Rebuild the canceller's reference history up to `far_first` from the reference
        buffer (False if this canceller keeps no history it can rebuild)."""
        resume = getattr(self.canceller, "resume", None)
        if resume is None:
            return False
        history = self.canceller.history
        resume(self.reference.get(far_first - history, history))
        return True

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
        """Forget the robot's speech and the run being decided (omni/reset). What the canceller
        has learnt is kept: the echo path is the room's, not the conversation's, and barge-in
        stays armed."""
        if self.recorder is not None:
            self.recorder.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._pending_first = None
        self._mic = self._clean = self._echo = np.zeros(0, dtype=np.float32)
        self._run, self._onset = 0, None
        self._watching = False
        self.reference.clear()
        reset = getattr(self.vad, "reset", None)
        if callable(reset):
            reset()

    def push_mic(self, stamp_ns: int, samples_16k: np.ndarray) -> Optional[int]:
        started = time.thread_time_ns()
        try:
            onset = self._push_mic(stamp_ns, samples_16k)
        finally:
            self.counters.cpu_us += (time.thread_time_ns() - started) // 1000
        if self.recorder is not None:
            self.recorder.mic(stamp_ns, samples_16k, onset, self.settings())
        return onset

    def settings(self) -> dict:
        """What can change while it runs, by the names `apply_settings` takes."""
        return {"threshold": self.threshold, "vad_gain_db": self.vad_gain_db,
                "min_speech_ms": self.min_speech_frames * FRAME * 1000.0 / self.sample_rate}

    def apply_settings(self, settings: Mapping[str, float]) -> None:
        """Set what `settings` names of threshold, min_speech_ms and vad_gain_db."""
        if "threshold" in settings:
            self.threshold = float(settings["threshold"])
        if "min_speech_ms" in settings:
            self.set_min_speech_ms(settings["min_speech_ms"])
        if "vad_gain_db" in settings:
            self.set_vad_gain_db(settings["vad_gain_db"])

    def _push_mic(self, stamp_ns: int, samples_16k: np.ndarray) -> Optional[int]:
        samples = np.asarray(samples_16k, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
        if samples.shape[0] == 0:
            return None
        self.counters.mic_samples += samples.shape[0]
        first = self.reference.index(stamp_ns)
        if self._pending_first is None or first != self._pending_first + self._pending.shape[0]:
            if self._pending_first is not None:
                self.counters.mic_gaps += 1
            # A gap or a jump in the mic timeline: start the frames afresh from this chunk, and
            # the canceller's reference history from the reference just before it.
            self._pending, self._pending_first = samples, first
            self._mic = self._clean = self._echo = np.zeros(0, dtype=np.float32)
            self._frame_first = first
            if self.canceller is not None:
                self._resume_canceller(self._far_index(first))
        else:
            self._pending = np.concatenate([self._pending, samples])
        if self._clean.shape[0] + self._pending.shape[0] < FRAME:
            # Nothing is scored before a whole frame is in: the canceller waits for it too, and
            # runs once per frame instead of once per mic chunk (a 20 ms chunk woken for on its
            # own costs about as much again in cold caches as the work itself).
            return None
        # The canceller takes the mic as one gap-free stream in its own block size...
        step = self.canceller.block if self.canceller is not None else self._pending.shape[0]
        whole = self._pending.shape[0] - self._pending.shape[0] % step
        if whole:
            mic, start = self._pending[:whole], self._pending_first
            self._pending = self._pending[whole:]
            self._pending_first += whole
            clean, echo = mic, None
            if self.canceller is not None:
                # The canceller hears the mic as one stream, the robot silent or not (silence in
                # the reference costs it a transform and keeps its history in step with time).
                far = self.reference.get(self._far_index(start), whole)
                clean = self.canceller.process(mic, far).astype(np.float32, copy=False)
                echo = getattr(self.canceller, "echo_estimate", None)
                self.counters.canceller_restarts = getattr(self.canceller, "restarts", 0)
            if echo is None or echo.shape[0] != whole:
                echo = np.zeros(whole, dtype=np.float32)
            self._mic = np.concatenate([self._mic, mic])
            self._clean = np.concatenate([self._clean, clean])
            self._echo = np.concatenate([self._echo, echo])
        # ...and the VAD scores the cancelled stream in its 32 ms frames.
        onset = None
        while self._clean.shape[0] >= FRAME:
            hit = self._frame(self._mic[:FRAME], self._clean[:FRAME], self._echo[:FRAME],
                              self._frame_first)
            self._mic, self._clean, self._echo = (self._mic[FRAME:], self._clean[FRAME:],
                                                  self._echo[FRAME:])
            self._frame_first += FRAME
            if hit is not None and onset is None:
                onset = hit
        return onset

    def _vad_frame(self, mic: np.ndarray, clean: np.ndarray, echo: np.ndarray,
                   far: np.ndarray) -> Optional[np.ndarray]:
        """What the VAD should hear of a frame, or None where the frame's residual is the
        robot's own echo (decided before, and instead of, the VAD), against the residual echo
        this canceller leaves, band by band.

        The residual echo expected in a band is the canceller's echo estimate there (or, for a
        canceller that gives none, the reference's loudest frame within the echo tail) times
        the ratio of residual to estimate seen there in the frames that were echo (an upper
        quantile, so that most echo frames fall under it). A person's voice shows in the bands
        where what the canceller leaves of the robot's voice is weak (between its harmonics and
        formants), even where the whole frame's residual is mostly echo: a frame goes to the VAD
        when GATE_BANDS bands stand `residual_gate_db` over the expected residual and over their
        floor, and the VAD hears the residual with the expected echo taken out of each band.
        Until barge-in is armed (`armed`: the first second or two the robot speaks after a
        start) every frame with the robot's voice in it counts as echo; where the robot's echo
        is inaudible, the mic is judged against its own floor instead."""
        mic_power = float(np.dot(mic, mic)) / mic.shape[0] + 1e-12
        clean_power = float(np.dot(clean, clean)) / clean.shape[0] + 1e-12
        frames = far.reshape(-1, FRAME)
        far_powers = np.einsum("ij,ij->i", frames, frames)
        far_power = float(np.max(far_powers)) / FRAME
        echo_power = float(np.dot(echo, echo)) / echo.shape[0]
        if echo_power <= 0.0 and far_power > 0.0:
            # No estimate from this canceller: the reference's loudest frame in the echo tail.
            echo = frames[int(np.argmax(far_powers))]
            echo_power = far_power
        # The residual does not stop with the echo estimate: at the end of a phrase it dies away
        # like the room's reverberation, so the estimate it is measured against decays no
        # faster than RESIDUAL_DECAY_DB per frame from its recent peak (the frame's, and below
        # each band's).
        estimate_power = echo_power                     # the canceller's estimate for this frame
        self._decaying_echo = max(echo_power, self._decaying_echo * RESIDUAL_DECAY)
        echo_power = self._decaying_echo
        self._frame_powers = (mic_power, clean_power, echo_power, far_power)
        clean_db = 10.0 * np.log10(clean_power)
        # The residual's floor (the room's noise and what the canceller cannot go under), falling
        # at once and rising slowly, as minimum statistics do; the same band by band.
        self._noise_db = min(clean_db, self._noise_db + NOISE_RISE_DB)
        spectrum = np.fft.rfft(clean * self._window)
        residual = np.bincount(BAND_OF_BIN, spectrum.real ** 2 + spectrum.imag ** 2)[:BANDS]
        residual += 1e-12
        estimate = np.fft.rfft(echo * self._window)
        estimate = np.bincount(BAND_OF_BIN, estimate.real ** 2 + estimate.imag ** 2)[:BANDS]
        self._band_echo = np.maximum(estimate, self._band_echo * RESIDUAL_DECAY)
        self._band_powers = (residual, self._band_echo)
        self._band_floor = np.minimum(residual, self._band_floor * NOISE_RISE)
        if max(echo_power, far_power) < 1e-10:
            # nothing of the robot in this frame to mistake
            return mic if self._inaudible else clean
        if not self.armed:
            return None
        if self._inaudible:
            # No echo to cancel: the mic as it is goes to the VAD when it stands above its floor.
            return None if 10.0 * np.log10(mic_power) < self._mic_floor_db + NOISE_MARGIN_DB else mic
        if clean_power > 2.0 * mic_power:
            # The residual louder than the mic itself: the canceller's own echo estimate where the
            # echo has already stopped (the end of a phrase), not a person, who adds to the mic.
            return None
        if self._estimates and mic_power * ECHO_DYING < echo_power:
            # The mic far under the echo estimate held from the frames before: the robot's voice
            # has just stopped or paused and its echo is dying away. A person's voice adds to the
            # mic; what stands out of the residual here is the canceller's error on the echo's
            # tail (mostly in the top bands), not a person.
            return None
        expected = self._band_echo * 10.0 ** (self._band_residual_db / 10.0)
        floor = self._band_floor * NOISE_MARGIN
        voiced = int(np.count_nonzero((residual > self._gate * expected) & (residual > floor)))
        if voiced < GATE_BANDS:
            return None
        # The whole frame stands above the residual's floor: a person's voice adds to it. In a
        # noisy room the floor is the noise, and a person's first frames over the robot's echo
        # stand out clearly in several bands but little in the whole frame, so there the margin
        # is smaller. Where the echo is weak or absent (the robot's pauses, however much of the
        # estimate is still held from before) it is not: background talkers a little over the
        # floor show in many bands too.
        margin = NOISE_MARGIN_DB
        if voiced >= DOUBLE_TALK_BANDS and estimate_power >= DOUBLE_TALK_ECHO * mic_power:
            margin = DOUBLE_TALK_MARGIN_DB
        if clean_db < self._noise_db + margin:
            return None
        # What the VAD hears: the residual less the expected echo in each band (a Wiener-like
        # gain), so that the robot's residual under the person's voice does not score as speech.
        gain = np.append(np.clip(1.0 - expected / residual, SUPPRESSION_FLOOR, 1.0), 1.0)
        gain = gain[BAND_OF_BIN]
        return np.fft.irfft(np.fft.rfft(clean) * gain, n=FRAME).astype(np.float32)

    def _learn_echo(self) -> None:
        """A frame that was echo (gated, or scored well below the threshold) updates what the
        canceller removes (ERLE) and leaves (the residual-to-estimate ratio's upper quantile in
        each band)."""
        mic_power, clean_power, echo_power, far_power = self._frame_powers
        if max(echo_power, far_power) < 1e-10:
            return
        restarts = getattr(self.canceller, "restarts", 0)
        if restarts != self._restarts_seen:            # the canceller starts afresh: so does ERLE
            self._restarts_seen = restarts
            self._restart_erle()
        if clean_power > mic_power:
            # The residual louder than the mic: the canceller's estimate where the echo is not
            # (a gap in the loudspeaker's playing, the end of a phrase). It says nothing of how
            # well the echo is cancelled.
            return
        # The reference's recent peak, held and decaying slowly: frames of the robot's voice far
        # under it say nothing of the canceller. They are its pauses, the hangover after its
        # phrase and the moments before its next chunk plays: frames the detector counts as the
        # robot's, in which the residual is the room's noise over an echo estimate held from
        # before and dying away. Learnt as the canceller's residual, each would lift the
        # expected residual by up to RESIDUAL_STEP_DB (ten times what an echo frame lowers it
        # by), and a robot that stops and starts often, as it does at each barge-in, would
        # ratchet its gate up until a person's first frames no longer pass it.
        far_db = 10.0 * np.log10(far_power + 1e-12)
        self._far_peak_db = max(far_db, self._far_peak_db - 0.02)
        if far_db <= self._far_peak_db - FAR_PAUSE_DB:
            return
        # Only frames in which the echo stands above the mic's floor measure ERLE: a tone or a
        # hum the canceller partly follows is not the robot's echo.
        mic_db = 10.0 * np.log10(mic_power)
        audible = self._mic_floor_db is None or mic_db > self._mic_floor_db + ECHO_AUDIBLE_DB
        self._audible_share += ECHO_SHARE_STEP * (float(audible) - self._audible_share)
        if audible:
            self._measure_erle(mic_power, clean_power)
        if self._erle_db >= CONVERGED_ERLE_DB and self._erle_frames >= CONVERGED_FRAMES:
            self._converged = True
        if self._audible_share < INAUDIBLE_SHARE:
            self._inaudible = True
        elif self._audible_share > AUDIBLE_SHARE:
            self._inaudible = False
        # Stochastic quantile tracking, band by band: up by q steps, down by (1 - q) steps, so
        # that a fraction q of the echo frames lies under the estimate; bounded steps, so that an
        # outlier frame moves it by at most RESIDUAL_STEP_DB. Bands whose echo estimate lies
        # under the residual's floor say nothing of it either: their residual is the room's
        # noise, and in a noisy room those bands (where the robot's voice is weak) would set the
        # expected residual to the noise over the estimate, so that in frames where the robot's
        # voice is loud there the person's first frames would have to stand over noise raised
        # by the whole echo.
        residual, estimate = self._band_powers
        live = estimate > self._band_floor            # never under the residual's 1e-12
        ratio_db = 10.0 * np.log10(residual[live] / estimate[live])
        q = RESIDUAL_QUANTILE
        self._band_residual_db[live] += RESIDUAL_STEP_DB * np.where(
            ratio_db > self._band_residual_db[live], q, q - 1.0)

    def _restart_erle(self) -> None:
        """Learning the echo path starts afresh: ERLE is measured anew and barge-in disarmed."""
        self._converged, self._erle_db, self._erle_frames = False, 0.0, 0

    def _measure_erle(self, mic_power: float, clean_power: float) -> None:
        """One frame's echo return loss enhancement into its running mean."""
        self._erle_db += 0.1 * (10.0 * np.log10(mic_power / clean_power) - self._erle_db)
        self._erle_frames += 1

    def _echo_heard_again(self) -> None:
        """Where the robot's voice was inaudible, the mic goes to the VAD as it is; once that
        voice does reach the mic (a loudspeaker unmuted or turned up, a headset taken off), its
        frames score as speech there and are never learnt as echo, and the robot would keep
        interrupting itself. The canceller tells its echo from a person: it cancels the robot's
        voice, not theirs. So the frames the VAD took for speech, where the mic stands over its
        floor, still measure ERLE; once the canceller removes CONVERGED_ERLE_DB of them, the echo
        is audible, and barge-in arms afresh on it as at a start (every frame of the robot's voice
        counted as echo until the canceller's ERLE, measured anew, passes CONVERGED_ERLE_DB)."""
        mic_power, clean_power, echo_power, far_power = self._frame_powers
        if max(echo_power, far_power) < 1e-10 or clean_power > mic_power:
            return
        if 10.0 * np.log10(mic_power) < self._mic_floor_db + ECHO_AUDIBLE_DB:
            return
        self._measure_erle(mic_power, clean_power)
        if self._erle_db >= CONVERGED_ERLE_DB:
            self._inaudible, self._audible_share = False, 1.0
            self._restart_erle()
            self._band_residual_db[:] = 0.0   # what was learnt of a silent mic says nothing

    def _frame(self, mic: np.ndarray, clean: np.ndarray, echo: np.ndarray,
               start: int) -> Optional[int]:
        if not self.robot_speaking_at(start):
            self._run, self._onset = 0, None
            self._watching = False
            if self.canceller is not None:
                # The mic's floor with the robot silent (noise, hum, a tone): falls at once,
                # rises slowly, so a person talking to a silent robot barely moves it.
                mic_db = 10.0 * np.log10(float(np.dot(mic, mic)) / mic.shape[0] + 1e-12)
                floor = self._mic_floor_db
                self._mic_floor_db = mic_db if floor is None else min(mic_db, floor + MIC_FLOOR_RISE_DB)
            return None
        if not self._watching and self.fresh_vad_per_turn:
            # The robot starts speaking: the VAD watches this stretch from a fresh state, not
            # from where the last one (seconds ago, perhaps a person's speech) left it.
            self._vad_reset()
        self._watching = True
        self.counters.frames_scored += 1
        tail = ECHO_TAIL_FRAMES * FRAME
        far = self.reference.get(start - self.echo_delay - tail, tail + FRAME)
        heard = clean if self.canceller is None else self._vad_frame(mic, clean, echo, far)
        gated = heard is None
        if gated:
            # Echo: no person's speech to look for, so the VAD is not run at all (most frames
            # while the robot speaks alone end here, at the cost of a few means).
            self.counters.frames_echo_gated += 1
            p = 0.0
        else:
            p = float(self.vad(heard * self._vad_gain if self.vad_gain_db else heard))
            self.counters.frames_vad += 1
        if self.canceller is not None and (gated or p < 0.5 * self.threshold):
            self._learn_echo()
        elif self._inaudible and self.canceller is not None:
            self._echo_heard_again()
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
