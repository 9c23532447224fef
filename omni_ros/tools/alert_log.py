"""omni_ros_alert_log: an audit log of proactive alerts, one JSON object per line, rotated by size.

    omni_ros_alert_log FILE [--namespace NS] [--max-bytes N] [--backups K]

Rotation is the standard library's `logging.handlers.RotatingFileHandler` (FILE, FILE.1, ...
FILE.K, oldest dropped). The file is opened for appending, so alerts written before a restart
stay; every line is flushed as it is written.

Each alert is written once, also across restarts: omni/alerts is transient local, so a log that
starts late or restarts first receives the alerts omni_node kept (its `alert_history`), some of
which it wrote before. A record is keyed by (namespace, window_index, stamp_ns); at start the keys
of the newest records in FILE and its backups are read back, and a record whose key is known is
not written again. The keys held are bounded (`DEFAULT_KEYS_KEPT`, far more than omni_node keeps).

The AlertLog class has no ROS in it (records are plain dicts); `main` runs the console's node as
a quiet recorder of alerts only.
"""
from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Tuple

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
DEFAULT_KEYS_KEPT = 4096   # alerts remembered for deduplication (omni_node keeps at most 1000)

Key = Tuple[str, int, int]


def record_key(record: Mapping) -> Optional[Key]:
    """(namespace, window_index, stamp_ns) of a record; None when it lacks them."""
    try:
        return (str(record.get("namespace", "/")), int(record["window_index"]),
                int(record["stamp_ns"]))
    except (KeyError, TypeError, ValueError):
        return None


class SeenKeys:
    """The most recent `capacity` keys, oldest forgotten first: bounded memory."""

    def __init__(self, capacity: int = DEFAULT_KEYS_KEPT, keys: Iterable[Key] = ()) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._keys: "OrderedDict[Key, None]" = OrderedDict()
        for key in keys:
            self.add(key)

    def __contains__(self, key: Key) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: Key) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)


class _MessageOnly(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class AlertLog:
    """Append alert records (dicts) as JSON lines to `path`, rotating at `max_bytes`."""

    _instances = 0
    _instances_lock = threading.Lock()

    def __init__(self, path, max_bytes: int = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS, keys_kept: int = DEFAULT_KEYS_KEPT) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive (the log is rotated by size)")
        if backups < 1:
            raise ValueError("backups must be at least 1 (or nothing survives a rotation)")
        self.path = Path(path).absolute()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.backups = max_bytes, backups
        # what earlier runs wrote (FILE and its backups): the newest keys
        self.seen = SeenKeys(keys_kept, (k for k in map(record_key, read_alert_log(
            self.path, skip_bad_lines=True)) if k is not None))
        self.found = len(self.seen)
        self.written = self.duplicates = 0
        self._lock = threading.Lock()
        self._end_torn_line()
        self.handler = logging.handlers.RotatingFileHandler(
            self.path, mode="a", maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.handler.setFormatter(_MessageOnly())
        with AlertLog._instances_lock:
            AlertLog._instances += 1
            name = f"omni_ros.alert_log.{AlertLog._instances}"
        # A logger of its own that nothing else writes to and that writes nowhere else.
        self.logger = logging.getLogger(name)
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)

    def _end_torn_line(self) -> None:
        """A file that ends without a newline (a run killed mid-write) gets one, so the next
        record starts a line of its own."""
        try:
            with open(self.path, "rb+") as stream:
                stream.seek(0, 2)
                if stream.tell() > 0:
                    stream.seek(-1, 2)
                    if stream.read(1) != b"\n":
                        stream.write(b"\n")
        except FileNotFoundError:
            pass

    def write(self, record: Mapping) -> bool:
        """Append the record unless one with its key was written already (here or by an earlier
        run on the same file); whether it was written."""
        key = record_key(record)
        with self._lock:
            if key is not None and key in self.seen:
                self.duplicates += 1
                return False
            if key is not None:
                self.seen.add(key)
            self.written += 1
        self.logger.info("%s", json.dumps(dict(record), ensure_ascii=False, sort_keys=True))
        return True

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()

    def __enter__(self) -> "AlertLog":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def read_alert_log(path, skip_bad_lines: bool = False) -> Iterator[dict]:
    """Every record in FILE and its rotated backups, oldest first. A line that is not a JSON
    object (torn by a crash) raises ValueError naming the file and line, or is skipped."""
    path = Path(path)
    backups = sorted((p for p in path.parent.glob(path.name + ".*")
                      if p.suffix[1:].isdigit()), key=lambda p: -int(p.suffix[1:]))
    for file in [*backups, path]:
        if not file.exists():
            continue
        with open(file, encoding="utf-8", errors="replace") as stream:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    yield record
                elif not skip_bad_lines:
                    raise ValueError(f"{file}:{number}: not a JSON object")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from omni_ros.tools.console import add_alert_log_arguments, check_alert_log_arguments
    from omni_ros.tools.graph_hint import add_namespace_argument

    parser = argparse.ArgumentParser(
        prog="omni_ros_alert_log",
        description="Append every proactive alert of a graph's omni/alerts to FILE as one JSON "
                    "line (time, namespace, window, level, text, instruction, confidence, "
                    "evidence stamp), rotated by size, each alert once: alerts raised while it "
                    "was not running are fetched from omni_node's kept history (alert_history) "
                    "when it starts, and those already in FILE are not written again.",
        epilog="Runs until Ctrl-C. Says on standard error if no omni_node publishes alerts in "
               "its namespace within 5 s.")
    parser.add_argument("file", metavar="FILE", help="the JSON-lines file to append to")
    add_namespace_argument(parser)
    add_alert_log_arguments(parser)
    parser.add_argument("--duration-sec", type=float, default=None, metavar="S",
                        help="stop after S seconds (default: until Ctrl-C)")
    options = parser.parse_args(argv)
    check_alert_log_arguments(parser, options)
    return options


def main(argv: Optional[Sequence[str]] = None) -> int:
    from omni_ros.ros.runner import split_ros_args
    from omni_ros.tools.console import follow
    from omni_ros.tools.graph_hint import domain_id

    own_args, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    options = parse_args(own_args)
    try:
        log = AlertLog(options.file, options.max_bytes, options.backups)
    except OSError as error:
        print(f"omni_ros_alert_log: error: cannot write {options.file}: {error.strerror or error}",
              file=sys.stderr)
        return 2

    def announce(node) -> None:
        topic = node.resolve_topic_name("omni/alerts")
        print(f"[omni_ros_alert_log] writing the alerts of {topic} (ROS_DOMAIN_ID {domain_id()}) "
              f"to {log.path}, rotated at {log.max_bytes} bytes, {log.backups} backups; "
              f"{log.found} alerts already there", file=sys.stderr, flush=True)

    code = follow("omni_ros_alert_log", options.namespace, None, None, ros_args, log,
                  options.duration_sec, node_name="omni_alert_log", alerts_only=True,
                  announce=announce)
    print(f"[omni_ros_alert_log] {log.written} alerts written, {log.duplicates} already in "
          f"{log.path.name} skipped", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
