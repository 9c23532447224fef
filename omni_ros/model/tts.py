"""Speech-token decoder (`tts.*`): a Llama backbone conditioned on the unit's text tokens and the
LLM's hidden states, drawing 25 speech codes per 1 s unit with a KV cache kept for the turn (the released duplex
`generate_chunk`: 26 draws, 25 kept).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
import torch.nn.utils.parametrize as P
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from transformers import DynamicCache, LlamaModel

from .audio import MultiModalProjector
from .config import OmniConfig


@dataclass
class TTSTurnState:
    """Decoder state for one speaking turn; dropped at end of turn (the released `tts_past_key_values`
    and `tts_text_start_pos`)."""

    cache: Optional[DynamicCache] = None
    position: int = 0                       # next position id in the TTS sequence


def repetition_penalty_(logits: torch.Tensor, previous: List[int], penalty: float, window: int = 16) -> torch.Tensor:
    """The released TTS penalty: alpha = penalty ** (count of the code in the last `window` codes
    of this chunk); negative logits are multiplied by alpha, the others divided."""
    if penalty == 1.0 or not previous:
        return logits
    recent = torch.tensor(previous[-window:], device=logits.device)
    freq = torch.bincount(recent, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
    alpha = torch.pow(torch.tensor(float(penalty), device=logits.device), freq)
    return torch.where(logits < 0, logits * alpha, logits / alpha)


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
            sem = F.normalize(self.projector_semantic(hidden.to(self.emb_text.weight.dtype)), p=2, dim=-1)
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

    def generate_unit(self, cond: torch.Tensor, state: TTSTurnState, generator: torch.Generator,
                      max_new_tokens: int = 26, min_new_tokens: int = 26, temperature: float = 0.8,
                      repetition_penalty: float = 1.05, penalty_window: int = 16) -> List[int]:
        """`generate_codes` on this module (the weight-normed head computed once per call)."""
        def code_embed(codes):
            return self.emb_code[0](torch.as_tensor(codes, dtype=torch.long, device=cond.device))

        with P.cached():
            return generate_codes(self.step, code_embed, DynamicCache, cond, state, generator,
                                  max_new_tokens, min_new_tokens, temperature, repetition_penalty,
                                  penalty_window, self.config.audio_eos_code)


def condition_rows(ids: List[int], hidden: Optional[torch.Tensor], text_eos: bool, tts_config,
                   llm_dim: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `tts_condition` graph's inputs for one unit: the fed tokens with their LLM hidden
    states, then (turn-based, last chunk) text EOS, then audio BOS, the last two without the
    semantic term. Returns (text_ids [n], llm_hidden [n, llm_dim] float32, semantic_mask [n])."""
    extra = ([tts_config.text_eos_token_id] if text_eos else []) + [tts_config.audio_bos_token_id]
    rows = list(ids) + extra
    llm_hidden = torch.zeros(len(rows), llm_dim)
    if ids:
        llm_hidden[: len(ids)] = hidden.float().cpu()
    mask = torch.tensor([1.0] * len(ids) + [0.0] * len(extra))
    return torch.tensor(rows, dtype=torch.long), llm_hidden, mask


def generate_codes(step: Callable, code_embed: Callable, new_cache: Callable, cond: torch.Tensor,
                   state: TTSTurnState, generator: torch.Generator, max_new_tokens: int = 26,
                   min_new_tokens: int = 26, temperature: float = 0.8, repetition_penalty: float = 1.05,
                   penalty_window: int = 16, eos: int = 6561) -> List[int]:
    """The released `generate_chunk`: feed `cond` at the turn's next positions, then draw up to
    `max_new_tokens` codes (EOS blocked for the first `min_new_tokens` draws), feeding each drawn
    code before drawing the next. The last drawn code (or EOS) is neither returned nor fed, so
    at most max_new_tokens - 1 (= 25) codes come back, and the turn position advances by
    len(cond) + len(codes). `step(embeds, position, cache)` -> logits; `code_embed([code])` ->
    [1, H]; `new_cache()` starts the turn's cache."""
    if state.cache is None:
        state.cache = new_cache()
    codes: List[int] = []
    start = state.position
    for t in range(max_new_tokens):
        if t == 0:
            logits = step(cond, start, state.cache)
        else:
            logits = step(code_embed([codes[-1]]), start + cond.shape[0] + t - 1, state.cache)
        logits = logits.float().cpu() / max(float(temperature), 1e-5)
        if t > 0:
            logits = repetition_penalty_(logits, codes, repetition_penalty, penalty_window)
        if t < min_new_tokens:
            logits[eos] = float("-inf")
        code = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).item())
        if code == eos or t == max_new_tokens - 1:
            break
        codes.append(code)
    state.position = start + cond.shape[0] + len(codes)
    return codes
