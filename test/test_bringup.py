"""omni_ros_bringup and what it stands on (omni_ros/tools/processes.py, run_node's signal handling
in omni_ros/ros/runner.py): --use-sim-time reaches both nodes, the large-frame Fast DDS profile
reaches every process unless the user chose a Fast DDS set-up, a Ctrl-C at a terminal ends the
whole graph with status 0 and no traceback (also when it comes while the nodes still start),
a signal during a node's shutdown is harmless, and a startup error names the node."""
from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from rcl_interfaces.srv import GetParameters
from rclpy.node import Node
from std_msgs.msg import String

from graph import REPO, isolated_ros_environment, spinning, wait_until
from omni_ros.ros.runner import resolved_topics
from omni_ros.tools.bringup import graph_commands, parse_args, split_parameters
from omni_ros.tools.processes import (LARGE_FRAME_PROFILE, PROFILES_VARIABLE, TRANSPORTS_VARIABLE,
                                      ProcessGroup)

pytestmark = pytest.mark.dds

BRINGUP = [sys.executable, "-m", "omni_ros.tools.bringup"]
# the node's parameters that keep a start short: no barge-in detectors to load
QUICK = ["--window-sec", "0.5", "--param", "barge_in:=false"]
READY = re.compile(rb"omni_node\]: ready")


def _without_fastdds_choice(env):
    return {k: v for k, v in env.items() if k not in (PROFILES_VARIABLE, TRANSPORTS_VARIABLE)}


def _children(pid: int):
    """The pids whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _environ(pid: int) -> dict:
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in items if b"=" in item)


# -- command lines ------------------------------------------------------------------------------
def test_use_sim_time_and_window_go_to_both_nodes_autostart_to_omni_node_only():
    args = parse_args(["--model-path", "m", "--use-sim-time", "--no-autostart",
                       "--param", "use_sim_time:=true", "--param", "temperature:=0.5"])
    assert args.use_sim_time and not args.autostart
    assert not parse_args(["--model-path", "m"]).use_sim_time
    assert parse_args(["--model-path", "m"]).autostart
    shared, own = split_parameters(["window_sec:=1.0", "temperature:=0.5", "use_sim_time:=true"])
    assert shared == ["-p", "window_sec:=1.0", "-p", "use_sim_time:=true"]
    assert own == ["-p", "temperature:=0.5"]
    clock, node = graph_commands("m", use_sim_time=True, autostart=False)
    assert "use_sim_time:=true" in clock and "use_sim_time:=true" in node
    assert "autostart:=false" in node and "autostart:=false" not in clock
    clock, node = graph_commands("m")
    assert not any("use_sim_time" in item or "autostart" in item for item in clock + node)


def test_every_process_gets_the_large_frame_profile_unless_a_fastdds_setup_is_chosen(tmp_path):
    show = [sys.executable, "-c", f"import os; print(os.environ.get({PROFILES_VARIABLE!r}))"]
    base = _without_fastdds_choice(os.environ)
    mine = tmp_path / "mine.xml"
    cases = [(base, LARGE_FRAME_PROFILE), ({**base, PROFILES_VARIABLE: str(mine)}, str(mine)),
             ({**base, TRANSPORTS_VARIABLE: "UDPv4"}, "None")]
    group, seen = ProcessGroup(), []
    for env, expected in cases:
        process = group.start(show, env=env, stdout=subprocess.PIPE, text=True)
        out = process.communicate(timeout=30)[0]
        seen.append(out.strip())
        assert seen[-1].endswith(expected), (env.get(TRANSPORTS_VARIABLE), out)
    assert Path(seen[0]).name == LARGE_FRAME_PROFILE and Path(seen[0]).is_file()


# -- run_node's signals and startup errors -------------------------------------------------------
PROBE = """
import sys, time
time.sleep(float(sys.argv[1]))             # stands for a node module's imports
from rclpy.node import Node
from omni_ros.ros.runner import StartupError, run_node

class Probe(Node):
    def __init__(self):
        super().__init__("probe")
        if sys.argv[2] == "fail":
            raise StartupError("no checkpoint here")
        if sys.argv[2] == "fail_later":
            self.create_timer(0.1, self.fail)
        self.announce = self.create_timer(0.05, self.spinning)

    def spinning(self):
        self.announce.cancel()
        print("spinning", flush=True)

    def fail(self):
        raise StartupError("configure failed")

    def close(self):                       # a shutdown that takes a while
        print("closing", flush=True)
        time.sleep(1.5)
        print("closed", flush=True)

sys.exit(run_node(Probe, sys.argv))
"""


def _probe(delay: float, mode: str, *ros_args: str, node: bool = False) -> subprocess.Popen:
    env = isolated_ros_environment()
    command = [sys.executable, "-c", PROBE, str(delay), mode, "--ros-args", *ros_args]
    return ProcessGroup().start(command, env=env, node=node, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _read_until(process: subprocess.Popen, word: str, timeout: float = 30.0) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while word not in seen and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
    assert word in seen, seen
    return seen


def test_a_signal_during_shutdown_does_not_break_it():
    probe = _probe(0.0, "run")
    _read_until(probe, "spinning")
    probe.send_signal(signal.SIGINT)
    _read_until(probe, "closing")
    probe.send_signal(signal.SIGINT)         # a second Ctrl-C while the node shuts down
    probe.send_signal(signal.SIGTERM)        # and a launcher's signal
    out = probe.communicate(timeout=30)[0]
    assert probe.returncode == 0, out
    assert "closed" in out and "Traceback" not in out, out


def test_a_node_process_takes_a_signal_that_came_during_its_imports_quietly():
    held = _probe(2.0, "run", node=True)
    plain = _probe(2.0, "run")               # the control: what a Ctrl-C during imports does
    time.sleep(0.5)
    started = time.monotonic()
    for process in (held, plain):
        process.send_signal(signal.SIGINT)
    held_out = held.communicate(timeout=30)[0]
    assert held.returncode == 0, held_out
    assert "Traceback" not in held_out and "spinning" not in held_out, held_out
    assert time.monotonic() - started < 15
    plain_out = plain.communicate(timeout=30)[0]
    assert plain.returncode != 0 and "KeyboardInterrupt" in plain_out, plain_out


@pytest.mark.parametrize("mode", ["fail", "fail_later"])
@pytest.mark.parametrize("remaps, name", [((), "probe"),
                                          (("-r", "__node:=renamed", "-r", "__ns:=/robotx"),
                                           "robotx.renamed")])
def test_a_startup_error_is_one_line_naming_the_node(mode, remaps, name):
    probe = _probe(0.0, mode, *remaps)
    out = probe.communicate(timeout=60)[0]
    assert probe.returncode == 2, out
    assert f"[{name}] cannot start: " in out and "Traceback" not in out, out


def test_resolved_topics_lists_inputs_and_outputs_as_resolved(ros_env):
    from rclpy.lifecycle import LifecycleNode

    node = Node("lister", namespace="/r1", cli_args=["--ros-args", "-r", "seen:=/elsewhere/seen"])
    managed = LifecycleNode("managed", namespace="/r2")
    try:
        assert resolved_topics(node) == "inputs none; outputs none"
        node.create_subscription(String, "seen", lambda _: None, 10)
        node.create_subscription(String, "/absolute/in", lambda _: None, 10)
        node.create_publisher(String, "said", 10)
        assert resolved_topics(node) == "inputs /elsewhere/seen, /absolute/in; outputs /r1/said"
        managed.create_lifecycle_publisher(String, "out", 10)
        assert resolved_topics(managed) == "inputs none; outputs /r2/out"
    finally:
        node.destroy_node()
        managed.destroy_node()


# -- the graph ----------------------------------------------------------------------------------
def _get_parameters(observer, node_name: str, names, timeout: float = 120.0):
    """The values of a node's parameters, asked again every few seconds: a node answers only
    once it spins (omni_node after loading its model), and a request sent before the service
    has matched the client is lost."""
    client = observer.create_client(GetParameters, f"{node_name}/get_parameters")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.wait_for_service(timeout_sec=1.0):
            future = client.call_async(GetParameters.Request(names=list(names)))
            answer_by = time.monotonic() + 5.0
            while not future.done() and time.monotonic() < answer_by:
                time.sleep(0.05)
            if future.done():
                return future.result().values
            client.remove_pending_request(future)
    raise AssertionError(f"{node_name} did not answer get_parameters in {timeout:.0f} s")


def test_bringup_use_sim_time_reaches_both_nodes_with_the_profile(ros_env, tiny_checkpoint,
                                                                  tmp_path):
    log_path = tmp_path / "bringup.log"
    with open(log_path, "w") as log:
        bringup = subprocess.Popen(
            [*BRINGUP, "--model-path", str(tiny_checkpoint), "--namespace", "simtime",
             "--use-sim-time", *QUICK],
            env=_without_fastdds_choice(ros_env), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            start_new_session=True)
    observer = Node("parameter_reader")
    try:
        with spinning(observer):
            for node_name in ("/simtime/omni_flow_clock", "/simtime/omni_node"):
                sim_time, window = _get_parameters(observer, node_name,
                                                   ["use_sim_time", "window_sec"])
                assert sim_time.bool_value is True, node_name
                assert window.double_value == 0.5, node_name
        children = _children(bringup.pid)
        assert len(children) == 2, (children, log_path.read_text()[-3000:])
        for child in children:
            assert _environ(child)[PROFILES_VARIABLE].endswith(LARGE_FRAME_PROFILE)
        # killed outright, the bring-up cannot stop its nodes: the parent-death signal does
        os.kill(bringup.pid, signal.SIGKILL)
        bringup.wait(10)
        wait_until(lambda: not any(_alive(child) for child in children), 30,
                   "the nodes to end with the bring-up")
    finally:
        observer.destroy_node()
        if bringup.poll() is None:
            os.killpg(bringup.pid, signal.SIGKILL)
            bringup.wait()


def _ctrl_c_under_a_terminal(args, env, ctrl_c_at, timeout=120.0):
    """Run bring-up as a terminal's foreground job; press Ctrl-C (the terminal sends SIGINT to
    the whole foreground process group) `ctrl_c_at` = ("start", s): s after the start, or
    ("ready", s): s after omni_node's ready line. Returns (exit status, output, seconds from
    Ctrl-C to exit)."""
    after, delay = ctrl_c_at
    master, slave = os.openpty()

    def own_terminal():   # session leader (start_new_session), this pty its controlling terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen([*BRINGUP, *args], env=env, cwd=REPO, stdin=slave, stdout=slave,
                               stderr=slave, start_new_session=True, preexec_fn=own_terminal)
    os.close(slave)
    output, pressed_at, ready_at = bytearray(), None, None
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            if ready_at is None and READY.search(output):
                ready_at = time.monotonic()
            since = {"start": started, "ready": ready_at}[after]
            if pressed_at is None and since is not None and time.monotonic() - since >= delay:
                os.write(master, b"\x03")
                pressed_at = time.monotonic()
            if select.select([master], [], [], 0.05)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:   # EIO: nothing holds the terminal any more
                    break
                if not chunk:
                    break
                output += chunk
        status = process.wait(30)
    finally:
        os.close(master)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = output.decode(errors="replace")
    assert pressed_at is not None, f"omni_node never got ready\n{text[-3000:]}"
    assert after == "start" or pressed_at > ready_at, "Ctrl-C on a running graph"
    return status, text, time.monotonic() - pressed_at


CTRL_C_RUNS = 20
# Half the presses on a running graph, 0.5-2.8 s after omni_node is ready: with units running,
# omni_node takes a while to stop, and a second SIGINT used to land in its shutdown (before the
# fix, 6 of 10 such runs printed a traceback). The other half while the nodes still import
# (their signals held), load the model or warm it up: also the short runs.
CTRL_C_MOMENTS = ([("ready", 0.5 + 0.25 * i) for i in range(10)] +
                  [("start", s) for s in (0.3, 0.8, 1.5, 2.2, 3.0, 3.8, 4.6, 5.5, 6.5, 7.5)])


def test_twenty_ctrl_c_end_the_graph_with_status_0_and_no_traceback(tiny_checkpoint):
    assert len(CTRL_C_MOMENTS) == CTRL_C_RUNS
    env = {**isolated_ros_environment(), "RCUTILS_COLORIZED_OUTPUT": "0"}
    args = ["--model-path", str(tiny_checkpoint), "--namespace", "ctrl_c", *QUICK]
    started, stop_times = time.monotonic(), []
    for run, moment in enumerate(CTRL_C_MOMENTS):
        status, text, stop_sec = _ctrl_c_under_a_terminal(args, env, moment)
        assert status == 0, f"run {run} (Ctrl-C at {moment}): status {status}\n{text[-4000:]}"
        assert "Traceback" not in text and "Exception in" not in text, \
            f"run {run} (Ctrl-C at {moment})\n{text[-6000:]}"
        stop_times.append(stop_sec)
    print(f"{CTRL_C_RUNS} Ctrl-C runs in {time.monotonic() - started:.1f} s; from Ctrl-C to "
          f"exit at most {max(stop_times):.2f} s")
    assert max(stop_times) < 10.0
