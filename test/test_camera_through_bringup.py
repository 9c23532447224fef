"""Large frames out of the box: a 640x480 bgr8 camera at 15 fps, in a process of its own given the
large-frame profile as the README says, reaches omni_node started by omni_ros_bringup (which gives
its nodes the profile by default): at least 95 % of the frames arrive."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from graph import REPO, appender, isolated_ros_environment, spinning, wait_until
from omni_ros.ros import qos
from omni_ros.ros.diagnostics import values_of
from omni_ros.tools.processes import graph_environment

pytestmark = pytest.mark.dds

FRAMES, FPS = 120, 15.0
CAMERA = f"""
import time, numpy as np, rclpy
from sensor_msgs.msg import Image
from omni_ros.ros import qos
rclpy.init()
node = rclpy.create_node("camera_driver")
publisher = node.create_publisher(Image, "/camera/image_raw", qos.CAMERA)
deadline = time.monotonic() + 60
while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.1)
time.sleep(1.0)
pixels = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8).tobytes()
start = time.monotonic()
for k in range({FRAMES}):
    image = Image(height=480, width=640, encoding="bgr8", step=640 * 3, data=pixels)
    image.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(image)
    time.sleep(max(0.0, start + (k + 1) / {FPS} - time.monotonic()))
print("published", {FRAMES}, flush=True)
time.sleep(1.5)
"""


class Diagnostics(Node):
    def __init__(self, context) -> None:
        super().__init__("diagnostics_reader", context=context)
        self.lock = threading.Lock()
        self.arrays: list = []
        self.create_subscription(DiagnosticArray, "/diagnostics", appender(self.lock, self.arrays),
                                 qos.OUTPUT)

    def frames(self) -> int:
        with self.lock:
            return int(values_of(self.arrays[-4:], "omni_node").get("frames_received", 0))


def test_a_640x480_15fps_camera_delivers_at_least_95_percent(tmp_path, tiny_checkpoint):
    env = isolated_ros_environment()
    log = tmp_path / "bringup.log"
    bringup = subprocess.Popen([sys.executable, "-m", "omni_ros.tools.bringup", "--model-path",
                                str(tiny_checkpoint), "--param", "diagnostics_period_sec:=0.5"],
                               env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context)
    reader = Diagnostics(context)
    try:
        with spinning(reader, context):
            wait_until(lambda: "ready:" in log.read_text(), 120, "omni_node ready", [log])
            camera = subprocess.run([sys.executable, "-c", CAMERA], env=graph_environment(env),
                                    cwd=REPO, capture_output=True, text=True, timeout=120)
            assert camera.returncode == 0 and "published" in camera.stdout, camera.stderr[-2000:]
            time.sleep(1.0)
            received = reader.frames()
    finally:
        reader.destroy_node()
        rclpy.shutdown(context=context)
        bringup.send_signal(2)
        code = bringup.wait(30)
    assert received >= 0.95 * FRAMES, f"{received} of {FRAMES} frames arrived"
    assert code == 0 and "Traceback" not in log.read_text()
