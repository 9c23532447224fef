"""Validate client events with vllm-omni's own decoders, outside omni_ros's environment.

    VLLM_OMNI_ROOT=<site-packages>/vllm_omni python test/vllm_omni_conformance.py < messages.jsonl

Run by test/test_vllm_omni.py in a throwaway virtual environment holding the vllm-omni 0.30.0
wheel (installed --no-deps), numpy and pybase64 (OMNI_ROS_VLLM_OMNI_PYTHON names its python):
vllm-omni's package __init__ files import vLLM and torch, which need a GPU build, so the
packages on the way to the wire decoders are entered as bare namespaces and `vllm.logger` is a
stand-in for the one logging function those decoders import. The decoders themselves run
unchanged: engine/duplex/realtime_commands.py translate_realtime_command (what the server does
with every client event), engine/duplex/config.py DuplexSessionConfig.from_realtime (the
session a session.update opens), entrypoints/duplex/realtime_input.py parse_resume_request.
One JSON line out per message: {"type", "ok", "detail"}.
"""
import json
import logging
import os
import sys
import types
from pathlib import Path


def _bare(name, path=None):
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path is not None else []
    sys.modules[name] = module
    return module


def load(root: Path):
    _bare("vllm")
    logger = types.ModuleType("vllm.logger")
    logger.init_logger = logging.getLogger
    sys.modules["vllm.logger"] = logger
    _bare("vllm_omni", root)
    _bare("vllm_omni.engine", root / "engine")
    _bare("vllm_omni.entrypoints", root / "entrypoints")
    _bare("vllm_omni.entrypoints.duplex", root / "entrypoints" / "duplex")
    from vllm_omni.engine.duplex.config import DuplexSessionConfig
    from vllm_omni.engine.duplex.realtime_commands import translate_realtime_command
    from vllm_omni.entrypoints.duplex.realtime_input import parse_resume_request
    return translate_realtime_command, DuplexSessionConfig, parse_resume_request


def check(message, translate, config_cls, parse_resume):
    kind = message.get("type")
    if kind == "session.resume":
        request = parse_resume_request_ok = parse_resume(message)
        return parse_resume_request_ok is not None, repr(request)
    if kind == "session.event_ack":   # entrypoints/duplex/serving.py: a non-negative int
        seq = message.get("server_event_seq")
        return isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0, f"seq {seq!r}"
    command = translate(message)
    detail = type(command).__name__
    if kind == "session.update" and "ref_audio" in message.get("session", {}):
        config = config_cls.from_realtime(message["session"])
        detail += (f" instructions={config.instructions!r} temperature={config.temperature} "
                   f"max_tokens={config.max_tokens} extra_body_keys={sorted(config.extra_body)}")
    if kind == "input_audio_buffer.append":
        samples = len(command.audio) // 4 if command.format == "pcm_f32le" else len(command.audio) // 2
        detail += f" format={command.format} rate={command.sample_rate_hz} samples={samples} " \
                  f"frames={len(command.video_frames)}"
        if command.sample_rate_hz != 16000 or samples != 16000:
            return False, detail
    return True, detail


def main() -> int:
    root = Path(os.environ["VLLM_OMNI_ROOT"])
    translate, config_cls, parse_resume = load(root)
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        try:
            ok, detail = check(message, translate, config_cls, parse_resume)
        except Exception as error:  # noqa: BLE001 - the server's refusal, reported
            ok, detail = False, f"{type(error).__name__}: {error}"
        print(json.dumps({"type": message.get("type"), "ok": ok, "detail": detail}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
