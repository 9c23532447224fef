"""The operator console: rendering of a scripted stream, level filter, colour, the rotated alert
log, and the console script following a namespace over real DDS."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from omni_ros.tools.alert_log import AlertLog, read_alert_log
from omni_ros.tools.console import (AlertFields, ConsoleView, HealthFields, StateFields, TextFields,
                                    alert_record, format_time, use_color)

T0 = 1_700_000_000_000_000_000          # 2023-11-14 22:13:20 UTC
W = 1_700_000_000                        # window index of T0 at 1 s windows
INSTRUCTION = "Warn people nearby about hazards you see."
LISTENING, SPEAKING, INTERRUPTED = 0, 1, 2


def state(k, s, proactive=False, end=False, p=0.1):
    return StateFields(T0 + k * 10**9, W + k, s, end, proactive, p, 40.0 + k)


def text(k, words, end=False):
    return TextFields(T0 + k * 10**9, W + k, words, end)


def alert(k, level, words, confidence=0.61):
    return AlertFields(T0 + k * 10**9, W + k, level, words, INSTRUCTION, confidence, T0)


def script():
    """A robot that listens, warns proactively over two windows, is spoken to, answers."""
    return [
        ("state", state(0, LISTENING)),
        ("state", state(1, LISTENING)),
        ("state", state(2, SPEAKING, proactive=True, p=0.83)),
        ("alert", alert(2, 1, "Careful, the floor")),
        ("text", text(2, "Careful, the floor")),
        ("state", state(3, SPEAKING, proactive=True, end=True, p=0.9)),
        ("text", text(3, " is wet.", end=True)),
        ("state", state(4, LISTENING)),
        ("alert", alert(5, 0, "info only")),
        ("state", state(5, SPEAKING, p=0.7)),
        ("text", text(5, "I see a")),
        ("state", state(6, INTERRUPTED)),
        ("alert", alert(7, 2, "Stop!", 0.97)),
    ]


def run(view, events):
    lines = []
    for kind, fields in events:
        lines += getattr(view, f"on_{kind}")(fields)
    return lines


def clock(k):
    return format_time(T0 + k * 10**9, utc=True)


@pytest.mark.unit
def test_scripted_stream_renders_readably():
    lines = run(ConsoleView(utc=True), script())
    assert lines == [
        f"{clock(0)}  window {W}  INFO   state  LISTENING  (p(speak) 0.10, compute 40 ms)",
        f"{clock(2)}  window {W + 2}  INFO   state  LISTENING -> SPEAKING  "
        "(proactive, p(speak) 0.83, compute 42 ms)",
        f"{clock(2)}  window {W + 2}  WARN   ALERT  'Careful, the floor'  (confidence 0.61)",
        f"    instruction: {INSTRUCTION}",
        f"{clock(3)}  window {W + 3}  INFO   said   'Careful, the floor is wet.'  "
        f"(windows {W + 2}-{W + 3})",
        f"{clock(4)}  window {W + 4}  INFO   state  SPEAKING -> LISTENING  "
        "(p(speak) 0.10, compute 44 ms)",
        f"{clock(5)}  window {W + 5}  INFO   ALERT  'info only'  (confidence 0.61)",
        f"    instruction: {INSTRUCTION}",
        f"{clock(5)}  window {W + 5}  INFO   state  LISTENING -> SPEAKING  "
        "(p(speak) 0.70, compute 45 ms)",
        f"{clock(5)}  window {W + 5}  INFO   said   'I see a'  (window {W + 5}, interrupted)",
        f"{clock(6)}  window {W + 6}  INFO   state  SPEAKING -> INTERRUPTED  "
        "(p(speak) 0.10, compute 46 ms)",
        f"{clock(7)}  window {W + 7}  ERROR  ALERT  'Stop!'  (confidence 0.97)",
        f"    instruction: {INSTRUCTION}",
    ]
    assert clock(0) == "22:13:20.000"


@pytest.mark.unit
def test_min_level_warn_shows_only_warnings_and_errors():
    lines = run(ConsoleView(min_level="WARN", utc=True), script())
    assert [line.split("  ")[2].strip() for line in lines if not line.startswith("    ")] == \
        ["WARN", "ERROR"]
    assert all("ALERT" in line for line in lines if not line.startswith("    "))


@pytest.mark.unit
def test_health_shows_warnings_when_they_start_or_change_and_ok_once_after():
    view = ConsoleView(utc=True)
    seen = []
    for k, (concern, level, message) in enumerate([
            ("camera", 0, "ok"), ("camera", 1, "no input for 3.2 s"), ("camera", 1, "no input for 3.2 s"),
            ("microphone", 1, "audio refused: 96000 Hz"), ("camera", 1, "no input for 4.3 s"),
            ("model", 2, "unit failed: boom"), ("camera", 0, "ok"), ("camera", 0, "ok")]):
        seen += view.on_health(HealthFields(T0 + k * 10**9, concern, level, message))
    assert [line.split("  ", 1)[1] for line in seen] == [
        "WARN   camera: no input for 3.2 s", "WARN   microphone: audio refused: 96000 Hz",
        "WARN   camera: no input for 4.3 s", "ERROR  model: unit failed: boom",
        "INFO   camera: ok again"]
    quiet = ConsoleView(min_level="ERROR")
    assert quiet.on_health(HealthFields(T0, "camera", 1, "no input")) == []
    assert quiet.on_health(HealthFields(T0, "model", 2, "unit failed: x")) != []


@pytest.mark.unit
def test_all_states_gives_a_line_per_window():
    lines = run(ConsoleView(utc=True, all_states=True), script())
    assert sum(" state " in line for line in lines) == 7


@pytest.mark.unit
def test_colour_only_when_asked_and_on_a_terminal(monkeypatch):
    coloured = run(ConsoleView(color=True, utc=True), script())
    assert any("\033[1;33mWARN" in line for line in coloured)
    assert any("\033[1;31mERROR" in line for line in coloured)
    plain = run(ConsoleView(color=False, utc=True), script())
    assert not any("\033" in line for line in plain)

    class Tty:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Tty(True), no_color=False)
    assert not use_color(Tty(False), no_color=False)
    assert not use_color(Tty(True), no_color=True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty(True), no_color=False)


@pytest.mark.unit
def test_bad_min_level_is_refused():
    with pytest.raises(ValueError):
        ConsoleView(min_level="LOUD")


@pytest.mark.unit
def test_alert_log_rotates_by_size_and_keeps_every_record_in_order(tmp_path):
    path = tmp_path / "alerts" / "alerts.jsonl"
    records = [alert_record(alert(k, 1, f"alert number {k} " + "x" * 100), "/r1", k)
               for k in range(40)]
    with AlertLog(path, max_bytes=2000, backups=10) as log:
        for record in records[:20]:
            log.write(record)
    with AlertLog(path, max_bytes=2000, backups=10) as log:   # a restart appends
        for record in records[20:]:
            log.write(record)
    files = sorted(p.name for p in path.parent.iterdir())
    assert "alerts.jsonl.1" in files and len(files) > 2, files
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())
    assert list(read_alert_log(path)) == records
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"stamp", "stamp_ns", "received_ns", "namespace", "window_index", "level",
                          "text", "instruction", "confidence", "evidence_stamp_ns"}


@pytest.mark.unit
def test_alert_log_drops_the_oldest_beyond_its_backups(tmp_path):
    path = tmp_path / "alerts.jsonl"
    with AlertLog(path, max_bytes=500, backups=2) as log:
        for k in range(50):
            log.write(alert_record(alert(k, 2, "y" * 100), "/", k))
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["alerts.jsonl", "alerts.jsonl.1", "alerts.jsonl.2"]
    kept = [r["window_index"] - W for r in read_alert_log(path)]
    assert kept == list(range(50 - len(kept), 50))


@pytest.mark.unit
def test_alert_log_script_needs_a_file(capsys):
    from omni_ros.tools.console import alert_log_main, parse_args
    assert alert_log_main([]) == 2
    assert "usage: omni_ros_alert_log FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--alert-log", "x.jsonl", "--max-bytes", "0"])


@pytest.mark.dds
def test_console_script_follows_a_namespace_over_dds(tmp_path):
    """omni_ros_console --namespace r7 shows what is published under /r7 (not /r8) and logs it."""
    import rclpy
    from rclpy.node import Node

    from graph import REPO, isolated_ros_environment, wait_until
    from omni_ros.msg import DuplexState, OmniText, ProactiveAlert
    from omni_ros.ros import qos

    env = isolated_ros_environment()
    log_path = tmp_path / "alerts.jsonl"
    out_path = tmp_path / "console.out"
    with open(out_path, "w") as out:
        console = subprocess.Popen(
            [sys.executable, "-m", "omni_ros.tools.console", "--namespace", "r7", "--utc",
             "--alert-log", str(log_path), "--max-bytes", "100000", "--backups", "2"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("console_feeder", context=context)
    try:
        ours = {t: node.create_publisher(m, f"/r7/omni/{t}", qos.OUTPUT)
                for t, m in (("alerts", ProactiveAlert), ("state", DuplexState),
                             ("text", OmniText))}
        other = node.create_publisher(ProactiveAlert, "/r8/omni/alerts", qos.OUTPUT)
        wait_until(lambda: all(p.get_subscription_count() > 0 for p in ours.values()), 30,
                   "the console to subscribe", [out_path])
        stamp = node.get_clock().now().to_msg()
        ours["state"].publish(DuplexState(header=_header(stamp), window_index=5,
                                          state=DuplexState.SPEAKING, proactive=True,
                                          speak_probability=0.8, compute_ms=50.0))
        ours["alerts"].publish(ProactiveAlert(header=_header(stamp), window_index=5,
                                              level=ProactiveAlert.WARN, text="Mind the step",
                                              instruction=INSTRUCTION, confidence=0.8))
        other.publish(ProactiveAlert(header=_header(stamp), window_index=5,
                                     level=ProactiveAlert.ERROR, text="not for r7"))
        ours["text"].publish(OmniText(header=_header(stamp), window_index=5,
                                      text="Mind the step.", end_of_turn=True))
        wait_until(lambda: "said" in out_path.read_text(), 20, "the turn on the console",
                   [out_path])
    finally:
        console.send_signal(2)
        try:
            console.wait(15)
        finally:
            if console.poll() is None:
                console.kill()
        node.destroy_node()
        rclpy.shutdown(context=context)
    shown = out_path.read_text()
    assert "LISTENING" not in shown and "SPEAKING" in shown and "proactive" in shown
    assert "WARN   ALERT  'Mind the step'  (confidence 0.80)" in shown
    assert f"instruction: {INSTRUCTION}" in shown
    assert "'Mind the step.'" in shown and "not for r7" not in shown
    assert "\033" not in shown, "no colour when stdout is not a terminal"
    records = list(read_alert_log(log_path))
    assert [(r["namespace"], r["level"], r["text"]) for r in records] == \
        [("/r7", "WARN", "Mind the step")]
    assert console.returncode == 0


def _header(stamp):
    from std_msgs.msg import Header
    return Header(stamp=stamp)
