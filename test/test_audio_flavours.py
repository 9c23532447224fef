"""Both audio_common_msgs flavours (ros-drivers and mgonzs13): the converters of
omni_ros.ros.audio_flavours on real generated messages, and omni_node over DDS in each.

Only one `audio_common_msgs` can be imported per process. This environment has the ros-drivers
one (scripts/setup); the mgonzs13 one is built once per session from
third_party/audio_common_msgs_mgonzs13 into a prefix of its own, and everything that needs it
(omni_node, the test-side client test/audio_flavour_client.py) runs in a subprocess with that
prefix in front (flavour_overlay.overlay_environment).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest

import audio_flavour_client
from graph import REPO, isolated_ros_environment, start_node, stop
from omni_ros.ros import audio_flavours, flavour_overlay

MGONZS13_SOURCE = REPO / "third_party" / "audio_common_msgs_mgonzs13"
WINDOW_SEC, OUTPUT_RATE, SPEECH_CHUNK_MS = 0.5, 24000, 100
CHUNK_SAMPLES = OUTPUT_RATE * SPEECH_CHUNK_MS // 1000


def _result(completed: subprocess.CompletedProcess) -> dict:
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, \
        f"exit {completed.returncode}\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _client(mode: str, env: dict, *args: str, timeout: float = 120) -> dict:
    return _result(subprocess.run(
        [sys.executable, str(REPO / "test" / "audio_flavour_client.py"), mode, *args],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO))


@pytest.fixture(scope="session")
def mgonzs13_prefix(tmp_path_factory):
    """mgonzs13's audio_common_msgs, built with the same pip command scripts/setup uses for the
    ros-drivers one, into a prefix of its own. --ignore-installed: without it pip would remove
    the ros-drivers package of the same name from this environment."""
    prefix = tmp_path_factory.mktemp("mgonzs13") / "prefix"
    env = dict(os.environ)
    venv = sys.prefix
    for name in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
        env[name] = os.pathsep.join(p for p in (venv, env.get(name, "")) if p)
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-build-isolation", "--no-deps", "--ignore-installed", "--prefix", str(prefix),
         str(MGONZS13_SOURCE)], env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    output = "\n".join(line for line in (completed.stdout + completed.stderr).splitlines()
                       if not line.startswith(("WARNING: Location", "Looking in")))
    assert completed.returncode == 0, output[-5000:]
    return prefix


@pytest.fixture(scope="module")
def ros_env():
    return isolated_ros_environment()


@pytest.fixture(scope="module")
def mgonzs13_env(mgonzs13_prefix, ros_env):
    return flavour_overlay.overlay_environment(mgonzs13_prefix, ros_env)


# -- converters ---------------------------------------------------------------------------------
@pytest.mark.unit
def test_this_environment_is_the_ros_drivers_flavour():
    assert audio_flavours.FLAVOUR == audio_flavours.ROS_DRIVERS
    assert audio_flavours.MIC_TYPE.__name__ == "AudioDataStamped"
    assert audio_flavours.MIC_INFO_TYPE.__name__ == "AudioInfo"
    assert (audio_flavours.SPEECH_TYPE.__name__,
            audio_flavours.SPEECH_STAMPED_TYPE.__name__) == ("AudioData", "AudioDataStamped")


@pytest.mark.unit
def test_ros_drivers_converters():
    result = audio_flavour_client.unit()
    assert result["flavour"] == "ros-drivers"
    s16 = result["s16"]
    assert s16["stamp_ns"] == 12 * 10**9 + 345
    assert s16["same_bytes"] and s16["wire_same_bytes"]
    assert s16["format"] == [None, None, None], "the format comes on mic/audio_info"
    assert s16["changed"] == [False, False]
    assert s16["decoded_ok"] and s16["stream"] == ["S16LE", 16000, 2]
    assert result["f32"]["same_bytes"]
    speech = result["speech"]
    assert (speech["plain_type"], speech["stamped_type"]) == ("AudioData", "AudioDataStamped")
    assert speech["same_bytes"] and speech["plain_same_bytes"] and speech["rate"] is None
    assert result["speech_info"] == ["S16LE", 1, 24000, "wave"]


@pytest.mark.unit
def test_ros_drivers_messages_are_the_ones_omni_node_always_sent():
    """The ros-drivers output is unchanged: the AudioInfo and AudioData fields as before."""
    from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo

    info = audio_flavours.speech_info(24000, 2400)
    assert info == AudioInfo(channels=1, sample_rate=24000, sample_format="S16LE",
                             bitrate=24000 * 16, coding_format="wave")
    plain, stamped = audio_flavours.speech_messages(b"\x01\x00\x02\x00", 24000)
    assert plain == AudioData(data=b"\x01\x00\x02\x00")
    assert isinstance(stamped, AudioDataStamped) and stamped.audio == plain
    assert audio_flavours.mic_info(48000, 2) == AudioInfo(
        channels=2, sample_rate=48000, sample_format="S16LE", bitrate=48000 * 32,
        coding_format="wave")


@pytest.mark.build
def test_mgonzs13_converters(mgonzs13_env):
    result = _client("unit", mgonzs13_env)
    assert result["flavour"] == "mgonzs13"
    assert str(MGONZS13_SOURCE) not in result["module"] and "site-packages" in result["module"]
    s16 = result["s16"]
    assert s16["stamp_ns"] == 12 * 10**9 + 345
    assert s16["same_bytes"] and s16["wire_same_bytes"]
    assert s16["format"] == ["S16LE", 16000, 2], "paInt16 -> S16LE, rate and channels from info"
    assert s16["changed"] == [True, False], "the stream format follows the messages, once"
    assert s16["decoded_ok"] and s16["stream"] == ["S16LE", 16000, 2]
    assert result["f32"] == {"same_bytes": True, "format": ["F32LE", 16000, 1]}
    for code, name in (("2", "paInt32"), ("4", "paInt24"), ("16", "paInt8"), ("32", "paUInt8"),
                       ("0", "unknown")):
        error = result["refused"][code]
        assert name in error and "paInt16 (8)" in error and "paFloat32 (1)" in error
    assert "96000" in result["bad_rate"]["error"]
    assert result["bad_rate"]["kept"] == ["S16LE", 16000, 1]
    speech = result["speech"]
    assert (speech["plain_type"], speech["stamped_type"]) == ("Audio", "AudioStamped")
    assert speech["same_bytes"] and speech["plain_same_bytes"] and speech["rate"] == 24000
    assert speech["info"] == [audio_flavours.PA_INT16, 24000, 1, 2400]
    assert speech["samples"] == 2400
    assert result["speech_info"] == ["S16LE", 1, 24000, "wave"]


@pytest.mark.unit
def test_overlay_environment_puts_the_prefix_first(tmp_path):
    env = flavour_overlay.overlay_environment(tmp_path, {"LD_LIBRARY_PATH": "/x",
                                                         "PYTHONPATH": "/y"})
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs[0] == str(tmp_path / "lib") and libs[1] == os.path.join(sys.prefix, "lib")
    assert libs[-1] == "/x"
    assert env["PYTHONPATH"].split(os.pathsep)[0].startswith(str(tmp_path / "lib"))
    assert env["AMENT_PREFIX_PATH"].split(os.pathsep)[0] == str(tmp_path)
    assert env["_ROS_WHEELS_BOOTSTRAP_COMPLETE"] == "1"


# -- omni_node over DDS, in each flavour --------------------------------------------------------
def _roundtrip(env: dict, tiny_checkpoint, logs, refuse: int) -> tuple:
    window = ["-p", f"window_sec:={WINDOW_SEC}"]
    clock = start_node("omni_ros.ros.clock_node", window, env, logs / "clock.log")
    node = start_node("omni_ros.ros.omni_node", [
        *window, "-p", f"model_path:={tiny_checkpoint}", "-p", "force_listen_count:=0",
        "-p", "listen_prob_scale:=0.02", "-p", f"speech_chunk_ms:={SPEECH_CHUNK_MS}",
        "-p", "seed:=1", "-p", "diagnostics_period_sec:=0.5"], env, logs / "omni_node.log")
    try:
        try:
            result = _client("roundtrip", env, "--seconds", "4", "--refuse", str(refuse),
                             timeout=240)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- omni_node.log\n"
                                 f"{(logs / 'omni_node.log').read_text()[-3000:]}") from None
        codes = stop([node, clock])
    finally:
        stop([node, clock])
    return result, codes, (logs / "omni_node.log").read_text()


def _check_roundtrip(result: dict, codes, log: str, flavour: str) -> None:
    assert result["flavour"] == flavour
    assert f"audio_common_msgs flavour {flavour}" in log
    assert codes == [0, 0]
    windows = [w for w, _ in result["states"]]
    assert len(windows) >= 4, log[-2000:]
    assert windows == sorted(set(windows))
    speaking = [w for w, state in result["states"] if state == result["speaking"]]
    assert speaking, "with listen_prob_scale 0.02 the model must speak"
    samples = defaultdict(int)
    for chunk in result["speech"]:
        assert 0 < chunk["samples"] <= CHUNK_SAMPLES, chunk   # a turn's last chunk may be shorter
        samples[chunk["window"]] += chunk["samples"]
        if flavour == "mgonzs13":
            assert chunk["info"] == [audio_flavours.PA_INT16, OUTPUT_RATE, 1, chunk["samples"]]
            assert chunk["rate"] == OUTPUT_RATE
    # the last windows' speech may still be queued (a unit ending a turn plays 0.28 s past its
    # window: the waveform stage's final flush)
    finished = [w for w in speaking if w <= windows[-1] - 4] or speaking[:1]
    for window in finished:
        assert int(WINDOW_SEC * OUTPUT_RATE) <= samples[f"window_{window}"] \
            <= int(WINDOW_SEC * OUTPUT_RATE) + (3 * 2 + 8) * 480, window
    assert result["speech_info"] == ["S16LE", 1, OUTPUT_RATE, "wave"]
    assert result["plain_count"] >= len(result["speech"]) - 2 > 0
    diagnostics = result["diagnostics"]
    assert int(diagnostics["audio_messages_received"]) >= result["mic_chunks_sent"] - 5
    assert int(diagnostics["audio_info_refused"]) == 0


@pytest.mark.dds
def test_omni_node_speaks_ros_drivers_over_dds(ros_env, tiny_checkpoint, tmp_path):
    result, codes, log = _roundtrip(ros_env, tiny_checkpoint, tmp_path, refuse=0)
    _check_roundtrip(result, codes, log, "ros-drivers")
    assert result["plain_type"] == "AudioData"
    assert int(result["diagnostics"]["audio_messages_refused"]) == 0


@pytest.mark.dds
@pytest.mark.build
def test_omni_node_speaks_mgonzs13_over_dds(mgonzs13_env, tiny_checkpoint, tmp_path):
    result, codes, log = _roundtrip(mgonzs13_env, tiny_checkpoint, tmp_path, refuse=3)
    _check_roundtrip(result, codes, log, "mgonzs13")
    assert result["plain_type"] == "Audio"
    assert "microphone format: S16LE 2 ch 48000 Hz" in log
    assert int(result["diagnostics"]["audio_messages_refused"]) == 3, "paInt32 is refused"
    assert "paInt32" in log
