"""omni_node's /diagnostics per concern, over DDS: a camera whose encoding is refused makes the
camera status WARN (naming the refusal) while the microphone and model stay OK; a node whose clock
announces another window length stops with one line (exit 2)."""
from __future__ import annotations

import subprocess
import threading
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image

from graph import appender, isolated_ros_environment, spinning, start_node, stop, wait_until
from omni_ros.ros import audio_flavours, qos
from omni_ros.ros.conversions import ns_to_stamp
from omni_ros.ros.diagnostics import CONCERNS, values_of

pytestmark = pytest.mark.dds

RATE = 16000


class Sensors(Node):
    def __init__(self, context) -> None:
        super().__init__("sensors", context=context)
        self.camera = self.create_publisher(Image, "/camera/image_raw", qos.CAMERA)
        self.mic = self.create_publisher(audio_flavours.MIC_TYPE, "/mic/audio_stamped", qos.MIC_AUDIO)
        self.lock = threading.Lock()
        self.arrays: list = []
        self.create_subscription(DiagnosticArray, "/diagnostics", appender(self.lock, self.arrays),
                                 qos.OUTPUT)

    def feed(self, seconds: float, encoding: str) -> None:
        start = self.get_clock().now().nanoseconds
        for k in range(int(seconds * 50)):            # 20 ms mic chunks, a frame every 100 ms
            stamp = start + k * 20_000_000
            pcm = (0.01 * np.sin(np.arange(320) * 0.3) * 32767).astype(np.int16)
            self.mic.publish(audio_flavours.mic_message(ns_to_stamp(stamp), pcm, RATE, 1))
            if k % 5 == 0:
                image = Image(height=48, width=64, encoding=encoding, step=64 * 2,
                              data=bytes(48 * 64 * 2))
                image.header.stamp = ns_to_stamp(stamp)
                self.camera.publish(image)
            time.sleep(0.02)

    def statuses(self) -> dict:
        found = {}
        with self.lock:
            for array in self.arrays[-8:]:
                for status in array.status:
                    owner, _, concern = status.name.partition(": ")
                    if owner == "/omni_node":
                        found[concern] = status
        return found


def test_a_refused_camera_encoding_makes_the_camera_status_warn(tmp_path, tiny_checkpoint):
    env = isolated_ros_environment()
    logs = [tmp_path / "clock.log", tmp_path / "omni_node.log"]
    processes = [start_node("omni_ros.ros.clock_node", [], env, logs[0]),
                 start_node("omni_ros.ros.omni_node", ["-p", f"model_path:={tiny_checkpoint}",
                                                       "-p", "diagnostics_period_sec:=0.5"], env, logs[1])]
    context = rclpy.Context()
    rclpy.init(context=context)
    sensors = Sensors(context)
    try:
        with spinning(sensors, context):
            wait_until(lambda: sensors.camera.get_subscription_count() > 0, 120, "omni_node", logs)
            sensors.feed(3.0, "yuv422")
            time.sleep(0.6)
            statuses = sensors.statuses()
            with sensors.lock:
                values = values_of(sensors.arrays, "omni_node")
                # the mic's rate is per diagnostics period: the periods while it was fed
                mic_rates = [float(values_of(a, "omni_node").get("microphone_rate_hz", 0.0))
                             for a in sensors.arrays]
    finally:
        sensors.destroy_node()
        rclpy.shutdown(context=context)
        stop(processes)
    assert set(statuses) == set(CONCERNS)
    camera = statuses["camera"]
    assert camera.level in (b"\x01", 1) and "refused" in camera.message, camera
    assert statuses["microphone"].level in (b"\x00", 0), statuses["microphone"]
    assert int(values["frames_refused"]) >= 10 and max(mic_rates, default=0.0) > 20, mic_rates


def test_a_clock_with_another_window_length_stops_the_node_with_one_line(tmp_path, tiny_checkpoint):
    env = isolated_ros_environment()
    clock_log, node_log = tmp_path / "clock.log", tmp_path / "omni_node.log"
    clock = start_node("omni_ros.ros.clock_node", ["-p", "window_sec:=0.5"], env, clock_log)
    try:
        node = start_node("omni_ros.ros.omni_node", ["-p", f"model_path:={tiny_checkpoint}",
                                                     "-p", "window_sec:=1.0"], env, node_log)
        try:
            code = node.wait(120)
        except subprocess.TimeoutExpired:
            node.kill()
            raise
    finally:
        stop([clock])
    text = node_log.read_text()
    assert code == 2, text[-2000:]
    assert "start both with the same window_sec" in text and "Traceback" not in text
    assert text.count("cannot start") == 1
