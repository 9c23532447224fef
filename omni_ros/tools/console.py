"""omni_ros_console: follow omni/alerts, omni/state, omni/text and omni_node's /diagnostics live,
readably, for operators.

One line per event: time, window, level, what happened. Alerts show their text, confidence and
the standing instruction in force; the duplex state is shown when it changes (listening,
speaking, interrupted); the text of a spoken turn is shown once the turn completes; a WARN or
ERROR diagnostic status of the node (camera, microphone, model, speech) is shown when it starts
or changes, and once more when it is OK again. Colour
(ANSI) only on a terminal, never with --no-color or NO_COLOR set. `--alert-log FILE` also
appends every alert (whatever --min-level says) as a JSON line to FILE, rotated by size.

    omni_ros_console [--namespace r1] [--min-level WARN] [--alert-log alerts.jsonl]

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


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{RESET}" if color and code else text


def _shorten(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _prefix(stamp_ns: int, window_index: int, level: str, color: bool, utc: bool) -> str:
    return (f"{_paint(format_time(stamp_ns, utc), DIM, color)}  window {window_index}  "
            f"{_paint(f'{level:<5}', LEVEL_COLOURS.get(level, ''), color)}")


def render_alert(alert: AlertFields, color: bool = False, utc: bool = False) -> List[str]:
    """The lines of one proactive alert: the alert, then the instruction it was raised under."""
    level = level_name(alert.level)
    text = _paint(repr(_shorten(alert.text)), BOLD, color)
    lines = [f"{_prefix(alert.stamp_ns, alert.window_index, level, color, utc)}  ALERT  {text}  "
             f"(confidence {alert.confidence:.2f})"]
    instruction = _shorten(alert.instruction) if alert.instruction else "(none)"
    lines.append(f"    instruction: {instruction}")
    return lines


def render_state(state: StateFields, previous: Optional[int], color: bool = False,
                 utc: bool = False) -> List[str]:
    """One line for a state, saying what it changed from."""
    name = state_name(state.state)
    shown = _paint(name, STATE_COLOURS.get(name, ""), color)
    change = f"{state_name(previous)} -> {shown}" if previous is not None else shown
    details = [f"p(speak) {state.speak_probability:.2f}", f"compute {state.compute_ms:.0f} ms"]
    if state.proactive:
        details.insert(0, "proactive")
    if state.end_of_turn:
        details.append("end of turn")
    return [f"{_prefix(state.stamp_ns, state.window_index, 'INFO', color, utc)}  state  "
            f"{change}  ({', '.join(details)})"]


def render_turn(stamp_ns: int, first_window: int, last_window: int, text: str,
                complete: bool = True, color: bool = False, utc: bool = False) -> List[str]:
    """One line for the text of a spoken turn."""
    span = (f"windows {first_window}-{last_window}" if last_window != first_window
            else f"window {first_window}")
    ending = "" if complete else ", interrupted"
    return [f"{_prefix(stamp_ns, last_window, 'INFO', color, utc)}  said   "
            f"{repr(_shorten(text))}  ({span}{ending})"]


def render_health(health: HealthFields, color: bool = False, utc: bool = False) -> List[str]:
    """One line for a diagnostic status of the node."""
    level = "INFO" if health.level == 0 else level_name(health.level)
    message = "ok again" if health.level == 0 else _shorten(health.message)
    return [f"{_paint(format_time(health.stamp_ns, utc), DIM, color)}  "
            f"{_paint(f'{level:<5}', LEVEL_COLOURS.get(level, ''), color)}  {health.concern}: {message}"]


MAX_CONCERNS = 16   # statuses followed at once (the node has four)


class ConsoleView:
    """Turns a stream of alerts, states and texts into lines to show.

    It keeps only what rendering needs: the last state (changes are shown, not every window) and
    the text of the turn in progress (shown when the turn ends, or when the model stops speaking
    without ending it).
    """

    def __init__(self, min_level: str = "INFO", color: bool = False, utc: bool = False,
                 all_states: bool = False) -> None:
        if min_level not in LEVELS:
            raise ValueError(f"min_level must be one of {', '.join(LEVELS)}")
        self.min_rank = LEVELS.index(min_level)
        self.color, self.utc, self.all_states = color, utc, all_states
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
        return render_health(health, self.color, self.utc) if self._shows(name) else []

    def _shows(self, level: str) -> bool:
        return LEVELS.index(level) >= self.min_rank if level in LEVELS else True

    def on_alert(self, alert: AlertFields) -> List[str]:
        if not self._shows(level_name(alert.level)):
            return []
        return render_alert(alert, self.color, self.utc)

    def on_state(self, state: StateFields) -> List[str]:
        lines: List[str] = []
        previous, self.last_state = self.last_state, state.state
        if self.turn and state.state != STATES.index("SPEAKING") \
                and state.window_index > self.turn[-1].window_index:
            lines += self._flush_turn(complete=False)
        if self._shows("INFO") and (self.all_states or previous != state.state):
            lines += render_state(state, previous, self.color, self.utc)
        return lines

    def on_text(self, text: TextFields) -> List[str]:
        self.turn.append(text)
        if text.end_of_turn:
            return self._flush_turn(complete=True)
        return []

    def _flush_turn(self, complete: bool) -> List[str]:
        turn, self.turn = self.turn, []
        words = "".join(part.text for part in turn).strip()
        if not self._shows("INFO") or not (words or complete):
            return []
        return render_turn(turn[-1].stamp_ns, turn[0].window_index, turn[-1].window_index,
                           words, complete, self.color, self.utc)


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
def _make_node(namespace: str, view: ConsoleView, out: TextIO, alert_log=None,
               node_name: str = "omni_console"):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node

    from omni_ros.msg import DuplexState, OmniText, ProactiveAlert
    from omni_ros.ros import qos
    from omni_ros.ros.conversions import stamp_to_ns

    class ConsoleNode(Node):
        def __init__(self) -> None:
            super().__init__(node_name, namespace=namespace)
            self.create_subscription(ProactiveAlert, "omni/alerts", self.on_alert, qos.OUTPUT)
            self.create_subscription(DuplexState, "omni/state", self.on_state, qos.OUTPUT)
            self.create_subscription(OmniText, "omni/text", self.on_text, qos.OUTPUT)
            self.create_subscription(DiagnosticArray, "/diagnostics", self.on_diagnostics, qos.OUTPUT)
            self.node_prefix = f"{namespace.rstrip('/')}/omni_node: "

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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="omni_ros_console",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="",
                        help="the graph's namespace, e.g. r1 (follows /r1/omni/...)")
    parser.add_argument("--min-level", default="INFO", type=str.upper, choices=LEVELS,
                        help="show only events of this level or higher (states and text are "
                             "INFO; the alert log records every alert anyway)")
    parser.add_argument("--no-color", action="store_true", help="no ANSI colour")
    parser.add_argument("--utc", action="store_true", help="times in UTC (default: local)")
    parser.add_argument("--all-states", action="store_true",
                        help="a line for every window's state, not only for changes")
    parser.add_argument("--quiet", action="store_true",
                        help="show nothing (with --alert-log: only record alerts)")
    parser.add_argument("--alert-log", default=None, metavar="FILE",
                        help="append every alert as a JSON line to FILE (rotated by size)")
    parser.add_argument("--max-bytes", type=int, default=10 * 1024 * 1024, metavar="N",
                        help="rotate the alert log when it would exceed N bytes (10 MiB)")
    parser.add_argument("--backups", type=int, default=5, metavar="K",
                        help="rotated alert logs kept: FILE.1 .. FILE.K (5)")
    parser.add_argument("--duration-sec", type=float, default=None,
                        help="stop after this long (default: until Ctrl-C)")
    options = parser.parse_args(argv)
    if options.max_bytes <= 0:
        parser.error("--max-bytes must be positive")
    if options.backups < 1:
        parser.error("--backups must be at least 1")
    return options


def main(argv: Optional[Sequence[str]] = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from omni_ros.ros.runner import split_ros_args
    from omni_ros.tools.alert_log import AlertLog

    own_args, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    options = parse_args(own_args)
    namespace = options.namespace
    if namespace and not namespace.startswith("/"):
        namespace = "/" + namespace
    out = None if options.quiet else sys.stdout
    view = ConsoleView(options.min_level, use_color(sys.stdout, options.no_color), options.utc,
                       options.all_states)
    alert_log = (AlertLog(options.alert_log, options.max_bytes, options.backups)
                 if options.alert_log else None)
    rclpy.init(args=[sys.argv[0], *ros_args])
    node = None
    try:
        # Several consoles may watch one robot; the alert log is one per robot.
        node_name = ("omni_alert_log" if options.quiet and alert_log
                     else f"omni_console_{os.getpid()}")
        node = _make_node(namespace, view, out, alert_log, node_name)
        if out is not None:
            where = node.get_namespace().rstrip("/") + "/omni/{alerts,state,text}"
            log_note = f"; alerts logged to {options.alert_log}" if alert_log else ""
            print(f"[omni_ros_console] following {where}{log_note}", file=sys.stderr, flush=True)
        deadline = (time.monotonic() + options.duration_sec
                    if options.duration_sec is not None else None)
        while rclpy.ok() and (deadline is None or time.monotonic() < deadline):
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if alert_log is not None:
            alert_log.close()
        rclpy.try_shutdown()
    return 0


def alert_log_main(argv: Optional[Sequence[str]] = None) -> int:
    """omni_ros_alert_log FILE [...]: the console as a quiet recorder of alerts only."""
    args = list(sys.argv[1:] if argv is None else argv)
    own, ros_args = [], []
    if "--ros-args" in args:
        cut = args.index("--ros-args")
        own, ros_args = args[:cut], args[cut:]
    else:
        own = args
    if own and not own[0].startswith("-"):
        own = ["--alert-log", own[0], *own[1:]]
    if "--alert-log" not in own:
        print("usage: omni_ros_alert_log FILE [--namespace NS] [--max-bytes N] [--backups K]",
              file=sys.stderr)
        return 2
    return main(["--quiet", *own, *ros_args])


if __name__ == "__main__":
    sys.exit(main())
