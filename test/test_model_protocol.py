"""The released duplex and turn-based protocols, with scripted logits: a test double replaces only
the LLM output head (hidden state -> logits), everything else is the tiny model. Assertions are on
the exact sequence of token ids fed to the LLM (special tokens resolved by string)."""
import numpy as np
import pytest
import torch

from omni_ros.flow.types import UnitInput
from omni_ros.session.options import SessionOptions
from omni_ros.session.session import OmniSession
from omni_ros.runtime.torch_compute import TorchCompute

pytestmark = pytest.mark.unit


def _unit(i=0, image=False, level=0.0):
    rng = np.random.default_rng(i)
    img = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8) if image else None
    audio = (rng.standard_normal(16000) * level).astype(np.float32)
    return UnitInput(window_index=i, epoch=0, start_ns=0, end_ns=0, image=img, image_stamp_ns=None, audio=audio)


def ids(tok, *names):
    return [t if isinstance(t, int) else int(tok.convert_tokens_to_ids(t)) for t in names]


def words(tok, n):
    """n ordinary (non-special) token ids."""
    out = tok.encode(" the robot sees a blue cup near the open door", add_special_tokens=False)
    assert len(out) >= n
    return out[:n]


def audio_span():
    return ("embeds", 10)


def test_listen_unit(make, tiny_model):
    tok = tiny_model.tokenizer
    s = make(["<|listen|>"])
    out = s.run_unit(_unit())
    assert out.is_listen and out.speech.size == 0 and out.text == ""
    assert s.context.trace == [ids(tok, "<unit>")[0], audio_span()] + ids(tok, "<|listen|>", "</unit>")


def test_listen_unit_with_image(make, tiny_model):
    tok, q = tiny_model.tokenizer, tiny_model.config.query_num
    s = make(["<|listen|>"])
    s.run_unit(_unit(image=True))
    assert s.context.trace == ids(tok, "<unit>", "<image>") + [("embeds", q)] + ids(tok, "</image>") \
        + [audio_span()] + ids(tok, "<|listen|>", "</unit>")


def test_speak_unit_and_tts_condition(make, tiny_model, monkeypatch):
    tok = tiny_model.tokenizer
    a, b = words(tok, 2)
    seen = {}
    s = make(["<|speak|>", a, b, "<|chunk_eos|>"])
    real = s.compute.tts_condition

    def spy(text_ids, hidden, semantic_mask):
        seen["ids"] = text_ids.tolist()
        seen["mask"] = semantic_mask.tolist()
        seen["hidden"] = tuple(hidden.shape)
        return real(text_ids, hidden, semantic_mask)

    monkeypatch.setattr(s.compute, "tts_condition", spy)
    out = s.run_unit(_unit())
    assert s.context.trace == [ids(tok, "<unit>")[0], audio_span()] + ids(tok, "<|speak|>", a, b, "<|chunk_eos|>", "</unit>")
    assert not out.is_listen and not out.end_of_turn
    assert out.speech.shape == (24000,) and out.speech.dtype == np.float32
    assert out.text == tok.decode([a, b])
    # condition: every fed token after the first (the <|speak|>), with its hidden state
    # then audio BOS without the semantic term
    bos = tiny_model.config.tts_config.audio_bos_token_id
    assert seen["ids"] == [a, b, bos] and seen["mask"] == [1.0, 1.0, 0.0]
    assert seen["hidden"] == (3, tiny_model.config.hidden_size)


def test_turn_end_then_listen(make, tiny_model):
    tok = tiny_model.tokenizer
    (a,) = words(tok, 1)
    s = make(["<|speak|>", a, "<|turn_eos|>", "<|listen|>", "<|listen|>"])
    out = s.run_unit(_unit())
    assert s.context.trace == [ids(tok, "<unit>")[0], audio_span()] + ids(
        tok, "<|speak|>", a, "<|turn_eos|>", "<|listen|>", "</unit>")
    # a turn's end carries the waveform stage's final flush (up to 0.28 s) after the window
    assert out.end_of_turn and not out.is_listen and 24000 <= out.speech.shape[0] <= 24000 + 6720
    assert s.protocols["duplex"].turn_ended and s.speech.turn.position == 0          # TTS cache dropped at turn end
    s.context.trace.clear()
    out = s.run_unit(_unit(1))
    assert out.is_listen                                        # listening allowed again
    assert s.context.trace == [ids(tok, "<unit>")[0], audio_span()] + ids(tok, "<|listen|>", "</unit>")


def test_listen_mid_turn_becomes_tts_bos(make, tiny_model):
    tok = tiny_model.tokenizer
    a, b = words(tok, 2)
    s = make(["<|speak|>", a, "<|chunk_eos|>", "<|listen|>", b, "<|chunk_eos|>"])
    s.run_unit(_unit())
    pos_after_first = s.speech.turn.position
    assert pos_after_first > 0                                  # the turn's TTS cache is kept
    s.context.trace.clear()
    out = s.run_unit(_unit(1))
    assert s.context.trace == [ids(tok, "<unit>")[0], audio_span()] + ids(tok, "<|tts_bos|>", b, "<|chunk_eos|>", "</unit>")
    assert not out.is_listen and out.text == tok.decode([b]) and out.speech.shape == (24000,)
    assert s.speech.turn.position > pos_after_first


def test_chunk_eos_forced_at_last_step(make, tiny_model):
    tok = tiny_model.tokenizer
    a, b, c = words(tok, 3)
    s = make(["<|speak|>", a, b, c, "<|speak|>"], max_text_tokens_per_unit=5)
    s.run_unit(_unit())
    assert s.context.trace == [ids(tok, "<unit>")[0], audio_span()] + ids(tok, "<|speak|>", a, b, c, "<|chunk_eos|>", "</unit>")


def test_default_unit_holds_at_most_20_steps(make, tiny_model):
    tok = tiny_model.tokenizer
    (a,) = words(tok, 1)
    s = make(["<|speak|>"] + [a] * 40)
    s.run_unit(_unit())
    gen = s.context.trace[2:]
    assert gen[-2:] == ids(tok, "<|chunk_eos|>", "</unit>") and len(gen) == 19 + 2


def test_tts_pad_never_sampled(make, tiny_model):
    tok = tiny_model.tokenizer
    (a,) = words(tok, 1)
    s = make(["<|speak|>", "<|tts_pad|>", "<|chunk_eos|>"], runner_up={"<|tts_pad|>": a})
    s.run_unit(_unit())
    assert ids(tok, "<|tts_pad|>")[0] not in s.context.trace
    assert s.context.trace == [ids(tok, "<unit>")[0], audio_span()] + ids(tok, "<|speak|>", a, "<|chunk_eos|>", "</unit>")


def test_force_listen_count(make, tiny_model):
    tok = tiny_model.tokenizer
    s = make(["<|speak|>", "<|speak|>", "<|speak|>"], force_listen_count=2)
    assert s.run_unit(_unit()).is_listen and s.run_unit(_unit(1)).is_listen
    assert s.context.trace.count(ids(tok, "<|speak|>")[0]) == 0
    assert not s.run_unit(_unit(2)).is_listen


def test_character_limit_forces_chunk_eos(make, tiny_model):
    tok = tiny_model.tokenizer
    w = words(tok, 9)
    s = make(["<|speak|>"] + w + ["<|chunk_eos|>"], max_unit_chars=28)
    s.run_unit(_unit())
    fed = s.context.trace[3:-2]                                     # after <unit>, audio, <|speak|>
    assert len(tok.decode(fed)) < 28 and len(tok.decode(w[: len(fed) + 1])) >= 28
    assert s.context.trace[-2:] == ids(tok, "<|chunk_eos|>", "</unit>")


def test_listen_prob_scale_and_listen_top_k(make, tiny_model):
    s = make([])
    logits = torch.zeros(tiny_model.config.vocab_size)
    listen = s.special.listen
    logits[listen], logits[s.special.speak] = 5.0, 4.0
    s.options.decode_mode = "greedy"
    assert s.protocols["duplex"].decode(logits) == listen
    s.options.listen_prob_scale = 0.5            # multiplies the <|listen|> logit
    assert s.protocols["duplex"].decode(logits) == s.special.speak
    s.options.listen_top_k = 2                   # listen within the top 2 -> listen
    assert s.protocols["duplex"].decode(logits) == listen


# --- turn-based ------------------------------------------------------------------------------

def test_turn_based_switch_at_run_time(make, tiny_model):
    tok = tiny_model.tokenizer
    w = words(tok, 10)
    s = make(["<|listen|>"])
    s.run_unit(_unit(level=0.0))                         # a duplex listening unit
    s.options.mode = "turn_based"                        # switched by name, no restart
    s.context.head.script = []
    s.context.trace.clear()
    user = s.run_unit(_unit(1, level=0.2))               # user speaks
    assert user.is_listen
    head = tok.encode("<|im_start|>user\n", add_special_tokens=False)
    assert s.context.trace == head + ids(tok, "<|audio_start|>") + [audio_span()] + ids(tok, "<|audio_end|>")
    # a quiet unit ends the user turn; the answer prompt is fed
    s.context.head.script = list(w) + list(w[:3]) + ["<|tts_eos|>"]
    s.context.trace.clear()
    assert s.run_unit(_unit(2, level=0.0)).is_listen
    bos = tok.encode("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<|tts_bos|>", add_special_tokens=False)
    assert s.context.trace[-len(bos):] == bos
    # answer units: fixed 10 text tokens, one window of speech each
    s.context.trace.clear()
    a1 = s.run_unit(_unit(3, level=0.3))                 # user audio while answering is not fed
    assert not a1.is_listen and not a1.end_of_turn and a1.speech.shape == (24000,)
    assert s.context.trace == list(w)
    s.context.trace.clear()
    a2 = s.run_unit(_unit(4))
    assert a2.end_of_turn and a2.speech.shape == (24000 + 6720,) and s.context.trace == list(w[:3])
    # the next user message closes the answer first
    s.context.trace.clear()
    s.run_unit(_unit(5, level=0.2))
    nxt = tok.encode("<|tts_eos|><|im_end|>\n<|im_start|>user\n", add_special_tokens=False)
    assert s.context.trace[: len(nxt)] == nxt
    # and back to duplex: the open user message is closed, then a duplex unit follows
    s.options.mode = "duplex"
    s.context.head.script = ["<|listen|>"]
    s.context.trace.clear()
    assert s.run_unit(_unit(6)).is_listen
    close = ids(tok, "<|im_end|>") + tok.encode("\n", add_special_tokens=False)
    assert s.context.trace == close + [ids(tok, "<unit>")[0], audio_span()] + ids(tok, "<|listen|>", "</unit>")


def test_system_prefix_with_reference_voice_wav(tiny_model, tmp_path):
    import wave

    tok = tiny_model.tokenizer
    path = tmp_path / "voice.wav"
    t = np.arange(36000) / 24000.0                       # 1.5 s at 24 kHz, resampled to 16 kHz
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(pcm.tobytes())
    s = OmniSession(TorchCompute(tiny_model), SessionOptions(reference_voice=str(path),
                                                     system_prompt="Streaming Omni Conversation."))
    s.context.trace = []
    s._prefill()
    head = tok.encode("<|im_start|>system\nStreaming Omni Conversation.\n<|audio_start|>", add_special_tokens=False)
    assert s.context.trace == head + [("embeds", 15)] + tok.encode("<|audio_end|><|im_end|>", add_special_tokens=False)
    assert s.context.prefix_len == len(head) + 15 + 2


# --- barge-in -------------------------------------------------------------------------------

def test_interrupt_closes_the_duplex_turn(make, tiny_model):
    tok = tiny_model.tokenizer
    (a,) = words(tok, 1)
    s = make(["<|speak|>", a, "<|chunk_eos|>", "<|listen|>"])
    assert not s.run_unit(_unit()).is_listen
    assert not s.protocols["duplex"].turn_ended and s.speech.turn.position > 0
    assert s.interrupt() is True
    assert s.protocols["duplex"].turn_ended and s.speech.turn.position == 0 and s.waveform.pending_codes == 3
    s.context.trace.clear()
    # without the interrupt a mid-turn <|listen|> becomes <|tts_bos|>; now it is a listen unit
    out = s.run_unit(_unit(1, level=0.2))
    assert out.is_listen
    assert s.context.trace == [ids(tok, "<unit>")[0], audio_span()] + ids(tok, "<|listen|>", "</unit>")
    assert s.interrupt() is False                        # nothing open any more


def test_mid_turn_listen_without_interrupt_continues_the_turn(make, tiny_model):
    tok = tiny_model.tokenizer
    (a,) = words(tok, 1)
    s = make(["<|speak|>", a, "<|chunk_eos|>", "<|listen|>", "<|chunk_eos|>"])
    s.run_unit(_unit())
    s.context.trace.clear()
    s.run_unit(_unit(1))
    assert s.context.trace[2] == ids(tok, "<|tts_bos|>")[0]      # the contrast case of the test above


def test_interrupt_stops_a_turn_based_answer(make, tiny_model):
    tok = tiny_model.tokenizer
    w = words(tok, 10)
    s = make([], mode="turn_based")
    s.run_unit(_unit(1, level=0.2))                      # user speaks
    s.context.head.script = list(w) * 3
    s.run_unit(_unit(2, level=0.0))                      # silence: the answer starts
    assert not s.run_unit(_unit(3)).is_listen            # one answer unit
    assert s.interrupt() is True and s.protocols["turn_based"].phase == "idle"
    s.context.trace.clear()
    assert s.run_unit(_unit(4, level=0.2)).is_listen     # the person's words: a user message
    nxt = tok.encode("<|tts_eos|><|im_end|>\n<|im_start|>user\n", add_special_tokens=False)
    assert s.context.trace[: len(nxt)] == nxt
