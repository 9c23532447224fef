"""Barge-in recordings (flow/bargein_record.py) and their replay (omni_ros_barge_in_replay): what
the detector is given, recorded as it runs, replays to the same barge-ins at the same stamps; the
file is bounded, a file cut short reads to its last whole record, and what is not a recording is
refused with one line. (Over DDS, omni_node's own recording against the barge-ins it published:
test_barge_in_rooms.py.)"""
import numpy as np
import pytest

from omni_ros.flow.bargein import BargeInDetector
from omni_ros.flow.bargein_record import (MIC, SETTINGS, BargeInRecorder, RecordingError,
                                          read_recording)
from omni_ros.flow.echo import make_echo_canceller
from omni_ros.flow.vad import VoiceActivity
from omni_ros.tools import barge_in_replay
from omni_ros.tools.scene_player import synthesize_float

NS = 1_000_000_000
RATE = 16000
CHUNK = 320
KWARGS = dict(threshold=0.3, min_speech_ms=64, echo_delay_ms=10.0)


def scene():
    """The robot talking (its echo 10 ms late at half level) and a person interrupting it twice."""
    robot = synthesize_float("Hello there, I am the robot and I am telling you about the weather "
                             "today and tomorrow, which will be sunny with a light breeze.")
    person = synthesize_float("Stop! Wait a moment please.", voice="en-us+f3")
    mic = np.zeros_like(robot)
    mic[160:] = 0.5 * robot[:-160]
    for at in (2 * RATE, int(4.5 * RATE)):
        n = min(person.shape[0], mic.shape[0] - at)
        mic[at:at + n] += 0.6 * person[:n]
    return robot, mic


def run(detector, robot, mic, t0=5 * NS):
    """Reference and mic as omni_node gives them: speech in 200 ms chunks as it is played, the
    mic in 20 ms chunks; the threshold changed at run time half way, and a reset after it."""
    onsets = []
    for i in range(0, mic.shape[0], CHUNK):
        if i % 3200 == 0:
            detector.push_reference(t0 + i * NS // RATE, robot[i:i + 3200])
        if i == 3 * RATE:
            detector.threshold = 0.35
        if i == 6 * RATE:
            detector.reset()
        onset = detector.push_mic(t0 + i * NS // RATE, mic[i:i + CHUNK])
        if onset is not None:
            onsets.append(onset)
    return onsets


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("record") / "robot.obr"
    detector = BargeInDetector(VoiceActivity(), make_echo_canceller("auto"), **KWARGS)
    detector.recorder = BargeInRecorder(path, dict(detector=KWARGS, echo_canceller="auto"),
                                        64_000_000)
    robot, mic = scene()
    onsets = run(detector, robot, mic)
    detector.recorder.close()
    return path, detector, onsets


@pytest.mark.unit
def test_a_recording_replays_to_the_same_barge_ins(recorded):
    path, live, onsets = recorded
    recording = read_recording(path)
    assert len(onsets) >= 2 and recording.decisions == onsets
    assert not recording.truncated
    settings = [p for k, _, p in recording.records if k == SETTINGS]
    assert [s["threshold"] for s in settings] == [0.3, 0.35]
    result = barge_in_replay.replay(recording)
    assert result.same and result.replayed == onsets
    skip = {"cpu_us", "recorded_mb", "recording", "record_ended"}
    assert {k: v for k, v in result.counters.items() if k not in skip} == \
        {k: v for k, v in live.diagnostic_values().items() if k not in skip}


@pytest.mark.unit
def test_a_replay_with_other_settings_decides_anew(recorded):
    """--set: the detector built with other arguments, the recorded run-time threshold no longer
    applied: at a threshold no frame reaches, no barge-in."""
    recording = read_recording(recorded[0])
    assert barge_in_replay.replay(recording, {"threshold": 1.01}).replayed == []
    assert barge_in_replay.main([str(recorded[0]), "--set", "threshold=1.01"]) == 0


@pytest.mark.unit
def test_the_replay_tool_says_whether_the_decisions_match(recorded, capsys):
    assert barge_in_replay.main([str(recorded[0])]) == 0
    out = capsys.readouterr().out
    assert "the same decisions at the same stamps" in out
    assert f"node's barge-ins ({len(recorded[2])})" in out


@pytest.mark.unit
def test_the_recording_stops_at_its_bound_and_the_detector_runs_on(tmp_path):
    path = tmp_path / "small.obr"
    detector = BargeInDetector(VoiceActivity(), make_echo_canceller("auto"), **KWARGS)
    detector.recorder = BargeInRecorder(path, dict(detector=KWARGS), 100_000)
    robot, mic = scene()
    onsets = run(detector, robot, mic)
    assert path.stat().st_size <= 100_000 and detector.recorder.full
    values = detector.diagnostic_values()
    assert values["recording"] is False and values["record_ended"].startswith("full at 0.1 MB")
    assert onsets and detector.counters.mic_samples == mic.shape[0]   # it ran on to the end
    recording = read_recording(path)
    # 100 kB: 64 kB a second of mic, as much of the robot's speech while it talks
    assert not recording.truncated and 0.6 < recording.seconds(MIC) < 0.9


@pytest.mark.unit
def test_a_recording_cut_short_reads_to_its_last_whole_record(recorded, tmp_path):
    data = recorded[0].read_bytes()
    whole = read_recording(recorded[0])
    cut = tmp_path / "cut.obr"
    cut.write_bytes(data[:len(data) - 700])       # the node killed mid-write
    partial = read_recording(cut)
    assert partial.truncated and len(partial.records) < len(whole.records)
    assert partial.records[-1][0] == whole.records[len(partial.records) - 1][0]
    assert "cut short" in "\n".join(barge_in_replay.describe(
        partial, barge_in_replay.replay(partial), False))


@pytest.mark.unit
def test_what_is_not_a_recording_is_refused_in_one_line(tmp_path, capsys):
    wav = tmp_path / "speech.wav"
    wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(RecordingError, match="not an omni_ros barge-in recording"):
        read_recording(wav)
    assert barge_in_replay.main([str(wav)]) == 1
    assert barge_in_replay.main([str(tmp_path / "missing.obr")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("[omni_ros_barge_in_replay] ") for line in err)
    assert "not an omni_ros barge-in recording" in err[0] and "No such file" in err[1]


@pytest.mark.dds
def test_a_recording_path_that_cannot_be_written_stops_omni_node_in_one_line(tiny_checkpoint,
                                                                              tmp_path):
    import subprocess
    import sys

    from graph import REPO, isolated_ros_environment
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    node = subprocess.run(
        [sys.executable, "-m", "omni_ros.ros.omni_node", "--ros-args",
         "-p", f"model_path:={tiny_checkpoint}",
         "-p", f"barge_in_record_path:={blocker}/robot.obr"],
        env=isolated_ros_environment(), cwd=REPO, capture_output=True, text=True, timeout=120)
    out = node.stdout + node.stderr
    assert node.returncode == 2, out
    assert f"[omni_node] cannot start: barge_in_record_path: cannot write the barge-in recording " \
           f"'{blocker}/robot.obr'" in out and "Traceback" not in out, out
