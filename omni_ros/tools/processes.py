"""Start and stop the graph's processes without ROS 2 launch (the PyPI ROS has none).

Each node runs as its own process (real DDS between them), with the large-frame Fast DDS profile
unless the user chose a Fast DDS set-up (`large_frame_environment`).

Ctrl-C: every child runs in a process group of its own, so a Ctrl-C at the terminal reaches
only the process that started them, which then stops them with one signal each: SIGINT, then
SIGTERM and SIGKILL for whatever is still running after a while. A node process (`node=True`,
one that runs `omni_ros.ros.runner.run_node`) starts with SIGINT and SIGTERM held (blocked, not
lost) until run_node can shut it down cleanly, so a Ctrl-C during its imports ends it quietly
too. Should the starting process die without stopping them, its children get SIGINT (Linux's
parent-death signal) rather than run on as orphans; the kernel sends it when the thread that
started them ends, so start them from a thread that lives as long as they should (the main one).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

PROFILES_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
# Set by a user who picked Fast DDS's transports; the profile would override that choice.
TRANSPORTS_VARIABLE = "FASTDDS_BUILTIN_TRANSPORTS"
LARGE_FRAME_PROFILE = "fastdds_large_frames.xml"

# signals a node process starts with held; run_node releases them (runner.HELD_SIGNALS)
NODE_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1   # linux/prctl.h


def share_dir() -> Path:
    """The package's share folder (launch/, config/): from the ament index, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("omni_ros"))
    except Exception:  # noqa: BLE001 - no ament index entry (source checkout): use the tree
        return PACKAGE_ROOT.parent


def config_file(name: str) -> Path:
    """config/NAME from the installed share folder, else from the source tree."""
    for base in (share_dir(), PACKAGE_ROOT.parent):
        candidate = base / "config" / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"config/{name} not found")


def default_params_file() -> Path:
    return config_file("omni.yaml")


def large_frame_environment(environ: Mapping[str, str] = os.environ) -> Dict[str, str]:
    """The variables that give a process the large-frame Fast DDS profile
    (config/fastdds_large_frames.xml: frames over 512 KB cross between processes whole): empty
    when `environ` already names a profile file or Fast DDS's built-in transports."""
    if environ.get(PROFILES_VARIABLE) or environ.get(TRANSPORTS_VARIABLE):
        return {}
    return {PROFILES_VARIABLE: str(config_file(LARGE_FRAME_PROFILE))}


def graph_environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """A copy of `environ` (default: this process's) for a process of the graph."""
    env = dict(os.environ if environ is None else environ)
    env.update(large_frame_environment(env))
    return env


def node_command(module: str, ros_args: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", module, "--ros-args", *ros_args]


def _child_setup(parent_pid: int, hold_signals: bool, prctl) -> None:
    """Runs in the child between fork and exec: own process group, parent-death signal, held
    signals for a node. Only a few system calls here: the parent may have threads, whose locks
    the child inherits held."""
    os.setpgid(0, 0)
    if hold_signals:
        signal.pthread_sigmask(signal.SIG_BLOCK, NODE_HELD_SIGNALS)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)
        if os.getppid() != parent_pid:   # the parent died before the line above
            os.kill(os.getpid(), signal.SIGINT)


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):   # not Linux: no parent-death signal
        return None


class ProcessGroup:
    """Child processes started together and stopped together."""

    def __init__(self) -> None:
        self.processes: List[subprocess.Popen] = []
        self._prctl = _prctl()

    def start(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None,
              node: bool = False, **kwargs) -> subprocess.Popen:
        """Start `command` (with `graph_environment(env)`); `node`: it runs run_node, which takes
        over the held SIGINT/SIGTERM."""
        parent, prctl = os.getpid(), self._prctl
        process = subprocess.Popen(
            list(command), env=graph_environment(env),
            preexec_fn=lambda: _child_setup(parent, node, prctl), **kwargs)
        self.processes.append(process)
        return process

    def first_exited(self) -> Optional[subprocess.Popen]:
        for process in self.processes:
            if process.poll() is not None:
                return process
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT to each process still running, SIGTERM to those left after `timeout` s,
        SIGKILL to those left 3 s later."""
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
