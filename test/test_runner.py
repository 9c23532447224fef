"""A node keeps spinning when one executor step raises (real rclpy, real intra-process DDS)."""
import threading
import time

import rclpy
from rclpy.context import Context
import pytest
from rclpy.experimental import EventsExecutor
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import String

from omni_ros.ros.runner import spin_resiliently

pytestmark = pytest.mark.dds


class Fragile(Node):
    """Raises in the callback of any message that reads "bad"; records the others."""

    def __init__(self, context):
        super().__init__("fragile", context=context)
        self.received = []
        self.errors = []
        self.create_subscription(String, "words", self.on_word, 10)
        self.publisher = self.create_publisher(String, "words", 10)

    def on_word(self, message):
        if message.data == "bad":
            raise ValueError("a message this node cannot handle")
        self.received.append(message.data)

    def on_executor_error(self, error):
        self.errors.append(error)


@pytest.mark.parametrize("make_executor", [SingleThreadedExecutor, EventsExecutor])
def test_a_failing_step_is_counted_and_spinning_goes_on(make_executor):
    context = Context()
    rclpy.init(context=context)
    node = Fragile(context)
    executor = make_executor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=spin_resiliently, args=(executor, node), daemon=True)
    thread.start()
    try:
        for word in ["first", "bad", "bad", "after"]:
            node.publisher.publish(String(data=word))
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while "after" not in node.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert node.received == ["first", "after"]
        assert len(node.errors) == 2 and all(isinstance(e, ValueError) for e in node.errors)
        assert thread.is_alive(), "the spin loop survived both failures"
    finally:
        rclpy.shutdown(context=context)
        thread.join(5)
        node.destroy_node()
    assert not thread.is_alive(), "shutting the context down ends the spin loop"


FREEZE_CHILD = """
import gc, sys
import rclpy
from rclpy.node import Node
from omni_ros.ros.runner import run_node

startup = [[i] for i in range(50000)]      # stands for the model: lives as long as the process

def factory():
    node = Node("freeze_probe")
    def probe():
        later = [[i] for i in range(10)]
        tracked = {id(o) for o in gc.get_objects()}
        print(gc.get_freeze_count(), id(startup[0]) in tracked, id(later[0]) in tracked,
              flush=True)
        rclpy.try_shutdown()
    node.create_timer(0.1, probe)
    return node

code = run_node(factory, sys.argv)
print(gc.get_freeze_count(), flush=True)   # handed back: exit frees them
sys.exit(code)
"""


def test_run_node_freezes_what_startup_made(ros_env):
    """Objects alive once the node is built are out of the collector's walk; newer ones are in;
    once the node is gone they are handed back, so exit frees them."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", FREEZE_CHILD], env=ros_env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    frozen, startup_tracked, later_tracked, after_exit = done.stdout.split()[:4]
    assert int(frozen) > 50000 and int(after_exit) == 0
    assert startup_tracked == "False" and later_tracked == "True"


BUSY_CHILD = """
import sys, time
from rclpy.node import Node
from omni_ros.ros.runner import run_node

calls = {"began": 0, "ended": 0}

def factory():
    node = Node("busy_probe")
    node.declare_parameter("executor", sys.argv[1])
    def busy():                     # the main thread is inside this callback most of the time
        calls["began"] += 1
        if calls["began"] == 1:
            print("spinning", flush=True)
        t = time.monotonic()
        while time.monotonic() - t < 0.05:
            pass
        calls["ended"] += 1
    node.create_timer(0.01, busy)
    return node

code = run_node(factory, sys.argv[:1])
print("callbacks", calls["began"], calls["ended"], flush=True)
sys.exit(code)
"""


@pytest.mark.parametrize("kind", ["events", "single"])
def test_ctrl_c_while_a_callback_runs_ends_spinning_after_it(ros_env, kind):
    """A SIGINT whose handler runs inside a callback (the main thread's next bytecode while it
    spins) lets that callback finish and ends spinning after it: exit 0, no callback cut short,
    and no executor report of a failed callback (the events executor logged a KeyboardInterrupt
    raised there as FATAL `Exception in 'timers' callback` with its stack)."""
    import signal
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", BUSY_CHILD, kind], env=ros_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert child.stdout.readline().strip() == "spinning"
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, out
    assert "Exception in" not in out and "Traceback" not in out and "KeyboardInterrupt" not in out, out
    began, ended = (int(n) for n in out.split("callbacks")[1].split()[:2])
    assert began == ended >= 3, out
