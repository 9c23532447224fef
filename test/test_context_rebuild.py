"""A changed standing instruction (prompt, reference voice) takes effect at the next unit: the
context is rebuilt under the new system prefix and keeps the recent units, fed again from what
they fed (no sensor, no encoder)."""
import numpy as np
import pytest
import soundfile
import torch

from omni_ros.flow.types import UnitInput
from omni_ros.model.token2wav.model import synthetic_voice
from omni_ros.runtime.torch_compute import TorchCompute
from omni_ros.session.options import SessionOptions
from omni_ros.session.session import OmniSession

pytestmark = pytest.mark.unit

OPTIONS = dict(decode_mode="greedy", force_listen_count=0, seed=0, max_context_units=4)


def units(count, seed=3):
    rng = np.random.default_rng(seed)
    return [UnitInput(window_index=i, epoch=0, start_ns=i * 10**9, end_ns=(i + 1) * 10**9,
                      image=rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) if i % 2 == 0 else None,
                      image_stamp_ns=i * 10**9, audio=(0.1 * rng.standard_normal(16000)).astype(np.float32))
            for i in range(count)]


def session(model, **options):
    return OmniSession(TorchCompute(model), SessionOptions(**{**OPTIONS, **options}))


def run(s, inputs, speaking=(2, 3)):
    outputs = []
    for u in inputs:
        s.decision_override = True if u.window_index in speaking else None
        outputs.append(s.run_unit(u))
    s.decision_override = None
    return outputs


def probe_logits(s) -> torch.Tensor:
    """Logits after one more token on a copy-free probe: feed, read, and the test ends there."""
    with torch.inference_mode():
        _, logits = s.context.feed_ids([s.special.unit_start])
    return logits.float()


def reference(model, records, **options) -> OmniSession:
    """The same state reached the slow way: the new prefix, then every kept unit's feeds one by
    one, as the units fed them."""
    r = session(model, **options)
    with torch.inference_mode():
        r._prefill()
        for record in records:
            r.context.begin_unit()
            for part in record:
                if isinstance(part, list):
                    r.context.feed_ids(part, need_logits=False)
                else:
                    r.context.feed(part, need_logits=False)
            r.context.end_unit(100)
    return r


def test_a_new_instruction_is_under_the_kept_units(tiny_model):
    s = session(tiny_model, standing_instruction="Watch the door.")
    inputs = units(8)
    run(s, inputs[:6])
    assert s.context_units == 4
    kept = s.context.take_units()
    s.apply_options({"standing_instruction": "Now watch the loading bay."})
    assert s.prefix_changed == "standing_instruction"
    assert "Now watch the loading bay." in s.system_text()
    with torch.inference_mode():
        rebuilt = s.rebuild_context("standing_instruction")
    assert (rebuilt.units, rebuilt.reason) == (4, "standing_instruction") and s.prefix_changed is None
    assert rebuilt.tokens == s.cache_length == s.context.position
    new = reference(tiny_model, kept, standing_instruction="Now watch the loading bay.")
    old = reference(tiny_model, kept, standing_instruction="Watch the door.")
    assert new.cache_length == s.cache_length and new.context_units == 4
    got, want, stale = probe_logits(s), probe_logits(new), probe_logits(old)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert not torch.allclose(got, stale, atol=1e-3)          # the old instruction is gone


def test_the_next_unit_rebuilds_and_the_conversation_goes_on(tiny_model):
    s = session(tiny_model, standing_instruction="Watch the door.")
    inputs = units(9)
    run(s, inputs[:6], speaking=(3, 4, 5))
    turn_open, done = s.speech.in_turn, s.units_done
    assert turn_open                      # mid-turn: the robot is speaking when the change comes
    s.apply_options({"standing_instruction": "Now watch the loading bay."})
    assert s.units_done == done and s.speech.in_turn            # nothing forgotten yet
    s.decision_override = True
    out = s.run_unit(inputs[6])
    s.decision_override = None
    assert out.context_rebuild is not None and out.context_rebuild.units == 4
    assert out.context_rebuild.ms > 0
    assert not out.is_listen and out.speech.shape == (24000,)   # the turn went on
    assert s.context_units == 4 and s.units_done == done + 1
    later = s.run_unit(inputs[7])
    assert later.context_rebuild is None                        # once, not every unit


def test_an_unchanged_instruction_or_a_fresh_session_rebuilds_nothing(tiny_model):
    s = session(tiny_model, standing_instruction="Watch the door.")
    s.apply_options({"standing_instruction": "Watch the stairs."})   # before the first unit
    assert s.prefix_changed is None
    out = s.run_unit(units(1)[0])
    assert out.context_rebuild is None and "Watch the stairs." in s.system_text()
    s.apply_options({"standing_instruction": "Watch the stairs."})   # the same text
    s.apply_options({"temperature": 0.5})                            # not part of the prefix
    assert s.prefix_changed is None
    s.reset()
    assert s.prefix_changed is None


def test_a_new_reference_voice_rebuilds_too(tiny_model, tmp_path):
    voice = tmp_path / "voice.wav"
    soundfile.write(str(voice), synthetic_voice(2.0, seed=4), 16000)
    s = session(tiny_model)
    run(s, units(5))
    s.apply_options({"reference_voice": str(voice)})
    assert s.prefix_changed == "reference_voice"
    out = s.run_unit(units(6)[5])
    assert out.context_rebuild is not None and out.context_rebuild.reason == "reference_voice"


def test_records_stay_bounded_by_the_kept_units(tiny_model):
    s = session(tiny_model, max_context_units=3)
    run(s, units(9), speaking=(2, 3, 6))
    assert len(s.context.unit_records) == len(s.context.unit_spans) == 3
    for record, (start, end) in zip(s.context.unit_records, s.context.unit_spans):
        fed = sum(len(p) if isinstance(p, list) else int(p.shape[0]) for p in record)
        assert fed == end - start
