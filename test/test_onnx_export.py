"""ONNX export of every compute graph, the engine manifest, the waveform stage over onnxruntime
against torch, and the onnxruntime backend's session against the torch one on the tiny checkpoint."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from omni_ros.flow.types import UnitInput
from omni_ros.model.checkpoint import write_checkpoint
from omni_ros.session.options import SessionOptions
from omni_ros.session.session import OmniSession
from omni_ros.runtime.torch_compute import TorchCompute
from omni_ros.model.token2wav.model import synthetic_voice
from omni_ros.session.waveform import WaveformStream
from omni_ros.model.token2wav.voice import Voice
from omni_ros.runtime import graphs as G
from omni_ros.runtime.engine_files import (MANIFEST_NAME, EngineMismatch, checkpoint_fingerprint,
                                           check_manifest, read_manifest, write_manifest)
from omni_ros.runtime.onnx_export import export_all
from omni_ros.runtime.onnxruntime_backend import OrtBackend, OrtCompute
from omni_ros.runtime.registry import BackendError, BackendSettings

pytestmark = pytest.mark.slow  # integration: ONNX export of every graph, onnxruntime vs torch

COMPONENTS = list(G.GRAPHS)
# A second and third set of sizes (the export used the defaults of example_inputs): an empty past
# (first audio chunk, first LLM/TTS step, the waveform stage's first chunk and first vocoder call),
# one new token, other image, mel and chunk sizes, a long past.
OTHER_SIZES = [
    {"tokens": 1, "past": 0, "mel_frames": 52, "height": 98, "width": 42, "codes": 7,
     "t2w_codes": 33, "t2w_enc_past": 0, "t2w_frames": 66, "t2w_est_past": 0, "t2w_mel": 3, "t2w_source": 0},
    {"tokens": 9, "past": 300, "mel_frames": 200, "height": 56, "width": 112, "codes": 2,
     "t2w_codes": 28, "t2w_enc_past": 206, "t2w_frames": 50, "t2w_est_past": 300, "t2w_mel": 58,
     "t2w_source": 3840},
]
LONG_PAST = {"tokens": 1, "past": 2500}
# the smallest waveform-stage calls: a 1-code last chunk (4 codes with lookahead), 2 frames
T2W_SMALL = {"t2w_codes": 4, "t2w_frames": 2, "t2w_mel": 2, "t2w_source": 960}


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "engines"
    manifest = export_all(tiny_checkpoint, out, log=lambda *_: None)
    return out, manifest


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-6)) if b.size else 0.0


def compare(module, spec, session, inputs, tol=1e-4):
    with torch.no_grad():
        ref = module(*[inputs[k] for k in spec.inputs])
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = session.run(list(spec.outputs), {k: inputs[k].numpy() for k in spec.inputs})
    for name, a, b in zip(spec.outputs, got, ref):
        b = b.numpy()
        assert a.shape == b.shape, (spec.name, name, a.shape, b.shape)
        assert np.isfinite(b).all()
        err = rel_error(a, b)
        assert err < tol, (spec.name, name, err)


@pytest.mark.parametrize("name", COMPONENTS)
def test_graph_exports_and_matches_torch(name, exported, tiny_model):
    out, manifest = exported
    path = out / manifest.components[name].file
    onnx.checker.check_model(str(path))
    spec = G.GRAPHS[name]
    module = spec.build(tiny_model).eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(spec.inputs)
    assert [o.name for o in session.get_outputs()] == list(spec.outputs)
    extra = {"llm_step": [LONG_PAST], "t2w_encoder": [T2W_SMALL],
             "t2w_encoder_last": [dict(T2W_SMALL, t2w_codes=1)], "t2w_estimator_step": [T2W_SMALL],
             "t2w_vocoder": [T2W_SMALL]}.get(name, [])
    for sizes in [None, *OTHER_SIZES, *extra]:
        compare(module, spec, session, G.example_inputs(name, tiny_model.config, sizes,
                                                        t2w=tiny_model.token2wav))


def test_empty_past_shapes(exported, tiny_model):
    """P = 0 really gives presents of length n (not a pinned example length)."""
    out, _ = exported
    cfg = tiny_model.config
    session = ort.InferenceSession(str(out / "llm_step.onnx"), providers=["CPUExecutionProvider"])
    x = G.example_inputs("llm_step", cfg, {"tokens": 1, "past": 0})
    hidden, keys, _ = session.run(None, {k: v.numpy() for k, v in x.items()})
    assert keys.shape == G.llm_kv_shape(cfg, 1) and hidden.shape == (1, 1, cfg.hidden_size)
    session = ort.InferenceSession(str(out / "audio.onnx"), providers=["CPUExecutionProvider"])
    x = G.example_inputs("audio", cfg, {"past": 0})
    embeds, keys, _ = session.run(None, {k: v.numpy() for k, v in x.items()})
    assert keys.shape == G.audio_kv_shape(cfg, x["keep_index"].numel())
    t2w = tiny_model.token2wav
    flow = t2w.flow.config
    for name, codes, frames in (("t2w_encoder", 9, 12), ("t2w_encoder_last", 9, 18)):
        session = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        x = G.example_inputs(name, cfg, {"t2w_codes": codes, "t2w_enc_past": 0}, t2w=t2w)
        assert x["cnn_cache"].shape[2] == 0 and x["att_cache"].shape[3] == 0
        mu, cnn, att = session.run(None, {k: v.numpy() for k, v in x.items()})
        assert mu.shape == (1, 80, frames)
        assert (cnn.shape, att.shape) == G.t2w_encoder_cache_shapes(flow, frames)
    session = ort.InferenceSession(str(out / "t2w_estimator_step.onnx"), providers=["CPUExecutionProvider"])
    x = G.example_inputs("t2w_estimator_step", cfg, {"t2w_frames": 40, "t2w_est_past": 0}, t2w=t2w)
    assert x["cnn_cache"].shape[3] == 0 and x["att_keys"].shape[3] == 0 == x["att_values"].shape[3]
    x_next, cnn, keys, values = session.run(None, {k: v.numpy() for k, v in x.items()})
    assert x_next.shape == (1, 80, 40) and (cnn.shape, keys.shape) == G.t2w_estimator_cache_shapes(flow, 40)
    assert values.shape == keys.shape
    session = ort.InferenceSession(str(out / "t2w_vocoder.onnx"), providers=["CPUExecutionProvider"])
    x = G.example_inputs("t2w_vocoder", cfg, {"t2w_mel": 5, "t2w_source": 0}, t2w=t2w)
    speech, source = session.run(None, {k: v.numpy() for k, v in x.items()})
    assert speech.shape == (1, 2400) and source.shape == (1, 1, 2400)


# --- manifest -------------------------------------------------------------------------------------
def test_manifest_records_the_checkpoint_and_files(exported, tiny_checkpoint):
    out, manifest = exported
    on_disk = read_manifest(out)
    assert on_disk.format == "onnx"
    assert on_disk.checkpoint_hash == checkpoint_fingerprint(tiny_checkpoint)
    assert on_disk.versions["opset"] == "18" and on_disk.versions["torch"] == torch.__version__
    assert on_disk.versions["onnx"] == onnx.__version__
    assert set(on_disk.components) == set(COMPONENTS)
    for entry in on_disk.components.values():
        assert entry.precision == "fp32" and len(entry.sha256) == 64 and entry.size > 0
    assert check_manifest(out, tiny_checkpoint, "onnx", COMPONENTS).checkpoint_hash == manifest.checkpoint_hash


def refused(folder, model_path, fmt="onnx", **kwargs) -> str:
    with pytest.raises(EngineMismatch) as info:
        check_manifest(folder, model_path, fmt, COMPONENTS, **kwargs)
    assert isinstance(info.value, BackendError)
    return str(info.value)


def test_manifest_refuses_another_checkpoint(exported, tmp_path):
    out, _ = exported
    other = write_checkpoint(tmp_path / "other", seed=1)
    message = refused(out, other)
    assert "another checkpoint" in message
    assert f"omni_ros_build_engines {other} --backend onnxruntime --out {out}" in message


def test_manifest_refuses_missing_or_changed_files(exported, tiny_checkpoint, tmp_path):
    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "tts_step.onnx").unlink()
    message = refused(copy, tiny_checkpoint)
    assert "tts_step" in message and "missing" in message
    assert f"omni_ros_build_engines {tiny_checkpoint} --backend onnxruntime --out {copy}" in message
    shutil.copy(out / "tts_step.onnx", copy / "tts_step.onnx")
    data = bytearray((copy / "vision.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "vision.onnx").write_bytes(bytes(data))
    assert "vision" in refused(copy, tiny_checkpoint)
    (copy / MANIFEST_NAME).unlink()
    assert MANIFEST_NAME in refused(copy, tiny_checkpoint)
    assert "does not exist" in refused(tmp_path / "nowhere", tiny_checkpoint)


def test_manifest_refuses_another_format_version_or_gpu(exported, tiny_checkpoint, tmp_path):
    out, _ = exported
    message = refused(out, tiny_checkpoint, fmt="tensorrt")
    assert "'onnx'" in message and f"--backend tensorrt --out {out}" in message
    message = refused(out, tiny_checkpoint, versions_required={"onnx": "0.1.0"})
    assert "onnx 0.1.0" in message and "omni_ros_build_engines" in message
    assert "tensorrt" in refused(out, tiny_checkpoint, versions_required={"tensorrt": "10.13"})
    copy = tmp_path / "gpu"
    shutil.copytree(out, copy)
    manifest = read_manifest(copy)
    manifest.gpu = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    write_manifest(copy, manifest)
    check_manifest(copy, tiny_checkpoint, "onnx", COMPONENTS, gpu=dict(manifest.gpu))
    message = refused(copy, tiny_checkpoint, gpu={"name": "NVIDIA L4", "compute_capability": "8.9"})
    assert "L4" in message and "omni_ros_build_engines" in message


def test_backend_refuses_a_stale_folder_with_the_rebuild_command(exported, tmp_path):
    out, _ = exported
    other = write_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(BackendError, match="omni_ros_build_engines"):
        OrtBackend(BackendSettings(model_path=str(other), engine_dir=str(out))).create_session()
    with pytest.raises(BackendError, match="omni_ros_build_engines"):   # default folder: absent
        OrtBackend(BackendSettings(model_path=str(other))).create_session()


def test_a_checkpoint_without_the_released_waveform_assets_is_refused(tiny_checkpoint, exported, tmp_path):
    """The onnxruntime backend reads the waveform stage's dimensions and prompt front end from
    assets/token2wav/ and refuses a folder that is not the released layout, naming the file."""
    out, _ = exported
    ckpt = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, ckpt, ignore=shutil.ignore_patterns("engines"))
    (ckpt / "assets" / "token2wav" / "hift.pt").unlink()
    with pytest.raises(BackendError, match="hift.pt"):
        OrtBackend(BackendSettings(model_path=str(ckpt), engine_dir=str(out))).create_session()


# --- the waveform stage over onnxruntime vs over torch ----------------------------------------------
def _recording(stream):
    """Record every decode call's mel and waveform (the stream's own methods, wrapped)."""
    mels, wavs = [], []
    decode_mel, vocode = stream.decode_mel, stream.vocode

    def record_mel(codes, last_chunk):
        mels.append(decode_mel(codes, last_chunk).clone())
        return mels[-1]

    def record_wav(mel, last_chunk):
        wavs.append(vocode(mel, last_chunk).clone())
        return wavs[-1]

    stream.decode_mel, stream.vocode = record_mel, record_wav
    return mels, wavs


def _peak_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max()) / max(float(b.abs().max()), 1e-6)


@pytest.mark.parametrize("steps", [5, 10])
def test_waveform_stream_over_onnxruntime_equals_torch(exported, tiny_checkpoint, tiny_model, steps):
    """The released streaming schedule driven through the exported graphs gives, call for call,
    the mel and the waveform of the torch modules (voice prompt, two turns with early flushes,
    regular chunks and last chunks)."""
    out, _ = exported
    compute = OrtCompute(tiny_checkpoint, out)
    voice = Voice.from_samples(synthetic_voice(2.5, seed=4), 16000, "test voice")
    streams = [WaveformStream(tiny_model.token2wav, steps=steps, seed=2),
               WaveformStream(compute.waveform, steps=steps, seed=2)]
    records = [_recording(s) for s in streams]
    prompts = [s.set_voice(voice) for s in streams]
    assert torch.equal(prompts[0].codes, prompts[1].codes)
    assert _peak_error(prompts[1].speaker, prompts[0].speaker) < 1e-5
    for a, b in zip(vars(prompts[1].flow_caches).values(), vars(prompts[0].flow_caches).values()):
        assert _peak_error(a, b) < 1e-4
    rng = np.random.default_rng(7)
    plan = [(7, True, False), (25, False, False), (25, False, False), (25, False, False), (11, False, True),
            (30, True, False), (13, False, True)]
    for count, turn_start, end_of_turn in plan:
        codes = rng.integers(0, 6561, count).tolist()
        wav_torch, wav_ort = (s.push(codes, turn_start=turn_start, end_of_turn=end_of_turn) for s in streams)
        assert wav_torch.shape == wav_ort.shape
        assert np.abs(wav_ort - wav_torch).max() <= 1e-4 * max(np.abs(wav_torch).max(), 1e-6)
    (mels_torch, wavs_torch), (mels_ort, wavs_ort) = records
    assert len(mels_torch) == len(mels_ort) >= 8 and len(wavs_torch) == len(wavs_ort)
    assert streams[0].calls == streams[1].calls
    for k, (a, b) in enumerate(zip(mels_ort, mels_torch)):
        assert _peak_error(a, b) < 1e-4, (k, _peak_error(a, b))
    for k, (a, b) in enumerate(zip(wavs_ort, wavs_torch)):
        assert float(b.abs().max()) > 0.0
        assert _peak_error(a, b) < 1e-4, (k, _peak_error(a, b))


# --- the session over onnxruntime vs over torch ---------------------------------------------------
def units(count: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    for i in range(count):
        audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
        image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) if i % 2 == 0 else None
        yield i, UnitInput(window_index=i, epoch=0, start_ns=i * 10**9, end_ns=(i + 1) * 10**9,
                           image=image, image_stamp_ns=i * 10**9, audio=audio)


def test_session_over_onnxruntime_equals_torch(exported, tiny_checkpoint, tiny_model):
    out, _ = exported
    options = dict(decode_mode="greedy", force_listen_count=0, seed=0, max_context_units=3)
    torch_session = OmniSession(TorchCompute(tiny_model), SessionOptions(**options))
    ort_session = OrtBackend(BackendSettings(model_path=str(tiny_checkpoint), engine_dir=str(out),
                                             session_options=options)).create_session()
    assert isinstance(ort_session.compute, OrtCompute)
    spoke = 0
    for i, unit in units(7):
        if i in (2, 3, 5):                  # drive speaking units whatever the random model decides
            torch_session.decision_override = ort_session.decision_override = True
        a, b = torch_session.run_unit(unit), ort_session.run_unit(unit)
        torch_session.decision_override = ort_session.decision_override = None
        assert (a.is_listen, a.text, a.end_of_turn) == (b.is_listen, b.text, b.end_of_turn), i
        assert a.speech.shape == b.speech.shape
        assert np.allclose(a.speech, b.speech, atol=1e-3), (i, np.abs(a.speech - b.speech).max())
        assert abs(a.speak_probability - b.speak_probability) < 1e-4
        spoke += not a.is_listen
        if not a.is_listen:          # one 1 s window; a turn's last unit appends the final flush
            assert a.speech.shape == (24000,) or a.end_of_turn, (i, a.speech.shape)
            assert float(np.abs(a.speech).max()) > 0.0
        assert torch_session.cache_length == ort_session.cache_length
        assert torch_session.context.position == ort_session.context.position
    assert spoke >= 3
    assert torch_session.context_units == ort_session.context_units == 3   # spans were dropped
