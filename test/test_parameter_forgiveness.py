"""Parameters that forgive and explain, on the nodes as a user starts them (processes over DDS):
an integer for a double is taken at start, from a params file and at run time; a wrong type, an
out-of-range value or a value outside the choices stops the node with one line and exit status 2;
a misspelled key is warned about with the closest name; accepted changes are logged; choices are
in the descriptors."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import rclpy
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters
from rclpy.node import Node

from graph import REPO, isolated_ros_environment, spinning, start_node, stop, wait_until

pytestmark = pytest.mark.dds


def run_refused(module: str, *ros_args: str, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, "--ros-args", *ros_args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module, args, words", [
    ("omni_ros.ros.omni_node", ["-p", "top_p:=high"], ["top_p", "'high'", "a double in [0.0, 1.0]"]),
    ("omni_ros.ros.omni_node", ["-p", "top_p:=1.5"], ["top_p", "1.5", "a double in [0.0, 1.0]"]),
    ("omni_ros.ros.omni_node", ["-p", "mode:=loud"], ["mode", "'loud'", "one of: duplex, turn_based"]),
    ("omni_ros.ros.omni_node", ["-p", "top_k:=2.5"], ["top_k", "2.5", "an integer in [0, 1000]"]),
    ("omni_ros.ros.clock_node", ["-p", "window_sec:=fast"], ["window_sec", "'fast'", "a double"]),
])
def test_a_value_it_cannot_take_stops_the_node_with_one_line(module, args, words):
    env = isolated_ros_environment()
    result = run_refused(module, *args, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_a_refused_value_in_a_params_file_stops_the_node(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("omni_node:\n  ros__parameters:\n    top_p: 1.5\n")
    result = run_refused("omni_ros.ros.omni_node", "--params-file", str(params),
                         env=isolated_ros_environment())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "top_p: 1.5 refused" in result.stderr


class ParameterClient(Node):
    """What `ros2 param get/set/describe` do, on /omni_node."""

    def __init__(self, context) -> None:
        super().__init__("parameter_client", context=context)
        self.get = self.create_client(GetParameters, "/omni_node/get_parameters")
        self.set = self.create_client(SetParameters, "/omni_node/set_parameters")
        self.describe = self.create_client(DescribeParameters, "/omni_node/describe_parameters")

    def call(self, client, request):
        future = client.call_async(request)
        deadline = time.monotonic() + 30
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), client.srv_name
        return future.result()

    def value(self, name):
        v = self.call(self.get, GetParameters.Request(names=[name])).values[0]
        return {ParameterType.PARAMETER_DOUBLE: v.double_value, ParameterType.PARAMETER_INTEGER:
                v.integer_value, ParameterType.PARAMETER_STRING: v.string_value}.get(v.type), v.type

    def set_value(self, name, value):
        pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value) \
            if isinstance(value, int) else ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                          string_value=value)
        return self.call(self.set, SetParameters.Request(
            parameters=[Parameter(name=name, value=pv)])).results[0]


def test_integers_for_doubles_unknown_keys_changes_logged_and_choices(tmp_path, tiny_checkpoint):
    env = isolated_ros_environment()
    params = tmp_path / "params.yaml"
    params.write_text("omni_node:\n  ros__parameters:\n    top_p: 1\n"
                      "    standing_instrucion: watch the stairs\n")
    node_log, clock_log = tmp_path / "omni_node.log", tmp_path / "clock.log"
    processes = [
        start_node("omni_ros.ros.clock_node", ["-p", "window_sec:=1"], env, clock_log),
        start_node("omni_ros.ros.omni_node", ["-p", f"model_path:={tiny_checkpoint}",
                                              "-p", "temperature:=1", "-p", "window_sec:=1",
                                              "--params-file", str(params)], env, node_log)]
    context = rclpy.Context()
    rclpy.init(context=context)
    client = ParameterClient(context)
    try:
        with spinning(client, context):
            wait_until(lambda: "ready:" in node_log.read_text(), 120, "omni_node ready",
                       [node_log, clock_log])
            assert client.value("temperature") == (1.0, ParameterType.PARAMETER_DOUBLE)
            assert client.value("top_p") == (1.0, ParameterType.PARAMETER_DOUBLE)
            assert client.value("window_sec") == (1.0, ParameterType.PARAMETER_DOUBLE)
            # at run time: an integer for a double is taken, and the change is logged
            assert client.set_value("temperature", 2).successful
            assert client.value("temperature") == (2.0, ParameterType.PARAMETER_DOUBLE)
            refused = client.set_value("mode", "loud")
            assert not refused.successful and "one of: duplex, turn_based" in refused.reason
            assert client.set_value("mode", "turn_based").successful
            described = client.call(client.describe, DescribeParameters.Request(names=["mode"]))
            assert described.descriptors[0].additional_constraints == "one of: duplex, turn_based"
            wait_until(lambda: "parameter mode: 'duplex' -> 'turn_based'" in node_log.read_text(),
                       10, "the change logged", [node_log])
            # a new standing instruction is under the kept units at the next unit
            time.sleep(3.0)                        # a few units into the context
            assert client.set_value("standing_instruction", "now watch the loading bay").successful
            wait_until(lambda: "standing_instruction changed: context rebuilt" in node_log.read_text(),
                       30, "the context rebuilt", [node_log])
    finally:
        client.destroy_node()
        rclpy.shutdown(context=context)
        codes = stop(processes)
    text = node_log.read_text()
    assert "parameter temperature: 1.0 -> 2.0" in text
    kept = re.search(r"context rebuilt under the new system prefix, (\d+) recent units kept "
                     r"\((\d+) positions, (\d+) ms\)", text)
    assert kept and int(kept.group(1)) >= 2, text[-3000:]
    assert "'standing_instrucion' is not a parameter of any omni_ros node" in text
    assert "did you mean standing_instruction?" in text
    assert "Traceback" not in text + clock_log.read_text()
    assert codes == [0, 0]
