"""Speech-token decoder (`tts.*`): a Llama backbone conditioned on the unit's text tokens and the
LLM's hidden states, drawing 25 speech codes per second with a KV cache kept for the turn.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from transformers import DynamicCache, LlamaModel

from .audio import MultiModalProjector
from .config import OmniConfig


@dataclass
class TTSTurnState:
    """Decoder state for one speaking turn; dropped at end of turn."""

    cache: Optional[DynamicCache] = None
    position: int = 0                       # next position id in the TTS sequence
    pending_code: Optional[int] = None      # last drawn code, not yet fed to the decoder
    recent_codes: List[int] = field(default_factory=list)


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

    def condition(self, text_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """text_ids [n], hidden [n, llm_dim] -> [n+1, H]: emb_text + L2norm(semantic), then audio BOS."""
        bos = torch.tensor([self.config.audio_bos_token_id], device=self.emb_text.weight.device)
        if text_ids.numel() == 0:
            return self.emb_text(bos)
        sem = F.normalize(self.projector_semantic(hidden.to(self.emb_text.weight.dtype)), p=2, dim=-1)
        return torch.cat([self.emb_text(text_ids) + sem, self.emb_text(bos)], dim=0)

    def _step(self, embeds: torch.Tensor, state: TTSTurnState) -> torch.Tensor:
        # embeds [n, H] -> logits of the last position [num_audio_tokens]
        n = embeds.shape[0]
        pos = torch.arange(state.position, state.position + n, device=embeds.device)[None]
        out = self.model(inputs_embeds=embeds[None], position_ids=pos, cache=state.cache,
                         use_cache=True)
        state.position += n
        return self.head_code[0](out.last_hidden_state[0, -1]).float()

    def generate_unit(self, cond: torch.Tensor, state: TTSTurnState, n_codes: int,
                      generator: torch.Generator, temperature: float = 0.8,
                      repetition_penalty: float = 1.05, penalty_window: int = 16) -> List[int]:
        """Feed `cond` (after any pending code) and draw exactly `n_codes` codes; EOS is never drawn."""
        if state.cache is None:
            state.cache = DynamicCache()
        if state.pending_code is not None:
            code = torch.tensor([state.pending_code], device=cond.device)
            cond = torch.cat([self.emb_code[0](code), cond], dim=0)
            state.pending_code = None
        eos = self.config.audio_eos_code
        codes: List[int] = []
        logits = self._step(cond, state)
        for i in range(n_codes):
            if repetition_penalty != 1.0 and state.recent_codes:
                idx = torch.tensor(sorted(set(state.recent_codes[-penalty_window:])), device=logits.device)
                vals = logits[idx]
                logits[idx] = torch.where(vals > 0, vals / repetition_penalty, vals * repetition_penalty)
            logits[eos] = float("-inf")
            probs = torch.softmax(logits / max(temperature, 1e-5), dim=-1)
            code = int(torch.multinomial(probs.cpu(), 1, generator=generator).item())
            codes.append(code)
            state.recent_codes.append(code)
            del state.recent_codes[:-penalty_window]
            if i + 1 < n_codes:
                logits = self._step(self.emb_code[0](torch.tensor([code], device=cond.device)), state)
            else:
                state.pending_code = code
        return codes
