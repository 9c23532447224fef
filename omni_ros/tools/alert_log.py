"""An audit log of proactive alerts: one JSON object per line, rotated by size.

Rotation is the standard library's `logging.handlers.RotatingFileHandler` (FILE, FILE.1, ...
FILE.K, oldest dropped). The file is opened for appending, so alerts written before a restart
stay; every line is flushed as it is written. No ROS here: records are plain dicts.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import threading
from pathlib import Path
from typing import Iterator, Mapping

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5


class _MessageOnly(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class AlertLog:
    """Append alert records (dicts) as JSON lines to `path`, rotating at `max_bytes`."""

    _instances = 0
    _instances_lock = threading.Lock()

    def __init__(self, path, max_bytes: int = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive (the log is rotated by size)")
        if backups < 1:
            raise ValueError("backups must be at least 1 (or nothing survives a rotation)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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

    def write(self, record: Mapping) -> None:
        self.logger.info("%s", json.dumps(dict(record), ensure_ascii=False, sort_keys=True))

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()

    def __enter__(self) -> "AlertLog":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def read_alert_log(path) -> Iterator[dict]:
    """Every record in FILE and its rotated backups, oldest first."""
    path = Path(path)
    backups = sorted((p for p in path.parent.glob(path.name + ".*")
                      if p.suffix[1:].isdigit()), key=lambda p: -int(p.suffix[1:]))
    for file in [*backups, path]:
        if file.exists():
            with open(file, encoding="utf-8") as stream:
                for line in stream:
                    if line.strip():
                        yield json.loads(line)
