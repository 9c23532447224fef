"""omni_node with the onnxruntime backend (exported ONNX files) over real DDS: the same unit loop
and outputs as with torch; a stale engine folder is a clear startup error."""
from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import pytest

from graph import REPO
from omni_ros.msg import DuplexState
from omni_ros.model.checkpoint import write_checkpoint
from omni_ros.runtime.onnx_export import export_all
from test_integration_dds import OUTPUT_RATE, run_duplex_graph

WINDOW_SEC = 0.5
CHUNK_MS = 100


@pytest.fixture(scope="module")
def engine_dir(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort_engines") / "onnxruntime"
    export_all(tiny_checkpoint, out, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def ort_run(ros_env, tiny_checkpoint, engine_dir, tmp_path_factory):
    return run_duplex_graph(ros_env, tiny_checkpoint, tmp_path_factory.mktemp("ort_logs"),
                            ["-p", "backend:=onnxruntime", "-p", f"engine_dir:={engine_dir}"],
                            feed_seconds=6.0)


def test_one_state_per_window_with_onnxruntime(ort_run):
    client, codes, logs = ort_run
    states = [int(s.window_index) for s in client.states]
    assert len(states) >= 7, f"only {len(states)} states: {logs[1].read_text()[-2000:]}"
    assert states == sorted(set(states))
    ticked = {int(t.index) for t in client.ticks if states[0] <= t.index <= states[-1]}
    assert ticked == set(states)
    assert codes == [0, 0]
    assert "backend=onnxruntime" in logs[1].read_text()


def test_speech_has_the_torch_form(ort_run):
    client = ort_run[0]
    info = client.speech_info
    assert (info.sample_format, info.channels, info.sample_rate) == ("S16LE", 1, OUTPUT_RATE)
    samples, sizes = defaultdict(int), set()
    for message in client.speech:
        count = len(message.audio.data) // 2
        samples[message.header.frame_id] += count
        sizes.add(count)
    speaking = [int(s.window_index) for s in client.states if s.state == DuplexState.SPEAKING]
    assert speaking, "with listen_prob_scale 0.02 the model must speak"
    for window in speaking[:-1] or speaking:
        assert samples[f"window_{window}"] == int(WINDOW_SEC * OUTPUT_RATE), window
    assert sizes <= {OUTPUT_RATE * CHUNK_MS // 1000}
    listening = [int(s.window_index) for s in client.states if s.state == DuplexState.LISTENING]
    assert all(samples[f"window_{w}"] == 0 for w in listening)


def test_diagnostics_report_compute_time(ort_run):
    client = ort_run[0]
    assert client.diagnostics
    values = {kv.key: kv.value for kv in client.diagnostics[-1].status[0].values}
    assert float(values["compute_ms_max"]) > 0.0
    assert int(values["audio_messages_received"]) >= 200


def test_stale_engine_folder_is_a_clear_startup_error(ros_env, engine_dir, tmp_path):
    other = write_checkpoint(tmp_path / "other", seed=1)
    result = subprocess.run(
        [sys.executable, "-m", "omni_ros.ros.omni_node", "--ros-args", "-p", f"model_path:={other}",
         "-p", "backend:=onnxruntime", "-p", f"engine_dir:={engine_dir}"],
        env=ros_env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "omni_ros_build_engines" in line]
    assert len(lines) == 1, result.stderr
    assert "cannot start" in lines[0] and "another checkpoint" in lines[0]
    assert f"--backend onnxruntime --out {engine_dir}" in lines[0]
    assert "Traceback" not in result.stderr
