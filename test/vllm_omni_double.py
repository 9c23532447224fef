"""A protocol test double of vLLM-Omni's full-duplex MiniCPM-o 4.5 WebSocket service, answering
with omni_ros's own tiny session: a test double only (shipped under test/, never installed).

It speaks the subset of the wire protocol that omni_ros's vllm_omni backend uses, as vllm-omni
0.30.0 defines it (entrypoints/duplex/serving.py, engine/duplex/realtime_events.py): an API key in
`Authorization: Bearer` checked at the handshake (HTTP 401 otherwise, as vLLM's --api-key does);
`session.update` opens a session (`session.created` with a resume token), a later one may change
the temperature (a changed `instructions` is refused with instructions_update_unsupported);
`input_audio_buffer.append` runs one unit (exactly 1 s of 16 kHz PCM16 and at most 2 JPEG/PNG
frames, else an `error`) and answers `response.listen`, or `response.created` /
`response.speak` at a turn's start, then per speaking unit `response.output_audio.delta` (24 kHz
PCM16) and `response.output_audio_transcript.delta`, and at a turn's end
`response.output_audio.done` ... `response.done`; `response.cancel` closes the turn
(`response.done` cancelled); `playback.ack` is acknowledged; `session.resume` re-attaches to a
session and replays the journal after the client's last event; `session.event_ack` trims it;
`session.close` ends the session. Every server event carries `server_event_seq`.

    python test/vllm_omni_double.py --model-path DIR --port 8765 [--api-key-file F]
        [--delay-file F] [--log messages.jsonl] [--listen-prob-scale 0.02]
        [--tls-cert chain.pem --tls-key key.pem]

`--delay-file`: a file holding seconds to wait before answering each unit (read per unit; a slow
server on demand). `--log`: one JSON line per client message, audio and images replaced by sizes.
`--tls-cert`/`--tls-key`: serve wss:// with that certificate (`serve(ssl_context=...)` in process).
"""
from __future__ import annotations

import argparse
import base64
import http
import json
import secrets
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from omni_ros.flow.types import UnitInput  # noqa: E402

MAX_JOURNAL = 512


class DoubleSession:
    """One server session: the client's options, its journal of events, its open response."""

    def __init__(self, session_id: str, config: dict) -> None:
        self.session_id = session_id
        self.config = config
        self.resume_token = secrets.token_hex(16)
        self.seq = 0
        self.journal = deque(maxlen=MAX_JOURNAL)
        self.response_id = None
        self.responses = 0
        self.units = 0
        self.transcript = ""
        self.closed = False


class Double:
    def __init__(self, model_path: str, api_key=None, delay_file=None, log_path=None,
                 listen_prob_scale: float = 1.0, seed: int = 1) -> None:
        from omni_ros.runtime.registry import BackendSettings, create_session

        self.api_key = api_key
        self.delay_file = Path(delay_file) if delay_file else None
        self.log_path = Path(log_path) if log_path else None
        self.lock = threading.Lock()         # one unit at a time (the tiny session is not shared)
        self.model = create_session("torch", BackendSettings(model_path=model_path, session_options={
            "listen_prob_scale": listen_prob_scale, "seed": seed, "window_sec": 1.0}))
        self.model.warmup()
        self.sessions = {}
        self.current = None                  # the session the model's state belongs to
        self.messages = []                   # (in process) every client message, as logged
        self.server = None

    # -- bookkeeping -----------------------------------------------------------------------------
    def _log(self, message: dict) -> None:
        entry = {"t": time.time()}
        for key, value in message.items():
            if key in ("audio", "ref_audio") and isinstance(value, str):
                entry[f"{key}_chars"] = len(value)
            elif key == "video_frames" and isinstance(value, list):
                entry["video_frames"] = [len(v) for v in value if isinstance(v, str)]
            elif key == "session" and isinstance(value, dict):
                entry["session"] = {k: (len(v) if k == "ref_audio" and isinstance(v, str) else v)
                                    for k, v in value.items()}
            else:
                entry[key] = value
        with self.lock:
            self.messages.append(entry)
        if self.log_path is not None:
            with open(self.log_path, "a") as out:
                out.write(json.dumps(entry) + "\n")

    def _delay(self) -> float:
        if self.delay_file is None or not self.delay_file.exists():
            return 0.0
        try:
            return max(0.0, float(self.delay_file.read_text().strip() or 0))
        except ValueError:
            return 0.0

    @staticmethod
    def _send(conn, session, event: dict) -> None:
        if session is not None:
            session.seq += 1
            event = {**event, "server_event_seq": session.seq}
            session.journal.append(event)
        conn.send(json.dumps(event))

    @staticmethod
    def _error(conn, session, code: str, message: str, event_id=None) -> None:
        error = {"type": "invalid_request_error", "code": code, "message": message}
        if event_id:
            error["event_id"] = event_id
        Double._send(conn, session, {"type": "error", "event_id": "evt_" + secrets.token_hex(4),
                                     "error": error})

    # -- the handshake ---------------------------------------------------------------------------
    def process_request(self, connection, request):
        if self.api_key is not None and \
                request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, '{"error": "Unauthorized"}\n')
        if request.path.split("?")[0] not in ("/v1/duplex", "/v1/realtime"):
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        return None

    def handle(self, conn) -> None:
        try:
            first = json.loads(conn.recv(timeout=10))
        except Exception:  # noqa: BLE001
            return
        self._log(first)
        kind = first.get("type")
        if kind == "session.resume":
            session = self.sessions.get(first.get("session_id"))
            if session is None or session.closed:
                self._error(conn, None, "session_resume_expired", "Unknown or expired duplex session")
                return
            if first.get("resume_token") != session.resume_token:
                self._error(conn, None, "invalid_resume_token", "Invalid duplex session resume token")
                return
            after = int(first.get("last_received_server_event_seq", 0))
            session.resume_token = secrets.token_hex(16)
            conn.send(json.dumps({"type": "session.resumed", "session_id": session.session_id,
                                  "session": {"id": session.session_id},
                                  "resume_token": session.resume_token}))
            for event in list(session.journal):
                if event["server_event_seq"] > after:
                    conn.send(json.dumps(event))
        elif kind == "session.update":
            config = first.get("session") if isinstance(first.get("session"), dict) else {}
            if "audio" in [m.lower() for m in config.get("modalities", ["text", "audio"])] \
                    and not config.get("ref_audio"):
                self._error(conn, None, "ref_audio_required", "MiniCPM-o duplex audio output requires ref_audio")
                return
            session = DoubleSession("sess_" + secrets.token_hex(6), config)
            self.sessions[session.session_id] = session
            with self.lock:
                self._open_model(session)
            conn.send(json.dumps({"type": "session.created", "event_id": "evt_" + secrets.token_hex(4),
                                  "session": {"id": session.session_id, "object": "realtime.session"},
                                  "resume_token": session.resume_token, "attachment_generation": 1}))
        else:
            self._error(conn, None, "bad_event", "first message must be session.update or session.resume")
            return
        self._loop(conn, session)

    def _open_model(self, session: DoubleSession) -> None:
        config, extra = session.config, session.config.get("extra_body") or {}
        self.model.apply_options({
            "system_prompt": config.get("instructions") or "",
            "temperature": float(config.get("temperature", 0.7)),
            "force_listen_count": int(extra.get("force_listen_count", 3)),
            "max_context_units": int(extra.get("context_max_units", 24)),
            "max_text_tokens_per_unit": int(config.get("max_output_tokens", 20))})
        self.model.reset()
        self.current = session

    # -- the session loop ------------------------------------------------------------------------
    def _loop(self, conn, session: DoubleSession) -> None:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                message = json.loads(conn.recv())
            except Exception:  # noqa: BLE001 - the client went away: the session waits for a resume
                return
            self._log(message)
            try:
                self._dispatch(conn, session, message)
            except ConnectionClosed:
                return
            if session.closed:
                return

    def _dispatch(self, conn, session: DoubleSession, message: dict) -> None:
        kind, event_id = message.get("type"), message.get("event_id")
        if kind == "input_audio_buffer.append":
            self._append(conn, session, message)
        elif kind == "response.cancel":
            with self.lock:
                if self.current is session:
                    self.model.interrupt()
            if session.response_id is not None:
                self._end_response(conn, session, "cancelled")
        elif kind == "playback.ack":
            self._send(conn, session, {"type": "playback.acknowledged",
                                       "event": {"played_ms": message.get("played_ms")}})
        elif kind == "session.update":
            patch = message.get("session") or {}
            if "instructions" in patch and patch["instructions"] != session.config.get("instructions"):
                self._error(conn, session, "instructions_update_unsupported",
                            "instructions cannot be changed after the session is created", event_id)
                return
            session.config.update(patch)
            with self.lock:
                if "temperature" in patch and self.current is session:
                    self.model.apply_options({"temperature": float(patch["temperature"])})
            self._send(conn, session, {"type": "session.updated", "session": {"id": session.session_id}})
        elif kind == "session.event_ack":
            pass
        elif kind == "session.close":
            session.closed = True
            self._send(conn, session, {"type": "session.closed", "session_id": session.session_id,
                                       "reason": message.get("reason", "client_close")})
            conn.close()
        else:
            self._error(conn, session, "unknown_event", f"Unknown duplex event type: {kind}", event_id)

    def _append(self, conn, session: DoubleSession, message: dict) -> None:
        event_id = message.get("event_id")
        try:
            pcm = base64.b64decode(message.get("audio", ""), validate=True)
        except ValueError:
            self._error(conn, session, "bad_audio", "audio is not base64", event_id)
            return
        if message.get("format", "pcm16") != "pcm16" or len(pcm) != 32000:
            self._error(conn, session, "bad_audio", f"expected 1 s of 16 kHz pcm16, got {len(pcm)} bytes",
                        event_id)
            return
        frames = message.get("video_frames") or []
        image = None
        if len(frames) > 2:
            self._error(conn, session, "invalid_video_frames", "more than 2 frames", event_id)
            return
        if frames:
            import io

            from PIL import Image

            raw = base64.b64decode(frames[0])
            if not (raw.startswith(b"\xff\xd8") or raw.startswith(b"\x89PNG")):
                self._error(conn, session, "invalid_video_frames",
                            "video_frames entries must be JPEG or PNG images", event_id)
                return
            image = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        delay = self._delay()
        if delay:
            time.sleep(delay)
        with self.lock:
            if self.current is not session:
                self._open_model(session)
            session.units += 1
            out = self.model.run_unit(UnitInput(window_index=session.units, epoch=0, start_ns=0, end_ns=0,
                                                image=image, image_stamp_ns=0 if image is not None else None,
                                                audio=audio))
        if out.is_listen:
            if session.response_id is not None:
                self._end_response(conn, session, "completed")
            self._send(conn, session, {"type": "response.listen", "session_id": session.session_id,
                                       "response": {"object": "realtime.response", "status": "listening"}})
            return
        if session.response_id is None:
            session.responses += 1
            session.response_id = f"resp_{session.session_id}_{session.responses}"
            session.transcript = ""
            rid = session.response_id
            self._send(conn, session, {"type": "response.created", "response_id": rid,
                                       "response": {"id": rid, "object": "realtime.response",
                                                    "status": "in_progress"}})
            self._send(conn, session, {"type": "response.speak", "response_id": rid})
        rid = session.response_id
        pcm_out = (np.clip(out.speech, -1, 1) * 32767).round().astype("<i2").tobytes()
        self._send(conn, session, {"type": "response.output_audio.delta", "response_id": rid,
                                   "delta": base64.b64encode(pcm_out).decode("ascii"), "format": "pcm16",
                                   "sample_rate_hz": 24000,
                                   "metadata": {"end_of_turn": bool(out.end_of_turn),
                                                "audio_duration_ms": len(out.speech) * 1000 // 24000}})
        session.transcript += out.text
        self._send(conn, session, {"type": "response.output_audio_transcript.delta", "response_id": rid,
                                   "delta": out.text})
        if out.end_of_turn:
            self._end_response(conn, session, "completed")

    def _end_response(self, conn, session: DoubleSession, status: str) -> None:
        rid, session.response_id = session.response_id, None
        self._send(conn, session, {"type": "response.output_audio.done", "response_id": rid})
        self._send(conn, session, {"type": "response.output_audio_transcript.done", "response_id": rid,
                                   "transcript": session.transcript})
        self._send(conn, session, {"type": "response.done", "response_id": rid,
                                   "response": {"id": rid, "object": "realtime.response", "status": status}})

    # -- serving ---------------------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 0, ssl_context=None):
        """Start serving in a background thread; returns the port. With `ssl_context` (a server
        ssl.SSLContext holding the certificate chain) it serves wss:// instead of ws://."""
        from websockets.sync.server import serve

        self.server = serve(self.handle, host, port, process_request=self.process_request,
                            compression=None, max_size=16 * 1024 * 1024, ssl=ssl_context)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server.socket.getsockname()[1]

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key-file")
    parser.add_argument("--delay-file")
    parser.add_argument("--log")
    parser.add_argument("--listen-prob-scale", type=float, default=1.0)
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve wss:// (with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    context = None
    if args.tls_cert:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    key = Path(args.api_key_file).read_text().strip() if args.api_key_file else None
    double = Double(args.model_path, api_key=key, delay_file=args.delay_file, log_path=args.log,
                    listen_prob_scale=args.listen_prob_scale)
    port = double.serve(args.host, args.port, ssl_context=context)
    scheme = "wss" if context is not None else "ws"
    print(f"vllm_omni double serving on {scheme}://{args.host}:{port}/v1/duplex", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        double.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
