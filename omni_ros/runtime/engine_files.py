"""Folders of exported graphs / built engines and their manifests (onnxruntime and TensorRT).

`omni_ros_build_engines` writes a folder of files (one per graph of omni_ros.runtime.graphs) and a
`manifest.json` that says what they were built from: the checkpoint's fingerprint, the tool
versions, the GPU (TensorRT) and, per component, the file, its precision, its shape profile and
its sha256. A backend calls `check_manifest` before it loads anything and refuses a folder that
does not match, with a message naming what differs and the command that rebuilds it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from omni_ros.runtime.registry import BackendError

MANIFEST_NAME = "manifest.json"
FORMATS = ("onnx", "tensorrt")
BACKEND_OF_FORMAT = {"onnx": "onnxruntime", "tensorrt": "tensorrt"}
# Files larger than this are checked by size only (hashing GBs at every start would cost seconds).
SHA_CHECK_LIMIT = 512 * 1024 * 1024
_MIB = 1024 * 1024
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")


class EngineMismatch(BackendError):
    """An engine folder does not match the checkpoint, the tools or the GPU; rebuild it."""


@dataclass
class EngineEntry:
    component: str                   # graph name (omni_ros.runtime.graphs.GRAPHS)
    file: str                        # relative to the engine folder
    precision: str                   # fp32 | fp16 | bf16 | ...
    profile: Dict[str, Dict[str, List[int]]] = field(default_factory=dict)  # input -> min/opt/max
    sha256: str = ""
    size: int = 0                    # bytes of `file`; 0 = not recorded
    data_file: str = ""              # ONNX external weights next to `file` ("" = none)
    data_size: int = 0


@dataclass
class Manifest:
    format: str                      # "onnx" | "tensorrt"
    checkpoint: str                  # the checkpoint folder it was built from (informative)
    checkpoint_hash: str             # checkpoint_fingerprint() of that folder
    created: str                     # ISO 8601
    versions: Dict[str, Any] = field(default_factory=dict)   # torch, onnx, opset, tensorrt, ...
    gpu: Optional[Dict[str, Any]] = None                     # {"name", "compute_capability"}
    components: Dict[str, EngineEntry] = field(default_factory=dict)
    notes: Dict[str, str] = field(default_factory=dict)      # e.g. why a component was skipped


# --- fingerprints ---------------------------------------------------------------------------------
def file_sha256(path, chunk: int = 4 * _MIB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _cheap_file_digest(h, path: Path) -> None:
    """Size, safetensors header (when it is one) and the first and last MiB of a large file."""
    size = path.stat().st_size
    h.update(f"{path.name}:{size}\n".encode())
    with open(path, "rb") as f:
        if path.suffix == ".safetensors" and size >= 8:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if 0 < header_len <= min(size - 8, 100 * _MIB):
                h.update(f.read(header_len))
        f.seek(0)
        h.update(hashlib.sha256(f.read(_MIB)).digest())
        f.seek(max(0, size - _MIB))
        h.update(hashlib.sha256(f.read(_MIB)).digest())


def _shards(folder: Path) -> List[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            return [folder / n for n in names]
        except (ValueError, KeyError):
            pass
    return sorted(folder.glob("*.safetensors"))


def checkpoint_fingerprint(model_path) -> str:
    """sha256 identifying a checkpoint folder, cheap enough to compute at every start.

    Covers, by content: config.json, model.safetensors.index.json, the tokenizer files and the
    small files under assets/token2wav (files over 64 MiB there are sampled like the shards).
    For every weight shard it covers the size, the safetensors header (every tensor's name,
    dtype, shape and offsets) and the sha256 of the first and last MiB, not the whole file: about
    2 MiB read per shard, so a 16 GB checkpoint is fingerprinted in well under a second. A shard
    rewritten with the same tensor layout and changes only in its middle bytes is not detected;
    a different checkpoint (other weights, config, tokenizer or shard layout) is.
    """
    folder = Path(model_path)
    h = hashlib.sha256(b"omni_ros checkpoint fingerprint v1\n")

    def whole(path: Path, label: str) -> None:
        if path.is_file():
            h.update(f"{label}:{path.stat().st_size}\n".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())

    whole(folder / "config.json", "config.json")
    whole(folder / "model.safetensors.index.json", "index")
    for name in _TOKENIZER_FILES:
        whole(folder / name, name)
    t2w = folder / "assets" / "token2wav"
    if t2w.is_dir():
        for path in sorted(p for p in t2w.rglob("*") if p.is_file()):
            label = "t2w/" + path.relative_to(t2w).as_posix()
            if path.stat().st_size > 64 * _MIB:
                h.update(label.encode())
                _cheap_file_digest(h, path)
            else:
                whole(path, label)
    for shard in _shards(folder):
        if shard.is_file():
            _cheap_file_digest(h, shard)
        else:
            h.update(f"{shard.name}:missing\n".encode())
    return h.hexdigest()


def entry_for_file(folder, component: str, file: str, precision: str,
                   profile: Optional[Dict[str, Dict[str, List[int]]]] = None,
                   data_file: str = "") -> EngineEntry:
    """An EngineEntry for a file already written in `folder` (size and sha256 filled in)."""
    path = Path(folder) / file
    data_size = (Path(folder) / data_file).stat().st_size if data_file else 0
    return EngineEntry(component, file, precision, dict(profile or {}), file_sha256(path),
                       path.stat().st_size, data_file, data_size)


# --- reading and writing ----------------------------------------------------------------------------
def write_manifest(folder, manifest: Manifest) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(manifest), indent=2, sort_keys=True) + "\n",
                   encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(folder) -> Manifest:
    """The manifest of `folder`; FileNotFoundError if none, ValueError if unreadable."""
    path = Path(folder) / MANIFEST_NAME
    raw = json.loads(path.read_text(encoding="utf-8"))
    try:
        known = {f.name for f in dataclasses.fields(EngineEntry)}
        components = {name: EngineEntry(**{k: v for k, v in entry.items() if k in known})
                      for name, entry in raw.get("components", {}).items()}
        return Manifest(format=raw["format"], checkpoint=raw["checkpoint"],
                        checkpoint_hash=raw["checkpoint_hash"], created=raw["created"],
                        versions=dict(raw.get("versions") or {}), gpu=raw.get("gpu"),
                        components=components, notes=dict(raw.get("notes") or {}))
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not an omni_ros manifest ({error})") from error


def rebuild_command(model_path, fmt: str, folder) -> str:
    backend = BACKEND_OF_FORMAT.get(fmt, fmt)
    return f"omni_ros_build_engines {model_path} --backend {backend} --out {folder}"


def check_manifest(folder, model_path, fmt: str, components: Iterable[str],
                   versions_required: Optional[Dict[str, Any]] = None,
                   gpu: Optional[Dict[str, Any]] = None) -> Manifest:
    """The manifest of `folder` if it was built for this checkpoint, format, components, versions
    and GPU; otherwise EngineMismatch with what differs and the exact rebuild command.

    Component files are checked for presence and size, and by sha256 when not larger than
    SHA_CHECK_LIMIT (512 MiB; larger ones, e.g. a full-size LLM engine, by size only so that a
    start does not hash gigabytes). `gpu`: {"name", "compute_capability"} of the GPU that will run
    the engines (TensorRT); None skips the check."""
    folder = Path(folder)
    fix = f"rebuild with: {rebuild_command(model_path, fmt, folder)}"

    def refuse(what: str) -> EngineMismatch:
        return EngineMismatch(f"engine folder {folder}: {what}; {fix}")

    if not folder.is_dir():
        raise refuse("does not exist")
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        raise refuse(f"has no {MANIFEST_NAME}") from None
    except ValueError as error:
        raise refuse(f"unreadable {MANIFEST_NAME} ({error})") from None
    if manifest.format != fmt:
        raise refuse(f"holds {manifest.format!r} files, this backend needs {fmt!r}")
    current = checkpoint_fingerprint(model_path)
    if manifest.checkpoint_hash != current:
        raise refuse(f"was built from another checkpoint ({manifest.checkpoint}, fingerprint "
                     f"{manifest.checkpoint_hash[:12]}) than {model_path} (fingerprint {current[:12]})")
    for name, wanted in (versions_required or {}).items():
        have = manifest.versions.get(name)
        if str(have) != str(wanted):
            raise refuse(f"was built with {name} {have}, this machine has {name} {wanted}")
    if gpu is not None:
        built = manifest.gpu or {}
        for key in ("name", "compute_capability"):
            if key in gpu and str(built.get(key)) != str(gpu[key]):
                raise refuse(f"was built for GPU {built.get('name')} (compute capability "
                             f"{built.get('compute_capability')}), this GPU is {gpu.get('name')} "
                             f"(compute capability {gpu.get('compute_capability')})")
    for name in components:
        entry = manifest.components.get(name)
        if entry is None:
            raise refuse(f"has no {name!r} component")
        path = folder / entry.file
        if not path.is_file():
            raise refuse(f"component {name!r}: {entry.file} is missing")
        size = path.stat().st_size
        if entry.size and size != entry.size:
            raise refuse(f"component {name!r}: {entry.file} has {size} bytes, the manifest says {entry.size}")
        if entry.sha256 and size <= SHA_CHECK_LIMIT and file_sha256(path) != entry.sha256:
            raise refuse(f"component {name!r}: {entry.file} differs from the one the manifest lists (sha256)")
        if entry.data_file:
            data = folder / entry.data_file
            if not data.is_file():
                raise refuse(f"component {name!r}: {entry.data_file} is missing")
            if entry.data_size and data.stat().st_size != entry.data_size:
                raise refuse(f"component {name!r}: {entry.data_file} has another size than the manifest says")
    return manifest
