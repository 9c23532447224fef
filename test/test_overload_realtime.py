"""UnitRunner against a clock thread in real time: units that run longer than a window leave the
tick queue bounded, the missed windows counted (skip / merge), and the runner back on the newest
window once units are fast again. Slow (about 1.5 s each, real sleeps)."""
import threading
import time

import pytest

from omni_ros.flow.ticks import TickQueue

from test_unit_runner import Scripted, make

pytestmark = pytest.mark.slow


class SlowSession(Scripted):
    """Units of the windows in `slow` take `delay` seconds."""

    def __init__(self, slow, delay, window_ns):
        super().__init__(window_ns=window_ns)
        self.slow, self.delay = set(slow), delay

    def run_unit(self, unit):
        if unit.window_index in self.slow:
            time.sleep(self.delay)
        return super().run_unit(unit)


@pytest.mark.parametrize("policy", ["skip", "merge"])
def test_overload_in_real_time_is_bounded_and_catches_up(policy):
    """A clock thread ticks every 50 ms; units 5..7 take 130 ms. The tick queue never grows, the
    missed windows are counted, and once units are fast the runner is back on the newest window."""
    window_ns = 50_000_000
    runner, buf = make(SlowSession(range(5, 8), 0.13, window_ns), window_ns=window_ns,
                     overload_policy=policy)
    ticks = TickQueue(maxsize=4)
    stop = threading.Event()
    issued = []

    def clock():
        k = 0
        while not stop.is_set() and k < 30:
            time.sleep(0.05)
            ticks.put(type("T", (), {"index": k, "epoch": 0})(), time.monotonic())
            issued.append(k)
            k += 1
    thread = threading.Thread(target=clock)
    thread.start()
    ran, max_waiting = [], 0
    while thread.is_alive() or len(ticks):
        max_waiting = max(max_waiting, len(ticks))
        taken = ticks.get_newest(timeout=0.2)
        if taken is None:
            continue
        report = runner.run_window(taken[0].index, 0)
        ran.append((report.window_index, issued[-1]))
    stop.set()
    thread.join()
    c = runner.counters
    assert max_waiting <= 4
    missed = 30 - len(ran)
    assert missed >= 3 and c.windows_skipped + c.windows_merged == missed
    if policy == "merge":
        assert c.windows_merged > 0
    else:
        assert c.windows_merged == 0
    # caught up: after the slow units every unit runs on the newest issued window (or one behind)
    late = [issued_k - k for k, issued_k in ran if k > 10]
    assert late and max(late) <= 1
