"""`TorchCompute`: the session's `Compute` (omni_ros.session.compute) in eager PyTorch.

It runs the graph modules of omni_ros.runtime.graphs eagerly, and the LLM and speech decoder
through transformers with an in-place growing cache (the fastest eager path; a test holds it
equal to the explicit-KV graphs that onnxruntime and TensorRT run, omni_ros.runtime.exported_compute).
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers import DynamicCache

from . import graphs as G
from .kv import StackedKV, rope_delta


class TorchCompute:
    """Eager PyTorch on a loaded OmniModel (CPU or CUDA)."""

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
