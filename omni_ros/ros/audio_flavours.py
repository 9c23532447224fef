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

Each flavour is a class with the same members (`RosDrivers`, `Mgonzs13`); the one found is
`ACTIVE`, and its types and converters are this module's names (`MIC_TYPE`, `mic_chunk`,
`speech_messages`, ...), which omni_node, the scene player and the recorder use, so they speak
whichever flavour is installed. Conversions are numpy/array buffer copies, never per sample.
To run in an environment with the other flavour in front, see flavour_overlay.py.
"""
from __future__ import annotations

import array
import sys
from typing import NamedTuple, Optional, Tuple

import numpy as np

import audio_common_msgs.msg as _msgs

from omni_ros.flow.audio import SAMPLE_DTYPES, AudioFormatError, normalize_sample_format
from omni_ros.flow.units import stamp_to_ns

ROS_DRIVERS = "ros-drivers"
MGONZS13 = "mgonzs13"

# PortAudio sample-format codes (portaudio.h), as mgonzs13's AudioInfo.format carries them.
PA_FLOAT32, PA_INT32, PA_INT24, PA_INT16, PA_INT8, PA_UINT8 = 1, 2, 4, 8, 16, 32
PA_NAMES = {PA_FLOAT32: "paFloat32", PA_INT32: "paInt32", PA_INT24: "paInt24",
            PA_INT16: "paInt16", PA_INT8: "paInt8", PA_UINT8: "paUInt8"}
# The PortAudio formats omni_ros decodes -> (AudioData field, AudioInputStream sample format).
PA_SUPPORTED = {PA_INT16: ("int16_data", "S16LE"), PA_FLOAT32: ("float32_data", "F32LE")}
_LITTLE_ENDIAN = sys.byteorder == "little"


class MicChunk(NamedTuple):
    """One microphone message, ready for AudioInputStream.push. The format fields are None when
    the message does not carry them (ros-drivers: they come from mic/audio_info)."""
    stamp_ns: int
    data: object                  # bytes, or the message's own byte buffer (not copied)
    sample_format: Optional[str]  # "S16LE" | "F32LE"
    sample_rate: Optional[int]
    channels: Optional[int]


class InfoView(NamedTuple):
    """An AudioInfo of either flavour, in the ros-drivers field names."""
    sample_rate: int
    channels: int
    sample_format: str
    coding_format: str = "wave"


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


def info_format(message) -> Tuple[int, int, str]:
    """A ros-drivers AudioInfo -> (sample_rate, channels, sample_format) for set_format."""
    return message.sample_rate, message.channels, message.sample_format


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


class _Flavour:
    """What the two flavours share. A flavour holds its message types (mic_type, mic_info_type,
    speech_type, speech_stamped_type) and converts between them and PCM."""

    name = ""

    def __init__(self, msgs) -> None:
        self.msgs = msgs

    def mic_message(self, stamp, pcm: np.ndarray, sample_rate: int, channels: int,
                    frame_id: str = ""):
        """A mic/audio_stamped message of this flavour from interleaved int16 or float32 samples
        (int16 -> S16LE / paInt16, float32 -> F32LE / paFloat32). For ros-drivers the format is
        not in the message: publish the matching mic_info on mic/audio_info."""
        pcm = np.asarray(pcm)
        if pcm.dtype not in (np.int16, np.float32):
            raise ValueError(f"mic samples must be int16 or float32, not {pcm.dtype}")
        message = self.mic_type()
        message.header.stamp = stamp
        message.header.frame_id = frame_id
        self._fill_mic(message.audio, pcm, int(sample_rate), int(channels))
        return message

    def speech_pcm(self, message) -> Tuple[bytes, Optional[int]]:
        """A speech/audio_stamped (or speech/audio) message of this flavour -> (S16LE mono
        bytes, sample rate if the message says it)."""
        return self._audio_pcm(getattr(message, "audio", message))


class RosDrivers(_Flavour):
    """ros-drivers: raw bytes in AudioData, the stream format in AudioInfo on */audio_info."""

    name = ROS_DRIVERS

    def __init__(self, msgs) -> None:
        super().__init__(msgs)
        self.mic_type = msgs.AudioDataStamped           # mic/audio_stamped
        self.mic_info_type = msgs.AudioInfo             # mic/audio_info, latched
        self.speech_type = msgs.AudioData               # speech/audio
        self.speech_stamped_type = msgs.AudioDataStamped

    def describe(self) -> str:
        """A line for the start-up log: the flavour and the types on the audio topics."""
        return ("audio_common_msgs flavour ros-drivers: mic/audio_stamped and speech/audio_stamped "
                "are AudioDataStamped, speech/audio is AudioData, formats on */audio_info")

    def mic_chunk(self, message) -> MicChunk:
        """A mic/audio_stamped message -> MicChunk without a format (it is on mic/audio_info)."""
        return MicChunk(stamp_to_ns(message.header.stamp), message.audio.data, None, None, None)

    def info_view(self, message):
        """An AudioInfo already has the ros-drivers field names: the message itself."""
        return message

    def speech_info(self, sample_rate: int, chunk_samples: int):
        """The latched speech/audio_info: S16LE mono at `sample_rate` (no chunk size here)."""
        return self.msgs.AudioInfo(channels=1, sample_rate=int(sample_rate),
                                   sample_format="S16LE", bitrate=int(sample_rate) * 16,
                                   coding_format="wave")

    def speech_messages(self, pcm_s16le: bytes, sample_rate: int):
        """One chunk of speech (S16LE mono bytes) -> (AudioData, AudioDataStamped); the caller
        fills the stamped message's header."""
        audio = self.msgs.AudioData(data=pcm_s16le)
        return audio, self.msgs.AudioDataStamped(audio=audio)

    def mic_info(self, sample_rate: int, channels: int, sample_format: str = "S16LE"):
        """The mic/audio_info to publish beside mic_message."""
        fmt = normalize_sample_format(sample_format)
        bits = 16 if fmt == "S16LE" else 32
        return self.msgs.AudioInfo(channels=int(channels), sample_rate=int(sample_rate),
                                   sample_format=fmt,
                                   bitrate=int(sample_rate) * int(channels) * bits,
                                   coding_format="wave")

    def _fill_mic(self, audio, pcm: np.ndarray, sample_rate: int, channels: int) -> None:
        audio.data = pcm.astype(pcm.dtype.newbyteorder("<"), copy=False).tobytes()

    def _audio_pcm(self, audio) -> Tuple[bytes, Optional[int]]:
        return bytes(audio.data), None


class Mgonzs13(_Flavour):
    """mgonzs13: typed sample arrays, and the format (PortAudio code, rate, channels, chunk) in
    every message; no mic/audio_info."""

    name = MGONZS13

    def __init__(self, msgs) -> None:
        super().__init__(msgs)
        self.mic_type = msgs.AudioStamped               # mic/audio_stamped
        self.mic_info_type = None                       # the format travels in each message
        self.speech_type = msgs.Audio                   # speech/audio
        self.speech_stamped_type = msgs.AudioStamped

    def describe(self) -> str:
        """A line for the start-up log: the flavour and the types on the audio topics."""
        return ("audio_common_msgs flavour mgonzs13: mic/audio_stamped and speech/audio_stamped "
                "are AudioStamped, speech/audio is Audio (format in each message, paInt16 or "
                "paFloat32 in)")

    def mic_chunk(self, message) -> MicChunk:
        """A mic/audio_stamped message -> MicChunk with its format. Raises AudioFormatError
        when that format is not paInt16 or paFloat32."""
        stamp_ns = stamp_to_ns(message.header.stamp)
        info = message.audio.info
        field, sample_format = pa_to_sample_format(info.format)
        values = getattr(message.audio.audio_data, field)
        data = _samples_to_le_bytes(values, SAMPLE_DTYPES[sample_format])
        return MicChunk(stamp_ns, data, sample_format, int(info.rate), int(info.channels))

    def info_view(self, message) -> InfoView:
        """An AudioInfo -> InfoView (ros-drivers field names; the PortAudio name for a format
        omni_ros does not decode)."""
        code = int(message.format)
        name = PA_SUPPORTED.get(code, (None, PA_NAMES.get(code, str(message.format))))[1]
        return InfoView(int(message.rate), int(message.channels), name)

    def speech_info(self, sample_rate: int, chunk_samples: int):
        """The latched speech/audio_info: paInt16 mono at `sample_rate`, `chunk_samples` a chunk."""
        return self.msgs.AudioInfo(format=PA_INT16, rate=int(sample_rate), channels=1,
                                   chunk=int(chunk_samples))

    def speech_messages(self, pcm_s16le: bytes, sample_rate: int):
        """One chunk of speech (S16LE mono bytes) -> (Audio, AudioStamped), paInt16 with its
        format; the caller fills the stamped message's header."""
        samples = array.array("h")
        samples.frombytes(pcm_s16le[: len(pcm_s16le) - len(pcm_s16le) % 2])
        if not _LITTLE_ENDIAN:
            samples.byteswap()
        audio = self.msgs.Audio()
        audio.audio_data.int16_data = samples
        audio.info = self.msgs.AudioInfo(format=PA_INT16, rate=int(sample_rate), channels=1,
                                         chunk=len(samples))
        return audio, self.msgs.AudioStamped(audio=audio)

    def mic_info(self, sample_rate: int, channels: int, sample_format: str = "S16LE"):
        """None: there is no mic/audio_info in this flavour."""
        return None

    def _fill_mic(self, audio, pcm: np.ndarray, sample_rate: int, channels: int) -> None:
        flat = pcm.reshape(-1)
        if pcm.dtype == np.int16:
            audio.audio_data.int16_data = array.array("h", flat.astype("=i2").tobytes())
            pa_format = PA_INT16
        else:
            audio.audio_data.float32_data = array.array("f", flat.astype("=f4").tobytes())
            pa_format = PA_FLOAT32
        audio.info = self.msgs.AudioInfo(format=pa_format, rate=sample_rate, channels=channels,
                                         chunk=flat.shape[0] // channels)

    def _audio_pcm(self, audio) -> Tuple[bytes, Optional[int]]:
        """Raises AudioFormatError for speech that is not paInt16."""
        if int(audio.info.format) != PA_INT16:
            pa_to_sample_format(audio.info.format)   # raises for formats we do not know at all
            raise AudioFormatError(f"speech must be paInt16, got AudioInfo.format "
                                   f"{audio.info.format}")
        return (_samples_to_le_bytes(audio.audio_data.int16_data, SAMPLE_DTYPES["S16LE"]),
                int(audio.info.rate))


def _installed_flavour(msgs) -> _Flavour:
    if hasattr(msgs, "AudioStamped") and hasattr(msgs, "Audio"):
        return Mgonzs13(msgs)
    if hasattr(msgs, "AudioDataStamped"):
        return RosDrivers(msgs)
    raise ImportError(  # pragma: no cover - neither known layout
        f"audio_common_msgs at {getattr(msgs, '__file__', '?')} is neither the ros-drivers "
        f"flavour (AudioDataStamped) nor the mgonzs13 flavour (AudioStamped)")


ACTIVE = _installed_flavour(_msgs)
FLAVOUR = ACTIVE.name
AudioInfo = _msgs.AudioInfo
MIC_TYPE = ACTIVE.mic_type
MIC_INFO_TYPE = ACTIVE.mic_info_type
SPEECH_TYPE = ACTIVE.speech_type
SPEECH_STAMPED_TYPE = ACTIVE.speech_stamped_type
describe = ACTIVE.describe
mic_chunk = ACTIVE.mic_chunk
info_view = ACTIVE.info_view
speech_info = ACTIVE.speech_info
speech_messages = ACTIVE.speech_messages
mic_message = ACTIVE.mic_message
mic_info = ACTIVE.mic_info
speech_pcm = ACTIVE.speech_pcm
