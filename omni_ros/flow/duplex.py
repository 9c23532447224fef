"""The per-window duplex unit loop: tick in, one model unit run, a report out; no ROS here.

It tracks turns (listen/speak), notices turns the model starts without having been spoken to
(proactive alerts), survives session failures and restarts cleanly on a new clock epoch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .buffers import WindowBuffer
from .timeline import DEFAULT_WINDOW_NS, window_end, window_start
from .types import DuplexSession, UnitInput, UnitOutput
from .vad import energy_speech_probability

LISTENING = "LISTENING"
SPEAKING = "SPEAKING"

SpeechDetector = Callable[[np.ndarray], float]


@dataclass
class DuplexParams:
    window_ns: int = DEFAULT_WINDOW_NS
    speech_threshold: float = 0.5
    proactive_lookback_windows: int = 2


@dataclass(frozen=True)
class Alert:
    """A turn the model started on its own, from what it kept perceiving."""

    text: str
    instruction: str
    confidence: float
    evidence_stamp_ns: Optional[int]   # newest camera frame the model had seen


@dataclass
class UnitReport:
    window_index: int
    epoch: int
    state: str                 # LISTENING | SPEAKING
    end_of_turn: bool
    proactive: bool
    speak_probability: float
    compute_ms: float
    text: str
    speech: np.ndarray         # float32 mono 24 kHz; empty when listening
    image_stamp_ns: Optional[int]
    user_speech: bool
    error: Optional[str] = None
    alert: Optional[Alert] = None
    audio_coverage: float = 0.0
    user_speech_probability: float = 0.0


@dataclass
class LoopCounters:
    units_run: int = 0
    units_failed: int = 0
    windows_skipped: int = 0
    ticks_ignored: int = 0
    epochs: int = 0
    speech_detector_failures: int = 0
    alerts: int = 0
    session_reset_failures: int = 0

    def snapshot(self) -> dict:
        return dict(vars(self))


_NO_SPEECH = np.zeros(0, dtype=np.float32)


class DuplexLoop:
    """Runs one session unit per window tick.

    `speech_detector` maps a window of 16 kHz audio to a speech probability; if it has a
    `reset()` method it is called on reset and on a new epoch. Without one, a plain energy gate
    (`energy_speech_probability`) decides whether the user spoke.
    """

    def __init__(self, session: DuplexSession, buffer: WindowBuffer,
                 speech_detector: Optional[SpeechDetector] = None,
                 params: Optional[DuplexParams] = None, standing_instruction: str = "") -> None:
        self.session = session
        self.buffer = buffer
        self.speech_detector = speech_detector if speech_detector is not None \
            else energy_speech_probability
        self.params = params or DuplexParams(window_ns=buffer.window_ns)
        if self.params.window_ns != buffer.window_ns:
            raise ValueError(f"window_ns differs between the loop ({self.params.window_ns}) and "
                             f"the buffer ({buffer.window_ns})")
        self.standing_instruction = standing_instruction
        self.counters = LoopCounters()
        self._epoch: Optional[int] = None
        self._last_index: Optional[int] = None
        self._clear_turn()

    def _clear_turn(self) -> None:
        self._in_turn = False              # a speaking turn is open (not yet ended)
        self._turn_proactive = False
        self._last_user_speech: Optional[int] = None   # newest window with user speech
        self._newest_image_stamp: Optional[int] = None

    @property
    def in_turn(self) -> bool:
        return self._in_turn

    def reset(self) -> None:
        """Forget the conversation (omni/reset): buffered input, session state, turn, VAD state."""
        self.buffer.clear()
        self._reset_detector()
        self._clear_turn()
        self.session.reset()

    def _reset_detector(self) -> None:
        reset = getattr(self.speech_detector, "reset", None)
        if callable(reset):
            reset()

    def on_tick(self, window_index: int, epoch: int) -> Optional[UnitReport]:
        """Run the unit of the window that just closed; None if the tick was ignored."""
        window_index, epoch = int(window_index), int(epoch)
        if self._epoch is not None and epoch < self._epoch:
            self.counters.ticks_ignored += 1
            return None
        if self._epoch is not None and epoch > self._epoch:
            self.counters.epochs += 1
            self._last_index = None
            try:
                self.reset()
            except Exception:  # noqa: BLE001 - counted; the next unit runs on whatever is left
                self.counters.session_reset_failures += 1
        elif self._last_index is not None:
            if window_index <= self._last_index:
                self.counters.ticks_ignored += 1
                return None
            self.counters.windows_skipped += window_index - self._last_index - 1
        self._epoch, self._last_index = epoch, window_index
        started = time.perf_counter()

        image, image_stamp_ns, audio, coverage = self.buffer.take_window(window_index)
        if image_stamp_ns is not None and (self._newest_image_stamp is None
                                           or image_stamp_ns > self._newest_image_stamp):
            self._newest_image_stamp = image_stamp_ns
        user_probability = self._user_speech_probability(audio, coverage)
        user_speech = user_probability >= self.params.speech_threshold
        if user_speech:
            self._last_user_speech = window_index

        window_ns = self.params.window_ns
        unit = UnitInput(window_index=window_index, epoch=epoch,
                         start_ns=window_start(window_index, window_ns),
                         end_ns=window_end(window_index, window_ns), image=image,
                         image_stamp_ns=image_stamp_ns, audio=audio, audio_coverage=coverage)
        error = None
        try:
            output = self.session.run_unit(unit)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive a failing unit
            error = f"{type(exc).__name__}: {exc}"
            self.counters.units_failed += 1
            output = None
        self.counters.units_run += 1

        report = self._track_turn(window_index, epoch, output, image_stamp_ns, user_speech,
                                  user_probability, coverage)
        report.error = error
        report.compute_ms = (time.perf_counter() - started) * 1000.0
        return report

    def _user_speech_probability(self, audio: np.ndarray, coverage: float) -> float:
        if coverage <= 0.0:
            return 0.0
        try:
            return float(self.speech_detector(audio))
        except Exception:  # noqa: BLE001 - a broken detector must not stop the loop
            self.counters.speech_detector_failures += 1
            return 0.0

    def _track_turn(self, window_index: int, epoch: int, output: Optional[UnitOutput],
                    image_stamp_ns: Optional[int], user_speech: bool, user_probability: float,
                    coverage: float) -> UnitReport:
        report = UnitReport(window_index=window_index, epoch=epoch, state=LISTENING,
                            end_of_turn=False, proactive=False, speak_probability=0.0,
                            compute_ms=0.0, text="", speech=_NO_SPEECH,
                            image_stamp_ns=image_stamp_ns, user_speech=user_speech,
                            audio_coverage=coverage, user_speech_probability=user_probability)
        if output is None:
            # A failed unit closes any open turn: nothing more will be said in it.
            report.end_of_turn = self._in_turn
            self._in_turn = False
            self._turn_proactive = False
            return report
        report.speak_probability = float(output.speak_probability)
        report.end_of_turn = bool(output.end_of_turn)
        if output.is_listen:
            self._in_turn = False
            self._turn_proactive = False
            return report
        report.state = SPEAKING
        report.text = output.text or ""
        report.speech = np.asarray(output.speech, dtype=np.float32).reshape(-1)
        if not self._in_turn:
            self._turn_proactive = not self._heard_user_recently(window_index)
            if self._turn_proactive:
                self.counters.alerts += 1
                report.alert = Alert(text=report.text, instruction=self.standing_instruction,
                                     confidence=report.speak_probability,
                                     evidence_stamp_ns=self._newest_image_stamp)
        report.proactive = self._turn_proactive
        self._in_turn = not report.end_of_turn
        return report

    def _heard_user_recently(self, window_index: int) -> bool:
        lookback = self.params.proactive_lookback_windows
        return (self._last_user_speech is not None
                and self._last_user_speech >= window_index - lookback)
