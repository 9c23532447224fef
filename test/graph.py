"""Helpers for tests that run omni_ros nodes as separate processes over real DDS."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

REPO = Path(__file__).resolve().parents[1]


def isolated_ros_environment() -> Dict[str, str]:
    """A DDS domain of this test run's own, discovery kept on this machine."""
    env = os.environ.copy()
    env.setdefault("ROS_DOMAIN_ID", str(20 + os.getpid() % 80))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    os.environ["ROS_DOMAIN_ID"] = env["ROS_DOMAIN_ID"]
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def start_node(module: str, ros_args: Sequence[str], env: Dict[str, str],
               log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process by the caller's stop()
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def stop(processes: List[subprocess.Popen], timeout: float = 10.0) -> List[int]:
    for process in processes:
        if process.poll() is None:
            process.send_signal(2)
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait())
    return codes


@contextmanager
def spinning(node: Node, context=None):
    """Spin a test-side node (in `context`, default the global one) in a background thread
    while the block runs."""
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield executor
    finally:
        executor.shutdown()
        thread.join(5)


def appender(lock: threading.Lock, into: list):
    """A subscription callback that appends each message to `into` under `lock`."""
    def callback(message):
        with lock:
            into.append(message)
    return callback


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               logs: Sequence[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
