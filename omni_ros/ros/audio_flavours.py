"""The two `audio_common_msgs` flavours: which one this environment has, and conversions.

Two unrelated ROS 2 packages are both named `audio_common_msgs`, so only one can be imported in a
given environment; this module finds out at import which one `audio_common_msgs.msg` is:

- ros-drivers (ros-drivers/audio_common, the official binaries): `AudioData {uint8[] data}`,
  `AudioDataStamped {header, audio}`, and the stream format in a separate `AudioInfo`
  (channels, sample_rate, sample_format "S16LE"/"F32LE", bitrate, coding_format).
- mgonzs13 (mgonzs13/audio_common, used by whisper_ros and tts_ros): `AudioData` with typed
  arrays (float32_data, int32_data, int16_data, int8_data, uint8_data), `AudioInfo {int8 format
  (a PortAudio sample-format code), int32 rate, int32 channels, int32 chunk}`,
  `Audio {audio_data, info}` and `AudioStamped {header, audio}`: every message carries its format.

omni_node, the scene player and the recorder use the types and converters below, so they speak
whichever flavour is installed. Conversions are numpy/array buffer copies, never per sample.

`python -m omni_ros.ros.audio_flavours env PREFIX` prints the shell exports that put an
audio_common_msgs built into PREFIX (`pip install --prefix PREFIX ...`) ahead of the one in this
environment.
"""
from __future__ import annotations

import array
import os
import sys
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np

import audio_common_msgs.msg as _msgs

from omni_ros.flow.audio import SAMPLE_DTYPES, AudioFormatError, normalize_sample_format
from omni_ros.flow.units import stamp_to_ns

ROS_DRIVERS = "ros-drivers"
MGONZS13 = "mgonzs13"

if hasattr(_msgs, "AudioStamped") and hasattr(_msgs, "Audio"):
    FLAVOUR = MGONZS13
elif hasattr(_msgs, "AudioDataStamped"):
    FLAVOUR = ROS_DRIVERS
else:   # pragma: no cover - neither known layout
    raise ImportError(f"audio_common_msgs at {getattr(_msgs, '__file__', '?')} is neither the "
                      f"ros-drivers flavour (AudioDataStamped) nor the mgonzs13 flavour "
                      f"(AudioStamped)")

# PortAudio sample-format codes (portaudio.h), as mgonzs13's AudioInfo.format carries them.
PA_FLOAT32, PA_INT32, PA_INT24, PA_INT16, PA_INT8, PA_UINT8 = 1, 2, 4, 8, 16, 32
PA_NAMES = {PA_FLOAT32: "paFloat32", PA_INT32: "paInt32", PA_INT24: "paInt24",
            PA_INT16: "paInt16", PA_INT8: "paInt8", PA_UINT8: "paUInt8"}
# The PortAudio formats omni_ros decodes -> (AudioData field, AudioInputStream sample format).
PA_SUPPORTED = {PA_INT16: ("int16_data", "S16LE"), PA_FLOAT32: ("float32_data", "F32LE")}
_LITTLE_ENDIAN = sys.byteorder == "little"

AudioInfo = _msgs.AudioInfo
if FLAVOUR == MGONZS13:
    MIC_TYPE = _msgs.AudioStamped          # mic/audio_stamped
    MIC_INFO_TYPE = None                   # the format travels in each message
    SPEECH_TYPE = _msgs.Audio              # speech/audio
    SPEECH_STAMPED_TYPE = _msgs.AudioStamped
else:
    MIC_TYPE = _msgs.AudioDataStamped
    MIC_INFO_TYPE = _msgs.AudioInfo        # mic/audio_info, latched
    SPEECH_TYPE = _msgs.AudioData
    SPEECH_STAMPED_TYPE = _msgs.AudioDataStamped


class MicChunk(NamedTuple):
    """One microphone message, ready for AudioInputStream.push. The format fields are None when
    the message does not carry them (ros-drivers: they come from mic/audio_info)."""
    stamp_ns: int
    data: object                  # bytes, or the message's own byte buffer (not copied)
    sample_format: Optional[str]  # "S16LE" | "F32LE"
    sample_rate: Optional[int]
    channels: Optional[int]


def describe() -> str:
    """A line for the start-up log: the flavour and the types on the audio topics."""
    if FLAVOUR == MGONZS13:
        return ("audio_common_msgs flavour mgonzs13: mic/audio_stamped and speech/audio_stamped "
                "are AudioStamped, speech/audio is Audio (format in each message, paInt16 or "
                "paFloat32 in)")
    return ("audio_common_msgs flavour ros-drivers: mic/audio_stamped and speech/audio_stamped "
            "are AudioDataStamped, speech/audio is AudioData, formats on */audio_info")


def pa_to_sample_format(pa_format: int) -> Tuple[str, str]:
    """PortAudio code -> (AudioData field, "S16LE" | "F32LE"); AudioFormatError otherwise."""
    try:
        return PA_SUPPORTED[int(pa_format)]
    except (KeyError, TypeError, ValueError):
        name = PA_NAMES.get(pa_format, "unknown")
        raise AudioFormatError(
            f"unsupported audio_common_msgs AudioInfo.format {pa_format!r} ({name}): supported "
            f"are paInt16 ({PA_INT16}) and paFloat32 ({PA_FLOAT32})") from None


def _samples_to_le_bytes(values, dtype) -> bytes:
    """A typed sequence (array.array from rclpy, numpy, list) -> little-endian PCM bytes."""
    native = np.dtype(dtype).newbyteorder("=")
    samples = np.asarray(values, dtype=native)
    return samples.astype(np.dtype(dtype), copy=False).tobytes()


def mic_chunk(message) -> MicChunk:
    """A mic/audio_stamped message of this flavour -> MicChunk. Raises AudioFormatError for an
    mgonzs13 message whose format is not paInt16 or paFloat32."""
    stamp_ns = stamp_to_ns(message.header.stamp)
    if FLAVOUR == ROS_DRIVERS:
        return MicChunk(stamp_ns, message.audio.data, None, None, None)
    info = message.audio.info
    field, sample_format = pa_to_sample_format(info.format)
    values = getattr(message.audio.audio_data, field)
    data = _samples_to_le_bytes(values, SAMPLE_DTYPES[sample_format])
    return MicChunk(stamp_ns, data, sample_format, int(info.rate), int(info.channels))


def info_format(message) -> Tuple[int, int, str]:
    """A ros-drivers AudioInfo -> (sample_rate, channels, sample_format) for set_format."""
    return message.sample_rate, message.channels, message.sample_format


class InfoView(NamedTuple):
    """An AudioInfo of either flavour, in the ros-drivers field names."""
    sample_rate: int
    channels: int
    sample_format: str
    coding_format: str = "wave"


def info_view(message):
    """An AudioInfo of this flavour with ros-drivers field names (sample_rate, channels,
    sample_format, coding_format): the ros-drivers message itself, or an InfoView."""
    if FLAVOUR == ROS_DRIVERS:
        return message
    name = PA_SUPPORTED.get(int(message.format), (None, PA_NAMES.get(int(message.format),
                                                                     str(message.format))))[1]
    return InfoView(int(message.rate), int(message.channels), name)


def apply_format(stream, chunk: MicChunk) -> bool:
    """Set the stream's format from a chunk that carries one; True when it changed. Raises
    AudioFormatError (the stream keeps its format) for a rate or channel count it refuses."""
    if chunk.sample_format is None:
        return False
    if (stream.sample_format, stream.sample_rate, stream.channels) == \
            (chunk.sample_format, chunk.sample_rate, chunk.channels):
        return False
    stream.set_format(chunk.sample_rate, chunk.channels, chunk.sample_format)
    return True


def speech_info(sample_rate: int, chunk_samples: int):
    """The latched speech/audio_info: 16-bit little-endian mono at `sample_rate`."""
    if FLAVOUR == MGONZS13:
        return _msgs.AudioInfo(format=PA_INT16, rate=int(sample_rate), channels=1,
                               chunk=int(chunk_samples))
    return _msgs.AudioInfo(channels=1, sample_rate=int(sample_rate), sample_format="S16LE",
                           bitrate=int(sample_rate) * 16, coding_format="wave")


def speech_messages(pcm_s16le: bytes, sample_rate: int):
    """One chunk of speech (S16LE mono bytes) -> (speech/audio message, speech/audio_stamped
    message); the caller fills the stamped message's header."""
    if FLAVOUR == ROS_DRIVERS:
        audio = _msgs.AudioData(data=pcm_s16le)
        return audio, _msgs.AudioDataStamped(audio=audio)
    samples = array.array("h")
    samples.frombytes(pcm_s16le[: len(pcm_s16le) - len(pcm_s16le) % 2])
    if not _LITTLE_ENDIAN:
        samples.byteswap()
    audio = _msgs.Audio()
    audio.audio_data.int16_data = samples
    audio.info = _msgs.AudioInfo(format=PA_INT16, rate=int(sample_rate), channels=1,
                                 chunk=len(samples))
    return audio, _msgs.AudioStamped(audio=audio)


def mic_message(stamp, pcm: np.ndarray, sample_rate: int, channels: int, frame_id: str = ""):
    """A mic/audio_stamped message of this flavour from interleaved int16 or float32 samples
    (int16 -> S16LE / paInt16, float32 -> F32LE / paFloat32). For ros-drivers the format is not
    in the message: publish the matching AudioInfo on mic/audio_info."""
    pcm = np.asarray(pcm)
    if pcm.dtype not in (np.int16, np.float32):
        raise ValueError(f"mic samples must be int16 or float32, not {pcm.dtype}")
    message = MIC_TYPE()
    message.header.stamp = stamp
    message.header.frame_id = frame_id
    if FLAVOUR == ROS_DRIVERS:
        message.audio.data = pcm.astype(pcm.dtype.newbyteorder("<"), copy=False).tobytes()
        return message
    flat = pcm.reshape(-1)
    if pcm.dtype == np.int16:
        message.audio.audio_data.int16_data = array.array("h", flat.astype("=i2").tobytes())
        pa_format = PA_INT16
    else:
        message.audio.audio_data.float32_data = array.array("f", flat.astype("=f4").tobytes())
        pa_format = PA_FLOAT32
    message.audio.info = _msgs.AudioInfo(format=pa_format, rate=int(sample_rate),
                                         channels=int(channels), chunk=flat.shape[0] // channels)
    return message


def mic_info(sample_rate: int, channels: int, sample_format: str = "S16LE"):
    """The mic/audio_info to publish beside mic_message (ros-drivers only; None for mgonzs13)."""
    if MIC_INFO_TYPE is None:
        return None
    fmt = normalize_sample_format(sample_format)
    bits = 16 if fmt == "S16LE" else 32
    return _msgs.AudioInfo(channels=int(channels), sample_rate=int(sample_rate),
                           sample_format=fmt, bitrate=int(sample_rate) * int(channels) * bits,
                           coding_format="wave")


def speech_pcm(message) -> Tuple[bytes, Optional[int]]:
    """A speech/audio_stamped (or speech/audio) message of this flavour -> (S16LE mono bytes,
    sample rate if the message says it). Raises AudioFormatError for mgonzs13 speech that is not
    paInt16."""
    audio = getattr(message, "audio", message)
    if FLAVOUR == ROS_DRIVERS:
        return bytes(audio.data), None
    if int(audio.info.format) != PA_INT16:
        pa_to_sample_format(audio.info.format)   # raises for formats we do not know at all
        raise AudioFormatError(f"speech must be paInt16, got AudioInfo.format "
                               f"{audio.info.format}")
    return (_samples_to_le_bytes(audio.audio_data.int16_data, SAMPLE_DTYPES["S16LE"]),
            int(audio.info.rate))


# -- an environment with another audio_common_msgs in front ---------------------------------------
def overlay_environment(prefix, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """`base` (default os.environ) with the audio_common_msgs installed by
    `pip install --prefix PREFIX` in front of this environment's: its Python package on
    PYTHONPATH, its ament prefix on AMENT_PREFIX_PATH, and its libraries first on
    LD_LIBRARY_PATH (the C typesupport is found there by name, so the order matters).

    The ROS 2 PyPI wheels re-execute Python with their own LD_LIBRARY_PATH, in no fixed order,
    unless _ROS_WHEELS_BOOTSTRAP_COMPLETE is set: the library path here already contains what
    they add, and the marker is set so that the order holds."""
    env = dict(os.environ if base is None else base)
    prefix = Path(prefix).resolve()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = prefix / "lib" / version / "site-packages"

    def prepend(name: str, *values: str) -> None:
        old = [p for p in env.get(name, "").split(os.pathsep) if p and p not in values]
        env[name] = os.pathsep.join([*values, *old])

    venv_lib = Path(sys.prefix) / "lib"
    wheel_libs = sorted(str(p) for p in (venv_lib / version / "site-packages").glob("ros_*.libs"))
    old_libs = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep)
                if p and p not in (str(prefix / "lib"), str(venv_lib), *wheel_libs)]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(prefix / "lib"), str(venv_lib), *wheel_libs,
                                              *old_libs])
    prepend("PYTHONPATH", str(site))
    prepend("AMENT_PREFIX_PATH", str(prefix))
    env["_ROS_WHEELS_BOOTSTRAP_COMPLETE"] = "1"
    return env


def _main(argv) -> int:
    if len(argv) != 2 or argv[0] != "env":
        print("usage: python -m omni_ros.ros.audio_flavours env PREFIX   (shell exports)\n"
              f"this environment's flavour: {FLAVOUR}", file=sys.stderr)
        return 2
    env = overlay_environment(argv[1])
    for name in ("PYTHONPATH", "AMENT_PREFIX_PATH", "LD_LIBRARY_PATH",
                 "_ROS_WHEELS_BOOTSTRAP_COMPLETE"):
        print(f"export {name}='{env[name]}'")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
