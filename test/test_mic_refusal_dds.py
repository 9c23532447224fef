"""omni_node (a process, on the tiny checkpoint) and a microphone driver over DDS: audio after an
unsupported `mic/audio_info` is refused and counted, not read as the previous format, until a
supported one arrives; a driver that stamps each chunk from its own clock gives no overlap."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from graph import appender, spinning, start_node, stop, wait_until
from omni_ros.ros import audio_flavours, qos
from omni_ros.ros.conversions import ns_to_stamp
from omni_ros.ros.diagnostics import values_of

pytestmark = [pytest.mark.dds,
              pytest.mark.skipif(audio_flavours.FLAVOUR != audio_flavours.ROS_DRIVERS,
                                 reason="mic/audio_info is the ros-drivers flavour's")]

CHUNK_MS = 100
OVERLAP_WARNING = "instants already heard"


class Microphone(Node):
    """A microphone driver: mic/audio_info (latched) and mic/audio_stamped in real time; records
    /diagnostics."""

    def __init__(self) -> None:
        super().__init__("test_microphone")
        self.lock = threading.Lock()
        self.diagnostics = []
        self.audio = self.create_publisher(audio_flavours.MIC_TYPE, "mic/audio_stamped",
                                           qos.MIC_AUDIO)
        self.info = self.create_publisher(audio_flavours.MIC_INFO_TYPE, "mic/audio_info",
                                          qos.AUDIO_INFO)
        self.create_subscription(DiagnosticArray, "/diagnostics",
                                 appender(self.lock, self.diagnostics), qos.OUTPUT)

    def announce(self, sample_rate: int) -> None:
        """An S16LE mono mic/audio_info at `sample_rate` (not checked here: a driver's own)."""
        self.info.publish(audio_flavours.AudioInfo(channels=1, sample_rate=sample_rate,
                                                   sample_format="S16LE", bitrate=sample_rate * 16,
                                                   coding_format="wave"))

    def play(self, seconds: float, sample_rate: int, jitter: float = 0.0, seed: int = 0) -> int:
        """A quiet tone in CHUNK_MS chunks, paced in real time, stamped from this node's clock at
        the chunk's first sample (capture start + samples / rate) plus up to +-jitter chunks of
        uniform jitter (the first two at +jitter and -jitter: the widest step); how many chunks
        were sent."""
        frames = sample_rate * CHUNK_MS // 1000
        chunk_ns = CHUNK_MS * 1_000_000
        count = int(seconds * 1000 / CHUNK_MS)
        offsets = np.random.default_rng(seed).uniform(-jitter, jitter, count) * chunk_ns
        offsets[:2] = (jitter * chunk_ns, -jitter * chunk_ns)
        capture_ns, started = self.get_clock().now().nanoseconds, time.monotonic()
        for i in range(count):
            t = (np.arange(frames) + i * frames) / sample_rate
            # 437 Hz: not a whole number of periods per chunk, so no two chunks are the same
            # bytes (the first two, jittered to one stamp, would be dropped as a re-delivery)
            pcm = (0.05 * np.sin(2 * np.pi * 437 * t) * 32767).astype(np.int16)
            stamp = ns_to_stamp(capture_ns + i * chunk_ns + int(offsets[i]))
            self.audio.publish(audio_flavours.mic_message(stamp, pcm, sample_rate, 1, "mic"))
            time.sleep(max(0.0, started + (i + 1) * CHUNK_MS / 1000 - time.monotonic()))
        return count

    def values(self) -> dict:
        with self.lock:
            return values_of(self.diagnostics[-5:], "omni_node")

    def microphone_status(self):
        """The newest microphone status omni_node published."""
        with self.lock:
            for array in reversed(self.diagnostics):
                for status in array.status:
                    if status.name == "/omni_node: microphone":
                        return status
        raise AssertionError("no microphone status")

    def counter(self, key: str) -> int:
        return int(self.values().get(key, 0))


@pytest.fixture(scope="module")
def graph(ros_env, tiny_checkpoint, tmp_path_factory):
    """omni_node (no clock: only its input side is under test) and the microphone, matched."""
    log = tmp_path_factory.mktemp("mic_refusal") / "omni_node.log"
    node = start_node("omni_ros.ros.omni_node", [
        "-p", f"model_path:={tiny_checkpoint}", "-p", "diagnostics_period_sec:=0.2"],
        ros_env, log)
    mic = Microphone()
    try:
        with spinning(mic):
            wait_until(lambda: mic.audio.get_subscription_count() > 0
                       and mic.info.get_subscription_count() > 0 and mic.values(), 120,
                       "omni_node to subscribe and publish diagnostics", [log])
            yield mic, log
        assert stop([node]) == [0], log.read_text()[-3000:]
    finally:
        stop([node])
        mic.destroy_node()


def accepted_format(log, sample_rate: int, seen: int) -> bool:
    """omni_node has logged its format as S16LE mono `sample_rate` more than `seen` times."""
    return log.read_text().count(f"microphone format: S16LE 1 ch {sample_rate} Hz") > seen


def test_audio_after_a_96khz_audio_info_is_refused_until_16khz(graph):
    mic, log = graph
    info_refused = mic.counter("audio_info_refused")
    mic.announce(96000)
    wait_until(lambda: mic.counter("audio_info_refused") > info_refused, 20,
               "the 96 kHz audio_info to be refused", [log])
    refused, added = mic.counter("audio_messages_refused"), mic.counter("buffer_samples_added")
    refused += mic.play(1.5, 96000)
    wait_until(lambda: mic.counter("audio_messages_refused") >= refused, 20,
               "96 kHz audio to be refused", [log])
    assert mic.counter("audio_messages_refused") == refused
    assert mic.counter("buffer_samples_added") == added, "no 96 kHz audio read as 16 kHz"
    status = mic.microphone_status()
    assert status.level in (b"\x01", 1) and "audio refused: unsupported audio sample_rate 96000 Hz" \
        in status.message, status
    text = log.read_text()
    assert "mic/audio_info refused: unsupported audio sample_rate 96000 Hz" in text
    assert "microphone audio refused: unsupported audio sample_rate 96000 Hz" in text

    seen = log.read_text().count("microphone format: S16LE 1 ch 16000 Hz")
    mic.announce(16000)
    wait_until(lambda: accepted_format(log, 16000, seen), 20, "the 16 kHz audio_info", [log])
    assert "audio is accepted again" in log.read_text()
    received = mic.counter("audio_messages_received")
    sent = mic.play(1.5, 16000)
    wait_until(lambda: mic.counter("audio_messages_received") >= received + sent, 20,
               "16 kHz audio", [log])
    wait_until(lambda: mic.counter("buffer_samples_added") >= added + (sent - 1) * 1600, 10,
               "the 16 kHz audio to reach the buffer", [log])
    assert mic.counter("audio_messages_refused") == refused, "16 kHz audio accepted again"


def test_stamps_jittered_by_half_a_chunk_give_no_overlap(graph):
    mic, log = graph
    seen = log.read_text().count("microphone format: S16LE 1 ch 16000 Hz")
    mic.announce(16000)
    wait_until(lambda: accepted_format(log, 16000, seen), 20, "the 16 kHz audio_info", [log])
    received, resets = mic.counter("audio_messages_received"), mic.counter("audio_resets")
    sent = mic.play(5.0, 16000, jitter=0.5, seed=1)
    wait_until(lambda: mic.counter("audio_messages_received") >= received + sent, 20,
               "the jittered audio", [log])
    time.sleep(0.5)   # a few more diagnostics
    assert mic.counter("buffer_samples_overlap") == 0
    assert mic.counter("audio_resets") <= resets + 1, "restarted only by the pause before it"
    assert OVERLAP_WARNING not in log.read_text()
