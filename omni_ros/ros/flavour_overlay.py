"""An environment with another `audio_common_msgs` in front of this one's (see audio_flavours.py).

`python -m omni_ros.ros.flavour_overlay env PREFIX` prints the shell exports that put an
audio_common_msgs built into PREFIX (`pip install --prefix PREFIX ...`) ahead of the one in this
environment; the tests run the other flavour in subprocesses with `overlay_environment`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

EXPORTED = ("PYTHONPATH", "AMENT_PREFIX_PATH", "LD_LIBRARY_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE")


def overlay_environment(prefix, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """`base` (default os.environ) with the audio_common_msgs installed by
    `pip install --prefix PREFIX` in front of this environment's: its Python package on
    PYTHONPATH, its ament prefix on AMENT_PREFIX_PATH, and its libraries first on
    LD_LIBRARY_PATH (the C typesupport is found there by name, so the order matters).

    The ROS 2 PyPI wheels re-execute Python with their own LD_LIBRARY_PATH, in no fixed order,
    unless _ROS_WHEELS_BOOTSTRAP_COMPLETE is set: the library path here already contains what
    they add, and the marker is set so that the order holds."""
    env = dict(os.environ if base is None else base)
    prefix = Path(prefix).resolve()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = prefix / "lib" / version / "site-packages"

    def prepend(name: str, *values: str) -> None:
        old = [p for p in env.get(name, "").split(os.pathsep) if p and p not in values]
        env[name] = os.pathsep.join([*values, *old])

    venv_lib = Path(sys.prefix) / "lib"
    wheel_libs = sorted(str(p) for p in (venv_lib / version / "site-packages").glob("ros_*.libs"))
    old_libs = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep)
                if p and p not in (str(prefix / "lib"), str(venv_lib), *wheel_libs)]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(prefix / "lib"), str(venv_lib), *wheel_libs,
                                              *old_libs])
    prepend("PYTHONPATH", str(site))
    prepend("AMENT_PREFIX_PATH", str(prefix))
    env["_ROS_WHEELS_BOOTSTRAP_COMPLETE"] = "1"
    return env


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "env":
        from omni_ros.ros.audio_flavours import FLAVOUR  # noqa: PLC0415 - only for the usage line
        print("usage: python -m omni_ros.ros.flavour_overlay env PREFIX   (shell exports)\n"
              f"this environment's flavour: {FLAVOUR}", file=sys.stderr)
        return 2
    env = overlay_environment(argv[1])
    for name in EXPORTED:
        print(f"export {name}='{env[name]}'")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
