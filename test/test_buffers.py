"""WindowBuffer: newest frame per window, audio placed by time, late/future/stale accounting."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from omni_ros.flow.buffers import WindowBuffer

pytestmark = pytest.mark.unit

W = 1_000_000_000
SR = 16000
NS_PER_SAMPLE = W // SR   # 62500 ns


def ramp(n, start=0):
    return (np.arange(start, start + n) % 1000).astype(np.float32) / 1000.0


def test_newest_frame_kept_regardless_of_arrival_order():
    buf = WindowBuffer(W)
    buf.add_frame(2 * W + 300, "b")
    buf.add_frame(2 * W + 100, "a")          # older, arrives later
    buf.add_frame(2 * W + 500, "c")
    image, stamp, audio, coverage = buf.take_window(2)
    assert (image, stamp) == ("c", 2 * W + 500)
    assert audio.shape == (SR,) and audio.dtype == np.float32 and not audio.any()
    assert coverage == 0.0
    assert buf.counters.frames_superseded == 2
    assert buf.counters.frames_late == 0


def test_audio_placed_by_time_and_split_across_windows():
    buf = WindowBuffer(W)
    chunk = ramp(3200)                       # 200 ms starting 100 ms before window 4
    buf.add_audio(4 * W - 100_000_000, chunk)
    _, _, a3, c3 = buf.take_window(3)
    _, _, a4, c4 = buf.take_window(4)
    np.testing.assert_array_equal(a3[-1600:], chunk[:1600])
    np.testing.assert_array_equal(a4[:1600], chunk[1600:])
    assert not a4[1600:].any()
    assert c3 == pytest.approx(0.1) and c4 == pytest.approx(0.1)


def test_exact_window_samples_from_20ms_chunks():
    buf = WindowBuffer(W)
    for i in range(100):                    # 2 s starting at window 7
        buf.add_audio(7 * W + i * 20_000_000, ramp(320, i * 320))
    _, _, a7, c7 = buf.take_window(7)
    _, _, a8, c8 = buf.take_window(8)
    np.testing.assert_array_equal(a7, ramp(16000))
    np.testing.assert_array_equal(a8, ramp(16000, 16000))
    assert c7 == 1.0 and c8 == 1.0


def test_overlapping_audio_first_write_wins():
    buf = WindowBuffer(W)
    buf.add_audio(W, np.ones(320, np.float32))
    stored = buf.add_audio(W + 10 * NS_PER_SAMPLE, np.full(320, 2.0, np.float32))
    assert stored == 10
    _, _, audio, coverage = buf.take_window(1)
    assert (audio[:320] == 1.0).all() and (audio[320:330] == 2.0).all()
    assert buf.counters.samples_overlap == 310
    assert coverage == pytest.approx(330 / SR)


def test_late_and_future_audio_counted():
    buf = WindowBuffer(W, max_future_windows=2)
    buf.take_window(10)
    buf.add_audio(10 * W + 5, np.ones(100, np.float32))            # late
    buf.add_audio(13 * W, np.ones(100, np.float32))                # 10 + 3 > 10 + 2: future
    # straddles: 50 late samples, 100 stored in window 11
    buf.add_audio(11 * W - 50 * NS_PER_SAMPLE, np.ones(150, np.float32))
    c = buf.counters
    assert (c.samples_late, c.samples_future) == (150, 100)
    assert buf.take_window(11)[3] == pytest.approx(100 / SR)


def test_anything_accepted_before_first_take_then_stale_discarded():
    buf = WindowBuffer(W, max_future_windows=3)
    for k in range(100, 110):
        buf.add_frame(k * W, f"f{k}")
        buf.add_audio(k * W, np.ones(160, np.float32))
    assert len(buf.open_windows()) == 4                  # bounded even before the first take
    image, _, _, _ = buf.take_window(108)
    assert image == "f108"
    c = buf.counters
    # windows 100..105 evicted while filling, 106..107 discarded by the take
    assert c.windows_stale == 8 and c.frames_stale == 8 and c.samples_stale == 8 * 160
    assert buf.open_windows() == (109,)


def test_clear_counts_what_it_discards():
    buf = WindowBuffer(W)
    buf.take_window(0)
    buf.add_frame(W + 1, "x")
    buf.add_audio(W, np.ones(500, np.float32))
    buf.clear()
    assert buf.counters.frames_cleared == 1 and buf.counters.samples_cleared == 500
    assert buf.newest_taken is None
    assert buf.add_frame(0, "old again") is True        # a new epoch accepts anything


def test_huge_chunk_is_bounded():
    buf = WindowBuffer(W, max_future_windows=3)
    buf.add_audio(0, np.ones(SR * 60, np.float32))   # one minute in a single chunk
    assert len(buf.open_windows()) == 4
    assert buf.counters.samples_stale == SR * 56


def test_window_must_be_whole_samples():
    with pytest.raises(ValueError):
        WindowBuffer(1_000_000_001)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3 * SR, 8 * SR), st.integers(0, 3000),
                          st.one_of(st.none(), st.integers(-1, 8))), max_size=30))
def test_every_sample_accounted_for(steps):
    """added = taken + still held + overlap + late + future + stale, whatever the order."""
    buf = WindowBuffer(W, max_future_windows=2)
    taken = 0
    for start, n, take in steps:
        buf.add_audio(start * NS_PER_SAMPLE, np.ones(n, np.float32))
        if take is not None:
            taken += round(buf.take_window(take)[3] * SR)
        assert len(buf.open_windows()) <= 3
    c = buf.counters
    held = sum(s.samples for s in buf._slots.values())
    assert c.samples_added == taken + held + c.samples_overlap + c.samples_late \
        + c.samples_future + c.samples_stale
