"""sensor_msgs images <-> HxWx3 uint8 RGB numpy arrays, and builtin_interfaces Time <-> ns.

uint8[] fields are read with np.frombuffer and filled from bytes (rclpy converts numpy arrays
element by element, which is orders of magnitude slower). No node code here.
"""
from __future__ import annotations

import io
import struct
from typing import Optional, Union

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

from omni_ros.flow.units import NS_PER_S, ns_to_sec_nanosec, stamp_to_ns

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
SUPPORTED_COMPRESSED = ("jpeg", "png")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1}
_BYTES_PER_CHANNEL = {"mono16": 2}


class ImageFormatError(ValueError):
    """An image message that cannot be converted to RGB."""


def ns_to_stamp(ns: int) -> Time:
    sec, nanosec = ns_to_sec_nanosec(ns)
    return Time(sec=sec, nanosec=nanosec)


def _as_buffer(data):
    """A uint8[] field (array.array('B'), bytes, list, numpy) as something np.frombuffer reads."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data, dtype=np.uint8).data
    try:
        return memoryview(data)
    except TypeError:
        return bytes(data)


def _scale16to8(values: np.ndarray) -> np.ndarray:
    """Round(v * 255 / 65535), so 8-bit values stored as v * 257 come back exactly."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


class ImageHeader:
    """The fields of a serialized sensor_msgs/Image read without deserializing its pixels."""

    __slots__ = ("stamp_ns", "frame_id", "height", "width", "encoding", "is_bigendian", "step",
                 "data_length")

    def __init__(self, stamp_ns, frame_id, height, width, encoding, is_bigendian, step,
                 data_length):
        self.stamp_ns, self.frame_id = stamp_ns, frame_id
        self.height, self.width, self.encoding = height, width, encoding
        self.is_bigendian, self.step, self.data_length = is_bigendian, step, data_length

    @property
    def data(self):   # check_image only needs len(data)
        return range(self.data_length)


class _CdrReader:
    """Reads the fields of a CDR-serialized message in order, after its 4-byte encapsulation
    header (which says the byte order). Raises ValueError, struct.error or IndexError when the
    bytes run out."""

    BASE = 4

    def __init__(self, raw: bytes) -> None:
        if len(raw) < self.BASE:
            raise ValueError("shorter than the CDR encapsulation header")
        self.raw = raw
        self.order = "<" if raw[1] & 1 else ">"
        self.pos = self.BASE

    def _unpack(self, code: str, size: int):
        self.pos += (-(self.pos - self.BASE)) % size   # CDR aligns each primitive to its size
        (value,) = struct.unpack_from(self.order + code, self.raw, self.pos)
        self.pos += size
        return value

    def int32(self) -> int:
        return self._unpack("i", 4)

    def uint32(self) -> int:
        return self._unpack("I", 4)

    def boolean(self) -> bool:
        value = bool(self.raw[self.pos])
        self.pos += 1
        return value

    def string(self) -> str:
        n = self.uint32()
        if n > self.remaining:
            raise ValueError("string runs past the end")
        text = bytes(self.raw[self.pos:self.pos + max(0, n - 1)]).decode("utf-8", "replace")
        self.pos += n
        return text

    def stamp_ns(self) -> int:
        """builtin_interfaces/Time (int32 sec, uint32 nanosec) -> nanoseconds."""
        sec = self.int32()
        return sec * NS_PER_S + self.uint32()

    @property
    def remaining(self) -> int:
        return len(self.raw) - self.pos


def header_stamp_ns(raw: bytes) -> Optional[int]:
    """The header stamp of a CDR-serialized message that starts with std_msgs/Header, without
    deserializing the rest (the pixels); None if the bytes are too short."""
    try:
        return _CdrReader(raw).stamp_ns()
    except (ValueError, struct.error, IndexError):
        return None


def parse_image_header(raw: bytes) -> ImageHeader:
    """Read a CDR-serialized sensor_msgs/Image's header fields and data length (no pixels).

    Raises ImageFormatError if the bytes are not a well-formed Image."""
    try:
        reader = _CdrReader(raw)
        stamp_ns = reader.stamp_ns()
        frame_id = reader.string()
        height, width = reader.uint32(), reader.uint32()
        encoding = reader.string()
        is_bigendian = reader.boolean()
        step = reader.uint32()
        data_length = reader.uint32()
        if data_length > reader.remaining:
            raise ValueError("data runs past the end")
    except (ValueError, struct.error, IndexError) as error:
        raise ImageFormatError(f"malformed serialized Image ({len(raw)} bytes): {error}") from None
    return ImageHeader(stamp_ns, frame_id, height, width, encoding, is_bigendian, step,
                       data_length)


def check_image(msg: Image) -> int:
    """Validate an Image's header against its data length without touching the pixels.

    Raises ImageFormatError for an unsupported encoding, a zero size, a step shorter than a row
    or data shorter than height * step; returns how many bytes the data has beyond height * step
    (0 normally; extra bytes are ignored by image_to_rgb).
    """
    encoding = str(msg.encoding).strip().lower()
    if encoding not in _CHANNELS:
        raise ImageFormatError(f"unsupported image encoding {msg.encoding!r}: supported are "
                               f"{', '.join(SUPPORTED_ENCODINGS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageFormatError(f"empty image: {width}x{height} ({msg.encoding})")
    row_bytes = width * _CHANNELS[encoding] * _BYTES_PER_CHANNEL.get(encoding, 1)
    if step < row_bytes:
        raise ImageFormatError(f"image step {step} is smaller than a row of {width} {encoding} "
                               f"pixels ({row_bytes} bytes)")
    size = len(msg.data)
    if size < height * step:
        raise ImageFormatError(f"image data has {size} bytes, expected height * step = "
                               f"{height} * {step} = {height * step} ({width}x{height} {encoding})")
    return size - height * step


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """An HxWx3 image whose longer side exceeds max_side, subsampled by the smallest integer
    stride that fits (block-averaged, so no aliasing); the same array if it already fits."""
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image
    stride = -(-longest // int(max_side))
    h, w = -(-height // stride) * stride, -(-width // stride) * stride
    if (h, w) != (height, width):   # edge-pad to whole blocks (a thin image keeps >= 1 row)
        image = np.pad(image, ((0, h - height), (0, w - width), (0, 0)), mode="edge")
    blocks = image.reshape(h // stride, stride, w // stride, stride, -1)
    return blocks.mean(axis=(1, 3), dtype=np.float32).round().astype(np.uint8)


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB, C-contiguous.

    For rgb8 without row padding the result shares memory with the message data (no copy).
    """
    check_image(msg)
    encoding = str(msg.encoding).strip().lower()
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * _CHANNELS[encoding] * _BYTES_PER_CHANNEL.get(encoding, 1)
    data = np.frombuffer(_as_buffer(msg.data), dtype=np.uint8)
    rows = data[:height * step].reshape(height, step)[:, :row_bytes]
    if encoding == "mono16":
        dtype = ">u2" if msg.is_bigendian else "<u2"
        gray16 = np.ascontiguousarray(rows).view(dtype).reshape(height, width)
        return _gray_to_rgb(_scale16to8(gray16))
    pixels = rows.reshape(height, width, _CHANNELS[encoding])
    if encoding == "rgb8":
        return np.ascontiguousarray(pixels)
    if encoding == "mono8":
        return _gray_to_rgb(pixels[:, :, 0])
    out = np.empty((height, width, 3), dtype=np.uint8)
    if encoding in ("bgr8", "bgra8"):
        out[:, :, 0] = pixels[:, :, 2]
        out[:, :, 1] = pixels[:, :, 1]
        out[:, :, 2] = pixels[:, :, 0]
    else:   # rgba8
        out[:] = pixels[:, :, :3]
    return out


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG, recognised by content) -> HxWx3 uint8 RGB."""
    from PIL import Image as PilImage  # noqa: PLC0415 - Pillow only when compressed input is used
    from PIL import UnidentifiedImageError  # noqa: PLC0415

    raw = bytes(_as_buffer(msg.data))
    if not raw:
        raise ImageFormatError(f"empty compressed image (format {msg.format!r})")
    try:
        with PilImage.open(io.BytesIO(raw), formats=["JPEG", "PNG"]) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                gray = np.asarray(img).astype(np.uint32)
                return _gray_to_rgb(_scale16to8(np.clip(gray, 0, 65535)))
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, PilImage.DecompressionBombError, OSError, SyntaxError,
            ValueError) as exc:
        raise ImageFormatError(f"cannot decode compressed image (format {msg.format!r}, "
                               f"{len(raw)} bytes): only JPEG and PNG are supported ({exc})") from None


def _to_time(stamp: Union[Time, int, None]) -> Time:
    if stamp is None:
        return Time()
    if isinstance(stamp, Time):
        return stamp
    return ns_to_stamp(int(stamp))


def rgb_to_image(array: np.ndarray, encoding: str = "rgb8", stamp: Union[Time, int, None] = None,
                 frame_id: str = "", row_padding: int = 0, big_endian: bool = False) -> Image:
    """HxWx3 uint8 RGB -> sensor_msgs/Image in `encoding`.

    mono8 takes an HxW uint8 array (or RGB, averaged), mono16 an HxW uint16 array (or 8-bit,
    scaled by 257); rgba8/bgra8 take HxWx3 (alpha 255) or HxWx4. `row_padding` bytes are added
    to every row (step = width * bytes per pixel + row_padding).
    """
    encoding = encoding.strip().lower()
    if encoding not in _CHANNELS:
        raise ImageFormatError(f"unsupported image encoding {encoding!r}: supported are "
                               f"{', '.join(SUPPORTED_ENCODINGS)}")
    array = np.asarray(array)
    if array.ndim not in (2, 3) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageFormatError(f"expected a non-empty HxW or HxWxC array, got shape {array.shape}")
    height, width = array.shape[:2]
    if encoding in ("mono8", "mono16"):
        if array.ndim == 3:
            array = array[:, :, :3].astype(np.float32).mean(axis=2).round().astype(np.uint8)
        if encoding == "mono16":
            array = array.astype(np.uint16) * 257 if array.dtype == np.uint8 \
                else array.astype(np.uint16)
            pixels = array.astype(">u2" if big_endian else "<u2")
        else:
            pixels = array.astype(np.uint8)
    else:
        rgb = array if array.ndim == 3 else _gray_to_rgb(array)
        rgb = rgb.astype(np.uint8)
        if encoding in ("rgba8", "bgra8"):
            alpha = rgb[:, :, 3:4] if rgb.shape[2] == 4 \
                else np.full((height, width, 1), 255, dtype=np.uint8)
            rgb = rgb[:, :, :3]
            pixels = np.concatenate([rgb[:, :, ::-1] if encoding == "bgra8" else rgb, alpha], axis=2)
        else:
            rgb = rgb[:, :, :3]
            pixels = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
    row = np.ascontiguousarray(pixels).reshape(height, -1).view(np.uint8)
    if row_padding:
        row = np.concatenate([row, np.zeros((height, row_padding), dtype=np.uint8)], axis=1)
    msg = Image()
    msg.header.stamp = _to_time(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(height), int(width)
    msg.encoding = encoding
    msg.is_bigendian = bool(big_endian and encoding == "mono16")
    msg.step = int(row.shape[1])
    msg.data = row.tobytes()
    return msg


def rgb_to_compressed(array: np.ndarray, fmt: str = "jpeg", stamp: Union[Time, int, None] = None,
                      frame_id: str = "", quality: int = 90) -> CompressedImage:
    """HxWx3 uint8 RGB -> sensor_msgs/CompressedImage (JPEG or PNG, image_transport format string)."""
    from PIL import Image as PilImage  # noqa: PLC0415

    fmt = fmt.strip().lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in SUPPORTED_COMPRESSED:
        raise ImageFormatError(f"unsupported compressed format {fmt!r}: supported are "
                               f"{', '.join(SUPPORTED_COMPRESSED)}")
    array = np.asarray(array, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageFormatError(f"expected a non-empty HxWx3 uint8 array, got shape {array.shape}")
    out = io.BytesIO()
    image = PilImage.fromarray(np.ascontiguousarray(array))
    if fmt == "jpeg":
        image.save(out, format="JPEG", quality=int(quality))
    else:
        image.save(out, format="PNG")
    msg = CompressedImage()
    msg.header.stamp = _to_time(stamp)
    msg.header.frame_id = frame_id
    msg.format = f"rgb8; {fmt} compressed bgr8"
    msg.data = out.getvalue()
    return msg


__all__ = ["ImageFormatError", "ImageHeader", "SUPPORTED_ENCODINGS", "SUPPORTED_COMPRESSED",
           "check_image", "header_stamp_ns", "parse_image_header",
           "compressed_to_rgb", "downscale",
           "image_to_rgb", "ns_to_stamp", "rgb_to_compressed", "rgb_to_image",
           "stamp_to_ns"]
