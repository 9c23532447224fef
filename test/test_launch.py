"""launch/omni.launch.py under ROS 2 launch (launch_pytest), on the tiny checkpoint: the launch
arguments (namespace, topic remaps) take effect, states flow, both nodes get the large-frame
Fast DDS profile, and shutdown is clean (exit status 0, no traceback).

ROS 2 launch is not on PyPI; `scripts/setup` installs it from a wheel folder named by
OMNI_ROS_EXTRA_WHEELS (`.ci/run` passes ../shared/wheels where it exists). Without it this
module skips; test_integration_dds.py runs the same graph through omni_ros_bringup."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

launch_pytest = pytest.importorskip(
    "launch_pytest", reason="ROS 2 launch (launch, launch_ros, launch_pytest) is not installed: "
    "it is not on PyPI; run scripts/setup with OMNI_ROS_EXTRA_WHEELS=<folder of its wheels>. "
    "test_integration_dds.py runs the same graph without it.")
pytest.importorskip("launch_ros.actions", reason="launch_ros is not installed")

from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription, RegisterEventHandler  # noqa: E402
from launch.event_handlers import OnProcessExit, OnProcessIO, OnProcessStart  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from graph import spinning, wait_until  # noqa: E402
from omni_ros.tools.processes import LARGE_FRAME_PROFILE, PROFILES_VARIABLE  # noqa: E402

pytestmark = pytest.mark.dds

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "omni.launch.py"
NAMESPACE = "/launch_robot"
ARGUMENTS = {"namespace": NAMESPACE.lstrip("/"), "camera_topic": "/front_camera/image",
             "mic_topic": "/audio/audio_stamped", "speech_topic": "voice/play"}


class Processes:
    """What launch reports about the processes it runs: pid, output, exit status by name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pids, self.output, self.exits = {}, {}, {}

    def handlers(self):
        def started(event, _context):
            with self.lock:
                self.pids[event.process_name] = event.pid

        def text(event):
            with self.lock:
                lines = self.output.setdefault(event.process_name, [])
                lines.append(event.text.decode(errors="replace"))

        def exited(event, _context):
            with self.lock:
                self.exits[event.process_name] = event.returncode

        return [RegisterEventHandler(OnProcessStart(on_start=started)),
                RegisterEventHandler(OnProcessIO(on_stdout=text, on_stderr=text)),
                RegisterEventHandler(OnProcessExit(on_exit=exited))]

    def text(self) -> str:
        with self.lock:
            return "\n".join(f"--- {name}\n{''.join(lines)[-3000:]}"
                             for name, lines in self.output.items())


@pytest.fixture
def processes():
    return Processes()


def _for_launch_pytest(definition):
    """launch_pytest 3.7 reads a fixture's scope from `_pytestfixturefunction`, which pytest 8.4
    dropped (its fixtures are FixtureFunctionDefinition objects since): give it back."""
    if not hasattr(definition, "_pytestfixturefunction"):
        definition._pytestfixturefunction = getattr(definition, "_fixture_function_marker",
                                                    SimpleNamespace(scope="function"))
    return definition


@_for_launch_pytest
@launch_pytest.fixture
def graph(tiny_checkpoint, ros_env, processes, monkeypatch):
    # the nodes' executables start with `#!/usr/bin/env python3`: this environment's Python
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(PROFILES_VARIABLE, raising=False)
    monkeypatch.delenv("FASTDDS_BUILTIN_TRANSPORTS", raising=False)
    arguments = {"model_path": str(tiny_checkpoint), **ARGUMENTS}
    return LaunchDescription([
        *processes.handlers(),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                                 launch_arguments=arguments.items()),
        launch_pytest.actions.ReadyToTest(),
    ])


def _topics_of(observer, name: str, namespace: str, kind: str):
    getter = getattr(observer, f"get_{kind}_names_and_types_by_node")
    try:
        return {topic for topic, _ in getter(name, namespace)}
    except Exception:  # noqa: BLE001 - the node is not discovered yet
        return set()


@pytest.mark.launch(fixture=graph)
def test_launch_file_brings_up_the_graph_and_shuts_it_down_cleanly(processes):
    from rclpy.node import Node

    from omni_ros.msg import DuplexState
    from omni_ros.ros import qos

    observer = Node("launch_test_observer")
    states = []
    observer.create_subscription(DuplexState, f"{NAMESPACE}/omni/state", states.append, qos.OUTPUT)
    try:
        with spinning(observer):
            wait_until(lambda: len(states) >= 2, 120, f"{NAMESPACE}/omni/state")
            wait_until(lambda: "/front_camera/image" in _topics_of(
                observer, "omni_node", NAMESPACE, "subscriber"), 20,
                "omni_node to subscribe to the remapped camera topic")
            inputs = _topics_of(observer, "omni_node", NAMESPACE, "subscriber")
            outputs = _topics_of(observer, "omni_node", NAMESPACE, "publisher")
            ticks = _topics_of(observer, "omni_flow_clock", NAMESPACE, "publisher")
    finally:
        observer.destroy_node()
    assert {"/front_camera/image", "/audio/audio_stamped", f"{NAMESPACE}/omni_flow/tick"} <= inputs
    assert {f"{NAMESPACE}/voice/play", f"{NAMESPACE}/omni/state"} <= outputs
    assert f"{NAMESPACE}/omni_flow/tick" in ticks
    with processes.lock:
        pids = dict(processes.pids)
    assert len(pids) == 2, pids
    for name, pid in pids.items():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        profile = next((item.split(b"=", 1)[1].decode() for item in environ
                        if item.startswith(PROFILES_VARIABLE.encode() + b"=")), None)
        assert profile is not None and profile.endswith(LARGE_FRAME_PROFILE), (name, profile)
        assert Path(profile).exists()
    yield   # launch_pytest shuts the launch down here (SIGINT to each node)
    with processes.lock:
        exits = dict(processes.exits)
    assert sorted(exits.values()) == [0, 0], f"{exits}\n{processes.text()}"
    assert "Traceback" not in processes.text(), processes.text()
