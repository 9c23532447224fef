"""Load a checkpoint folder (tiny or released layout) into an OmniModel: module tree built on the
meta device, every shard checked against the index and the model from its header alone, then the
weights assigned strictly by key name. Where the stored dtype is the one asked for and the device
is the CPU, a weight is a view of its memory-mapped shard (no copy: resident memory stays about the
weights' bytes, pages are read as they are used). No pickle, no remote code.
"""
from __future__ import annotations

import json
import struct
import time
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
# safetensors dtype names a weight shard may store
SHARD_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
_MAX_HEADER_BYTES = 100 * 1024 * 1024        # safetensors' own limit


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or does not match the model."""


class DeviceUnavailable(ValueError):
    """The torch device asked for does not exist in this torch build or on this machine."""


def _summarize(names: List[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f" ... ({len(names)} in all)" if len(names) > limit else f" ({len(names)})"
    return ", ".join(names[:limit]) + more


def check_device(device: Union[str, torch.device]) -> torch.device:
    """`device` as a torch.device, refused in one line where this torch cannot use it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceUnavailable(f"device {str(device)!r} is not a torch device ({e})") from None
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise DeviceUnavailable(f"device {str(device)!r}: this torch ({torch.__version__}) has no CUDA (a "
                                    "CPU-only build); use device:=cpu, or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {str(device)!r}: torch {torch.__version__} has CUDA but finds no "
                                    "usable GPU (driver or CUDA_VISIBLE_DEVICES); use device:=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"device {str(device)!r}: torch sees {torch.cuda.device_count()} CUDA "
                                    f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def build_model(config: OmniConfig, device: Union[str, torch.device] = "meta") -> OmniModel:
    """Build the module tree; on `meta` it costs no memory."""
    with torch.device("meta"):
        model = OmniModel(config)
    if str(device) != "meta":
        model = _materialize(model, torch.device(device))
    return model


def expected_keys(config: OmniConfig) -> Dict[str, Tuple[int, ...]]:
    """State-dict key -> shape of the model for `config` (built on meta; works for the full size)."""
    model = build_model(config, "meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _rebuild_computed_buffers(model: OmniModel, device: torch.device) -> None:
    """Rotary embeddings hold computed (not stored) inv_freq buffers: rebuild them for real, in
    float32, from their config."""
    rotary = [(name, mod) for name, mod in model.named_modules()
              if "inv_freq" in dict(mod.named_buffers(recurse=False)) and hasattr(mod, "config")]
    for name, mod in rotary:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, type(mod)(mod.config).to(device))


def _materialize(model: OmniModel, device: torch.device) -> OmniModel:
    """Allocate storage for a meta model and rebuild its computed (non-stored) buffers."""
    model = model.to_empty(device=device)
    _rebuild_computed_buffers(model, device)
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
    index = folder / INDEX_NAME
    _require(index, "weight index")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise ValueError("weight_map must map tensor names to shard file names")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"cannot read {index}: {e}") from e
    for shard in sorted(set(weight_map.values())):
        if "/" in shard or "\\" in shard or not shard.endswith(".safetensors"):
            raise CheckpointError(f"{index} names an unsupported shard {shard!r} (safetensors only)")
        if not (folder / shard).is_file():
            raise CheckpointError(f"weight shard {shard} is missing: {index} lists it for "
                                  f"{sum(v == shard for v in weight_map.values())} tensors, but "
                                  f"{folder / shard} does not exist (an incomplete copy of the checkpoint?)")
    return weight_map


def read_shard_header(path) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """Tensor name -> (safetensors dtype name, shape) from a shard's header, after checking that the
    file is as long as its header says. A ValueError says what is wrong."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"truncated: {size} bytes, shorter than a safetensors header")
        n = struct.unpack("<Q", head)[0]
        if n > _MAX_HEADER_BYTES or 8 + n > size:
            raise ValueError(f"truncated or not safetensors: {size} bytes, its first 8 bytes announce a "
                             f"header of {n} bytes")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"corrupt header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("corrupt header (not a JSON object)")
    header.pop("__metadata__", None)
    out, end = {}, 0
    try:
        for name, info in header.items():
            out[name] = (str(info["dtype"]), tuple(int(d) for d in info["shape"]))
            end = max(end, int(info["data_offsets"][1]))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"corrupt header entry ({type(e).__name__}: {e})") from None
    if size != 8 + n + end:
        what = "truncated" if size < 8 + n + end else "longer than its header says"
        raise ValueError(f"{what}: {size} bytes, its header describes {8 + n + end}")
    return out


def _check_shards(folder: Path, weight_map: Dict[str, str], expected: Dict[str, Tuple[int, ...]]) -> None:
    """Refuse, before any weight is read, an index that does not list the model's tensors and a
    shard that is truncated, holds other tensors than the index says or holds mis-shaped ones; the
    message names the shard file and the index that lists it."""
    index = folder / INDEX_NAME
    missing = [k for k in expected if k not in weight_map]
    unexpected = [k for k in weight_map if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_summarize(missing)}, which no shard lists")
        if unexpected:
            parts.append(f"unexpected keys: {_summarize(unexpected)}, which the model has not")
        raise CheckpointError(f"{index} does not match the model of {folder / 'config.json'}: " + "; ".join(parts))
    by_shard: Dict[str, List[str]] = {}
    for k, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(k)
    for shard in sorted(by_shard):
        where = f"weight shard {folder / shard} (listed in {index})"
        try:
            header = read_shard_header(folder / shard)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{where} cannot be used: {e}") from None
        absent = [k for k in by_shard[shard] if k not in header]
        unlisted = [k for k in header if k not in weight_map]
        if absent or unlisted:
            parts = ([f"lacks {_summarize(absent)}, which the index puts in it"] if absent else []) + \
                    ([f"holds {_summarize(unlisted)}, which the index does not list"] if unlisted else [])
            raise CheckpointError(f"{where} does not hold what the index says: " + "; ".join(parts)
                                  + " (a shard of another checkpoint?)")
        mis_shaped = [f"{k} {header[k][1]} != expected {expected[k]}" for k in by_shard[shard]
                      if header[k][1] != expected[k]]
        if mis_shaped:
            raise CheckpointError(f"{where} does not match the model: mis-shaped keys: {_summarize(mis_shaped)}")
        bad_dtype = [f"{k} {header[k][0]}" for k in by_shard[shard] if header[k][0] not in SHARD_DTYPES]
        if bad_dtype:
            raise CheckpointError(f"{where}: unsupported dtypes (not {', '.join(SHARD_DTYPES)}): "
                                  f"{_summarize(bad_dtype)}")


def _open_weights(folder: Path, weight_map: Dict[str, str], dtype: torch.dtype,
                  device: torch.device) -> Dict[str, torch.Tensor]:
    """Every tensor the index names: a view of its memory-mapped shard where dtype and device
    allow, else converted (copied) to `dtype` on `device`."""
    by_shard: Dict[str, List[str]] = {}
    for k, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(k)
    state: Dict[str, torch.Tensor] = {}
    for shard in sorted(by_shard):
        try:
            with safe_open(str(folder / shard), framework="pt", device="cpu") as f:
                for k in by_shard[shard]:
                    t = f.get_tensor(k)
                    state[k] = t if (t.dtype == dtype and device.type == "cpu") else t.to(device=device, dtype=dtype)
        except Exception as e:  # safetensors raises its own error types for unreadable files
            raise CheckpointError(f"cannot read weight shard {folder / shard} (listed in "
                                  f"{folder / INDEX_NAME}): {e}") from e
    return state


def load_weights(config: OmniConfig, folder: Path, weight_map: Dict[str, str], dtype: torch.dtype,
                 device: torch.device) -> OmniModel:
    """The model for `config` with the weights `weight_map` places in the folder's shards assigned
    (no second copy in memory)."""
    model = build_model(config, "meta")
    _check_shards(folder, weight_map, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    model.load_state_dict(_open_weights(folder, weight_map, dtype, device), strict=True, assign=True)
    _rebuild_computed_buffers(model, device)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left without values after loading: {_summarize(left)}")
    return model


def stored_dtype(folder: Path, weight_map: Dict[str, str]) -> torch.dtype:
    """The dtype the folder's shards store (the first shard's most common one)."""
    first = folder / sorted(set(weight_map.values()))[0]
    try:
        header = read_shard_header(first)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"weight shard {first}: {e}") from None
    names = [d for d, _ in header.values() if d in SHARD_DTYPES]
    if not names:
        raise CheckpointError(f"weight shard {first}: no tensor of {', '.join(SHARD_DTYPES)}")
    return SHARD_DTYPES[max(set(names), key=names.count)]


def load_model(path, device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype] = "float32") -> OmniModel:
    """Load a checkpoint folder into an eval-mode OmniModel with tokenizer and token2wav attached.
    `dtype="auto"` keeps the shards' own dtype (on the CPU every weight is then a view of its
    memory-mapped shard). `model.load_seconds` records how long it took."""
    from .tokenizer import load_tokenizer, resolve_special_ids

    started = time.perf_counter()
    device = check_device(device)
    folder = Path(path)
    config = read_config(folder)
    if isinstance(dtype, str) and dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; one of {sorted(_DTYPES)} or 'auto'")
        dtype = _DTYPES[dtype]
    weight_map = _read_index(folder)
    if dtype == "auto":
        dtype = stored_dtype(folder, weight_map)
    _require(folder / "tokenizer.json", "tokenizer (tokenizer.json)")
    t2w_dir = folder / ASSET_DIR
    try:
        check_layout(t2w_dir)
    except AssetError as e:
        raise CheckpointError(f"waveform stage: {e}") from e

    model = load_weights(config, folder, weight_map, dtype, device)
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
    model.load_seconds = time.perf_counter() - started
    return model


def default_voice(folder) -> "Path | None":
    """The checkpoint's default reference voice file, where it has one."""
    path = Path(folder) / DEFAULT_VOICE
    return path if path.is_file() else None
