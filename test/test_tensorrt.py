"""TensorRT backend: shape profiles, manifests and (where TensorRT and a GPU exist) engines
built from the tiny checkpoint compared with torch."""
import importlib.util

import numpy as np
import pytest
import torch

from omni_ros.flow.types import UnitInput
from omni_ros.session.options import SessionOptions
from omni_ros.session.session import OmniSession
from omni_ros.runtime import graphs as G
from omni_ros.runtime.engine_files import (EngineMismatch, Manifest, check_manifest,
                                           checkpoint_fingerprint, entry_for_file, write_manifest)
from omni_ros.runtime.registry import BackendError, BackendSettings
from omni_ros.runtime.tensorrt_build import ShapeLimits, shape_profiles
from test_compute_graphs import ModuleGraphs

pytestmark = pytest.mark.unit

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_GPU = torch.cuda.is_available()
needs_trt = pytest.mark.skipif(not (HAVE_TRT and HAVE_GPU),
                               reason="TensorRT and a CUDA GPU are needed to build and run engines "
                                      f"(tensorrt installed: {HAVE_TRT}, CUDA GPU: {HAVE_GPU})")


def _units(n, seed=0):
    rng = np.random.default_rng(seed)
    return [UnitInput(window_index=k, epoch=0, start_ns=0, end_ns=0,
                      image=(rng.random((72, 128, 3)) * 255).astype(np.uint8) if k % 2 == 0 else None,
                      image_stamp_ns=0, audio=(0.1 * rng.standard_normal(16000)).astype(np.float32))
            for k in range(n)]


class ShapeRecorder(ModuleGraphs):
    def __init__(self, *args):
        super().__init__(*args)
        self.seen = {}

    def run(self, name, inputs):
        for key, value in inputs.items():
            self.seen.setdefault(name, {}).setdefault(key, set()).add(tuple(value.shape))
        return super().run(name, inputs)


def test_profiles_cover_every_shape_a_session_produces(tiny_checkpoint, tiny_model):
    """A session with a reference voice, speaking and listening units and the context policy
    at work: every input shape of every graph call lies inside its profile."""
    recorder = ShapeRecorder(tiny_checkpoint, tiny_model)
    voice = (0.1 * np.random.default_rng(1).standard_normal(16000 * 3)).astype(np.float32)
    s = OmniSession(recorder, SessionOptions(force_listen_count=0, max_context_units=4,
                                                   reference_voice_samples=voice))
    for k, unit in enumerate(_units(8)):
        s.decision_override = True if k in (3, 4, 5) else None
        s.run_unit(unit)
    # the random model need not end a turn: end one as the session does (the last chunk's graph)
    s.waveform.push([1, 2, 3, 4, 5], turn_start=False, end_of_turn=True)
    t2w = tiny_model.token2wav
    profiles = shape_profiles(tiny_model.config, flow=t2w.flow.config, hift=t2w.hift.config)
    assert set(profiles) == set(G.GRAPHS)
    assert set(recorder.seen) == set(G.GRAPHS)
    for name, inputs in recorder.seen.items():
        assert set(profiles[name]) == set(G.GRAPHS[name].inputs), name
        for key, shapes in inputs.items():
            lo, opt, hi = profiles[name][key]
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), (name, key)
            for shape in shapes:
                assert len(shape) == len(lo) and all(a <= x <= c for a, x, c in zip(lo, shape, hi)), \
                    f"{name}.{key}: {shape} outside {lo}..{hi}"


def test_limits_change_the_profile(tiny_model):
    small = shape_profiles(tiny_model.config, ShapeLimits(max_past=2048))
    assert small["llm_step"]["past_keys"][2][3] == 2048
    assert small["llm_step"]["attention_bias"][2][3] == 2048 + ShapeLimits().max_tokens


def test_waveform_profiles_cover_a_30_s_voice_and_released_chunks():
    """Released dimensions: the prompt setup (750 codes + 3 silence codes, empty caches), 28-code
    chunks over caches of the prompt + 100 frames (+ a chunk), vocoder calls of 8 + 56 frames."""
    from omni_ros.model.config import OmniConfig
    from omni_ros.model.token2wav.assets import FlowConfig

    p = shape_profiles(OmniConfig.tiny(), flow=FlowConfig())
    enc, est, voc = p["t2w_encoder"], p["t2w_estimator_step"], p["t2w_vocoder"]
    assert enc["codes"] == ((1, 4), (1, 28), (1, 753))
    assert enc["att_cache"][0] == (10, 1, 8, 0, 128) and enc["att_cache"][2][3] >= 1500 + 100
    assert enc["cnn_cache"][0][2] == 0 and enc["cnn_cache"][2] == (1, 512, 6)
    assert p["t2w_encoder_last"]["codes"][2] == (1, 28)
    assert est["x"][2] == (1, 80, 1506) and est["mu_in"][1] == (2, 80, 50)
    assert est["att_keys"][0] == (16, 2, 8, 0, 64) and est["att_keys"][2][3] >= 1500 + 100 + 50
    assert est["att_values"] == est["att_keys"]
    assert est["cnn_cache"][0] == (16, 2, 1024, 0) and est["cnn_cache"][2] == (16, 2, 1024, 2)
    assert voc["mel"][2] == (1, 80, 64) and voc["sine_noise"][2] == (1, 64 * 480, 9)
    assert voc["cache_source"] == ((1, 1, 0), (1, 1, 3840), (1, 1, 3840))
    assert p["t2w_speaker"]["embedding"] == ((1, 192),) * 3


def _fake_engine_folder(folder, checkpoint, trt_version="10.9.0", gpu=None):
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(format="tensorrt", checkpoint=str(checkpoint),
                        checkpoint_hash=checkpoint_fingerprint(checkpoint), created="2026-11-25T00:00:00+00:00",
                        versions={"tensorrt": trt_version},
                        gpu=gpu or {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    for name in G.GRAPHS:
        (folder / f"{name}.engine").write_bytes(name.encode() * 10)
        manifest.components[name] = entry_for_file(folder, name, f"{name}.engine", "fp16")
    write_manifest(folder, manifest)
    return manifest


def test_manifest_from_another_tensorrt_version_or_gpu_is_refused(tmp_path, tiny_checkpoint):
    folder = tmp_path / "engines"
    _fake_engine_folder(folder, tiny_checkpoint)
    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    check_manifest(folder, tiny_checkpoint, "tensorrt", G.GRAPHS, {"tensorrt": "10.9.0"}, h100)
    with pytest.raises(EngineMismatch, match=r"built with tensorrt 10\.9\.0, this machine has "
                                             r"tensorrt 10\.13.*omni_ros_build_engines"):
        check_manifest(folder, tiny_checkpoint, "tensorrt", G.GRAPHS, {"tensorrt": "10.13.0"}, h100)
    with pytest.raises(EngineMismatch, match=r"built for GPU NVIDIA H100.*this GPU is NVIDIA L4 .*"
                                             r"--backend tensorrt"):
        check_manifest(folder, tiny_checkpoint, "tensorrt", G.GRAPHS, {"tensorrt": "10.9.0"},
                       {"name": "NVIDIA L4", "compute_capability": "8.9"})
    (folder / "llm_step.engine").write_bytes(b"truncated")
    with pytest.raises(EngineMismatch, match="llm_step"):
        check_manifest(folder, tiny_checkpoint, "tensorrt", G.GRAPHS, {"tensorrt": "10.9.0"}, h100)


@pytest.mark.skipif(HAVE_TRT and HAVE_GPU, reason="TensorRT and a GPU are present")
def test_backend_without_tensorrt_or_gpu_is_a_clear_error(tiny_checkpoint, tmp_path):
    from omni_ros.runtime.tensorrt_backend import TrtBackend

    _fake_engine_folder(tmp_path / "e", tiny_checkpoint)
    backend = TrtBackend(BackendSettings(model_path=str(tiny_checkpoint), engine_dir=str(tmp_path / "e")))
    with pytest.raises(BackendError, match="backend tensorrt: (TensorRT is not installed|no CUDA GPU)"):
        backend.create_session()


# --- with TensorRT and a GPU -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines(tiny_checkpoint, tmp_path_factory):
    from omni_ros.runtime.onnx_export import export_all
    from omni_ros.runtime.tensorrt_build import build_engines

    root = tmp_path_factory.mktemp("trt")
    export_all(tiny_checkpoint, root / "onnx")
    build_engines(tiny_checkpoint, root / "onnx", root / "fp32", precision="fp32")
    return root / "fp32"


@needs_trt
def test_every_engine_matches_torch(engines, tiny_checkpoint, tiny_model):
    from omni_ros.runtime.tensorrt_backend import TrtCompute

    compute = TrtCompute(tiny_checkpoint, engines, device="cuda")
    modules = G.build_graphs(tiny_model)
    for name in G.GRAPHS:
        for sizes in ({}, {"tokens": 1, "past": 0, "mel_frames": 106, "codes": 28, "t2w_codes": 28,
                           "t2w_enc_past": 0, "t2w_frames": 50, "t2w_est_past": 0, "t2w_mel": 58,
                           "t2w_source": 0}):
            inputs = G.example_inputs(name, tiny_model.config, sizes, t2w=tiny_model.token2wav)
            with torch.inference_mode():
                want = modules[name](**inputs)
            want = list(want) if isinstance(want, tuple) else [want]
            got = compute.run(name, {k: v.cuda() for k, v in inputs.items()})
            for w, g in zip(want, got):
                scale = max(float(w.abs().max()), 1e-6)
                assert float((g.float().cpu() - w.float()).abs().max()) / scale < 1e-3, (name, sizes)


@needs_trt
def test_tensorrt_session_runs_units(engines, tiny_checkpoint):
    from omni_ros.runtime.tensorrt_backend import TrtBackend

    backend = TrtBackend(BackendSettings(model_path=str(tiny_checkpoint), device="cuda",
                                         engine_dir=str(engines),
                                         session_options={"force_listen_count": 0}))
    s = backend.create_session()
    outs = []
    for k, unit in enumerate(_units(4)):
        s.decision_override = True if k == 2 else None
        outs.append(s.run_unit(unit))
    assert not outs[2].is_listen and outs[2].speech.shape == (24000,)

