"""The recorder's timeline PNG, drawn from recorded messages (no DDS needed)."""
from types import SimpleNamespace

import pytest

from omni_ros.msg import DuplexState, OmniText, ProactiveAlert
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


def _run_log(base=1_795_610_586, window_ns=500_000_000):
    states = []
    for k, state in enumerate([0, 1, 1, 2, 0, 1, 1, 0]):
        s = DuplexState(window_index=base + k, state=state, compute_ms=120.0)
        s.proactive = k in (1, 2)
        states.append(s)
    return SimpleNamespace(
        window_ns=window_ns, states=states,
        frame_windows={base + k: 5 for k in range(8)}, mic_energy={base + 3: [0.9, 25]},
        speech_windows={base + 1: 12000, base + 2: 12000, base + 5: 12000},
        speech_info=None,
        texts=[OmniText(window_index=base + 1, text=" careful wet floor"),
               OmniText(window_index=base + 5, text=" hello there", end_of_turn=True)],
        alerts=[ProactiveAlert(window_index=base + 3, text="careful wet floor")])


def test_timeline_names_every_row_and_shows_words_and_alerts_against_seconds():
    import matplotlib.pyplot as plt
    from omni_ros.tools.timeline_png import build_timeline_figure

    fig = build_timeline_figure(_run_log())
    try:
        fig.canvas.draw()
        legend = " | ".join(text.get_text() for ax in fig.axes if ax.get_legend()
                            for text in ax.get_legend().get_texts())
        for row in ("mic", "camera", "listen", "speak", "interrupted", "proactive", "speech out",
                    "alert", "words said", "compute"):
            assert row in legend, f"{row!r} not in the legend: {legend}"
        drawn = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert "careful wet floor" in drawn and "hello there" in drawn, drawn
        assert any(t.startswith("ALERT") and "careful wet floor" in t for t in drawn), drawn
        words, rows, compute = fig.axes[:3]
        # x: seconds from the start of the first window (8 windows of 0.5 s), no 10-digit offset
        assert "seconds from the start" in compute.get_xlabel()
        assert compute.get_xlim() == (0.0, 4.0)
        assert compute.xaxis.get_offset_text().get_text() == ""
        ticks = [float(t.get_text().replace("\u2212", "-")) for t in compute.get_xticklabels()
                 if t.get_text()]
        assert ticks and max(ticks) <= 4.0
        # each text sits at its window's centre: window base+5 -> 2.75 s
        hello = next(t for t in words.texts if t.get_text() == "hello there")
        assert hello.get_position()[0] == pytest.approx(2.75)
    finally:
        plt.close(fig)
