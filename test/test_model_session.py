"""OmniSession on the tiny checkpoint: unit protocol, speech lengths, reset, bounded cache."""
import numpy as np
import pytest
import torch

from omni_ros.flow.types import UnitInput, UnitOutput
from omni_ros.session.options import SessionOptions
from omni_ros.session.session import OmniSession
from omni_ros.runtime.torch_compute import TorchCompute
from omni_ros.session.audio_stream import embed_audio

pytestmark = pytest.mark.unit


def _unit(i, image=True, level=0.05, rng=None):
    rng = rng or np.random.default_rng(i)
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) if image else None
    audio = (rng.standard_normal(16000) * level * (i % 5)).astype(np.float32)
    return UnitInput(window_index=i, epoch=0, start_ns=i * 10**9, end_ns=(i + 1) * 10**9,
                     image=img, image_stamp_ns=None, audio=audio)


def test_embedding_shapes(tiny_model):
    cfg = tiny_model.config
    compute = TorchCompute(tiny_model)
    with torch.inference_mode():
        a = embed_audio(compute, torch.zeros(1, 16000))[0]
        a2 = embed_audio(compute, torch.from_numpy(np.random.default_rng(0).standard_normal((1, 32000)).astype(np.float32)))[0]
        v = tiny_model.embed_image(np.zeros((480, 640, 3), dtype=np.uint8))
    assert a.shape == (10, cfg.hidden_size) and a2.shape == (20, cfg.hidden_size)
    assert v.shape == (cfg.query_num, cfg.hidden_size)
    assert torch.isfinite(a).all() and torch.isfinite(v).all()


def test_one_unit_with_and_without_image(tiny_model):
    s = OmniSession(TorchCompute(tiny_model), SessionOptions(force_listen_count=0))
    assert callable(getattr(s, "run_unit", None)) and callable(getattr(s, "reset", None))
    out = s.run_unit(_unit(1, image=True))
    assert isinstance(out, UnitOutput) and 0.0 <= out.speak_probability <= 1.0
    after_image = s.cache_length
    out = s.run_unit(_unit(2, image=False))
    assert isinstance(out, UnitOutput)
    q = tiny_model.config.query_num
    # the image unit holds <image> + query_num + </image> more positions (listen: +2 tail tokens)
    assert after_image - s.context.prefix_len >= 1 + q + 2 + 10 + 2
    assert s.units_done == 2


def test_listen_and_speak_over_units(tiny_model):
    opts = SessionOptions(seed=0, force_listen_count=3)
    s = OmniSession(TorchCompute(tiny_model), opts)
    outs = [s.run_unit(_unit(i, image=(i % 2 == 0))) for i in range(10)]
    assert all(o.is_listen for o in outs[:3])            # force_listen_count
    assert any(not o.is_listen for o in outs)
    # (with random weights a speaking turn rarely ends: mid-turn <|listen|> becomes <|tts_bos|>)
    for o in outs:
        if o.is_listen:
            assert o.speech.size == 0 and o.text == "" and not o.end_of_turn
        else:
            assert o.speech.dtype == np.float32 and o.speech.shape == (24000,)
            assert np.isfinite(o.speech).all() and np.abs(o.speech).max() <= 1.0
            assert np.abs(o.speech).max() > 0.01
    # reproducible for a seed
    s2 = OmniSession(TorchCompute(tiny_model), opts)
    outs2 = [s2.run_unit(_unit(i, image=(i % 2 == 0))) for i in range(6)]
    assert [(o.is_listen, o.text) for o in outs2] == [(o.is_listen, o.text) for o in outs[:6]]
    for a, b in zip(outs2, outs[:6]):
        np.testing.assert_array_equal(a.speech, b.speech)


def test_reset_clears_state(tiny_model):
    s = OmniSession(TorchCompute(tiny_model), SessionOptions(force_listen_count=0))
    first = [s.run_unit(_unit(i)) for i in range(3)]
    assert s.units_done == 3 and s.cache_length > 0
    s.reset()
    assert s.units_done == 0 and s.cache_length == 0 and s.context_units == 0 and not s.speech.in_turn
    again = [s.run_unit(_unit(i)) for i in range(3)]
    assert [(o.is_listen, o.text) for o in again] == [(o.is_listen, o.text) for o in first]


def test_cache_bounded(tiny_model):
    s = OmniSession(TorchCompute(tiny_model), SessionOptions(max_context_units=3, force_listen_count=0,
                                                     max_text_tokens_per_unit=6))
    lengths = []
    for i in range(7):
        s.run_unit(_unit(i, image=(i % 3 == 0)))
        lengths.append(s.cache_length)
        assert s.context_units <= 3
        assert s.cache_length == s.context.position
    per_unit_max = 1 + (2 + tiny_model.config.query_num) + 10 + 1 + 6 + 3
    assert max(lengths) <= s.context.prefix_len + 3 * per_unit_max
    assert s.context.unit_spans[0][0] == s.context.prefix_len


def test_dropped_span_rerotates_keys(tiny_model):
    """Dropping a unit moves later keys back by its length: layer-0 keys equal a fresh cache's."""
    g = torch.Generator().manual_seed(1)
    d = tiny_model.config.hidden_size
    a, b = (torch.randn(n, d, generator=g) for n in (7, 5))
    with torch.inference_mode():
        s = OmniSession(TorchCompute(tiny_model), SessionOptions())
        s._prefill()
        for span in (a, b):
            s.context.begin_unit()
            s.context.feed(span, need_logits=False)
            s.context.end_unit(max_units=2)
        s.context.drop_oldest_unit()
        assert len(s.context.unit_records) == 1 and s.context.unit_records[0][0] is b
        ref = OmniSession(TorchCompute(tiny_model), SessionOptions())
        ref._prefill()
        ref.context.feed(b, need_logits=False)
    assert s.context.position == ref.context.position == s.cache_length
    assert s.context.unit_spans[0] == (ref.context.prefix_len, ref.context.position)
    # layer 0 sees only the embeddings, so its keys/values must match exactly up to rounding
    torch.testing.assert_close(s.context.cache.layers[0].keys, ref.context.cache.layers[0].keys, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s.context.cache.layers[0].values, ref.context.cache.layers[0].values)


def test_warmup_runs_both_paths_then_leaves_a_fresh_session(tiny_model):
    from omni_ros.session.options import SessionOptions
    from omni_ros.session.session import OmniSession
    from omni_ros.runtime.torch_compute import TorchCompute

    session = OmniSession(TorchCompute(tiny_model), SessionOptions(force_listen_count=0))
    session.warmup()
    assert session.units_done == 0 and session.cache_length == 0


def test_standing_instruction_is_part_of_the_prefilled_system_prompt(tiny_model):
    import numpy as np

    from omni_ros.flow.types import UnitInput
    from omni_ros.session.options import SessionOptions
    from omni_ros.session.session import OmniSession
    from omni_ros.runtime.torch_compute import TorchCompute

    plain = OmniSession(TorchCompute(tiny_model), SessionOptions())
    instructed = OmniSession(TorchCompute(tiny_model), SessionOptions(
        standing_instruction="Warn people about the wet floor."))
    assert instructed.system_text().endswith("Warn people about the wet floor.")
    unit = UnitInput(window_index=0, epoch=0, start_ns=0, end_ns=0, image=None,
                     image_stamp_ns=None, audio=np.zeros(16000, np.float32))
    plain.run_unit(unit)
    instructed.run_unit(unit)
    assert instructed.context.prefix_len > plain.context.prefix_len
