"""Speech-token decoder (`tts.*`): a Llama backbone conditioned on the unit's text tokens and the
LLM's hidden states. How a session draws 25 speech codes per 1 s unit from it, with a cache kept
for the turn, is omni_ros.session.speech.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from transformers import LlamaModel

from .audio import MultiModalProjector
from .config import OmniConfig



def semantic_norm(sem: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows. In float16 the norm is taken in float32: F.normalize's eps (1e-12) is
    zero in float16, and a zero row would give 0/0. Other dtypes as the released model computes."""
    if sem.dtype == torch.float16:
        return F.normalize(sem.float(), p=2, dim=-1).to(sem.dtype)
    return F.normalize(sem, p=2, dim=-1)

class MiniCPMTTS(nn.Module):
    """Keys: `emb_text`, `model.*` (LlamaModel), `projector_spk`, `projector_semantic`,
    `emb_code.0`, `head_code.0.parametrizations.weight.original0/1` (weight norm)."""

    def __init__(self, config: OmniConfig):
        super().__init__()
        t = config.tts_config
        self.config = t
        self.emb_text = nn.Embedding(t.num_text_tokens, t.hidden_size)                 # [152064, H]
        self.model = LlamaModel(config.llama_tts_config())                              # embed_tokens unused
        self.projector_spk = MultiModalProjector(t.llm_dim, t.hidden_size)
        self.projector_semantic = MultiModalProjector(t.llm_dim, t.hidden_size)
        self.emb_code = nn.ModuleList([nn.Embedding(t.num_audio_tokens, t.hidden_size)
                                       for _ in range(t.num_vq)])                        # [6562, H]
        self.head_code = nn.ModuleList([weight_norm(nn.Linear(t.hidden_size, t.num_audio_tokens,
                                                              bias=False), name="weight")
                                        for _ in range(t.num_vq)])                       # g [6562,1], v [6562,H]

    def condition(self, text_ids: torch.Tensor, hidden: torch.Tensor, text_eos: bool = False) -> torch.Tensor:
        """text_ids [n], hidden [n, llm_dim] -> [n(+1)+1, H]: emb_text(id) + L2norm(projector_semantic(h))
        per fed token of the unit, then (turn-based, last chunk) the text-EOS embedding, then the
        audio-BOS embedding (emb_text rows text_eos_token_id / audio_bos_token_id)."""
        dev = self.emb_text.weight.device
        parts = []
        if text_ids.numel() > 0:
            sem = semantic_norm(self.projector_semantic(hidden.to(self.emb_text.weight.dtype)))
            parts.append(self.emb_text(text_ids.to(dev)) + sem)
        if text_eos:
            parts.append(self.emb_text(torch.tensor([self.config.text_eos_token_id], device=dev)))
        parts.append(self.emb_text(torch.tensor([self.config.audio_bos_token_id], device=dev)))
        return torch.cat(parts, dim=0)

    def step(self, embeds: torch.Tensor, position: int, cache,
             head_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """embeds [n, H] at positions position.. appended to `cache` -> logits of the last
        position [num_audio_tokens]. `head_weight`: the code head's weight-normed weight computed
        beforehand (it is fixed at inference), else it is computed in this call."""
        n = embeds.shape[0]
        pos = torch.arange(position, position + n, device=embeds.device)[None]
        out = self.model(inputs_embeds=embeds[None], position_ids=pos, cache=cache, use_cache=True)
        last = out.last_hidden_state[0, -1]
        if head_weight is not None:
            return F.linear(last, head_weight).float()
        return self.head_code[0](last).float()
