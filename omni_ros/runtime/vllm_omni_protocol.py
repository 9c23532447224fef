"""The wire side of the vllm_omni backend, without I/O: the client events omni_ros sends to a
vLLM-Omni full-duplex MiniCPM-o 4.5 service, and the assembly of the server's events into one
answer per unit.

Written from the protocol as vllm-omni 0.30.0 defines it (read, not copied):
`protocol/realtime/commands.py`, `protocol/duplex/commands.py` (client events),
`engine/duplex/realtime_commands.py` (how the server decodes them), `protocol/realtime/events.py`,
`protocol/duplex/events.py` and `engine/duplex/realtime_events.py` (server events),
`entrypoints/duplex/serving.py` and `entrypoints/duplex/realtime_input.py` (handshake, resume,
event acks), `model_executor/models/minicpmo_4_5/duplex/plugin.py` (what a MiniCPM-o session takes).

Per unit the client sends one `input_audio_buffer.append`: one second of 16 kHz PCM16 and at most
one JPEG frame. The server answers every unit, in order, either with `response.listen` or with
speech: `response.output_audio.delta` (24 kHz PCM16) each followed by its
`response.output_audio_transcript.delta` (the unit's text; the server keeps that pair even for
text-less units), the turn framed by `response.created` ... `response.done`.
"""
from __future__ import annotations

import base64
import io
import itertools
import wave
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from omni_ros.flow.counters import Counters
from omni_ros.flow.types import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE

UNIT_SAMPLES_IN = INPUT_SAMPLE_RATE     # one 1 s unit of input audio
UNIT_SAMPLES_OUT = OUTPUT_SAMPLE_RATE   # one 1 s unit of speech
# A speaking unit is complete once this much of its second of speech came (the waveform stage's
# chunks need not add up to exactly 24000 samples); what comes beyond a unit is carried over.
UNIT_TOLERANCE_SAMPLES = OUTPUT_SAMPLE_RATE // 20
MAX_CARRY_SAMPLES = OUTPUT_SAMPLE_RATE // 2

TEXT_DELTAS = ("response.output_audio_transcript.delta", "response.output_text.delta",
               "response.text.delta")
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")
# Server events that carry nothing a unit's answer needs (framing, echoes, bookkeeping).
FRAMING_EVENTS = frozenset({
    "response.output_item.added", "response.output_item.done", "response.content_part.added",
    "response.content_part.done", "response.output_audio.done", "response.audio.done",
    "response.output_audio_transcript.done", "response.output_text.done", "response.text.done",
    "response.speak", "conversation.item.added", "conversation.item.created",
    "conversation.item.done", "conversation.item.deleted", "conversation.item.truncated",
    "input_audio_buffer.committed", "input_audio_buffer.cleared",
    "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
    "output_audio_buffer.cleared", "playback.acknowledged", "turn.event", "overlap.decision",
    "rate_limits.updated", "session.heartbeat_ack", "session.updated"})
# Server events that end the session the connection carries.
SESSION_ENDED = frozenset({"session.closed", "session.expired", "session.replaced",
                           "session.resync_required"})


# -- client events ---------------------------------------------------------------------------------

class EventIds:
    """Client event ids (`event_id`): the server echoes one in the error it answers."""

    def __init__(self, prefix: str = "omni") -> None:
        self._prefix = prefix
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._count)}"


def pcm16_base64(audio: np.ndarray) -> str:
    """float32 mono in [-1, 1] as base64 little-endian PCM16 (NaN and inf as silence)."""
    samples = np.nan_to_num(np.asarray(audio, dtype=np.float32).reshape(-1), nan=0.0,
                            posinf=0.0, neginf=0.0)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    return base64.b64encode(pcm.tobytes()).decode("ascii")


def pcm16_decode(data: str) -> np.ndarray:
    """base64 little-endian PCM16 as float32 in [-1, 1]."""
    raw = base64.b64decode(data)
    if len(raw) % 2:
        raw = raw[:-1]
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def jpeg_base64(image: np.ndarray, max_side: int, quality: int) -> str:
    """An HxWx3 uint8 RGB frame as bare base64 JPEG, downscaled (aspect kept) so that its longer
    side is at most `max_side`."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    longer = max(picture.size)
    if longer > max_side:
        scale = max_side / float(longer)
        size = (max(1, round(picture.size[0] * scale)), max(1, round(picture.size[1] * scale)))
        picture = picture.resize(size, Image.BICUBIC)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=int(quality))
    return base64.b64encode(out.getvalue()).decode("ascii")


def wav_data_url(samples: np.ndarray, rate: int) -> str:
    """Mono float32 samples as a `data:audio/wav;base64,...` URL (PCM16): how a session's
    `ref_audio` reaches the server (it resolves URIs through vLLM's media connector)."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0) * 32767.0)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(pcm.round().astype("<i2").tobytes())
    return "data:audio/wav;base64," + base64.b64encode(out.getvalue()).decode("ascii")


@dataclass
class SessionSettings:
    """What a new server session is opened with."""

    instructions: str
    ref_audio: Optional[str]          # data URL of the reference voice
    temperature: float
    max_text_tokens_per_unit: int
    force_listen_count: int
    context_max_units: int
    model: str = ""                   # the served model name; "" leaves it to the server


def session_update(settings: SessionSettings, event_id: str) -> Dict[str, Any]:
    """The `session.update` that opens a session: 16 kHz PCM16 in, 24 kHz PCM16 out, no server
    VAD (the model decides turns), the duplex options in `extra_body`."""
    session: Dict[str, Any] = {
        "modalities": ["audio", "text"],
        "instructions": settings.instructions,
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "sample_rate_hz": INPUT_SAMPLE_RATE,
        "audio": {"input": {"sample_rate_hz": INPUT_SAMPLE_RATE},
                  "output": {"sample_rate_hz": OUTPUT_SAMPLE_RATE}},
        "turn_detection": None,
        "temperature": float(settings.temperature),
        "max_output_tokens": int(settings.max_text_tokens_per_unit),
        "overlap_policy": "listen_only",
        "playback_commit_policy": "ack_only",
        "extra_body": {"auto_response": True,
                       "force_listen_count": int(settings.force_listen_count),
                       "context_max_units": int(settings.context_max_units)},
    }
    if settings.model:
        session["model"] = settings.model
    if settings.ref_audio:
        session["ref_audio"] = settings.ref_audio
    return {"type": "session.update", "event_id": event_id, "session": session}


def temperature_update(temperature: float, event_id: str) -> Dict[str, Any]:
    """A live session's sampling temperature (the one option vllm-omni lets a session change)."""
    return {"type": "session.update", "event_id": event_id,
            "session": {"temperature": float(temperature)}}


def audio_append(audio: np.ndarray, frame_jpeg: Optional[str], event_id: str) -> Dict[str, Any]:
    """One unit: exactly one second of 16 kHz PCM16 and the window's newest frame (if any)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.shape[0] != UNIT_SAMPLES_IN:
        raise ValueError(f"a unit carries {UNIT_SAMPLES_IN} samples, got {audio.shape[0]}")
    event: Dict[str, Any] = {"type": "input_audio_buffer.append", "event_id": event_id,
                             "audio": pcm16_base64(audio), "format": "pcm16",
                             "sample_rate_hz": INPUT_SAMPLE_RATE}
    if frame_jpeg:
        event["video_frames"] = [frame_jpeg]
    return event


def response_cancel(event_id: str, response_id: Optional[str] = None) -> Dict[str, Any]:
    event: Dict[str, Any] = {"type": "response.cancel", "event_id": event_id}
    if response_id:
        event["response_id"] = response_id
    return event


def playback_ack(played_ms: int, event_id: str, response_id: Optional[str] = None) -> Dict[str, Any]:
    event: Dict[str, Any] = {"type": "playback.ack", "event_id": event_id, "played_ms": int(played_ms)}
    if response_id:
        event["response_id"] = response_id
    return event


def session_resume(session_id: str, resume_token: str, last_seq: int) -> Dict[str, Any]:
    return {"type": "session.resume", "session_id": session_id, "resume_token": resume_token,
            "last_received_server_event_seq": int(max(0, last_seq))}


def event_ack(last_seq: int) -> Dict[str, Any]:
    return {"type": "session.event_ack", "server_event_seq": int(last_seq)}


def session_close(event_id: str, reason: str = "client_reset") -> Dict[str, Any]:
    return {"type": "session.close", "event_id": event_id, "reason": reason}


# -- server events ---------------------------------------------------------------------------------

def error_fields(event: Mapping[str, Any]) -> tuple:
    """(code, message, related client event_id) of an `error` event, either wire shape."""
    error = event.get("error")
    if isinstance(error, Mapping):
        return (str(error.get("code") or error.get("type") or "error"),
                str(error.get("message") or ""), error.get("event_id"))
    return (str(event.get("code") or "error"), str(event.get("message") or event.get("error") or ""),
            event.get("event_id") if event.get("type") != "error" else None)


@dataclass
class UnitAnswer:
    """The server's answer to one unit."""

    is_listen: bool
    text: str = ""
    speech: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    end_of_turn: bool = False
    response_id: Optional[str] = None
    muted: bool = False               # speech of a response this client had cancelled


@dataclass
class AssemblyCounters(Counters):
    audio_deltas: int = 0
    text_deltas: int = 0
    listen_events: int = 0
    responses_started: int = 0
    responses_done: int = 0
    cancelled_audio_deltas: int = 0
    carry_samples_dropped: int = 0
    events_ignored: int = 0


class AnswerAssembler:
    """Server events in, one `UnitAnswer` per unit out (in order).

    `feed(event)` takes one event; `ready` says the answer under assembly is complete (a listen
    decision, or a second of speech whose text came, or a turn's end); `take()` hands it over.
    Speech beyond a unit's second is carried into the next speaking unit (at most half a second);
    speech of a response this client cancelled still answers its unit, muted."""

    def __init__(self, unit_samples: int = UNIT_SAMPLES_OUT) -> None:
        self.unit_samples = unit_samples
        self.counters = AssemblyCounters()
        self.active_response: Optional[str] = None
        self.cancelled: List[str] = []          # newest last, bounded
        self.played_ms: Dict[str, float] = {}   # speech handed out per response (for playback.ack)
        self._carry = np.zeros(0, dtype=np.float32)
        self._clear()

    def _clear(self) -> None:
        self._parts: List[np.ndarray] = []
        self._samples = 0
        self._text: List[str] = []
        self._listen = False
        self._end_of_turn = False
        self._pair_open = False
        self._muted = False
        self._response_id: Optional[str] = None

    def reset(self) -> None:
        """A new server session: nothing half-assembled, nothing carried, no response active."""
        self._clear()
        self._carry = np.zeros(0, dtype=np.float32)
        self.active_response = None
        self.played_ms.clear()

    def cancel_active(self) -> Optional[str]:
        """This client cancelled the active response: its speech from now on is muted."""
        rid = self.active_response
        if rid is not None and rid not in self.cancelled:
            self.cancelled = (self.cancelled + [rid])[-16:]
        self.active_response = None
        self._carry = np.zeros(0, dtype=np.float32)
        return rid

    @property
    def pending(self) -> bool:
        """Something of an answer has come."""
        return self._listen or self._samples > 0 or bool(self._text)

    @property
    def ready(self) -> bool:
        if self._listen:
            return True
        if self._pair_open or self._samples == 0:
            return False
        return self._end_of_turn or self._samples + self._carry.shape[0] >= \
            self.unit_samples - UNIT_TOLERANCE_SAMPLES

    @property
    def turn_closed(self) -> bool:
        return self._end_of_turn

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        rid = event.get("response_id")
        if not isinstance(rid, str) or not rid:
            response = event.get("response")
            rid = response.get("id") if isinstance(response, Mapping) else None
            rid = rid if isinstance(rid, str) and rid else None
        if kind == "response.created":
            self.counters.responses_started += 1
            self.active_response = rid
        elif kind == "response.listen":
            self.counters.listen_events += 1
            if self._samples:   # a tail after a unit already handed over: nothing to attach it to
                self.counters.carry_samples_dropped += self._samples
                self._parts, self._samples = [], 0
            self._listen = True
        elif kind in AUDIO_DELTAS:
            self._audio(event, rid)
        elif kind in TEXT_DELTAS:
            self.counters.text_deltas += 1
            delta = event.get("delta")
            if isinstance(delta, str) and delta:
                self._text.append(delta)
            self._pair_open = False
        elif kind == "response.done":
            self.counters.responses_done += 1
            if self._samples:
                self._end_of_turn = True
                self._pair_open = False
            if rid is None or rid == self.active_response:
                self.active_response = None
        else:
            self.counters.events_ignored += 1

    def _audio(self, event: Mapping[str, Any], rid: Optional[str]) -> None:
        self.counters.audio_deltas += 1
        data = event.get("delta", event.get("audio"))
        samples = pcm16_decode(data) if isinstance(data, str) and data else np.zeros(0, np.float32)
        rate = event.get("sample_rate_hz")
        if isinstance(rate, (int, float)) and int(rate) != OUTPUT_SAMPLE_RATE and samples.size:
            import soxr

            samples = soxr.resample(samples, int(rate), OUTPUT_SAMPLE_RATE).astype(np.float32)
        if rid is not None and rid in self.cancelled:
            self.counters.cancelled_audio_deltas += 1
            self._muted = True
        if rid is not None:
            self._response_id = rid
            if self.active_response is None and rid not in self.cancelled:
                self.active_response = rid
        self._parts.append(samples)
        self._samples += samples.shape[0]
        self._pair_open = True
        metadata = event.get("metadata")
        if isinstance(metadata, Mapping) and metadata.get("end_of_turn") is True:
            self._end_of_turn = True

    def take(self) -> UnitAnswer:
        """The answer assembled so far (call when `ready`); assembly starts over."""
        if self._listen:
            answer = UnitAnswer(is_listen=True, end_of_turn=False, response_id=self._response_id)
            if self._carry.shape[0]:
                self.counters.carry_samples_dropped += int(self._carry.shape[0])
                self._carry = np.zeros(0, dtype=np.float32)
            self._clear()
            return answer
        audio = np.concatenate([self._carry, *self._parts]) if self._parts else self._carry
        n = self.unit_samples
        if self._end_of_turn:
            speech = audio if audio.shape[0] >= n else np.pad(audio, (0, n - audio.shape[0]))
            self._carry = np.zeros(0, dtype=np.float32)
        else:
            speech = audio[:n] if audio.shape[0] >= n else np.pad(audio, (0, n - audio.shape[0]))
            carry = audio[n:]
            if carry.shape[0] > MAX_CARRY_SAMPLES:
                self.counters.carry_samples_dropped += int(carry.shape[0] - MAX_CARRY_SAMPLES)
                carry = carry[-MAX_CARRY_SAMPLES:]
            self._carry = np.array(carry, dtype=np.float32)
        answer = UnitAnswer(is_listen=False, text="".join(self._text),
                            speech=np.ascontiguousarray(speech, dtype=np.float32),
                            end_of_turn=self._end_of_turn, response_id=self._response_id,
                            muted=self._muted)
        if answer.muted:
            answer = UnitAnswer(is_listen=True, end_of_turn=answer.end_of_turn,
                                response_id=answer.response_id, muted=True)
            self._carry = np.zeros(0, dtype=np.float32)
        elif answer.response_id is not None:
            self.played_ms[answer.response_id] = self.played_ms.get(answer.response_id, 0.0) + \
                1000.0 * answer.speech.shape[0] / OUTPUT_SAMPLE_RATE
            if len(self.played_ms) > 16:
                self.played_ms.pop(next(iter(self.played_ms)))
        if self._end_of_turn and self.active_response == self._response_id:
            self.active_response = None
        self._clear()
        return answer
