"""omni_node with the onnxruntime backend (exported ONNX files) over real DDS: the same unit loop
and outputs as with torch; a stale engine folder is a clear startup error."""
from __future__ import annotations

import subprocess
import sys

import pytest

from graph import REPO
from omni_ros.model.checkpoint import write_checkpoint
from omni_ros.runtime.onnx_export import export_all
from omni_ros.ros.diagnostics import values_of
from test_integration_dds import (OUTPUT_RATE, check_one_state_per_tick,
                                  check_speech_is_one_window_per_speaking_unit, run_duplex_graph)

pytestmark = pytest.mark.dds


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
    check_one_state_per_tick(ort_run, minimum=7)
    assert "backend=onnxruntime" in ort_run[2][1].read_text()


def test_speech_has_the_torch_form(ort_run):
    client = ort_run[0]
    info = client.speech_info
    assert (info.sample_format, info.channels, info.sample_rate) == ("S16LE", 1, OUTPUT_RATE)
    check_speech_is_one_window_per_speaking_unit(client)


def test_diagnostics_report_compute_time(ort_run):
    client = ort_run[0]
    assert client.diagnostics
    values = values_of(client.diagnostics, "omni_node")
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
