"""How the command-line tools find their graph: one `--namespace` option and one hint.

Every tool (recorder, scene player, console, alert log, bag tools) takes `--namespace NS` and
follows `/NS/omni/...`. A tool that waits on topics and sees no publisher on any of them within a
few seconds says once, on standard error, which topics it looked at, in which namespace and on
which ROS_DOMAIN_ID, so that a console started in the wrong namespace or domain does not sit
silent. A tool that publishes (the scene player, the bag player) says the same of subscribers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Optional, Sequence, TextIO

HINT_AFTER_SEC = 5.0


def add_namespace_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", default="", metavar="NS",
                        help="the graph's namespace, e.g. r1 (follows /r1/omni/...; "
                             "default: the root namespace)")


def normalize_namespace(namespace: str) -> str:
    """'' -> '', 'r1' or '/r1/' -> '/r1'."""
    namespace = (namespace or "").strip().strip("/")
    return "/" + namespace if namespace else ""


def domain_id() -> str:
    value = os.environ.get("ROS_DOMAIN_ID", "").strip()
    return value if value else "0 (ROS_DOMAIN_ID unset)"


class GraphWatch:
    """Say once when none of `topics` has a peer `after_sec` after start.

    `count(topic)` returns the number of peers (publishers for a listening tool, subscribers for a
    publishing one); topics are resolved against the node's namespace. Call `poll()` from the
    tool's spin loop; it costs one graph query a second at most and nothing once a peer was seen
    or the hint was given."""

    def __init__(self, node, topics: Sequence[str], prog: str, peers: str = "publisher",
                 after_sec: float = HINT_AFTER_SEC, stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.topics = [node.resolve_topic_name(t) for t in topics]
        self.prog = prog
        self.peers = peers
        self.after_sec = after_sec
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.started = clock()
        self.next_check = self.started
        self.done = False
        self.hinted = False

    def count(self, topic: str) -> int:
        if self.peers == "publisher":
            return self.node.count_publishers(topic)
        return self.node.count_subscribers(topic)

    def poll(self) -> bool:
        """True once a peer has been seen on any topic."""
        if self.done:
            return not self.hinted
        now = self.clock()
        if now < self.next_check:
            return False
        self.next_check = now + 1.0
        if any(self.count(t) > 0 for t in self.topics):
            self.done = True
            return True
        if now - self.started >= self.after_sec:
            self.done = self.hinted = True
            self.stream.write(self.message() + "\n")
            self.stream.flush()
        return False

    def message(self) -> str:
        namespace = self.node.get_namespace()
        return (f"[{self.prog}] no {self.peers} on {', '.join(self.topics)} after "
                f"{self.after_sec:.0f} s; this tool is in namespace {namespace} on ROS_DOMAIN_ID "
                f"{domain_id()}. Is the graph running with the same namespace (--namespace NS) "
                f"and ROS_DOMAIN_ID?")
