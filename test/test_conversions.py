"""Message <-> numpy conversions: sensor_msgs images (raw and compressed), stamps, microphone PCM."""
import array
import io

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from sensor_msgs.msg import CompressedImage, Image

from omni_ros.flow.audio import (LAG_CHUNKS, AudioFormatError, AudioInputStream, float_to_s16le,
                                  s16le_to_float)
from omni_ros.ros.conversions import (ImageFormatError, compressed_to_rgb, image_to_rgb,
                                      ns_to_stamp, rgb_to_compressed, rgb_to_image, stamp_to_ns)

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(1)
RGB = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)


# --- images -------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("padding", [0, 5])
def test_color_encodings_round_trip(encoding, padding):
    msg = rgb_to_image(RGB, encoding, stamp=123, frame_id="cam", row_padding=padding)
    assert isinstance(msg, Image) and msg.encoding == encoding
    assert msg.step == 7 * (4 if "a" in encoding else 3) + padding
    assert len(msg.data) == msg.height * msg.step
    out = image_to_rgb(msg)
    assert out.shape == (6, 7, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


def test_channel_order_by_pixel_value():
    red = np.zeros((1, 2, 3), np.uint8)
    red[..., 0] = 200
    bgr = rgb_to_image(red, "bgr8")
    assert bytes(bgr.data)[:3] == bytes([0, 0, 200])
    manual = Image(height=1, width=1, encoding="bgr8", step=3, data=bytes([10, 20, 30]))
    assert image_to_rgb(manual)[0, 0].tolist() == [30, 20, 10]
    manual = Image(height=1, width=1, encoding="bgra8", step=4, data=bytes([10, 20, 30, 40]))
    assert image_to_rgb(manual)[0, 0].tolist() == [30, 20, 10]
    manual = Image(height=1, width=1, encoding="rgba8", step=4, data=bytes([10, 20, 30, 40]))
    assert image_to_rgb(manual)[0, 0].tolist() == [10, 20, 30]


def test_mono8_round_trip_with_padding():
    gray = RNG.integers(0, 256, (5, 9), dtype=np.uint8)
    out = image_to_rgb(rgb_to_image(gray, "mono8", row_padding=3))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


@pytest.mark.parametrize("big_endian", [False, True])
def test_mono16_endianness_and_scaling(big_endian):
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)   # 0, 1, 255, 128 in 8 bit
    msg = rgb_to_image(values, "mono16", big_endian=big_endian, row_padding=2)
    assert msg.is_bigendian == big_endian
    first = bytes(msg.data)[2:4]
    assert first == (b"\x01\x01")
    out = image_to_rgb(msg)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]
    manual = Image(height=1, width=1, encoding="mono16", step=2, is_bigendian=big_endian,
                   data=bytes([0x12, 0x34]))
    expected = 0x1234 if big_endian else 0x3412
    assert int(image_to_rgb(manual)[0, 0, 0]) == round(expected * 255 / 65535)


def test_array_array_data_as_delivered_by_rclpy():
    msg = rgb_to_image(RGB, "rgb8")
    msg.data = array.array("B", bytes(msg.data))
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


@pytest.mark.parametrize("encoding", ["yuv422", "32FC1", "bayer_rggb8", "16UC1", ""])
def test_unsupported_encodings_refused(encoding):
    msg = Image(height=2, width=2, encoding=encoding, step=8, data=bytes(16))
    with pytest.raises(ImageFormatError, match="rgb8, bgr8, rgba8, bgra8, mono8, mono16"):
        image_to_rgb(msg)


def test_short_data_and_zero_size_refused():
    msg = rgb_to_image(RGB, "rgb8")
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(ImageFormatError, match="expected height"):
        image_to_rgb(msg)
    with pytest.raises(ImageFormatError, match="empty image"):
        image_to_rgb(Image(height=0, width=4, encoding="rgb8", step=12, data=b""))
    with pytest.raises(ImageFormatError, match="empty image"):
        image_to_rgb(Image(height=4, width=0, encoding="rgb8", step=0, data=b""))
    with pytest.raises(ImageFormatError, match="step"):
        image_to_rgb(Image(height=1, width=4, encoding="rgb8", step=6, data=bytes(6)))
    assert issubclass(ImageFormatError, ValueError)


def test_compressed_png_exact_and_jpeg_approximate():
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :]
    smooth[..., 1] = 128
    smooth[..., 2] = np.linspace(255, 0, 32, dtype=np.uint8)[:, None]
    png = rgb_to_compressed(smooth, "png", stamp=5)
    assert isinstance(png, CompressedImage) and "png" in png.format
    np.testing.assert_array_equal(compressed_to_rgb(png), smooth)
    jpeg = rgb_to_compressed(smooth, "jpeg", quality=95)
    decoded = compressed_to_rgb(jpeg)
    assert decoded.shape == smooth.shape
    assert np.abs(decoded.astype(int) - smooth.astype(int)).mean() < 3


def test_compressed_decoded_by_content_not_format_field():
    png = rgb_to_compressed(RGB, "png")
    png.format = "rgb8; jpeg compressed bgr8"       # wrong label: the content decides
    np.testing.assert_array_equal(compressed_to_rgb(png), RGB)
    png.data = array.array("B", bytes(png.data))
    np.testing.assert_array_equal(compressed_to_rgb(png), RGB)


def test_compressed_16bit_png():
    from PIL import Image as PilImage
    values = np.array([[0, 65535], [257, 32896]], dtype=np.uint16)
    buf = io.BytesIO()
    PilImage.fromarray(values).save(buf, format="PNG")
    msg = CompressedImage(format="mono16; png compressed ", data=buf.getvalue())
    assert compressed_to_rgb(msg)[..., 0].tolist() == [[0, 255], [1, 128]]


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n garbage"])
def test_undecodable_compressed_refused(data):
    with pytest.raises(ImageFormatError):
        compressed_to_rgb(CompressedImage(format="jpeg", data=data))


def test_stamp_helpers():
    for ns in [0, 1, 999_999_999, 1_000_000_000, 1_700_000_000_123_456_789]:
        stamp = ns_to_stamp(ns)
        assert 0 <= stamp.nanosec < 1_000_000_000
        assert stamp_to_ns(stamp) == ns
    msg = rgb_to_image(RGB, stamp=ns_to_stamp(42_000_000_007))
    assert stamp_to_ns(msg.header.stamp) == 42_000_000_007


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=12)
                  .map(lambda s: (s[0], s[1], 3))),
       st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8"]), st.integers(0, 7))
def test_any_color_array_round_trips_exactly(rgb, encoding, padding):
    np.testing.assert_array_equal(image_to_rgb(rgb_to_image(rgb, encoding, row_padding=padding)),
                                  rgb)


# --- audio --------------------------------------------------------------------------------------
RATES = [8000, 11025, 16000, 22050, 44100, 48000]


def pcm(signal, sample_format, channels):
    frames = np.repeat(signal[:, None], channels, axis=1) if channels == 2 else signal[:, None]
    if sample_format == "S16LE":
        return (np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes()
    return frames.astype("<f4").tobytes()


def feed(stream, raw, rate, frame_bytes, chunk_ms=20, t0=10**12):
    chunk_frames = rate * chunk_ms // 1000
    outs, stamps = [], []
    for frame in range(0, len(raw) // frame_bytes, chunk_frames):
        stamp = t0 + frame * 10**9 // rate
        s, out = stream.push(stamp, raw[frame * frame_bytes:(frame + chunk_frames) * frame_bytes])
        outs.append(out)
        stamps.append((s, out.shape[0]))
    return np.concatenate(outs), stamps


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("sample_format,channels", [("S16LE", 1), ("F32LE", 2), ("s16le", 2)])
def test_resampled_length_frequency_and_stamps(rate, sample_format, channels):
    seconds, freq, t0 = 2, 440.0, 10**12
    t = np.arange(rate * seconds) / rate
    signal = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    frame_bytes = (2 if sample_format.upper() == "S16LE" else 4) * channels
    stream = AudioInputStream(rate, channels, sample_format)
    out, stamps = feed(stream, pcm(signal, sample_format.upper(), channels), rate, frame_bytes,
                       t0=t0)
    assert out.dtype == np.float32
    # everything but what the streaming resampler still holds (< 75 ms) has come out
    assert 16000 * seconds - 1200 <= out.shape[0] <= 16000 * seconds
    # stamps are continuous: each chunk starts where the previous one ended
    emitted = 0
    for stamp, n in stamps:
        assert stamp == t0 + emitted * 10**9 // 16000
        emitted += n
    steady = out[2000:]
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(steady.shape[0])))
    peak_hz = np.argmax(spectrum) * 16000 / steady.shape[0]
    assert abs(peak_hz - freq) < 2.0
    assert np.max(np.abs(steady)) == pytest.approx(0.5, abs=0.02)
    assert stream.counters.resets == 0


def test_resampled_stamps_align_with_content():
    """A click at a known time comes out at that time on the 16 kHz timeline."""
    rate, t0 = 48000, 5 * 10**9
    signal = np.zeros(rate, np.float32)
    signal[rate // 2] = 1.0                                  # at t0 + 500 ms
    stream = AudioInputStream(rate, 1, "F32LE")
    out, stamps = feed(stream, pcm(signal, "F32LE", 1), rate, 4, t0=t0)
    click_ns = stamps[0][0] + int(np.argmax(out)) * 10**9 // 16000
    assert abs(click_ns - (t0 + 500_000_000)) <= 125_000    # within 2 output samples


def test_gap_resets_stream_and_reanchors():
    stream = AudioInputStream(48000, 1, "S16LE")
    chunk = bytes(960 * 2)
    t0 = 10**9
    for i in range(10):
        stream.push(t0 + i * 20_000_000, chunk)
    stamp, _ = stream.push(t0 + 10 * 20_000_000 + 30_000_000, chunk)   # 30 ms late: jitter
    assert stream.counters.resets == 0
    stamp, _ = stream.push(t0 + 5 * 10**9, chunk)                       # 4.7 s gap
    assert stream.counters.resets == 1 and stamp == t0 + 5 * 10**9
    stamp, _ = stream.push(t0 + 2 * 10**9, chunk)                       # backwards
    assert stream.counters.resets == 2


def test_a_lone_lost_chunk_restarts_the_timeline_at_the_lag_the_later_chunks_share():
    """A lost 20 ms chunk is within the stamps' jitter allowance, so the next chunks are snapped
    onto the timeline a chunk early; once LAG_CHUNKS of them in a row have come late, the
    timeline restarts at their shared lag, and the output stamps follow the capture times again
    instead of lagging them by the lost chunk until the next restart."""
    rng = np.random.default_rng(5)
    stream = AudioInputStream(16000, 1, "F32LE")
    chunk_ns, t0, lost, jitter_ns = 20_000_000, 10**9, 20, 3_000_000
    errors = {}
    for i in range(60):
        if i == lost:
            continue
        captured = t0 + i * chunk_ns
        data = pcm(rng.normal(0, 0.1, 320).astype(np.float32), "F32LE", 1)
        stamp, _ = stream.push(captured + int(rng.uniform(-jitter_ns, jitter_ns)), data)
        errors[i] = stamp - captured
    assert stream.counters.lag_restarts == 1 and stream.counters.resets == 1
    snapped = [errors[i] for i in range(lost + 1, lost + LAG_CHUNKS)]
    assert all(abs(e + chunk_ns) <= jitter_ns for e in snapped), snapped   # a chunk early
    after = [errors[i] for i in range(lost + LAG_CHUNKS, 60)]
    assert all(abs(e) <= 2 * jitter_ns for e in after), after


def test_stamp_jitter_of_half_a_chunk_never_restarts_the_timeline():
    """Jitter scatters both ways: however it falls, up to half a chunk either side, the
    timeline goes on (a run of late stamps is what a loss makes, not jitter)."""
    rng = np.random.default_rng(6)
    stream = AudioInputStream(16000, 1, "S16LE")
    chunk_ns = 20_000_000
    jitter = rng.uniform(-0.5, 0.5, 3000) * chunk_ns
    jitter[100:110] = chunk_ns // 2                          # ten at the late extreme in a row
    for i, j in enumerate(jitter.astype(np.int64)):
        stream.push(10**9 + i * chunk_ns + int(j), rng.integers(-999, 999, 320).astype("<i2").tobytes())
    assert stream.counters.resets == 0 and stream.counters.lag_restarts == 0


def test_passthrough_16k_is_exact():
    stream = AudioInputStream(16000, 1, "F32LE")
    x = np.linspace(-1, 1, 320, dtype=np.float32)
    stamp, out = stream.push(77, x.tobytes())
    assert stamp == 77
    np.testing.assert_array_equal(out, x)


def test_stereo_downmix_is_mean():
    stream = AudioInputStream(16000, 2, "S16LE")
    raw = np.array([16384, 0, -16384, -16384], "<i2").tobytes()
    _, out = stream.push(0, raw)
    np.testing.assert_allclose(out, [0.25, -0.5])


def test_nan_and_inf_replaced_and_counted():
    stream = AudioInputStream(16000, 1, "F32LE")
    raw = np.array([0.5, np.nan, np.inf, -np.inf, -0.5], "<f4").tobytes()
    _, out = stream.push(0, raw)
    assert out.tolist() == [0.5, 0.0, 0.0, 0.0, -0.5]
    assert stream.counters.nonfinite_samples == 3


def test_partial_trailing_frame_dropped_and_counted():
    stream = AudioInputStream(16000, 2, "S16LE")
    _, out = stream.push(0, bytes(4 * 10 + 3))
    assert out.shape == (10,) and stream.counters.partial_frame_bytes == 3
    mono = AudioInputStream(16000, 1, "F32LE")
    _, out = mono.push(0, array.array("B", bytes(4 * 5 + 1)))
    assert out.shape == (5,) and mono.counters.partial_frame_bytes == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(sample_rate=16000, channels=1, sample_format="U8"), "sample_format"),
    (dict(sample_rate=16000, channels=1, sample_format="S24LE"), "S16LE and F32LE"),
    (dict(sample_rate=96000, channels=1, sample_format="S16LE"), "8000..48000"),
    (dict(sample_rate=4000, channels=1, sample_format="S16LE"), "sample_rate"),
    (dict(sample_rate=16000, channels=6, sample_format="S16LE"), "channel"),
    (dict(sample_rate=16000, channels=0, sample_format="F32LE"), "channel"),
])
def test_unsupported_audio_formats_refused(kwargs, match):
    with pytest.raises(AudioFormatError, match=match):
        AudioInputStream(**kwargs)
    assert issubclass(AudioFormatError, ValueError)


def test_format_change_resets():
    stream = AudioInputStream(16000, 1, "S16LE")
    stream.push(0, bytes(640))
    stream.set_format(16000, 1, "s16le")                  # same format, other spelling
    assert stream.counters.resets == 0
    stream.set_format(44100, 2, "F32LE")
    assert stream.counters.resets == 1 and stream.sample_rate == 44100


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4000), st.sampled_from([1, 2]), st.sampled_from([16000, 44100]))
def test_any_s16le_bytes_decode_to_right_length(raw, channels, rate):
    stream = AudioInputStream(rate, channels, "S16LE")
    _, out = stream.push(0, raw)
    frames = len(raw) // (2 * channels)
    if rate == 16000:
        assert out.shape == (frames,)
    else:
        assert out.shape[0] <= frames * 16000 // rate + 1
    assert np.isfinite(out).all() and np.abs(out).max(initial=0) <= 1.0
    assert stream.counters.partial_frame_bytes == len(raw) % (2 * channels)
    del stream, out


def test_float_to_s16le_clips_and_round_trips():
    x = np.array([0.0, 0.5, -0.5, 1.5, -1.5], np.float32)
    data = float_to_s16le(x)
    assert len(data) == 10
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -16384, 32767, -32767]
    np.testing.assert_allclose(s16le_to_float(data)[:3], x[:3], atol=1e-4)
