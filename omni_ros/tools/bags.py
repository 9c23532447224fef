"""rosbag2 record, replay and report for omni_ros, without a ROS install (the `rosbags` library).

    omni_ros_bag_record OUT [--namespace NS] [--duration-sec S] [--storage mcap|sqlite3]
    omni_ros_bag_play BAG [--rate R] [--namespace NS]
    omni_ros_bag_report BAG [--output DIR]

`omni_ros_bag_record` subscribes, as an rclpy node over DDS, to the graph's inputs (camera raw and
compressed, microphone audio and its format) and outputs (ticks, states, text, alerts, speech and
its format, /diagnostics) and writes every message as received (serialized CDR, never decoded)
to a rosbag2 folder with rosbags' writer: MCAP by default, as `ros2 bag record` since Jazzy, so
the bag opens in Foxglove and `ros2 bag` alike. Each topic carries its type's full definition
(omni_ros's own messages included, from their .msg files) so other tools can decode it.

`omni_ros_bag_play` publishes the recorded inputs and `/clock`, for a graph on sim time
(`omni_ros_bringup --use-sim-time`). Replay is deterministic: `/clock` starts at the first
recorded window's start and stops half a window after the last one's end (the same windows as
the recorded run), each input goes out `--lead-sec` of sim time before its recorded time (so all of
a window's data is in before the clock closes the window), and the clock advances smoothly at
`--rate` times real time. Bags recorded by `ros2 bag record` with a ROS install play the same way:
inputs are found by topic name (camera/image_raw, mic/audio_stamped, ..., in any namespace) or,
failing that, by type.

`omni_ros_bag_report` prints the run summary of a recorded session as `omni_ros_recorder` does for
a live one, and draws its timeline.png.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

NS_PER_S = 1_000_000_000
DEFAULT_LEAD_SEC = 0.2
CLOCK_PERIOD_SEC = 0.01       # /clock published at 100 Hz, as `ros2 bag play --clock`
START_HOLD_SEC = 1.0          # /clock held at the start so both nodes have heard it
PROGRESS_EVERY = 1000


class BagError(Exception):
    """A bag that cannot be read, written or played; the message is the one line to print."""


# -- topics ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicSpec:
    name: str        # relative to the graph's namespace ("/diagnostics" is absolute)
    kind: str        # "input" or "output"
    qos: str         # attribute of omni_ros.ros.qos


def topic_specs() -> List[Tuple[TopicSpec, type]]:
    """(topic, rclpy message type) for everything the recorder records, in this environment's
    audio_common_msgs flavour."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CompressedImage, Image

    from omni_ros.msg import BargeIn, DuplexState, FlowTick, OmniText, ProactiveAlert
    from omni_ros.ros import audio_flavours

    specs = [(TopicSpec("camera/image_raw", "input", "CAMERA"), Image),
             (TopicSpec("camera/image_raw/compressed", "input", "CAMERA"), CompressedImage),
             (TopicSpec("mic/audio_stamped", "input", "MIC_AUDIO"), audio_flavours.MIC_TYPE)]
    if audio_flavours.MIC_INFO_TYPE is not None:
        specs.append((TopicSpec("mic/audio_info", "input", "AUDIO_INFO"),
                      audio_flavours.MIC_INFO_TYPE))
    specs += [(TopicSpec("omni_flow/tick", "output", "TICK"), FlowTick),
              (TopicSpec("omni/state", "output", "OUTPUT"), DuplexState),
              (TopicSpec("omni/text", "output", "OUTPUT"), OmniText),
              (TopicSpec("omni/alerts", "output", "OUTPUT"), ProactiveAlert),
              (TopicSpec("omni/barge_in", "output", "OUTPUT"), BargeIn),
              (TopicSpec("speech/audio_stamped", "output", "SPEECH"),
               audio_flavours.SPEECH_STAMPED_TYPE),
              (TopicSpec("speech/audio_info", "output", "AUDIO_INFO"), audio_flavours.AudioInfo),
              (TopicSpec("/diagnostics", "output", "OUTPUT"), DiagnosticArray)]
    return specs


INPUT_NAMES = ("camera/image_raw", "camera/image_raw/compressed", "mic/audio_stamped",
               "mic/audio_info")
INPUT_TYPES = {  # the type of each input, in either audio_common_msgs flavour
    "camera/image_raw": ("sensor_msgs/msg/Image",),
    "camera/image_raw/compressed": ("sensor_msgs/msg/CompressedImage",),
    "mic/audio_stamped": ("audio_common_msgs/msg/AudioDataStamped",
                          "audio_common_msgs/msg/AudioStamped"),
    "mic/audio_info": ("audio_common_msgs/msg/AudioInfo",),
}


def type_name(message_type: type) -> str:
    """An rclpy message class -> 'pkg/msg/Name'."""
    return f"{message_type.__module__.split('.')[0]}/msg/{message_type.__name__}"


def import_type(name: str) -> type:
    """'pkg/msg/Name' -> the rclpy message class; BagError when this environment lacks it."""
    parts = name.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        raise BagError(f"unknown message type {name!r} (expected pkg/msg/Name)")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.msg"), parts[2])
    except (ImportError, AttributeError):
        from omni_ros.ros import audio_flavours
        hint = (f" (this environment has the {audio_flavours.FLAVOUR} flavour of "
                f"audio_common_msgs: see the README, Audio message flavours)"
                if parts[0] == "audio_common_msgs" else "")
        raise BagError(f"message type {name} is not available in this environment{hint}") \
            from None


# -- message definitions ---------------------------------------------------------------------------
def _definition_roots() -> List[Path]:
    roots = [Path(p) / "share" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
             if p]
    roots.append(Path(sys.prefix) / "share")
    return roots


def _find_msg_file(name: str) -> Optional[Path]:
    package, _, message = name.split("/")
    for root in _definition_roots():
        candidate = root / package / "msg" / f"{message}.msg"
        if candidate.is_file():
            return candidate
    if package == "omni_ros":   # a source checkout that has not been built yet
        candidate = Path(__file__).resolve().parents[2] / "msg" / f"{message}.msg"
        if candidate.is_file():
            return candidate
    return None


def typestore_for(names: Sequence[str]):
    """A rosbags typestore (ROS 2 kilted's standard types) that knows every type in `names` and
    what they contain, the others read from their installed .msg files."""
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    store = get_typestore(Stores.ROS2_KILTED)
    pending = list(names)
    seen = set()
    while pending:
        name = pending.pop()
        if name in seen or name in store.fielddefs:
            continue
        seen.add(name)
        path = _find_msg_file(name)
        if path is None:
            raise BagError(f"no definition of {name} found (looked for "
                           f"share/{name}.msg under AMENT_PREFIX_PATH and {sys.prefix})")
        types = get_types_from_msg(path.read_text(), name)
        store.register(types)
        for _, fields in types.values():
            for _, (node_kind, detail) in fields:
                for ref in _type_refs(node_kind, detail):
                    if ref not in store.fielddefs:
                        pending.append(ref)
    return store


def _type_refs(node_kind, detail) -> Iterator[str]:
    """Names of message types a rosbags field refers to (nested, arrays, sequences)."""
    from rosbags.typesys.base import Nodetype
    if node_kind == Nodetype.NAME:
        yield detail
    elif node_kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        yield from _type_refs(*detail[0])


def rosbags_qos(profile):
    """An rclpy QoSProfile as the rosbags Qos a bag's metadata holds."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)
    return Qos(history=QosHistory(int(profile.history)), depth=int(profile.depth),
               reliability=QosReliability(int(profile.reliability)),
               durability=QosDurability(int(profile.durability)),
               deadline=QosTime(0, 0), lifespan=QosTime(0, 0),
               liveliness=QosLiveliness(int(profile.liveliness)),
               liveliness_lease_duration=QosTime(0, 0), avoid_ros_namespace_conventions=False)


# -- reading ---------------------------------------------------------------------------------------
def open_bag(path: str):
    """An open rosbags Reader; BagError (one line) for a missing, unreadable or corrupt bag."""
    from rosbags.rosbag2 import Reader

    folder = Path(path)
    if not folder.exists():
        raise BagError(f"no bag at {path}")
    if folder.is_file():   # a bare .mcap / .db3 file: rosbags reads bag folders
        raise BagError(f"{path} is a file; give the bag's folder (the one holding metadata.yaml)")
    try:
        reader = Reader(folder)
        reader.open()
    except Exception as error:  # noqa: BLE001 - rosbags raises several kinds for a bad bag
        raise BagError(f"cannot read the bag at {path}: {_one_line(error)}") from None
    return reader


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]


def read_messages(reader, connections) -> Iterator[Tuple[object, int, bytes]]:
    """(connection, log time ns, CDR bytes) in log-time order; BagError if the data is corrupt."""
    try:
        yield from reader.messages(connections=connections)
    except BagError:
        raise
    except Exception as error:  # noqa: BLE001
        raise BagError(f"the bag's data cannot be read: {_one_line(error)}") from None


def relative_topic(topic: str, names: Sequence[str]) -> Optional[str]:
    """The relative name in `names` that `topic` ends with, the longest match ('/r1/mic/audio_info'
    -> 'mic/audio_info'), or None."""
    stripped = topic.strip("/")
    for name in sorted(names, key=len, reverse=True):
        if stripped == name or stripped.endswith("/" + name):
            return name
    return None


def map_inputs(connections) -> Dict[str, object]:
    """Relative input name -> the bag's connection: by topic name, else by type when exactly one
    topic of the bag has that input's type (a bag with the camera on /camera/color/image_raw)."""
    found: Dict[str, object] = {}
    for connection in connections:
        name = relative_topic(connection.topic, INPUT_NAMES)
        if name is not None and connection.msgtype in INPUT_TYPES[name] and name not in found:
            found[name] = connection
    for name, types in INPUT_TYPES.items():
        if name in found:
            continue
        candidates = [c for c in connections if c.msgtype in types
                      and c not in found.values()]
        if len(candidates) == 1:
            found[name] = candidates[0]
    return found


def find_output(connections, name: str):
    for connection in connections:
        if relative_topic(connection.topic, (name,)) == name:
            return connection
    return None


# -- record ----------------------------------------------------------------------------------------
STORAGES = ("mcap", "sqlite3")


def make_recorder(options):
    from rclpy.node import Node

    from omni_ros.ros import qos
    from omni_ros.tools.graph_hint import GraphWatch, normalize_namespace

    class BagRecorder(Node):
        """Writes every message of the recorded topics, as received, to the bag."""

        def __init__(self, writer, store) -> None:
            super().__init__("omni_bag_recorder",
                             namespace=normalize_namespace(options.namespace) or None)
            self.writer = writer
            self.counts: Dict[str, int] = {}
            self.bytes_written = 0
            self.first_ns: Optional[int] = None
            self.last_ns: Optional[int] = None
            for spec, message_type in topic_specs():
                profile = getattr(qos, spec.qos)
                topic = self.resolve_topic_name(spec.name)
                connection = writer.add_connection(
                    topic, type_name(message_type), typestore=store,
                    offered_qos_profiles=[rosbags_qos(profile)])
                self.counts[topic] = 0
                self.create_subscription(message_type, spec.name,
                                         self._writer_for(connection, topic), profile, raw=True)
            self.watch = GraphWatch(self, [s.name for s, _ in topic_specs()], "omni_ros_bag_record")

        def _writer_for(self, connection, topic):
            def write(raw: bytes) -> None:
                now = self.get_clock().now().nanoseconds
                self.writer.write(connection, now, raw)
                self.counts[topic] += 1
                self.bytes_written += len(raw)
                self.first_ns = now if self.first_ns is None else self.first_ns
                self.last_ns = now
            return write

    return BagRecorder


def record_main(argv: Optional[Sequence[str]] = None) -> int:
    from omni_ros.ros.runner import split_ros_args
    from omni_ros.tools.graph_hint import add_namespace_argument

    own, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="omni_ros_bag_record",
        description="Record omni_ros's inputs and outputs to a rosbag2 folder (no ROS install "
                    "needed).")
    parser.add_argument("output", metavar="OUT", help="bag folder to create (must not exist)")
    add_namespace_argument(parser)
    parser.add_argument("--duration-sec", type=float, default=None,
                        help="stop after this long (default: until Ctrl-C or SIGTERM)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap",
                        help="mcap (default, as ros2 bag since Jazzy) or sqlite3")
    options = parser.parse_args(own)
    try:
        return _record(options, ros_args)
    except BagError as error:
        print(f"[omni_ros_bag_record] {error}", file=sys.stderr)
        return 1


def _record(options, ros_args) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

    output = Path(options.output)
    if output.exists():
        raise BagError(f"{output} exists already; give a new folder")
    if not output.parent.is_dir():
        raise BagError(f"no folder {output.parent} to create the bag in")
    store = typestore_for([type_name(t) for _, t in topic_specs()])
    plugin = StoragePlugin.MCAP if options.storage == "mcap" else StoragePlugin.SQLITE3
    stop = {"requested": False}

    def request_stop(*_):
        stop["requested"] = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(args=[sys.argv[0], *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    writer = Writer(output, version=9, storage_plugin=plugin)
    recorder = None
    try:
        writer.open()
        recorder = make_recorder(options)(writer, store)
        print(f"[omni_ros_bag_record] recording {len(recorder.counts)} topics in namespace "
              f"{recorder.get_namespace()} to {output} ({options.storage})", flush=True)
        started = time.monotonic()
        while rclpy.ok() and not stop["requested"]:
            rclpy.spin_once(recorder, timeout_sec=0.05)
            recorder.watch.poll()
            if options.duration_sec is not None and \
                    time.monotonic() - started >= options.duration_sec:
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (OSError, WriterError) as error:   # disk full, folder removed under it
        raise BagError(f"writing {output} failed: {_one_line(error)}") from None
    finally:
        try:
            writer.close()
        except Exception as error:  # noqa: BLE001 - the bag may be incomplete; say so once
            print(f"[omni_ros_bag_record] closing {output} failed: {_one_line(error)}",
                  file=sys.stderr)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if recorder is not None:
            recorder.destroy_node()
        rclpy.try_shutdown()
    total = sum(recorder.counts.values()) if recorder else 0
    span = ((recorder.last_ns - recorder.first_ns) / NS_PER_S
            if recorder and recorder.first_ns is not None else 0.0)
    busy = ", ".join(f"{t} {n}" for t, n in recorder.counts.items() if n) if recorder else ""
    print(f"[omni_ros_bag_record] wrote {total} messages over {span:.1f} s to {output}"
          f"{': ' + busy if busy else ''}", flush=True)
    return 0


# -- play ------------------------------------------------------------------------------------------
@dataclass
class PlayPlan:
    inputs: Dict[str, object]      # relative input name -> connection
    start_ns: int                  # /clock starts here (a window's start)...
    end_ns: int                    # ...and stops here (half a window after the last one's end)
    window_ns: int
    first_window: int
    last_window: int
    source: str                    # where the span came from, for the start line


def plan_replay(reader, window_sec: Optional[float]) -> PlayPlan:
    """The windows to replay: those of the recorded states (else ticks, else the inputs' span),
    with the window length of the recorded ticks (else `window_sec`, else 1 s)."""
    from rclpy.serialization import deserialize_message

    connections = list(reader.connections)
    inputs = map_inputs(connections)
    if not any(name in inputs for name in ("camera/image_raw", "camera/image_raw/compressed",
                                           "mic/audio_stamped")):
        listed = ", ".join(f"{c.topic} ({c.msgtype})" for c in connections) or "none"
        raise BagError(f"the bag has no camera or microphone input to play (looked for "
                       f"camera/image_raw, camera/image_raw/compressed, mic/audio_stamped by name "
                       f"and type); its topics: {listed}")
    window_ns = None
    tick = find_output(connections, "omni_flow/tick")
    if tick is not None and tick.msgtype == "omni_ros/msg/FlowTick":
        from omni_ros.msg import FlowTick
        for _, _, raw in read_messages(reader, [tick]):
            message = deserialize_message(raw, FlowTick)
            window_ns = _ns(message.end) - _ns(message.start)
            break
    if window_sec is not None:
        window_ns = int(round(window_sec * NS_PER_S))
    window_ns = window_ns or NS_PER_S
    windows: List[int] = []
    state = find_output(connections, "omni/state")
    source = "recorded states"
    if state is not None and state.msgtype == "omni_ros/msg/DuplexState":
        from omni_ros.msg import DuplexState
        windows = [int(deserialize_message(raw, DuplexState).window_index)
                   for _, _, raw in read_messages(reader, [state])]
    if not windows and tick is not None and tick.msgtype == "omni_ros/msg/FlowTick":
        from omni_ros.msg import FlowTick
        source = "recorded ticks"
        windows = [int(deserialize_message(raw, FlowTick).index)
                   for _, _, raw in read_messages(reader, [tick])]
    if not windows:
        source = "the inputs' span"
        low = high = None
        for _, stamp, _ in read_messages(reader, list(inputs.values())):   # streamed
            low = stamp if low is None else min(low, stamp)
            high = stamp if high is None else max(high, stamp)
        if low is None:
            raise BagError("the bag's input topics hold no messages")
        windows = [low // window_ns, high // window_ns]
    first, last = min(windows), max(windows)
    return PlayPlan(inputs, first * window_ns, (last + 1) * window_ns + window_ns // 2, window_ns,
                    first, last, source)


def _ns(stamp) -> int:
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def make_player(options, plan: PlayPlan):
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock

    from omni_ros.ros import qos
    from omni_ros.tools.graph_hint import GraphWatch, normalize_namespace

    qos_of = {"camera/image_raw": qos.CAMERA, "camera/image_raw/compressed": qos.CAMERA,
              "mic/audio_stamped": qos.MIC_AUDIO, "mic/audio_info": qos.AUDIO_INFO}

    class BagPlayer(Node):
        def __init__(self) -> None:
            super().__init__("omni_bag_player",
                             namespace=normalize_namespace(options.namespace) or None)
            self.out = {}
            for name, connection in plan.inputs.items():
                self.out[connection.id] = self.create_publisher(import_type(connection.msgtype),
                                                                name, qos_of[name])
            self.clock_out = self.create_publisher(
                Clock, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
            self.watch = GraphWatch(self, list(plan.inputs), "omni_ros_bag_play",
                                    peers="subscriber")

        def publish_clock(self, now_ns: int) -> None:
            message = Clock()
            message.clock.sec, message.clock.nanosec = divmod(int(now_ns), NS_PER_S)
            self.clock_out.publish(message)

        def graph_ready(self) -> bool:
            """omni_node takes the bag's inputs (the camera and microphone in it)."""
            needed = [n for n in ("camera/image_raw", "mic/audio_stamped") if n in plan.inputs] \
                or list(plan.inputs)
            return all(self.count_subscribers(self.resolve_topic_name(n)) > 0 for n in needed)

    return BagPlayer


def play_main(argv: Optional[Sequence[str]] = None) -> int:
    from omni_ros.ros.runner import split_ros_args
    from omni_ros.tools.graph_hint import add_namespace_argument

    own, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="omni_ros_bag_play",
        description="Publish a bag's camera and microphone with /clock, for a graph on sim time "
                    "(omni_ros_bringup --use-sim-time).")
    parser.add_argument("bag", metavar="BAG", help="rosbag2 folder (mcap or sqlite3)")
    parser.add_argument("--rate", type=float, default=1.0, help="sim time per real time")
    add_namespace_argument(parser)
    parser.add_argument("--window-sec", type=float, default=None,
                        help="window length of the graph (default: the recorded ticks', else 1)")
    parser.add_argument("--lead-sec", type=float, default=DEFAULT_LEAD_SEC,
                        help="inputs go out this much sim time before their recorded time")
    parser.add_argument("--wait-sec", type=float, default=120.0,
                        help="how long to wait for omni_node's subscriptions")
    parser.add_argument("--hold-sec", type=float, default=2.5,
                        help="keep /clock at its end this long (wall) so the last speech plays out")
    options = parser.parse_args(own)
    if not options.rate > 0:
        parser.error("--rate must be positive")
    from rclpy.executors import ExternalShutdownException
    try:
        return _play(options, ros_args)
    except BagError as error:
        print(f"[omni_ros_bag_play] {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0


def _play(options, ros_args) -> int:
    import rclpy

    reader = open_bag(options.bag)
    try:
        plan = plan_replay(reader, options.window_sec)
        for connection in plan.inputs.values():
            import_type(connection.msgtype)   # fail before waiting for the graph
        rclpy.init(args=[sys.argv[0], *ros_args])
        player = make_player(options, plan)()
        try:
            return _run_player(player, reader, plan, options)
        finally:
            player.destroy_node()
            rclpy.try_shutdown()
    finally:
        reader.close()


def _run_player(player, reader, plan: PlayPlan, options) -> int:
    import rclpy

    prog = "[omni_ros_bag_play]"
    deadline = time.monotonic() + options.wait_sec
    while not player.graph_ready():
        player.watch.poll()
        rclpy.spin_once(player, timeout_sec=0.1)
        if time.monotonic() > deadline:
            print(f"{prog} nobody subscribes to {', '.join(player.watch.topics)} after "
                  f"{options.wait_sec:.0f} s; is omni_node running (omni_ros_bringup "
                  f"--use-sim-time)?", file=sys.stderr)
            return 1
    if player.count_subscribers("/clock") == 0:
        print(f"{prog} no node subscribes to /clock: start the graph on sim time "
              f"(omni_ros_bringup --use-sim-time), or its windows will not follow the bag",
              file=sys.stderr)
    window_sec = plan.window_ns / NS_PER_S
    mapping = ", ".join(f"{c.topic} -> {player.resolve_topic_name(n)}"
                        for n, c in plan.inputs.items())
    print(f"{prog} playing windows {plan.first_window}..{plan.last_window} "
          f"({plan.last_window - plan.first_window + 1} of {window_sec:.3f} s, from the "
          f"{plan.source}) at rate {options.rate:g}: {mapping}", flush=True)
    lead_ns = int(round(options.lead_sec * NS_PER_S))
    messages = read_messages(reader, list(plan.inputs.values()))
    pending = next(messages, None)
    sent: Dict[str, int] = {}
    topic_of = {c.id: n for n, c in plan.inputs.items()}

    def publish_due(now_ns: int) -> None:
        nonlocal pending
        while pending is not None and pending[1] - lead_ns <= now_ns:
            connection, stamp, raw = pending
            if stamp <= plan.end_ns:
                player.out[connection.id].publish(bytes(raw))
                name = topic_of[connection.id]
                sent[name] = sent.get(name, 0) + 1
            pending = next(messages, None)

    # the start: inputs due by then, and /clock held so both nodes hear it before it moves
    held_until = time.monotonic() + START_HOLD_SEC
    publish_due(plan.start_ns)
    while time.monotonic() < held_until:
        player.publish_clock(plan.start_ns)
        time.sleep(CLOCK_PERIOD_SEC)
    wall0 = time.monotonic()
    now_ns = plan.start_ns
    while now_ns < plan.end_ns and rclpy.ok():
        now_ns = min(plan.end_ns, plan.start_ns + int((time.monotonic() - wall0) * options.rate
                                                      * NS_PER_S))
        publish_due(now_ns)            # inputs before the clock that may close their window
        player.publish_clock(now_ns)
        time.sleep(CLOCK_PERIOD_SEC)
    held_until = time.monotonic() + options.hold_sec
    while time.monotonic() < held_until and rclpy.ok():
        player.publish_clock(plan.end_ns)
        time.sleep(CLOCK_PERIOD_SEC)
    counts = ", ".join(f"{n} {k}" for n, k in sent.items()) or "nothing"
    print(f"{prog} done: {counts}", flush=True)
    return 0


# -- report ----------------------------------------------------------------------------------------
def report_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omni_ros_bag_report",
        description="The run summary and timeline.png of a recorded session.")
    parser.add_argument("bag", metavar="BAG", help="rosbag2 folder recorded by "
                        "omni_ros_bag_record (or ros2 bag record)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="folder for summary.json and timeline.png (default: the bag's)")
    parser.add_argument("--window-sec", type=float, default=None,
                        help="window length (default: the recorded ticks', else 1)")
    parser.add_argument("--no-timeline", action="store_true", help="print the summary only")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _report(options)
    except BagError as error:
        print(f"[omni_ros_bag_report] {error}", file=sys.stderr)
        return 1


def runlog_from_bag(reader, window_sec: Optional[float] = None):
    """A RunLog (the recorder's accumulation) filled from a bag's messages; (runlog, window s)."""
    from rclpy.serialization import deserialize_message

    from omni_ros.tools.recorder import RunLog

    connections = list(reader.connections)
    plan_window = None
    tick = find_output(connections, "omni_flow/tick")
    if window_sec is None and tick is not None and tick.msgtype == "omni_ros/msg/FlowTick":
        from omni_ros.msg import FlowTick
        for _, _, raw in read_messages(reader, [tick]):
            message = deserialize_message(raw, FlowTick)
            plan_window = (_ns(message.end) - _ns(message.start)) / NS_PER_S
            break
    window_sec = window_sec or plan_window or 1.0
    runlog = RunLog(keep_speech=False, window_sec=window_sec)
    handlers = {}
    inputs = map_inputs(connections)
    for name, connection in inputs.items():
        if name == "camera/image_raw":
            handlers[connection.id] = (None, runlog.on_frame)
        elif name == "mic/audio_stamped":
            handlers[connection.id] = (connection.msgtype, runlog.on_mic)
        elif name == "mic/audio_info":
            handlers[connection.id] = (connection.msgtype, runlog.on_mic_info)
    outputs = {"omni/state": runlog.on_state, "omni/text": runlog.on_text,
               "omni/alerts": runlog.on_alert, "speech/audio_stamped": runlog.on_speech,
               "speech/audio_info": runlog.on_speech_info}
    for name, handler in outputs.items():
        connection = find_output(connections, name)
        if connection is not None:
            handlers[connection.id] = (connection.msgtype, handler)
    if not any(find_output(connections, n) for n in ("omni/state", "omni/text")):
        listed = ", ".join(c.topic for c in connections) or "none"
        raise BagError(f"the bag holds no omni/state or omni/text: it is not a recording of "
                       f"omni_node's outputs (its topics: {listed}); record with "
                       f"omni_ros_bag_record")
    types = {}
    for msgtype, _ in handlers.values():
        if msgtype is not None and msgtype not in types:
            types[msgtype] = import_type(msgtype)
    chosen = [c for c in connections if c.id in handlers]
    for connection, _, raw in read_messages(reader, chosen):
        msgtype, handler = handlers[connection.id]
        if msgtype is None:
            handler(bytes(raw))
            continue
        try:
            message = deserialize_message(bytes(raw), types[msgtype])
        except Exception as error:  # noqa: BLE001
            raise BagError(f"a {msgtype} message on {connection.topic} cannot be decoded: "
                           f"{_one_line(error)}") from None
        handler(message)
    return runlog, window_sec


def _report(options) -> int:
    from omni_ros.tools.recorder import format_summary
    from omni_ros.tools.timeline_png import draw_timeline

    reader = open_bag(options.bag)
    try:
        runlog, window_sec = runlog_from_bag(reader, options.window_sec)
    finally:
        reader.close()
    summary = runlog.summary()
    print(format_summary(summary, window_sec), flush=True)
    folder = Path(options.output) if options.output else Path(options.bag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
        if not options.no_timeline:
            path = draw_timeline(runlog, str(folder / "timeline.png"))
            print(f"[omni_ros_bag_report] timeline in {path}", flush=True)
    except OSError as error:
        raise BagError(f"cannot write the report to {folder}: {error}") from None
    return 0


if __name__ == "__main__":   # python -m omni_ros.tools.bags record|play|report ...
    commands = {"record": record_main, "play": play_main, "report": report_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: python -m omni_ros.tools.bags record|play|report ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
