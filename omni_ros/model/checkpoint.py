"""Writer for a tiny random-weight checkpoint folder in the released MiniCPM-o 4.5 layout:
config.json, sharded safetensors + model.safetensors.index.json, tokenizer, generation and
preprocessor configs, assets/token2wav/ (the released Step-Audio2 layout at tiny dimensions) and a
default reference voice. The same seed gives the same bytes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors.torch import save_file

from .config import OmniConfig
from .token2wav.assets import ASSET_DIR
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


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's sinusoidal position table [length, channels]."""
    inc = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1).float()


def _is_norm(name: str) -> bool:
    mod = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    return "norm" in mod or mod.startswith("ln_")


def random_state_dict(config: OmniConfig, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random float32 weights for every key of the model, drawn in sorted key order from `seed`."""
    from .loader import expected_keys

    shapes = expected_keys(config)
    g = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith(".bias") or name.endswith("in_proj_bias"):
            t = torch.zeros(shape)
        elif _is_norm(name) and len(shape) == 1:
            t = torch.ones(shape)
        elif name == "apm.embed_positions.weight":
            t = _sinusoids(*shape)
        elif name == "resampler.proj":
            t = torch.randn(shape, generator=g) * shape[0] ** -0.5
        elif name.endswith("parametrizations.weight.original0"):
            t = torch.empty(shape)               # filled from original1 below
        else:
            std = TTS_INIT_STD if name.startswith("tts.") else INIT_STD
            t = torch.randn(shape, generator=g) * std
        out[name] = t
    for name in list(out):
        if name.endswith("parametrizations.weight.original0"):
            v = out[name[: -len("original0")] + "original1"]
            out[name] = v.norm(dim=1, keepdim=True)          # g = |v| per row
    added = released_added_tokens()
    rows = torch.tensor([added[t] for t in DECISION_TOKENS])
    out["llm.lm_head.weight"][rows] *= DECISION_ROW_SCALE
    return out


def save_sharded(state: Dict[str, torch.Tensor], folder: Path, max_shard_bytes: int,
                 min_shards: int = 2) -> None:
    """Write `state` as model-0000i-of-0000n.safetensors + model.safetensors.index.json."""
    names = sorted(state)
    total = sum(state[n].numel() * state[n].element_size() for n in names)
    target = min(max_shard_bytes, max(1, total // min_shards + 1))
    groups, cur, cur_bytes = [], [], 0
    for n in names:
        size = state[n].numel() * state[n].element_size()
        if cur and cur_bytes + size > target:
            groups.append(cur)
            cur, cur_bytes = [], 0
        cur.append(n)
        cur_bytes += size
    if cur:
        groups.append(cur)
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: state[n].contiguous() for n in group}, str(folder / fname), metadata={"format": "pt"})
        (folder / fname).chmod(FILE_MODE)          # safetensors creates its files 0600
        weight_map.update({n: fname for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


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
                     max_shard_bytes: int = 64 * 1024 * 1024) -> Path:
    """Write a complete random-weight checkpoint folder (tiny config by default)."""
    config = config or OmniConfig.tiny()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / "config.json")
    state = {k: v.to(storage_dtype) for k, v in random_state_dict(config, seed).items()}
    save_sharded(state, folder, max_shard_bytes)
    del state
    write_tokenizer(folder)
    (folder / "generation_config.json").write_text(json.dumps(_generation_config(), indent=2) + "\n",
                                                   encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(_preprocessor_config(config), indent=2) + "\n", encoding="utf-8")
    write_random_assets(folder / ASSET_DIR, size="tiny", seed=seed + 1)
    write_default_voice(folder, seed=seed)
    for path in folder.rglob("*"):                # every file readable by others, whatever the umask
        if path.is_file() and not path.is_symlink():
            path.chmod(FILE_MODE)
    return folder
