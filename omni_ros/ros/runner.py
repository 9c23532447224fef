"""Start, spin and stop one node the way a ROS 2 console script should.

Ctrl-C and an external shutdown end the process normally; a startup error that the node raises
as `StartupError` is printed as one clear line and exits with status 2, without a traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


class StartupError(RuntimeError):
    """A node cannot start (missing checkpoint, bad parameter); the message says how to fix it."""


def run_node(node_factory: Callable[[], object], args: Sequence[str]) -> int:
    rclpy.init(args=list(args))
    node = None
    executor = None
    try:
        node = node_factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except StartupError as error:
        print(f"[{getattr(node_factory, '__name__', 'node')}] cannot start: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=5.0)
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


def split_ros_args(argv: Sequence[str]):
    """(the tool's own arguments, the `--ros-args ...` tail) of a command line."""
    argv = list(argv)
    if "--ros-args" not in argv:
        return argv, []
    cut = argv.index("--ros-args")
    return argv[:cut], argv[cut:]
