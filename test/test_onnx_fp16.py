"""The streamed ONNX export (weights written one tensor at a time, the path a released-size LLM
takes) against torch, float16 export folders, and the onnxruntime backend over float16 graphs."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from omni_ros.flow.types import UnitInput
from omni_ros.model.loader import load_model
from omni_ros.runtime import graphs as G
from omni_ros.runtime.engine_files import read_manifest
from omni_ros.runtime.onnx_export import (FLOAT32_ONLY, _weight_shell, export_all,
                                          export_graph_streamed, weight_stand_ins)
from omni_ros.runtime.onnxruntime_backend import OrtBackend
from omni_ros.runtime.registry import BackendSettings
from omni_ros.runtime.torch_compute import TorchCompute
from omni_ros.session.options import SessionOptions
from omni_ros.session.session import OmniSession

pytestmark = pytest.mark.slow


def run_both(model, name: str, path, dtype=torch.float32, sizes=None):
    spec = G.GRAPHS[name]
    inputs = G.example_inputs(name, model.config, sizes, t2w=model.token2wav)
    with torch.no_grad():
        ref = spec.build(model).eval()(*[inputs[k] for k in spec.inputs])
    ref = ref if isinstance(ref, tuple) else (ref,)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in session.get_inputs()}
    feed = {k: (v.to(torch.float16) if types[k] == "tensor(float16)" else v).numpy()
            for k, v in inputs.items() if k in types}
    got = session.run(list(spec.outputs), feed)
    errors = []
    for a, b in zip(got, ref):
        b = b.float().numpy()
        assert a.shape == b.shape, (name, a.shape, b.shape)
        errors.append(float(np.abs(a.astype(np.float32) - b).max() / max(float(np.abs(b).max()), 1e-6)))
    return max(errors)


@pytest.mark.parametrize("name", list(G.GRAPHS))
def test_streamed_float32_export_matches_torch(name, tiny_model, tmp_path):
    data = export_graph_streamed(tiny_model, name, tmp_path / f"{name}.onnx", torch.float32)
    assert data == tmp_path / f"{name}.onnx.data" and data.stat().st_size > 0
    onnx.checker.check_model(str(tmp_path / f"{name}.onnx"))
    proto = onnx.load(str(tmp_path / f"{name}.onnx"), load_external_data=False)
    assert [i.name for i in proto.graph.input] == list(G.GRAPHS[name].inputs)   # weights are initializers
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert run_both(tiny_model, name, tmp_path / f"{name}.onnx") < 1e-4
    if name == "llm_step":                      # an empty past and a long one, through the same file
        for sizes in ({"tokens": 1, "past": 0}, {"tokens": 2, "past": 700}):
            assert run_both(tiny_model, name, tmp_path / f"{name}.onnx", sizes=sizes) < 1e-4


def test_the_shell_and_stand_ins_hold_no_weights(tiny_model):
    module = G.GRAPHS["llm_step"].build(tiny_model)
    before = {n: p.data_ptr() for n, p in module.named_parameters()}
    shell = _weight_shell(module)
    assert {n for n, _ in shell.named_parameters()} == before.keys()
    assert all(p.numel() == 1 for p in shell.parameters())          # stand_ins, no weights
    stand_ins = weight_stand_ins(module, torch.float16)
    assert stand_ins.keys() == before.keys()
    for name, p in module.named_parameters():
        assert stand_ins[name].shape == p.shape and stand_ins[name].dtype == torch.float16
        assert stand_ins[name].untyped_storage().nbytes() == 2   # one element, whatever the shape
        assert p.data_ptr() == before[name] and p.dtype == torch.float32   # the model untouched
    assert {n: b.data_ptr() for n, b in shell.named_buffers()} == \
        {n: b.data_ptr() for n, b in module.named_buffers()}        # buffers shared, not copied


def test_auto_dtype_keeps_the_stored_one(tiny_checkpoint):
    model = load_model(tiny_checkpoint, dtype="auto")
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}   # the writer stores bf16
    with pytest.raises(ValueError, match="'auto'"):
        load_model(tiny_checkpoint, dtype="float8")


@pytest.fixture(scope="module")
def half_folder(tiny_checkpoint, tmp_path_factory):
    """What `omni_ros_build_engines CHECKPOINT --onnx-precision fp16` writes."""
    out = tmp_path_factory.mktemp("onnx16") / "engines"
    done = subprocess.run([sys.executable, "-m", "omni_ros.tools.build_engines", str(tiny_checkpoint),
                           "--backend", "onnxruntime", "--onnx-precision", "fp16", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"-p engine_dir:={out}" in done.stdout
    return out


def test_an_unknown_precision_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="one of fp32, fp16"):
        export_all(tiny_checkpoint, tmp_path, precision="int8")


def test_float16_folder_records_its_precisions(half_folder, tiny_model):
    manifest = read_manifest(half_folder)
    assert set(manifest.components) == set(G.GRAPHS)
    for name, entry in manifest.components.items():
        assert entry.precision == ("fp32" if name in FLOAT32_ONLY else "fp16"), name
    proto = onnx.load(str(half_folder / "llm_step.onnx"), load_external_data=False)
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.FLOAT16}
    params = dict(G.GRAPHS["llm_step"].build(tiny_model).named_parameters())
    assert {t.name for t in proto.graph.initializer} <= params.keys()
    weights = sum(params[t.name].numel() for t in proto.graph.initializer)
    size = (half_folder / "llm_step.onnx.data").stat().st_size
    assert 2 * weights <= size < 2 * weights + 4096 * (len(proto.graph.initializer) + 1)
    for name in ("llm_step", "vision", "t2w_estimator_step"):
        assert run_both(tiny_model, name, half_folder / f"{name}.onnx") < 2e-2, name


def test_session_over_float16_onnxruntime_follows_torch(half_folder, tiny_checkpoint, tiny_model):
    options = dict(decode_mode="greedy", force_listen_count=0, seed=0, max_context_units=3)
    reference = OmniSession(TorchCompute(tiny_model), SessionOptions(**options))
    half = OrtBackend(BackendSettings(model_path=str(tiny_checkpoint), engine_dir=str(half_folder),
                                      session_options=options)).create_session()
    rng = np.random.default_rng(3)
    spoke = 0
    for i in range(5):
        image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) if i % 2 == 0 else None
        unit = UnitInput(window_index=i, epoch=0, start_ns=i * 10**9, end_ns=(i + 1) * 10**9,
                         image=image, image_stamp_ns=i * 10**9,
                         audio=(0.1 * rng.standard_normal(16000)).astype(np.float32))
        if i in (1, 2):
            reference.decision_override = half.decision_override = True
        a, b = reference.run_unit(unit), half.run_unit(unit)
        reference.decision_override = half.decision_override = None
        assert a.is_listen == b.is_listen, i
        assert abs(a.speak_probability - b.speak_probability) < 2e-2, i
        assert b.speech.dtype == np.float32 and np.isfinite(b.speech).all()
        assert a.speech.shape == b.speech.shape, i
        spoke += not b.is_listen
        assert reference.cache_length == half.cache_length
    assert spoke >= 2
