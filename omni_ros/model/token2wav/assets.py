"""The files of a checkpoint's `assets/token2wav/` folder: which layout it is, `flow.yaml` read as data,
and weight files matched key for key.

The released MiniCPM-o 4.5 folder (the layout of minicpmo-utils 1.0.5/1.0.6) holds five files:
`flow.yaml`, `flow.pt`, `hift.pt`, `campplus.onnx` and `speech_tokenizer_v2_25hz.onnx`. `flow.yaml` is
a hyperpyyaml file whose `!new:cosyvoice2.*` tags name the classes to build; here it is parsed with a
safe YAML loader into dataclasses, so a checkpoint can never run code: an unknown tag or key stops
loading with its name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch
import yaml

from .encoder import EncoderConfig
from .estimator import DiTConfig

ASSET_DIR = "assets/token2wav"
FLOW_YAML = "flow.yaml"
FLOW_WEIGHTS = "flow.pt"
HIFT_WEIGHTS = "hift.pt"
SPEAKER_ONNX = "campplus.onnx"
TOKENIZER_ONNX = "speech_tokenizer_v2_25hz.onnx"
RELEASED_FILES = (FLOW_YAML, FLOW_WEIGHTS, HIFT_WEIGHTS, SPEAKER_ONNX, TOKENIZER_ONNX)
# minicpmo-utils 1.0.7 adds these (CosyVoice3's causal HiFT streams instead of the released HiFT)
CAUSAL_VOCODER_FILES = ("config.yaml", "hift_original.pt")
# The default voice the official demo speaks with, where a checkpoint folder carries it.
DEFAULT_VOICE = "assets/ref_audio/ref_minicpm_signature.wav"

TAG_FLOW = "!new:cosyvoice2.flow.flow.CausalMaskedDiffWithXvec"
TAG_ENCODER = "!new:cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2"
TAG_CFM = "!new:cosyvoice2.flow.flow_matching.CausalConditionalCFM"
TAG_DIT = "!new:cosyvoice2.flow.decoder_dit.DiT"


class AssetError(ValueError):
    """A token2wav folder that cannot be used, with the reason and the file it concerns."""


@dataclass
class CFMConfig:
    inference_cfg_rate: float = 0.7
    estimator: DiTConfig = field(default_factory=DiTConfig)


@dataclass
class FlowConfig:
    """`flow:` of flow.yaml (CausalMaskedDiffWithXvec); released values as defaults."""
    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    output_type: str = "mel"
    vocab_size: int = 6561
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: CFMConfig = field(default_factory=CFMConfig)

    def __post_init__(self):
        if self.output_type != "mel":
            raise AssetError(f"flow.yaml: flow.output_type {self.output_type!r} is not supported (only 'mel')")


# tag -> (dataclass, the keys holding nested components and the tag each must carry)
_COMPONENTS = {
    TAG_FLOW: (FlowConfig, {"encoder": TAG_ENCODER, "decoder": TAG_CFM}),
    TAG_ENCODER: (EncoderConfig, {}),
    TAG_CFM: (CFMConfig, {"estimator": TAG_DIT}),
    TAG_DIT: (DiTConfig, {}),
}


class _Tagged(dict):
    """A mapping node read under one of the known `!new:` tags."""

    def __init__(self, tag: str, values: dict):
        super().__init__(values)
        self.tag = tag


class _Reference(str):
    """`!ref <name>`: hyperpyyaml's reference to a top-level value (resolved as data)."""


class _FlowYamlLoader(yaml.SafeLoader):
    """SafeLoader that knows the four component tags and `!ref`; every other tag is refused."""


def _construct_component(loader, node):
    if not isinstance(node, yaml.MappingNode):
        raise AssetError(f"flow.yaml: {node.tag} must be a mapping (line {node.start_mark.line + 1})")
    return _Tagged(node.tag, loader.construct_mapping(node, deep=True))


def _construct_reference(loader, node):
    return _Reference(loader.construct_scalar(node))


def _refuse_tag(loader, suffix, node):
    raise AssetError(f"flow.yaml: unknown tag {node.tag!r} (line {node.start_mark.line + 1}); known tags: "
                     + ", ".join(sorted(_COMPONENTS)) + ", !ref")


for _tag in _COMPONENTS:
    _FlowYamlLoader.add_constructor(_tag, _construct_component)
_FlowYamlLoader.add_constructor("!ref", _construct_reference)
_FlowYamlLoader.add_multi_constructor("!", _refuse_tag)
_FlowYamlLoader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse_tag)


def _resolve(value, top: dict, path: str):
    if isinstance(value, _Reference):
        name = value.strip()
        if not (name.startswith("<") and name.endswith(">")) or name[1:-1] not in top:
            raise AssetError(f"flow.yaml: {path}: !ref {value} names no top-level value")
        return top[name[1:-1]]
    return value


def _build(node, expected_tag: str, top: dict, path: str, used_refs: set):
    if not isinstance(node, _Tagged):
        raise AssetError(f"flow.yaml: {path} must be a {expected_tag} mapping")
    if node.tag != expected_tag:
        raise AssetError(f"flow.yaml: {path} is {node.tag}, expected {expected_tag}")
    cls, nested = _COMPONENTS[node.tag]
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in node.items():
        if key not in known:
            raise AssetError(f"flow.yaml: unknown key {path}.{key} (known: {', '.join(sorted(known))})")
        if isinstance(value, _Reference):
            used_refs.add(value.strip()[1:-1])
        value = _resolve(value, top, f"{path}.{key}")
        if key in nested:
            value = _build(value, nested[key], top, f"{path}.{key}", used_refs)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except AssetError:
        raise
    except (TypeError, ValueError) as e:
        raise AssetError(f"flow.yaml: {path}: {e}") from e


def parse_flow_yaml(text: str) -> FlowConfig:
    """flow.yaml text -> FlowConfig. Only data is built: no tag can construct an arbitrary object."""
    try:
        root = yaml.load(text, Loader=_FlowYamlLoader)
    except yaml.YAMLError as e:
        raise AssetError(f"flow.yaml: not valid YAML: {e}") from e
    if not isinstance(root, dict) or "flow" not in root:
        raise AssetError("flow.yaml: no top-level 'flow:' entry")
    used: set = set()
    config = _build(root["flow"], TAG_FLOW, root, "flow", used)
    extra = sorted(k for k in root if k != "flow" and k not in used)
    if extra:
        raise AssetError(f"flow.yaml: unknown top-level key(s) {', '.join(map(str, extra))}")
    return config


def dump_flow_yaml(config: FlowConfig) -> str:
    """FlowConfig -> flow.yaml text in the released form (the tags the official loader resolves)."""
    def block(obj, tag: str, indent: int) -> List[str]:
        pad = " " * indent
        lines = []
        _, nested = _COMPONENTS[tag]
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name in nested:
                lines.append(f"{pad}{f.name}: {nested[f.name]}")
                lines += block(value, nested[f.name], indent + 4)
            else:
                lines.append(f"{pad}{f.name}: {yaml.safe_dump(value, default_flow_style=True).strip()}"
                             .replace("\n...", ""))
        return lines
    return "\n".join([f"flow: {TAG_FLOW}"] + block(config, TAG_FLOW, 4)) + "\n"


def read_flow_yaml(folder: Path) -> FlowConfig:
    return parse_flow_yaml((Path(folder) / FLOW_YAML).read_text(encoding="utf-8"))


def check_layout(folder: Path) -> None:
    """Refuse a folder that is not the released (minicpmo-utils 1.0.6) token2wav layout, saying which
    layout it is and what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AssetError(f"{folder}: no token2wav folder (a MiniCPM-o 4.5 checkpoint has {ASSET_DIR}/ with "
                         + ", ".join(RELEASED_FILES) + ")")
    if all((folder / n).is_file() for n in CAUSAL_VOCODER_FILES):
        raise AssetError(
            f"{folder} is the minicpmo-utils 1.0.7 layout (config.yaml + hift_original.pt: CosyVoice3's causal "
            "HiFT streams the speech), which omni_ros does not run. omni_ros runs the released layout "
            "(minicpmo-utils 1.0.5/1.0.6): " + ", ".join(RELEASED_FILES) + ". That folder's hift_original.pt "
            "is the released vocoder: a copy of the folder without config.yaml and with hift_original.pt as "
            "hift.pt is the released layout.")
    if (folder / "config.json").is_file() and (folder / "token2wav.safetensors").is_file():
        raise AssetError(f"{folder} holds an earlier omni_ros test decoder (config.json + token2wav.safetensors), "
                         "not the released Step-Audio2 token2wav: write the checkpoint again with "
                         "omni_ros_tiny_checkpoint")
    missing = [n for n in RELEASED_FILES if not (folder / n).is_file()]
    if missing:
        raise AssetError(f"{folder}: missing {', '.join(missing)} (the released token2wav layout has "
                         + ", ".join(RELEASED_FILES) + ")")


def load_torch_weights(path: Path, strip_prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """A .pt state dict read with weights_only=True (no pickle code runs)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise AssetError(f"{path}: cannot read as a torch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AssetError(f"{path}: not a state dict of tensors")
    if strip_prefix:
        state = {(k[len(strip_prefix):] if k.startswith(strip_prefix) else k): v for k, v in state.items()}
    return dict(state)


def match_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module` key for key; missing, unexpected and mis-shaped keys are named."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
                 for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = ", ".join(keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "")
            problems.append(f"{name}: {shown}")
    if problems:
        raise AssetError(f"{source} does not match the model built from flow.yaml: " + "; ".join(problems))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
