"""The torch backend's fast eager paths equal the explicit-KV graphs that get exported."""
import numpy as np
import pytest
import torch

from omni_ros.runtime import graphs as G
from omni_ros.runtime.kv import StackedKV
from omni_ros.runtime.torch_compute import TorchCompute
from omni_ros.session.audio_stream import embed_audio
from omni_ros.runtime.exported_compute import ExportedCompute

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def compute(tiny_model):
    return TorchCompute(tiny_model)


@pytest.fixture(scope="module")
def modules(tiny_model):
    return G.build_graphs(tiny_model)


def _close(a, b, tol=1e-5):
    scale = max(float(b.abs().max()), 1e-6)
    assert float((a.float() - b.float()).abs().max()) / scale < tol


@torch.inference_mode()
@pytest.mark.parametrize("name", ["llm_step", "tts_step"])
def test_cached_step_equals_explicit_kv_graph(compute, modules, tiny_model, name):
    cfg = tiny_model.config
    width = cfg.hidden_size if name == "llm_step" else cfg.tts_config.hidden_size
    shape = G.llm_kv_shape if name == "llm_step" else G.tts_kv_shape
    embeds = torch.randn(9, width, generator=torch.Generator().manual_seed(1))
    cache = compute.new_llm_cache() if name == "llm_step" else compute.new_tts_cache()
    keys, values = torch.zeros(shape(cfg, 0)), torch.zeros(shape(cfg, 0))
    position = 0
    for n in (5, 1, 3):                       # a prefill, one token, a few tokens
        x = embeds[position:position + n]
        out = modules[name](x[None], torch.arange(position, position + n)[None],
                            G.causal_bias(n, position)[None, None], keys, values)
        keys, values = out[-2], out[-1]
        if name == "llm_step":
            hidden, logits = compute.llm_step(x, position, cache)
            _close(hidden, out[0][0])
            _close(logits, modules["lm_head"](out[0][:, -1])[0])
        else:
            _close(compute.tts_step(x, position, cache), out[0][0])
        position += n
    assert keys.shape[3] == cache.get_seq_length() == position
    _close(cache.layers[-1].keys, keys[-1])
    _close(cache.layers[-1].values, values[-1])


@torch.inference_mode()
def test_drop_span_same_for_both_cache_kinds(compute, tiny_model):
    cfg = tiny_model.config
    cache = compute.new_llm_cache()
    compute.llm_step(torch.randn(12, cfg.hidden_size), 0, cache)
    stacked = StackedKV(torch.stack([layer.keys for layer in cache.layers]),
                        torch.stack([layer.values for layer in cache.layers]))
    compute.llm_drop_span(cache, 3, 7)
    cos, sin = G.rope_rotation(cfg.head_dim, float(cfg.rope_theta), -4)
    stacked.drop_span(3, 7, cos, sin)
    assert stacked.get_seq_length() == cache.get_seq_length() == 8
    _close(stacked.keys, torch.stack([layer.keys for layer in cache.layers]))
    _close(stacked.values, torch.stack([layer.values for layer in cache.layers]))


@torch.inference_mode()
def test_dropped_span_keys_equal_keys_computed_at_the_new_positions(compute, tiny_model):
    """Cutting positions 3..7 and re-rotating leaves the same cache as never having fed them."""
    cfg = tiny_model.config
    x = torch.randn(12, cfg.hidden_size, generator=torch.Generator().manual_seed(3))
    full = compute.new_llm_cache()
    compute.llm_step(x, 0, full)
    compute.llm_drop_span(full, 3, 7)
    # the keys of tokens 7.. depend on 3..6 only through the layers above the first; layer 0's
    # keys are a function of the token alone, so they must match a cache built without 3..6
    short = compute.new_llm_cache()
    compute.llm_step(torch.cat([x[:3], x[7:]]), 0, short)
    _close(full.layers[0].keys, short.layers[0].keys, tol=1e-4)


@torch.inference_mode()
def test_vision_and_audio_graphs_match_the_model_functions(compute, tiny_model):
    img = (np.random.default_rng(0).random((90, 130, 3)) * 255).astype(np.uint8)
    assert compute.vision(img).shape == (tiny_model.config.query_num, tiny_model.config.hidden_size)
    _close(compute.vision(img), tiny_model.embed_image(img))
    voice = np.random.default_rng(1).standard_normal(24000).astype(np.float32) * 0.1
    assert embed_audio(compute, torch.from_numpy(voice)[None])[0].shape == (15, tiny_model.config.hidden_size)


class ModuleGraphs(ExportedCompute):
    """ExportedCompute running the graph modules themselves: the host side of the explicit-KV
    backends (onnxruntime, TensorRT) checked without either runtime."""

    def __init__(self, checkpoint, model):
        super().__init__(checkpoint)
        self.modules = G.build_graphs(model)

    @torch.inference_mode()
    def run(self, name, inputs):
        out = self.modules[name](**inputs)
        return list(out) if isinstance(out, tuple) else [out]


def test_explicit_kv_session_equals_the_torch_session(tiny_checkpoint, tiny_model):
    from omni_ros.flow.types import UnitInput
    from omni_ros.session.options import SessionOptions
    from omni_ros.session.session import OmniSession

    rng = np.random.default_rng(5)
    units = [UnitInput(window_index=k, epoch=0, start_ns=0, end_ns=0,
                       image=(rng.random((48, 64, 3)) * 255).astype(np.uint8) if k % 2 else None,
                       image_stamp_ns=0, audio=(0.1 * rng.standard_normal(16000)).astype(np.float32))
             for k in range(6)]
    outputs = []
    for compute in (TorchCompute(tiny_model), ModuleGraphs(tiny_checkpoint, tiny_model)):
        s = OmniSession(compute, SessionOptions(force_listen_count=0, seed=3, max_context_units=3))
        run = []
        for k, unit in enumerate(units):
            s.decision_override = True if k in (2, 3) else None     # two speaking units
            run.append(s.run_unit(unit))
        outputs.append((run, s.cache_length, s.context.position))
    (a, len_a, pos_a), (b, len_b, pos_b) = outputs
    assert (len_a, pos_a) == (len_b, pos_b) and len_a == pos_a       # context policy ran on both
    assert [o.is_listen for o in a] == [o.is_listen for o in b]
    assert [o.text for o in a] == [o.text for o in b]
    assert any(not o.is_listen for o in a)
    for x, y in zip(a, b):
        if not x.is_listen:
            assert x.speech.shape == y.speech.shape == (24000,)
            assert np.abs(x.speech).max() > 0
            np.testing.assert_allclose(x.speech, y.speech, atol=1e-3)


# --- the waveform stage's host side over graphs ----------------------------------------------------
def test_graph_waveform_reads_the_checkpoint_dimensions(tiny_checkpoint, tiny_model):
    from omni_ros.model.loader import default_voice

    graphs = ModuleGraphs(tiny_checkpoint, tiny_model)
    t2w = tiny_model.token2wav
    assert graphs.waveform.flow_config == t2w.flow.config
    assert graphs.waveform.hift_config == t2w.hift.config
    assert graphs.waveform.t2w_lookahead == t2w.t2w_lookahead
    assert graphs.default_voice == default_voice(tiny_checkpoint) is not None
    for frames in (1, 12):
        mine = graphs.waveform.t2w_vocoder_random(frames, torch.Generator().manual_seed(9))
        want = t2w.t2w_vocoder_random(frames, torch.Generator().manual_seed(9))
        assert all(torch.equal(a, b) for a, b in zip(mine, want))
    empty, want = graphs.waveform.t2w_empty_flow_caches(4), t2w.t2w_empty_flow_caches(4)
    assert [v.shape for v in vars(empty).values()] == [v.shape for v in vars(want).values()]


@torch.inference_mode()
def test_graph_waveform_over_the_graph_modules_equals_the_torch_stage(tiny_checkpoint, tiny_model):
    """The host side of the explicit-graph backends (ExportedWaveform: which graph, which inputs,
    where the outputs go) with the graph modules standing in for ONNX/TensorRT."""
    from omni_ros.model.token2wav.model import synthetic_voice
    from omni_ros.session.waveform import WaveformStream
    from omni_ros.model.token2wav.voice import Voice

    voice = Voice.from_samples(synthetic_voice(1.5, seed=1), 16000)
    streams = [WaveformStream(tiny_model.token2wav, steps=3, seed=1),
               WaveformStream(ModuleGraphs(tiny_checkpoint, tiny_model).waveform, steps=3, seed=1)]
    for s in streams:
        s.set_voice(voice)
    rng = np.random.default_rng(2)
    for count, start, end in ((9, True, False), (25, False, False), (6, False, True)):
        codes = rng.integers(0, 6561, count).tolist()
        a, b = (s.push(codes, turn_start=start, end_of_turn=end) for s in streams)
        assert a.shape == b.shape and np.abs(a).max() > 0
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())
