"""UnitRunner with scripted test-double sessions: unit inputs, turns, proactive alerts, barge-in,
overload (skip / merge, in real time), faults, epochs."""
import time

import numpy as np
import pytest

from omni_ros.flow.buffers import WindowBuffer
from omni_ros.flow.ticks import TickQueue
from omni_ros.flow.types import (INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, DuplexSession,
                                 SessionCapabilities, UnitOutput)
from omni_ros.flow.unit_runner import (INTERRUPTED, LISTENING, SPEAKING, RunnerParams, UnitRunner,
                                       fold_audio)

pytestmark = pytest.mark.unit

W = 1_000_000_000


def listen(p=0.1):
    return UnitOutput(is_listen=True, speak_probability=p)


def speak(text="x", end=False, p=0.9):
    return UnitOutput(is_listen=False, text=text, end_of_turn=end, speak_probability=p,
                      speech=np.full(OUTPUT_SAMPLE_RATE, 0.1, np.float32))


class Scripted(DuplexSession):
    """Returns the scripted outputs in order (an Exception instance is raised instead), then
    `default`; counts resets and interrupts."""

    def __init__(self, script=(), default=None, window_ns=W, merged_audio=False):
        self.script = list(script)
        self.default = default or listen()
        self.units, self.resets, self.interrupts = [], 0, 0
        self.capabilities = SessionCapabilities(window_samples=window_ns * INPUT_SAMPLE_RATE // W,
                                                accepts_merged_audio=merged_audio)

    def reset(self):
        self.resets += 1

    def interrupt(self):
        self.interrupts += 1
        return True

    def run_unit(self, unit):
        self.units.append(unit)
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, Exception):
            raise step
        return step


class Detector:
    """Says 'speech' when the window's first sample is loud (see person_speaks); counts resets."""

    def __init__(self):
        self.resets = 0

    def __call__(self, audio):
        return 1.0 if audio[0] > 0.5 else 0.0

    def reset(self):
        self.resets += 1


def make(session, window_ns=W, detector=None, **params):
    buf = WindowBuffer(window_ns, max_future_windows=8)
    runner = UnitRunner(session, buf, detector or Detector(), RunnerParams(window_ns=window_ns, **params),
                        "tell me if someone falls")
    return runner, buf


def person_speaks(buf, k, window_ns=W):
    buf.add_audio(k * window_ns, np.ones(window_ns * INPUT_SAMPLE_RATE // W, np.float32))


# -- unit input, turns and alerts --------------------------------------------------------------
def test_unit_input_built_from_buffer():
    session = Scripted([listen()])
    runner, buf = make(session)
    img = np.zeros((4, 4, 3), np.uint8)
    buf.add_frame(5 * W + 7, img)
    buf.add_audio(5 * W, np.full(8000, 0.25, np.float32))
    report = runner.run_window(5, 0)
    unit = session.units[0]
    assert unit.window_index == 5 and unit.start_ns == 5 * W and unit.end_ns == 6 * W
    assert unit.image is img and unit.image_stamp_ns == 5 * W + 7
    assert unit.audio.shape == (16000,) and unit.audio_coverage == pytest.approx(0.5)
    assert report.state == LISTENING and report.compute_ms >= 0 and report.error is None
    assert report.speech.size == 0


def test_reply_to_user_is_not_proactive():
    runner, buf = make(Scripted([listen(), speak("hi"), speak("there", end=True)]))
    person_speaks(buf, 0)
    reports = [runner.run_window(k, 0) for k in range(3)]
    assert reports[0].user_speech and not reports[1].user_speech
    assert [r.state for r in reports] == [LISTENING, SPEAKING, SPEAKING]
    assert not any(r.proactive for r in reports)
    assert all(r.alert is None for r in reports)
    assert reports[2].end_of_turn


def test_proactive_alert_once_per_turn():
    script = [listen(), listen(), listen(), speak("careful", p=0.8), speak("a cup fell"),
              speak("over there", end=True), listen(), speak("again", end=True)]
    runner, buf = make(Scripted(script))
    buf.add_frame(2 * W + 5, "frame2")
    buf.add_frame(3 * W + 9, "frame3")
    reports = [runner.run_window(k, 0) for k in range(8)]
    assert [r.proactive for r in reports] == [False] * 3 + [True] * 3 + [False, True]
    alerts = [(r.window_index, r.alert) for r in reports if r.alert is not None]
    assert [k for k, _ in alerts] == [5, 7]         # one per turn, when the turn ends
    first = alerts[0][1]
    assert first.text == "careful a cup fell over there" and first.units == 3
    assert first.confidence == pytest.approx(0.8)   # the turn's first unit
    assert first.instruction == "tell me if someone falls"
    assert first.evidence_stamp_ns == 3 * W + 9
    assert alerts[1][1].evidence_stamp_ns == 3 * W + 9   # newest frame seen, even if old
    assert runner.counters.alerts == 2


def test_a_listen_unit_ends_the_turn_and_carries_its_alert():
    runner, _ = make(Scripted([listen(), speak("a cup", p=0.7), speak("fell"), listen()]))
    reports = [runner.run_window(k, 0) for k in range(4)]
    alerts = [r.alert for r in reports if r.alert]
    assert len(alerts) == 1 and reports[3].alert is alerts[0]
    assert alerts[0].text == "a cup fell" and alerts[0].confidence == pytest.approx(0.7)


def test_never_ending_turn_alerts_at_the_bound_once():
    runner, _ = make(Scripted(default=speak("go")), alert_max_units=3)
    reports = [runner.run_window(k, 0) for k in range(8)]
    alerts = [(r.window_index, r.alert) for r in reports if r.alert]
    assert [k for k, _ in alerts] == [2] and alerts[0][1].text == "go go go"
    assert alerts[0][1].units == 3


def test_lookback_window_for_user_speech():
    # user spoke in window 0; with lookback 2, a turn started at 2 is a reply, at 3 proactive
    runner, buf = make(Scripted([listen(), listen(), speak("a", end=True), speak("b", end=True)]))
    person_speaks(buf, 0)
    reports = [runner.run_window(k, 0) for k in range(4)]
    assert not reports[2].proactive and reports[3].proactive


def test_instruction_changes_at_run_time():
    runner, _ = make(Scripted([speak("x", end=True)]))
    runner.standing_instruction = "watch the door"
    assert runner.run_window(0, 0).alert.instruction == "watch the door"


def test_without_detector_energy_gate_is_used():
    buf = WindowBuffer(W)
    runner = UnitRunner(Scripted([listen(), speak("x", end=True)]), buf)
    buf.add_audio(0, (0.3 * np.sin(np.arange(16000) * 0.2)).astype(np.float32))
    assert runner.run_window(0, 0).user_speech
    assert not runner.run_window(1, 0).proactive


def test_report_splits_unit_time_into_model_and_vad():
    """compute_ms holds the model's time and the VAD's; each is reported on its own."""
    class Slow(Scripted):
        def run_unit(self, unit):
            time.sleep(0.03)
            return super().run_unit(unit)

    def slow_detector(audio):
        time.sleep(0.02)
        return 0.0

    buf = WindowBuffer(W)
    runner = UnitRunner(Slow(), buf, slow_detector)
    buf.add_audio(0, np.zeros(16000, np.float32))
    report = runner.run_window(0, 0)
    assert 20 <= report.vad_ms < 30 <= report.model_ms
    assert report.compute_ms >= report.vad_ms + report.model_ms


def test_window_length_must_agree_with_buffer_and_session():
    with pytest.raises(ValueError, match="buffer"):
        UnitRunner(Scripted(), WindowBuffer(W), None, RunnerParams(window_ns=W // 2))
    with pytest.raises(ValueError, match="same window length"):
        UnitRunner(Scripted(window_ns=W // 2), WindowBuffer(W))


# -- barge-in --------------------------------------------------------------------------------
def test_barge_in_interrupts_mutes_while_person_talks_then_listens():
    session = Scripted(default=speak())
    runner, buf = make(session)
    assert runner.run_window(0, 0).state == SPEAKING
    runner.interrupt(1)                       # the person starts talking in window 1
    person_speaks(buf, 1)
    person_speaks(buf, 2)
    r1 = runner.run_window(1, 0)
    assert r1.state == INTERRUPTED and r1.end_of_turn and r1.speech.size == 0 and not r1.text
    r2 = runner.run_window(2, 0)                 # still talking: the model's speech is muted
    assert r2.state == LISTENING and r2.suppressed and r2.speech.size == 0
    r3 = runner.run_window(3, 0)                 # the person stopped: the robot may answer
    assert r3.state == SPEAKING and not r3.suppressed
    assert runner.counters.barge_ins == 1 and runner.counters.units_suppressed == 2


def test_barge_in_during_a_running_unit_drops_its_speech():
    class Slow(Scripted):
        def run_unit(self, unit):
            out = super().run_unit(unit)
            runner.interrupt(unit.window_index + 1)   # arrives while this unit computes
            return out
    session = Slow(default=speak())
    runner, buf = make(session)
    report = runner.run_window(0, 0)
    assert report.state == INTERRUPTED and report.speech.size == 0


def test_barge_in_interrupts_the_session_and_ends_proactive_turn_with_alert():
    session = Scripted([speak("look out"), speak("there")], default=listen())
    runner, buf = make(session)
    runner.run_window(0, 0)
    runner.interrupt(1)
    r = runner.run_window(1, 0)
    assert session.interrupts == 1 and runner.counters.session_interrupts == 1
    assert r.state == INTERRUPTED and r.alert is not None and r.alert.text == "look out"
    assert runner.run_window(2, 0).state == LISTENING


# -- reset, epochs, faults ---------------------------------------------------------------------
def test_reset_mid_turn_returns_the_alert_and_clears_state():
    session, detector = Scripted([speak("hey"), speak("you")]), Detector()
    runner, buf = make(session, detector=detector)
    runner.run_window(0, 0)
    assert runner.in_turn
    buf.add_frame(1 * W + 1, "frame")
    alert = runner.reset()
    assert alert is not None and alert.text == "hey" and not runner.in_turn
    assert session.resets == 1 and detector.resets == 1 and buf.open_windows() == ()
    assert runner.run_window(1, 0).state == SPEAKING      # it carries on after the reset


def test_duplicate_and_out_of_order_ticks_ignored_and_skips_counted():
    session = Scripted()
    runner, _ = make(session)
    assert runner.run_window(10, 0) is not None
    assert runner.run_window(10, 0) is None
    assert runner.run_window(9, 0) is None
    assert runner.run_window(14, 0).window_index == 14
    c = runner.counters
    assert (c.ticks_ignored, c.windows_skipped, c.units_run) == (2, 3, 2)
    assert [u.window_index for u in session.units] == [10, 14]


def test_epoch_change_resets_everything():
    session, detector = Scripted([speak("a"), speak("b")]), Detector()
    runner, buf = make(session, detector=detector)
    runner.run_window(100, 0)
    buf.add_frame(101 * W, "stale")
    report = runner.run_window(3, 1)                    # clock jumped back: new epoch
    assert report is not None and report.window_index == 3 and report.epoch == 1
    assert session.resets == 1 and detector.resets == 1
    assert buf.counters.frames_cleared == 1
    assert report.alert is not None and report.alert.text == "a"   # the old turn ended here
    assert report.proactive and runner.in_turn          # a new turn began
    assert runner.run_window(200, 0) is None            # a tick from the old epoch
    assert runner.counters.epochs == 1 and runner.counters.windows_skipped == 0


def test_session_exception_survived():
    runner, _ = make(Scripted([speak("a"), RuntimeError("cuda fell over"), speak("b", end=True)]))
    r0, r1, r2 = (runner.run_window(k, 0) for k in range(3))
    assert r1.error == "RuntimeError: cuda fell over"
    assert r1.state == LISTENING and r1.end_of_turn       # the open turn was closed
    assert r2.error is None and r2.state == SPEAKING and r2.alert is not None   # a new turn
    assert runner.counters.units_failed == 1 and runner.counters.units_run == 3


def test_consecutive_failures_reset_the_session():
    boom = RuntimeError("boom")
    session = Scripted([boom, boom, listen(), boom, boom, boom, listen()])
    runner, _ = make(session, max_consecutive_failures=2)
    reports = [runner.run_window(k, 0) for k in range(7)]
    assert [r.session_reset for r in reports] == [False, True, False, False, True, False, False]
    assert session.resets == 2 and runner.counters.session_resets_after_failures == 2
    assert reports[-1].error is None and runner.counters.units_failed == 5


def test_broken_detector_counted_and_the_runner_goes_on():
    def broken(_audio):
        raise ValueError("no")
    runner = UnitRunner(Scripted(), WindowBuffer(W), broken, RunnerParams(window_ns=W))
    runner.buffer.add_audio(0, np.ones(100, np.float32))
    report = runner.run_window(0, 0)
    assert report is not None and report.user_speech is False
    assert runner.counters.speech_detector_failures == 1


# -- overload --------------------------------------------------------------------------------
def test_fold_audio_keeps_length_and_content():
    a = np.ones(1000, np.float32)
    b = -np.ones(1000, np.float32)
    folded = fold_audio([a, b], 1000)
    assert folded.shape == (1000,)
    assert folded[:400].mean() > 0.9 and folded[-400:].mean() < -0.9


@pytest.mark.parametrize("policy", ["skip", "merge"])
def test_missed_windows_skipped_or_merged_and_counted(policy):
    session = Scripted()
    runner, buf = make(session, overload_policy=policy, max_merge_windows=2)
    runner.run_window(0, 0)
    for k in (1, 2, 3, 4):
        buf.add_audio(k * W, np.full(16000, 0.1 * k, np.float32))
    buf.add_frame(3 * W + 5, "frame3")
    report = runner.run_window(4, 0)            # windows 1, 2, 3 were missed
    unit = session.units[-1]
    assert unit.audio.shape == (16000,)
    if policy == "skip":
        assert (runner.counters.windows_skipped, runner.counters.windows_merged) == (3, 0)
        assert report.merged_windows == 0 and np.allclose(unit.audio, 0.4)
        assert unit.image is None
    else:
        assert (runner.counters.windows_skipped, runner.counters.windows_merged) == (1, 2)
        assert report.merged_windows == 2 and unit.start_ns == 2 * W
        assert unit.audio.min() == pytest.approx(0.2, abs=0.02) and unit.audio.max() == pytest.approx(0.4, abs=0.02)
        assert unit.image == "frame3"


def test_session_accepting_merged_audio_gets_it_back_to_back():
    session = Scripted(merged_audio=True)
    runner, buf = make(session, overload_policy="merge")
    runner.run_window(0, 0)
    runner.run_window(3, 0)
    assert session.units[-1].audio.shape == (48000,)


def test_tick_queue_newest_with_lag_bound():
    q = TickQueue(maxsize=3)
    for k in range(5):
        q.put(type("T", (), {"index": k, "epoch": 0})(), 0.0)
    assert q.counters.ticks_dropped_overflow == 2            # bounded: 0 and 1 went
    assert q.get_newest(max_lag=1)[0].index == 3            # 2 superseded, 4 still waits
    assert q.get_newest()[0].index == 4
    assert q.get_newest(timeout=0.01) is None
    assert q.counters.ticks_superseded == 1
