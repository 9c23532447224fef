"""DuplexLoop with a scripted test-double session: turns, proactive alerts, skips, failures, epochs."""
import numpy as np
import pytest

from omni_ros.flow.buffers import WindowBuffer
from omni_ros.flow.duplex import LISTENING, SPEAKING, DuplexLoop, DuplexParams
from omni_ros.flow.types import OUTPUT_SAMPLE_RATE, UnitOutput

pytestmark = pytest.mark.unit

W = 1_000_000_000


def listen():
    return UnitOutput(is_listen=True, speak_probability=0.1)


def speak(text, end=False, p=0.9):
    return UnitOutput(is_listen=False, text=text, end_of_turn=end, speak_probability=p,
                      speech=np.full(OUTPUT_SAMPLE_RATE, 0.1, np.float32))


class ScriptedSession:
    """Returns the scripted outputs in order (an Exception instance is raised instead)."""

    def __init__(self, script):
        self.script = list(script)
        self.units = []
        self.resets = 0

    def reset(self):
        self.resets += 1

    def run_unit(self, unit):
        self.units.append(unit)
        step = self.script.pop(0) if self.script else listen()
        if isinstance(step, Exception):
            raise step
        return step


class FakeDetector:
    """Says 'speech' when the window's first sample is loud (see user_speaks)."""

    def __init__(self):
        self.resets = 0

    def __call__(self, audio):
        return 1.0 if audio[0] > 0.5 else 0.0

    def reset(self):
        self.resets += 1


def make_loop(script, **params):
    buf = WindowBuffer(W)
    session = ScriptedSession(script)
    detector = FakeDetector()
    loop = DuplexLoop(session, buf, detector, DuplexParams(window_ns=W, **params),
                      standing_instruction="tell me if someone falls")
    return loop, buf, session, detector


def user_speaks(buf, k):
    buf.add_audio(k * W, np.ones(16000, np.float32))


def test_unit_input_built_from_buffer():
    loop, buf, session, _ = make_loop([listen()])
    img = np.zeros((4, 4, 3), np.uint8)
    buf.add_frame(5 * W + 7, img)
    buf.add_audio(5 * W, np.full(8000, 0.25, np.float32))
    report = loop.on_tick(5, 0)
    unit = session.units[0]
    assert unit.window_index == 5 and unit.start_ns == 5 * W and unit.end_ns == 6 * W
    assert unit.image is img and unit.image_stamp_ns == 5 * W + 7
    assert unit.audio.shape == (16000,) and unit.audio_coverage == pytest.approx(0.5)
    assert report.state == LISTENING and report.compute_ms >= 0 and report.error is None
    assert report.speech.size == 0


def test_reply_to_user_is_not_proactive():
    loop, buf, _, _ = make_loop([listen(), speak("hi"), speak("there", end=True)])
    user_speaks(buf, 0)
    reports = [loop.on_tick(k, 0) for k in range(3)]
    assert reports[0].user_speech and not reports[1].user_speech
    assert [r.state for r in reports] == [LISTENING, SPEAKING, SPEAKING]
    assert not any(r.proactive for r in reports)
    assert all(r.alert is None for r in reports)
    assert reports[2].end_of_turn


def test_proactive_alert_once_per_turn():
    script = [listen(), listen(), listen(), speak("careful", p=0.8), speak("a cup fell"),
              speak("over there", end=True), listen(), speak("again", end=True)]
    loop, buf, _, _ = make_loop(script)
    buf.add_frame(2 * W + 5, "frame2")
    buf.add_frame(3 * W + 9, "frame3")
    reports = [loop.on_tick(k, 0) for k in range(8)]
    assert [r.proactive for r in reports] == [False] * 3 + [True] * 3 + [False, True]
    alerts = [(r.window_index, r.alert) for r in reports if r.alert is not None]
    assert [k for k, _ in alerts] == [5, 7]         # one per turn, when the turn ends
    first = alerts[0][1]
    assert first.text == "careful a cup fell over there" and first.units == 3
    assert first.confidence == pytest.approx(0.8)   # the turn's first unit
    assert first.instruction == "tell me if someone falls"
    assert first.evidence_stamp_ns == 3 * W + 9
    assert alerts[1][1].evidence_stamp_ns == 3 * W + 9   # newest frame seen, even if old
    assert loop.counters.alerts == 2


def test_lookback_window_for_user_speech():
    # user spoke in window 0; with lookback 2, a turn started at 2 is a reply, at 3 proactive
    loop, buf, _, _ = make_loop([listen(), listen(), speak("a", end=True), speak("b", end=True)])
    user_speaks(buf, 0)
    reports = [loop.on_tick(k, 0) for k in range(4)]
    assert not reports[2].proactive and reports[3].proactive


def test_instruction_changes_at_run_time():
    loop, _, _, _ = make_loop([speak("x", end=True)])
    loop.standing_instruction = "watch the door"
    assert loop.on_tick(0, 0).alert.instruction == "watch the door"


def test_duplicate_and_out_of_order_ticks_ignored_and_skips_counted():
    loop, _, session, _ = make_loop([])
    assert loop.on_tick(10, 0) is not None
    assert loop.on_tick(10, 0) is None
    assert loop.on_tick(9, 0) is None
    assert loop.on_tick(14, 0).window_index == 14
    c = loop.counters
    assert (c.ticks_ignored, c.windows_skipped, c.units_run) == (2, 3, 2)
    assert [u.window_index for u in session.units] == [10, 14]


def test_session_exception_survived():
    loop, _, _, _ = make_loop([speak("a"), RuntimeError("cuda fell over"), speak("b", end=True)])
    r0, r1, r2 = (loop.on_tick(k, 0) for k in range(3))
    assert r1.error == "RuntimeError: cuda fell over"
    assert r1.state == LISTENING and r1.end_of_turn       # the open turn was closed
    assert r2.error is None and r2.state == SPEAKING and r2.alert is not None   # a new turn
    assert loop.counters.units_failed == 1 and loop.counters.units_run == 3


def test_epoch_change_resets_everything():
    loop, buf, session, detector = make_loop([speak("a"), speak("b")])
    loop.on_tick(100, 0)
    buf.add_frame(101 * W, "stale")
    report = loop.on_tick(3, 1)                       # clock jumped back: new epoch
    assert report is not None and report.window_index == 3 and report.epoch == 1
    assert session.resets == 1 and detector.resets == 1
    assert buf.counters.frames_cleared == 1
    assert report.alert is not None and report.alert.text == "a"   # the old turn ended here
    assert report.proactive and loop.in_turn          # a new turn began
    assert loop.on_tick(200, 0) is None               # a tick from the old epoch
    assert loop.counters.epochs == 1 and loop.counters.windows_skipped == 0


def test_reset_service():
    loop, buf, session, detector = make_loop([speak("a")])
    loop.on_tick(0, 0)
    assert loop.in_turn
    loop.reset()
    assert not loop.in_turn and session.resets == 1 and detector.resets == 1


def test_without_detector_energy_gate_is_used():
    buf = WindowBuffer(W)
    loop = DuplexLoop(ScriptedSession([listen(), speak("x", end=True)]), buf)
    buf.add_audio(0, (0.3 * np.sin(np.arange(16000) * 0.2)).astype(np.float32))
    assert loop.on_tick(0, 0).user_speech
    assert not loop.on_tick(1, 0).proactive


def test_broken_detector_does_not_stop_the_loop():
    def broken(audio):
        raise ValueError("nope")
    buf = WindowBuffer(W)
    loop = DuplexLoop(ScriptedSession([]), buf, broken)
    buf.add_audio(0, np.ones(100, np.float32))
    assert loop.on_tick(0, 0).user_speech is False
    assert loop.counters.speech_detector_failures == 1


def test_mismatched_window_rejected():
    with pytest.raises(ValueError):
        DuplexLoop(ScriptedSession([]), WindowBuffer(W), None, DuplexParams(window_ns=W // 2))


def test_report_splits_unit_time_into_model_and_vad():
    """compute_ms holds the model's time and the VAD's; each is reported on its own."""
    import time

    class SlowSession(ScriptedSession):
        def run_unit(self, unit):
            time.sleep(0.03)
            return super().run_unit(unit)

    def slow_detector(audio):
        time.sleep(0.02)
        return 0.0

    buf = WindowBuffer(W)
    loop = DuplexLoop(SlowSession([]), buf, slow_detector)
    buf.add_audio(0, np.zeros(16000, np.float32))
    report = loop.on_tick(0, 0)
    assert 20 <= report.vad_ms < 30 <= report.model_ms
    assert report.compute_ms >= report.vad_ms + report.model_ms
