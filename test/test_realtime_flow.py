"""Real time under pressure at the flow level: barge-in, overload (skip / merge), faults, alerts."""
import threading
import time

import numpy as np
import pytest

from omni_ros.flow.buffers import WindowBuffer
from omni_ros.flow.duplex import (INTERRUPTED, LISTENING, SPEAKING, DuplexLoop, DuplexParams,
                                  fold_audio)
from omni_ros.flow.speech import SpeechPacer
from omni_ros.flow.ticks import TickQueue
from omni_ros.flow.types import OUTPUT_SAMPLE_RATE, UnitOutput

pytestmark = pytest.mark.unit

W = 1_000_000_000


def listen(p=0.1):
    return UnitOutput(is_listen=True, speak_probability=p)


def speak(text="x", end=False, p=0.9):
    return UnitOutput(is_listen=False, text=text, end_of_turn=end, speak_probability=p,
                      speech=np.full(OUTPUT_SAMPLE_RATE, 0.1, np.float32))


class Scripted:
    def __init__(self, script=(), default=None):
        self.script = list(script)
        self.default = default or listen()
        self.units, self.resets = [], 0

    def reset(self):
        self.resets += 1

    def run_unit(self, unit):
        self.units.append(unit)
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, Exception):
            raise step
        return step


class Interruptible(Scripted):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.interrupts = 0

    def interrupt(self):
        self.interrupts += 1


def loud(audio):
    return 1.0 if np.abs(audio).max() > 0.5 else 0.0


def make(session, window_ns=W, **params):
    buf = WindowBuffer(window_ns, max_future_windows=8)
    loop = DuplexLoop(session, buf, loud, DuplexParams(window_ns=window_ns, **params), "watch")
    return loop, buf


def person_speaks(buf, k, window_ns=W):
    buf.add_audio(k * window_ns, np.ones(window_ns * 16000 // W, np.float32))


# -- barge-in --------------------------------------------------------------------------------
def test_barge_in_interrupts_mutes_while_person_talks_then_listens():
    session = Scripted(default=speak())
    loop, buf = make(session)
    assert loop.on_tick(0, 0).state == SPEAKING
    loop.interrupt(1)                       # the person starts talking in window 1
    person_speaks(buf, 1)
    person_speaks(buf, 2)
    r1 = loop.on_tick(1, 0)
    assert r1.state == INTERRUPTED and r1.end_of_turn and r1.speech.size == 0 and not r1.text
    r2 = loop.on_tick(2, 0)                 # still talking: the model's speech is muted
    assert r2.state == LISTENING and r2.suppressed and r2.speech.size == 0
    r3 = loop.on_tick(3, 0)                 # the person stopped: the robot may answer
    assert r3.state == SPEAKING and not r3.suppressed
    assert loop.counters.barge_ins == 1 and loop.counters.units_suppressed == 2


def test_barge_in_during_a_running_unit_drops_its_speech():
    class Slow(Scripted):
        def run_unit(self, unit):
            out = super().run_unit(unit)
            loop.interrupt(unit.window_index + 1)   # arrives while this unit computes
            return out
    session = Slow(default=speak())
    loop, buf = make(session)
    report = loop.on_tick(0, 0)
    assert report.state == INTERRUPTED and report.speech.size == 0


def test_barge_in_calls_session_interrupt_when_offered_and_ends_proactive_turn_with_alert():
    session = Interruptible([speak("look out"), speak("there")], default=listen())
    loop, buf = make(session)
    loop.on_tick(0, 0)
    loop.interrupt(1)
    r = loop.on_tick(1, 0)
    assert session.interrupts == 1 and loop.counters.session_interrupts == 1
    assert r.state == INTERRUPTED and r.alert is not None and r.alert.text == "look out"
    assert loop.on_tick(2, 0).state == LISTENING


def test_pacer_flush_and_drop_unstarted():
    pacer = SpeechPacer(OUTPUT_SAMPLE_RATE, 200)
    pacer.enqueue(0, np.zeros(OUTPUT_SAMPLE_RATE, np.float32), 0)
    pacer.enqueue(1, np.zeros(OUTPUT_SAMPLE_RATE, np.float32), 0)
    assert len(pacer.due(0)) == 1                       # unit 0 started playing
    assert pacer.drop_unstarted(10) == 5                # unit 1 had not: dropped
    assert pacer.pending_chunks == 4
    assert pacer.flush() == 4 and pacer.due(10**12) == []


# -- alerts ----------------------------------------------------------------------------------
def test_one_alert_per_proactive_turn_with_the_whole_text():
    loop, _ = make(Scripted([listen(), speak("a cup", p=0.7), speak("fell"), listen()]))
    reports = [loop.on_tick(k, 0) for k in range(4)]
    alerts = [r.alert for r in reports if r.alert]
    assert len(alerts) == 1 and reports[3].alert is alerts[0]   # the listen unit ended the turn
    assert alerts[0].text == "a cup fell" and alerts[0].confidence == pytest.approx(0.7)


def test_never_ending_turn_alerts_at_the_bound_once():
    loop, _ = make(Scripted(default=speak("go")), alert_max_units=3)
    reports = [loop.on_tick(k, 0) for k in range(8)]
    alerts = [(r.window_index, r.alert) for r in reports if r.alert]
    assert [k for k, _ in alerts] == [2] and alerts[0][1].text == "go go go"
    assert alerts[0][1].units == 3


def test_reset_mid_turn_returns_the_alert_and_clears_state():
    session = Scripted([speak("hey"), speak("you")])
    loop, buf = make(session)
    loop.on_tick(0, 0)
    buf.add_frame(1 * W + 1, "frame")
    alert = loop.reset()
    assert alert is not None and alert.text == "hey" and not loop.in_turn
    assert session.resets == 1 and buf.open_windows() == ()
    assert loop.on_tick(1, 0).state == SPEAKING      # the loop carries on after the reset


# -- faults ----------------------------------------------------------------------------------
def test_consecutive_failures_reset_the_session():
    boom = RuntimeError("boom")
    session = Scripted([boom, boom, listen(), boom, boom, boom, listen()])
    loop, _ = make(session, max_consecutive_failures=2)
    reports = [loop.on_tick(k, 0) for k in range(7)]
    assert [r.session_reset for r in reports] == [False, True, False, False, True, False, False]
    assert session.resets == 2 and loop.counters.session_resets_after_failures == 2
    assert reports[-1].error is None and loop.counters.units_failed == 5


def test_detector_failure_counted():
    def broken(_audio):
        raise ValueError("no")
    loop = DuplexLoop(Scripted(), WindowBuffer(W), broken, DuplexParams(window_ns=W))
    loop.buffer.add_audio(0, np.ones(100, np.float32))
    assert loop.on_tick(0, 0) is not None and loop.counters.speech_detector_failures == 1


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
    loop, buf = make(session, overload_policy=policy, max_merge_windows=2)
    loop.on_tick(0, 0)
    for k in (1, 2, 3, 4):
        buf.add_audio(k * W, np.full(16000, 0.1 * k, np.float32))
    buf.add_frame(3 * W + 5, "frame3")
    report = loop.on_tick(4, 0)            # windows 1, 2, 3 were missed
    unit = session.units[-1]
    assert unit.audio.shape == (16000,)
    if policy == "skip":
        assert (loop.counters.windows_skipped, loop.counters.windows_merged) == (3, 0)
        assert report.merged_windows == 0 and np.allclose(unit.audio, 0.4)
        assert unit.image is None
    else:
        assert (loop.counters.windows_skipped, loop.counters.windows_merged) == (1, 2)
        assert report.merged_windows == 2 and unit.start_ns == 2 * W
        assert unit.audio.min() == pytest.approx(0.2, abs=0.02) and unit.audio.max() == pytest.approx(0.4, abs=0.02)
        assert unit.image == "frame3"


def test_session_accepting_merged_audio_gets_it_back_to_back():
    session = Scripted()
    session.accepts_merged_audio = True
    loop, buf = make(session, overload_policy="merge")
    loop.on_tick(0, 0)
    loop.on_tick(3, 0)
    assert session.units[-1].audio.shape == (48000,)


class SlowSession:
    """Wraps a session; units of the windows in `slow` take `delay` seconds."""

    def __init__(self, inner, slow, delay):
        self.inner, self.slow, self.delay = inner, set(slow), delay

    def reset(self):
        self.inner.reset()

    def run_unit(self, unit):
        if unit.window_index in self.slow:
            time.sleep(self.delay)
        return self.inner.run_unit(unit)


@pytest.mark.parametrize("policy", ["skip", "merge"])
def test_overload_in_real_time_is_bounded_and_catches_up(policy):
    """A clock thread ticks every 50 ms; units 5..7 take 130 ms. The tick queue never grows, the
    missed windows are counted, and once units are fast the loop is back on the newest window."""
    window_ns = 50_000_000
    inner = Scripted()
    loop, buf = make(SlowSession(inner, range(5, 8), 0.13), window_ns=window_ns,
                     overload_policy=policy)
    ticks = TickQueue(maxsize=4)
    stop = threading.Event()
    issued = []

    def clock():
        k = 0
        while not stop.is_set() and k < 30:
            time.sleep(0.05)
            ticks.put(type("T", (), {"index": k, "epoch": 0})(), time.monotonic())
            issued.append(k)
            k += 1
    thread = threading.Thread(target=clock)
    thread.start()
    ran, max_waiting = [], 0
    while thread.is_alive() or len(ticks):
        max_waiting = max(max_waiting, len(ticks))
        taken = ticks.get_newest(timeout=0.2)
        if taken is None:
            continue
        report = loop.on_tick(taken[0].index, 0)
        ran.append((report.window_index, issued[-1]))
    stop.set()
    thread.join()
    c = loop.counters
    assert max_waiting <= 4
    missed = 30 - len(ran)
    assert missed >= 3 and c.windows_skipped + c.windows_merged == missed
    if policy == "merge":
        assert c.windows_merged > 0
    else:
        assert c.windows_merged == 0
    # caught up: after the slow units every unit runs on the newest issued window (or one behind)
    late = [issued_k - k for k, issued_k in ran if k > 10]
    assert late and max(late) <= 1


def test_tick_queue_newest_with_lag_bound():
    q = TickQueue(maxsize=3)
    for k in range(5):
        q.put(type("T", (), {"index": k, "epoch": 0})(), 0.0)
    assert q.counters.ticks_dropped_overflow == 2            # bounded: 0 and 1 went
    assert q.get_newest(max_lag=1)[0].index == 3            # 2 superseded, 4 still waits
    assert q.get_newest()[0].index == 4
    assert q.get_newest(timeout=0.01) is None
    assert q.counters.ticks_superseded == 1
