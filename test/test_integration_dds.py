"""omni_flow_clock and omni_node as separate processes over real DDS, driven by a test client
that publishes camera frames and microphone audio like a robot's drivers would."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import numpy as np
import pytest
from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from graph import REPO, appender, spinning, start_node, stop, wait_until
from omni_ros.msg import DuplexState, FlowTick, OmniText
from omni_ros.ros import qos
from omni_ros.ros.conversions import rgb_to_image
from omni_ros.ros.diagnostics import values_of

pytestmark = pytest.mark.dds

WINDOW_SEC = 0.5
OUTPUT_RATE = 24000
# the waveform stage's final flush at a turn's end: 3 lookahead codes + 8 overlap frames, 480 samples each
TURN_FLUSH_SAMPLES = (3 * 2 + 8) * 480
MIC_RATE, MIC_CHANNELS = 48000, 2


class RobotClient(Node):
    """Publishes what a camera and a microphone driver would; records what omni_node says."""

    def __init__(self, camera_topic: str, namespace: str = "") -> None:
        super().__init__("robot_client", namespace=namespace)
        self.lock = threading.Lock()
        self.ticks, self.states, self.texts, self.speech, self.diagnostics = [], [], [], [], []
        self.speech_info = None
        self.camera = self.create_publisher(Image, camera_topic, qos.CAMERA)
        self.mic = self.create_publisher(AudioDataStamped, "mic/audio_stamped", qos.MIC_AUDIO)
        self.mic_info = self.create_publisher(AudioInfo, "mic/audio_info", qos.AUDIO_INFO)
        self.mic_info.publish(AudioInfo(channels=MIC_CHANNELS, sample_rate=MIC_RATE,
                                        sample_format="S16LE", bitrate=MIC_RATE * 32,
                                        coding_format="wave"))
        self.create_subscription(FlowTick, "omni_flow/tick", appender(self.lock, self.ticks), qos.TICK)
        self.create_subscription(DuplexState, "omni/state", appender(self.lock, self.states), qos.OUTPUT)
        self.create_subscription(OmniText, "omni/text", appender(self.lock, self.texts), qos.OUTPUT)
        self.create_subscription(AudioDataStamped, "speech/audio_stamped", appender(self.lock, self.speech),
                                 qos.SPEECH)
        self.create_subscription(DiagnosticArray, "/diagnostics", appender(self.lock, self.diagnostics),
                                 qos.OUTPUT)
        self.create_subscription(AudioInfo, "speech/audio_info", self._on_info, qos.AUDIO_INFO)

    def _on_info(self, message):
        self.speech_info = message

    def feed(self, seconds: float, fps: float = 5.0, chunk_ms: int = 20) -> None:
        """Publish frames and stereo 48 kHz audio (a quiet tone) in real time."""
        chunk = MIC_RATE * chunk_ms // 1000
        t = np.arange(chunk) / MIC_RATE
        frame = np.zeros((48, 64, 3), dtype=np.uint8)
        start = time.monotonic()
        sent_chunks = sent_frames = 0
        while time.monotonic() - start < seconds:
            elapsed = time.monotonic() - start
            while sent_chunks * chunk_ms / 1000.0 <= elapsed:
                tone = 0.05 * np.sin(2 * np.pi * 440 * (t + sent_chunks * chunk_ms / 1000.0))
                stereo = np.repeat((tone * 32767).astype("<i2")[:, None], 2, axis=1)
                message = AudioDataStamped()
                message.header.stamp = self.get_clock().now().to_msg()
                message.audio.data = stereo.tobytes()
                self.mic.publish(message)
                sent_chunks += 1
            if sent_frames / fps <= elapsed:
                frame[:] = (sent_frames * 10) % 256
                self.camera.publish(rgb_to_image(frame, "bgr8",
                                                 self.get_clock().now().nanoseconds, "camera"))
                sent_frames += 1
            time.sleep(0.004)


def run_duplex_graph(ros_env, checkpoint, logs, node_args=(), camera_topic="camera/image_raw",
                     feed_seconds=7.0):
    """Clock + omni_node (speaking readily, 100 ms speech chunks) fed camera and mic for
    `feed_seconds`; returns (client, exit codes, log files)."""
    window = ["-p", f"window_sec:={WINDOW_SEC}"]
    clock = start_node("omni_ros.ros.clock_node", window, ros_env, logs / "clock.log")
    node = start_node("omni_ros.ros.omni_node", [
        *window, "-p", f"model_path:={checkpoint}", "-p", "force_listen_count:=0",
        "-p", "listen_prob_scale:=0.02", "-p", "speech_chunk_ms:=100", "-p", "seed:=1",
        "-p", "diagnostics_period_sec:=0.5", *node_args], ros_env, logs / "omni_node.log")
    client = RobotClient(camera_topic)
    log_files = [logs / "clock.log", logs / "omni_node.log"]
    try:
        with spinning(client):
            wait_until(lambda: client.mic.get_subscription_count() > 0
                       and client.camera.get_subscription_count() > 0, 90,
                       "omni_node to subscribe", log_files)
            client.feed(seconds=feed_seconds)
            time.sleep(1.5)   # let the last speech play out
        codes = stop([node, clock])
    finally:
        stop([node, clock])
        client.destroy_node()
    return client, codes, log_files


@pytest.fixture(scope="module")
def duplex_run(ros_env, tiny_checkpoint, tmp_path_factory):
    """Clock + omni_node (camera remapped) fed for a few seconds; what came out."""
    return run_duplex_graph(ros_env, tiny_checkpoint, tmp_path_factory.mktemp("logs"),
                            ["-r", "camera/image_raw:=front_camera/image"], "front_camera/image")


def check_one_state_per_tick(run, minimum: int) -> None:
    """At least `minimum` states, one per tick while the node ran, in window order; clean exits."""
    client, codes, logs = run
    states = [int(s.window_index) for s in client.states]
    assert len(states) >= minimum, f"only {len(states)} states: {logs[1].read_text()[-2000:]}"
    assert states == sorted(set(states)), "states must be one per window, in window order"
    ticked = {int(t.index) for t in client.ticks if states[0] <= t.index <= states[-1]}
    assert ticked == set(states), "every tick while the node ran must give exactly one state"
    assert codes == [0, 0], "both nodes exit cleanly on SIGINT"


def check_speech_is_one_window_per_speaking_unit(client) -> None:
    """Speech chunks of speech_chunk_ms=100 adding up to one window per finished speaking unit (the
    unit that ends a turn also carries the waveform stage's final flush), none for listening units;
    the speech is the waveform stage's, not silence."""
    samples = defaultdict(int)
    audio = defaultdict(list)
    chunk_sizes = set()
    for message in client.speech:
        count = len(message.audio.data) // 2
        samples[message.header.frame_id] += count
        audio[message.header.frame_id].append(np.frombuffer(bytes(message.audio.data), "<i2"))
        chunk_sizes.add(count)
    speaking = [s for s in client.states if s.state == DuplexState.SPEAKING]
    assert speaking, "with listen_prob_scale 0.02 the model must speak"
    # Speech of the last windows may still be queued when recording stopped: a unit that ends a turn
    # plays 0.28 s longer than its window, so speech can run up to a few windows behind.
    last = max(int(s.window_index) for s in client.states)
    finished = [s for s in speaking if int(s.window_index) <= last - 4] or speaking[:1]
    for state in finished:
        window, got = int(WINDOW_SEC * OUTPUT_RATE), samples[f"window_{state.window_index}"]
        if state.end_of_turn:
            assert window <= got <= window + TURN_FLUSH_SAMPLES, state.window_index
        else:
            assert got == window, state.window_index
        pcm = np.concatenate(audio[f"window_{state.window_index}"]).astype(np.float64) / 32768.0
        assert np.sqrt(np.mean(pcm ** 2)) > 1e-3, f"window {state.window_index}: speech is silent"
    assert max(chunk_sizes) == OUTPUT_RATE // 10, "chunks of speech_chunk_ms=100"
    listening = [int(s.window_index) for s in client.states if s.state == DuplexState.LISTENING]
    assert all(samples[f"window_{w}"] == 0 for w in listening)


def test_each_tick_gives_one_state_in_order(duplex_run):
    check_one_state_per_tick(duplex_run, minimum=8)


def test_speech_info_says_s16le_mono_24k(duplex_run):
    info = duplex_run[0].speech_info
    assert info is not None
    assert (info.sample_format, info.channels, info.sample_rate, info.coding_format) == \
        ("S16LE", 1, OUTPUT_RATE, "wave")


def test_speech_of_a_speaking_unit_adds_up_to_one_window(duplex_run):
    check_speech_is_one_window_per_speaking_unit(duplex_run[0])


def test_remapped_camera_and_resampled_mic_reach_the_model(duplex_run):
    client = duplex_run[0]
    values = values_of(client.diagnostics, "omni_node")
    assert int(values["frames_received"]) >= 20
    assert int(values["audio_messages_received"]) >= 300
    assert int(values["audio_messages_refused"]) == 0
    assert float(values["compute_ms_max"]) > 0.0


def test_missing_checkpoint_is_a_clear_startup_error(ros_env, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "omni_ros.ros.omni_node", "--ros-args", "-p",
         f"model_path:={tmp_path / 'nowhere'}"], env=ros_env, capture_output=True, text=True,
        timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "omni_ros_tiny_checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_launch_free_bringup_runs_the_graph_in_a_namespace(ros_env, tiny_checkpoint, tmp_path):
    log = open(tmp_path / "bringup.log", "w")
    bringup = subprocess.Popen(
        [sys.executable, "-m", "omni_ros.tools.bringup", "--model-path", str(tiny_checkpoint),
         "--namespace", "robot1", "--window-sec", "0.5"],
        env=ros_env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    observer = Node("observer")
    states = []
    observer.create_subscription(DuplexState, "/robot1/omni/state", states.append, qos.OUTPUT)
    reset = observer.create_client(Trigger, "/robot1/omni/reset")
    try:
        with spinning(observer):
            wait_until(lambda: len(states) >= 2, 90, "/robot1/omni/state", [tmp_path / "bringup.log"])
            assert reset.wait_for_service(timeout_sec=10)
            future = reset.call_async(Trigger.Request())
            wait_until(future.done, 20, "omni/reset to answer")
            assert future.result().success
            count = len(states)
            wait_until(lambda: len(states) >= count + 2, 20, "states after the reset")
        bringup.send_signal(signal.SIGINT)
        assert bringup.wait(30) == 0
    finally:
        if bringup.poll() is None:
            os.killpg(bringup.pid, signal.SIGKILL)   # the bring-up and the nodes it started
        observer.destroy_node()
