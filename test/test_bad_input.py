"""Property-based tests over the conversions: whatever arrives, a clean error or a valid result."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image

from omni_ros.flow.audio import AudioFormatError, AudioInputStream
from omni_ros.flow.buffers import WindowBuffer
from omni_ros.ros.conversions import (SUPPORTED_ENCODINGS, ImageFormatError, check_image,
                                      downscale, image_to_rgb, rgb_to_image)

pytestmark = pytest.mark.unit

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENCODINGS = st.sampled_from(list(SUPPORTED_ENCODINGS) + ["yuv422", "bayer_rggb8", "", "RGB8",
                                                         "32FC1", "16UC1"])


@FAST
@given(encoding=ENCODINGS, height=st.integers(0, 20), width=st.integers(0, 20),
       step_delta=st.integers(-8, 8), data_delta=st.integers(-50, 50),
       big=st.booleans())
def test_any_image_header_gives_rgb_or_a_clear_error(encoding, height, width, step_delta,
                                                     data_delta, big):
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=big)
    msg.step = max(0, width * 3 + step_delta)
    msg.data = bytes(max(0, height * msg.step + data_delta))
    try:
        extra = check_image(msg)
    except ImageFormatError as error:
        assert str(error)
        with pytest.raises(ImageFormatError):
            image_to_rgb(msg)
        return
    assert extra == len(msg.data) - height * msg.step >= 0
    rgb = image_to_rgb(msg)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8


@FAST
@given(encoding=st.sampled_from(SUPPORTED_ENCODINGS), height=st.integers(1, 12),
       width=st.integers(1, 12), padding=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_round_trip_of_every_encoding(encoding, height, width, padding, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if encoding.startswith("mono"):
        rgb[:] = rgb[:, :, :1]          # gray survives mono encodings exactly
    back = image_to_rgb(rgb_to_image(rgb, encoding, row_padding=padding))
    assert np.array_equal(back, rgb)


@FAST
@given(height=st.integers(1, 300), width=st.integers(1, 300), max_side=st.integers(64, 256))
def test_downscale_fits_and_never_refuses(height, width, max_side):
    image = np.full((height, width, 3), 7, np.uint8)
    small = downscale(image, max_side)
    assert max(small.shape[:2]) <= max(max_side, 1) and small.shape[2] == 3
    assert small.size > 0 and np.all(small == 7)


def test_huge_image_is_downscaled_not_refused():
    image = np.zeros((4320, 7680, 3), np.uint8)
    image[:, 3840:] = 255
    small = downscale(image, 2048)
    assert small.shape == (1080, 1920, 3) and small[0, 0, 0] == 0 and small[0, -1, 0] == 255


@FAST
@given(data=st.binary(max_size=2000), fmt=st.sampled_from(["S16LE", "F32LE", "s16le", "f32"]),
       rate=st.sampled_from([8000, 11025, 16000, 22050, 32000, 44100, 48000]),
       channels=st.sampled_from([1, 2]), stamps=st.lists(st.integers(-10**12, 10**19), min_size=1,
                                                          max_size=4))
def test_any_audio_bytes_give_finite_16k_mono(data, fmt, rate, channels, stamps):
    stream = AudioInputStream(rate, channels, fmt)
    buf = WindowBuffer(500_000_000)
    for stamp in stamps:
        out_stamp, samples = stream.push(stamp, data)
        assert samples.dtype == np.float32 and samples.ndim == 1
        assert np.all(np.isfinite(samples))
        buf.add_audio(out_stamp, samples)
    frame_bytes = (2 if fmt.lower().startswith("s16") else 4) * channels
    repeats = sum(1 for a, b in zip(stamps, stamps[1:]) if a == b) if data else 0
    assert stream.counters.duplicate_chunks == repeats
    assert stream.counters.partial_frame_bytes == (len(stamps) - repeats) * (len(data) % frame_bytes)


def test_nan_and_inf_samples_replaced_and_counted():
    stream = AudioInputStream(16000, 1, "F32LE")
    data = np.array([0.1, np.nan, np.inf, -np.inf, 0.2], "<f4").tobytes()
    _, samples = stream.push(0, data)
    assert np.all(np.isfinite(samples)) and stream.counters.nonfinite_samples == 3


@pytest.mark.parametrize("fmt,rate,channels", [("U8", 16000, 1), ("S24LE", 16000, 1),
                                               ("S16LE", 96000, 1), ("S16LE", 4000, 1),
                                               ("S16LE", 16000, 6)])
def test_unsupported_audio_formats_are_refused_clearly(fmt, rate, channels):
    with pytest.raises(AudioFormatError, match="unsupported"):
        AudioInputStream(rate, channels, fmt)


def test_duplicate_and_far_stamps_counted_not_stored_twice():
    buf = WindowBuffer(1_000_000_000)
    buf.add_audio(0, np.ones(1600, np.float32))
    buf.add_audio(0, np.ones(1600, np.float32))          # the same chunk again
    assert buf.counters.samples_overlap == 1600
    buf.take_window(0)
    buf.add_audio(-10**12, np.ones(16, np.float32))       # far in the past
    buf.add_audio(10**15, np.ones(16, np.float32))        # far in the future
    assert buf.counters.samples_late == 16 and buf.counters.samples_future == 16


@FAST
@given(encoding=ENCODINGS, height=st.integers(0, 9), width=st.integers(0, 9),
       frame_id=st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                        max_size=12), sec=st.integers(-2**31, 2**31 - 1),
       nanosec=st.integers(0, 999_999_999), big=st.booleans(), extra=st.integers(0, 7))
def test_image_header_read_from_the_serialized_bytes(encoding, height, width, frame_id, sec,
                                                     nanosec, big, extra):
    from rclpy.serialization import serialize_message
    from omni_ros.ros.conversions import parse_image_header
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=big,
                step=width * 3 + extra)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.data = bytes(height * msg.step + extra)
    header = parse_image_header(serialize_message(msg))
    assert (header.height, header.width, header.encoding, header.is_bigendian, header.step,
            header.data_length, header.frame_id) == (height, width, encoding, big, msg.step,
                                                     len(msg.data), frame_id)
    assert header.stamp_ns == sec * 1_000_000_000 + nanosec


@FAST
@given(raw=st.binary(max_size=64))
def test_garbage_bytes_are_a_clean_image_error(raw):
    from omni_ros.ros.conversions import parse_image_header
    try:
        parse_image_header(raw)
    except ImageFormatError:
        pass


def test_redelivered_audio_chunk_is_dropped_and_counted():
    stream = AudioInputStream(16000, 1, "S16LE")
    chunk = (np.arange(320) % 50).astype("<i2").tobytes()
    assert stream.push(0, chunk)[1].shape == (320,)
    assert stream.push(0, chunk)[1].shape == (0,)          # the same chunk again
    assert stream.counters.duplicate_chunks == 1
    assert stream.push(20_000_000, chunk)[1].shape == (320,)   # same bytes, next stamp: kept
