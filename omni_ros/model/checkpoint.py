"""Writer for a random-weight checkpoint folder in the released MiniCPM-o 4.5 layout, at tiny or at
released size: config.json, sharded safetensors + model.safetensors.index.json, tokenizer, generation
and preprocessor configs, assets/token2wav/ (the released Step-Audio2 layout) and a default reference
voice. The same seed gives the same bytes.

Writing is split in two. `plan_checkpoint` says which tensor (name, shape, dtype, byte range) goes
into which shard file, and so the exact bytes of every shard header, without touching a value; the
released plan is checked by the tests this way. `write_weights` then streams the values shard by
shard and tensor by tensor, in blocks of rows, so that writing the 18 GB released size holds no
more than one block of values in memory.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import torch

from .config import OmniConfig
from .token2wav.assets import ASSET_DIR, DEFAULT_VOICE, RELEASED_FILES
from .token2wav.model import write_default_voice, write_random_assets
from .tokenizer import released_added_tokens, write_tokenizer

INDEX_NAME = "model.safetensors.index.json"
# Every file of a written checkpoint is rw-r--r-- (set explicitly, so the umask does not matter),
# as the released files: a checkpoint written by one user is readable by the others.
FILE_MODE = 0o644
# `auto_map` of the released preprocessor_config.json (remote-code classes in processing_minicpmo.py)
PREPROCESSOR_AUTO_MAP = {
    "AutoProcessor": "processing_minicpmo.MiniCPMOProcessor",
    "AutoImageProcessor": "processing_minicpmo.MiniCPMVImageProcessor",
    "AutoFeatureExtractor": "processing_minicpmo.MiniCPMAAudioProcessor",
}

# lm_head rows scaled so that a random model takes every decision now and then
DECISION_TOKENS = ["<|listen|>", "<|speak|>", "<|chunk_eos|>", "<|turn_eos|>", "<|tts_eos|>", "<|im_end|>"]
DECISION_ROW_SCALE = 7.0
TTS_INIT_STD = 0.15
INIT_STD = 0.02

SIZES = ("tiny", "released")
# Largest shard per size. The released size uses transformers' `save_pretrained` default (5 GB):
# about 18.8 GB of bf16 weights in four shards.
SHARD_BYTES = {"tiny": 64 * 1024 * 1024, "released": 5 * 10 ** 9}
# float32 values drawn at once for a large tensor (64 MB); smaller tensors are drawn whole
CHUNK_ELEMENTS = 1 << 24
# safetensors dtype names of the storage dtypes a checkpoint may use
SAFETENSORS_DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
# the files of a written folder besides the weight shards
OTHER_FILES = ("config.json", INDEX_NAME, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "generation_config.json", "preprocessor_config.json",
               *(f"{ASSET_DIR}/{name}" for name in RELEASED_FILES), DEFAULT_VOICE)
# torch's normal sampler transforms its uniform draws in blocks of 16 values: chunks of a multiple of
# 16 values (and a last one of at least 16) draw exactly what one call for the whole tensor draws.
_DRAW_BLOCK = 16


def size_config(size: str) -> OmniConfig:
    """The model configuration of a named size ("tiny" or "released")."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    return OmniConfig.tiny() if size == "tiny" else OmniConfig.released()


# --- the plan: which tensor goes where -----------------------------------------------------------

@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: Tuple[int, ...]
    dtype: torch.dtype
    offsets: Tuple[int, int]          # byte range in its shard's data section

    @property
    def nbytes(self) -> int:
        return self.offsets[1] - self.offsets[0]


@dataclass(frozen=True)
class PlannedShard:
    file: str
    tensors: Tuple[PlannedTensor, ...]

    @property
    def data_bytes(self) -> int:
        return self.tensors[-1].offsets[1] if self.tensors else 0

    def header(self) -> bytes:
        """The safetensors header (JSON, space-padded to a multiple of 8 bytes) as safetensors'
        own writer lays it out for tensors of one dtype: `__metadata__`, then the tensors by name."""
        head: Dict[str, object] = {"__metadata__": {"format": "pt"}}
        for t in self.tensors:
            head[t.name] = {"dtype": SAFETENSORS_DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                            "data_offsets": list(t.offsets)}
        raw = json.dumps(head, separators=(",", ":")).encode("utf-8")
        return raw + b" " * (-len(raw) % 8)

    @property
    def file_bytes(self) -> int:
        return 8 + len(self.header()) + self.data_bytes


@dataclass(frozen=True)
class CheckpointPlan:
    shards: Tuple[PlannedShard, ...]

    def all_tensors(self) -> Iterator[PlannedTensor]:
        for shard in self.shards:
            yield from shard.tensors

    @property
    def total_size(self) -> int:
        return sum(shard.data_bytes for shard in self.shards)

    def weight_map(self) -> Dict[str, str]:
        return {t.name: shard.file for shard in self.shards for t in shard.tensors}

    def files(self) -> Tuple[str, ...]:
        """Every file of the written folder, relative to it."""
        return tuple(sorted(OTHER_FILES + tuple(shard.file for shard in self.shards)))

    def index(self) -> dict:
        """The content of model.safetensors.index.json."""
        return {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map().items()))}


def plan_shards(shapes: Dict[str, Tuple[int, ...]], dtype: torch.dtype, max_shard_bytes: int,
                min_shards: int = 2) -> CheckpointPlan:
    """Tensors in sorted key order, cut into shards of at most `max_shard_bytes` (a larger tensor
    gets a shard of its own) and at least `min_shards` shards."""
    if dtype not in SAFETENSORS_DTYPE_NAMES:
        raise ValueError(f"storage dtype {dtype} is not one of {sorted(map(str, SAFETENSORS_DTYPE_NAMES))}")
    item = dtype.itemsize
    names = sorted(shapes)
    sizes = {n: math.prod(shapes[n]) * item for n in names}
    target = min(max_shard_bytes, max(1, sum(sizes.values()) // min_shards + 1))
    groups, cur, cur_bytes = [], [], 0
    for n in names:
        if cur and cur_bytes + sizes[n] > target:
            groups.append(cur)
            cur, cur_bytes = [], 0
        cur.append(n)
        cur_bytes += sizes[n]
    if cur:
        groups.append(cur)
    shards = []
    for i, group in enumerate(groups):
        tensors, offset = [], 0
        for n in group:
            tensors.append(PlannedTensor(n, tuple(shapes[n]), dtype, (offset, offset + sizes[n])))
            offset += sizes[n]
        shards.append(PlannedShard(f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors", tuple(tensors)))
    return CheckpointPlan(tuple(shards))


def plan_checkpoint(config: OmniConfig, storage_dtype: torch.dtype = torch.bfloat16,
                    max_shard_bytes: int = SHARD_BYTES["tiny"]) -> CheckpointPlan:
    """The shard plan of the model for `config` (its module tree built on the meta device: no
    memory, also at released size)."""
    from .loader import expected_keys

    return plan_shards(expected_keys(config), storage_dtype, max_shard_bytes)


# --- the values: random, deterministic for a seed ------------------------------------------------

def _sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's sinusoidal position table [length, channels]."""
    inc = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1).float()


def _is_norm(name: str) -> bool:
    mod = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    return "norm" in mod or mod.startswith("ln_")


def _init_rule(name: str, shape: Tuple[int, ...]):
    """How a tensor's values are made: "zeros", "ones", "sinusoids", "magnitude" (the row norms of
    its weight-norm direction) or, as a float, the std of a normal draw."""
    if name.endswith(".bias") or name.endswith("in_proj_bias"):
        return "zeros"
    if _is_norm(name) and len(shape) == 1:
        return "ones"
    if name == "apm.embed_positions.weight":
        return "sinusoids"
    if name.endswith("parametrizations.weight.original0"):
        return "magnitude"
    if name == "resampler.proj":
        return shape[0] ** -0.5
    return TTS_INIT_STD if name.startswith("tts.") else INIT_STD


def _row_chunks(shape: Tuple[int, ...], chunk_elements: int) -> Iterator[Tuple[int, int]]:
    """Row ranges [a, b) of a tensor drawn in pieces: each piece but the last a multiple of 16
    values, the last at least 16, so that the draws equal one draw of the whole tensor."""
    rows = shape[0] if shape else 1
    row_size = math.prod(shape[1:]) if len(shape) > 1 else 1
    total = rows * row_size
    if total <= chunk_elements or len(shape) < 2:
        yield 0, rows
        return
    step = max(_DRAW_BLOCK, chunk_elements // row_size // _DRAW_BLOCK * _DRAW_BLOCK)
    starts = list(range(0, rows, step))
    if len(starts) > 1 and (rows - starts[-1]) * row_size < _DRAW_BLOCK:
        starts.pop()                                  # a too-small remainder joins the piece before
    for i, a in enumerate(starts):
        yield a, starts[i + 1] if i + 1 < len(starts) else rows


class RandomWeights:
    """Random float32 values of every tensor, drawn in sorted key order from one generator seeded
    with `seed`, handed out in row blocks (`blocks`). Biases are zero, norms one, the Whisper position
    table sinusoidal, a weight-normed magnitude the row norms of its direction; the rows of the
    decision tokens in `llm.lm_head` are scaled up. Tensors must be asked for in sorted key order."""

    def __init__(self, shapes: Dict[str, Tuple[int, ...]], seed: int = 0, chunk_elements: int = CHUNK_ELEMENTS):
        self.shapes = shapes
        self.generator = torch.Generator().manual_seed(seed)
        self.chunk_elements = chunk_elements
        self._held: Dict[str, torch.Tensor] = {}     # a direction drawn early for its magnitude
        added = released_added_tokens()
        self._decision_rows = sorted(added[t] for t in DECISION_TOKENS)

    def _drawn(self, name: str) -> Iterator[torch.Tensor]:
        shape = self.shapes[name]
        std = _init_rule(name, shape)
        for a, b in _row_chunks(shape, self.chunk_elements):
            block = torch.randn((b - a,) + tuple(shape[1:]), generator=self.generator) * std
            if name == "llm.lm_head.weight":
                rows = [r - a for r in self._decision_rows if a <= r < b]
                block[torch.tensor(rows, dtype=torch.long)] *= DECISION_ROW_SCALE
            yield block

    def blocks(self, name: str) -> Iterator[torch.Tensor]:
        """float32 blocks of consecutive rows of tensor `name`, in order."""
        shape = self.shapes[name]
        rule = _init_rule(name, shape)
        if name in self._held:
            yield self._held.pop(name)
        elif rule == "zeros":
            yield torch.zeros(shape)
        elif rule == "ones":
            yield torch.ones(shape)
        elif rule == "sinusoids":
            yield _sinusoids(*shape)
        elif rule == "magnitude":
            direction = name[: -len("original0")] + "original1"     # drawn next in key order
            v = torch.cat(list(self._drawn(direction)))
            self._held[direction] = v
            yield v.norm(dim=1, keepdim=True)                       # g = |v| per row
        else:
            yield from self._drawn(name)


# --- writing -------------------------------------------------------------------------------------

def write_weights(folder, plan: CheckpointPlan, seed: int = 0, chunk_elements: int = CHUNK_ELEMENTS) -> None:
    """Write the shards of `plan` with random values and the index, one block of rows at a time."""
    folder = Path(folder)
    values = RandomWeights({t.name: t.shape for t in plan.all_tensors()}, seed, chunk_elements)
    for shard in plan.shards:
        path = folder / shard.file
        header = shard.header()
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for tensor in shard.tensors:
                for block in values.blocks(tensor.name):
                    f.write(block.to(tensor.dtype).contiguous().reshape(-1).view(torch.uint8).numpy())
            if f.tell() != shard.file_bytes:
                raise RuntimeError(f"{path}: wrote {f.tell()} bytes, the plan says {shard.file_bytes}")
        path.chmod(FILE_MODE)
    (folder / INDEX_NAME).write_text(json.dumps(plan.index(), indent=2) + "\n", encoding="utf-8")


def _generation_config() -> dict:
    return {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
            "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95}


def _preprocessor_config(config: OmniConfig) -> dict:
    return {
        "image_processor_type": "MiniCPMVImageProcessor",
        "feature_extractor_type": "MiniCPMAAudioProcessor",
        "auto_map": dict(PREPROCESSOR_AUTO_MAP),
        "processor_class": "MiniCPMOProcessor",
        "max_slice_nums": config.slice_config.get("max_slice_nums", 9),
        "scale_resolution": config.image_size,
        "patch_size": config.vision_config.patch_size,
        "use_image_id": True,
        "image_feature_size": config.query_num,
        "im_start": "<image>", "im_end": "</image>", "slice_start": "<slice>", "slice_end": "</slice>",
        "unk": "<unk>", "im_id_start": "<image_id>", "im_id_end": "</image_id>",
        "slice_mode": True,
        "audio_pool_step": config.audio_pool_step,
        "norm_mean": [0.5, 0.5, 0.5], "norm_std": [0.5, 0.5, 0.5],
        "version": 4.5,
    }


def write_checkpoint(folder, config: Optional[OmniConfig] = None, seed: int = 0,
                     storage_dtype: torch.dtype = torch.bfloat16,
                     max_shard_bytes: Optional[int] = None, size: str = "tiny",
                     chunk_elements: int = CHUNK_ELEMENTS) -> Path:
    """Write a complete random-weight checkpoint folder: `size` "tiny" (the default) or "released"
    picks the model configuration (unless `config` is given), the shard size and the size of
    `assets/token2wav`."""
    config = config or size_config(size)
    plan = plan_checkpoint(config, storage_dtype, max_shard_bytes or SHARD_BYTES[size])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / "config.json")
    write_weights(folder, plan, seed, chunk_elements)
    write_tokenizer(folder)
    (folder / "generation_config.json").write_text(json.dumps(_generation_config(), indent=2) + "\n",
                                                   encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(_preprocessor_config(config), indent=2) + "\n", encoding="utf-8")
    write_random_assets(folder / ASSET_DIR, size=size, seed=seed + 1)
    write_default_voice(folder, seed=seed)
    for path in folder.rglob("*"):                # every file readable by others, whatever the umask
        if path.is_file() and not path.is_symlink():
            path.chmod(FILE_MODE)
    absent = [f for f in plan.files() if not (folder / f).is_file()]
    if absent:
        raise RuntimeError(f"{folder}: the writer left out {', '.join(absent)}")
    return folder
