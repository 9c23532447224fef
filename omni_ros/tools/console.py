"""omni_ros_console: follow omni/alerts, omni/state, omni/text and omni_node's /diagnostics live,
readably, for operators.

One line per event: time, level, what happened. Times are relative to the session start (the
first message this console saw, `+MM:SS.mmm`, sim time honoured as the stamps are) or, with
`--time wall`, the wall time of the stamps (local, `--utc`). Alerts show their text, confidence,
how old the camera frame they were based on is, and the standing instruction in force; the
duplex state is shown when it changes (`--all-states`: a line for every window); the text of a
spoken turn is shown once the turn completes; a WARN or ERROR diagnostic status of the node
(camera, microphone, model, speech) is shown when it starts or changes, and once more when it is
OK again. Colour (ANSI) only on a terminal, never with --no-color or NO_COLOR set.
`--alert-log FILE` also appends every alert (whatever --min-level says) as a JSON line to FILE,
rotated by size, each alert once across restarts.

omni/alerts is transient local: a console that starts late or restarts first gets the alerts
omni_node kept (its `alert_history`). A console that hears no publisher within 5 s says which
namespace and ROS_DOMAIN_ID it is listening on.

    omni_ros_console [--namespace r1] [--min-level WARN] [--time wall] [--alert-log alerts.jsonl]

The rendering below (ConsoleView and the render_* functions) is plain Python on plain fields, so
it is tested without ROS; ConsoleNode only turns messages into those fields.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, TextIO

from omni_ros.tools.graph_hint import (GraphWatch, add_namespace_argument, domain_id,
                                       normalize_namespace)

LEVELS = ("INFO", "WARN", "ERROR")          # ProactiveAlert.INFO / WARN / ERROR = 0 / 1 / 2
STATES = ("LISTENING", "SPEAKING", "INTERRUPTED")   # DuplexState constants 0 / 1 / 2

RESET = "\033[0m"
DIM = "\033[2m"
BOLD = "\033[1m"
LEVEL_COLOURS = {"INFO": "\033[36m", "WARN": "\033[1;33m", "ERROR": "\033[1;31m"}
STATE_COLOURS = {"LISTENING": "\033[32m", "SPEAKING": "\033[35m", "INTERRUPTED": "\033[33m"}
TEXT_WIDTH = 400   # longest text shown on one line (the alert log keeps it whole)


@dataclass(frozen=True)
class AlertFields:
    stamp_ns: int
    window_index: int
    level: int
    text: str
    instruction: str
    confidence: float
    evidence_stamp_ns: int = 0


@dataclass(frozen=True)
class StateFields:
    stamp_ns: int
    window_index: int
    state: int
    end_of_turn: bool
    proactive: bool
    speak_probability: float
    compute_ms: float


@dataclass(frozen=True)
class TextFields:
    stamp_ns: int
    window_index: int
    text: str
    end_of_turn: bool


@dataclass(frozen=True)
class HealthFields:
    stamp_ns: int
    concern: str          # camera, microphone, model, speech
    level: int            # DiagnosticStatus OK / WARN / ERROR = 0 / 1 / 2
    message: str


LEVEL_ALIASES = {"WARNING": "WARN"}
TIME_MODES = ("relative", "wall")
ALERT_SUBSCRIPTION_DEPTH = 1000   # omni_node's largest alert_history: a late joiner loses none


def parse_level(text: str) -> str:
    """INFO, WARN or ERROR from a name as people write it (any case, WARNING for WARN)."""
    name = str(text).strip().upper()
    name = LEVEL_ALIASES.get(name, name)
    if name not in LEVELS:
        raise ValueError(f"level {text!r} is not one of INFO, WARN (or WARNING), ERROR")
    return name


def level_name(level: int) -> str:
    return LEVELS[level] if 0 <= level < len(LEVELS) else f"LEVEL{level}"


def state_name(state: int) -> str:
    return STATES[state] if 0 <= state < len(STATES) else f"STATE{state}"


def format_time(stamp_ns: int, utc: bool = False) -> str:
    """HH:MM:SS.mmm of a ROS stamp (local time unless utc)."""
    seconds = stamp_ns / 1e9
    zone = datetime.timezone.utc if utc else None
    moment = datetime.datetime.fromtimestamp(seconds, tz=zone)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_relative(stamp_ns: int, origin_ns: int) -> str:
    """+MM:SS.mmm (+H:MM:SS.mmm from an hour on) of a stamp after `origin_ns`; - before it."""
    offset_ms = (int(stamp_ns) - int(origin_ns)) // 1_000_000 if stamp_ns >= origin_ns \
        else -((int(origin_ns) - int(stamp_ns)) // 1_000_000)
    sign = "-" if offset_ms < 0 else "+"
    minutes, ms = divmod(abs(offset_ms), 60_000)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}:{minutes:02d}" if hours else f"{minutes:02d}"
    return f"{sign}{clock}:{ms // 1000:02d}.{ms % 1000:03d}"


def format_age(age_ns: int) -> str:
    """How old something is, in words fit for a line: 0.40 s, 12.3 s, 3 min 5 s."""
    seconds = age_ns / 1e9
    if abs(seconds) < 10:
        return f"{seconds:.2f} s"
    if abs(seconds) < 120:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


class Clock:
    """How a stamp is shown: relative to the first stamp seen (the session start), or wall time."""

    def __init__(self, mode: str = "relative", utc: bool = False) -> None:
        if mode not in TIME_MODES:
            raise ValueError(f"time mode {mode!r} is not one of {', '.join(TIME_MODES)}")
        self.mode, self.utc = mode, utc
        self.origin_ns: Optional[int] = None

    def __call__(self, stamp_ns: int) -> str:
        if self.mode == "wall":
            return format_time(stamp_ns, self.utc)
        if self.origin_ns is None:
            self.origin_ns = int(stamp_ns)
        return format_relative(stamp_ns, self.origin_ns)


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{RESET}" if color and code else text


def _shorten(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _wall(utc: bool):
    return lambda stamp_ns: format_time(stamp_ns, utc)


def _prefix(stamp_ns: int, level: str, color: bool, clock) -> str:
    return (f"{_paint(clock(stamp_ns), DIM, color)}  "
            f"{_paint(f'{level:<5}', LEVEL_COLOURS.get(level, ''), color)}")


def render_alert(alert: AlertFields, color: bool = False, clock=None) -> List[str]:
    """The lines of one proactive alert: the alert with its confidence and the age of the camera
    frame it was based on (alert stamp minus evidence stamp), then the instruction in force."""
    clock = clock or _wall(False)
    level = level_name(alert.level)
    text = _paint(repr(_shorten(alert.text)), BOLD, color)
    evidence = (f"evidence frame {format_age(alert.stamp_ns - alert.evidence_stamp_ns)} old"
                if alert.evidence_stamp_ns else "no camera frame")
    lines = [f"{_prefix(alert.stamp_ns, level, color, clock)}  ALERT  {text}  "
             f"(confidence {alert.confidence:.2f}, {evidence})"]
    instruction = _shorten(alert.instruction) if alert.instruction else "(none)"
    lines.append(f"    instruction: {instruction}")
    return lines


def render_state(state: StateFields, previous: Optional[int], color: bool = False,
                 clock=None) -> List[str]:
    """One line for a state: `A -> B` when it changed, the state alone otherwise (the first one
    seen, or every window with --all-states)."""
    clock = clock or _wall(False)
    name = state_name(state.state)
    shown = _paint(name, STATE_COLOURS.get(name, ""), color)
    changed = previous is not None and previous != state.state
    change = f"{state_name(previous)} -> {shown}" if changed else shown
    details = [f"p(speak) {state.speak_probability:.2f}", f"compute {state.compute_ms:.0f} ms"]
    if state.proactive:
        details.insert(0, "proactive")
    if state.end_of_turn:
        details.append("end of turn")
    return [f"{_prefix(state.stamp_ns, 'INFO', color, clock)}  state  "
            f"{change}  ({', '.join(details)})"]


def render_turn(stamp_ns: int, windows: int, text: str, complete: bool = True,
                color: bool = False, clock=None, ending: Optional[str] = None) -> List[str]:
    """One line for the text of a spoken turn, with how many windows it took."""
    clock = clock or _wall(False)
    span = f"{windows} windows" if windows != 1 else "1 window"
    if ending is None:
        ending = "" if complete else ", interrupted"
    return [f"{_prefix(stamp_ns, 'INFO', color, clock)}  said   "
            f"{repr(_shorten(text))}  ({span}{ending})"]


def render_health(health: HealthFields, color: bool = False, clock=None) -> List[str]:
    """One line for a diagnostic status of the node."""
    clock = clock or _wall(False)
    level = "INFO" if health.level == 0 else level_name(health.level)
    message = "ok again" if health.level == 0 else _shorten(health.message)
    return [f"{_prefix(health.stamp_ns, level, color, clock)}  {health.concern}: {message}"]


MAX_CONCERNS = 16   # statuses followed at once (the node has four)


class ConsoleView:
    """Turns a stream of alerts, states and texts into lines to show.

    It keeps only what rendering needs: the last state (changes are shown, not every window),
    the text of the turn in progress (shown when the turn ends, or when the model stops speaking
    without ending it), the last status of each concern, and the session start for relative
    times.
    """

    def __init__(self, min_level: str = "INFO", color: bool = False, utc: bool = False,
                 all_states: bool = False, time_mode: str = "relative") -> None:
        self.min_rank = LEVELS.index(parse_level(min_level))
        self.color, self.all_states = color, all_states
        self.clock = Clock(time_mode, utc)
        self.last_state: Optional[int] = None
        self.turn: List[TextFields] = []
        self.health: dict = {}      # concern -> (level, message) last shown

    def on_health(self, health: HealthFields) -> List[str]:
        """WARN and ERROR statuses when they start or change; OK once, after them."""
        previous = self.health.get(health.concern)
        current = (health.level, health.message if health.level else "")
        if current == previous or (previous is None and health.level == 0):
            return []
        if len(self.health) >= MAX_CONCERNS and health.concern not in self.health:
            return []
        self.health[health.concern] = current
        name = "INFO" if health.level == 0 else level_name(health.level)
        return render_health(health, self.color, self.clock) if self._shows(name) else []

    def _shows(self, level: str) -> bool:
        return LEVELS.index(level) >= self.min_rank if level in LEVELS else True

    def on_alert(self, alert: AlertFields) -> List[str]:
        if not self._shows(level_name(alert.level)):
            return []
        return render_alert(alert, self.color, self.clock)

    def on_state(self, state: StateFields) -> List[str]:
        lines: List[str] = []
        previous, self.last_state = self.last_state, state.state
        if self.turn and state.state != STATES.index("SPEAKING") \
                and state.window_index > self.turn[-1].window_index:
            lines += self._flush_turn(complete=False)
        if self._shows("INFO") and (self.all_states or previous != state.state):
            lines += render_state(state, previous, self.color, self.clock)
        return lines

    def on_text(self, text: TextFields) -> List[str]:
        if len(self.turn) >= MAX_TURN_PARTS:     # a turn that never ends: shown in parts
            lines = self._flush_turn(complete=False, ending=", continues")
        else:
            lines = []
        self.turn.append(text)
        if text.end_of_turn:
            lines += self._flush_turn(complete=True)
        return lines

    def _flush_turn(self, complete: bool, ending: Optional[str] = None) -> List[str]:
        turn, self.turn = self.turn, []
        words = "".join(part.text for part in turn).strip()
        if not self._shows("INFO") or not (words or complete):
            return []
        windows = turn[-1].window_index - turn[0].window_index + 1
        return render_turn(turn[-1].stamp_ns, windows, words, complete, self.color, self.clock,
                           ending)


MAX_TURN_PARTS = 64   # texts of one turn held before it is shown anyway (bounded memory)


def alert_record(alert: AlertFields, namespace: str = "/",
                 received_ns: Optional[int] = None) -> dict:
    """The alert log's JSON record of one alert."""
    stamp = datetime.datetime.fromtimestamp(alert.stamp_ns / 1e9, tz=datetime.timezone.utc)
    return {
        "stamp": stamp.isoformat(timespec="milliseconds"),
        "stamp_ns": alert.stamp_ns,
        "received_ns": time.time_ns() if received_ns is None else received_ns,
        "namespace": namespace,
        "window_index": alert.window_index,
        "level": level_name(alert.level),
        "text": alert.text,
        "instruction": alert.instruction,
        "confidence": round(float(alert.confidence), 4),
        "evidence_stamp_ns": alert.evidence_stamp_ns,
    }


def use_color(stream: TextIO, no_color: bool) -> bool:
    if no_color or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# -- ROS ----------------------------------------------------------------------------------------
def _make_node(namespace: str, view: ConsoleView, out: Optional[TextIO], alert_log=None,
               node_name: str = "omni_console", alerts_only: bool = False):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node

    from omni_ros.msg import DuplexState, OmniText, ProactiveAlert
    from omni_ros.ros import qos
    from omni_ros.ros.conversions import stamp_to_ns

    class ConsoleNode(Node):
        def __init__(self) -> None:
            super().__init__(node_name, namespace=namespace or "/")
            # transient local: the alerts omni_node kept come first (what a late start missed)
            self.create_subscription(ProactiveAlert, "omni/alerts", self.on_alert,
                                     qos.alerts(ALERT_SUBSCRIPTION_DEPTH))
            self.followed = ["omni/alerts"]
            if not alerts_only:
                self.create_subscription(DuplexState, "omni/state", self.on_state, qos.OUTPUT)
                self.create_subscription(OmniText, "omni/text", self.on_text, qos.OUTPUT)
                self.create_subscription(DiagnosticArray, "/diagnostics", self.on_diagnostics,
                                         qos.OUTPUT)
                self.followed += ["omni/state", "omni/text"]
            self.node_prefix = f"{self.get_namespace().rstrip('/')}/omni_node: "

        def show(self, lines: List[str]) -> None:
            if out is not None and lines:
                out.write("".join(line + "\n" for line in lines))
                out.flush()

        def on_alert(self, message) -> None:
            fields = AlertFields(stamp_to_ns(message.header.stamp), int(message.window_index),
                                 int(message.level), message.text, message.instruction,
                                 float(message.confidence), stamp_to_ns(message.evidence_stamp))
            if alert_log is not None:
                alert_log.write(alert_record(fields, self.get_namespace()))
            self.show(view.on_alert(fields))

        def on_state(self, message) -> None:
            self.show(view.on_state(StateFields(
                stamp_to_ns(message.header.stamp), int(message.window_index), int(message.state),
                bool(message.end_of_turn), bool(message.proactive),
                float(message.speak_probability), float(message.compute_ms))))

        def on_diagnostics(self, message) -> None:
            stamp = stamp_to_ns(message.header.stamp)
            for status in message.status:
                if status.name.startswith(self.node_prefix):
                    level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
                    self.show(view.on_health(HealthFields(
                        stamp, status.name[len(self.node_prefix):], level, status.message)))

        def on_text(self, message) -> None:
            self.show(view.on_text(TextFields(stamp_to_ns(message.header.stamp),
                                              int(message.window_index), message.text,
                                              bool(message.end_of_turn))))

    return ConsoleNode()


def _level_argument(text: str) -> str:
    try:
        return parse_level(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_alert_log_arguments(parser: argparse.ArgumentParser) -> None:
    from omni_ros.tools.alert_log import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES

    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, metavar="N",
                        help="rotate the alert log when it would exceed N bytes (10 MiB)")
    parser.add_argument("--backups", type=int, default=DEFAULT_BACKUPS, metavar="K",
                        help="rotated alert logs kept: FILE.1 .. FILE.K (5)")


def check_alert_log_arguments(parser: argparse.ArgumentParser, options) -> None:
    if options.max_bytes <= 0:
        parser.error(f"--max-bytes must be positive, got {options.max_bytes}")
    if options.backups < 1:
        parser.error(f"--backups must be at least 1, got {options.backups}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="omni_ros_console",
        description="Follow a graph's alerts, duplex state, speech text and omni_node's "
                    "diagnostics live, one readable line per event. Alerts omni_node kept "
                    "(alert_history) are shown first, so a late start misses none.",
        epilog="Says on standard error if no omni_node publishes in its namespace within 5 s.")
    add_namespace_argument(parser)
    parser.add_argument("--min-level", default="INFO", type=_level_argument,
                        metavar="{INFO,WARN,WARNING,ERROR}",
                        help="show only events of this level or higher (states and text are "
                             "INFO; the alert log records every alert anyway)")
    parser.add_argument("--time", default="relative", choices=TIME_MODES, dest="time_mode",
                        help="relative: +MM:SS.mmm since the first message seen (default); "
                             "wall: the stamps' clock time")
    parser.add_argument("--utc", action="store_true",
                        help="wall time in UTC (implies --time wall; default: local)")
    parser.add_argument("--no-color", action="store_true", help="no ANSI colour")
    parser.add_argument("--all-states", action="store_true",
                        help="a line for every window's state, not only for changes")
    parser.add_argument("--quiet", action="store_true",
                        help="show nothing (with --alert-log: only record alerts)")
    parser.add_argument("--alert-log", default=None, metavar="FILE",
                        help="append every alert as a JSON line to FILE (rotated by size; each "
                             "alert once, also across restarts)")
    add_alert_log_arguments(parser)
    parser.add_argument("--duration-sec", type=float, default=None, metavar="S",
                        help="stop after S seconds (default: until Ctrl-C)")
    options = parser.parse_args(argv)
    check_alert_log_arguments(parser, options)
    if options.utc:
        options.time_mode = "wall"
    return options


def follow(prog: str, namespace: str, view: Optional[ConsoleView], out: Optional[TextIO],
           ros_args: Sequence[str], alert_log=None, duration_sec: Optional[float] = None,
           node_name: Optional[str] = None, alerts_only: bool = False,
           announce=None) -> int:
    """Spin a console node until Ctrl-C (or `duration_sec`); say once on standard error if no
    publisher shows up. `announce(node)` prints the start line."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=[sys.argv[0], *ros_args])
    node = None
    try:
        node = _make_node(normalize_namespace(namespace), view or ConsoleView(), out, alert_log,
                          node_name or f"omni_console_{os.getpid()}", alerts_only)
        if announce is not None:
            announce(node)
        watch = GraphWatch(node, node.followed, prog)
        deadline = (time.monotonic() + duration_sec if duration_sec is not None else None)
        while rclpy.ok() and (deadline is None or time.monotonic() < deadline):
            rclpy.spin_once(node, timeout_sec=0.1)
            watch.poll()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if alert_log is not None:
            alert_log.close()
        rclpy.try_shutdown()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from omni_ros.ros.runner import split_ros_args
    from omni_ros.tools.alert_log import AlertLog

    own_args, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    options = parse_args(own_args)
    out = None if options.quiet else sys.stdout
    view = ConsoleView(options.min_level, use_color(sys.stdout, options.no_color), options.utc,
                       options.all_states, options.time_mode)
    try:
        alert_log = (AlertLog(options.alert_log, options.max_bytes, options.backups)
                     if options.alert_log else None)
    except OSError as error:
        print(f"omni_ros_console: error: cannot write {options.alert_log}: "
              f"{error.strerror or error}", file=sys.stderr)
        return 2

    def announce(node) -> None:
        where = node.get_namespace().rstrip("/") + "/omni/{alerts,state,text}"
        log_note = f"; alerts logged to {alert_log.path}" if alert_log else ""
        print(f"[omni_ros_console] following {where} on ROS_DOMAIN_ID "
              f"{domain_id()}{log_note}", file=sys.stderr, flush=True)

    return follow("omni_ros_console", options.namespace, view, out, ros_args, alert_log,
                  options.duration_sec, announce=announce)


def alert_log_main(argv: Optional[Sequence[str]] = None) -> int:
    """omni_ros_alert_log: see omni_ros.tools.alert_log.main."""
    from omni_ros.tools.alert_log import main as alert_log_tool

    return alert_log_tool(argv)


if __name__ == "__main__":
    sys.exit(main())
