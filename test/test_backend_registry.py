"""Backends are found through the `omni_ros.backends` entry-point group, including one that a
separate package registers (built and installed into a temporary folder here)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omni_ros.runtime.registry import BackendError, available_backends, load_backend

PLUGIN = Path(__file__).parent / "data" / "omni_ros_test_plugin"

PROBE = """
import json, sys, time
from omni_ros.runtime.registry import BackendSettings, available_backends, create_session
from omni_ros.flow.types import UnitInput
import numpy as np
session = create_session("slow_torch", BackendSettings(model_path=sys.argv[1]))
unit = UnitInput(window_index=0, epoch=0, start_ns=0, end_ns=0, image=None, image_stamp_ns=0,
                 audio=np.zeros(16000, np.float32))
t0 = time.perf_counter()
out = session.run_unit(unit)
print(json.dumps({"backends": available_backends(), "type": type(session).__module__,
                  "listen": out.is_listen, "sec": time.perf_counter() - t0}))
"""


@pytest.mark.unit
def test_builtin_backends_are_listed():
    found = available_backends()
    assert {"torch", "onnxruntime", "tensorrt"} <= set(found)
    with pytest.raises(BackendError, match="unknown backend 'nope'.*available: .*torch"):
        load_backend("nope")


@pytest.mark.build
def test_a_separate_package_registers_a_backend(tmp_path, tiny_checkpoint):
    target, source = tmp_path / "site", tmp_path / "plugin"
    shutil.copytree(PLUGIN, source)                 # setuptools builds in the source folder
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, capture_output=True, text=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", PROBE, str(tiny_checkpoint)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backends"]["slow_torch"] == "omni_ros_test_plugin:SlowTorchBackend"
    assert result["type"] == "omni_ros_test_plugin"          # the plugin's session wrapper ran
    assert result["listen"] is True and result["sec"] >= 0.05
    # without the plugin on the path the name is unknown
    assert "slow_torch" not in available_backends()
