"""omni_ros_bringup: start the omni_ros graph (omni_flow_clock + omni_node) without ROS 2 launch.

The same graph as launch/omni.launch.py, for installs without `launch` (the PyPI ROS 2 wheels):
    omni_ros_bringup --model-path DIR [--backend torch] [--params-file FILE]
                     [--namespace NS] [--remap camera/image_raw:=/my/camera ...]
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import List, Optional, Sequence

from omni_ros.tools.processes import ProcessGroup, default_params_file, node_command


def graph_commands(model_path: str, backend: str = "torch", params_file: Optional[str] = None,
                   namespace: str = "", remaps: Sequence[str] = (), extra: Sequence[str] = (),
                   log_level: str = "info", window_sec: Optional[float] = None) -> List[List[str]]:
    """The two node command lines, with the parameter file, overrides and remaps applied."""
    params_file = params_file or str(default_params_file())
    common = ["--params-file", params_file, "--log-level", log_level]
    if window_sec is not None:   # both nodes must agree on the window
        common += ["-p", f"window_sec:={window_sec}"]
    if namespace:
        common += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
    for remap in remaps:
        common += ["-r", remap]
    clock = node_command("omni_ros.ros.clock_node", common)
    node = node_command("omni_ros.ros.omni_node",
                        [*common, "-p", f"model_path:={model_path}", "-p", f"backend:={backend}",
                         *extra])
    return [clock, node]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="omni_ros_bringup", description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="checkpoint folder")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--params-file", default=None, help="default: config/omni.yaml")
    parser.add_argument("--namespace", default="")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="topic remap applied to both nodes (repeatable)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="omni_node parameter override (repeatable)")
    parser.add_argument("--window-sec", type=float, default=None,
                        help="window length for both nodes (default: the parameter file's)")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    extra = [item for name in args.param for item in ("-p", name)]
    group = ProcessGroup()
    stop = {"requested": False}

    def request_stop(*_):
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    for command in graph_commands(args.model_path, args.backend, args.params_file,
                                  args.namespace, args.remap, extra, args.log_level,
                                  args.window_sec):
        group.start(command)
    status = 0
    try:
        while not stop["requested"]:
            exited = group.first_exited()
            if exited is not None:
                status = exited.returncode or 0
                print(f"[omni_ros_bringup] {' '.join(exited.args[:3])} exited with {status}; "
                      "stopping the graph", file=sys.stderr)
                break
            time.sleep(0.2)
    finally:
        group.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
