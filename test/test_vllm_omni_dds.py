"""omni_node with backend:=vllm_omni over real DDS, against the protocol test double
(test/vllm_omni_double.py, a separate process answering with the tiny model): states, text and
speech flow; a person talking over the robot cancels the server's response; a slow server
triggers the overload policy; a server killed mid-run and started again is survived (units fail
and are counted meanwhile, then the node is back in step); a wrong API key stops the node with
one line. One graph run covers the first four, phase after phase."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from audio_common_msgs.msg import AudioDataStamped

from graph import REPO, spinning, start_node, stop, wait_until
from omni_ros.msg import DuplexState
from omni_ros.ros.conversions import rgb_to_image
from omni_ros.ros.diagnostics import values_of
from omni_ros.tools.scene_player import synthesize_float
from test_integration_dds import MIC_CHANNELS, MIC_RATE, RobotClient

pytestmark = pytest.mark.dds

KEY = "fleet-key-" + "3" * 24
DOUBLE = str(Path(__file__).parent / "vllm_omni_double.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Feeder:
    """Camera frames and 48 kHz stereo mic audio in real time: a quiet tone, or a person's
    voice while `voice` holds samples."""

    def __init__(self, client: RobotClient) -> None:
        self.client = client
        self.voice = np.zeros(0, np.float32)
        self.sent_chunks = self.sent_frames = 0
        self.start = time.monotonic()

    def say(self, samples: np.ndarray) -> None:
        self.voice = samples.astype(np.float32)

    def run(self, seconds: float, until=None, chunk_ms: int = 20, fps: float = 5.0) -> bool:
        """Feed for `seconds` or until `until()` holds (True then)."""
        chunk = MIC_RATE * chunk_ms // 1000
        frame = np.zeros((48, 64, 3), dtype=np.uint8)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            elapsed = time.monotonic() - self.start
            while self.sent_chunks * chunk_ms / 1000.0 <= elapsed:
                if self.voice.shape[0]:
                    mono, self.voice = self.voice[:chunk], self.voice[chunk:]
                    mono = np.pad(mono, (0, chunk - mono.shape[0]))
                else:
                    t = (np.arange(chunk) + self.sent_chunks * chunk) / MIC_RATE
                    mono = 0.05 * np.sin(2 * np.pi * 440 * t)
                stereo = np.repeat((np.clip(mono, -1, 1) * 32767).astype("<i2")[:, None], MIC_CHANNELS, axis=1)
                message = AudioDataStamped()
                message.header.stamp = self.client.get_clock().now().to_msg()
                message.audio.data = stereo.tobytes()
                self.client.mic.publish(message)
                self.sent_chunks += 1
            if self.sent_frames / fps <= elapsed:
                frame[:] = (self.sent_frames * 10) % 256
                self.client.camera.publish(rgb_to_image(frame, "bgr8", self.client.get_clock().now().nanoseconds,
                                                        "camera"))
                self.sent_frames += 1
            if until is not None and until():
                return True
            time.sleep(0.004)
        return False


def start_double(port, tiny_checkpoint, folder: Path, log_name: str) -> subprocess.Popen:
    log = open(folder / log_name, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, DOUBLE, "--model-path", str(tiny_checkpoint), "--port", str(port),
                             "--api-key-file", str(folder / "server_key"), "--delay-file", str(folder / "delay"),
                             "--log", str(folder / "messages.jsonl"), "--listen-prob-scale", "0.02"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def wait_serving(folder: Path, log_name: str, timeout: float = 90) -> None:
    wait_until(lambda: "serving on" in (folder / log_name).read_text(), timeout,
               "the vllm_omni double to serve", [folder / log_name])


def messages(folder: Path):
    path = folder / "messages.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def cancels(folder: Path):
    return [m for m in messages(folder) if m["type"] == "response.cancel"]


def node_args(port, checkpoint, key_file: Path):
    return ["-p", "backend:=vllm_omni", "-p", f"model_path:={checkpoint}",
            "-p", f"vllm_omni_url:=ws://127.0.0.1:{port}/v1/duplex",
            "-p", f"vllm_omni_api_key_file:={key_file}", "-p", "vllm_omni_unit_timeout_sec:=2.5",
            "-p", "vllm_omni_connect_timeout_sec:=1.0", "-p", "force_listen_count:=0",
            "-p", "speech_chunk_ms:=100", "-p", "diagnostics_period_sec:=0.5",
            "-p", "max_consecutive_failures:=3"]


@pytest.fixture(scope="module")
def fleet(ros_env, tiny_checkpoint, tmp_path_factory):
    """The double, the clock and omni_node (backend vllm_omni), driven phase by phase."""
    folder = tmp_path_factory.mktemp("vllm_omni_dds")
    (folder / "server_key").write_text(KEY)
    (folder / "robot_key").write_text(KEY + "\n")
    (folder / "delay").write_text("0")
    port = free_port()
    run = {"folder": folder, "port": port, "phases": {}}
    double = start_double(port, tiny_checkpoint, folder, "double1.log")
    clock = node = None
    client = RobotClient("camera/image_raw")
    logs = [folder / "double1.log", folder / "clock.log", folder / "omni_node.log"]
    try:
        wait_serving(folder, "double1.log")
        args = node_args(port, tiny_checkpoint, folder / "robot_key")
        clock = start_node("omni_ros.ros.clock_node", [], ros_env, folder / "clock.log")
        node = start_node("omni_ros.ros.omni_node", args, ros_env, folder / "omni_node.log")
        with spinning(client):
            wait_until(lambda: client.mic.get_subscription_count() > 0, 90, "omni_node to subscribe", logs)
            feed = Feeder(client)
            phases = run["phases"]
            phases["start"] = time.monotonic()
            # 1. normal: the robot speaks; then a person talks over it (barge-in). The person waits
            # until the detector says it is armed: with no echo of the robot in this mic (the
            # feeder plays a tone, not the robot), it arms once it has heard the robot speak for a
            # second or two with nothing but the tone, and a voice over that stretch holds it off.
            def armed() -> bool:
                return values_of(client.diagnostics[-3:], "omni_node").get("barge_in_armed") == "True"

            spoke = feed.run(30, until=lambda: len(client.speech) >= 3 and armed())
            assert spoke, "no speech, or barge-in never armed: " + (folder / "omni_node.log").read_text()[-2000:]
            phases["barge_in"] = time.monotonic()
            voice = synthesize_float("Stop! Wait a moment please. Stop talking.", voice="en-us+f3",
                                     sample_rate=MIC_RATE) * 0.9
            # A barge-in applied just after the unit that ended the server's turn has no response
            # left to cancel (the flow mutes the speech still playing): the person tries again
            # over the next turn, at most three times.
            run["attempts"] = 0
            while run["attempts"] < 3 and not cancels(folder):
                if run["attempts"]:
                    heard = len(client.speech)
                    feed.run(20, until=lambda: len(client.speech) >= heard + 3 and armed())
                run["attempts"] += 1
                feed.say(voice)
                feed.run(4)
            # 2. a slow server: every answer comes after its window has ended
            phases["slow"] = time.monotonic()
            (folder / "delay").write_text("1.6")
            feed.run(8)
            (folder / "delay").write_text("0")
            feed.run(2)
            # 3. the server is killed, then started again
            phases["killed"] = time.monotonic()
            double.kill()
            double.wait()
            feed.run(3)
            double = start_double(port, tiny_checkpoint, folder, "double2.log")
            logs.append(folder / "double2.log")
            feed.run(60, until=lambda: "serving on" in (folder / "double2.log").read_text())
            phases["restarted"] = time.monotonic()
            feed.run(6)
            phases["end"] = time.monotonic()
            time.sleep(1.0)
        run["codes"] = stop([node, clock])
        run["client"], run["logs"] = client, logs
        yield run
    finally:
        stop([p for p in (node, clock) if p is not None])
        stop([double])
        client.destroy_node()


def test_states_text_and_speech_flow(fleet):
    client = fleet["client"]
    assert fleet["codes"] == [0, 0], "omni_node and the clock exit cleanly"
    log = fleet["logs"][2].read_text()
    assert "backend=vllm_omni" in log or "vllm_omni" in log
    first = [s for s in client.states][:6]
    indices = [int(s.window_index) for s in client.states]
    assert indices == sorted(set(indices)), "one state per run unit, in window order"
    # before anything went wrong, every tick gave a state
    ticks = sorted(int(t.index) for t in client.ticks)
    early = [i for i in indices[:6]]
    assert early == list(range(early[0], early[0] + len(early))), f"gaps before the faults: {early}"
    speaking = [s for s in client.states if s.state == DuplexState.SPEAKING]
    assert speaking and first, "the double speaks readily: SPEAKING states must come"
    assert any(t.text.strip() for t in client.texts), "text of speaking units is published"
    per_window = {}
    for message in client.speech:
        per_window[message.header.frame_id] = per_window.get(message.header.frame_id, 0) + \
            len(message.audio.data) // 2
    # whole 100 ms chunks; a unit that ends a turn adds the waveform stage's 0.28 s tail
    tail = 6720
    assert per_window and all(n % 2400 == 0 or (n - tail) % 2400 == 0 for n in per_window.values()), \
        per_window
    assert any(n == 24000 for n in per_window.values()), "a speaking unit plays one 24 kHz window"
    assert ticks


def test_barge_in_cancels_the_servers_response(fleet):
    client = fleet["client"]
    interrupted = [s for s in client.states if s.state == DuplexState.INTERRUPTED]
    detector = {k: v for k, v in values_of(client.diagnostics, "omni_node").items() if k.startswith("barge_in")}
    assert interrupted, (f"the person's voice over the robot's speech must interrupt it ({fleet['attempts']} "
                         f"tries); the detector: {detector}")
    sent = cancels(fleet["folder"])
    assert sent and sent[0].get("response_id", "").startswith("resp_"), \
        f"no response.cancel in {fleet['attempts']} barge-ins: " + fleet["logs"][2].read_text()[-2000:]


def test_a_slow_server_triggers_the_overload_policy(fleet):
    client = fleet["client"]
    values = values_of(client.diagnostics, "omni_node")
    assert int(values["loop_windows_skipped"]) >= 2, values
    slow = [s for s in client.states if s.compute_ms > 1000.0]
    assert len(slow) >= 2, "units that wait for a slow server take longer than the window"


def test_a_killed_server_is_survived_and_the_node_comes_back_in_step(fleet):
    client, folder = fleet["client"], fleet["folder"]
    values = values_of(client.diagnostics, "omni_node")
    assert int(values["loop_units_failed"]) >= 2, values      # units while the server was down
    # the session's own network figures reach /diagnostics beside the flow's
    assert float(values["server_rtt_ms_max"]) > 0 and int(values["server_units_answered"]) > 0, values
    opened = [m for m in messages(folder) if m["type"] == "session.update" and "instructions" in m["session"]]
    assert len(opened) >= 2, "a new session was opened on the restarted server"
    last = [int(s.window_index) for s in client.states][-4:]
    assert last == list(range(last[0], last[0] + 4)), f"back in step at the end: {last}"
    log = fleet["logs"][2].read_text()
    assert "Traceback" not in log


def test_a_wrong_api_key_stops_the_node_with_one_line(ros_env, tiny_checkpoint, tmp_path):
    (tmp_path / "server_key").write_text(KEY)
    (tmp_path / "delay").write_text("0")
    (tmp_path / "wrong_key").write_text("not-the-key\n")
    port = free_port()
    double = start_double(port, tiny_checkpoint, tmp_path, "double.log")
    try:
        wait_serving(tmp_path, "double.log")
        args = node_args(port, tiny_checkpoint, tmp_path / "wrong_key")
        result = subprocess.run([sys.executable, "-m", "omni_ros.ros.omni_node", "--ros-args", *args],
                                env=ros_env, capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        stop([double])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "refused the API key" in line]
    assert len(lines) == 1 and "cannot start" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "not-the-key" not in result.stderr + result.stdout
