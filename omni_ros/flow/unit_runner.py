"""One model unit per closed window: a window in, the session's unit run, a report out; no ROS
here (the threads that drive it are omni_ros.flow.engine's).

It follows the turns the session reports (listen/speak), notices turns the model starts without
having been spoken to (proactive alerts), handles barge-in (the person interrupting the robot),
folds or skips windows the model could not keep up with, survives session failures and restarts
cleanly on a new clock epoch.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from .buffers import WindowBuffer
from .counters import Counters
from .timeline import DEFAULT_WINDOW_NS, window_end, window_start
from .types import INPUT_SAMPLE_RATE, ContextRebuild, DuplexSession, UnitInput, UnitOutput
from .units import ns_to_samples
from .vad import energy_speech_probability

LISTENING = "LISTENING"
SPEAKING = "SPEAKING"
INTERRUPTED = "INTERRUPTED"

OVERLOAD_POLICIES = ("skip", "merge")

SpeechDetector = Callable[[np.ndarray], float]


@dataclass
class RunnerParams:
    window_ns: int = DEFAULT_WINDOW_NS
    speech_threshold: float = 0.5
    proactive_lookback_windows: int = 2
    # What to do with windows whose tick came while a unit was still running:
    # "skip" drops them (counted), "merge" folds their audio into the next unit (counted).
    overload_policy: str = "skip"
    max_merge_windows: int = 4          # at most this many missed windows are folded; older skip
    max_consecutive_failures: int = 3   # the session is reset after this many failed units in a row (0: never)
    alert_max_units: int = 8            # a proactive turn still speaking after this many units alerts now


@dataclass(frozen=True)
class Alert:
    """A turn the model started on its own, from what it kept perceiving."""

    text: str
    instruction: str
    confidence: float
    evidence_stamp_ns: Optional[int]   # newest camera frame the model had seen when it started
    units: int = 1                     # speaking units the text covers


@dataclass
class SpokenTurn:
    """The turn the reports show the robot speaking, as alerts need it."""

    proactive: bool                    # started with no user speech in the lookback windows
    confidence: float                  # speak probability of its first unit
    evidence_stamp_ns: Optional[int]   # newest camera frame seen when it started
    texts: List[str] = field(default_factory=list)
    units: int = 0
    alerted: bool = False


@dataclass
class UnitReport:
    window_index: int
    epoch: int
    state: str                 # LISTENING | SPEAKING | INTERRUPTED
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
    merged_windows: int = 0    # missed windows whose audio was folded into this unit
    suppressed: bool = False   # the model spoke but the person was talking (after a barge-in): muted
    session_reset: bool = False   # the session was reset after consecutive failures
    model_ms: float = 0.0      # of compute_ms, the time inside session.run_unit
    vad_ms: float = 0.0        # of compute_ms, the time in the voice-activity detector
    context_rebuild: Optional[ContextRebuild] = None   # a new system prefix went in first


@dataclass
class RunnerCounters(Counters):
    units_run: int = 0
    units_failed: int = 0
    windows_skipped: int = 0
    windows_merged: int = 0
    ticks_ignored: int = 0
    epochs: int = 0
    speech_detector_failures: int = 0
    alerts: int = 0
    session_reset_failures: int = 0
    session_resets_after_failures: int = 0
    barge_ins: int = 0
    session_interrupts: int = 0        # session.interrupt() calls
    units_suppressed: int = 0          # speaking units muted after a barge-in



_NO_SPEECH = np.zeros(0, dtype=np.float32)


def _join_text(parts: List[str]) -> str:
    """Unit texts of one turn joined: a space between pieces unless one side already has one."""
    out = ""
    for part in parts:
        if not part:
            continue
        if out and not out[-1].isspace() and not part[0].isspace():
            out += " "
        out += part
    return out


def fold_audio(chunks: List[np.ndarray], window_samples: int) -> np.ndarray:
    """Several windows of audio squeezed into one window's length (played faster, pitch kept up
    to the resampler's quality): the merged unit hears everything that was said, sped up."""
    audio = np.concatenate([np.asarray(c, dtype=np.float32).reshape(-1) for c in chunks])
    if audio.shape[0] == window_samples:
        return audio
    positions = np.linspace(0.0, audio.shape[0] - 1, window_samples)
    # Average over each output sample's span first (a box low-pass), then pick: no aliasing blow-up.
    factor = max(1, int(round(audio.shape[0] / window_samples)))
    if factor > 1:
        kernel = np.ones(factor, dtype=np.float32) / factor
        padded = np.pad(audio, (factor // 2, factor - 1 - factor // 2), mode="edge")
        audio = np.convolve(padded, kernel, mode="valid").astype(np.float32)
    return np.interp(positions, np.arange(audio.shape[0]), audio).astype(np.float32)


class UnitRunner:
    """Runs one session unit per closed window (`run_window`).

    `speech_detector` maps a window of 16 kHz audio to a speech probability; if it has a
    `reset()` method it is called on reset and on a new epoch. Without one, a plain energy gate
    (`energy_speech_probability`) decides whether the user spoke.

    Overload: when ticks were missed because a unit ran longer than a window, the next tick's
    index jumps. With `overload_policy="skip"` the missed windows are dropped (their input is
    discarded, `windows_skipped`); with `"merge"` the audio of up to `max_merge_windows` missed
    windows is folded into the next unit (`windows_merged`; older ones are skipped): a session
    whose capabilities accept merged audio receives the windows' audio back to back, any other
    session one window's length of it sped up (`fold_audio`), and the newest frame of them all.
    Either way the next unit runs on the newest closed window, so the runner is back on the
    clock as soon as a unit takes less than a window again.

    Turns: the model's turn is the session's (omni_ros.flow.types.DuplexSession); the runner
    keeps only what alerts need of the turn the reports show (`SpokenTurn`, None between turns).

    Barge-in: `interrupt(window_index)` (thread-safe; called when the person starts speaking over
    the robot) makes the next report INTERRUPTED with its speech dropped, closes the spoken turn,
    and calls `session.interrupt()` before the next unit, so the model goes back to listening
    with the person's words in its context. Speaking units are also muted from the flow side
    (reported LISTENING, `suppressed`, `units_suppressed`) through the barge-in window and for as
    long as the person keeps speaking in the following windows.

    Proactive alerts: a turn the model starts with no user speech in the preceding
    `proactive_lookback_windows` windows is proactive. It raises exactly one Alert, carried by
    the report on which the turn ends (end_of_turn, a listen unit, an interruption, a failed
    unit) or by the return value of `reset()`; a turn still going after `alert_max_units`
    speaking units alerts on that unit instead, so a never-ending turn still alerts. The alert's
    text is the turn's text up to then, its confidence the speak probability of the turn's first
    unit, its evidence stamp the newest camera frame seen when the turn started.

    Failures: a unit that raises gives a report with `error` set; after
    `max_consecutive_failures` failures in a row the session is reset (`session_reset`).
    """

    def __init__(self, session: DuplexSession, buffer: WindowBuffer,
                 speech_detector: Optional[SpeechDetector] = None,
                 params: Optional[RunnerParams] = None, standing_instruction: str = "") -> None:
        self.session = session
        self.buffer = buffer
        self.speech_detector = speech_detector if speech_detector is not None \
            else energy_speech_probability
        self.params = params or RunnerParams(window_ns=buffer.window_ns)
        if self.params.window_ns != buffer.window_ns:
            raise ValueError(f"window_ns differs between the runner ({self.params.window_ns}) and "
                             f"the buffer ({buffer.window_ns})")
        self.window_samples = ns_to_samples(self.params.window_ns, INPUT_SAMPLE_RATE)
        if session.capabilities.window_samples != self.window_samples:
            raise ValueError(f"the session takes {session.capabilities.window_samples} samples a "
                             f"unit, the window holds {self.window_samples}: give both the same "
                             f"window length")
        if self.params.overload_policy not in OVERLOAD_POLICIES:
            raise ValueError(f"overload_policy must be one of {OVERLOAD_POLICIES}, "
                             f"got {self.params.overload_policy!r}")
        self.standing_instruction = standing_instruction
        self.counters = RunnerCounters()
        self._epoch: Optional[int] = None
        self._last_index: Optional[int] = None
        self._consecutive_failures = 0
        self._interrupt_lock = threading.Lock()
        self._interrupt_at: Optional[int] = None     # barge-in waiting for the next unit
        self._suppress_through: Optional[int] = None   # mute speaking units up to this window...
        self._suppressing = False                      # ...and while the person keeps talking
        self._clear_history()

    def _clear_history(self) -> None:
        self._turn: Optional[SpokenTurn] = None
        self._last_user_speech: Optional[int] = None   # newest window with user speech
        self._newest_image_stamp: Optional[int] = None

    @property
    def in_turn(self) -> bool:
        return self._turn is not None

    @property
    def last_window(self) -> Optional[int]:
        """The window whose unit ran last (None before the first, and after a new epoch)."""
        return self._last_index

    def reset(self) -> Optional[Alert]:
        """Forget the conversation (omni/reset): buffered input, session state, turn, VAD state.

        Returns the alert of a proactive turn that was still open (it ends here), else None."""
        alert = self._close_turn()
        self.buffer.clear()
        self._reset_detector()
        self._clear_history()
        with self._interrupt_lock:
            self._interrupt_at = None
        self._suppressing, self._suppress_through = False, None
        self._consecutive_failures = 0
        self.session.reset()
        return alert

    def interrupt(self, window_index: Optional[int] = None) -> None:
        """The person started speaking over the robot (any thread). `window_index`: the window
        the speech onset fell in (speech is muted at least through it)."""
        with self._interrupt_lock:
            if self._interrupt_at is None:
                self.counters.barge_ins += 1
            at = -1 if window_index is None else int(window_index)
            self._interrupt_at = at if self._interrupt_at is None else max(self._interrupt_at, at)

    def _reset_detector(self) -> None:
        reset = getattr(self.speech_detector, "reset", None)
        if callable(reset):
            reset()

    def run_window(self, window_index: int, epoch: int) -> Optional[UnitReport]:
        """Run the unit of the window that just closed; None if it was run already, or is of an
        older epoch."""
        window_index, epoch = int(window_index), int(epoch)
        pending_alert: Optional[Alert] = None
        missed = 0
        if self._epoch is not None and epoch < self._epoch:
            self.counters.ticks_ignored += 1
            return None
        if self._epoch is not None and epoch > self._epoch:
            self.counters.epochs += 1
            self._last_index = None
            try:
                pending_alert = self.reset()
            except Exception:  # noqa: BLE001 - counted; the next unit runs on whatever is left
                self.counters.session_reset_failures += 1
        elif self._last_index is not None:
            if window_index <= self._last_index:
                self.counters.ticks_ignored += 1
                return None
            missed = window_index - self._last_index - 1
        self._epoch, self._last_index = epoch, window_index
        started = time.perf_counter()

        image, image_stamp_ns, audio, coverage, merged = self._take_input(window_index, missed)
        if image_stamp_ns is not None and (self._newest_image_stamp is None
                                           or image_stamp_ns > self._newest_image_stamp):
            self._newest_image_stamp = image_stamp_ns
        own_audio = audio if merged == 0 or audio.shape[0] == self.window_samples \
            else audio[-self.window_samples:]
        vad_started = time.perf_counter()
        user_probability = self._user_speech_probability(own_audio, coverage)
        vad_ms = (time.perf_counter() - vad_started) * 1000.0
        user_speech = user_probability >= self.params.speech_threshold
        if user_speech:
            self._last_user_speech = window_index

        window_ns = self.params.window_ns
        unit = UnitInput(window_index=window_index, epoch=epoch,
                         start_ns=window_start(window_index - merged, window_ns),
                         end_ns=window_end(window_index, window_ns), image=image,
                         image_stamp_ns=image_stamp_ns, audio=audio, audio_coverage=coverage)
        error = None
        model_started = time.perf_counter()
        try:
            output = self.session.run_unit(unit)
            self._consecutive_failures = 0
        except Exception as exc:  # noqa: BLE001 - the runner must outlive a failing unit
            error = f"{type(exc).__name__}: {exc}"
            self.counters.units_failed += 1
            self._consecutive_failures += 1
            output = None
        model_ms = (time.perf_counter() - model_started) * 1000.0
        self.counters.units_run += 1

        # A barge-in that came before or while this unit ran: its speech is never played.
        with self._interrupt_lock:
            interrupt_at, self._interrupt_at = self._interrupt_at, None
        if interrupt_at is not None:
            pending_alert = self._close_turn() or pending_alert
            self._suppressing = True
            self._suppress_through = max(interrupt_at, window_index)
            try:
                self.session.interrupt()
                self.counters.session_interrupts += 1
            except Exception:  # noqa: BLE001 - muting from the flow side still applies
                self.counters.session_reset_failures += 1

        report = self._track_turn(window_index, epoch, output, image_stamp_ns, user_speech,
                                  user_probability, coverage, interrupted=interrupt_at is not None)
        if report.alert is None and pending_alert is not None:
            report.alert = pending_alert
        report.error = error
        report.merged_windows = merged
        report.model_ms = model_ms
        report.vad_ms = vad_ms
        limit = self.params.max_consecutive_failures
        if error is not None and limit and self._consecutive_failures >= limit:
            report.session_reset = True
            self._consecutive_failures = 0
            self.counters.session_resets_after_failures += 1
            try:
                self.session.reset()
            except Exception:  # noqa: BLE001
                self.counters.session_reset_failures += 1
        report.compute_ms = (time.perf_counter() - started) * 1000.0
        return report

    def _take_input(self, window_index: int, missed: int):
        """(image, image_stamp_ns, audio, coverage, merged_windows) for this unit."""
        merge = self.params.overload_policy == "merge" and missed > 0
        merged = min(missed, self.params.max_merge_windows) if merge else 0
        self.counters.windows_skipped += missed - merged
        self.counters.windows_merged += merged
        audios, coverages = [], []
        image = image_stamp = None
        for k in range(window_index - merged, window_index + 1):
            k_image, k_stamp, k_audio, k_coverage = self.buffer.take_window(k)
            if k_stamp is not None and (image_stamp is None or k_stamp >= image_stamp):
                image, image_stamp = k_image, k_stamp
            audios.append(np.array(k_audio, dtype=np.float32) if merged else k_audio)
            coverages.append(k_coverage)
        if not merged:
            return image, image_stamp, audios[0], coverages[0], 0
        coverage = float(np.mean(coverages))
        if self.session.capabilities.accepts_merged_audio:
            audio = np.concatenate(audios)
        else:
            audio = fold_audio(audios, self.window_samples)
        return image, image_stamp, audio, coverage, merged

    def _user_speech_probability(self, audio: np.ndarray, coverage: float) -> float:
        if coverage <= 0.0:
            return 0.0
        try:
            return float(self.speech_detector(audio))
        except Exception:  # noqa: BLE001 - a broken detector must not stop the runner
            self.counters.speech_detector_failures += 1
            return 0.0

    def _close_turn(self) -> Optional[Alert]:
        """End the spoken turn; its alert if it was proactive and has not alerted yet."""
        turn, self._turn = self._turn, None
        if turn is not None and turn.proactive and not turn.alerted and turn.units > 0:
            return self._make_alert(turn)
        return None

    def _make_alert(self, turn: "SpokenTurn") -> Alert:
        turn.alerted = True
        self.counters.alerts += 1
        return Alert(text=_join_text(turn.texts), instruction=self.standing_instruction,
                     confidence=turn.confidence, evidence_stamp_ns=turn.evidence_stamp_ns,
                     units=turn.units)

    def _track_turn(self, window_index: int, epoch: int, output: Optional[UnitOutput],
                    image_stamp_ns: Optional[int], user_speech: bool, user_probability: float,
                    coverage: float, interrupted: bool = False) -> UnitReport:
        report = UnitReport(window_index=window_index, epoch=epoch, state=LISTENING,
                            end_of_turn=False, proactive=False, speak_probability=0.0,
                            compute_ms=0.0, text="", speech=_NO_SPEECH,
                            image_stamp_ns=image_stamp_ns, user_speech=user_speech,
                            audio_coverage=coverage, user_speech_probability=user_probability)
        if output is not None:
            report.speak_probability = float(output.speak_probability)
            report.context_rebuild = output.context_rebuild
        if self._suppressing and not interrupted and window_index > (self._suppress_through or 0) \
                and not user_speech:
            self._suppressing = False   # the person stopped: the robot may answer
        if interrupted:
            report.state = INTERRUPTED
            report.end_of_turn = True
            if output is not None and not output.is_listen:
                self.counters.units_suppressed += 1
            return report
        if output is None:
            # A failed unit closes any open turn: nothing more will be said in it.
            report.end_of_turn = self._turn is not None
            report.alert = self._close_turn()
            return report
        if output.is_listen:
            report.end_of_turn = bool(output.end_of_turn)
            report.alert = self._close_turn()
            return report
        if self._suppressing:
            # The model speaks while the person is still talking after a barge-in: muted.
            self.counters.units_suppressed += 1
            report.suppressed = True
            report.end_of_turn = bool(output.end_of_turn)
            return report
        report.state = SPEAKING
        report.end_of_turn = bool(output.end_of_turn)
        report.text = output.text or ""
        report.speech = np.asarray(output.speech, dtype=np.float32).reshape(-1)
        if self._turn is None:
            self._turn = SpokenTurn(proactive=not self._heard_user_recently(window_index),
                                    confidence=report.speak_probability,
                                    evidence_stamp_ns=self._newest_image_stamp)
        turn = self._turn
        turn.units += 1
        if report.text:
            turn.texts.append(report.text)
        report.proactive = turn.proactive
        if turn.proactive and not turn.alerted and (
                report.end_of_turn or turn.units >= self.params.alert_max_units):
            report.alert = self._make_alert(turn)
        if report.end_of_turn:
            self._turn = None
        return report

    def _heard_user_recently(self, window_index: int) -> bool:
        lookback = self.params.proactive_lookback_windows
        return (self._last_user_speech is not None
                and self._last_user_speech >= window_index - lookback)
