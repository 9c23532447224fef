"""Start, spin and stop one node the way a ROS 2 console script should.

Ctrl-C, SIGTERM and an external shutdown end the process normally, with status 0: the first
SIGINT or SIGTERM stops the node where it is (spinning or still starting), and any later one is
ignored while it shuts down, so a second Ctrl-C, or a terminal's and a launcher's signal both
arriving, cannot break the shutdown with a traceback. A process started with these signals held
(blocked, as `omni_ros.tools.processes` starts a node) gets them once run_node can stop cleanly.
A startup error that the node raises as `StartupError` (while it is built, or from a callback)
is printed as one clear line naming the node (`[robot1.omni_node] cannot start: ...`) and exits
with status 2, without a traceback.

Once running, a node survives whatever one executor step raises: rclpy can fail to convert a
received message into Python (a malformed sample from a foreign publisher), and a callback can
raise. The step's message is lost, the error is logged (throttled) and counted through the
node's `on_executor_error(error)` hook when it has one, and spinning goes on.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions


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


HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# created by rclpy for every node; not the node's own inputs and outputs
INFRASTRUCTURE_TOPICS = frozenset({"/parameter_events", "/rosout"})


class StopSignals:
    """SIGINT and SIGTERM for a node process: the first ends it through run_node's cleanup; the
    rest are ignored, as is any once the shutdown has begun. While the node is being built (or
    its model loaded) the first raises KeyboardInterrupt in the main thread; once it spins, it
    only asks spinning to stop (`stop_requested`): Python runs a signal handler in the main
    thread at its next bytecode, which while spinning is most often inside a callback, and an
    exception raised there is reported by the executor as the callback's failure (rclpy's
    events executor logs it as FATAL with its stack) before it ends the spin. A signal the
    process ignores (a background job's SIGINT) stays ignored. Only the main thread can install
    signal handlers; elsewhere this does nothing, and rclpy's own handlers stay in charge
    (`active` is False).

    rclpy's handlers are left out where these are active: on a signal they shut the context
    down from a thread of their own, so whatever the main thread is doing at that moment (a node
    being built, a model loading) fails with an arbitrary error instead of stopping cleanly."""

    def __init__(self) -> None:
        self.received = 0
        self.shutting_down = False
        self.spinning = False           # set by run_node once the node spins
        self.stop_requested = False     # a signal came while spinning: spinning ends
        self.previous = {}

    @property
    def active(self) -> bool:
        return bool(self.previous)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in HELD_SIGNALS:
            if signal.getsignal(sig) != signal.SIG_IGN:
                self.previous[sig] = signal.signal(sig, self.on_signal)

    def release_held(self) -> None:
        """Deliver the signals a starting process held (a Ctrl-C during its imports) now."""
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)

    def on_signal(self, signum, frame) -> None:
        self.received += 1
        if self.received == 1 and not self.shutting_down:
            if self.spinning:
                self.stop_requested = True
                return
            raise KeyboardInterrupt

    def restore(self) -> None:
        """Put the previous handlers back, unless a signal came: the process is then on its way
        out and a late one must stay harmless."""
        if self.received == 0:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)


def node_in_traceback(error: BaseException):
    """The rclpy node whose construction (or method) raised `error`, if one was built."""
    from rclpy.node import Node
    trace = error.__traceback__
    while trace is not None:
        candidate = trace.tb_frame.f_locals.get("self")
        if isinstance(candidate, Node):
            return candidate
        trace = trace.tb_next
    return None


def startup_name(node_factory: Callable[[], object], node, error: BaseException) -> str:
    """The node's name as its log lines show it (`omni_node`, `robot1.omni_node`: the declared
    name after `__node:=` / `__ns:=` remaps), else the factory's name."""
    node = node if node is not None else node_in_traceback(error)
    if node is not None:
        try:
            return node.get_logger().name
        except Exception:  # noqa: BLE001 - a half-built node: fall back to the factory's name
            pass
    return getattr(node_factory, "__name__", "node")


def resolved_topics(node) -> str:
    """`inputs /a, /b; outputs /c`: the resolved (namespaced, remapped) topic names of the node's
    subscriptions and publishers, in creation order, for its ready line (rclpy's own topics and
    a lifecycle node's transition events left out)."""
    left_out = {*INFRASTRUCTURE_TOPICS, f"{node.get_fully_qualified_name()}/transition_event"}

    def names(entities) -> str:
        listed = []
        for entity in entities:
            name = entity.topic_name
            if name not in left_out and name not in listed:
                listed.append(name)
        return ", ".join(listed) or "none"
    return f"inputs {names(node.subscriptions)}; outputs {names(node.publishers)}"


def run_node(node_factory: Callable[[], object], args: Sequence[str]) -> int:
    keep_frame_buffers_on_heap()
    stop = StopSignals()
    stop.install()
    node = None
    executor = None
    try:
        rclpy.init(args=list(args),
                   signal_handler_options=SignalHandlerOptions.NO if stop.active else None)
        stop.release_held()
        node = node_factory()
        freeze_startup_objects()
        executor = make_executor(node)
        executor.add_node(node)
        stop.spinning = True
        spin_resiliently(executor, node, until=lambda: stop.stop_requested)
    except StartupError as error:
        stop.shutting_down = True
        name = startup_name(node_factory, node, error)
        print(f"[{name}] cannot start: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.shutting_down = True
        if executor is not None:
            executor.shutdown(timeout_sec=5.0)
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown(uninstall_handlers=False if stop.active else None)
        # Hand the startup objects back to the collector so that exit frees them (extension
        # types such as soxr's report instances still alive at exit as leaks).
        gc.unfreeze()
        stop.restore()
    return 0


def end_process(code: int) -> None:
    """Flush the process's output and end it now with `code`, without the interpreter's
    teardown. For a node's console script, after `run_node` has shut the node down: with a
    model loaded, the teardown (the frozen startup objects collected, every module's objects
    finalised one by one) took 1.1 s of the 1.5 s from Ctrl-C to exit, and a model thread that
    outlived the engine's bounded waits can hold it longer; the node's own cleanup has already
    run, so nothing is lost by skipping it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    logging.shutdown()
    os._exit(code)


def node_main(node_factory: Callable[[], object], args=None) -> int:
    """A node's `main`: as a console script (no `args`), run it until Ctrl-C or SIGTERM, then end
    the process at once (`end_process`); with `args`, run it and return its exit status."""
    code = run_node(node_factory, args if args is not None else sys.argv)
    if args is None:
        end_process(code)
    return code


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


def spin_resiliently(executor, node, until: Optional[Callable[[], bool]] = None) -> None:
    """`executor.spin()`, except that an exception from one step is reported and spinning goes
    on. A `StartupError` from a callback (a node that cannot go on) ends it: run_node reports it.
    Spinning also ends, after the step under way, once `until()` holds (a stop signal)."""
    failures = 0
    last_logged = float("-inf")
    hook = getattr(node, "on_executor_error", None)
    while executor.context.ok() and not (until is not None and until()):
        try:
            executor.spin_once(timeout_sec=0.5)
        except ExternalShutdownException:
            return
        except (KeyboardInterrupt, StartupError):   # a callback's StartupError ends the node
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
