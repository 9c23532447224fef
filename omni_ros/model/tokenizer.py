"""Tokenizer for the model: a writer for a small byte-level BPE laid out like the released one
(151643 regular ids, then the released special tokens at their released ids, 151748 in all) and a
reader that loads any checkpoint's tokenizer and resolves special tokens by their strings.

Banned tokens: the released `tokenizer_config.json` carries `bad_token_ids`, 6,965 regular ids the
released decoders never sample (the released tokenizer class exposes them as
`tokenizer.bad_token_ids`). They follow a rule over the byte-level vocabulary: every regular token
whose bytes are not valid UTF-8 or contain one of `( ) （ ） \n \r U+FFFD` (6,960 ids), plus five
tokens starting with a full-width comma (`BANNED_EXTRA_TOKENS`). The writer bans by that rule;
the reader attaches the checkpoint's list as `tokenizer.bad_token_ids` for every backend.
"""
from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, List

import numpy as np

NUM_REGULAR_IDS = 151643
# The released tokenizer's unknown token: a regular id, also declared special (vLLM's MiniCPM-o
# processor and the released turn-based masks rely on it).
UNK_TOKEN, UNK_ID = "<unk>", 128244

# Special tokens the session needs, by string.
SPECIAL_NAMES = {
    "im_start": "<|im_start|>", "im_end": "<|im_end|>", "endoftext": "<|endoftext|>",
    "unit_start": "<unit>", "unit_end": "</unit>", "image_start": "<image>", "image_end": "</image>",
    "audio_start": "<|audio_start|>", "audio_end": "<|audio_end|>",
    "listen": "<|listen|>", "speak": "<|speak|>", "chunk_eos": "<|chunk_eos|>",
    "turn_eos": "<|turn_eos|>", "tts_bos": "<|tts_bos|>", "tts_eos": "<|tts_eos|>",
    "tts_pad": "<|tts_pad|>", "chunk_tts_eos": "<|chunk_tts_eos|>",
}

# The released `bad_token_ids` rule (see the module doc): characters that ban a regular token...
BANNED_CHARS = "()\uff08\uff09\n\r\ufffd"
# ...and the five tokens the released list bans besides the rule.
BANNED_EXTRA_TOKENS = ("\uff0c\u8bf7", "\uff0c\u9ed8\u8ba4", "\uff0c\u5e76", "\uff0c\u5219", "\uff0c\u5728")

# The released turn-based streaming generator (`ChunkPrefillChunkGenerate` in the released
# utils.py) forbids these token strings besides `bad_token_ids`. They are resolved with
# `convert_tokens_to_ids`: a string that is not a vocabulary entry resolves to the unknown token
# (`<unk>`, a regular id in the release), as in the released tokenizer.
TURN_BASED_FORBIDDEN_TOKENS = (
    ":", "\uff1a", "\uff1b", "#", "\u201c", "\u201d", "\u2018", "\u2019", "@", "*",
    "\u3010", "\u3011", "\u300c", "\u300d", "(", ")", "\uff08", "\uff09", "[", "]", "&", "/", "$",
)

_SUBJECTS = ["the robot", "a small robot", "the camera", "my friend", "the assistant", "the child",
             "our team", "the teacher", "a visitor", "the dog", "the old man", "the driver"]
_VERBS = ["sees", "hears", "moves toward", "talks about", "looks at", "waits for", "picks up",
          "points at", "listens to", "walks past", "describes", "remembers"]
_OBJECTS = ["the red ball", "a blue cup", "the open door", "a loud noise", "the kitchen table",
            "the green light", "a quiet room", "the window", "an orange box", "the long hallway",
            "a bright screen", "the wooden chair"]
_SENTENCES = """Hello, how are you today?
I am fine, thank you. What can I do for you?
Could you tell me what you see in front of you?
I see a table with two cups and a small plant.
Please wait a moment while I think about it.
That sounds like a good idea, let us try it.
The weather is nice and the sun is shining.
It is raining outside, so take an umbrella.
Turn left at the next corner and walk straight ahead.
The meeting starts at nine in the morning.
Do you want to hear a short story?
Once upon a time there was a little robot who loved to sing.
It lived in a house near the sea with a friendly cat.
Every morning it said good morning to everyone it met.
I can hear you clearly now.
Sorry, I did not catch that. Could you say it again?
Yes, of course. I will help you with that.
No, I do not think that is correct.
Let me check the time. It is half past three.
The battery is almost full and ready to go.
Stop! There is something on the floor.
Please move slowly and watch your step.
What is your name? My name is Omni.
Nice to meet you. I hope you have a great day.
The numbers are one, two, three, four, five, six, seven, eight, nine and ten.
Can you count from ten down to zero?
The quick brown fox jumps over the lazy dog.
She sells sea shells by the sea shore.
We should leave now if we want to arrive on time.
The store closes at eight tonight.
I like music, books, movies and long walks.
Tell me more about your trip to the mountains.
The river was cold but the view was beautiful.
Thank you for listening. Goodbye!
Is there anything else you would like to know?
The light is on in the living room.
Someone is knocking at the door.
I think the answer is forty two.
Good evening, everyone, and welcome back.
How far is it to the station from here?
About ten minutes on foot, or three by car.
He asked a question and waited for an answer.
They laughed, and then everybody started to clap.
Please speak a little louder, it is noisy here.
Now I understand what you mean.
Let us start again from the beginning.
This is a test of the speech system.
The model listens and speaks at the same time.""".splitlines()


def corpus_lines() -> List[str]:
    """A few hundred lines of plain English used to train the tiny BPE."""
    lines = list(_SENTENCES)
    for i, (s, v, o) in enumerate(itertools.product(_SUBJECTS, _VERBS, _OBJECTS)):
        if i % 7 == 0:
            lines.append(f"{s.capitalize()} {v} {o}.")
    return lines


def released_added_tokens() -> Dict[str, int]:
    """The released special tokens and their ids (packaged copy of the reference json)."""
    text = resources.files("omni_ros.model").joinpath("data/added_tokens.json").read_text(encoding="utf-8")
    return {k: int(v) for k, v in json.loads(text).items()}


def _filler_words(count: int, taken: set, seed: int = 0) -> List[str]:
    """Unique pseudo-words (byte-level strings, 'Ġ' = leading space) that no merge can produce."""
    cons = list("bdfgklmnprstvz")
    vows = list("aeiou")
    syl = [c + v for c in cons for v in vows]                    # 70 syllables
    rng = np.random.default_rng(seed)
    out: List[str] = []
    for n_syl in (2, 3, 4):
        combos = ["".join(p) for p in itertools.product(syl, repeat=n_syl)] if n_syl < 4 else None
        if combos is None:
            break
        order = rng.permutation(len(combos))
        for k in order:
            w = "Ġ" + combos[k]
            if w not in taken:
                out.append(w)
                if len(out) == count:
                    return out
    raise RuntimeError("not enough filler words")


@functools.lru_cache(maxsize=1)
def _bytes_of_symbol() -> Dict[str, int]:
    """The byte-level BPE alphabet: symbol -> the byte it stands for. Printable Latin-1 bytes
    stand for themselves; the other 68 bytes take the code points from 256 on, in byte order."""
    kept = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    table = {chr(b): b for b in kept}
    extra = [b for b in range(256) if b not in table.values()]
    table.update({chr(256 + k): b for k, b in enumerate(extra)})
    return table


def token_bytes(token: str) -> bytes:
    """The bytes a byte-level vocabulary entry stands for."""
    table = _bytes_of_symbol()
    return bytes(table[c] for c in token)


def is_banned_token(raw: bytes) -> bool:
    """The released `bad_token_ids` rule for one regular token (its bytes)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(c in text for c in BANNED_CHARS) or text in BANNED_EXTRA_TOKENS


def banned_token_ids(vocab: Dict[str, int]) -> List[int]:
    """Sorted ids of a byte-level vocabulary (string -> id, regular tokens only) that the released
    rule bans. On the released vocab.json this gives exactly the released 6,965 ids."""
    return sorted(i for t, i in vocab.items() if is_banned_token(token_bytes(t)))


def build_tokenizer_json(vocab_size_trained: int = 2000) -> str:
    """Train the BPE and lay it out like the released vocabulary; returns tokenizer.json text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size_trained, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    data = json.loads(tok.to_str())
    vocab: Dict[str, int] = data["model"]["vocab"]
    items = sorted(vocab.items(), key=lambda kv: kv[1])
    if items[-1][1] != len(items) - 1:
        raise RuntimeError("trained vocabulary ids are not contiguous")
    fillers = _filler_words(NUM_REGULAR_IDS - len(items), set(vocab))
    new_vocab = dict(items)
    for i, w in enumerate(fillers, start=len(items)):
        new_vocab[w if i != UNK_ID else UNK_TOKEN] = i        # a filler no merge produces
    data["model"]["vocab"] = new_vocab
    data["added_tokens"] = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for s, i in sorted({UNK_TOKEN: UNK_ID, **released_added_tokens()}.items(), key=lambda kv: kv[1])
    ]
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def write_tokenizer(folder) -> None:
    """Write tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = build_tokenizer_json()
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    bad_ids = banned_token_ids(json.loads(text)["model"]["vocab"])
    added = released_added_tokens()
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 40960,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": UNK_TOKEN,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for s, i in sorted({UNK_TOKEN: UNK_ID, **added}.items(), key=lambda kv: kv[1])
        },
        "bad_token_ids": bad_ids,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": UNK_TOKEN},
                   indent=2) + "\n",
        encoding="utf-8")


@dataclass
class SpecialIds:
    """Special token ids resolved by string from a loaded tokenizer."""

    ids: Dict[str, int]

    def __getattr__(self, name: str) -> int:
        try:
            return self.__dict__["ids"][name]
        except KeyError:
            raise AttributeError(name) from None


def read_bad_token_ids(folder, vocab_len: int) -> List[int]:
    """`bad_token_ids` of the folder's tokenizer_config.json (sorted, unique; [] when the file or
    the field is absent). Raises ValueError for a malformed file or list, or an id outside
    [0, vocab_len)."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.exists():
        return []
    try:
        raw = json.loads(path.read_text(encoding="utf-8")).get("bad_token_ids") or []
    except (ValueError, AttributeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(raw, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise ValueError(f"{path}: bad_token_ids must be a list of integers")
    out = sorted(set(raw))
    if out and (out[0] < 0 or out[-1] >= vocab_len):
        raise ValueError(f"{path}: bad_token_ids holds ids outside the vocabulary [0, {vocab_len})")
    return out


def load_tokenizer(folder):
    """Load the checkpoint's tokenizer (tokenizer.json) offline as a PreTrainedTokenizerFast, with
    `bad_token_ids` (from tokenizer_config.json, as the released tokenizer class has it)."""
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    tokenizer.bad_token_ids = read_bad_token_ids(folder, len(tokenizer))
    return tokenizer


def forbidden_ids(tokenizer, strings) -> List[int]:
    """Ids of token strings as the released code resolves them (`convert_tokens_to_ids`, a string
    that is no vocabulary entry giving the unknown token's id); strings that resolve to nothing
    (a vocabulary without an unknown token) are left out. Sorted, unique."""
    unk = tokenizer.unk_token_id
    if unk is None:
        unk = tokenizer.convert_tokens_to_ids("<unk>")
    out = set()
    for s in strings:
        i = tokenizer.convert_tokens_to_ids(s)
        if i is None or i == tokenizer.unk_token_id:
            i = unk
        if i is not None:
            out.add(int(i))
    return sorted(out)


def decoding_masks(tokenizer, special) -> Dict[str, List[int]]:
    """The ids the released decoders mask before sampling, per mode (sorted, unique):
    duplex (`MiniCPMODuplex.forbidden_token_ids` + StreamDecoder's `<|chunk_eos|>`):
    `<|tts_pad|>`, `<|chunk_eos|>` and `bad_token_ids`;
    turn_based (`ChunkPrefillChunkGenerate.forbidden_token_ids`): TURN_BASED_FORBIDDEN_TOKENS and
    `bad_token_ids`, plus `<|tts_pad|>` (omni_ros's own: the released turn-based path does not
    mask it, omni_ros never lets it into a speech condition)."""
    bad = [int(i) for i in (getattr(tokenizer, "bad_token_ids", None) or [])]
    duplex = {special.tts_pad, special.chunk_eos, *bad}
    turn_based = {special.tts_pad, *forbidden_ids(tokenizer, TURN_BASED_FORBIDDEN_TOKENS), *bad}
    return {"duplex": sorted(duplex), "turn_based": sorted(turn_based)}


def resolve_special_ids(tokenizer) -> SpecialIds:
    """Map SPECIAL_NAMES to ids by string; raises KeyError naming any token the vocabulary lacks."""
    ids: Dict[str, int] = {}
    missing = []
    for name, text in SPECIAL_NAMES.items():
        i = tokenizer.convert_tokens_to_ids(text)
        if i is None or (tokenizer.unk_token_id is not None and i == tokenizer.unk_token_id):
            missing.append(text)
        else:
            ids[name] = int(i)
    if missing:
        raise KeyError(f"tokenizer lacks special tokens: {missing}")
    return SpecialIds(ids)
