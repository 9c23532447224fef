"""Barge-in recordings: everything omni_node's barge-in detector was given, in the order it was
given, so that a robot that interrupted itself (or talked on over a person) can be replayed
offline, decision for decision, and other settings tried on exactly what it heard.

The detector decides from its inputs alone: the mic (16 kHz, stamped), the robot's speech as
played (the echo canceller's reference, stamped), resets, and its run-time settings. A
recording holds those, plus the decision each mic chunk gave. Replayed through a fresh detector
built the same way, it gives the same barge-ins at the same stamps (silero-vad in onnxruntime and
the canceller's numpy arithmetic are deterministic on one machine).

File layout (little-endian):

* line 1: ``omni_ros barge-in recording 1``
* line 2: JSON: ``detector`` (BargeInDetector's keyword arguments), ``echo_canceller`` (the kind
  given to make_echo_canceller), ``sample_rate``, ``node``, ``started`` (ISO 8601)
* records, each a header ``<cqI`` (kind, stamp in ns, count) and its payload:
  ``m`` mic chunk, ``r`` reference (count float32 samples each); ``b`` the barge-in the mic chunk
  just before gave (stamp: its onset; no payload); ``x`` reset; ``s`` run-time settings (count
  bytes of JSON: BargeInDetector.settings, written when they change).

The file is bounded (`max_bytes`): once full, recording stops and the detector runs on. A
recording cut short (the node killed) reads up to its last whole record.
"""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, List, Mapping, Optional, Tuple

import numpy as np

MAGIC = b"omni_ros barge-in recording 1\n"
RECORD = struct.Struct("<cqI")
MIC, REFERENCE, BARGE_IN, RESET, SETTINGS = b"m", b"r", b"b", b"x", b"s"
FLUSH_EVERY = 50            # records between flushes: about a second of 20 ms mic chunks


class RecordingError(ValueError):
    """The file is not a barge-in recording this code can read."""


class BargeInRecorder:
    """Writes one recording; `full` once `max_bytes` is reached (nothing more is written).

    An error writing (disk full, the file removed) ends the recording too: `error` says which;
    the detector it records must not fail because of it."""

    def __init__(self, path, header: Mapping, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.full = False
        self.error: Optional[str] = None
        self.ended: Optional[str] = None      # why it stopped: full, a write failed, closed
        self._settings: Optional[Mapping[str, float]] = None
        self._unflushed = 0
        self._file: Optional[IO[bytes]] = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        head = dict(header, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self._write(MAGIC + json.dumps(head, sort_keys=True).encode() + b"\n")

    @property
    def recording(self) -> bool:
        return self._file is not None

    def mic(self, stamp_ns: int, samples: np.ndarray, onset_ns: Optional[int],
            settings: Mapping[str, float]) -> None:
        """A mic chunk as the detector was given it, the run-time settings it was judged with
        (BargeInDetector.settings), and the barge-in onset it gave (None: none)."""
        if self._file is None:
            return
        if settings != self._settings:
            self._settings = settings
            text = json.dumps(settings).encode()
            self._record(SETTINGS, 0, len(text), text)
        self._samples(MIC, stamp_ns, samples)
        if onset_ns is not None:
            self._record(BARGE_IN, onset_ns, 0, b"")

    def reference(self, stamp_ns: int, samples: np.ndarray) -> None:
        self._samples(REFERENCE, stamp_ns, samples)

    def reset(self) -> None:
        self._record(RESET, 0, 0, b"")

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                self.error = str(error)
            self._file = None
            self.ended = (f"full at {self.bytes / 1e6:.1f} MB" if self.full else
                          f"writing failed: {self.error}" if self.error else "closed")

    def _samples(self, kind: bytes, stamp_ns: int, samples: np.ndarray) -> None:
        data = np.ascontiguousarray(samples, dtype="<f4").reshape(-1)
        self._record(kind, stamp_ns, data.shape[0], data.tobytes())

    def _record(self, kind: bytes, stamp_ns: int, count: int, payload: bytes) -> None:
        if self._file is None:
            return
        size = RECORD.size + len(payload)
        if self.bytes + size > self.max_bytes:
            self.full = True
            self.close()
            return
        self._write(RECORD.pack(kind, int(stamp_ns), int(count)) + payload)
        self._unflushed += 1
        if self._unflushed >= FLUSH_EVERY:
            self._unflushed = 0
            try:
                self._file.flush()
            except OSError as error:
                self.error = str(error)
                self.close()

    def _write(self, data: bytes) -> None:
        try:
            self._file.write(data)
            self.bytes += len(data)
        except OSError as error:
            self.error = str(error)
            self.close()


@dataclass
class Recording:
    """A recording read back: its header and its records in order (kind, stamp_ns, payload:
    float32 samples, a settings dict, or None)."""
    header: dict
    records: List[Tuple[bytes, int, object]] = field(default_factory=list)
    truncated: bool = False             # the file ended inside a record (the node was killed)

    @property
    def decisions(self) -> List[int]:
        """The barge-in onsets (ns) the node's detector gave, in order."""
        return [stamp for kind, stamp, _ in self.records if kind == BARGE_IN]

    def seconds(self, kind: bytes = MIC) -> float:
        rate = float(self.header.get("sample_rate", 16000))
        return sum(p.shape[0] for k, _, p in self.records if k == kind) / rate


def read_recording(path) -> Recording:
    """The recording at `path` (RecordingError when it is not one)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise RecordingError(f"{path}: not an omni_ros barge-in recording (it starts "
                             f"{data[:32]!r}, expected {MAGIC[:-1].decode()!r})")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise RecordingError(f"{path}: the recording's header line is cut short")
    try:
        header = json.loads(data[len(MAGIC):end])
    except ValueError as error:
        raise RecordingError(f"{path}: the recording's header is not JSON: {error}") from error
    recording = Recording(header)
    for record in _records(data, end + 1, recording):
        recording.records.append(record)
    return recording


def _records(data: bytes, at: int, recording: Recording) -> Iterator[Tuple[bytes, int, object]]:
    while at < len(data):
        if at + RECORD.size > len(data):
            recording.truncated = True
            return
        kind, stamp, count = RECORD.unpack_from(data, at)
        at += RECORD.size
        size = 4 * count if kind in (MIC, REFERENCE) else (count if kind == SETTINGS else 0)
        if kind not in (MIC, REFERENCE, BARGE_IN, RESET, SETTINGS):
            raise RecordingError(f"unknown record kind {kind!r} at byte {at - RECORD.size}")
        if at + size > len(data):
            recording.truncated = True
            return
        if kind in (MIC, REFERENCE):
            payload: object = np.frombuffer(data, dtype="<f4", count=count, offset=at).astype(np.float32)
        elif kind == SETTINGS:
            try:
                payload = json.loads(data[at:at + size])
            except ValueError as error:
                raise RecordingError(f"the settings record at byte {at - RECORD.size} is not "
                                     f"JSON: {error}") from error
        else:
            payload = None
        at += size
        yield kind, stamp, payload
