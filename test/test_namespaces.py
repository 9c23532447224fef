"""Two complete omni_ros graphs on one machine, under /r1 and /r2 (omni_ros_bringup --namespace),
as separate processes over DDS: what is published to /r1 reaches only r1's omni_node, and each
namespace gets its own states."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image

from graph import REPO, isolated_ros_environment, spinning, wait_until
from omni_ros.msg import DuplexState, FlowTick
from omni_ros.ros import qos
from omni_ros.ros.conversions import rgb_to_image
from omni_ros.ros.diagnostics import CONCERNS, values_of

pytestmark = pytest.mark.dds

ROBOTS = ("r1", "r2")
MIC_RATE = 16000


class Observer(Node):
    """Feeds r1's camera and microphone; records states, ticks and diagnostics per namespace."""

    def __init__(self, context) -> None:
        super().__init__("namespace_observer", context=context)
        self.lock = threading.Lock()
        self.states = {r: [] for r in ROBOTS}
        self.ticks = {r: [] for r in ROBOTS}
        self.diagnostics = {r: {} for r in ROBOTS}
        self.statuses = {r: set() for r in ROBOTS}     # (name, hardware_id) of the newest array
        self.unattributed = 0
        for robot in ROBOTS:
            self.create_subscription(DuplexState, f"/{robot}/omni/state",
                                     self._append(self.states[robot]), qos.OUTPUT)
            self.create_subscription(FlowTick, f"/{robot}/omni_flow/tick",
                                     self._append(self.ticks[robot]), qos.TICK)
        self.create_subscription(DiagnosticArray, "/diagnostics", self.on_diagnostics, qos.OUTPUT)
        self.camera = self.create_publisher(Image, "/r1/camera/image_raw", qos.CAMERA)
        self.mic = self.create_publisher(AudioDataStamped, "/r1/mic/audio_stamped", qos.MIC_AUDIO)
        self.mic_info = self.create_publisher(AudioInfo, "/r1/mic/audio_info", qos.AUDIO_INFO)
        self.mic_info.publish(AudioInfo(channels=1, sample_rate=MIC_RATE, sample_format="S16LE",
                                        bitrate=MIC_RATE * 16, coding_format="wave"))

    def _append(self, into):
        def callback(message):
            with self.lock:
                into.append(message)
        return callback

    def namespace_of(self, gid) -> str | None:
        """The namespace of the node whose /diagnostics publisher has this gid."""
        data = list(gid["data"]) if isinstance(gid, dict) else list(gid)
        for info in self.get_publishers_info_by_topic("/diagnostics"):
            endpoint = list(info.endpoint_gid)
            if endpoint[:len(data)] == data[:len(endpoint)]:
                return info.node_namespace.strip("/")
        return None

    def on_diagnostics(self, message, info) -> None:
        robot = self.namespace_of(info["publisher_gid"])
        values = values_of(message, f"/{robot}/omni_node")
        with self.lock:
            if robot in self.diagnostics:
                self.diagnostics[robot] = values
                self.statuses[robot] = {(status.name, status.hardware_id) for status in message.status}
            else:
                self.unattributed += 1

    def feed(self, seconds: float, fps: float = 5.0, chunk_ms: int = 20) -> None:
        chunk = MIC_RATE * chunk_ms // 1000
        frame = np.zeros((48, 64, 3), dtype=np.uint8)
        start = time.monotonic()
        chunks = frames = 0
        while time.monotonic() - start < seconds:
            elapsed = time.monotonic() - start
            while chunks * chunk_ms / 1000.0 <= elapsed:
                message = AudioDataStamped()
                message.header.stamp = self.get_clock().now().to_msg()
                message.audio.data = np.zeros(chunk, dtype="<i2").tobytes()
                self.mic.publish(message)
                chunks += 1
            if frames / fps <= elapsed:
                self.camera.publish(rgb_to_image(frame, "rgb8",
                                                 self.get_clock().now().nanoseconds, "camera"))
                frames += 1
            time.sleep(0.005)


@pytest.fixture
def two_graphs(tiny_checkpoint, tmp_path):
    env = isolated_ros_environment()
    processes, logs = [], []
    for robot in ROBOTS:
        log_path = tmp_path / f"{robot}.log"
        logs.append(log_path)
        with open(log_path, "w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "omni_ros.tools.bringup", "--model-path",
                 str(tiny_checkpoint), "--namespace", robot, "--window-sec", "0.5",
                 "--param", "diagnostics_period_sec:=0.5", "--log-level", "warn"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                start_new_session=True))   # its own process group: nothing outlives the test
    try:
        yield logs
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                pass
            _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the process group this test started (the bring-up's nodes)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def test_two_namespaced_graphs_do_not_cross_talk(two_graphs):
    logs = two_graphs
    context = rclpy.Context()
    rclpy.init(context=context)
    observer = Observer(context)
    try:
        with spinning(observer, context):
            wait_until(lambda: observer.camera.get_subscription_count() == 1
                       and observer.mic.get_subscription_count() == 1
                       and all(len(observer.states[r]) >= 1 for r in ROBOTS), 120,
                       "both graphs up (one subscriber on /r1's camera and microphone)", logs)
            observer.feed(seconds=3.0)
            time.sleep(1.2)   # one more diagnostics period from each node
            with observer.lock:
                states = {r: [int(s.window_index) for s in observer.states[r]] for r in ROBOTS}
                diagnostics = {r: dict(observer.diagnostics[r]) for r in ROBOTS}
                statuses = {r: set(observer.statuses[r]) for r in ROBOTS}
                ticks = {r: len(observer.ticks[r]) for r in ROBOTS}
                unattributed = observer.unattributed
    finally:
        observer.destroy_node()
        rclpy.shutdown(context=context)

    for robot in ROBOTS:
        assert len(states[robot]) >= 6, f"{robot}: only {len(states[robot])} states"
        assert states[robot] == sorted(set(states[robot])), f"{robot}: one state per window"
        assert ticks[robot] >= 6, f"{robot}: its clock ticks on /{robot}/omni_flow/tick"
        assert diagnostics[robot], f"{robot}: no /diagnostics attributed to /{robot}/omni_node"
        # one status per concern, named after the robot's node, its namespace as hardware_id
        assert statuses[robot] == {(f"/{robot}/omni_node: {c}", f"/{robot}") for c in CONCERNS}
    assert unattributed == 0
    r1, r2 = diagnostics["r1"], diagnostics["r2"]
    assert int(r1["frames_received"]) >= 8 and int(r1["audio_messages_received"]) >= 80
    assert int(r2["frames_received"]) == 0 and int(r2["audio_messages_received"]) == 0, \
        "r2's omni_node received what was published to /r1"
