"""Start, spin and stop one node the way a ROS 2 console script should.

Ctrl-C and an external shutdown end the process normally; a startup error that the node raises
as `StartupError` is printed as one clear line and exits with status 2, without a traceback.

Once running, a node survives whatever one executor step raises: rclpy can fail to convert a
received message into Python (a malformed sample from a foreign publisher), and a callback can
raise. The step's message is lost, the error is logged (throttled) and counted through the
node's `on_executor_error(error)` hook when it has one, and spinning goes on.
"""
from __future__ import annotations

import ctypes
import gc
import os
import sys
import time
from typing import Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


class StartupError(RuntimeError):
    """A node cannot start (missing checkpoint, bad parameter); the message says how to fix it."""


# glibc's mallopt parameters (malloc.h) and the values set for received frames
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
FRAME_MMAP_THRESHOLD = 32 * 1024 * 1024     # glibc's largest: buffers up to this from the heap
FRAME_TRIM_THRESHOLD = 64 * 1024 * 1024     # free heap kept for the next frame before trimming


def keep_frame_buffers_on_heap() -> bool:
    """Have glibc serve buffers up to 32 MB from its heap and keep freed ones for reuse.

    Every received camera frame is a fresh buffer of its size (6 MB at 1080p rgb8). By default
    glibc maps such a buffer from the kernel and unmaps it when freed, so each frame pays a
    page fault per 4 KB page it is written into: about 8 ms of CPU per 1080p frame on a VM,
    several times the take itself. Served from the heap, the same memory is reused frame after
    frame. Skipped when the user set MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_, and
    off glibc. Returns whether it applied."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, FRAME_MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, FRAME_TRIM_THRESHOLD))


def freeze_startup_objects() -> int:
    """Move every object alive now (the model, its modules, imported libraries: about 390,000
    with torch and the tiny checkpoint loaded) out of the garbage collector's reach.

    A full collection walks every tracked object: about 200 ms with a model loaded, a stall
    paid by whichever callback allocated last. Objects made at startup live as long as the
    process, so they are frozen once the node is built (`gc.freeze`); full collections then
    walk only what came after. Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def run_node(node_factory: Callable[[], object], args: Sequence[str]) -> int:
    keep_frame_buffers_on_heap()
    rclpy.init(args=list(args))
    node = None
    executor = None
    try:
        node = node_factory()
        freeze_startup_objects()
        executor = make_executor(node)
        executor.add_node(node)
        spin_resiliently(executor, node)
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
        # Hand the startup objects back to the collector so that exit frees them (extension
        # types such as soxr's report instances still alive at exit as leaks).
        gc.unfreeze()
    return 0


ERROR_LOG_PERIOD_SEC = 5.0


def make_executor(node):
    """The executor the node's `executor` parameter names (events where rclpy has it)."""
    kind = "single"
    if node.has_parameter("executor"):
        kind = node.get_parameter("executor").value
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:
            node.get_logger().warning("executor events: this rclpy has no EventsExecutor; "
                                      "using single")
        else:
            return EventsExecutor(context=node.context)
    return SingleThreadedExecutor(context=node.context)


def spin_resiliently(executor, node) -> None:
    """`executor.spin()`, except that an exception from one step is reported and spinning goes on."""
    failures = 0
    last_logged = float("-inf")
    hook = getattr(node, "on_executor_error", None)
    while executor.context.ok():
        try:
            executor.spin_once(timeout_sec=0.5)
        except ExternalShutdownException:
            return
        except KeyboardInterrupt:
            raise
        except Exception as error:          # noqa: BLE001 - the node must outlive one bad step
            failures += 1
            if hook is not None:
                hook(error)
            now = time.monotonic()
            if now - last_logged >= ERROR_LOG_PERIOD_SEC:
                last_logged = now
                node.get_logger().error(
                    f"an executor step failed and was skipped ({type(error).__name__}: {error}); "
                    f"{failures} such failure(s) so far; the node goes on")


def split_ros_args(argv: Sequence[str]):
    """(the tool's own arguments, the `--ros-args ...` tail) of a command line."""
    argv = list(argv)
    if "--ros-args" not in argv:
        return argv, []
    cut = argv.index("--ros-args")
    return argv[:cut], argv[cut:]
