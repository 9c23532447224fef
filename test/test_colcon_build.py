"""The package builds the way ROS users build it: `colcon build` in a workspace, here against the
ROS 2 wheels in this environment, and the built install space imports the generated messages."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.build

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("colcon", path=str(Path(sys.executable).parent)) is None
                    and shutil.which("colcon") is None, reason="colcon is not installed")
def test_colcon_build_generates_messages_and_installs_the_package(tmp_path):
    workspace = tmp_path / "ws"
    (workspace / "src").mkdir(parents=True)
    # A copy of the package as it would be checked out into src/ (without build products).
    shutil.copytree(REPO, workspace / "src" / "omni_ros", ignore=shutil.ignore_patterns(
        ".venv", "build", "install", "log", ".git", "checkpoints", "demo_output", "__pycache__",
        ".pytest_cache", ".hypothesis"))
    prefix = sys.prefix
    env = os.environ.copy()
    env["AMENT_PREFIX_PATH"] = prefix
    env["CMAKE_PREFIX_PATH"] = prefix
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    colcon = shutil.which("colcon", path=env["PATH"])
    result = subprocess.run(
        [colcon, "build", "--cmake-args",
         f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    install = workspace / "install" / "omni_ros"
    site = next(install.glob("lib/python3*/site-packages"))
    assert (site / "omni_ros" / "ros" / "omni_node.py").exists()
    assert (install / "lib" / "omni_ros" / "omni_node").exists()
    assert (install / "share" / "omni_ros" / "launch" / "omni.launch.py").exists()
    check = subprocess.run(
        [sys.executable, "-c",
         # the developer's editable install (an import hook) must not shadow the install space
         "import sys; sys.meta_path = [f for f in sys.meta_path "
         "if 'editable' not in type(f).__module__]; "
         "import omni_ros, omni_ros.msg as m; "
         "print(omni_ros.__file__); print(m.FlowTick().epoch, m.DuplexState.INTERRUPTED)"],
        env={**env, "PYTHONPATH": str(site), "LD_LIBRARY_PATH": f"{install / 'lib'}:{prefix}/lib"},
        capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert check.returncode == 0, check.stderr
    assert str(site) in check.stdout and "0 2" in check.stdout
