"""Places where omni_ros follows the released MiniCPM-o 4.5 code exactly: the banned tokens of
tokenizer_config.json (`bad_token_ids`) in duplex and turn-based decoding, the image resize of the
released processor (Pillow bicubic on uint8), the system prefix without a reference voice, and a
tiny checkpoint that carries the released `auto_map` entries and readable file modes."""
import json
import stat

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from omni_ros.flow.types import UnitInput
from omni_ros.session.options import SessionOptions
from omni_ros.session.session import OmniSession
from omni_ros.runtime.torch_compute import TorchCompute
from omni_ros.model.tokenizer import (NUM_REGULAR_IDS, _bytes_of_symbol, banned_token_ids,
                                      decoding_masks, load_tokenizer)
from omni_ros.model.vision import best_resize, preprocess_image

pytestmark = pytest.mark.unit


def _unit(i=0, level=0.0):
    audio = (np.random.default_rng(i).standard_normal(16000) * level).astype(np.float32)
    return UnitInput(window_index=i, epoch=0, start_ns=0, end_ns=0, image=None, image_stamp_ns=None,
                     audio=audio)


def _id(tok, t):
    return int(tok.convert_tokens_to_ids(t))


def _word(tok):
    return tok.encode(" robot", add_special_tokens=False)[0]


def _byte_level(raw: bytes) -> str:
    symbol = {b: c for c, b in _bytes_of_symbol().items()}
    return "".join(symbol[b] for b in raw)


# --- 1. banned tokens -----------------------------------------------------------------------

def test_released_ban_rule():
    """The rule that reproduces the released list (6,965 ids) exactly on the released vocab.json:
    invalid UTF-8, or one of ( ) （ ） newline, carriage return, U+FFFD, plus five full-width-comma
    tokens."""
    banned = ["(", "(j", " >\n", "\r\n", "）。", " �", "，请", "，默认", "，并", "，则", "，在"]
    kept = ["hello", " robot", "，", "。", "?", "请", ">", "[", ":"]
    vocab = {_byte_level(t.encode("utf-8")): i for i, t in enumerate(banned + kept)}
    vocab[_byte_level(b"\xe5\xad")] = len(vocab)          # a partial UTF-8 sequence
    vocab[_byte_level(b"\xa1")] = len(vocab)              # a lone continuation byte
    assert banned_token_ids(vocab) == list(range(len(banned))) + [len(vocab) - 2, len(vocab) - 1]


def test_tiny_checkpoint_writes_bad_token_ids(tiny_checkpoint, tiny_model):
    cfg = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
    vocab = json.loads((tiny_checkpoint / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    bad = cfg["bad_token_ids"]
    assert bad == banned_token_ids(vocab) and bad == sorted(set(bad))
    tok = tiny_model.tokenizer
    for t in ("(", ")", "\n", "\r"):
        assert tok.encode(t, add_special_tokens=False)[0] in bad, t
    assert _word(tok) not in bad and 0 < len(bad) and max(bad) < NUM_REGULAR_IDS
    # the loader attaches the checkpoint's list, as the released tokenizer class does
    assert tok.bad_token_ids == bad
    assert load_tokenizer(tiny_checkpoint).bad_token_ids == bad


def test_every_backend_gets_bad_token_ids(tiny_checkpoint, tiny_model):
    from omni_ros.runtime.exported_compute import ExportedCompute

    class NoGraphs(ExportedCompute):
        def run(self, name, inputs):
            raise NotImplementedError(name)

    compute = NoGraphs(tiny_checkpoint)
    assert compute.tokenizer.bad_token_ids == tiny_model.tokenizer.bad_token_ids
    assert decoding_masks(compute.tokenizer, compute.special) == \
        decoding_masks(tiny_model.tokenizer, tiny_model.special)


def test_bad_token_ids_checked_at_load(tiny_checkpoint, tmp_path):
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoint / name, tmp_path / name)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["bad_token_ids"] = [5, 151748]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        load_tokenizer(tmp_path)
    del cfg["bad_token_ids"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert load_tokenizer(tmp_path).bad_token_ids == []


def test_duplex_masks(tiny_model):
    tok, sp = tiny_model.tokenizer, tiny_model.special
    masks = decoding_masks(tok, sp)
    assert masks["duplex"] == sorted({sp.tts_pad, sp.chunk_eos, *tok.bad_token_ids})
    # the released turn-based generator also forbids some punctuation, not <|chunk_eos|>
    colon = _id(tok, ":")
    assert colon in masks["turn_based"] and colon not in masks["duplex"]
    assert sp.chunk_eos not in masks["turn_based"] and set(tok.bad_token_ids) <= set(masks["turn_based"])


@pytest.mark.parametrize("which", ["(", "\n", "first", "last"])
def test_duplex_never_draws_a_banned_id(make, tiny_model, which):
    tok = tiny_model.tokenizer
    bad = tok.bad_token_ids
    banned = {"first": bad[0], "last": bad[-1]}.get(which)
    if banned is None:
        banned = tok.encode(which, add_special_tokens=False)[0]
    a = _word(tok)
    s = make(["<|speak|>", banned, "<|chunk_eos|>"], runner_up={banned: a})
    s.run_unit(_unit())
    assert banned not in s.context.trace
    assert s.context.trace == [_id(tok, "<unit>"), ("embeds", 10)] + [
        _id(tok, "<|speak|>"), a, _id(tok, "<|chunk_eos|>"), _id(tok, "</unit>")]


def test_duplex_all_mass_on_banned_ids(make, tiny_model):
    """Every step's logits put all the mass on a banned id: it is never produced (the first raw
    draw may land on it, but only a raw <|chunk_eos|> is kept), in sampling and greedy mode."""
    tok = tiny_model.tokenizer
    bad = tok.bad_token_ids
    for mode in ("sampling", "greedy"):
        s = make(["<|speak|>"] + [bad[k % len(bad)] for k in range(0, 400, 7)], decode_mode=mode)
        for i in range(2):
            s.run_unit(_unit(i))
        fed = [t for t in s.context.trace if isinstance(t, int)]
        assert not set(fed) & set(bad), mode
        logits = torch.zeros(tiny_model.config.vocab_size)
        logits[bad[3]] = 50.0
        assert s.protocols["duplex"].decode(logits) not in bad


def test_turn_based_never_draws_a_banned_id(make, tiny_model):
    tok = tiny_model.tokenizer
    bad = tok.bad_token_ids
    a = _word(tok)
    colon = _id(tok, ":")
    s = make([], mode="turn_based")
    s.run_unit(_unit(1, level=0.2))                      # the user speaks
    s.context.head.script = [bad[0], colon, bad[-1], "<|tts_eos|>"]
    s.context.head.runner_up = {bad[0]: a, colon: a, bad[-1]: a}
    s.run_unit(_unit(2))                                 # silence: the answer prompt is fed
    s.context.trace.clear()
    out = s.run_unit(_unit(3))                           # one answer unit
    assert s.context.trace == [a, a, a] and out.end_of_turn
    # with all the mass on banned ids some other token is drawn
    s.run_unit(_unit(4, level=0.2))
    s.context.head.script, s.context.head.runner_up = [bad[k] for k in range(0, 120, 6)] + ["<|tts_eos|>"], {}
    s.run_unit(_unit(5))
    s.context.trace.clear()
    s.run_unit(_unit(6))
    s.run_unit(_unit(7))
    assert not {t for t in s.context.trace if isinstance(t, int)} & set(bad)


# --- 2. image resize ------------------------------------------------------------------------

def _structured_image(h, w):
    y, x = np.mgrid[0:h, 0:w]
    checker = ((y // 3 + x // 3) % 2) * 255
    img = np.stack([checker, (x * 255) // max(1, w - 1), (y * 255) // max(1, h - 1)], axis=-1)
    img[h // 3: h // 2, w // 4: w // 2] = (250, 10, 128)      # a block with sharp edges
    return img.astype(np.uint8)


def _pillow_reference(img, scale, patch=14):
    w, h = best_resize(img.shape[1], img.shape[0], scale, patch)
    x = np.asarray(Image.fromarray(img).resize((w, h), resample=Image.Resampling.BICUBIC))
    x = x.astype(np.float32) / 255
    return torch.from_numpy(((x - np.float32(0.5)) / np.float32(0.5)).transpose(2, 0, 1).copy())[None]


@pytest.mark.parametrize("shape,scale", [((37, 53), 448), ((480, 640), 448), ((448, 448), 448),
                                         ((120, 90), 56), ((30, 40), 56)])
def test_resize_is_the_released_pillow_bicubic(shape, scale):
    img = _structured_image(*shape)
    ours = preprocess_image(img, scale, 14)
    ref = _pillow_reference(img, scale)
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert float((ours - ref).abs().max()) < 1e-6


def test_vision_inputs_use_the_released_resize(tiny_model):
    from omni_ros.runtime.graphs import vision_inputs

    img = _structured_image(96, 128)
    pixels = vision_inputs(img, tiny_model.config)["pixel_values"]
    scale = int(tiny_model.config.slice_config["scale_resolution"])
    assert float((pixels - _pillow_reference(img, scale)).abs().max()) < 1e-6


# --- 3. system prefix -----------------------------------------------------------------------

def _prefill_trace(tiny_model, monkeypatch, mode, voice=None, prompt="Streaming Omni Conversation."):
    s = OmniSession(TorchCompute(tiny_model), SessionOptions(mode=mode, system_prompt=prompt))
    # the LLM's voice slot only (the waveform stage keeps the voice it was built with)
    monkeypatch.setattr(s, "voice", None if voice is None else SimpleNamespace(audio_16k=torch.from_numpy(voice)))
    s.context.trace = []
    s._prefill()
    return s


def test_duplex_prefix_without_voice_is_the_released_one(tiny_model, monkeypatch):
    tok = tiny_model.tokenizer
    s = _prefill_trace(tiny_model, monkeypatch, "duplex")
    prefix = "<|im_start|>system\nStreaming Omni Conversation.\n<|audio_start|>"
    suffix = "<|audio_end|><|im_end|>"
    expected = tok.encode(prefix, add_special_tokens=False) + tok.encode(suffix, add_special_tokens=False)
    assert s.context.trace == expected == tok.encode(prefix + suffix, add_special_tokens=False)
    assert s.context.prefix_len == len(expected)


def test_turn_based_prefix_is_the_released_chat_template(tiny_model, monkeypatch):
    tok = tiny_model.tokenizer
    s = _prefill_trace(tiny_model, monkeypatch, "turn_based")
    assert s.context.trace == tok.encode("<|im_start|>system\nStreaming Omni Conversation.<|im_end|>\n",
                                 add_special_tokens=False)
    # with a 1.5 s voice: one audio span per started second (10 + 5 embeddings)
    s = _prefill_trace(tiny_model, monkeypatch, "turn_based", voice=np.zeros(24000, np.float32))
    a0, a1 = _id(tok, "<|audio_start|>"), _id(tok, "<|audio_end|>")
    head = tok.encode("<|im_start|>system\nStreaming Omni Conversation.", add_special_tokens=False)
    tail = tok.encode("<|im_end|>\n", add_special_tokens=False)
    assert s.context.trace == head + [a0, ("embeds", 10), a1, a0, ("embeds", 5), a1] + tail


# --- 4. interchangeable checkpoints ---------------------------------------------------------

RELEASED_CONFIG_AUTO_MAP = {
    "AutoConfig": "configuration_minicpmo.MiniCPMOConfig",
    "AutoModel": "modeling_minicpmo.MiniCPMO",
    "AutoModelForCausalLM": "modeling_minicpmo.MiniCPMO",
}
RELEASED_PREPROCESSOR_AUTO_MAP = {
    "AutoProcessor": "processing_minicpmo.MiniCPMOProcessor",
    "AutoImageProcessor": "processing_minicpmo.MiniCPMVImageProcessor",
    "AutoFeatureExtractor": "processing_minicpmo.MiniCPMAAudioProcessor",
}
RELEASED_PREPROCESSOR_KEYS = {
    "image_processor_type", "feature_extractor_type", "auto_map", "processor_class", "max_slice_nums",
    "scale_resolution", "patch_size", "use_image_id", "image_feature_size", "im_start", "im_end",
    "slice_start", "slice_end", "unk", "im_id_start", "im_id_end", "slice_mode", "audio_pool_step",
    "norm_mean", "norm_std", "version",
}


def test_configs_carry_the_released_auto_map(tiny_checkpoint):
    cfg = json.loads((tiny_checkpoint / "config.json").read_text(encoding="utf-8"))
    assert cfg["auto_map"] == RELEASED_CONFIG_AUTO_MAP and cfg["architectures"] == ["MiniCPMO"]
    pre = json.loads((tiny_checkpoint / "preprocessor_config.json").read_text(encoding="utf-8"))
    assert pre["auto_map"] == RELEASED_PREPROCESSOR_AUTO_MAP
    assert set(pre) == RELEASED_PREPROCESSOR_KEYS


def test_the_tiny_folder_has_what_vllm_needs_to_load_it(tiny_checkpoint):
    """vLLM(-Omni) recognises a MiniCPM-o 4.5 folder by its config (`version` 4.5, `auto_map`),
    its preprocessor and tokenizer configs, and the released unknown token <unk> at 128244."""
    cfg = json.loads((tiny_checkpoint / "config.json").read_text(encoding="utf-8"))
    assert str(cfg["version"]) == "4.5" and cfg["auto_map"]
    assert (tiny_checkpoint / "preprocessor_config.json").is_file()
    tok_cfg = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok_cfg["unk_token"] == "<unk>"
    assert tok_cfg["added_tokens_decoder"]["128244"]["content"] == "<unk>"
    tokenizer = load_tokenizer(tiny_checkpoint)
    assert tokenizer.convert_tokens_to_ids("<unk>") == 128244
    assert tokenizer.decode([128244]) == "<unk>"
    assert 128244 not in tokenizer.bad_token_ids             # as in the release: not a banned id
    assert tokenizer("an ordinary sentence", add_special_tokens=False)["input_ids"]
    assert 128244 not in tokenizer("<un k> unknown", add_special_tokens=False)["input_ids"]


def test_released_auto_map_survives_a_config_roundtrip(tmp_path):
    from omni_ros.model.config import OmniConfig

    data = OmniConfig.released().to_dict()
    data["auto_map"] = {"AutoConfig": "x.Y"}
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert OmniConfig.from_json_file(tmp_path / "config.json").to_dict()["auto_map"] == {"AutoConfig": "x.Y"}


def _modes(folder):
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in folder.rglob("*") if p.is_file()}


def test_written_files_are_readable_by_others(tiny_checkpoint):
    modes = _modes(tiny_checkpoint)
    assert any(f.endswith(".safetensors") for f in modes)
    assert {f: m for f, m in modes.items() if m != 0o644} == {}
