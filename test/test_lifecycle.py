"""omni_node as a managed node, driven from another process through the standard lifecycle
services (lifecycle_msgs): nothing is published while inactive, cleanup hands the model's
memory back, a configure that cannot load the model is reported as a failure and the node waits."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import rclpy
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.node import Node

from graph import appender, isolated_ros_environment, spinning, start_node, stop, wait_until
from omni_ros.msg import DuplexState
from omni_ros.ros import qos

pytestmark = pytest.mark.dds


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Manager(Node):
    """What `ros2 lifecycle set` does: calls /omni_node/change_state and /omni_node/get_state."""

    def __init__(self, context) -> None:
        super().__init__("lifecycle_manager", context=context)
        self.change = self.create_client(ChangeState, "/omni_node/change_state")
        self.get = self.create_client(GetState, "/omni_node/get_state")
        self.lock = threading.Lock()
        self.states: list = []
        self.create_subscription(DuplexState, "/omni/state", appender(self.lock, self.states), qos.OUTPUT)

    def call(self, client, request, timeout=120.0, resend_after=None):
        """The service's answer. `resend_after` (s), for a request that may be sent twice
        (get_state): a request sent just as the client and server discover each other can be
        lost over DDS, so it goes again when no answer came in that time."""
        future = client.call_async(request)
        sent = start = time.monotonic()
        while not future.done() and time.monotonic() < start + timeout:
            if resend_after is not None and time.monotonic() - sent > resend_after:
                client.remove_pending_request(future)
                future, sent = client.call_async(request), time.monotonic()
            time.sleep(0.02)
        assert future.done(), f"{client.srv_name}: no answer in {timeout} s"
        return future.result()

    def transition(self, transition_id: int) -> bool:
        return bool(self.call(self.change, ChangeState.Request(
            transition=Transition(id=transition_id))).success)

    def state(self) -> int:
        return int(self.call(self.get, GetState.Request(), resend_after=10.0).current_state.id)

    def count(self) -> int:
        with self.lock:
            return len(self.states)


@pytest.fixture
def graph(tmp_path, tiny_checkpoint):
    env = isolated_ros_environment()
    processes, logs = [], []

    def start(*params: str):
        log = tmp_path / f"omni_node_{len(processes)}.log"
        args = ["-p", "autostart:=false", "-p", "window_sec:=0.5"]
        for p in params:
            args += ["-p", p]
        processes.append(start_node("omni_ros.ros.omni_node", args, env, log))
        logs.append(log)
        return processes[-1], log

    clock_log = tmp_path / "clock.log"
    processes.append(start_node("omni_ros.ros.clock_node", ["-p", "window_sec:=0.5"], env, clock_log))
    context = rclpy.Context()
    rclpy.init(context=context)
    manager = Manager(context)
    try:
        with spinning(manager, context):
            yield start, manager, logs
    finally:
        manager.destroy_node()
        rclpy.shutdown(context=context)
        codes = stop(processes)
        assert all(code == 0 for code in codes), (codes, [p.read_text()[-2000:] for p in logs])


def test_lifecycle_transitions_from_another_process(graph, tiny_checkpoint):
    start, manager, logs = graph
    node, log = start(f"model_path:={tiny_checkpoint}")
    wait_until(lambda: manager.get.service_is_ready(), 60, "the lifecycle services", [log])
    assert manager.state() == State.PRIMARY_STATE_UNCONFIGURED
    bare = rss_mb(node.pid)

    assert manager.transition(Transition.TRANSITION_CONFIGURE)
    assert manager.state() == State.PRIMARY_STATE_INACTIVE
    loaded = rss_mb(node.pid)
    time.sleep(1.5)                                  # three windows: inactive, nothing comes out
    assert manager.count() == 0

    assert manager.transition(Transition.TRANSITION_ACTIVATE)
    wait_until(lambda: manager.count() >= 3, 30, "states while active", [log])

    assert manager.transition(Transition.TRANSITION_DEACTIVATE)
    time.sleep(0.6)                                   # a state in flight may still land
    before = manager.count()
    time.sleep(1.5)
    assert manager.count() == before, "states published while inactive"

    assert manager.transition(Transition.TRANSITION_CLEANUP)
    assert manager.state() == State.PRIMARY_STATE_UNCONFIGURED
    freed = rss_mb(node.pid)
    # cleanup hands back at least the weights' bytes (the libraries configure imported stay)
    weights_mb = sum(f.stat().st_size for f in Path(tiny_checkpoint).glob("*.safetensors")) / 2**20
    assert loaded - freed >= weights_mb, (bare, loaded, freed, weights_mb)

    # and it can be configured and activated again
    assert manager.transition(Transition.TRANSITION_CONFIGURE)
    assert manager.transition(Transition.TRANSITION_ACTIVATE)
    count = manager.count()
    wait_until(lambda: manager.count() >= count + 2, 30, "states after a second activation", [log])
    assert "Traceback" not in log.read_text()


def test_a_failing_configure_is_reported_and_the_node_waits(graph, tmp_path):
    start, manager, logs = graph
    empty = tmp_path / "not_a_checkpoint"
    empty.mkdir()
    node, log = start(f"model_path:={empty}")
    wait_until(lambda: manager.get.service_is_ready(), 60, "the lifecycle services", [log])
    assert manager.transition(Transition.TRANSITION_CONFIGURE) is False
    assert manager.state() == State.PRIMARY_STATE_UNCONFIGURED
    assert node.poll() is None                      # still running, waiting for a good configure
    text = log.read_text()
    assert "configure failed:" in text and str(empty) in text and "Traceback" not in text
