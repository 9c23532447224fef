"""rosbag2 record, replay and report (omni_ros/tools/bags.py) between real processes over DDS.

A live run of the demo graph (clock + omni_node + scene player) is recorded with
omni_ros_bag_record, then replayed twice with omni_ros_bag_play into a fresh graph on sim time
(omni_ros_bringup --use-sim-time): both replays give the same states, text and speech, window for
window, over exactly the live run's windows. The bag is read with rosbags' own reader (the
omni_ros types' definitions travel in it), a bag in `ros2 bag record`'s layout written by rosbags
alone replays, omni_ros_bag_report draws its timeline, bad bags give one line, and every tool
says when it sees nobody on its topics."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import numpy as np
import pytest
from audio_common_msgs.msg import AudioDataStamped
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from graph import REPO, appender, spinning, wait_until
from omni_ros.msg import DuplexState, OmniText
from omni_ros.ros import qos
from omni_ros.ros.diagnostics import values_of

WINDOW_SEC = 1.0
NS = 1_000_000_000
# the model speaks readily (text and speech in a short run), seeded. Barge-in off: it hears the
# robot's own speech, which omni_node paces in wall-clock time, so with it on a replay is
# deterministic only while no recorded voice overlaps the robot's (see the README, Record and
# replay)
NODE_PARAMS = ["--window-sec", str(WINDOW_SEC), "--param", "seed:=7",
               "--param", "force_listen_count:=0", "--param", "listen_prob_scale:=0.02",
               "--param", "barge_in:=false"]


def _tool(module: str, *args: str):
    return [sys.executable, "-m", module, *args]


def _start(command, env, log):
    return subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            cwd=REPO, start_new_session=True)


def _stop(process, timeout=20.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


class Observer(Node):
    """What omni_node publishes: states, text, speech (and diagnostics)."""

    def __init__(self) -> None:
        super().__init__("bag_test_observer")
        self.lock = threading.Lock()
        self.states, self.texts, self.speech, self.diagnostics = [], [], [], []
        self.create_subscription(DuplexState, "omni/state", appender(self.lock, self.states),
                                 qos.OUTPUT)
        self.create_subscription(OmniText, "omni/text", appender(self.lock, self.texts), qos.OUTPUT)
        self.create_subscription(AudioDataStamped, "speech/audio_stamped",
                                 appender(self.lock, self.speech), qos.SPEECH)
        self.create_subscription(DiagnosticArray, "/diagnostics",
                                 appender(self.lock, self.diagnostics), qos.OUTPUT)

    def outcome(self) -> dict:
        """Everything the model decided, per window, in a comparable form."""
        with self.lock:
            speech = defaultdict(bytearray)
            for message in self.speech:
                speech[message.header.frame_id] += bytes(message.audio.data)
            return {
                "states": [(int(s.window_index), int(s.state), bool(s.end_of_turn),
                            bool(s.proactive), round(float(s.speak_probability), 6))
                           for s in self.states],
                "texts": [(int(t.window_index), t.text, bool(t.end_of_turn)) for t in self.texts],
                "speech": {k: hashlib.sha256(bytes(v)).hexdigest() for k, v in speech.items()},
                "speech_samples": {k: len(v) // 2 for k, v in speech.items()},
                "compute_ms": [round(float(s.compute_ms)) for s in self.states],
            }


def replay(bag, ros_env, checkpoint, logs, name, extra_params=()):
    """A fresh graph on sim time, the bag played into it; what it published, and the player's
    output."""
    graph = _start(_tool("omni_ros.tools.bringup", "--model-path", str(checkpoint),
                         "--use-sim-time", *NODE_PARAMS, *extra_params),
                   ros_env, logs / f"{name}_graph.log")
    observer = Observer()
    try:
        with spinning(observer):
            player = subprocess.run(_tool("omni_ros.tools.bags", "play", str(bag), "--hold-sec",
                                          "1.5"), env=ros_env, capture_output=True, text=True,
                                    timeout=150, cwd=REPO)
            assert player.returncode == 0, player.stdout + player.stderr + \
                (logs / f"{name}_graph.log").read_text()[-3000:]
        assert _stop(graph) == 0
        return observer.outcome(), player.stdout, list(observer.diagnostics)
    finally:
        if graph.poll() is None:
            os.killpg(graph.pid, signal.SIGKILL)
        observer.destroy_node()


@pytest.fixture(scope="module")
def live_bag(ros_env, tiny_checkpoint, tmp_path_factory):
    """The demo graph run live for a few seconds, recorded to an MCAP bag: (bag, logs)."""
    logs = tmp_path_factory.mktemp("bag_logs")
    bag = logs / "live_bag"
    graph = _start(_tool("omni_ros.tools.bringup", "--model-path", str(tiny_checkpoint),
                         *NODE_PARAMS), ros_env, logs / "live_graph.log")
    observer = Observer()
    recorder = None
    try:
        with spinning(observer):
            # omni_node is up (the recorder's subscriptions must not start the scene player early)
            wait_until(lambda: len(observer.states) >= 1, 90, "omni_node's first state",
                       [logs / "live_graph.log"])
            recorder = _start(_tool("omni_ros.tools.bags", "record", str(bag)), ros_env,
                              logs / "record.log")
            wait_until(lambda: b"recording" in (logs / "record.log").read_bytes(), 30,
                       "the bag recorder", [logs / "record.log"])
            time.sleep(1.0)   # its subscriptions matched
            player = subprocess.run(
                _tool("omni_ros.tools.scene_player", "--duration-sec", "4",
                      "--request-at-sec", "1.5"),
                env=ros_env, capture_output=True, text=True, timeout=120, cwd=REPO)
            assert player.returncode == 0, player.stderr
            time.sleep(1.5)   # the last window's state and speech
            assert _stop(recorder) == 0, (logs / "record.log").read_text()
        assert _stop(graph) == 0
    finally:
        for process in (recorder, graph):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        observer.destroy_node()
    return bag, logs


def _bag_states(bag):
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.topic == "/omni/state"]
        return [deserialize_message(bytes(raw), DuplexState)
                for _, _, raw in reader.messages(connections=connections)]


@pytest.mark.dds
def test_bag_opens_with_rosbags_and_carries_the_omni_ros_types(live_bag):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    bag, logs = live_bag
    assert (bag / "metadata.yaml").exists() and list(bag.glob("*.mcap")), "MCAP storage"
    with Reader(bag) as reader:
        topics = {c.topic: c for c in reader.connections}
        counts = {t: c.msgcount for t, c in topics.items()}
        for topic, msgtype in {"/omni/state": "omni_ros/msg/DuplexState",
                               "/omni/text": "omni_ros/msg/OmniText",
                               "/omni/alerts": "omni_ros/msg/ProactiveAlert",
                               "/omni_flow/tick": "omni_ros/msg/FlowTick",
                               "/camera/image_raw": "sensor_msgs/msg/Image",
                               "/mic/audio_stamped": "audio_common_msgs/msg/AudioDataStamped",
                               "/mic/audio_info": "audio_common_msgs/msg/AudioInfo",
                               "/speech/audio_stamped": "audio_common_msgs/msg/AudioDataStamped",
                               "/speech/audio_info": "audio_common_msgs/msg/AudioInfo",
                               "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}.items():
            assert topics[topic].msgtype == msgtype
        for topic in ("/omni/state", "/omni/text", "/omni_flow/tick", "/camera/image_raw",
                      "/mic/audio_stamped", "/mic/audio_info", "/speech/audio_stamped"):
            assert counts[topic] > 0, f"nothing recorded on {topic}: {counts}"
        # another tool decodes omni_ros's messages from the definitions in the bag alone
        state = topics["/omni/state"]
        assert "window_index" in state.msgdef.data and "MSG: std_msgs/Header" in state.msgdef.data
        store = get_typestore(Stores.EMPTY)
        for block in state.msgdef.data.split("=" * 80 + "\n"):
            head, _, body = block.partition("\n")
            name = head.removeprefix("MSG: ").strip() if head.startswith("MSG: ") else None
            store.register(get_types_from_msg(body if name else block,
                                              name or "omni_ros/msg/DuplexState"))
        decoded = [store.deserialize_cdr(raw, "omni_ros/msg/DuplexState")
                   for _, _, raw in reader.messages(connections=[state])]
    windows = [int(m.window_index) for m in decoded]
    assert windows == sorted(windows) and len(windows) == counts["/omni/state"]
    assert {int(m.state) for m in decoded} <= {0, 1, 2}


@pytest.mark.dds
def test_replay_twice_gives_the_same_run_over_the_live_windows(live_bag, ros_env,
                                                               tiny_checkpoint):
    bag, logs = live_bag
    live = [int(s.window_index) for s in _bag_states(bag)]
    assert len(live) >= 5 and live == list(range(live[0], live[-1] + 1)), live
    first, _, diagnostics = replay(bag, ros_env, tiny_checkpoint, logs, "replay1")
    second, played, _ = replay(bag, ros_env, tiny_checkpoint, logs, "replay2")
    assert f"playing windows {live[0]}..{live[-1]}" in played
    why = (f"live windows {live}\nfirst {first}\nsecond {second}\n"
           + "".join(f"--- {p.name}\n{p.read_text()[-1500:]}"
                     for p in sorted(logs.glob("replay*.log"))))
    assert [w for w, *_ in first["states"]] == live, "the live run's windows, one state each\n" + why
    assert first["states"] == second["states"], why
    assert first["texts"] == second["texts"], why
    assert first["speech"] == second["speech"], why
    spoken = [w for w, state, *_ in first["states"] if state == DuplexState.SPEAKING]
    assert spoken and first["texts"] and first["speech"], "the replayed model spoke"
    values = values_of(diagnostics, "omni_node")
    assert int(values["frames_received"]) > 0 and int(values["audio_messages_received"]) > 0


@pytest.mark.dds
def test_bag_report_prints_the_summary_and_draws_the_timeline(live_bag, tmp_path):
    bag, _ = live_bag
    states = _bag_states(bag)
    result = subprocess.run(_tool("omni_ros.tools.bags", "report", str(bag), "--output",
                                  str(tmp_path)), capture_output=True, text=True, timeout=120,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "omni_ros run summary" in result.stdout
    assert f"windows processed     {len(states)} (window 1.000 s" in result.stdout
    png = tmp_path / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert (tmp_path / "summary.json").exists()


# the ros-drivers audio_common_msgs definitions, as `ros2 bag record` would store them
AUDIO_MSGS = {
    "audio_common_msgs/msg/AudioData": "uint8[] data\n",
    "audio_common_msgs/msg/AudioDataStamped": "std_msgs/Header header\n"
                                              "audio_common_msgs/AudioData audio\n",
    "audio_common_msgs/msg/AudioInfo": "uint8 channels\nuint32 sample_rate\nstring sample_format\n"
                                       "uint32 bitrate\nstring coding_format\n",
}


def write_ros2_layout_bag(path, seconds=4.0, start_s=1_700_000_000):
    """A bag as `ros2 bag record /camera/image_raw /mic/audio_stamped /mic/audio_info` stores it
    (sqlite3, absolute topics, sensor_msgs/Image and audio_common_msgs), written by rosbags
    alone: a camera at 5 fps and 16 kHz mono audio in 20 ms chunks."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    store = get_typestore(Stores.ROS2_JAZZY)
    for name, text in AUDIO_MSGS.items():
        store.register(get_types_from_msg(text, name))
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    Image = store.types["sensor_msgs/msg/Image"]
    AudioData = store.types["audio_common_msgs/msg/AudioData"]
    AudioDataStamped = store.types["audio_common_msgs/msg/AudioDataStamped"]
    AudioInfo = store.types["audio_common_msgs/msg/AudioInfo"]
    t0 = start_s * NS + 300_000_000
    rng = np.random.default_rng(3)
    with Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        camera = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image",
                                       typestore=store)
        mic = writer.add_connection("/mic/audio_stamped", "audio_common_msgs/msg/AudioDataStamped",
                                    typestore=store)
        info = writer.add_connection("/mic/audio_info", "audio_common_msgs/msg/AudioInfo",
                                     typestore=store)
        writer.write(info, t0, store.serialize_cdr(
            AudioInfo(channels=1, sample_rate=16000, sample_format="S16LE", bitrate=256000,
                      coding_format="wave"), "audio_common_msgs/msg/AudioInfo"))
        events = []
        for i in range(int(seconds * 50)):
            stamp = t0 + i * 20_000_000
            tone = (3000 * np.sin(2 * np.pi * 300 * (np.arange(320) + 320 * i) / 16000)).astype("<i2")
            message = AudioDataStamped(
                header=Header(stamp=Time(sec=stamp // NS, nanosec=stamp % NS), frame_id="mic"),
                audio=AudioData(data=np.frombuffer(tone.tobytes(), np.uint8)))
            events.append((stamp + 20_000_000, mic, store.serialize_cdr(
                message, "audio_common_msgs/msg/AudioDataStamped")))
        for i in range(int(seconds * 5)):
            stamp = t0 + i * 200_000_000
            pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            message = Image(header=Header(stamp=Time(sec=stamp // NS, nanosec=stamp % NS),
                                          frame_id="camera"),
                            height=48, width=64, encoding="rgb8", is_bigendian=0, step=64 * 3,
                            data=pixels.reshape(-1))
            events.append((stamp + 5_000_000, camera,
                           store.serialize_cdr(message, "sensor_msgs/msg/Image")))
        for when, connection, raw in sorted(events, key=lambda e: e[0]):
            writer.write(connection, when, raw)
    return t0


@pytest.mark.dds
def test_a_ros2_bag_layout_bag_replays(ros_env, tiny_checkpoint, tmp_path):
    bag = tmp_path / "ros2_layout"
    t0 = write_ros2_layout_bag(bag, seconds=3.0)
    outcome, played, diagnostics = replay(bag, ros_env, tiny_checkpoint, tmp_path, "ros2layout")
    first, last = t0 // NS, (t0 + 3 * NS) // NS
    assert f"playing windows {first}..{last}" in played, played
    assert [w for w, *_ in outcome["states"]] == list(range(first, last + 1))
    values = values_of(diagnostics, "omni_node")
    assert int(values["frames_received"]) >= 12, values
    assert int(values["audio_messages_received"]) >= 120, values
    assert int(values["audio_messages_refused"]) == 0 and int(values["frames_refused"]) == 0


@pytest.mark.unit
def test_bad_bags_give_one_line(tmp_path, capsys):
    from omni_ros.tools import bags

    def one_line(code, prog):
        err = capsys.readouterr().err.strip()
        assert code == 1 and err.startswith(f"[{prog}]") and "\n" not in err, err
        assert "Traceback" not in err
        return err

    assert "no bag at" in one_line(bags.play_main([str(tmp_path / "nothing")]), "omni_ros_bag_play")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "metadata.yaml").write_text("rosbag2_bagfile_information: [not: a, bag\n")
    assert "cannot read the bag" in one_line(bags.report_main([str(corrupt)]),
                                             "omni_ros_bag_report")
    truncated = tmp_path / "truncated"
    write_ros2_layout_bag(truncated, seconds=1.0)
    db = next(truncated.glob("*.db3"))
    db.write_bytes(db.read_bytes()[:2000])
    err = one_line(bags.play_main([str(truncated)]), "omni_ros_bag_play")
    assert "cannot" in err or "cannot be read" in err
    # a bag without camera or microphone: says what it has
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore
    store = get_typestore(Stores.ROS2_JAZZY)
    other = tmp_path / "other"
    with Writer(other, version=9) as writer:
        connection = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        writer.write(connection, 1, store.serialize_cdr(store.types["std_msgs/msg/String"](
            data="hi"), "std_msgs/msg/String"))
    err = one_line(bags.play_main([str(other)]), "omni_ros_bag_play")
    assert "no camera or microphone input" in err and "/chatter (std_msgs/msg/String)" in err
    assert "not a recording of omni_node" in one_line(bags.report_main([str(other)]),
                                                      "omni_ros_bag_report")
    assert "exists already" in one_line(bags.record_main([str(other)]), "omni_ros_bag_record")


@pytest.mark.dds
def test_each_tool_says_when_nobody_is_on_its_topics(tmp_path, ros_env):
    """No graph in their namespaces (one each, so that they do not see one another): after 5 s
    the recorders name their topics, namespace and ROS_DOMAIN_ID; the player says it finds no
    subscriber."""
    bag = tmp_path / "bag"
    write_ros2_layout_bag(bag, seconds=1.0)
    commands = {
        "bag_record": _tool("omni_ros.tools.bags", "record", str(tmp_path / "rec"),
                            "--namespace", "ghost_bag_record", "--duration-sec", "7"),
        "bag_play": _tool("omni_ros.tools.bags", "play", str(bag), "--namespace",
                          "ghost_bag_play", "--wait-sec", "7"),
        "recorder": _tool("omni_ros.tools.recorder", "--namespace", "ghost_recorder",
                          "--wait-sec", "7"),
    }
    running = {name: subprocess.Popen(command, env=ros_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=REPO)
               for name, command in commands.items()}
    outputs = {name: process.communicate(timeout=60) for name, process in running.items()}
    domain = ros_env["ROS_DOMAIN_ID"]
    for name, (out, err) in outputs.items():
        peers = "subscriber" if name == "bag_play" else "publisher"
        hint = [line for line in err.splitlines() if f"no {peers} on" in line]
        assert len(hint) == 1, f"{name}: {out}{err}"
        assert f"/ghost_{name}/" in hint[0] and f"namespace /ghost_{name}" in hint[0], hint[0]
        assert f"ROS_DOMAIN_ID {domain}" in hint[0], hint[0]
        assert "Traceback" not in err, err
    assert "/ghost_bag_play/mic/audio_stamped" in outputs["bag_play"][1]
    assert running["bag_play"].returncode == 1     # nobody to play to
    assert running["bag_record"].returncode == 0 and (tmp_path / "rec" / "metadata.yaml").exists()
