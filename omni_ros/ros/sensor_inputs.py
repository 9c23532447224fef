"""The model node's sensor inputs: camera and microphone messages checked, converted and handed
to the flow engine, every refusal counted and warned about (throttled per kind).

Camera frames are checked from their header only (raw subscriptions read it from the CDR bytes)
and kept as received; only the newest frame of a window is ever deserialized and converted, when
its unit runs (`CameraInput.decode_frame`).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import numpy as np
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image

from omni_ros.flow.audio import AudioFormatError, AudioInputStream
from omni_ros.flow.engine import FlowEngine
from omni_ros.flow.units import NS_PER_S
from omni_ros.ros import audio_flavours
from omni_ros.ros.diagnostics import StampRate
from omni_ros.ros.conversions import (ImageFormatError, ImageHeader, check_image, compressed_to_rgb,
                                      downscale, image_to_rgb, parse_image_header, stamp_to_ns)

LOG_THROTTLE_SEC = 5.0


class ThrottledLog:
    """Warnings throttled per kind, here rather than by rclpy: rclpy's logger looks up its
    caller's frame and file before it throttles, about 0.1 ms a call, too much for a warning that
    a flood of bad messages raises on every one."""

    def __init__(self, logger) -> None:
        self.logger = logger
        self._logged_at: Dict[str, float] = {}      # kind -> time.monotonic() when last logged
        self._logged_counts: Dict[str, int] = {}    # counter -> value when last logged

    def warn(self, key: str, text: str, level: str = "warning",
             period: float = LOG_THROTTLE_SEC) -> bool:
        """Log unless a line of this kind went out in the last `period` s; whether it did."""
        now = time.monotonic()
        if now - self._logged_at.get(key, float("-inf")) < period:
            return False
        self._logged_at[key] = now
        # one call per level: rclpy refuses a call site whose severity changes between calls
        if level == "info":
            self.logger.info(text)
        elif level == "error":
            self.logger.error(text)
        else:
            self.logger.warning(text)
        return True

    def counter(self, key: str, value: int, message: str) -> None:
        """Warn when a counter has grown since it was last logged."""
        if value > self._logged_counts.get(key, 0) and self.warn(key, f"{message} ({key} = {value})"):
            self._logged_counts[key] = value


class _SerializedImage:
    """A camera frame as received (CDR bytes), deserialized only if its window uses it."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


class CameraInput:
    def __init__(self, engine: FlowEngine, log: ThrottledLog, max_image_side: Callable[[], int],
                 stamps: Optional[StampRate] = None) -> None:
        self.engine, self.log = engine, log
        self.max_image_side = max_image_side
        self.stamps = stamps       # the sender's rate, from the frames' stamps (diagnostics)
        self.counters = {"frames_received": 0, "frames_refused": 0, "frames_undecodable": 0,
                         "frames_downscaled": 0, "frames_oversized_data": 0}
        self.last_at = time.monotonic()
        # Why the camera's frames are refused, until one is accepted again (diagnostics WARN).
        self.refusing: Optional[str] = None

    def on_image(self, message) -> None:
        """An Image (raw CDR bytes) or CompressedImage message."""
        self.counters["frames_received"] += 1
        self.last_at = time.monotonic()
        if isinstance(message, (bytes, bytearray, memoryview)):
            try:
                header = parse_image_header(message)
            except ImageFormatError as error:
                return self._refuse("frames_malformed", error)
            size = len(message)
            stamp_ns, checked, message = header.stamp_ns, header, _SerializedImage(message)
        else:
            stamp_ns, checked, size = stamp_to_ns(message.header.stamp), message, len(message.data)
        if self.stamps is not None:
            self.stamps.add(stamp_ns, size)
        if isinstance(checked, (Image, ImageHeader)):
            # Header fields and the data length only: the pixels are decoded when taken.
            try:
                extra = check_image(checked)
            except ImageFormatError as error:
                return self._refuse("frames_refused", error)
            if extra:
                self.counters["frames_oversized_data"] += 1
                self.log.counter("frames_oversized_data", self.counters["frames_oversized_data"],
                                 f"camera frame has {extra} bytes beyond height * step; they are ignored")
        self.refusing = None
        if not self.engine.add_frame(stamp_ns, message):
            c = self.engine.buffer.counters
            self.log.counter("frames_out_of_time", c.frames_late + c.frames_future, "camera frame "
                             "stamped outside the open windows (far past or future) dropped")

    def _refuse(self, kind: str, error: ImageFormatError) -> None:
        self.counters["frames_refused"] += 1
        self.refusing = str(error)
        self.log.warn(kind, f"camera frame refused: {error}")

    def decode_frame(self, message) -> Optional[np.ndarray]:
        """The frame as HxWx3 uint8 RGB, downscaled to max_image_side; None if it cannot be read."""
        try:
            if isinstance(message, _SerializedImage):
                try:
                    message = deserialize_message(message.raw, Image)
                except Exception as error:  # noqa: BLE001 - rclpy raises several kinds
                    raise ImageFormatError(f"cannot deserialize the frame: {error}") from None
            image = compressed_to_rgb(message) if isinstance(message, CompressedImage) \
                else image_to_rgb(message)
            small = downscale(image, self.max_image_side())
            if small is not image:
                self.counters["frames_downscaled"] += 1
            return small
        except ImageFormatError as error:
            self.counters["frames_undecodable"] += 1
            self.log.warn("frames_undecodable", f"camera frame dropped: {error}")
            return None


class MicInput:
    """Microphone messages into the flow engine. An unsupported format, announced on
    mic/audio_info or carried by the messages (mgonzs13), makes every message refused and counted
    (`audio_messages_refused`) until a supported one arrives; `refusing` says why (None while the
    audio is accepted)."""

    def __init__(self, engine: FlowEngine, log: ThrottledLog, stream: AudioInputStream) -> None:
        self.engine, self.log, self.stream = engine, log, stream
        self.counters = {"audio_messages_received": 0, "audio_messages_refused": 0,
                         "audio_info_refused": 0}
        self.refusing: Optional[str] = None
        self.last_at = time.monotonic()

    def on_audio_info(self, message) -> None:
        try:
            self.stream.set_format(*audio_flavours.info_format(message))
        except AudioFormatError as error:
            self.counters["audio_info_refused"] += 1
            self.refusing = f"{error} (announced on mic/audio_info)"
            self.log.warn("audio_info_refused", f"mic/audio_info refused: {error}; the "
                          f"microphone's audio is refused until a supported format is announced")
            return
        self._accepted(message.sample_format, message.channels, message.sample_rate)

    def _accepted(self, sample_format, channels, sample_rate) -> None:
        again = "; its audio is accepted again" if self.refusing is not None else ""
        self.refusing = None
        self.log.logger.info(f"microphone format: {sample_format} {channels} ch "
                             f"{sample_rate} Hz{again}")

    def on_audio(self, message) -> None:
        self.counters["audio_messages_received"] += 1
        self.last_at = time.monotonic()
        try:
            chunk = audio_flavours.mic_chunk(message)   # mgonzs13: the format comes with it
            if chunk.sample_format is not None:
                if audio_flavours.apply_format(self.stream, chunk) or self.refusing is not None:
                    self._accepted(chunk.sample_format, chunk.channels, chunk.sample_rate)
            elif self.refusing is not None:             # ros-drivers: refused on mic/audio_info
                return self._refuse(self.refusing)
            stamp_ns, samples = self.stream.push(chunk.stamp_ns, chunk.data)
        except AudioFormatError as error:
            self.refusing = str(error)
            return self._refuse(self.refusing)
        c = self.stream.counters
        self.log.counter("audio_partial_frame_bytes", c.partial_frame_bytes, "microphone message "
                         "with a byte count that is not a whole number of frames: the trailing "
                         "bytes were dropped")
        self.log.counter("audio_duplicate_chunks", c.duplicate_chunks,
                         "microphone message repeated (same stamp and data): dropped")
        self.log.counter("audio_lag_restarts", c.lag_restarts, "microphone chunks kept coming "
                         "more than half a chunk later than the mic timeline expects (audio lost): "
                         "the timeline restarted at the lag they share")
        self.log.counter("audio_nonfinite_samples", c.nonfinite_samples,
                         "microphone samples that were NaN or inf were replaced by silence")
        if not samples.shape[0]:
            return
        barge_in = self.engine.add_audio(stamp_ns, samples)
        b = self.engine.buffer.counters
        self.log.counter("buffer_samples_late", b.samples_late, "microphone audio stamped in a "
                         "window already run (late or far in the past) dropped")
        self.log.counter("buffer_samples_future", b.samples_future, "microphone audio stamped too "
                         "far in the future dropped")
        self.log.counter("buffer_samples_overlap", b.samples_overlap, "microphone audio for "
                         "instants already heard (duplicate stamps) dropped")
        if barge_in is not None:
            onset_ns, dropped = barge_in
            self.log.warn("barge_in", f"barge-in at {onset_ns / NS_PER_S:.3f} s: {dropped} speech "
                                      f"chunks dropped", level="info", period=1.0)

    def _refuse(self, reason: str) -> None:
        self.counters["audio_messages_refused"] += 1
        self.log.warn("audio_messages_refused", f"microphone audio refused: {reason} "
                      f"(audio_messages_refused = {self.counters['audio_messages_refused']})")
