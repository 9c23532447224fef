"""Window assignment, clock epochs and the clock node's tick schedule (omni_ros.flow.timeline)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from omni_ros.flow.buffers import WindowBuffer
from omni_ros.flow.timeline import (ClockWatcher, TickScheduler, Timeline, window_end,
                                    window_index, window_start)

pytestmark = pytest.mark.unit

W = 1_000_000_000


@pytest.mark.parametrize("k", [0, 1, 7, 123456789])
def test_window_boundaries(k):
    assert window_index(k * W - 1, W) == k - 1
    assert window_index(k * W, W) == k
    assert window_index(k * W + 1, W) == k
    assert window_index((k + 1) * W - 1, W) == k
    assert window_start(k, W) == k * W
    assert window_end(k, W) == (k + 1) * W


def test_zero_and_negative_stamps():
    assert window_index(0, W) == 0
    assert window_index(-1, W) == -1
    assert window_index(-W, W) == -1
    assert window_index(-W - 1, W) == -2
    timeline = Timeline(250_000_000)
    assert timeline.window_index(-1) == -1
    assert timeline.window_start(-1) == -250_000_000


def test_timeline_rejects_bad_window():
    with pytest.raises(ValueError):
        Timeline(0)


@given(st.integers(min_value=-10**18, max_value=10**18),
       st.integers(min_value=1, max_value=10**10))
def test_stamp_lies_in_its_window(stamp, window_ns):
    k = window_index(stamp, window_ns)
    assert window_start(k, window_ns) <= stamp < window_end(k, window_ns)


def test_late_and_early_stamps_in_window_buffer():
    buf = WindowBuffer(W, max_future_windows=3)
    buf.add_frame(5 * W + 10, "frame5")
    buf.add_frame(6 * W - 1, "frame5b")      # last nanosecond of window 5
    buf.add_frame(6 * W, "frame6")           # first nanosecond of window 6
    image, stamp, _, _ = buf.take_window(5)
    assert (image, stamp) == ("frame5b", 6 * W - 1)
    assert buf.add_frame(5 * W + 500, "late") is False        # window 5 is gone
    assert buf.add_frame(9 * W - 1, "ok") is True             # 5 + 3
    assert buf.add_frame(9 * W, "too early") is False         # 5 + 4
    c = buf.counters
    assert (c.frames_late, c.frames_future, c.frames_superseded) == (1, 1, 1)
    assert buf.take_window(6)[0] == "frame6"


def test_epoch_change_on_backward_jump():
    watcher = ClockWatcher(W, backward_tolerance_ns=10_000_000)
    assert watcher.observe(100 * W).epoch == 0
    jitter = watcher.observe(100 * W - 5_000_000)            # within tolerance: same epoch
    assert not jitter.new_epoch and jitter.epoch == 0
    assert watcher.latest_ns == 100 * W                       # never goes backwards
    jump = watcher.observe(3 * W)
    assert jump.new_epoch and jump.epoch == 1 and jump.backward_jump_ns == 97 * W
    assert watcher.observe(3 * W + 1).epoch == 1


def test_forward_leap_reported():
    watcher = ClockWatcher(W, max_forward_windows=3)
    watcher.observe(10 * W)
    assert watcher.observe(13 * W).forward_leap_windows == 0
    assert watcher.observe(30 * W + 5).forward_leap_windows == 17
    assert watcher.forward_leaps == 1


def test_scheduler_emits_each_window_end_once():
    sched = TickScheduler(W)
    assert sched.poll(10 * W + 300).ticks == []              # anchors; window 10 in progress
    assert sched.poll(10 * W + 900_000_000).ticks == []
    batch = sched.poll(11 * W + 2)
    assert [(t.index, t.start_ns, t.end_ns, t.epoch) for t in batch.ticks] == [(10, 10 * W, 11 * W, 0)]
    assert sched.poll(11 * W + 3).ticks == []
    assert sched.next_due_ns() == 12 * W


def test_scheduler_catches_up_small_delay_and_skips_big_leap():
    sched = TickScheduler(W, max_burst_windows=3)
    sched.poll(10 * W)
    batch = sched.poll(13 * W + 1)                            # late timer: 3 windows due
    assert [t.index for t in batch.ticks] == [10, 11, 12] and batch.windows_skipped == 0
    batch = sched.poll(100 * W + 1)                           # leap: only the newest
    assert [t.index for t in batch.ticks] == [99] and batch.windows_skipped == 86
    assert sched.counters.windows_skipped == 86


def test_scheduler_new_epoch_on_backward_jump():
    sched = TickScheduler(W)
    sched.poll(50 * W)
    sched.poll(51 * W)
    batch = sched.poll(2 * W + 10)
    assert batch.new_epoch and batch.ticks == [] and sched.epoch == 1
    batch = sched.poll(3 * W)
    assert [(t.index, t.epoch) for t in batch.ticks] == [(2, 1)]
    assert sched.counters.epochs_started == 1


def test_scheduler_ticks_bounded_over_random_clock():
    rng = np.random.default_rng(0)
    sched = TickScheduler(W, max_burst_windows=3)
    now = 0
    for _ in range(2000):
        now += int(rng.integers(-W // 50, 5 * W))
        batch = sched.poll(now)
        assert len(batch.ticks) <= 3
        indices = [t.index for t in batch.ticks]
        assert indices == sorted(indices)
