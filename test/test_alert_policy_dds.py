"""The alert policy and late joiners over real DDS, between real processes: omni_flow_clock and
omni_node (tiny checkpoint, namespace /ap) fed camera frames and a silent microphone, the
operator's tools as their own processes.

The tiny model speaks readily (listen_prob_scale 0.02) and never hears anyone, so every turn it
starts is proactive; with alert_max_units 1 each turn alerts on its first unit, and the test
ends each turn with omni/reset as soon as omni/state shows the robot speaking (a reset also
clears the window's input so far, hence right after a unit, not before one), so alerts are
raised about once a window. What
the policy made of them is read from omni/alerts (a volatile subscriber, as the recorder is) and
from the node's /diagnostics counters.

One run (module fixture), in phases:
1. alert_min_confidence 0.99: alerts are raised (loop_alerts), none is published, all counted
   as alerts_below_confidence.
2. alert_min_confidence 0.0 at run time, alert_cooldown_sec 2: alerts are published at least 2 s
   apart (node clock). The alert log, running from the start, is stopped for a few alerts and
   started again on the same file.
3. alert_cooldown_sec 3600 right after an alert: nothing more under that instruction; a new
   standing_instruction: its first alert is published at once, then nothing again.
4. A console started only now shows the alerts published before it started.
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from graph import REPO, appender, spinning, start_node, stop, wait_until
from omni_ros.msg import DuplexState, ProactiveAlert
from omni_ros.ros import qos
from omni_ros.ros.conversions import rgb_to_image, stamp_to_ns
from omni_ros.ros.diagnostics import values_of
from omni_ros.tools.alert_log import read_alert_log

pytestmark = pytest.mark.dds

NS = "/ap"
WINDOW_SEC = 0.5
COOLDOWN_SEC = 2.0
FIRST, SECOND = "Watch the door.", "Now watch the loading bay."
HINT = "no publisher on"


class Operator(Node):
    """The robot's sensors (frames, silence), omni/reset after each speaking unit, and what an
    operator's scripts see: alerts (volatile), /diagnostics; sets omni_node's parameters."""

    def __init__(self) -> None:
        super().__init__("alert_policy_test", namespace=NS)
        self.lock = threading.Lock()
        self.alerts, self.diagnostics = [], []
        self.create_subscription(ProactiveAlert, "omni/alerts", appender(self.lock, self.alerts),
                                 qos.OUTPUT)
        self.create_subscription(DiagnosticArray, "/diagnostics",
                                 appender(self.lock, self.diagnostics), qos.OUTPUT)
        self.camera = self.create_publisher(Image, "camera/image_raw", qos.CAMERA)
        self.mic = self.create_publisher(AudioDataStamped, "mic/audio_stamped", qos.MIC_AUDIO)
        self.mic_info = self.create_publisher(AudioInfo, "mic/audio_info", qos.AUDIO_INFO)
        self.mic_info.publish(AudioInfo(channels=1, sample_rate=16000, sample_format="S16LE",
                                        coding_format="wave"))
        self.reset = self.create_client(Trigger, "omni/reset")
        self.parameters = self.create_client(SetParameters, "omni_node/set_parameters")
        self.stopping = threading.Event()
        self.driving = threading.Event()
        self.create_subscription(DuplexState, "omni/state", self.on_state, qos.OUTPUT)

    def on_state(self, state) -> None:
        if self.driving.is_set() and state.state == DuplexState.SPEAKING:
            self.reset.call_async(Trigger.Request())

    def received(self) -> list:
        with self.lock:
            return list(self.alerts)

    def values(self) -> dict:
        with self.lock:
            return values_of(self.diagnostics[-1:], f"{NS}/omni_node") if self.diagnostics else {}

    def counter(self, name: str) -> int:
        return int(self.values().get(name, 0))

    def set(self, **values) -> float:
        """Set omni_node parameters; the node clock's time just before (s)."""
        before = self.get_clock().now().nanoseconds / 1e9
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        future = self.parameters.call_async(request)
        wait_until(future.done, 10, f"omni_node to take {values}")
        assert all(r.successful for r in future.result().results), future.result()
        return before

    def drive(self) -> None:
        """Frames at 10 fps, 20 ms of silence at a time, resets after speaking units."""
        self.driving.set()
        start, chunks, frames = time.monotonic(), 0, 0
        frame = np.zeros((48, 64, 3), dtype=np.uint8)
        while not self.stopping.is_set():
            elapsed = time.monotonic() - start
            while chunks * 0.02 <= elapsed:
                message = AudioDataStamped()
                message.header.stamp = self.get_clock().now().to_msg()
                message.audio.data = bytes(640)
                self.mic.publish(message)
                chunks += 1
            if frames / 10.0 <= elapsed:
                frame[:] = (frames * 7) % 256
                self.camera.publish(rgb_to_image(frame, "rgb8", self.get_clock().now().nanoseconds,
                                                 "camera"))
                frames += 1
            time.sleep(0.005)
        self.driving.clear()


def tool(module: str, args, env, out: Path) -> subprocess.Popen:
    with open(out, "w") as stream:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=stream,
                                stderr=subprocess.STDOUT, cwd=REPO)


def wait_for_alerts(operator, count: int, timeout: float, logs) -> list:
    wait_until(lambda: len(operator.received()) >= count, timeout, f"{count} alerts", logs)
    return operator.received()


@pytest.fixture(scope="module")
def run(ros_env, tiny_checkpoint, tmp_path_factory):
    logs = tmp_path_factory.mktemp("alert_policy")
    window = ["-p", f"window_sec:={WINDOW_SEC}", "-r", f"__ns:={NS}"]
    clock = start_node("omni_ros.ros.clock_node", window, ros_env, logs / "clock.log")
    node = start_node("omni_ros.ros.omni_node", [
        *window, "-p", f"model_path:={tiny_checkpoint}", "-p", "force_listen_count:=0",
        "-p", "listen_prob_scale:=0.02", "-p", "seed:=1", "-p", "alert_max_units:=1",
        "-p", "barge_in:=false", "-p", "diagnostics_period_sec:=0.25",
        "-p", f"standing_instruction:={FIRST}", "-p", "alert_min_confidence:=0.99",
        "-p", f"alert_cooldown_sec:={COOLDOWN_SEC}", "-p", "alert_history:=50"],
        ros_env, logs / "omni_node.log")
    files = [logs / "omni_node.log", logs / "clock.log"]
    operator = Operator()
    alert_file = logs / "alerts.jsonl"
    log_args = [str(alert_file), "--namespace", NS.strip("/")]
    tools, out = [], {}
    phase = {}
    driver = threading.Thread(target=operator.drive, daemon=True)
    try:
        with spinning(operator):
            wait_until(lambda: operator.mic.get_subscription_count() > 0, 90,
                       "omni_node to subscribe", files)
            tools.append(tool("omni_ros.tools.alert_log", log_args, ros_env, logs / "log1.out"))
            first_log = tools[-1]
            driver.start()
            # 1: everything below 0.99
            wait_until(lambda: operator.counter("alerts_below_confidence") >= 2, 30,
                       "alerts held back below alert_min_confidence", files)
            phase["below"] = operator.values()
            phase["below_received"] = operator.received()
            # 2: everything passes the confidence; the cooldown spaces them
            phase["open_at"] = operator.set(alert_min_confidence=0.0)
            written = wait_for_alerts(operator, 2, 20, files)
            wait_until(lambda: alert_file.exists() and len(alert_file.read_text().splitlines())
                       >= len(written), 10, "the alert log to write them", [logs / "log1.out"])
            stop([first_log])
            phase["log_down_at"] = operator.get_clock().now().nanoseconds
            missed = len(operator.received())
            wait_for_alerts(operator, missed + 2, 20, files)     # alerts the log is not there for
            phase["log_up_at"] = operator.get_clock().now().nanoseconds
            tools.append(tool("omni_ros.tools.alert_log", log_args, ros_env, logs / "log2.out"))
            wait_for_alerts(operator, len(operator.received()) + 1, 20, files)
            # 3: a long cooldown right after an alert, then a new instruction
            seen = len(operator.received())
            wait_for_alerts(operator, seen + 1, 20, files)
            phase["long_cooldown_at"] = operator.set(alert_cooldown_sec=3600.0)
            held = operator.counter("alerts_in_cooldown")
            wait_until(lambda: operator.counter("alerts_in_cooldown") >= held + 2, 20,
                       "alerts held back by the long cooldown", files)
            phase["quiet"] = operator.received()
            phase["changed_at"] = operator.set(standing_instruction=SECOND)
            wait_until(lambda: any(a.instruction == SECOND for a in operator.received()), 20,
                       "the first alert under the new instruction", files)
            held = operator.counter("alerts_in_cooldown")
            wait_until(lambda: operator.counter("alerts_in_cooldown") >= held + 2, 20,
                       "the new instruction's cooldown", files)
            operator.stopping.set()
            driver.join(5)
            time.sleep(4 * 0.25)                 # the last counters on /diagnostics
            phase["final"] = operator.values()
            published = operator.received()
            # 4: a console that starts now
            tools.append(tool("omni_ros.tools.console",
                              ["--namespace", NS, "--no-color", "--duration-sec", "30"],
                              ros_env, logs / "console.out"))
            wait_until(lambda: (logs / "console.out").read_text().count(" ALERT ")
                       >= len(published), 30, "the late console to show the kept alerts",
                       [logs / "console.out"])
            time.sleep(0.5)
            phase["log2_code"], phase["console_code"] = stop(tools[1:])
            phase["log1_code"] = first_log.returncode
            codes = stop([node, clock])
    finally:
        operator.stopping.set()
        stop([*tools, node, clock])
        operator.destroy_node()
    for name in ("log1", "log2", "console"):
        out[name] = (logs / f"{name}.out").read_text()
    return dict(phase, published=published, alert_file=alert_file, out=out, codes=codes)


def keys(alerts):
    return [(int(a.window_index), stamp_to_ns(a.header.stamp)) for a in alerts]


def test_alerts_below_the_minimum_confidence_are_not_published(run):
    below = run["below"]
    assert run["below_received"] == [], "nothing published while alert_min_confidence was 0.99"
    assert int(below["alerts_below_confidence"]) >= 2 and int(below["alerts_published"]) == 0
    assert int(below["loop_alerts"]) >= int(below["alerts_below_confidence"])
    opened_ns = int(run["open_at"] * 1e9)
    assert all(stamp_to_ns(a.header.stamp) >= opened_ns for a in run["published"])
    final = run["final"]
    # every alert the runner raised is accounted for: published, or held back and counted
    assert int(final["loop_alerts"]) == sum(int(final[k]) for k in (
        "alerts_published", "alerts_below_confidence", "alerts_in_cooldown")), final
    assert int(final["alerts_published"]) == len(run["published"])
    assert run["codes"] == [0, 0]


def test_the_cooldown_spaces_alerts_per_instruction_and_a_new_instruction_starts_fresh(run):
    published = run["published"]
    first = [a for a in published if a.instruction == FIRST]
    second = [a for a in published if a.instruction == SECOND]
    assert len(first) >= 5 and len(second) == 1, \
        [(a.instruction, a.window_index) for a in published]
    stamps = [stamp_to_ns(a.header.stamp) for a in first]
    gaps = [(b - a) / 1e9 for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= COOLDOWN_SEC, gaps
    assert int(run["final"]["alerts_in_cooldown"]) >= 4
    # under the long cooldown nothing more of the first instruction; the new one at once, once
    long_ns, changed_ns = (int(run[k] * 1e9) for k in ("long_cooldown_at", "changed_at"))
    assert all(stamp_to_ns(a.header.stamp) < long_ns for a in first)
    assert run["quiet"] == first
    assert stamp_to_ns(second[0].header.stamp) > changed_ns
    assert published[-1] is second[0]
    assert {a.level for a in published} == {ProactiveAlert.WARN}
    # the evidence: the newest frame when the turn began (a reset clears the window's frames, so
    # a unit may run without one when the machine is slow)
    assert sum(a.evidence_stamp.sec > 0 for a in published) >= len(published) // 2


def test_an_alert_log_restarted_mid_run_loses_and_duplicates_nothing(run):
    published = run["published"]
    records = list(read_alert_log(run["alert_file"]))
    written = [(r["window_index"], r["stamp_ns"]) for r in records]
    assert written == keys(published), "each published alert once, in order"
    assert {r["namespace"] for r in records} == {NS}
    down = [a for a in published
            if run["log_down_at"] <= stamp_to_ns(a.header.stamp) <= run["log_up_at"]]
    assert len(down) >= 2, "alerts were published while the log was stopped"
    log1, log2 = run["out"]["log1"], run["out"]["log2"]
    assert f"[omni_ros_alert_log] writing the alerts of {NS}/omni/alerts" in log1
    assert str(run["alert_file"]) in log1 and "0 alerts already there" in log1
    before = len([a for a in published if stamp_to_ns(a.header.stamp) < run["log_down_at"]])
    assert f"{before} alerts already there" in log2
    summary = log2.strip().splitlines()[-1]
    assert f"{before} already in alerts.jsonl skipped" in summary, log2
    assert HINT not in log1 + log2
    assert run["log1_code"] == 0 and run["log2_code"] == 0


def test_a_late_console_gets_the_alerts_it_missed(run):
    shown = run["out"]["console"]
    published = run["published"]
    alert_lines = [line for line in shown.splitlines() if "  ALERT  " in line]
    assert len(alert_lines) == len(published), shown
    for line, alert in zip(alert_lines, published):
        assert re.fullmatch(r"[+-]\d\d:\d\d\.\d{3}  WARN   ALERT  .*", line), line
        assert f"ALERT  {' '.join(alert.text.split())!r}  (confidence {alert.confidence:.2f}, " \
            in line, line
        age = (stamp_to_ns(alert.header.stamp) - stamp_to_ns(alert.evidence_stamp)) / 1e9
        assert line.endswith(f"evidence frame {age:.2f} s old)" if alert.evidence_stamp.sec
                             else "no camera frame)"), line
    assert f"instruction: {SECOND}" in shown and HINT not in shown
    assert run["console_code"] == 0


def test_each_tool_says_when_it_finds_no_graph(ros_env, tmp_path):
    """Console, alert log and scene player in a namespace where nothing runs: one line each after
    5 s naming the topics, the namespace and the ROS_DOMAIN_ID."""
    runs = {
        "console": ("omni_ros.tools.console", ["--namespace", "nobody", "--duration-sec", "7"]),
        "alert_log": ("omni_ros.tools.alert_log",
                      [str(tmp_path / "a.jsonl"), "--namespace", "/nobody/",
                       "--duration-sec", "7"]),
        "scene_player": ("omni_ros.tools.scene_player",
                         ["--namespace", "nobody", "--wait-sec", "7", "--duration-sec", "1"]),
    }
    started = time.monotonic()
    processes = {name: tool(module, args, ros_env, tmp_path / f"{name}.out")
                 for name, (module, args) in runs.items()}
    codes = {name: process.wait(60) for name, process in processes.items()}
    assert time.monotonic() - started < 40
    domain = f"ROS_DOMAIN_ID {ros_env['ROS_DOMAIN_ID']}"
    expected = {
        "console": "[omni_ros_console] no publisher on /nobody/omni/alerts, /nobody/omni/state, "
                   "/nobody/omni/text after 5 s; this tool is in namespace /nobody on " + domain,
        "alert_log": "[omni_ros_alert_log] no publisher on /nobody/omni/alerts after 5 s; this "
                     "tool is in namespace /nobody on " + domain,
        "scene_player": "[omni_ros_scene_player] no subscriber on /nobody/camera/image_raw, "
                        "/nobody/mic/audio_stamped after 5 s; this tool is in namespace /nobody "
                        "on " + domain,
    }
    for name, line in expected.items():
        shown = (tmp_path / f"{name}.out").read_text()
        assert shown.count(line) == 1, shown
        assert "--namespace NS" in shown
    assert codes == {"console": 0, "alert_log": 0, "scene_player": 1}
    assert "nobody subscribed to /nobody/camera/image_raw" in \
        (tmp_path / "scene_player.out").read_text()
