"""The operator console: rendering of a scripted stream, level filter, colour, the rotated alert
log, and the console script following a namespace over real DDS."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from omni_ros.tools.alert_log import AlertLog, read_alert_log
from omni_ros.tools.console import (AlertFields, ConsoleView, HealthFields, StateFields, TextFields,
                                    alert_record, format_age, format_relative, format_time,
                                    parse_level, use_color)

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
    return format_relative(T0 + k * 10**9, T0)


@pytest.mark.unit
def test_scripted_stream_renders_readably():
    lines = run(ConsoleView(), script())
    assert lines == [
        f"{clock(0)}  INFO   state  LISTENING  (p(speak) 0.10, compute 40 ms)",
        f"{clock(2)}  INFO   state  LISTENING -> SPEAKING  "
        "(proactive, p(speak) 0.83, compute 42 ms)",
        f"{clock(2)}  WARN   ALERT  'Careful, the floor'  "
        "(confidence 0.61, evidence frame 2.00 s old)",
        f"    instruction: {INSTRUCTION}",
        f"{clock(3)}  INFO   said   'Careful, the floor is wet.'  (2 windows)",
        f"{clock(4)}  INFO   state  SPEAKING -> LISTENING  "
        "(p(speak) 0.10, compute 44 ms)",
        f"{clock(5)}  INFO   ALERT  'info only'  (confidence 0.61, evidence frame 5.00 s old)",
        f"    instruction: {INSTRUCTION}",
        f"{clock(5)}  INFO   state  LISTENING -> SPEAKING  "
        "(p(speak) 0.70, compute 45 ms)",
        f"{clock(5)}  INFO   said   'I see a'  (1 window, interrupted)",
        f"{clock(6)}  INFO   state  SPEAKING -> INTERRUPTED  "
        "(p(speak) 0.10, compute 46 ms)",
        f"{clock(7)}  ERROR  ALERT  'Stop!'  (confidence 0.97, evidence frame 7.00 s old)",
        f"    instruction: {INSTRUCTION}",
    ]
    assert clock(0) == "+00:00.000" and clock(7) == "+00:07.000"
    assert not any(str(W) in line for line in lines), "no raw window numbers"


@pytest.mark.unit
def test_times_are_relative_to_the_first_message_or_wall_time():
    assert format_relative(T0, T0) == "+00:00.000"
    assert format_relative(T0 + 61_500_000_000, T0) == "+01:01.500"
    assert format_relative(T0 + 3_723_004_999_999, T0) == "+1:02:03.004"
    assert format_relative(T0 - 1_250_000_000, T0) == "-00:01.250"
    relative = ConsoleView()
    relative.on_state(state(3, LISTENING))            # the session starts at the first message seen
    later = relative.on_alert(alert(10, 1, "x"))
    assert later[0].startswith("+00:07.000  WARN   ALERT")
    wall = run(ConsoleView(utc=True, time_mode="wall"), script())
    assert wall[0].startswith("22:13:20.000  INFO   state  LISTENING")
    assert format_time(T0 + 2 * 10**9, utc=True) == "22:13:22.000"
    with pytest.raises(ValueError, match="time mode 'epoch'"):
        ConsoleView(time_mode="epoch")


@pytest.mark.unit
def test_evidence_age_is_shown_in_words():
    assert format_age(400_000_000) == "0.40 s"
    assert format_age(12_345_000_000) == "12.3 s"
    assert format_age(185 * 10**9) == "3 min 5 s"
    no_frame = AlertFields(T0, W, 1, "look", INSTRUCTION, 0.5, 0)
    assert "(confidence 0.50, no camera frame)" in ConsoleView().on_alert(no_frame)[0]
    fresh = AlertFields(T0 + 400_000_000, W, 1, "look", INSTRUCTION, 0.5, T0)
    assert "evidence frame 0.40 s old" in ConsoleView().on_alert(fresh)[0]


@pytest.mark.unit
@pytest.mark.parametrize("given, level", [("WARN", "WARN"), ("WARNING", "WARN"),
                                          ("warning", "WARN"), ("info", "INFO"),
                                          (" Error ", "ERROR")])
def test_level_names_people_write_are_taken(given, level):
    from omni_ros.tools.console import parse_args
    assert parse_level(given) == level
    assert parse_args(["--min-level", given]).min_level == level
    assert ConsoleView(min_level=given).min_rank == ["INFO", "WARN", "ERROR"].index(level)


@pytest.mark.unit
def test_a_turn_that_never_ends_is_shown_in_parts():
    from omni_ros.tools.console import MAX_TURN_PARTS
    view = ConsoleView()
    lines = []
    for k in range(2 * MAX_TURN_PARTS + 5):
        lines += view.on_text(text(k, "la "))
    assert len(view.turn) == 5
    words = "la " * (MAX_TURN_PARTS - 1) + "la"
    assert [line.split("INFO   ", 1)[1] for line in lines] == \
        [f"said   {words!r}  ({MAX_TURN_PARTS} windows, continues)"] * 2


@pytest.mark.unit
def test_a_level_that_is_none_of_them_is_refused_in_one_line(capsys):
    from omni_ros.tools.console import parse_args
    with pytest.raises(ValueError, match="'LOUD' is not one of INFO, WARN \\(or WARNING\\), ERROR"):
        parse_level("LOUD")
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--min-level", "LOUD"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("omni_ros_console: error: argument --min-level") and "WARNING" in error


@pytest.mark.unit
def test_min_level_warn_shows_only_warnings_and_errors():
    lines = run(ConsoleView(min_level="WARN"), script())
    assert [line.split("  ")[1].strip() for line in lines if not line.startswith("    ")] == \
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
def test_all_states_gives_a_line_per_window_and_arrows_only_for_changes():
    states = [line.split("  state  ", 1)[1].split("  (")[0]
              for line in run(ConsoleView(all_states=True), script()) if "  state  " in line]
    assert states == ["LISTENING", "LISTENING", "LISTENING -> SPEAKING", "SPEAKING",
                      "SPEAKING -> LISTENING", "LISTENING -> SPEAKING", "SPEAKING -> INTERRUPTED"]
    changes = [line for line in run(ConsoleView(), script()) if "  state  " in line]
    assert len(changes) == 5 and not any("SPEAKING -> SPEAKING" in line for line in changes)


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
def test_alert_log_writes_each_alert_once_across_restarts_and_rotations(tmp_path):
    """What a restarted log receives first is omni_node's kept history: alerts it wrote before
    (some already rotated into backups) and alerts it missed. Each is in the files once."""
    path = tmp_path / "alerts.jsonl"
    records = [alert_record(alert(k, 1, f"alert {k} " + "z" * 150), "/r1", k) for k in range(30)]
    with AlertLog(path, max_bytes=1500, backups=20) as log:
        assert [log.write(r) for r in records[:12]] == [True] * 12
        assert log.write(records[5]) is False          # the same alert twice in one run
    assert (tmp_path / "alerts.jsonl.1").exists(), "the first run's records were rotated"
    with AlertLog(path, max_bytes=1500, backups=20) as log:
        assert log.found == 12
        replayed = records[2:20]                       # history: 10 known, 8 missed
        written = [log.write(r) for r in replayed]
        assert written == [False] * 10 + [True] * 8
        assert (log.written, log.duplicates) == (8, 10)
    assert list(read_alert_log(path)) == records[:20]
    # another namespace's alert with the same window and stamp is another alert
    other = dict(records[0], namespace="/r2")
    with AlertLog(path, max_bytes=1500, backups=20) as log:
        assert log.write(other) is True and log.write(records[0]) is False


@pytest.mark.unit
def test_alert_log_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "alerts.jsonl"
    first, second = (alert_record(alert(k, 1, "x"), "/", k) for k in range(2))
    path.write_text(json.dumps(first) + "\n" + json.dumps(second)[:25])   # killed mid-write
    with AlertLog(path) as log:
        assert log.found == 1 and log.write(first) is False and log.write(second) is True
    assert list(read_alert_log(path, skip_bad_lines=True)) == [first, second]
    with pytest.raises(ValueError, match="alerts.jsonl:2: not a JSON object"):
        list(read_alert_log(path))


@pytest.mark.unit
def test_alert_log_remembers_a_bounded_number_of_keys(tmp_path):
    from omni_ros.tools.alert_log import SeenKeys
    keys = SeenKeys(3, [("/", k, k) for k in range(5)])
    assert len(keys) == 3 and ("/", 1, 1) not in keys and ("/", 4, 4) in keys
    path = tmp_path / "alerts.jsonl"
    with AlertLog(path, keys_kept=4) as log:
        for k in range(10):
            log.write(alert_record(alert(k, 1, "x"), "/", k))
        assert len(log.seen) == 4
    with AlertLog(path, keys_kept=4) as log:      # the newest keys are the ones read back
        assert len(log.seen) == 4 and log.write(alert_record(alert(9, 1, "x"), "/", 9)) is False


@pytest.mark.unit
def test_alert_log_script_has_its_own_help_and_name(capsys):
    from omni_ros.tools.console import alert_log_main, parse_args
    with pytest.raises(SystemExit) as stopped:
        alert_log_main(["--help"])
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: omni_ros_alert_log [-h] [--namespace NS]")
    for option in ("FILE", "--namespace NS", "--max-bytes N", "--backups K", "each alert once"):
        assert option in shown, option
    for argv, message in (([], "the following arguments are required: FILE"),
                          (["a.jsonl", "--max-bytes", "0"], "--max-bytes must be positive, got 0"),
                          (["a.jsonl", "--backups", "0"], "--backups must be at least 1, got 0"),
                          (["a.jsonl", "--min-level", "WARN"], "unrecognized arguments")):
        with pytest.raises(SystemExit) as stopped:
            alert_log_main(argv)
        assert stopped.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("omni_ros_alert_log: error: ") and message in error, error
    with pytest.raises(SystemExit):
        parse_args(["--alert-log", "x.jsonl", "--max-bytes", "0"])
    assert "omni_ros_console: error: --max-bytes must be positive" in capsys.readouterr().err


@pytest.mark.unit
def test_alert_log_script_says_when_it_cannot_write(tmp_path, capsys):
    from omni_ros.tools.alert_log import main
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main([str(folder)]) == 2
    assert capsys.readouterr().err.startswith(f"omni_ros_alert_log: error: cannot write {folder}")


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
        ours = {t: node.create_publisher(m, f"/r7/omni/{t}", q)
                for t, m, q in (("alerts", ProactiveAlert, qos.ALERTS),
                                ("state", DuplexState, qos.OUTPUT), ("text", OmniText, qos.OUTPUT))}
        other = node.create_publisher(ProactiveAlert, "/r8/omni/alerts", qos.ALERTS)
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
    assert "WARN   ALERT  'Mind the step'  (confidence 0.80, no camera frame)" in shown
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
