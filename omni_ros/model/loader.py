"""Load a checkpoint folder (tiny or released layout) into an OmniModel: module tree built on the
meta device, weights streamed shard by shard from safetensors and matched strictly by key name.
No pickle, no remote code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch
from safetensors import safe_open

from .config import OmniConfig
from .omni import OmniModel
from .token2wav.assets import ASSET_DIR, DEFAULT_VOICE, AssetError, check_layout
from .token2wav.model import Token2WavModel

INDEX_NAME = "model.safetensors.index.json"
HOW_TO_CREATE = "create a tiny random-weight checkpoint with `omni_ros_tiny_checkpoint DIR`"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or does not match the model."""


def _summarize(names: List[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f" ... ({len(names)} in all)" if len(names) > limit else f" ({len(names)})"
    return ", ".join(names[:limit]) + more


def build_model(config: OmniConfig, device: Union[str, torch.device] = "meta") -> OmniModel:
    """Build the module tree; on `meta` it costs no memory."""
    with torch.device("meta"):
        model = OmniModel(config)
    if str(device) != "meta":
        model = _materialize(model, config, torch.device(device))
    return model


def expected_keys(config: OmniConfig) -> Dict[str, Tuple[int, ...]]:
    """State-dict key -> shape of the model for `config` (built on meta; works for the full size)."""
    model = build_model(config, "meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _materialize(model: OmniModel, config: OmniConfig, device: torch.device) -> OmniModel:
    """Allocate storage for a meta model and rebuild its computed (non-stored) buffers."""
    model = model.to_empty(device=device)
    # rotary embeddings hold computed inv_freq buffers: rebuild them for real from their config
    rotary = [(name, mod) for name, mod in model.named_modules()
              if "inv_freq" in dict(mod.named_buffers(recurse=False)) and hasattr(mod, "config")]
    for name, mod in rotary:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, type(mod)(mod.config).to(device))
    return model


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {what} missing: {path} does not exist; {HOW_TO_CREATE}")


def read_config(path) -> OmniConfig:
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}; {HOW_TO_CREATE}")
    _require(folder / "config.json", "config")
    try:
        config = OmniConfig.from_json_file(folder / "config.json")
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"cannot parse {folder / 'config.json'}: {e}") from e
    if config.model_type != "minicpmo":
        raise CheckpointError(f"{folder / 'config.json'}: model_type is {config.model_type!r}, expected 'minicpmo'")
    return config


def _read_index(folder: Path) -> Dict[str, str]:
    _require(folder / INDEX_NAME, "weight index")
    try:
        index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read {folder / INDEX_NAME}: {e}") from e
    for shard in sorted(set(weight_map.values())):
        if "/" in shard or "\\" in shard or not shard.endswith(".safetensors"):
            raise CheckpointError(f"{INDEX_NAME} names an unsupported shard {shard!r} (safetensors only)")
        _require(folder / shard, f"weight shard {shard!r}")
    return weight_map


def load_state_into(model: OmniModel, folder: Path, weight_map: Dict[str, str], dtype: torch.dtype) -> None:
    """Copy every tensor named by the index into `model`, strictly by name and shape."""
    targets = dict(model.named_parameters())
    targets.update({k: v for k, v in model.named_buffers() if k in model.state_dict()})
    expected = {k: tuple(v.shape) for k, v in targets.items()}
    missing = [k for k in expected if k not in weight_map]
    unexpected = [k for k in weight_map if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_summarize(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_summarize(unexpected)}")
        raise CheckpointError(f"checkpoint {folder} does not match the config: " + "; ".join(parts))
    by_shard: Dict[str, List[str]] = {}
    for k, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(k)
    seen = set()
    mis_shaped = []
    for shard in sorted(by_shard):
        try:
            with safe_open(str(folder / shard), framework="pt", device="cpu") as f:
                present = set(f.keys())
                absent = [k for k in by_shard[shard] if k not in present]
                if absent:
                    raise CheckpointError(f"shard {shard} lacks keys the index names: {_summarize(absent)}")
                for k in sorted(by_shard[shard]):
                    t = f.get_tensor(k)
                    if tuple(t.shape) != expected[k]:
                        mis_shaped.append(f"{k} {tuple(t.shape)} != expected {expected[k]}")
                        continue
                    with torch.no_grad():
                        targets[k].copy_(t.to(dtype))
                    seen.add(k)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"cannot read weight shard {folder / shard}: {e}") from e
    if mis_shaped:
        raise CheckpointError(f"checkpoint {folder}: mis-shaped keys: {_summarize(mis_shaped)}")


def load_model(path, device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype] = "float32") -> OmniModel:
    """Load a checkpoint folder into an eval-mode OmniModel with tokenizer and token2wav attached."""
    from .tokenizer import load_tokenizer, resolve_special_ids

    folder = Path(path)
    config = read_config(folder)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    weight_map = _read_index(folder)
    _require(folder / "tokenizer.json", "tokenizer (tokenizer.json)")
    t2w_dir = folder / ASSET_DIR
    try:
        check_layout(t2w_dir)
    except AssetError as e:
        raise CheckpointError(f"waveform stage: {e}") from e

    model = build_model(config, "meta").to(dtype=dtype)
    model = _materialize(model, config, torch.device(device))   # rope and mel buffers in float32
    load_state_into(model, folder, weight_map, dtype)
    model.eval().requires_grad_(False)

    try:
        model.tokenizer = load_tokenizer(folder)
        model.special = resolve_special_ids(model.tokenizer)
    except KeyError as e:
        raise CheckpointError(f"tokenizer in {folder}: {e}") from e
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer from {folder}: {e}") from e
    if len(model.tokenizer) > config.vocab_size:
        raise CheckpointError(f"tokenizer has {len(model.tokenizer)} tokens, more than vocab_size {config.vocab_size}")
    try:
        model.token2wav = Token2WavModel.from_folder(t2w_dir, device=device)
    except AssetError as e:
        raise CheckpointError(f"waveform stage: {e}") from e
    except Exception as e:
        raise CheckpointError(f"cannot load the waveform stage from {t2w_dir}: {e}") from e
    model.default_voice = default_voice(folder)
    return model


def default_voice(folder) -> "Path | None":
    """The checkpoint's default reference voice file, where it has one."""
    path = Path(folder) / DEFAULT_VOICE
    return path if path.is_file() else None
