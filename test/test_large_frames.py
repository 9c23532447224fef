"""Large camera frames: the Fast DDS profile shipped for them delivers 1080p frames between real
processes, and omni_node's processes keep frame-sized buffers on glibc's heap."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from graph import isolated_ros_environment

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "config" / "fastdds_large_frames.xml"
ON_GLIBC = platform.libc_ver()[0] == "glibc"

MAPPED_BYTES = """
import ctypes, sys
from omni_ros.ros.runner import keep_frame_buffers_on_heap
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_frame_buffers_on_heap() if sys.argv[1] == "tuned" else False
before = libc.mallinfo2().hblkhd
frame = bytearray(1920 * 1080 * 3)       # one 1080p rgb8 frame
print(applied, libc.mallinfo2().hblkhd - before)
"""


def mapped_bytes_for_one_frame(mode, **env):
    out = subprocess.run([sys.executable, "-c", MAPPED_BYTES, mode], capture_output=True,
                         text=True, check=True, cwd=REPO, env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.unit
@pytest.mark.skipif(not ON_GLIBC, reason="glibc's allocator only")
def test_frame_buffers_come_from_the_heap_once_tuned():
    applied, mapped = mapped_bytes_for_one_frame("tuned")
    assert applied and mapped == 0
    applied, mapped = mapped_bytes_for_one_frame("default")   # glibc maps it by default
    assert not applied and mapped >= 1920 * 1080 * 3


@pytest.mark.unit
@pytest.mark.skipif(not ON_GLIBC, reason="glibc's allocator only")
def test_the_users_own_malloc_settings_win():
    applied, mapped = mapped_bytes_for_one_frame("tuned", MALLOC_MMAP_THRESHOLD_="131072")
    assert not applied and mapped >= 1920 * 1080 * 3


PUBLISHER = """
import sys, time, rclpy
from sensor_msgs.msg import Image
from omni_ros.ros import qos
rclpy.init()
node = rclpy.create_node("large_frame_camera")
publisher = node.create_publisher(Image, "camera/image_raw", qos.CAMERA)
deadline = time.monotonic() + 30
while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1.0)
frame = Image(height=1080, width=1920, encoding="rgb8", step=1920 * 3)
frame.data = bytes(1920 * 1080 * 3)
for i in range(int(sys.argv[1])):
    publisher.publish(frame)
    time.sleep(0.1)
time.sleep(1.0)
"""
SUBSCRIBER = """
import time, rclpy
from sensor_msgs.msg import Image
from omni_ros.ros import qos
rclpy.init()
node = rclpy.create_node("large_frame_listener")
sizes = []
node.create_subscription(Image, "camera/image_raw", lambda raw: sizes.append(len(raw)),
                         qos.CAMERA, raw=True)
print("ready", flush=True)
deadline = time.monotonic() + 40
while time.monotonic() < deadline and len(sizes) < FRAMES:
    rclpy.spin_once(node, timeout_sec=0.2)
print("received", len(sizes), min(sizes, default=0), flush=True)
"""


@pytest.mark.dds
def test_fastdds_profile_delivers_1080p_frames_between_processes():
    """Best-effort 6 MB frames, the sensor-data QoS omni_node subscribes with: with the profile
    in both processes every frame arrives whole (with Fast DDS's defaults most are lost)."""
    frames = 20
    env = {**isolated_ros_environment(), "FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)}
    listener = subprocess.Popen([sys.executable, "-c", SUBSCRIBER.replace("FRAMES", str(frames))],
                                env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        subprocess.run([sys.executable, "-c", PUBLISHER, str(frames)], env=env, cwd=REPO,
                       check=True, timeout=60)
        out = listener.communicate(timeout=60)[0].split()
    finally:
        listener.kill()
    received, smallest = int(out[1]), int(out[2])
    assert received >= frames - 1
    assert smallest > 1920 * 1080 * 3
