"""The vllm_omni backend: omni_node as a client of a vLLM-Omni server that serves MiniCPM-o 4.5
full duplex (`vllm-omni serve ... --deploy-config .../minicpmo_4_5*.yaml`), over its WebSocket
(`/v1/duplex`, or `/v1/realtime?duplex=1`).

omni_node keeps the Omni-Flow clock, buffers, barge-in, pacing, diagnostics and ROS interface; per
window this session sends one second of 16 kHz PCM16 and the window's newest frame as JPEG, and
turns the server's answer into the unit's output (listen, or text and 24000 samples of 24 kHz
speech). The wire format is in omni_ros.runtime.vllm_omni_protocol.

The network is a fault like any other:
- a unit waits for its answer at most `vllm_omni_unit_timeout_sec`; an answer that takes longer
  than the window makes the flow skip or merge the windows that ticked meanwhile, exactly as a
  local unit that outlasts its window (overload_policy); no answer in time fails the unit
  (counted, and after max_consecutive_failures the session is reset);
- a dropped connection is reopened at the next unit: `session.resume` when the server offered it
  and no unit was in flight, else a new session; until the server is back, units fail fast;
- a server that refuses the API key, or the session options, stops the node at start with one
  line; options of the node that the server does not have are refused at start (`refusal`).

Threads: every call into the session comes from the flow's unit worker or, for reset and option
changes, under the same lock (omni_ros.flow.engine), so the connection is used by one thread at a
time; the websockets library's own thread answers pings.
"""
from __future__ import annotations

import inspect
import os
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Deque, Dict, Mapping, Optional
from urllib.parse import urlsplit

import json

import numpy as np

from omni_ros.flow.counters import Counters
from omni_ros.flow.types import (INPUT_SAMPLE_RATE, DuplexSession, SessionCapabilities,
                                 UnitInput, UnitOutput)
from omni_ros.runtime import vllm_omni_protocol as P
from omni_ros.runtime.registry import BackendError, BackendSettings

DEFAULT_VOICE = Path("assets") / "ref_audio" / "ref_minicpm_signature.wav"
# What vllm-omni 0.30.0 fixes for a MiniCPM-o 4.5 duplex session
# (model_executor/models/minicpmo_4_5/duplex/plugin.py, _apply_default_scheduler_policy).
SERVER_FIXED = {"top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05}
SETTLE_SEC = 0.03          # after an answer is complete, how long trailing events of it may take
MAX_OUTSTANDING = 3        # units sent and not answered beyond this: out of step, new session
EVENT_ACK_EVERY = 32       # server events between session.event_ack (lets the server trim its journal)
RTT_WINDOW = 60


class ServerUnavailable(ConnectionError):
    """The server cannot be reached or dropped the connection (the unit fails, the node stays)."""


class ServerRefused(RuntimeError):
    """The server refused the API key or the session: not something a retry fixes."""


class UnitTimeout(TimeoutError):
    """No answer to a unit within vllm_omni_unit_timeout_sec."""


@dataclass
class ClientCounters(Counters):
    units_sent: int = 0
    units_answered: int = 0
    units_late: int = 0                # answered, but after the window had ended
    units_timed_out: int = 0
    late_answers_dropped: int = 0      # answers that came after their unit had timed out
    units_failed_disconnected: int = 0
    connects: int = 0
    connect_failures: int = 0
    sessions_opened: int = 0
    sessions_resumed: int = 0
    resume_refused: int = 0
    disconnects: int = 0
    server_errors: int = 0
    appends_refused: int = 0
    responses_cancelled: int = 0
    playback_acks: int = 0
    option_updates: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


def _default(name: str, fallback: Any) -> Any:
    from omni_ros.session.options import SessionOptions

    return getattr(SessionOptions(), name, fallback)


def refusal(options: Mapping[str, Any]) -> Optional[str]:
    """Why the node's options cannot run on vllm-omni, or None. Values equal to what the server
    does are accepted; others are refused rather than silently ignored."""
    def differs(name, server_value) -> bool:
        return name in options and options[name] is not None and options[name] != server_value

    if options.get("mode", "duplex") != "duplex":
        return (f"mode {options['mode']!r}: vllm-omni's /v1/duplex endpoint serves full duplex only "
                "(its turn-based chat is /v1/chat/completions, which this backend does not speak); "
                "use mode duplex, or a local backend (torch, onnxruntime, tensorrt) for turn_based")
    if differs("listen_prob_scale", 1.0):
        return (f"listen_prob_scale {options['listen_prob_scale']}: vllm-omni makes the listen/speak "
                "decision itself and has no scale on the <|listen|> logit; leave it at 1.0 or use a "
                "local backend")
    if differs("listen_top_k", None):
        return (f"listen_top_k {options['listen_top_k']}: vllm-omni has no top-k restriction of the "
                "listen/speak decision; leave it unset or use a local backend")
    if differs("length_penalty", 1.0):
        return (f"length_penalty {options['length_penalty']}: vllm-omni applies no <|turn_eos|> "
                "length penalty; leave it unset or use a local backend")
    for name, value in SERVER_FIXED.items():
        if differs(name, value):
            return (f"{name} {options[name]}: vllm-omni fixes it at {value} for MiniCPM-o 4.5 duplex "
                    "sessions (minicpmo_4_5/duplex/plugin.py); set it to that or use a local backend")
    if differs("token2wav_steps", 10):
        return (f"token2wav_steps {options['token2wav_steps']}: the server's waveform stage runs as its "
                "deploy configuration says; leave it at 10")
    if differs("seed", 0):
        return f"seed {options['seed']}: the server samples with its own generator; leave it at 0"
    if differs("window_sec", 1.0):
        return (f"window_sec {options['window_sec']}: vllm-omni's MiniCPM-o 4.5 units are 1 s "
                "(chunk_period_ms 1000); set window_sec 1.0 on omni_node and omni_flow_clock")
    if options.get("engine_dir"):
        return "engine_dir: the vllm_omni backend runs no local engines; leave it empty"
    if differs("device", "cpu") or differs("dtype", "float32"):
        return ("device/dtype: with the vllm_omni backend the model runs on the server, whose devices "
                "and dtype its deploy configuration sets; leave device cpu and dtype float32")
    return None


@dataclass
class ClientConfig:
    url: str
    api_key: Optional[str]
    ca_file: str
    connect_timeout: float
    unit_timeout: float
    window_sec: float
    image_max_side: int
    jpeg_quality: int
    model: str

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "ClientConfig":
        url = str(options.get("vllm_omni_url") or "").strip()
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise BackendError(f"vllm_omni_url {url!r} is not a ws:// or wss:// URL "
                               "(e.g. ws://gpu-host:8000/v1/duplex)")
        ca_file = str(options.get("vllm_omni_ca_file") or "")
        if ca_file and parts.scheme != "wss":
            raise BackendError(f"vllm_omni_ca_file is set but vllm_omni_url {url!r} is not wss://")
        if ca_file and not Path(ca_file).is_file():
            raise BackendError(f"vllm_omni_ca_file {ca_file!r}: no such file")
        return cls(url=url, api_key=read_api_key(options), ca_file=ca_file,
                   connect_timeout=float(options.get("vllm_omni_connect_timeout_sec", 5.0)),
                   unit_timeout=float(options.get("vllm_omni_unit_timeout_sec", 3.0)),
                   window_sec=float(options.get("window_sec", 1.0)),
                   image_max_side=int(options.get("vllm_omni_image_max_side", 448)),
                   jpeg_quality=int(options.get("vllm_omni_jpeg_quality", 80)),
                   model=str(options.get("vllm_omni_model") or ""))

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        if urlsplit(self.url).scheme != "wss":
            return None
        context = ssl.create_default_context(cafile=self.ca_file or None)
        return context

    def headers(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def __repr__(self) -> str:   # never show the key
        return (f"ClientConfig(url={self.url!r}, api_key={'<set>' if self.api_key else None}, "
                f"ca_file={self.ca_file!r})")


def read_api_key(options: Mapping[str, Any]) -> Optional[str]:
    """The API key from the file or environment variable the parameters name (never logged)."""
    path = str(options.get("vllm_omni_api_key_file") or "")
    env = str(options.get("vllm_omni_api_key_env") or "")
    if path and env:
        raise BackendError("set one of vllm_omni_api_key_file and vllm_omni_api_key_env, not both")
    if path:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise BackendError(f"vllm_omni_api_key_file {path!r}: cannot read it "
                               f"({error.strerror or type(error).__name__})") from None
        if not key:
            raise BackendError(f"vllm_omni_api_key_file {path!r} is empty")
        return key
    if env:
        key = os.environ.get(env, "").strip()
        if not key:
            raise BackendError(f"vllm_omni_api_key_env names {env!r}, which is not set or empty "
                               "in omni_node's environment")
        return key
    return None


def reference_voice_url(options: Mapping[str, Any], model_path: str) -> str:
    """The reference voice as a data URL: the `reference_voice` wav, else the checkpoint folder's
    default voice; the server needs one to speak (ref_audio_required)."""
    from omni_ros.model.token2wav.voice import Voice

    path = str(options.get("reference_voice") or "")
    if not path:
        default = Path(model_path) / DEFAULT_VOICE
        if not default.is_file():
            raise ValueError("no reference voice: vllm-omni needs one to speak; set reference_voice "
                             f"to a wav file of a few seconds of speech (model_path {model_path!r} "
                             f"has no {DEFAULT_VOICE})")
        path = str(default)
    voice = Voice.from_wav(path)    # VoiceError (a ValueError) with the reason
    samples = voice.audio_16k.detach().cpu().numpy().astype(np.float32)
    return P.wav_data_url(samples, INPUT_SAMPLE_RATE)


def _instructions(options: Mapping[str, Any]) -> str:
    prompt = str(options.get("system_prompt", _default("system_prompt", "")))
    standing = str(options.get("standing_instruction", "") or "").strip()
    return f"{prompt}\n{standing}" if standing else prompt


class _Expected:
    __slots__ = ("unit", "sent", "event_id", "timed_out")

    def __init__(self, unit: int, sent: float, event_id: str) -> None:
        self.unit, self.sent, self.event_id, self.timed_out = unit, sent, event_id, False


class VllmOmniSession(DuplexSession):
    """A DuplexSession whose units run on a vLLM-Omni server (see the module docstring)."""

    option_names = frozenset({"system_prompt", "standing_instruction", "force_listen_count", "mode",
                              "listen_prob_scale", "temperature", "top_k", "top_p",
                              "repetition_penalty", "reference_voice"})

    def __init__(self, config: ClientConfig, options: Mapping[str, Any], model_path: str = "",
                 connect=None) -> None:
        self.config = config
        self.options: Dict[str, Any] = dict(options)
        self.model_path = model_path
        self.capabilities = SessionCapabilities(
            window_samples=int(round(config.window_sec * INPUT_SAMPLE_RATE)),
            accepts_merged_audio=False)
        self._connect_impl = connect
        self.counters = ClientCounters()
        self.assembler = P.AnswerAssembler()
        self.ids = P.EventIds()
        self._ws = None
        self.session_id: Optional[str] = None
        self._resume_token: Optional[str] = None
        self._last_seq = 0
        self._acked_seq = 0
        self._needs_new_session = True
        self._expected: Deque[_Expected] = deque()
        self._unit_count = 0
        self._rtt_ms: Deque[float] = deque(maxlen=RTT_WINDOW)
        self._rtt_lock = threading.Lock()
        self._ack_due: Optional[tuple] = None     # (response_id, played_ms) to acknowledge
        self._bytes_last_unit = 0
        self.last_error: Optional[str] = None
        self._ref_audio = reference_voice_url(self.options, model_path)

    # -- settings --------------------------------------------------------------------------------
    def session_settings(self) -> P.SessionSettings:
        o = self.options
        return P.SessionSettings(
            instructions=_instructions(o), ref_audio=self._ref_audio,
            temperature=float(o.get("temperature", _default("temperature", 0.7))),
            max_text_tokens_per_unit=int(o.get("max_text_tokens_per_unit", 20)),
            force_listen_count=int(o.get("force_listen_count", _default("force_listen_count", 3))),
            context_max_units=int(o.get("max_context_units", _default("max_context_units", 24))),
            model=self.config.model)

    # -- the connection --------------------------------------------------------------------------
    def _open_socket(self, timeout: float):
        if self._connect_impl is not None:
            return self._connect_impl(self.config, timeout)
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        extra = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
        try:
            return connect(self.config.url, additional_headers=self.config.headers(),
                           ssl=self.config.ssl_context(), open_timeout=timeout, proxy=None,
                           compression=None, max_size=16 * 1024 * 1024, max_queue=256,
                           close_timeout=1.0, user_agent_header="omni_ros vllm_omni backend",
                           **extra)
        except InvalidStatus as error:
            status = error.response.status_code
            if status in (401, 403):
                raise ServerRefused(f"the vllm-omni server at {self.config.url} refused the API key "
                                    f"(HTTP {status}); check vllm_omni_api_key_file / "
                                    "vllm_omni_api_key_env against the server's --api-key") from None
            raise ServerUnavailable(f"the server at {self.config.url} answered HTTP {status} to the "
                                    "WebSocket handshake (is it vllm-omni serving a duplex "
                                    "deploy configuration?)") from None
        except ssl.SSLError as error:
            problem = (f"certificate verify failed: {error.verify_message}"
                       if isinstance(error, ssl.SSLCertVerificationError) else error.reason or error)
            raise ServerUnavailable(f"TLS to {self.config.url} failed: {problem} "
                                    "(vllm_omni_ca_file names the CA that signed the server's "
                                    "certificate)") from None
        except (OSError, TimeoutError) as error:
            raise ServerUnavailable(f"cannot reach the vllm-omni server at {self.config.url}: "
                                    f"{type(error).__name__}: {error}") from None
        except Exception as error:  # noqa: BLE001 - a handshake the library refuses
            raise ServerUnavailable(f"WebSocket handshake with {self.config.url} failed: "
                                    f"{type(error).__name__}: {error}") from None

    def _send(self, event: Mapping[str, Any]) -> int:
        text = json.dumps(event, separators=(",", ":"))
        try:
            self._ws.send(text)
        except Exception as error:  # noqa: BLE001 - any send failure is a lost connection
            self._lost(f"send failed: {type(error).__name__}")
            raise ServerUnavailable(f"connection to {self.config.url} lost") from None
        self.counters.bytes_sent += len(text)
        return len(text)

    def _recv(self, timeout: float) -> Optional[Dict[str, Any]]:
        """One server event, or None when none came within `timeout`."""
        try:
            raw = self._ws.recv(timeout=max(0.0, timeout))
        except TimeoutError:
            return None
        except Exception as error:  # noqa: BLE001 - closed or broken: a lost connection
            self._lost(f"receive failed: {type(error).__name__}")
            raise ServerUnavailable(f"connection to {self.config.url} lost") from None
        self.counters.bytes_received += len(raw)
        try:
            event = json.loads(raw)
        except (TypeError, ValueError):
            self.counters.server_errors += 1
            return {}
        if not isinstance(event, dict):
            return {}
        seq = event.get("server_event_seq")
        if isinstance(seq, int) and seq > self._last_seq:
            self._last_seq = seq
        return event

    def _is_open(self) -> bool:
        state = getattr(self._ws, "state", None)
        return state is None or getattr(state, "name", "OPEN") == "OPEN"

    def _lost(self, why: str) -> None:
        if self._ws is not None:
            self.counters.disconnects += 1
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001
                pass
        self._ws = None
        self.last_error = why

    def _connected(self, deadline: float) -> None:
        """A live connection carrying a session (resumed or new), or ServerUnavailable /
        ServerRefused."""
        if self._ws is not None and not self._is_open():
            self._lost("connection closed")
        if self._ws is not None and not self._needs_new_session:
            return
        if self._ws is not None:        # a new session was asked for: a fresh connection
            self._close_quietly()
        resumable = (not self._needs_new_session and self.session_id and self._resume_token
                     and not self._expected)
        if resumable:
            if self._try_resume(deadline):
                return
        self._open_session(deadline)

    def _connect(self, deadline: float) -> None:
        timeout = max(0.05, min(self.config.connect_timeout, deadline - time.monotonic()))
        self.counters.connects += 1
        try:
            self._ws = self._open_socket(timeout)
        except (ServerUnavailable, ServerRefused):
            self.counters.connect_failures += 1
            raise

    def _try_resume(self, deadline: float) -> bool:
        self._connect(deadline)
        self._send(P.session_resume(self.session_id, self._resume_token, self._last_seq))
        while True:
            event = self._recv(deadline - time.monotonic())
            if event is None:
                self._lost("no answer to session.resume")
                raise ServerUnavailable(f"no answer to session.resume from {self.config.url}")
            kind = event.get("type")
            if kind == "session.resumed":
                self._adopt(event)
                self.counters.sessions_resumed += 1
                return True
            if kind == "error" or kind in P.SESSION_ENDED:
                self.counters.resume_refused += 1
                self._close_quietly()
                self._needs_new_session = True
                return False

    def _open_session(self, deadline: float) -> None:
        self._connect(deadline)
        self._expected.clear()
        self.assembler.reset()
        self._ack_due = None
        self._last_seq = self._acked_seq = 0
        event_id = self.ids.next()
        self._send(P.session_update(self.session_settings(), event_id))
        while True:
            event = self._recv(deadline - time.monotonic())
            if event is None:
                self._lost("no session.created")
                raise ServerUnavailable(f"the server at {self.config.url} did not open a session "
                                        f"within {self.config.connect_timeout:.1f} s")
            kind = event.get("type")
            if kind == "session.created":
                self._adopt(event)
                self._needs_new_session = False
                self.counters.sessions_opened += 1
                return
            if kind == "error":
                code, message, _ = P.error_fields(event)
                self._close_quietly()
                raise ServerRefused(f"the vllm-omni server refused the session: {code}: {message}")
            if kind in P.SESSION_ENDED:
                self._close_quietly()
                raise ServerUnavailable(f"the server closed the session at once ({kind})")

    def _adopt(self, event: Mapping[str, Any]) -> None:
        session = event.get("session")
        sid = event.get("session_id") or (session.get("id") if isinstance(session, Mapping) else None)
        if isinstance(sid, str) and sid:
            self.session_id = sid
        token = event.get("resume_token")
        self._resume_token = token if isinstance(token, str) and token else None

    def _close_quietly(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001
                pass
        self._ws = None

    def close(self) -> None:
        """Close the server session and the connection (node shutdown)."""
        if self._ws is not None:
            try:
                self._send(P.session_close(self.ids.next(), "client_shutdown"))
            except ServerUnavailable:
                pass
        self._close_quietly()
        self._needs_new_session = True

    def connect(self) -> None:
        """Open the first session now (at start: a refused key or session is a BackendError)."""
        try:
            self._connected(time.monotonic() + self.config.connect_timeout)
        except (ServerRefused, ServerUnavailable) as error:
            raise BackendError(str(error)) from None

    # -- the contract ----------------------------------------------------------------------------
    def warmup(self) -> None:
        """Nothing to pay on this side: the session was opened by `connect`."""

    def reset(self) -> None:
        """Forget the conversation: cancel what the server is saying and start a new server
        session at the next unit (with the options in force now: a changed system prompt,
        standing instruction, voice or force_listen_count takes effect here)."""
        if self._ws is not None:
            try:
                rid = self.assembler.cancel_active()
                if rid is not None:
                    self._send(P.response_cancel(self.ids.next(), rid))
                    self.counters.responses_cancelled += 1
                self._send(P.session_close(self.ids.next(), "client_reset"))
            except ServerUnavailable:
                pass
        self._close_quietly()
        self._needs_new_session = True
        self._expected.clear()
        self._ack_due = None

    def interrupt(self) -> bool:
        """Barge-in: cancel the response being spoken; its speech still in flight is muted."""
        rid = self.assembler.active_response
        if rid is None or self._ws is None:
            self.assembler.cancel_active()
            return rid is not None
        self.assembler.cancel_active()
        self._ack_due = None
        try:
            self._send(P.response_cancel(self.ids.next(), rid))
            self.counters.responses_cancelled += 1
        except ServerUnavailable:
            pass
        return True

    def apply_options(self, changes: Mapping[str, Any]) -> None:
        super().apply_options(changes)
        merged = {**self.options, **changes}
        reason = refusal(merged)
        if reason:
            raise ValueError(reason)
        ref_audio = self._ref_audio
        if "reference_voice" in changes and changes["reference_voice"] != self.options.get("reference_voice"):
            ref_audio = reference_voice_url(merged, self.model_path)   # ValueError when unreadable
        temperature_changed = ("temperature" in changes
                               and changes["temperature"] != self.options.get("temperature"))
        self.options, self._ref_audio = merged, ref_audio
        if temperature_changed and self._ws is not None and not self._needs_new_session:
            try:
                self._send(P.temperature_update(changes["temperature"], self.ids.next()))
                self.counters.option_updates += 1
            except ServerUnavailable:
                pass   # the next session opens with it

    def run_unit(self, unit: UnitInput) -> UnitOutput:
        started = time.monotonic()
        deadline = started + self.config.unit_timeout
        try:
            self._connected(deadline)
        except ServerUnavailable:
            self.counters.units_failed_disconnected += 1
            raise
        if len(self._expected) >= MAX_OUTSTANDING:   # out of step: start over
            self._needs_new_session = True
            self._connected(deadline)
        frame = None
        if unit.image is not None:
            frame = P.jpeg_base64(unit.image, self.config.image_max_side, self.config.jpeg_quality)
        event_id = self.ids.next()
        audio = np.asarray(unit.audio, dtype=np.float32).reshape(-1)[-P.UNIT_SAMPLES_IN:]
        append = P.audio_append(audio, frame, event_id)
        for attempt in (1, 2):   # a connection found dropped here had nothing in flight: reopen once
            try:
                self._send_ack()
                self._bytes_last_unit = self._send(append)
                break
            except ServerUnavailable:
                if attempt == 2 or self._expected:
                    self.counters.units_failed_disconnected += 1
                    raise
                try:
                    self._connected(deadline)
                except ServerUnavailable:
                    self.counters.units_failed_disconnected += 1
                    raise
        sent = time.monotonic()
        self._unit_count += 1
        this = _Expected(self._unit_count, sent, event_id)
        self._expected.append(this)
        self.counters.units_sent += 1
        while True:
            try:
                answer_for, answer = self._next_answer(deadline)
            except ServerUnavailable:
                self._needs_new_session = True    # a unit was in flight: its fate is unknown
                self.counters.units_failed_disconnected += 1
                raise
            if answer is None:
                this.timed_out = True
                self.counters.units_timed_out += 1
                rtt = f"; last round trip {self._rtt_ms[-1]:.0f} ms" if self._rtt_ms else ""
                raise UnitTimeout(f"no answer from the vllm-omni server within "
                                  f"{self.config.unit_timeout:.1f} s{rtt}")
            if answer_for is not this:
                if answer_for is not None:
                    self.counters.late_answers_dropped += 1
                continue
            now = time.monotonic()
            with self._rtt_lock:        # read by the diagnostics timer's thread
                self._rtt_ms.append((now - sent) * 1000.0)
            self.counters.units_answered += 1
            if now - started > self.config.window_sec:
                self.counters.units_late += 1
            return self._to_output(answer)

    def _next_answer(self, deadline: float):
        """(the expectation it answers, UnitAnswer) of the next complete answer, or (None, None)
        at the deadline. Errors about an append drop that append's expectation."""
        assembler = self.assembler
        while True:
            if assembler.ready:
                self._settle()
                answer = assembler.take()
                return (self._expected.popleft() if self._expected else None), answer
            event = self._recv(deadline - time.monotonic())
            if event is None:
                return None, None
            self._take_event(event)

    def _settle(self) -> None:
        """Trailing events of a complete answer (its turn's end) come right after it: take them."""
        until = time.monotonic() + SETTLE_SEC
        while not self.assembler.turn_closed:
            event = self._recv(until - time.monotonic())
            if event is None:
                return
            self._take_event(event)
            if not self.assembler.ready:      # more speech of the same unit: wait for it
                until = time.monotonic() + self.config.unit_timeout
                while not self.assembler.ready:
                    event = self._recv(until - time.monotonic())
                    if event is None:
                        return
                    self._take_event(event)
                until = time.monotonic() + SETTLE_SEC

    def _take_event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if self._last_seq - self._acked_seq >= EVENT_ACK_EVERY and self._resume_token:
            self._acked_seq = self._last_seq
            try:
                self._send(P.event_ack(self._last_seq))
            except ServerUnavailable:
                raise
        if kind == "error":
            self.counters.server_errors += 1
            code, message, related = P.error_fields(event)
            self.last_error = f"{code}: {message}"
            for expected in list(self._expected):
                if related and expected.event_id == related:
                    self._expected.remove(expected)
                    self.counters.appends_refused += 1
            return
        if kind in P.SESSION_ENDED:
            self._needs_new_session = True
            self._lost(f"server ended the session ({kind})")
            raise ServerUnavailable(f"the server ended the session ({kind})")
        if kind in ("session.created", "session.resumed"):
            self._adopt(event)
            return
        self.assembler.feed(event)

    def _send_ack(self) -> None:
        """Acknowledge the speech handed out so far (it plays during the window after its unit)."""
        if self._ack_due is None or self._ws is None:
            return
        rid, played = self._ack_due
        self._ack_due = None
        self._send(P.playback_ack(int(played), self.ids.next(), rid))
        self.counters.playback_acks += 1

    def _to_output(self, answer: P.UnitAnswer) -> UnitOutput:
        if answer.is_listen:
            return UnitOutput(is_listen=True, end_of_turn=answer.end_of_turn, speak_probability=0.0)
        if answer.response_id is not None:
            self._ack_due = (answer.response_id, self.assembler.played_ms.get(answer.response_id, 0.0))
        return UnitOutput(is_listen=False, text=answer.text, speech=answer.speech,
                          end_of_turn=answer.end_of_turn, speak_probability=1.0)

    # -- what /diagnostics should show -------------------------------------------------------------
    def diagnostic_values(self) -> Dict[str, Any]:
        values = {f"server_{k}": v for k, v in self.counters.snapshot().items()}
        values.update({f"server_{k}": v for k, v in self.assembler.counters.snapshot().items()})
        values["server_connected"] = self._ws is not None and not self._needs_new_session
        values["server_units_outstanding"] = len(self._expected)
        values["server_bytes_last_unit"] = self._bytes_last_unit
        with self._rtt_lock:
            rtt = list(self._rtt_ms)
        if rtt:
            values.update({"server_rtt_ms_last": round(rtt[-1], 1),
                           "server_rtt_ms_mean": round(sum(rtt) / len(rtt), 1),
                           "server_rtt_ms_max": round(max(rtt), 1)})
        if self.last_error:
            values["server_last_error"] = self.last_error
        return values


class VllmOmniBackend:
    """`backend:=vllm_omni`: the session is a client of a vLLM-Omni server."""

    name = "vllm_omni"

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings

    def create_session(self) -> VllmOmniSession:
        options = dict(self.settings.session_options)
        options.setdefault("engine_dir", self.settings.engine_dir)
        options.setdefault("device", self.settings.device)
        options.setdefault("dtype", self.settings.dtype)
        reason = refusal(options)
        if reason:
            raise BackendError(f"backend vllm_omni: {reason}")
        config = ClientConfig.from_options(options)
        try:
            session = VllmOmniSession(config, options, model_path=self.settings.model_path)
        except ValueError as error:    # the reference voice
            raise BackendError(str(error)) from None
        session.connect()
        return session
