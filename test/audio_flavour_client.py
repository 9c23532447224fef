"""Test-side helper for test_audio_flavours.py, run as a subprocess in the environment of one
audio_common_msgs flavour (only one can be imported per process). Prints one line
`RESULT {json}` with what it observed; the test asserts on it.

    python test/audio_flavour_client.py unit
    python test/audio_flavour_client.py roundtrip --seconds 4 [--refuse 3]

unit: the audio_flavours converters on real generated messages of this environment's flavour.
roundtrip: feed omni_node (already running in the same DDS domain) 48 kHz stereo S16 microphone
audio in this flavour, record omni/state, speech/audio_stamped, speech/audio, speech/audio_info
and omni_node's /diagnostics; --refuse N then sends N messages in a format omni_node refuses.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))          # graph.py
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))      # omni_ros (source tree)

from omni_ros.flow.audio import AudioFormatError, AudioInputStream  # noqa: E402
from omni_ros.ros import audio_flavours as flavours  # noqa: E402

MIC_RATE, MIC_CHANNELS, CHUNK_MS = 48000, 2, 20


def _error(call) -> str:
    try:
        call()
    except AudioFormatError as error:
        return str(error)
    return ""


def unit() -> dict:
    from builtin_interfaces.msg import Time
    from rclpy.serialization import deserialize_message, serialize_message

    out = {"flavour": flavours.FLAVOUR, "module": flavours._msgs.__file__}
    stamp = Time(sec=12, nanosec=345)
    stereo = (np.arange(-480, 480, dtype=np.int16) * 7).reshape(-1, 2)
    message = flavours.mic_message(stamp, stereo, 16000, 2, "mic")
    chunk = flavours.mic_chunk(message)
    out["s16"] = {"stamp_ns": chunk.stamp_ns, "same_bytes": bytes(chunk.data) == stereo.tobytes(),
                  "format": [chunk.sample_format, chunk.sample_rate, chunk.channels]}
    stream = AudioInputStream(48000, 1, "F32LE")
    if chunk.sample_format is None:   # ros-drivers: the format comes on mic/audio_info
        stream.set_format(*flavours.info_format(flavours.mic_info(16000, 2, "S16LE")))
    out["s16"]["changed"] = [flavours.apply_format(stream, chunk),
                             flavours.apply_format(stream, chunk)]
    _, samples = stream.push(chunk.stamp_ns, chunk.data)
    expected = stereo.astype(np.float32).mean(axis=1) / 32768.0
    out["s16"]["decoded_ok"] = bool(samples.shape == expected.shape
                                    and np.allclose(samples, expected, atol=1e-6))
    out["s16"]["stream"] = [stream.sample_format, stream.sample_rate, stream.channels]
    # the message as it arrives over DDS: deserialized, sequences as array.array
    wire = deserialize_message(serialize_message(message), flavours.MIC_TYPE)
    out["s16"]["wire_same_bytes"] = bytes(flavours.mic_chunk(wire).data) == stereo.tobytes()

    mono = np.linspace(-1.0, 1.0, 320, dtype=np.float32)
    chunk = flavours.mic_chunk(flavours.mic_message(stamp, mono, 16000, 1))
    out["f32"] = {"same_bytes": bytes(chunk.data) == mono.astype("<f4").tobytes(),
                  "format": [chunk.sample_format, chunk.sample_rate, chunk.channels]}
    if flavours.FLAVOUR == flavours.MGONZS13:
        refused = {}
        for code in (flavours.PA_INT32, flavours.PA_INT24, flavours.PA_INT8, flavours.PA_UINT8,
                     0):
            bad = flavours.mic_message(stamp, stereo, 16000, 2)
            bad.audio.info.format = code
            refused[str(code)] = _error(lambda: flavours.mic_chunk(bad))
        out["refused"] = refused
        odd = flavours.mic_message(stamp, stereo, 96000, 2)
        stream = AudioInputStream(16000, 1, "S16LE")
        out["bad_rate"] = {"error": _error(lambda: flavours.apply_format(
                                               stream, flavours.mic_chunk(odd))),
                           "kept": [stream.sample_format, stream.sample_rate, stream.channels]}
    speech = (np.arange(2400, dtype=np.int16) - 1200).astype("<i2").tobytes()
    plain, stamped = flavours.speech_messages(speech, 24000)
    wire = deserialize_message(serialize_message(stamped), flavours.SPEECH_STAMPED_TYPE)
    pcm, rate = flavours.speech_pcm(wire)
    out["speech"] = {"plain_type": type(plain).__name__, "stamped_type": type(stamped).__name__,
                     "same_bytes": pcm == speech, "rate": rate,
                     "plain_same_bytes": flavours.speech_pcm(plain)[0] == speech}
    if flavours.FLAVOUR == flavours.MGONZS13:
        info = stamped.audio.info
        out["speech"]["info"] = [info.format, info.rate, info.channels, info.chunk]
        out["speech"]["samples"] = len(stamped.audio.audio_data.int16_data)
    view = flavours.info_view(flavours.speech_info(24000, 2400))
    out["speech_info"] = [view.sample_format, view.channels, view.sample_rate, view.coding_format]
    return out


def roundtrip(seconds: float, refuse: int) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from omni_ros.ros.diagnostics import values_of
    from rclpy.node import Node

    from graph import appender, spinning, wait_until
    from omni_ros.msg import DuplexState
    from omni_ros.ros import qos

    rclpy.init()
    node = Node("audio_flavour_client")
    lock = threading.Lock()
    states, speech, plain, diagnostics, infos = [], [], [], [], []
    mic = node.create_publisher(flavours.MIC_TYPE, "mic/audio_stamped", qos.MIC_AUDIO)
    if flavours.MIC_INFO_TYPE is not None:
        node.create_publisher(flavours.MIC_INFO_TYPE, "mic/audio_info", qos.AUDIO_INFO).publish(
            flavours.mic_info(MIC_RATE, MIC_CHANNELS, "S16LE"))
    node.create_subscription(DuplexState, "omni/state", appender(lock, states), qos.OUTPUT)
    node.create_subscription(flavours.SPEECH_STAMPED_TYPE, "speech/audio_stamped",
                             appender(lock, speech), qos.SPEECH)
    node.create_subscription(flavours.SPEECH_TYPE, "speech/audio", appender(lock, plain),
                             qos.SPEECH)
    node.create_subscription(flavours.AudioInfo, "speech/audio_info", appender(lock, infos),
                             qos.AUDIO_INFO)
    node.create_subscription(DiagnosticArray, "/diagnostics", appender(lock, diagnostics),
                             qos.OUTPUT)
    frames = MIC_RATE * CHUNK_MS // 1000
    t = np.arange(frames) / MIC_RATE
    with spinning(node):
        wait_until(lambda: mic.get_subscription_count() > 0, 90, "omni_node to subscribe")
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < seconds:
            while sent * CHUNK_MS / 1000.0 <= time.monotonic() - start:
                tone = 0.05 * np.sin(2 * np.pi * 440 * (t + sent * CHUNK_MS / 1000.0))
                stereo = np.repeat((tone * 32767).astype(np.int16)[:, None], 2, axis=1)
                mic.publish(flavours.mic_message(node.get_clock().now().to_msg(), stereo,
                                                 MIC_RATE, MIC_CHANNELS, "mic"))
                sent += 1
            time.sleep(0.004)
        for _ in range(refuse):   # mgonzs13: paInt32 is a format omni_node refuses
            bad = flavours.mic_message(node.get_clock().now().to_msg(),
                                       np.zeros((frames, 2), np.int16), MIC_RATE, MIC_CHANNELS)
            bad.audio.info.format = flavours.PA_INT32
            bad.audio.audio_data.int32_data = np.zeros(frames * 2, np.int32)
            mic.publish(bad)
            time.sleep(0.02)
        time.sleep(2.0)   # the last speech plays out, /diagnostics comes round again
    with lock:
        chunks = []
        for message in speech:
            pcm, rate = flavours.speech_pcm(message)
            entry = {"window": message.header.frame_id, "samples": len(pcm) // 2, "rate": rate}
            if flavours.FLAVOUR == flavours.MGONZS13:
                info = message.audio.info
                entry["info"] = [info.format, info.rate, info.channels, info.chunk]
            chunks.append(entry)
        values = values_of(diagnostics, "omni_node")
        view = flavours.info_view(infos[-1]) if infos else None
        result = {"flavour": flavours.FLAVOUR, "mic_chunks_sent": sent,
                  "states": [[int(s.window_index), int(s.state)] for s in states],
                  "speaking": int(DuplexState.SPEAKING), "speech": chunks,
                  "plain_type": type(plain[0]).__name__ if plain else None,
                  "plain_count": len(plain),
                  "speech_info": None if view is None else [
                      view.sample_format, view.channels, view.sample_rate, view.coding_format],
                  "diagnostics": {k: values.get(k) for k in (
                      "audio_messages_received", "audio_messages_refused",
                      "audio_info_refused", "speech_chunks_published")}}
    node.destroy_node()
    rclpy.try_shutdown()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("unit", "roundtrip"))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--refuse", type=int, default=0)
    options = parser.parse_args(argv)
    result = unit() if options.mode == "unit" else roundtrip(options.seconds, options.refuse)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
