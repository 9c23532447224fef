"""The compute interface a session drives, and its PyTorch implementation.

`OmniDuplexSession` never touches model weights: it calls a `Compute` object for each graph of
`omni_ros.runtime.graphs` and keeps the caches that object hands back. Backends differ only in
how they run the graphs: `TorchCompute` runs the graph modules eagerly (and the LLM and speech
decoder through transformers with an in-place growing cache, the fastest eager path; a test holds
it equal to the explicit-KV graphs), `OrtCompute` runs exported ONNX files in onnxruntime and
`TrtCompute` runs TensorRT engines. Tensors cross the interface as torch tensors on `device`.

Caches are opaque to the session except for `get_seq_length()`; `llm_drop_span` cuts a span of
positions out of the LLM cache and re-rotates the keys after it (the long-session context policy).
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from transformers import DynamicCache

from . import graphs as G


class StackedKV:
    """Keys and values of every layer as two tensors [L, 1, H, T, Dh] (explicit-KV backends)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values

    @classmethod
    def empty(cls, shape, dtype=torch.float32, device="cpu") -> "StackedKV":
        """No positions yet: `shape` with its length axis (3) at 0."""
        return cls(torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(shape, dtype=dtype, device=device))

    def get_seq_length(self) -> int:
        return int(self.keys.shape[3])

    def drop_span(self, start: int, end: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
        k, v = self.keys, self.values
        tail = k[:, :, :, end:].float()
        tail = (tail * cos.to(tail.device) + G.rotate_half(tail) * sin.to(tail.device)).to(k.dtype)
        self.keys = torch.cat([k[:, :, :, :start], tail], dim=3)
        self.values = torch.cat([v[:, :, :, :start], v[:, :, :, end:]], dim=3)


class Compute(Protocol):
    """What a backend gives a session. Shapes: see omni_ros.runtime.graphs."""

    name: str
    config: object            # OmniConfig
    tokenizer: object
    special: object           # SpecialIds
    device: torch.device
    dtype: torch.dtype
    waveform: object          # the waveform stage's graphs (omni_ros.model.token2wav.stream.WaveformCompute)
    default_voice: object     # the checkpoint's default reference voice file, or None

    def embed_tokens(self, ids: Sequence[int]) -> torch.Tensor: ...
    def vision(self, image: np.ndarray) -> torch.Tensor: ...
    def audio(self, mel: torch.Tensor, keep_index: torch.Tensor, position_ids: torch.Tensor,
              attention_bias: torch.Tensor, cache: Optional[StackedKV]) -> Tuple[torch.Tensor, StackedKV]: ...
    def new_llm_cache(self): ...
    def llm_step(self, embeds: torch.Tensor, position: int, cache,
                 need_logits: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]: ...
    def llm_drop_span(self, cache, start: int, end: int) -> None: ...
    def tts_condition(self, text_ids: torch.Tensor, hidden: torch.Tensor,
                      semantic_mask: torch.Tensor) -> torch.Tensor: ...
    def tts_code_embed(self, codes: Sequence[int]) -> torch.Tensor: ...
    def new_tts_cache(self): ...
    def tts_step(self, embeds: torch.Tensor, position: int, cache) -> torch.Tensor: ...


def rope_delta(config, delta: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [Dh] that rotate LLM keys back by `delta` positions."""
    return G.rope_rotation(config.head_dim, float(config.rope_theta), -delta)


class TorchCompute:
    """Eager PyTorch on the loaded OmniModel (CPU or CUDA)."""

    name = "torch"

    def __init__(self, model):
        if model.tokenizer is None or model.special is None:
            raise ValueError("model has no tokenizer attached; load it with omni_ros.model.loader.load_model")
        self.model = model
        self.config, self.tokenizer, self.special = model.config, model.tokenizer, model.special
        self.graphs = {name: spec.build(model).eval() for name, spec in G.GRAPHS.items()
                       if name not in ("llm_step", "lm_head", "tts_step") and not name.startswith("t2w_")}
        self._code_head: Optional[torch.Tensor] = None
        self.waveform = model.token2wav               # Token2WavModel: eager torch over its own modules
        self.default_voice = model.default_voice

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def embed_tokens(self, ids):
        return self.model.embed_tokens(ids)

    def vision(self, image):
        inputs = G.vision_inputs(image, self.config)
        return self.graphs["vision"](**{k: v.to(self.device) for k, v in inputs.items()})

    def audio(self, mel, keep_index, position_ids, attention_bias, cache):
        if cache is None:
            cache = StackedKV.empty(G.audio_kv_shape(self.config, 0), self.dtype, self.device)
        dev = self.device
        embeds, keys, values = self.graphs["audio"](mel.to(dev), keep_index.to(dev), position_ids.to(dev),
                                                    attention_bias.to(dev), cache.keys, cache.values)
        return embeds, StackedKV(keys, values)

    def new_llm_cache(self):
        return DynamicCache()

    def llm_step(self, embeds, position, cache, need_logits=True):
        return self.model.llm_step(embeds, position, cache, need_logits=need_logits)

    def llm_drop_span(self, cache, start, end):
        cos, sin = rope_delta(self.config, end - start)
        cos, sin = cos.to(self.device), sin.to(self.device)
        for layer in cache.layers:
            k, v = layer.keys, layer.values                                      # [B, H, T, Dh]
            tail = k[:, :, end:].float()
            tail = (tail * cos + G.rotate_half(tail) * sin).to(k.dtype)
            layer.keys = torch.cat([k[:, :, :start], tail], dim=2)
            layer.values = torch.cat([v[:, :, :start], v[:, :, end:]], dim=2)

    def tts_condition(self, text_ids, hidden, semantic_mask):
        dev = self.device
        return self.graphs["tts_condition"](text_ids.to(dev), hidden.to(dev), semantic_mask.to(dev))

    def tts_code_embed(self, codes):
        return self.graphs["tts_code_embed"](torch.as_tensor(list(codes), dtype=torch.long, device=self.device))

    def new_tts_cache(self):
        return DynamicCache()

    def tts_step(self, embeds, position, cache):
        if self._code_head is None:        # weight norm g * v / |v|, fixed at inference: once
            with torch.no_grad():
                self._code_head = self.model.tts.head_code[0].weight.detach()
        return self.model.tts.step(embeds, position, cache, head_weight=self._code_head)


def as_compute(model_or_compute) -> "Compute":
    """A Compute for a loaded OmniModel (wrapped in TorchCompute) or a Compute as it is."""
    from omni_ros.model.omni import OmniModel

    if isinstance(model_or_compute, OmniModel):
        return TorchCompute(model_or_compute)
    return model_or_compute

