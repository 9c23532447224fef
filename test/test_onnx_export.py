"""ONNX export of every compute graph, the engine manifest, and the onnxruntime backend's session
against the torch one on the tiny checkpoint."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from omni_ros.flow.types import UnitInput
from omni_ros.model.checkpoint import write_checkpoint
from omni_ros.model.session import OmniDuplexSession, SessionOptions
from omni_ros.runtime import graphs as G
from omni_ros.runtime.engine_files import (MANIFEST_NAME, EngineMismatch, checkpoint_fingerprint,
                                           check_manifest, read_manifest, write_manifest)
from omni_ros.runtime.onnx_export import export_all
from omni_ros.runtime.onnxruntime_backend import OrtBackend, OrtCompute
from omni_ros.runtime.registry import BackendError, BackendSettings

COMPONENTS = list(G.GRAPHS)
# A second and third set of sizes (the export used the defaults of example_inputs): an empty past
# (first audio chunk, first LLM/TTS step), one new token, other image and mel sizes, a long past.
OTHER_SIZES = [
    {"tokens": 1, "past": 0, "mel_frames": 52, "height": 98, "width": 42, "codes": 7},
    {"tokens": 9, "past": 300, "mel_frames": 200, "height": 56, "width": 112, "codes": 2},
]
LONG_PAST = {"tokens": 1, "past": 2500}


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "engines"
    manifest = export_all(tiny_checkpoint, out, log=lambda *_: None)
    return out, manifest


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-6)) if b.size else 0.0


def compare(module, spec, session, inputs):
    with torch.no_grad():
        ref = module(*[inputs[k] for k in spec.inputs])
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = session.run(list(spec.outputs), {k: inputs[k].numpy() for k in spec.inputs})
    for name, a, b in zip(spec.outputs, got, ref):
        b = b.numpy()
        assert a.shape == b.shape, (spec.name, name, a.shape, b.shape)
        assert np.isfinite(b).all()
        err = rel_error(a, b)
        assert err < 1e-4, (spec.name, name, err)


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
    for sizes in [None, *OTHER_SIZES] + ([LONG_PAST] if name == "llm_step" else []):
        compare(module, spec, session, G.example_inputs(name, tiny_model.config, sizes))


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


def test_released_token2wav_assets_are_skipped(tiny_checkpoint, exported, tmp_path):
    """A Step-Audio2 asset folder: no token2wav graph, a note, silence of 960 samples a code."""
    out, _ = exported
    ckpt = tmp_path / "released"
    shutil.copytree(tiny_checkpoint, ckpt, ignore=shutil.ignore_patterns("engines"))
    t2w = ckpt / "assets" / "token2wav"
    shutil.rmtree(t2w)
    t2w.mkdir()
    (t2w / "flow.yaml").write_text("released: true\n")
    engines = ckpt / "engines" / "onnxruntime"
    manifest = export_all(ckpt, engines, log=lambda *_: None)
    assert "token2wav" not in manifest.components and "token2wav" in manifest.notes
    assert not (engines / "token2wav.onnx").exists()
    compute = OrtCompute(ckpt)                    # default engine_dir
    assert (compute.samples_per_code, compute.token2wav_context) == (960, 0)
    wav = compute.token2wav([1, 2, 3])
    assert wav.shape == (3 * 960,) and float(wav.abs().max()) == 0.0


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
    torch_session = OmniDuplexSession(tiny_model, SessionOptions(**options))
    ort_session = OrtBackend(BackendSettings(model_path=str(tiny_checkpoint), engine_dir=str(out),
                                             session_options=options)).create_session()
    assert isinstance(ort_session.compute, OrtCompute)
    spoke = 0
    for i, unit in units(7):
        if i in (2, 3, 5):                  # drive speaking units whatever the random model decides
            torch_session._decision_override = ort_session._decision_override = True
        a, b = torch_session.run_unit(unit), ort_session.run_unit(unit)
        torch_session._decision_override = ort_session._decision_override = None
        assert (a.is_listen, a.text, a.end_of_turn) == (b.is_listen, b.text, b.end_of_turn), i
        assert a.speech.shape == b.speech.shape
        assert np.allclose(a.speech, b.speech, atol=1e-3), (i, np.abs(a.speech - b.speech).max())
        assert abs(a.speak_probability - b.speak_probability) < 1e-4
        spoke += not a.is_listen
        if not a.is_listen:
            assert a.speech.shape == (24000,) and float(np.abs(a.speech).max()) > 0.0
        assert torch_session.cache_length == ort_session.cache_length
        assert torch_session.position == ort_session.position
    assert spoke >= 3
    assert torch_session.context_units == ort_session.context_units == 3   # spans were dropped
