"""The vllm_omni backend in process: its messages against vllm-omni's protocol (a schema written
from the 0.30.0 sources, and the server's own decoders where a throwaway environment has them),
its handling of every server event of the duplex subset, and the network as a fault: a refused
key, a server that is down, drops, restarts, is slow or too slow. The server is the protocol test
double (test/vllm_omni_double.py) answering with the tiny model, on a localhost socket."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from omni_ros.flow.types import UnitInput
from omni_ros.runtime import vllm_omni_protocol as P
from omni_ros.runtime.registry import BackendError, BackendSettings, available_backends
from omni_ros.runtime.vllm_omni_backend import (ClientConfig, ServerUnavailable, UnitTimeout,
                                                VllmOmniBackend, VllmOmniSession, _Expected,
                                                refusal)
from omni_ros.tools.scene_player import scene_frame
from vllm_omni_double import Double

pytestmark = pytest.mark.unit

SCHEMA = json.loads((Path(__file__).parent / "data" / "vllm_omni_client_events.schema.json").read_text())
KEY = "k-" + "7" * 30


# -- helpers -----------------------------------------------------------------------------------------

class Recorder:
    """A websockets connection that keeps what was sent through it."""

    def __init__(self, ws, into):
        self._ws, self._into = ws, into

    def send(self, text):
        self._into.append(json.loads(text))
        return self._ws.send(text)

    def __getattr__(self, name):
        return getattr(self._ws, name)


def unit(i, image=True, audio=None):
    frame = scene_frame(i * 1.0, 640, 480) if image else None
    return UnitInput(window_index=i, epoch=0, start_ns=0, end_ns=0, image=frame,
                     image_stamp_ns=i if image else None,
                     audio=np.zeros(16000, np.float32) if audio is None else audio)


def options(port, **more):
    base = {"vllm_omni_url": f"ws://127.0.0.1:{port}/v1/duplex", "vllm_omni_api_key_env": "OMNI_TEST_KEY",
            "force_listen_count": 0, "window_sec": 1.0, "vllm_omni_unit_timeout_sec": 3.0,
            "vllm_omni_connect_timeout_sec": 2.0, "system_prompt": "Streaming Omni Conversation.",
            "standing_instruction": "Warn about wet floors."}
    base.update(more)
    return base


@pytest.fixture(scope="module")
def double(tiny_checkpoint, tmp_path_factory):
    delay = tmp_path_factory.mktemp("double") / "delay"
    served = Double(str(tiny_checkpoint), api_key=KEY, delay_file=str(delay), listen_prob_scale=0.02)
    port = served.serve()
    served.port, served.delay_path = port, delay
    yield served
    served.shutdown()


@pytest.fixture
def client(double, tiny_checkpoint, monkeypatch):
    """make(**options) -> (session, list of every message it sent)."""
    monkeypatch.setenv("OMNI_TEST_KEY", KEY)
    double.delay_path.write_text("0")
    made = []

    def make(**more):
        opts = options(double.port, **more)
        sent = []

        def connect(config, timeout):
            return Recorder(VllmOmniSession._open_socket(session_stub(config), timeout), sent)

        session = VllmOmniSession(ClientConfig.from_options(opts), opts, model_path=str(tiny_checkpoint),
                                  connect=connect)
        session.connect()
        made.append(session)
        return session, sent

    yield make
    for session in made:
        session.close()


def session_stub(config):
    stub = VllmOmniSession.__new__(VllmOmniSession)
    stub.config, stub._connect_impl = config, None
    return stub


def validate(value, schema, path="$"):
    """The subset of JSON Schema the schema file uses; a list of what does not hold."""
    if "$ref" in schema:
        schema = SCHEMA["definitions"][schema["$ref"]]
    problems = []
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
        return [f"{path}: not an integer"]
    if kind == "number" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return [f"{path}: not a number"]
    if kind in kinds and not isinstance(value, kinds[kind]):
        return [f"{path}: not {kind}"]
    if "const" in schema and value != schema["const"]:
        problems.append(f"{path}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{path}: below {schema['minimum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 62):
            problems.append(f"{path}: length {len(value)}")
        if "contentPrefix" in schema and not value.startswith(tuple(schema["contentPrefix"])):
            problems.append(f"{path}: does not start with {schema['contentPrefix']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1 << 62):
            problems.append(f"{path}: {len(value)} items")
        for i, item in enumerate(value):
            problems += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{path}: {name} missing")
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                problems += validate(item, properties[name], f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{path}: {name} is not a field the server reads")
    return problems


def conforms(message):
    schema = SCHEMA["events"].get(message.get("type"))
    return [f"{message.get('type')!r} is not an event this client may send"] if schema is None \
        else validate(message, schema)


def speak_until(session, first=0, limit=12):
    """Run units until one speaks; its output and index."""
    for i in range(first, first + limit):
        out = session.run_unit(unit(i))
        if not out.is_listen:
            return out, i
    raise AssertionError("the double never spoke")


# -- the plugin and its options ------------------------------------------------------------------------

def test_entry_point_names_the_plugin():
    assert available_backends()["vllm_omni"] == "omni_ros.runtime.vllm_omni_backend:VllmOmniBackend"


@pytest.mark.parametrize("name, value, why", [
    ("mode", "turn_based", "full duplex only"),
    ("listen_prob_scale", 0.5, "no scale on the <|listen|> logit"),
    ("listen_top_k", 3, "no top-k restriction"),
    ("length_penalty", 1.1, "no <|turn_eos|> length penalty"),
    ("top_k", 50, "fixes it at 20"),
    ("top_p", 0.9, "fixes it at 0.8"),
    ("repetition_penalty", 1.2, "fixes it at 1.05"),
    ("token2wav_steps", 5, "deploy configuration"),
    ("seed", 3, "own generator"),
    ("window_sec", 0.5, "units are 1 s"),
    ("engine_dir", "/tmp/x", "no local engines"),
    ("device", "cuda", "runs on the server"),
])
def test_options_that_do_not_map_are_refused_with_the_reason(name, value, why):
    reason = refusal({name: value})
    assert reason is not None and why in reason and name in reason
    with pytest.raises(BackendError, match="backend vllm_omni: .*" + why.replace("|", r"\|").replace("(", r"\(")):
        VllmOmniBackend(BackendSettings(model_path="x", session_options={name: value})).create_session()


def test_values_equal_to_the_servers_are_accepted():
    assert refusal({"mode": "duplex", "listen_prob_scale": 1.0, "top_k": 20, "top_p": 0.8,
                    "repetition_penalty": 1.05, "token2wav_steps": 10, "seed": 0, "window_sec": 1.0,
                    "device": "cpu", "dtype": "float32", "engine_dir": ""}) is None


def test_api_key_from_file_or_environment_never_shown(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    config = ClientConfig.from_options({"vllm_omni_url": "ws://h:1/v1/duplex",
                                        "vllm_omni_api_key_file": str(key_file)})
    assert config.headers() == {"Authorization": f"Bearer {KEY}"} and KEY not in repr(config)
    monkeypatch.setenv("MY_KEY", KEY)
    assert ClientConfig.from_options({"vllm_omni_url": "ws://h:1/x", "vllm_omni_api_key_env": "MY_KEY"}).api_key == KEY
    for bad, message in [({"vllm_omni_api_key_env": "NOPE_UNSET"}, "not set or empty"),
                         ({"vllm_omni_api_key_file": str(tmp_path / "missing")}, "cannot read it"),
                         ({"vllm_omni_api_key_file": str(key_file), "vllm_omni_api_key_env": "MY_KEY"}, "not both"),
                         ({"vllm_omni_url": "http://h/v1/duplex"}, "not a ws:// or wss://"),
                         ({"vllm_omni_ca_file": str(key_file)}, "not wss://")]:
        with pytest.raises(BackendError, match=message):
            ClientConfig.from_options({"vllm_omni_url": "ws://h:1/v1/duplex", **bad})


def test_append_is_one_second_of_pcm16_and_one_jpeg_of_the_asked_size():
    frame = P.jpeg_base64(scene_frame(0.0, 1280, 720), max_side=320, quality=70)
    from PIL import Image

    picture = Image.open(io.BytesIO(base64.b64decode(frame)))
    assert picture.format == "JPEG" and max(picture.size) == 320 and picture.size == (320, 180)
    tone = 0.5 * np.sin(np.arange(16000) / 10.0).astype(np.float32)
    event = P.audio_append(tone, frame, "e1")
    pcm = np.frombuffer(base64.b64decode(event["audio"]), "<i2")
    assert pcm.shape == (16000,) and np.allclose(pcm / 32767.0, tone, atol=1e-4)
    assert event["video_frames"] == [frame] and not conforms(event)
    with pytest.raises(ValueError, match="16000 samples"):
        P.audio_append(np.zeros(8000, np.float32), None, "e2")


# -- server events: the assembler ------------------------------------------------------------------------

def audio_event(samples, rid="r1", rate=24000, end=False):
    pcm = (np.asarray(samples) * 32767).astype("<i2").tobytes()
    return {"type": "response.output_audio.delta", "response_id": rid, "sample_rate_hz": rate,
            "delta": base64.b64encode(pcm).decode(), "metadata": {"end_of_turn": end}}


def test_assembler_maps_every_event_of_the_duplex_subset():
    a = P.AnswerAssembler()
    a.feed({"type": "response.listen"})
    assert a.ready and a.take().is_listen
    a.feed({"type": "response.created", "response_id": "r1", "response": {"id": "r1"}})
    a.feed({"type": "response.speak", "response_id": "r1"})
    assert a.active_response == "r1" and not a.ready
    a.feed(audio_event(np.full(12000, 0.1)))             # two chunks make the unit
    a.feed({"type": "response.output_audio_transcript.delta", "response_id": "r1", "delta": "Care"})
    assert not a.ready
    a.feed(audio_event(np.full(12100, 0.1)))
    assert not a.ready                                     # its text has not come yet
    a.feed({"type": "response.output_text.delta", "response_id": "r1", "delta": "ful"})
    assert a.ready
    out = a.take()
    assert not out.is_listen and out.text == "Careful" and out.speech.shape == (24000,)
    a.feed(audio_event(np.full(16000, 0.2), rate=16000, end=True))   # resampled to 24 kHz, turn end
    a.feed({"type": "response.text.delta", "response_id": "r1", "delta": " floor"})
    a.feed({"type": "response.output_audio.done", "response_id": "r1"})
    a.feed({"type": "response.done", "response_id": "r1", "response": {"status": "completed"}})
    out = a.take()
    # the 100 samples carried over and the resampled second; a turn's end keeps its tail
    assert out.end_of_turn and out.speech.shape[0] == 24100 and out.text == " floor"
    assert a.active_response is None and a.played_ms["r1"] == pytest.approx(1000 + 24100 / 24)
    for ignored in ("conversation.item.added", "playback.acknowledged", "turn.event", "mystery.event"):
        a.feed({"type": ignored})
    assert not a.pending and a.counters.events_ignored == 6   # response.speak, audio.done and these


def test_speech_of_a_cancelled_response_answers_its_unit_muted():
    a = P.AnswerAssembler()
    a.feed({"type": "response.created", "response_id": "r9"})
    assert a.cancel_active() == "r9" and a.active_response is None
    a.feed(audio_event(np.full(24000, 0.3), rid="r9"))
    a.feed({"type": "response.output_audio_transcript.delta", "response_id": "r9", "delta": "x"})
    out = a.take()
    assert out.is_listen and out.muted and out.speech.size == 0
    assert a.counters.cancelled_audio_deltas == 1


def test_a_short_tail_after_a_listen_is_dropped_and_counted():
    a = P.AnswerAssembler()
    a.feed(audio_event(np.full(2000, 0.1)))
    a.feed({"type": "response.listen"})
    assert a.take().is_listen and a.counters.carry_samples_dropped == 2000


def test_error_shapes_are_read():
    assert P.error_fields({"type": "error", "error": {"code": "bad_audio", "message": "m", "event_id": "e3"}}) \
        == ("bad_audio", "m", "e3")
    assert P.error_fields({"type": "error", "code": "unsupported", "error": "VAD realtime is not enabled"}) \
        == ("unsupported", "VAD realtime is not enabled", None)


# -- against the double --------------------------------------------------------------------------------

def test_units_flow_and_every_message_conforms(client, double):
    session, sent = client()
    outputs = [session.run_unit(unit(i, image=i % 3 != 2)) for i in range(6)]
    speaking = [o for o in outputs if not o.is_listen]
    assert speaking, "the double (tiny model, listen_prob_scale 0.02) must speak"
    for out in speaking:
        assert out.speech.dtype == np.float32 and out.speech.shape[0] >= 24000 and out.text
        assert out.speak_probability == 1.0
    assert session.interrupt() in (True, False)
    session.apply_options({"temperature": 0.5, "standing_instruction": "Warn about stairs."})
    session.reset()
    session.run_unit(unit(7))
    kinds = [m["type"] for m in sent]
    assert kinds.count("input_audio_buffer.append") == 7 and kinds.count("session.update") >= 3
    assert "playback.ack" in kinds and "session.close" in kinds
    for message in sent:
        assert conforms(message) == [], message["type"]
    # the new session carries the changed standing instruction (vllm-omni refuses to change
    # instructions of a live session: it takes effect at the reset, as with the local backends)
    opened = [m for m in sent if m["type"] == "session.update" and "instructions" in m["session"]]
    assert opened[-1]["session"]["instructions"].endswith("Warn about stairs.")
    assert opened[-1]["session"]["temperature"] == 0.5
    assert any(m["session"] == {"temperature": 0.5} for m in sent if m["type"] == "session.update")
    # messages per unit: ~43 KB of audio and a frame (measured for the README)
    appends = [len(json.dumps(m, separators=(",", ":"))) for m in sent if m["type"] == "input_audio_buffer.append"]
    assert 42_000 < min(appends) and max(appends) < 120_000


VLLM_OMNI_PYTHON = os.environ.get("OMNI_ROS_VLLM_OMNI_PYTHON", "")


@pytest.mark.skipif(not VLLM_OMNI_PYTHON, reason="OMNI_ROS_VLLM_OMNI_PYTHON (a python with the "
                    "vllm-omni 0.30.0 wheel installed --no-deps, numpy and pybase64) is not set")
def test_every_message_passes_vllm_omnis_own_decoders(client, tmp_path):
    session, sent = client()
    for i in range(4):
        session.run_unit(unit(i))
    session.apply_options({"temperature": 0.6})
    session.interrupt()
    sent.append(P.session_resume("sess_1", "tok", 12))
    sent.append(P.event_ack(12))
    session.reset()
    root = subprocess.run([VLLM_OMNI_PYTHON, "-c", "import importlib.util, pathlib; "
                           "print(pathlib.Path(importlib.util.find_spec('vllm_omni').origin).parent)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    done = subprocess.run([VLLM_OMNI_PYTHON, str(Path(__file__).parent / "vllm_omni_conformance.py")],
                          input="\n".join(json.dumps(m) for m in sent), capture_output=True, text=True,
                          env={**os.environ, "VLLM_OMNI_ROOT": root}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(sent)
    assert {r["type"] for r in results} >= {"session.update", "input_audio_buffer.append", "playback.ack",
                                            "session.resume", "session.event_ack", "session.close"}
    refused = [r for r in results if not r["ok"]]
    assert not refused, refused


def test_a_wrong_key_is_one_line_without_the_key(double, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("OMNI_TEST_KEY", "wrong-" + KEY)
    with pytest.raises(BackendError) as caught:
        VllmOmniBackend(BackendSettings(model_path=str(tiny_checkpoint),
                                        session_options=options(double.port))).create_session()
    text = str(caught.value)
    assert "refused the API key (HTTP 401)" in text and "\n" not in text and KEY not in text


def test_a_server_that_is_down_at_start_is_one_line(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("OMNI_TEST_KEY", KEY)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match=f"cannot reach the vllm-omni server at ws://127.0.0.1:{port}"):
        VllmOmniBackend(BackendSettings(model_path=str(tiny_checkpoint),
                                        session_options=options(port))).create_session()


# -- TLS: wss:// with a CA file --------------------------------------------------------------------------

CA_CONFIG = """[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = {name}
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
SERVER_EXTENSIONS = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_certificates(folder: Path) -> dict:
    """With the openssl tool: a CA, a server certificate for 127.0.0.1 and localhost signed by it,
    and a second CA that signed nothing. Their PEM paths by name."""
    def openssl(*args):
        done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other_ca"):
        (folder / f"{ca}.cnf").write_text(CA_CONFIG.format(name=f"omni_ros test {ca}"))
        openssl("req", "-x509", *ec, "-config", f"{ca}.cnf", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                "-days", "2")
    (folder / "server.ext").write_text(SERVER_EXTENSIONS)
    openssl("req", "-new", *ec, "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "1001",
            "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
    return {"ca": folder / "ca.pem", "other_ca": folder / "other_ca.pem", "server": folder / "server.pem",
            "server_key": folder / "server.key"}


@pytest.fixture(scope="module")
def tls_double(tiny_checkpoint, tmp_path_factory):
    """The double serving wss:// with a certificate that a CA made here signed."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command-line tool makes the test certificates; it is not on PATH")
    folder = tmp_path_factory.mktemp("tls")
    files = make_certificates(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["server"], files["server_key"])
    served = Double(str(tiny_checkpoint), api_key=KEY, listen_prob_scale=0.02)
    served.port = served.serve(ssl_context=context)
    served.files = files
    yield served
    served.shutdown()


def tls_backend(tls_double, tiny_checkpoint, **more):
    return VllmOmniBackend(BackendSettings(model_path=str(tiny_checkpoint), session_options=options(
        tls_double.port, vllm_omni_url=f"wss://127.0.0.1:{tls_double.port}/v1/duplex", **more)))


def test_units_flow_over_wss_with_the_ca_file(tls_double, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("OMNI_TEST_KEY", KEY)
    before = len(tls_double.messages)
    session = tls_backend(tls_double, tiny_checkpoint,
                          vllm_omni_ca_file=str(tls_double.files["ca"])).create_session()
    try:
        sock = session._ws.socket
        assert isinstance(sock, ssl.SSLSocket) and sock.version() in ("TLSv1.2", "TLSv1.3")
        peer = dict(sock.getpeercert()["subjectAltName"])
        assert peer == {"IP Address": "127.0.0.1", "DNS": "localhost"}
        out, i = speak_until(session)
        assert out.speech.dtype == np.float32 and out.speech.shape[0] >= 24000 and out.text
        assert session.counters.units_answered == i + 1
    finally:
        session.close()
    kinds = [m["type"] for m in tls_double.messages[before:]]
    assert kinds[0] == "session.update" and kinds.count("input_audio_buffer.append") == i + 1


@pytest.mark.parametrize("ca, problem", [
    (None, "self-signed certificate in certificate chain|unable to get local issuer certificate"),
    ("other_ca", "unable to get local issuer certificate"),
])
def test_wss_without_the_servers_ca_is_refused_in_one_line(tls_double, tiny_checkpoint, monkeypatch,
                                                          ca, problem):
    monkeypatch.setenv("OMNI_TEST_KEY", KEY)
    more = {"vllm_omni_ca_file": str(tls_double.files[ca])} if ca else {}
    before = len(tls_double.messages)
    with pytest.raises(BackendError) as caught:
        tls_backend(tls_double, tiny_checkpoint, **more).create_session()
    text = str(caught.value)
    url = f"wss://127.0.0.1:{tls_double.port}/v1/duplex"
    assert text.startswith(f"TLS to {url} failed: certificate verify failed: "), text
    assert re.search(problem, text) and "vllm_omni_ca_file" in text, text
    assert "\n" not in text and "Traceback" not in text and KEY not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert len(tls_double.messages) == before           # nothing reached the server


def test_no_voice_is_refused(double, tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_TEST_KEY", KEY)
    with pytest.raises(BackendError, match="no reference voice"):
        VllmOmniBackend(BackendSettings(model_path=str(tmp_path),
                                        session_options=options(double.port))).create_session()


def test_barge_in_and_reset_cancel_the_response(client, double):
    session, sent = client()
    out, i = speak_until(session)
    rid = session.assembler.active_response
    assert rid and session.interrupt() is True
    cancels = [m for m in sent if m["type"] == "response.cancel"]
    assert cancels and cancels[-1]["response_id"] == rid
    after = session.run_unit(unit(i + 1))             # the cancelled turn's speech never comes out
    assert after.is_listen or session.assembler.active_response != rid
    out, i = speak_until(session, i + 2)
    session.reset()
    assert [m["type"] for m in sent][-2:] == ["response.cancel", "session.close"]
    sessions_before = session.counters.sessions_opened
    session.run_unit(unit(i + 1))
    assert session.counters.sessions_opened == sessions_before + 1


def test_a_drop_between_units_resumes_the_session(client):
    session, sent = client()
    session.run_unit(unit(0))
    sid = session.session_id
    session._ws._ws.close()                              # the network drops the connection
    session.run_unit(unit(1))
    assert session.counters.sessions_resumed == 1 and session.session_id == sid
    assert [m for m in sent if m["type"] == "session.resume"][0]["session_id"] == sid


def test_a_restarted_server_gets_a_new_session(double, client, tiny_checkpoint):
    session, sent = client()
    session.run_unit(unit(0))
    double.sessions.clear()                              # what a restart forgets
    session._ws._ws.close()
    out = session.run_unit(unit(1))
    assert session.counters.resume_refused == 1 and session.counters.sessions_opened == 2
    assert isinstance(out.is_listen, bool)


def test_a_server_gone_fails_units_fast_then_comes_back(client, double):
    session, sent = client()
    session.run_unit(unit(0))
    double.shutdown()                                   # the server process goes away...
    double.sessions.clear()
    session._lost("test")
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="cannot reach"):
        session.run_unit(unit(1))
    assert time.monotonic() - started < 1.0 and session.counters.units_failed_disconnected == 1
    double.serve(port=double.port)                      # ...and is started again
    session.run_unit(unit(2))
    assert session.counters.units_answered == 2 and session.counters.sessions_opened == 2


def test_a_slow_answer_is_late_and_a_missing_one_times_out(client, double):
    session, sent = client(vllm_omni_unit_timeout_sec=2.0)
    session.run_unit(unit(0))
    double.delay_path.write_text("1.0")
    started = time.monotonic()
    session.run_unit(unit(1))
    assert time.monotonic() - started > 1.0 and session.counters.units_late == 1
    double.delay_path.write_text("2.5")
    with pytest.raises(UnitTimeout, match="within 2.0 s; last round trip"):
        session.run_unit(unit(2))
    double.delay_path.write_text("0")
    session.run_unit(unit(3))                            # the late answer is dropped, then in step
    assert session.counters.late_answers_dropped == 1 and session.counters.units_timed_out == 1
    values = session.diagnostic_values()
    assert values["server_units_outstanding"] == 0 and values["server_rtt_ms_max"] > 1000


def test_a_refused_append_is_not_waited_for(client, double):
    session, sent = client(vllm_omni_unit_timeout_sec=1.0)
    bad = P.audio_append(np.zeros(16000, np.float32), None, "bad-1")
    bad["audio"] = bad["audio"][:1000]
    session._send(bad)                                   # the server refuses it with an error
    session._expected.append(_Expected(0, time.monotonic(), "bad-1"))
    out = session.run_unit(unit(1))
    assert session.counters.appends_refused == 1 and session.counters.server_errors == 1
    assert isinstance(out.is_listen, bool)


def test_run_time_options(client):
    session, sent = client()
    with pytest.raises(ValueError, match="full duplex only"):
        session.apply_options({"mode": "turn_based"})
    with pytest.raises(ValueError, match="no scale"):
        session.apply_options({"listen_prob_scale": 3.0})
    with pytest.raises(ValueError, match="cannot read it"):
        session.apply_options({"reference_voice": "/nonexistent.wav"})
    with pytest.raises(ValueError, match="not options of this session"):
        session.apply_options({"speech_threshold": 0.2})
    assert session.options.get("mode", "duplex") == "duplex" and "listen_prob_scale" not in session.options
