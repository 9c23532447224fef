"""Microphone input, in process: stamps smoothed against the sample count (AudioInputStream), and
audio in an unsupported format refused rather than misread (MicInput)."""
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from omni_ros.flow.audio import AudioFormatError, AudioInputStream
from omni_ros.flow.buffers import WindowBuffer
from omni_ros.flow.types import INPUT_SAMPLE_RATE
from omni_ros.flow.units import NS_PER_S, sample_index, samples_to_ns
from omni_ros.ros import audio_flavours
from omni_ros.ros.audio_flavours import MicChunk
from omni_ros.ros.conversions import ns_to_stamp
from omni_ros.ros.sensor_inputs import MicInput, ThrottledLog

pytestmark = pytest.mark.unit

CAPTURE_START_NS = 1_700_000_000 * NS_PER_S + 123_456_789   # a capture clock's first stamp


def chunk_pcm(rate: int, channels: int, frames: int, index: int) -> np.ndarray:
    """Chunk `index` of a quiet 437 Hz tone, interleaved int16 (every chunk different: no chunk
    length here holds a whole number of its periods)."""
    t = (np.arange(frames) + index * frames) / rate
    tone = (0.1 * np.sin(2 * np.pi * 437 * t) * 32767).astype(np.int16)
    return np.repeat(tone[:, None], channels, axis=1).reshape(-1)


def play(stream: AudioInputStream, buffer: WindowBuffer, frames: int, stamps, indices=None):
    """Push one chunk per stamp (chunk i of the tone for indices[i]) into `stream`, its output into
    `buffer`; the (out_stamp, samples) of every push that gave samples."""
    outputs = []
    for i, stamp in enumerate(stamps):
        index = i if indices is None else indices[i]
        pcm = chunk_pcm(stream.sample_rate, stream.channels, frames, index)
        out_stamp, samples = stream.push(stamp, pcm.astype("<i2").tobytes())
        if samples.shape[0]:
            buffer.add_audio(out_stamp, samples)
            outputs.append((out_stamp, samples.shape[0]))
    return outputs


def jittered_stamps(chunk_ns: int, count: int, seed: int = 0) -> np.ndarray:
    """The capture clock's chunk stamps with up to +-chunk/2 jitter; the first two at the extremes
    (+chunk/2, then -chunk/2: a whole chunk apart from where the timeline expects)."""
    jitter = np.random.default_rng(seed).uniform(-0.5, 0.5, count) * chunk_ns
    jitter[:2] = (chunk_ns // 2, -(chunk_ns // 2))
    return CAPTURE_START_NS + np.arange(count, dtype=np.int64) * chunk_ns + jitter.astype(np.int64)


@pytest.mark.parametrize("rate,channels,chunk_ms", [(16000, 1, 20), (16000, 1, 100),
                                                    (48000, 2, 100), (22050, 1, 200),
                                                    (44100, 2, 10)])
def test_stamps_jittered_within_a_chunk_give_contiguous_output(rate, channels, chunk_ms):
    frames = rate * chunk_ms // 1000
    stream = AudioInputStream(rate, channels)
    buffer = WindowBuffer(NS_PER_S)
    outputs = play(stream, buffer, frames, jittered_stamps(samples_to_ns(frames, rate), 150))
    assert stream.counters.resets == 0
    assert buffer.counters.samples_overlap == 0
    first = [sample_index(stamp, INPUT_SAMPLE_RATE) for stamp, _ in outputs]
    ends = [index + count for index, (_, count) in zip(first, outputs)]
    assert first[1:] == ends[:-1], "each output starts where the one before ended"
    assert first[0] == sample_index(CAPTURE_START_NS + samples_to_ns(frames, rate) // 2,
                                    INPUT_SAMPLE_RATE), "the timeline starts at the first stamp"


@pytest.mark.parametrize("chunk_ms,repeated", [(20, 10), (100, 2)])
def test_a_stretch_sent_again_is_still_counted_as_overlap(chunk_ms, repeated):
    """Chunks 0..19, then the last `repeated` of them again with their own stamps (a repeated
    stretch longer than a chunk and than max_gap_ns), then 20..29."""
    frames = INPUT_SAMPLE_RATE * chunk_ms // 1000
    chunk_ns = samples_to_ns(frames, INPUT_SAMPLE_RATE)
    indices = list(range(20)) + list(range(20 - repeated, 20)) + list(range(20, 30))
    stamps = [CAPTURE_START_NS + i * chunk_ns for i in indices]
    stream = AudioInputStream(INPUT_SAMPLE_RATE, 1)
    buffer = WindowBuffer(NS_PER_S)
    play(stream, buffer, frames, stamps, indices)
    assert stream.counters.resets == 1
    assert buffer.counters.samples_overlap == repeated * frames
    assert buffer.counters.samples_added - buffer.counters.samples_overlap == 30 * frames


@pytest.mark.parametrize("rate", [16000, 48000])
@pytest.mark.parametrize("jump_ns", [5 * NS_PER_S, -10 * NS_PER_S, 150_000_000, -150_000_000])
def test_a_clock_jump_beyond_a_chunk_reanchors_the_timeline(rate, jump_ns):
    """Ten 100 ms chunks (0..1 s), then ten more whose stamps jumped by `jump_ns`."""
    frames = rate // 10
    chunk_ns = samples_to_ns(frames, rate)
    stream = AudioInputStream(rate, 1)
    buffer = WindowBuffer(NS_PER_S, max_future_windows=1000)
    before = [CAPTURE_START_NS + i * chunk_ns for i in range(10)]
    after = [before[-1] + chunk_ns + jump_ns + i * chunk_ns for i in range(10)]
    play(stream, buffer, frames, before)
    outputs = play(stream, buffer, frames, after, range(10, 20))
    assert stream.counters.resets == 1
    assert outputs[0][0] == after[0], "the new timeline starts at the stamp after the jump"
    first = [sample_index(stamp, INPUT_SAMPLE_RATE) for stamp, _ in outputs]
    assert first[1:] == [i + n for i, (_, n) in zip(first, outputs)][:-1]
    # What the jumped stamps say was heard twice is counted downstream, less the resampler's
    # tail (dropped at the reset, never output).
    heard_twice_ns = max(0, min(before[0] + 10 * chunk_ns, after[0] + 10 * chunk_ns)
                         - max(before[0], after[0]))
    tail = stream.counters.samples_dropped_on_reset
    assert (tail == 0) == (rate == INPUT_SAMPLE_RATE)
    assert buffer.counters.samples_overlap == pytest.approx(
        max(0, heard_twice_ns * INPUT_SAMPLE_RATE // NS_PER_S - tail), abs=1)


@pytest.mark.parametrize("pause_ns", [0, 2 * NS_PER_S])
def test_a_format_change_goes_on_from_where_the_output_stopped(pause_ns):
    """22.05 kHz chunks of 20 ms that arrived before their AudioInfo were read as 16 kHz (each
    one 27.6 ms long): the timeline ran ahead of the stamps. After the format change the output
    goes on from where it stopped (no overlap), unless the stamps paused for longer than a chunk."""
    rate, frames = 22050, 441
    stream = AudioInputStream(INPUT_SAMPLE_RATE, 1)
    buffer = WindowBuffer(NS_PER_S)
    stamps = [CAPTURE_START_NS + samples_to_ns(i * frames, rate) for i in range(50)]
    misread = play(stream, buffer, frames, stamps[:4])
    heard_until = misread[-1][0] + samples_to_ns(misread[-1][1], INPUT_SAMPLE_RATE)
    assert heard_until - stamps[4] == 4 * (samples_to_ns(frames, INPUT_SAMPLE_RATE) - 20_000_000)
    stream.set_format(rate, 1, "S16LE")
    outputs = play(stream, buffer, frames, [s + pause_ns for s in stamps[4:]], range(4, 50))
    assert stream.counters.resets == 1 and buffer.counters.samples_overlap == 0
    assert outputs[0][0] == (heard_until if pause_ns == 0 else stamps[4] + pause_ns)


# -- MicInput: refused, not misread -------------------------------------------------------------
class RecordingLogger:
    """Records (level, text); like rclpy's logger, refuses a second level from one call site."""

    def __init__(self):
        self.lines = []
        self.site_levels = {}

    def __getattr__(self, level):
        def log(text):
            caller = sys._getframe(1)
            site = (caller.f_code.co_filename, caller.f_lineno, caller.f_lasti)
            if self.site_levels.setdefault(site, level) != level:
                raise ValueError("Logger severity cannot be changed between calls.")
            self.lines.append((level, text))
        return log

    def text(self, level=None):
        return "\n".join(t for lvl, t in self.lines if level in (None, lvl))


def make_mic(rate=16000, channels=1):
    buffer = WindowBuffer(NS_PER_S, max_future_windows=1000)

    def add_audio(stamp_ns, samples):   # FlowEngine.add_audio without barge-in
        buffer.add_audio(stamp_ns, samples)

    engine = SimpleNamespace(buffer=buffer, add_audio=add_audio)
    logger = RecordingLogger()
    return MicInput(engine, ThrottledLog(logger), AudioInputStream(rate, channels)), buffer, logger


def driver_messages(rate, channels, first_chunk, count, chunk_ms=20):
    """ros-drivers-flavour microphone messages (the format is not in them)."""
    frames = rate * chunk_ms // 1000
    return [audio_flavours.mic_message(ns_to_stamp(CAPTURE_START_NS + i * chunk_ms * 1_000_000),
                                       chunk_pcm(rate, channels, frames, i), rate, channels)
            for i in range(first_chunk, first_chunk + count)]


def ros_drivers_info(rate, channels, sample_format="S16LE"):
    return audio_flavours.AudioInfo(channels=channels, sample_rate=rate,
                                    sample_format=sample_format, bitrate=rate * channels * 16,
                                    coding_format="wave")


needs_ros_drivers = pytest.mark.skipif(audio_flavours.FLAVOUR != audio_flavours.ROS_DRIVERS,
                                       reason="mic/audio_info is the ros-drivers flavour's")


@needs_ros_drivers
@pytest.mark.parametrize("info,reason", [((96000, 1), "sample_rate 96000 Hz"),
                                         ((16000, 6), "channel count 6"),
                                         ((16000, 1, "S24LE"), "sample_format 'S24LE'")])
def test_an_unsupported_audio_info_refuses_the_audio_until_a_supported_one(info, reason):
    mic, buffer, logger = make_mic()
    for message in driver_messages(16000, 1, 0, 5):
        mic.on_audio(message)
    assert mic.refusing is None and buffer.counters.samples_added == 5 * 320
    mic.on_audio_info(ros_drivers_info(*info))
    assert reason in mic.refusing and "mic/audio_info" in mic.refusing
    assert mic.counters["audio_info_refused"] == 1
    assert f"mic/audio_info refused: unsupported audio {reason}" in logger.text("warning")
    for message in driver_messages(16000, 1, 5, 30):
        mic.on_audio(message)
    assert mic.counters["audio_messages_refused"] == 30
    assert buffer.counters.samples_added == 5 * 320, "refused audio is not read as 16 kHz mono"
    warnings = [t for lvl, t in logger.lines if t.startswith("microphone audio refused")]
    assert len(warnings) == 1, "the refusal warning is throttled"
    assert warnings[0].startswith(f"microphone audio refused: unsupported audio {reason}")
    mic.on_audio_info(ros_drivers_info(48000, 2))
    assert mic.refusing is None and "accepted again" in logger.text("info")
    for message in driver_messages(48000, 2, 35, 10):
        mic.on_audio(message)
    assert mic.counters["audio_messages_refused"] == 30
    assert mic.counters["audio_messages_received"] == 45
    assert buffer.counters.samples_added > 5 * 320 + 8 * 320, "accepted, read as 48 kHz stereo"


@needs_ros_drivers
def test_the_same_supported_audio_info_again_ends_a_refusal():
    mic, buffer, _ = make_mic()
    mic.on_audio_info(ros_drivers_info(96000, 1))
    mic.on_audio_info(ros_drivers_info(16000, 1))          # the format the stream already has
    assert mic.refusing is None
    for message in driver_messages(16000, 1, 0, 3):
        mic.on_audio(message)
    assert mic.counters["audio_messages_refused"] == 0 and buffer.counters.samples_added == 960


def test_a_format_carried_by_each_message_refuses_only_while_unsupported(monkeypatch):
    """The mgonzs13 flavour: each message says its format (mic_chunk raises for a PortAudio
    format omni_ros does not decode); refusal follows the messages."""
    def mic_chunk(message):
        if isinstance(message, AudioFormatError):
            raise message
        return message
    monkeypatch.setattr(audio_flavours, "mic_chunk", mic_chunk)
    mic, buffer, logger = make_mic()
    pcm = chunk_pcm(16000, 1, 320, 0).astype("<i2").tobytes()

    def chunk(i, rate=16000):
        return MicChunk(CAPTURE_START_NS + i * 20_000_000, pcm, "S16LE", rate, 1)
    mic.on_audio(chunk(0))
    mic.on_audio(chunk(1, rate=96000))
    assert "sample_rate 96000 Hz" in mic.refusing
    mic.on_audio(AudioFormatError("unsupported audio_common_msgs AudioInfo.format 2 (paInt32)"))
    assert "paInt32" in mic.refusing and mic.counters["audio_messages_refused"] == 2
    mic.on_audio(chunk(3))
    assert mic.refusing is None and "accepted again" in logger.text("info")
    assert mic.stream.sample_rate == 16000 and buffer.counters.samples_added == 2 * 320
