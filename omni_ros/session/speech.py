"""A session's speech: the speech decoder drawing codes from a unit's text, and the waveform stage
turning them into 24 kHz audio.

Per speaking unit (the released duplex TTS step): the condition is every fed text token after the
first (emb_text(id) + L2-normalised projector_semantic(LLM hidden state)), then (turn-based, last
chunk) text EOS, then audio BOS; the decoder draws 26 codes and keeps 25 (EOS allowed only at the
start or the end of a turn), its cache living for the turn (the released `generate_chunk`); the
waveform stream (omni_ros.session.waveform) turns the codes into one window, with the turn's final
flush appended when the turn ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from .compute import Compute, SequenceCache
from .sampling import Sampler, repetition_penalty
from .waveform import WaveformStream

CODE_PENALTY_WINDOW = 16     # the speech decoder's repetition window (codes of the unit)


@dataclass
class SpeechTurn:
    """The speech decoder's state for one speaking turn (the released `tts_past_key_values` and
    `tts_text_start_pos`)."""

    cache: Optional[SequenceCache] = None
    position: int = 0                       # next position id in the decoder's sequence


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
                   turn: SpeechTurn, sampler: Sampler, max_new_tokens: int = 26,
                   min_new_tokens: int = 26, temperature: float = 0.8, penalty: float = 1.05,
                   eos: int = 6561) -> List[int]:
    """The released `generate_chunk`: feed `cond` at the turn's next positions, then draw up to
    `max_new_tokens` codes (EOS blocked for the first `min_new_tokens` draws), feeding each drawn
    code before drawing the next. The last drawn code (or EOS) is neither returned nor fed, so
    at most max_new_tokens - 1 (= 25) codes come back, and the turn position advances by
    len(cond) + len(codes). `step(embeds, position, cache)` -> logits; `code_embed([code])` ->
    [1, H]; `new_cache()` starts the turn's cache."""
    if turn.cache is None:
        turn.cache = new_cache()
    codes: List[int] = []
    start = turn.position
    for t in range(max_new_tokens):
        if t == 0:
            logits = step(cond, start, turn.cache)
        else:
            logits = step(code_embed([codes[-1]]), start + cond.shape[0] + t - 1, turn.cache)
        logits = logits.float().cpu() / max(float(temperature), 1e-5)
        if t > 0:
            logits = repetition_penalty(logits, codes[-CODE_PENALTY_WINDOW:], penalty, counted=True)
        if t < min_new_tokens:
            logits[eos] = float("-inf")
        code = sampler.code(logits)
        if code == eos or t == max_new_tokens - 1:
            break
        codes.append(code)
    turn.position = start + cond.shape[0] + len(codes)
    return codes


class SpeechStream:
    """Text of speaking units in, speech out; one turn at a time. `in_turn`: a speaking turn is
    open (codes were drawn for it and it has not ended)."""

    def __init__(self, compute: Compute, waveform: WaveformStream, codes_per_unit: int) -> None:
        self.compute = compute
        self.waveform = waveform
        self.codes_per_unit = int(codes_per_unit)
        self.in_turn = False
        self.turn = SpeechTurn()

    def reset(self) -> None:
        self.end_turn()

    def end_turn(self) -> None:
        """Close the turn: the decoder's cache is dropped and codes not yet spoken with it."""
        self.in_turn = False
        self.turn = SpeechTurn()
        self.waveform.start_turn()

    def speak(self, ids: List[int], hidden: List[torch.Tensor], end_of_turn: bool, sampler: Sampler,
              temperature: float, penalty: float, text_eos: bool = False) -> np.ndarray:
        """The speech of one unit's condition tokens: one window, plus the waveform stage's final
        flush (0.28 s: the held-back lookahead and overlap) when the turn ends."""
        compute = self.compute
        tts = compute.config.tts_config
        rows = condition_rows(ids, torch.stack(hidden) if hidden else None, text_eos, tts,
                              compute.config.hidden_size)
        cond = compute.tts_condition(*rows)
        n_codes = self.codes_per_unit
        if self.turn.position + cond.shape[0] + n_codes + 1 > tts.max_position_embeddings:
            self.turn = SpeechTurn()        # a very long turn: restart the decoder context
        self.in_turn = True
        turn_start = self.turn.position == 0
        codes = generate_codes(compute.tts_step, compute.tts_code_embed, compute.new_tts_cache, cond, self.turn, sampler,
                               max_new_tokens=n_codes + 1,
                               min_new_tokens=0 if (turn_start or end_of_turn) else n_codes + 1,
                               temperature=temperature, penalty=penalty, eos=tts.audio_eos_code)
        # the released schedule: early flushes at a turn's first unit, the last chunk at its end
        wav = self.waveform.push(codes, turn_start=turn_start, end_of_turn=end_of_turn)
        if wav.shape[0] < self.waveform.window_samples:    # a turn that ended short: silence after it
            wav = np.pad(wav, (0, self.waveform.window_samples - wav.shape[0]))
        if end_of_turn:
            self.end_turn()
        return wav
