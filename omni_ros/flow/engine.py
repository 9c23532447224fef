"""The machinery of a model node, without ROS: window buffer, unit worker, speech pacing and
barge-in, wired to the node through `EngineOutputs`.

Threads: the node's executor calls `add_frame`, `add_audio` and `put_tick` (short, locked); a unit
worker takes the newest closed window's tick and runs its unit (`UnitRunner`), so input keeps
flowing while the model computes; a speaker thread sleeps until the next speech chunk is due and
hands it to the node to publish (exact pacing, no timer waking 50 times a second). The barge-in
detector hears the microphone against what the robot just played (the float speech, resampled
to the microphone's rate once per unit) and, when a person starts talking over the robot, the
pending speech is dropped and the runner told.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Tuple

import numpy as np

from .audio import as_published
from .bargein import BargeInDetector
from .buffers import WindowBuffer
from .counters import Counters
from .speech import SpeechChunk, SpeechPacer
from .ticks import TickQueue
from .types import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, DuplexSession
from .unit_runner import SPEAKING, Alert, RunnerParams, SpeechDetector, UnitReport, UnitRunner
from .units import NS_PER_S

RECENT_WINDOWS = 60            # compute-time statistics cover this many windows
SPEECH_HOLD_POLL_SEC = 0.005   # how often held speech looks again whether it may go out
WORKER_POLL_SEC = 0.2          # how often an idle worker looks whether it must stop


class EngineOutputs(Protocol):
    """What the engine needs from the node (called from the worker and speaker threads)."""

    def publish_report(self, report: UnitReport) -> None: ...
    def publish_alert(self, alert: Alert, window_index: int) -> None: ...
    def publish_barge_in(self, onset_ns: int, window_index: int, dropped: int) -> None:
        """A person started talking over the robot at onset_ns (the mic's clock)."""
    def publish_speech(self, chunk: SpeechChunk) -> int:
        """Publish one chunk; returns its stamp (ns, the microphone's clock)."""
    def log_error(self, text: str) -> None: ...
    def log_info(self, text: str) -> None: ...
    def running(self) -> bool:
        """False once the node is shutting down (publishers may be gone)."""


@dataclass
class EngineParams:
    window_ns: int
    runner: RunnerParams
    max_future_windows: int = 4
    speech_chunk_ms: int = 200
    input_grace_ms: int = 100       # a window's unit starts this long after its tick
    standing_instruction: str = ""


@dataclass
class EngineCounters(Counters):
    speech_chunks_published: int = 0
    barge_ins: int = 0
    speech_chunks_dropped_barge_in: int = 0
    speech_chunks_dropped_turn_end: int = 0
    speech_samples_clipped: int = 0     # the model's speech over full scale, clipped when published
    session_resets_after_failures: int = 0
    worker_errors: int = 0



class LockedWindowBuffer:
    """The WindowBuffer as the unit runner sees it: locked, and frames decoded only when taken.

    The node stores camera messages as received; only the newest frame of a window is ever
    converted (`decode_frame`, None when it cannot be), so frames the model does not use cost
    no conversion."""

    def __init__(self, buffer: WindowBuffer, lock: threading.Lock,
                 decode_frame: Callable[[Any], Optional[np.ndarray]]) -> None:
        self._buffer = buffer
        self._lock = lock
        self._decode_frame = decode_frame
        self.window_ns = buffer.window_ns

    def take_window(self, window_index: int):
        with self._lock:
            frame, stamp_ns, audio, coverage = self._buffer.take_window(window_index)
        image = self._decode_frame(frame) if frame is not None else None
        return image, (stamp_ns if image is not None else None), audio, coverage

    def clear(self) -> None:
        with self._lock:
            self._buffer.clear()


@dataclass
class _Recent:
    """Per-window times of the last RECENT_WINDOWS units (ms)."""

    compute: deque = field(default_factory=lambda: deque(maxlen=RECENT_WINDOWS))
    overhead: deque = field(default_factory=lambda: deque(maxlen=RECENT_WINDOWS))   # outside the model
    vad: deque = field(default_factory=lambda: deque(maxlen=RECENT_WINDOWS))        # ...of which the VAD's

    def add(self, report: UnitReport) -> None:
        self.compute.append(report.compute_ms)
        self.overhead.append(report.compute_ms - report.model_ms)
        self.vad.append(report.vad_ms)

    def values(self) -> dict:
        if not self.compute:
            return {}
        c = list(self.compute)
        return {"compute_ms_last": round(c[-1], 2), "compute_ms_mean": round(sum(c) / len(c), 2),
                "compute_ms_max": round(max(c), 2),
                "unit_overhead_ms_mean": round(sum(self.overhead) / len(self.overhead), 3),
                "unit_vad_ms_mean": round(sum(self.vad) / len(self.vad), 3)}


class FlowEngine:
    def __init__(self, session: DuplexSession, outputs: EngineOutputs, params: EngineParams,
                 decode_frame: Callable[[Any], Optional[np.ndarray]],
                 speech_detector: Optional[SpeechDetector] = None,
                 barge_in: Optional[BargeInDetector] = None) -> None:
        self.outputs = outputs
        self.params = params
        self.counters = EngineCounters()
        self.buffer = WindowBuffer(params.window_ns, max_future_windows=params.max_future_windows)
        self.buffer_lock = threading.Lock()
        self.runner = UnitRunner(session, LockedWindowBuffer(self.buffer, self.buffer_lock, decode_frame),
                                 speech_detector=speech_detector, params=params.runner,
                                 standing_instruction=params.standing_instruction)
        self.runner_lock = threading.Lock()       # one unit, reset or option change at a time
        self.pacer = SpeechPacer(OUTPUT_SAMPLE_RATE, params.speech_chunk_ms)
        self.pacer_lock = threading.Lock()
        self.barge_in = barge_in
        self.barge_lock = threading.Lock()        # fed by the executor and the speaker
        self._resample = None
        if barge_in is not None:
            import soxr  # noqa: PLC0415 - only with barge-in
            self._resample = soxr.resample
        self.ticks = TickQueue(maxsize=16)
        self.recent = _Recent()
        self.last_report: Optional[UnitReport] = None
        self.last_error: Optional[str] = None
        self.stopping = threading.Event()
        self.speech_wakeup = threading.Event()
        self.worker: Optional[threading.Thread] = None
        self.speaker: Optional[threading.Thread] = None

    @property
    def session(self) -> DuplexSession:
        return self.runner.session

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def start(self) -> None:
        """Start the unit worker and the speaker (again after `stop`)."""
        if self.running:
            return
        self.stopping.clear()
        self.worker = threading.Thread(target=self._run_units, name="omni_units", daemon=True)
        self.speaker = threading.Thread(target=self._release_loop, name="omni_speech", daemon=True)
        self.worker.start()
        self.speaker.start()

    def stop(self) -> int:
        """Stop the worker (it may finish the unit in hand) and the speaker, and drop the speech
        not yet played and the ticks not yet run; the speech chunks dropped. Both are daemon
        threads, so a unit stuck in the model cannot hold the process beyond these waits."""
        self.stopping.set()
        self.speech_wakeup.set()
        for thread, wait in ((self.worker, 5.0), (self.speaker, 2.0)):
            if thread is not None and thread.is_alive():
                thread.join(timeout=wait)
        self.ticks.clear()
        with self.pacer_lock:
            return self.pacer.flush()

    # -- inputs (executor thread) ----------------------------------------------------------------
    def add_frame(self, stamp_ns: int, frame: Any) -> bool:
        """Buffer a camera frame (kept as received); False if it was dropped as stamped outside
        the open windows."""
        with self.buffer_lock:
            c = self.buffer.counters
            before = c.frames_late + c.frames_future
            self.buffer.add_frame(stamp_ns, frame)
            return c.frames_late + c.frames_future == before

    def add_audio(self, stamp_ns: int, samples: np.ndarray) -> Optional[Tuple[int, int]]:
        """Buffer 16 kHz microphone samples and let the barge-in detector hear them; (onset_ns,
        speech chunks dropped) when a person started talking over the robot."""
        with self.buffer_lock:
            self.buffer.add_audio(stamp_ns, samples)
        if self.barge_in is None:
            return None
        with self.barge_lock:
            onset_ns = self.barge_in.push_mic(stamp_ns, samples)
        if onset_ns is None:
            return None
        with self.pacer_lock:
            dropped = self.pacer.flush()
        window = onset_ns // self.params.window_ns
        self.runner.interrupt(window)
        self.counters.barge_ins += 1
        self.counters.speech_chunks_dropped_barge_in += dropped
        self.outputs.publish_barge_in(onset_ns, window, dropped)
        return onset_ns, dropped

    def put_tick(self, tick: Any) -> None:
        """A window closed (`tick.index`, `tick.epoch`): its unit runs on the worker."""
        self.ticks.put(tick, time.monotonic())

    # -- control (executor thread) ---------------------------------------------------------------
    def reset(self) -> int:
        """Forget the conversation (omni/reset); the speech chunks dropped. The alert of a
        proactive turn still open goes out first."""
        with self.pacer_lock:
            dropped = self.pacer.flush()
        with self.runner_lock:
            alert = self.runner.reset()
        if self.barge_in is not None:
            with self.barge_lock:
                self.barge_in.reset()
        if alert is not None:
            self.outputs.publish_alert(alert, self.runner.last_window or 0)
        return dropped

    def apply_session_options(self, changes: Mapping[str, Any]) -> None:
        """Session options changed at run time (ValueError: none applied); between units."""
        with self.runner_lock:
            self.session.apply_options(changes)

    # -- the unit worker -------------------------------------------------------------------------
    def _run_units(self) -> None:
        while not self.stopping.is_set():
            # Ticks that queued while the previous unit ran: run the newest closed window now
            # (the runner skips or merges the ones in between, per overload_policy).
            taken = self.ticks.get_newest(timeout=WORKER_POLL_SEC, max_lag=1)
            if taken is None:
                continue
            tick, received = taken
            # The window's last samples are still in flight when its tick arrives (a mic chunk
            # is stamped when its capture starts, the resampler holds a few ms back): wait.
            delay = received + self.params.input_grace_ms / 1000.0 - time.monotonic()
            if delay > 0 and self.stopping.wait(delay):
                return
            try:
                with self.runner_lock:
                    report = self.runner.run_window(tick.index, tick.epoch)
                if report is not None:
                    self._take_report(report)
            except Exception as error:  # noqa: BLE001 - the worker must outlive anything
                if self.stopping.is_set() or not self.outputs.running():
                    return   # shutting down: publishers are gone
                self.counters.worker_errors += 1
                self.last_error = f"{type(error).__name__}: {error}"
                self.outputs.log_error(f"window {tick.index}: {self.last_error}")

    def _take_report(self, report: UnitReport) -> None:
        if self.last_report is not None and report.epoch != self.last_report.epoch:
            with self.pacer_lock:   # a new clock epoch: speech of the old timeline is dropped
                self.pacer.flush()
        self.last_report = report
        self.recent.add(report)
        if report.error:
            self.last_error = report.error
            self.outputs.log_error(f"window {report.window_index}: unit failed: {report.error}")
        if report.context_rebuild is not None:
            r = report.context_rebuild
            self.outputs.log_info(f"window {report.window_index}: {r.reason} changed: context rebuilt "
                                  f"under the new system prefix, {r.units} recent units kept "
                                  f"({r.tokens} positions, {r.ms:.0f} ms)")
        if report.session_reset:
            self.counters.session_resets_after_failures += 1
            self.outputs.log_error(f"model session reset after "
                                   f"{self.runner.params.max_consecutive_failures} failed units in a row")
        if report.speech.shape[0]:
            # The speech as published (16-bit PCM: clipped at full scale) is what the loudspeaker
            # plays, so it is what the echo canceller's reference must be: a voice over full scale,
            # clipped in the loudspeaker but not in the reference, leaves an echo the canceller
            # cannot model, and the barge-in detector hears it as a person.
            self.counters.speech_samples_clipped += int(np.count_nonzero(np.abs(report.speech) > 1.0))
            speech = as_published(report.speech)
            reference = None
            if self._resample is not None:   # the echo canceller's reference, at the mic's rate
                reference = self._resample(speech, OUTPUT_SAMPLE_RATE, INPUT_SAMPLE_RATE)
            with self.pacer_lock:
                self.pacer.enqueue(report.window_index, speech, time.monotonic_ns(),
                                   reference=reference)
            self.speech_wakeup.set()
        elif report.state != SPEAKING:
            # The turn is over: speech of it that has not started playing yet is dropped.
            with self.pacer_lock:
                self.counters.speech_chunks_dropped_turn_end += \
                    self.pacer.drop_unstarted(time.monotonic_ns())
        self.outputs.publish_report(report)
        if report.alert is not None:
            self.outputs.publish_alert(report.alert, report.window_index)

    # -- the speaker -----------------------------------------------------------------------------
    def _release_loop(self) -> None:
        while not self.stopping.is_set():
            with self.pacer_lock:
                next_due = self.pacer.next_due_ns()
            timeout = 0.5 if next_due is None else max(0.0, (next_due - time.monotonic_ns()) / NS_PER_S)
            if timeout > 0:
                self.speech_wakeup.wait(timeout)
                self.speech_wakeup.clear()
                continue
            try:
                if not self.release_speech():
                    self.speech_wakeup.wait(SPEECH_HOLD_POLL_SEC)   # held: a barge-in may come
                    self.speech_wakeup.clear()
            except Exception as error:  # noqa: BLE001 - the speaker must outlive anything
                if self.stopping.is_set() or not self.outputs.running():
                    return
                self.outputs.log_error(f"speech release failed: {error}")

    def release_speech(self) -> bool:
        """Publish the speech chunks that are due; False if they were held back because the
        barge-in detector is hearing what may be a person starting to talk."""
        if self.barge_in is not None:
            with self.barge_lock:
                if self.barge_in.holds_speech(time.monotonic()):
                    return False
        with self.pacer_lock:
            chunks = self.pacer.due(time.monotonic_ns())
        for chunk in chunks:
            stamp_ns = self.outputs.publish_speech(chunk)
            self.counters.speech_chunks_published += 1
            if self.barge_in is not None and chunk.reference is not None:
                with self.barge_lock:   # what was just played, on the mic's clock
                    self.barge_in.push_reference(stamp_ns, chunk.reference)
        return True

    # -- diagnostics -----------------------------------------------------------------------------
    def diagnostic_values(self) -> dict:
        values = self.counters.snapshot()
        values.update(self.ticks.counters.snapshot())   # ticks_put, ticks_superseded, ...
        values.update({f"buffer_{k}": v for k, v in self.buffer.counters.snapshot().items()})
        values.update({f"loop_{k}": v for k, v in self.runner.counters.snapshot().items()})
        values.update({f"speech_{k}": v for k, v in self.pacer.counters.snapshot().items()})
        if self.barge_in is not None:
            values.update({f"barge_in_{k}": v for k, v in self.barge_in.diagnostic_values().items()})
        values["overload_policy"] = self.runner.params.overload_policy
        values.update(self.session.diagnostic_values())
        values.update(self.recent.values())
        values["window_ms"] = self.params.window_ns / 1e6
        return values

    def warnings(self) -> list:
        """What an operator should know about the flow now (worst first is the caller's)."""
        found = []
        values = self.recent.values()
        if values.get("compute_ms_max", 0.0) > self.params.window_ns / 1e6:
            found.append("units take longer than a window: windows are being "
                         + ("merged" if self.runner.params.overload_policy == "merge" else "skipped"))
        return found
