"""omni_ros_bringup: start the omni_ros graph (omni_flow_clock + omni_node) without ROS 2 launch.

The same graph as launch/omni.launch.py, for installs without `launch` (the PyPI ROS 2 wheels):
    omni_ros_bringup --model-path DIR [--backend torch] [--params-file FILE]
                     [--namespace NS] [--remap camera/image_raw:=/my/camera ...]
                     [--use-sim-time] [--window-sec S] [--no-autostart]

Both nodes get the large-frame Fast DDS profile (config/fastdds_large_frames.xml) unless
FASTDDS_DEFAULT_PROFILES_FILE or FASTDDS_BUILTIN_TRANSPORTS is set. One Ctrl-C stops the graph:
the nodes run in process groups of their own and get one SIGINT each from here.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import List, Optional, Sequence, Tuple

from omni_ros.tools.processes import ProcessGroup, default_params_file, node_command

# parameters both nodes must agree on: a --param naming one goes to both
GRAPH_PARAMETERS = ("use_sim_time", "window_sec")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def graph_commands(model_path: str, backend: str = "torch", params_file: Optional[str] = None,
                   namespace: str = "", remaps: Sequence[str] = (), extra: Sequence[str] = (),
                   log_level: str = "info", window_sec: Optional[float] = None,
                   use_sim_time: bool = False, autostart: bool = True) -> List[List[str]]:
    """The two node command lines, with the parameter file, overrides and remaps applied.
    `extra`: omni_node's own `--ros-args` items."""
    params_file = params_file or str(default_params_file())
    common = ["--params-file", params_file, "--log-level", log_level]
    if window_sec is not None:   # both nodes must agree on the window
        common += ["-p", f"window_sec:={window_sec}"]
    if use_sim_time:             # ... and on the clock
        common += ["-p", "use_sim_time:=true"]
    if namespace:
        common += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
    for remap in remaps:
        common += ["-r", remap]
    clock = node_command("omni_ros.ros.clock_node", common)
    node = node_command("omni_ros.ros.omni_node",
                        [*common, "-p", f"model_path:={model_path}", "-p", f"backend:={backend}",
                         *extra, *([] if autostart else ["-p", "autostart:=false"])])
    return [clock, node]


def split_parameters(overrides: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(`-p` items for both nodes, `-p` items for omni_node) from NAME:=VALUE overrides."""
    shared, own = [], []
    for item in overrides:
        name = item.split(":=", 1)[0].strip()
        (shared if name in GRAPH_PARAMETERS else own).extend(("-p", item))
    return shared, own


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="omni_ros_bringup", description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="checkpoint folder")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--params-file", default=None, help="default: config/omni.yaml")
    parser.add_argument("--namespace", default="")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="topic remap applied to both nodes (repeatable)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="omni_node parameter override (repeatable); use_sim_time and "
                             "window_sec go to both nodes")
    parser.add_argument("--window-sec", type=float, default=None,
                        help="window length for both nodes (default: the parameter file's)")
    parser.add_argument("--use-sim-time", action="store_true",
                        help="both nodes follow /clock (use_sim_time:=true)")
    parser.add_argument("--no-autostart", dest="autostart", action="store_false",
                        help="omni_node waits, unconfigured, for lifecycle transitions "
                             "(autostart:=false)")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    shared, extra = split_parameters(args.param)
    commands = graph_commands(args.model_path, args.backend, args.params_file, args.namespace,
                              args.remap, extra, args.log_level, args.window_sec,
                              args.use_sim_time, args.autostart)
    commands = [[*command, *shared] for command in commands]
    group = ProcessGroup()
    stop = {"requested": False}

    def request_stop(*_):
        stop["requested"] = True

    for sig in STOP_SIGNALS:
        signal.signal(sig, request_stop)
    status = 0
    try:
        for command in commands:
            group.start(command, node=True)
        while not stop["requested"]:
            exited = group.first_exited()
            if exited is not None:
                status = exited.returncode or 0
                print(f"[omni_ros_bringup] {' '.join(exited.args[:3])} exited with {status}; "
                      "stopping the graph", file=sys.stderr)
                break
            time.sleep(0.1)
    finally:
        group.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
