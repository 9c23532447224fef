"""omni_node holds its speech back while the barge-in detector hears what may be a person
starting to talk, and lets it out once the detector has decided; speech over full scale is
clipped in the echo canceller's reference as it is when published (in process, real node)."""
import time

import numpy as np
import pytest

from omni_ros.flow.types import OUTPUT_SAMPLE_RATE
from omni_ros.tools.scene_player import synthesize_float

pytestmark = pytest.mark.dds

NS = 1_000_000_000
RATE = 16000


def test_due_speech_waits_while_a_possible_barge_in_is_decided(ros_context, tiny_checkpoint):
    from rclpy.parameter import Parameter

    from omni_ros.ros.omni_node import OmniNode
    node = OmniNode(context=ros_context, parameter_overrides=[
        Parameter("model_path", value=str(tiny_checkpoint)),
        Parameter("barge_in_min_speech_ms", value=96)])
    try:
        engine = node.engine
        node.close()          # the engine's speaker thread stops: release_speech by hand
        robot = synthesize_float("Hello there, I am the robot and I am telling you about the "
                                 "weather.")
        person = synthesize_float("Stop! Wait a moment please.", voice="en-us+f3")
        mic = 0.5 * robot.copy()
        mic[2 * RATE:2 * RATE + person.shape[0]] += 0.7 * person[:mic.shape[0] - 2 * RATE]
        detector = engine.barge_in
        detector.push_reference(5 * NS, robot)
        for i in range(0, mic.shape[0], 320):
            detector.push_mic(5 * NS + i * NS // RATE, mic[i:i + 320])
            if detector.holds_speech(time.monotonic()):
                break
        assert detector.holds_speech(time.monotonic())

        with engine.pacer_lock:
            engine.pacer.enqueue(0, np.full(OUTPUT_SAMPLE_RATE, 0.1, np.float32),
                               time.monotonic_ns() - NS)   # all of it due now
        pending = engine.pacer.pending_chunks
        assert engine.release_speech() is False
        assert engine.pacer.pending_chunks == pending
        assert engine.counters.speech_chunks_published == 0

        detector.reset()      # decided: not a barge-in (or the hold timed out)
        assert engine.release_speech() is True
        assert engine.counters.speech_chunks_published == pending
        speech_over_full_scale_is_cancelled_as_the_loudspeaker_plays_it(node)
    finally:
        node.destroy_node()


def speech_over_full_scale_is_cancelled_as_the_loudspeaker_plays_it(node):
    """The model's speech goes out as 16-bit PCM, so a voice over full scale is clipped there:
    the echo canceller's reference is that clipped voice, not the model's float samples (whose
    echo the canceller could not model, and the barge-in detector would hear as a person), and
    the speech diagnostics count the clipped samples and warn of them. (Run on the node of the
    test above, its speaker thread stopped: one omni_node in this process.)"""
    import dataclasses

    from omni_ros.flow.unit_runner import SPEAKING, UnitReport
    from omni_ros.ros.diagnostics import WARN
    engine, detector = node.engine, node.engine.barge_in
    detector.reset()
    published, pushed = engine.counters.speech_chunks_published, detector.counters.reference_samples
    t = np.arange(OUTPUT_SAMPLE_RATE) / OUTPUT_SAMPLE_RATE
    loud = (1.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)   # 3.5 dB over full scale
    fields = {f.name: None for f in dataclasses.fields(UnitReport)
              if f.default is dataclasses.MISSING}
    fields.update(window_index=1, epoch=0, state=SPEAKING, end_of_turn=False, proactive=False,
                  speak_probability=1.0, compute_ms=0.0, text="", speech=loud, user_speech=False)
    engine._take_report(UnitReport(**fields))
    assert engine.release_speech() and engine.counters.speech_chunks_published > published

    n = detector.counters.reference_samples - pushed
    played = detector.reference.get(detector.reference.newest_end - n, n)
    as_played = engine._resample(np.clip(loud, -1.0, 1.0), OUTPUT_SAMPLE_RATE, RATE)
    as_modelled = engine._resample(loud, OUTPUT_SAMPLE_RATE, RATE)
    assert n > 0 and np.array_equal(played, as_played[:n])
    assert np.abs(played).max() < 1.1 < np.abs(as_modelled[:n]).max()

    clipped = int(np.count_nonzero(np.abs(loud) > 1.0))
    assert engine.diagnostic_values()["speech_samples_clipped"] == clipped > 0
    concerns = {c.name: c for c in node.health.assess(node.camera, node.mic, engine, {}, 1e9)}
    assert concerns["speech"].level == WARN

