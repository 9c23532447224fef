"""What a session asks of an execution backend: the `Compute` protocol.

A session never touches model weights: it calls a `Compute` for each graph of
omni_ros.runtime.graphs and keeps the caches that object hands back. The backends
(omni_ros.runtime: eager torch, onnxruntime, TensorRT) implement it; this layer only declares it.
Tensors cross the interface as torch tensors on `device`. Caches are opaque to the session except
for `get_seq_length()`; `llm_drop_span` cuts a span of positions out of the LLM cache and
re-rotates the keys after it (the long-session context policy).
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, Tuple

import numpy as np
import torch

from omni_ros.model.token2wav.flow import FlowCaches


class SequenceCache(Protocol):
    """A backend's cache, as the session sees it."""

    def get_seq_length(self) -> int: ...


class WaveformCompute(Protocol):
    """The waveform stage's graphs (shapes: omni_ros.runtime.graphs, `t2w_*`)."""

    t2w_lookahead: int        # lookahead codes the flow encoder reads past a chunk (3 as released)

    def t2w_prompt(self, voice) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def t2w_speaker(self, embedding: torch.Tensor) -> torch.Tensor: ...
    def t2w_empty_flow_caches(self, steps: int) -> FlowCaches: ...
    def t2w_encoder(self, codes: torch.Tensor, last_chunk: bool, cnn_cache: torch.Tensor,
                    att_cache: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def t2w_estimator_step(self, x, mu_in, speaker_in, cond_in, t, dt, cnn_cache, keys, values
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def t2w_vocoder_random(self, frames: int, generator: torch.Generator) -> Tuple[torch.Tensor, ...]: ...
    def t2w_vocoder(self, mel, cache_source, *random) -> Tuple[torch.Tensor, torch.Tensor]: ...


class Compute(Protocol):
    """What a backend gives a session."""

    name: str
    config: object            # omni_ros.model.config.OmniConfig
    tokenizer: object
    special: object           # omni_ros.model.tokenizer.SpecialIds
    device: torch.device
    dtype: torch.dtype
    waveform: WaveformCompute
    default_voice: object     # the checkpoint's default reference voice file, or None

    def embed_tokens(self, ids: Sequence[int]) -> torch.Tensor: ...
    def vision(self, image: np.ndarray) -> torch.Tensor: ...
    def audio(self, mel: torch.Tensor, keep_index: torch.Tensor, position_ids: torch.Tensor,
              attention_bias: torch.Tensor, cache: Optional[SequenceCache]
              ) -> Tuple[torch.Tensor, SequenceCache]: ...
    def new_llm_cache(self) -> SequenceCache: ...
    def llm_step(self, embeds: torch.Tensor, position: int, cache: SequenceCache,
                 need_logits: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]: ...
    def llm_drop_span(self, cache: SequenceCache, start: int, end: int) -> None: ...
    def tts_condition(self, text_ids: torch.Tensor, hidden: torch.Tensor,
                      semantic_mask: torch.Tensor) -> torch.Tensor: ...
    def tts_code_embed(self, codes: Sequence[int]) -> torch.Tensor: ...
    def new_tts_cache(self) -> SequenceCache: ...
    def tts_step(self, embeds: torch.Tensor, position: int, cache: SequenceCache) -> torch.Tensor: ...
