"""The flow model: speech codes (25/s) -> 80-bin mel frames (50/s), conditioned on a speaker.

Key names follow the released `flow.pt`: `input_embedding`, `spk_embed_affine_layer`, `encoder.*`,
`encoder_proj`, `decoder.estimator.*`. Streaming keeps four caches (`FlowCaches`), in the layouts
of the released implementation so that they can be trimmed the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .assets import FlowConfig
from .encoder import UpsampleConformerEncoder
from .estimator import CausalConditionalCFM, DiT


@dataclass
class FlowCaches:
    """Everything the flow carries from one chunk to the next (all tensors, no Python state)."""
    encoder_cnn: torch.Tensor       # (1, C, 2 + 2 * up_stride)
    encoder_att: torch.Tensor       # (blocks + up_blocks, 1, heads, 2 * t, 2 * d_k)
    estimator_cnn: torch.Tensor     # (steps, depth, 2, C, k)
    estimator_keys: torch.Tensor    # (steps, depth, 2, heads, t, head_dim), newest chunk first
    estimator_values: torch.Tensor  # (steps, depth, 2, heads, t, head_dim)

    def clone(self) -> "FlowCaches":
        return FlowCaches(*(t.clone() for t in (self.encoder_cnn, self.encoder_att, self.estimator_cnn,
                                                   self.estimator_keys, self.estimator_values)))

    def trim_encoder(self, keep_head: int, keep_tail: int = 100) -> None:
        """Bound the encoder's attention cache to its first `keep_head` positions and its last
        `keep_tail`, as the released stage does after every call (the estimator's caches are placed
        already trimmed: `stream.trimmed_spans`)."""
        enc = self.encoder_att
        if enc.shape[3] > keep_head + keep_tail:
            self.encoder_att = torch.cat([enc[:, :, :, :keep_head], enc[:, :, :, -keep_tail:]], dim=3)


class FlowModel(nn.Module):
    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.encoder = UpsampleConformerEncoder(config.encoder)
        self.encoder_proj = nn.Linear(config.encoder.output_size, config.output_size)
        self.decoder = CausalConditionalCFM(DiT(config.decoder.estimator), config.decoder.inference_cfg_rate)

    @property
    def pre_lookahead_len(self) -> int:
        return int(self.config.encoder.pre_lookahead_len)

    @property
    def up_rate(self) -> int:
        return int(self.config.encoder.up_stride)

    def speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        """CAM++ embedding [1, 192] -> the speaker condition [1, 80]."""
        return self.spk_embed_affine_layer(F.normalize(embedding, dim=1))

    def encode(self, tokens: torch.Tensor, last_chunk: bool, cnn_cache: Optional[torch.Tensor],
               att_cache: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """codes [1, T] (ending with the lookahead codes unless `last_chunk`) -> mu [1, 80, frames]."""
        h, cnn_cache, att_cache = self.encoder.forward_chunk(self.input_embedding(tokens), last_chunk,
                                                             cnn_cache, att_cache)
        return self.encoder_proj(h).transpose(1, 2).contiguous(), cnn_cache, att_cache
