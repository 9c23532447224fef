"""Helpers shared by the benchmark scripts: the machine line and the results files."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    """One line naming the host, its CPU, core count and the torch build."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{platform.node()}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    try:
        import torch
        text += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def prefer_this_tree() -> None:
    """Import omni_ros from the tree this benchmark lives in, not from the editable install's
    redirect (which points at the checkout that was installed): a benchmark copied into a git
    worktree of another commit then measures that commit's code."""
    import sys
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not type(f).__module__.startswith("_editable")]
    if str(ROOT) in sys.path:
        sys.path.remove(str(ROOT))
    sys.path.insert(0, str(ROOT))     # before site-packages, where the install has its own copy
    # An omni_ros already imported through the redirect finds its submodules through it only.
    for name in [n for n in sys.modules if n == "omni_ros" or n.startswith("omni_ros.")]:
        del sys.modules[name]


def append_result(name: str, title: str, body: str) -> Path:
    """Print a dated section and append it to benchmarks/results/<name>.md."""
    text = (f"\n## {title}: {datetime.datetime.now().isoformat(timespec='seconds')}\n\n"
            f"Machine: {machine()}\n\n{body.rstrip()}\n")
    print(text)
    out = RESULTS / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(text)
    print(f"appended to {out}")
    return out


def stop_processes(processes, timeout: float = 15.0) -> None:
    """SIGINT to every process still running, then wait; kill what does not end in `timeout`."""
    import signal
    import subprocess

    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in processes:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
