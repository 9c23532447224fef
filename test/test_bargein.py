"""Barge-in detection chunk by chunk: a person speaking over the robot triggers it; the robot's
own voice coming back into the microphone does not, thanks to the echo canceller."""
import time

import numpy as np
import pytest

from omni_ros.flow.bargein import BargeInDetector
from omni_ros.flow.echo import FdafEchoCanceller, ReferenceBuffer, make_echo_canceller
from omni_ros.flow.vad import VoiceActivity
from omni_ros.tools.scene_player import synthesize_float

pytestmark = pytest.mark.unit

RATE = 16000
NS = 1_000_000_000


def speech(text, voice="en-us"):
    return synthesize_float(text, voice=voice, sample_rate=RATE)


@pytest.fixture(scope="module")
def voices():
    robot = speech("Hello there, I am the robot and I am telling you about the weather today "
                   "in the city and what I saw in the kitchen.")
    person = speech("Stop! Wait a moment please.", voice="en-us+f3")
    return robot, person


@pytest.fixture(scope="module")
def vad():
    return VoiceActivity()


def available(kind):
    try:
        make_echo_canceller(kind)
        return True
    except Exception:  # noqa: BLE001
        return False


CANCELLERS = [k for k in ("fdaf", "webrtc") if available(k)]


def run(detector, mic, chunk=320, start_ns=5 * NS):
    """Feed the mic in 20 ms chunks; the stamps of triggered onsets, in seconds from start."""
    hits = []
    for i in range(0, mic.shape[0], chunk):
        onset = detector.push_mic(start_ns + i * NS // RATE, mic[i:i + chunk])
        if onset is not None:
            hits.append((onset - start_ns) / NS)
    return hits


def scene(robot, person=None, onset_s=2.0, echo_gain=0.5, delay=80):
    mic = echo_gain * np.concatenate([np.zeros(delay, np.float32), robot])[:robot.shape[0]]
    mic = mic + np.random.default_rng(0).normal(0, 1e-3, mic.shape[0]).astype(np.float32)
    if person is not None:
        at = int(onset_s * RATE)
        n = min(person.shape[0], mic.shape[0] - at)
        mic[at:at + n] += 0.7 * person[:n]
    return mic.astype(np.float32)


def detector_for(kind, vad):
    vad.reset()
    return BargeInDetector(vad, make_echo_canceller(kind), threshold=0.5, min_speech_ms=96)


@pytest.mark.parametrize("delay", [0, 32, 80, 800])
@pytest.mark.parametrize("kind", CANCELLERS)
def test_own_voice_in_the_mic_does_not_trigger(kind, delay, vad, voices):
    """Echo delays from none (the sample published is the sample heard) to 50 ms."""
    robot, _ = voices
    detector = detector_for(kind, vad)
    detector.push_reference(5 * NS, robot)
    assert run(detector, scene(robot, delay=delay)) == []
    assert detector.counters.frames_scored > 100


def test_without_echo_cancelling_own_voice_would_trigger(vad, voices):
    """The scene above is a real test: with no canceller the robot interrupts itself."""
    robot, _ = voices
    vad.reset()
    detector = BargeInDetector(vad, None, threshold=0.5, min_speech_ms=96)
    detector.push_reference(5 * NS, robot)
    assert run(detector, scene(robot)) != []


@pytest.mark.parametrize("kind", CANCELLERS)
def test_person_talking_over_the_robot_triggers_soon_after_onset(kind, vad, voices):
    robot, person = voices
    detector = detector_for(kind, vad)
    detector.push_reference(5 * NS, robot)
    mic = scene(robot, person, onset_s=2.0)
    hits = run(detector, mic)
    voiced = 2.0 + np.argmax(np.abs(person) > 0.02) / RATE   # espeak starts with a short silence
    assert hits, "the person was not heard"
    assert voiced - 0.1 <= hits[0] <= voiced + 0.35


def test_no_trigger_while_the_robot_is_silent(vad, voices):
    _, person = voices
    detector = detector_for("fdaf", vad)
    assert run(detector, np.concatenate([np.zeros(RATE, np.float32), person])) == []


def test_reference_buffer_by_stamp():
    ref = ReferenceBuffer(seconds=1.0)
    ref.add(NS, np.arange(100, dtype=np.float32))
    first = ref.index(NS)
    got = ref.get(first - 10, 30)
    assert np.all(got[:10] == 0) and np.array_equal(got[10:], np.arange(20))
    ref.add(NS + 2 * NS, np.ones(10, np.float32))   # wraps around the ring
    assert np.all(ref.get(first, 10) == 0)          # overwritten slots are not returned
    longer = np.arange(RATE + 500, dtype=np.float32)   # more than the ring holds: the newest stay
    ref.add(5 * NS, longer)
    start = ref.index(5 * NS)
    assert np.all(ref.get(start, 500) == 0)
    assert np.array_equal(ref.get(start + 500, RATE), longer[500:])


def test_fdaf_converges_on_an_echo():
    rng = np.random.default_rng(1)
    far = rng.normal(0, 0.1, 16000 * 3).astype(np.float32)
    near = 0.6 * np.concatenate([np.zeros(37, np.float32), far])[:far.shape[0]]
    aec = FdafEchoCanceller()
    out = np.concatenate([aec.process(near[i:i + 256], far[i:i + 256])
                          for i in range(0, far.shape[0] - 255, 256)])
    tail = slice(-16000, None)
    erle = 10 * np.log10(np.mean(near[:out.shape[0]][tail] ** 2) / np.mean(out[tail] ** 2))
    assert erle > 20


def test_reference_from_before_a_backward_clock_jump_is_forgotten(vad, voices):
    robot, person = voices
    detector = detector_for("fdaf", vad)
    detector.push_reference(100 * NS, robot)          # spoken at t = 100 s
    assert detector.robot_speaking_at(detector.reference.index(101 * NS))
    # the clock jumped back to t = 5 s: the robot is not speaking there
    assert run(detector, np.concatenate([np.zeros(RATE, np.float32), person])) == []
    assert detector.reference.newest_end is None


class RecordingCanceller:
    """Wraps a real canceller and keeps every mic sample it was given, in order."""

    def __init__(self, inner):
        self.inner, self.block, self.lead, self.seen = inner, inner.block, inner.lead, []

    def reset(self):
        self.inner.reset()

    def process(self, near, far):
        self.seen.append(np.array(near, dtype=np.float32))
        return self.inner.process(near, far)


@pytest.mark.parametrize("kind", CANCELLERS)
def test_canceller_gets_the_mic_as_one_gap_free_stream(kind, vad, voices):
    """20 ms chunks, 32 ms VAD frames and 10 ms (webrtc) or 16 ms (fdaf) canceller blocks do not
    line up; the canceller must still see every mic sample once, in order."""
    robot, _ = voices
    vad.reset()
    recorder = RecordingCanceller(make_echo_canceller(kind))
    detector = BargeInDetector(vad, recorder)
    detector.push_reference(5 * NS, robot)
    mic = scene(robot)
    run(detector, mic)
    seen = np.concatenate(recorder.seen)
    assert seen.shape[0] > mic.shape[0] - recorder.block
    assert np.array_equal(seen, mic[:seen.shape[0]])


@pytest.mark.parametrize("kind", CANCELLERS)
def test_echo_only_frames_skip_the_vad_and_a_voice_is_scored(kind, voices):
    """While the robot speaks alone most frames are ruled out as echo by their residual power,
    without running the VAD; frames where a person talks are scored."""
    robot, person = voices
    calls = []
    inner = VoiceActivity()

    def counting_vad(frame):
        calls.append(frame.shape[0])
        return inner(frame)

    detector = BargeInDetector(counting_vad, make_echo_canceller(kind), min_speech_ms=96)
    detector.push_reference(5 * NS, robot)
    run(detector, scene(robot))
    c = detector.counters
    assert c.frames_vad == len(calls) and c.frames_vad + c.frames_echo_gated == c.frames_scored
    assert len(calls) < 0.3 * c.frames_scored
    assert 0 < c.cpu_us   # the detector's own CPU time, for /diagnostics
    detector.reset()
    detector.push_reference(5 * NS, robot)
    before = len(calls)
    assert run(detector, scene(robot, person, onset_s=2.0))
    assert len(calls) - before >= detector.min_speech_frames


@pytest.mark.parametrize("kind", CANCELLERS)
def test_nonfinite_mic_samples_are_heard_as_silence(kind, vad, voices):
    """NaN and inf samples reach neither the canceller nor the VAD; the stream goes on."""
    robot, person = voices
    detector = detector_for(kind, vad)
    recorder = RecordingCanceller(detector.canceller)
    detector.canceller = recorder
    detector.push_reference(5 * NS, robot)
    mic = scene(robot, person, onset_s=2.0)
    mic[8000:8320] = np.nan
    mic[9000:9100] = np.inf
    mic[9100:9200] = -np.inf
    hits = run(detector, mic)
    seen = np.concatenate(recorder.seen)
    assert np.isfinite(seen).all() and np.all(seen[8000:8320] == 0) and np.all(seen[9000:9200] == 0)
    assert hits, "the person after the bad samples was still heard"


def test_vad_scores_nonfinite_audio_as_silence(vad):
    vad.reset()
    noisy = np.full(4 * 512, np.nan, dtype=np.float32)
    noisy[::3] = np.inf
    from_bad = vad(noisy)
    vad.reset()
    assert from_bad == pytest.approx(vad(np.zeros(4 * 512, np.float32)), abs=1e-6)
    assert from_bad < 0.5


@pytest.mark.parametrize("kind", CANCELLERS)
def test_speech_is_held_from_the_first_speech_frame_until_decided(kind, vad, voices):
    """The robot's next chunk waits while a run of speech frames is shorter than a barge-in:
    a barge-in then stops the voice from its first speech frame on. The echo alone never
    holds it; the hold is bounded in time when no more mic audio comes to decide it."""
    robot, person = voices
    detector = detector_for(kind, vad)
    detector.push_reference(5 * NS, robot)
    held, trigger_chunk = [], None
    mic = scene(robot, person, onset_s=2.0)
    for k, i in enumerate(range(0, mic.shape[0], 320)):
        if detector.push_mic(5 * NS + i * NS // RATE, mic[i:i + 320]) is not None:
            trigger_chunk = k
            break
        held.append(detector.holds_speech(time.monotonic()))
    assert trigger_chunk is not None and any(held)
    first_held = held.index(True)
    assert trigger_chunk - first_held >= (detector.min_speech_frames - 1) * 512 // 320
    assert all(held[first_held:])                      # held without a gap until decided
    assert not detector.holds_speech(time.monotonic())  # decided: the barge-in flushes instead
    assert detector.counters.onsets == 1

    detector = detector_for(kind, vad)
    detector.push_reference(5 * NS, robot)
    run(detector, scene(robot))
    assert detector.counters.onsets == 0                # the echo alone never holds speech


def test_a_hold_ends_by_itself_when_the_mic_stops(vad, voices):
    robot, person = voices
    detector = detector_for("fdaf", vad)
    detector.push_reference(5 * NS, robot)
    mic = scene(robot, person, onset_s=2.0)
    for i in range(0, mic.shape[0], 320):
        detector.push_mic(5 * NS + i * NS // RATE, mic[i:i + 320])
        if detector.holds_speech(time.monotonic()):
            break                                       # the mic stops mid-run
    now = time.monotonic()
    assert detector.holds_speech(now)
    assert not detector.holds_speech(now + (detector.min_speech_frames + 2) * 512 / RATE)
