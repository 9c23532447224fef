"""The recorder's timeline PNG, drawn from recorded messages (no DDS needed)."""
from types import SimpleNamespace

import pytest

from omni_ros.msg import DuplexState, ProactiveAlert
from omni_ros.ros.conversions import header_stamp_ns
from omni_ros.tools.timeline_png import draw_timeline

pytestmark = pytest.mark.unit


def test_timeline_png_is_written(tmp_path):
    states = []
    for k, state in enumerate([0, 0, 1, 1, 2, 0, 1]):
        s = DuplexState(window_index=100 + k, state=state, compute_ms=200.0 + 300 * (k == 3))
        s.proactive = k == 2
        states.append(s)
    recorder = SimpleNamespace(
        window_ns=1_000_000_000, states=states,
        frame_windows={100 + k: 10 for k in range(7)}, mic_energy={103: [1.0, 50], 104: [0.8, 50]},
        speech_windows={103: 24000, 104: 4800, 107: 24000},
        speech_info=None, alerts=[ProactiveAlert(window_index=104)])
    path = draw_timeline(recorder, str(tmp_path / "timeline.png"))
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_header_stamp_read_from_serialized_image():
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image
    m = Image()
    m.header.stamp.sec, m.header.stamp.nanosec = 1234, 567
    assert header_stamp_ns(serialize_message(m)) == 1234 * 1_000_000_000 + 567
