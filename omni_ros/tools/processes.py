"""Start and stop the graph's processes without ROS 2 launch (the PyPI ROS has none).

Each node runs as its own process (real DDS between them); stopping sends SIGINT, then SIGTERM,
then SIGKILL to whatever is still running.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def share_dir() -> Path:
    """The package's share folder (launch/, config/): from the ament index, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("omni_ros"))
    except Exception:  # noqa: BLE001 - no ament index entry (source checkout): use the tree
        return PACKAGE_ROOT.parent


def default_params_file() -> Path:
    for base in (share_dir(), PACKAGE_ROOT.parent):
        candidate = base / "config" / "omni.yaml"
        if candidate.exists():
            return candidate
    raise FileNotFoundError("config/omni.yaml not found")


def node_command(module: str, ros_args: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", module, "--ros-args", *ros_args]


class ProcessGroup:
    """Child processes started together and stopped together."""

    def __init__(self) -> None:
        self.processes: List[subprocess.Popen] = []

    def start(self, command: Sequence[str], env: Optional[dict] = None, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(list(command), env=env or os.environ.copy(), **kwargs)
        self.processes.append(process)
        return process

    def first_exited(self) -> Optional[subprocess.Popen]:
        for process in self.processes:
            if process.poll() is not None:
                return process
        return None

    def stop(self, timeout: float = 10.0) -> None:
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            alive = [p for p in self.processes if p.poll() is None]
            if not alive:
                return
            for process in alive:
                process.send_signal(sig)
            for process in alive:
                try:
                    process.wait(wait)
                except subprocess.TimeoutExpired:
                    pass
