"""Full-duplex session: one 1 s unit at a time (`<unit>[<image>V</image>]A10` -> listen or speak),
with the LLM KV cache kept across units and bounded by dropping the oldest unit's span.
Speaking units yield text plus exactly one window of 24 kHz speech (TTS codes -> token2wav).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, List, Optional, Tuple

import numpy as np
import torch
from transformers import DynamicCache
from transformers.models.qwen3.modeling_qwen3 import rotate_half

from omni_ros.flow.types import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, UnitInput, UnitOutput

from .omni import OmniModel
from .tts import TTSTurnState


@dataclass
class SessionOptions:
    system_prompt: str = "Streaming Omni Conversation."
    # What to watch for and warn about; appended to the system prompt (read at prefill, i.e. at
    # the first unit and after each reset).
    standing_instruction: str = ""
    window_sec: float = 1.0
    temperature: float = 0.7
    top_k: int = 20
    top_p: float = 0.8
    repetition_penalty: float = 1.05
    max_text_tokens_per_unit: int = 20
    force_listen_count: int = 3
    listen_prob_scale: float = 1.0
    max_context_units: int = 24          # units kept in the KV cache besides the system prefix
    tts_temperature: float = 0.8
    tts_repetition_penalty: float = 1.05
    seed: int = 0
    # Voice slot: 16 kHz mono reference-voice audio placed in the system prefix
    # (`<|audio_start|>` ... `<|audio_end|>`). None = no reference voice. The TTS speaker
    # conditioning from it is not implemented yet.
    reference_voice: Optional[np.ndarray] = None


class OmniDuplexSession:
    """Satisfies omni_ros.flow.types.DuplexSession."""

    def __init__(self, model: OmniModel, options: Optional[SessionOptions] = None):
        if model.tokenizer is None or model.token2wav is None or model.special is None:
            raise ValueError("model has no tokenizer/token2wav attached; load it with omni_ros.model.loader.load_model")
        self.model = model
        self.options = options or SessionOptions()
        self.sp = model.special
        tok = model.tokenizer
        vocab = model.config.vocab_size
        # text sampling may never produce added/special tokens except these three
        self._blocked = torch.zeros(vocab, dtype=torch.bool)
        for i in tok.get_added_vocab().values():
            if i < vocab:
                self._blocked[i] = True
        self._blocked[len(tok):] = True
        for i in (self.sp.chunk_eos, self.sp.turn_eos, self.sp.listen):
            self._blocked[i] = False
        self._decision_override: Optional[bool] = None   # warm-up only: force listen/speak
        self.reset()

    def warmup(self) -> None:
        """Run one listening and one speaking unit on silence, then reset. The first call of each
        path pays lazy initialisation (seconds on some machines) that must not land on a real
        window."""
        silence = np.zeros(int(round(self.options.window_sec * INPUT_SAMPLE_RATE)), np.float32)
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        for speak in (False, True):
            self._decision_override = speak
            try:
                self.run_unit(UnitInput(window_index=0, epoch=0, start_ns=0, end_ns=0, image=image,
                                        image_stamp_ns=0, audio=silence))
            finally:
                self._decision_override = None
        self.reset()

    # --- public ---
    def reset(self) -> None:
        self.cache: Optional[DynamicCache] = None
        self.position = 0                                     # next LLM position == cache length
        self.prefix_len = 0
        self.unit_spans: Deque[Tuple[int, int]] = deque()     # cache spans of the kept units
        self.units_done = 0
        self.in_turn = False
        self.tts_state = TTSTurnState()
        self.t2w_context: List[int] = []
        self.turn_text_ids: List[int] = []
        self.generator = torch.Generator().manual_seed(int(self.options.seed))

    @property
    def cache_length(self) -> int:
        return 0 if self.cache is None else int(self.cache.get_seq_length())

    @property
    def context_units(self) -> int:
        return len(self.unit_spans)

    def run_unit(self, unit: UnitInput) -> UnitOutput:
        with torch.inference_mode():
            return self._run_unit(unit)

    # --- LLM feeding ---
    def _feed_ids(self, ids: List[int], need_logits: bool = True):
        return self._feed(self.model.embed_tokens(ids), need_logits)

    def _feed(self, embeds: torch.Tensor, need_logits: bool = True):
        hidden, logits = self.model.llm_step(embeds, self.position, self.cache, need_logits)
        self.position += embeds.shape[0]
        return hidden, logits

    def system_text(self) -> str:
        """The system prompt the model is given: the prompt, then the standing instruction."""
        o = self.options
        if o.standing_instruction.strip():
            return f"{o.system_prompt}\n{o.standing_instruction.strip()}"
        return o.system_prompt

    def _prefill(self) -> None:
        o, tok, m = self.options, self.model.tokenizer, self.model
        self.cache = DynamicCache()
        enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
        prompt = self.system_text()
        if o.reference_voice is None:
            embeds = m.embed_tokens(enc(f"<|im_start|>system\n{prompt}\n<|im_end|>"))
        else:
            embeds = torch.cat([
                m.embed_tokens(enc(f"<|im_start|>system\n{prompt}\n<|audio_start|>")),
                m.embed_audio(np.asarray(o.reference_voice, dtype=np.float32)),
                m.embed_tokens(enc("<|audio_end|><|im_end|>")),
            ])
        self._feed(embeds, need_logits=False)
        self.prefix_len = self.position

    # --- context window ---
    def _drop_oldest_unit(self) -> None:
        start, end = self.unit_spans.popleft()
        delta = end - start
        # keys after the span move back by delta positions: rotate them by -delta (RoPE composes)
        rot = self.model.llm.model.rotary_emb
        probe = self.cache.layers[0].keys
        cos, sin = rot(probe, torch.tensor([[-delta]], device=probe.device))   # [1, 1, Dh]
        cos, sin = cos[:, None].float(), sin[:, None].float()
        for layer in self.cache.layers:
            k, v = layer.keys, layer.values                                       # [B, H, T, Dh]
            tail = k[:, :, end:].float()
            tail = (tail * cos + rotate_half(tail) * sin).to(k.dtype)
            layer.keys = torch.cat([k[:, :, :start], tail], dim=2)
            layer.values = torch.cat([v[:, :, :start], v[:, :, end:]], dim=2)
        self.unit_spans = deque((s - delta, e - delta) for s, e in self.unit_spans)
        self.position -= delta

    # --- sampling ---
    def _sample_text(self, logits: torch.Tensor) -> int:
        o = self.options
        logits = logits.float().cpu().clone()
        if o.repetition_penalty != 1.0 and self.turn_text_ids:
            idx = torch.tensor(sorted(set(self.turn_text_ids)))
            vals = logits[idx]
            logits[idx] = torch.where(vals > 0, vals / o.repetition_penalty, vals * o.repetition_penalty)
        logits[self._blocked[: logits.shape[0]]] = float("-inf")
        logits = logits / max(o.temperature, 1e-5)
        if o.top_k and o.top_k > 0:
            kth = torch.topk(logits, min(o.top_k, logits.shape[0])).values[-1]
            logits[logits < kth] = float("-inf")
        probs = torch.softmax(logits, dim=-1)
        if 0.0 < o.top_p < 1.0:
            sp, si = torch.sort(probs, descending=True)
            cum = torch.cumsum(sp, dim=0)
            drop = cum - sp > o.top_p
            sp[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, si, sp)
        return int(torch.multinomial(probs, 1, generator=self.generator).item())

    # --- speech ---
    def _end_speech_turn(self) -> None:
        self.in_turn = False
        self.tts_state = TTSTurnState()
        self.t2w_context = []
        self.turn_text_ids = []

    def _speech(self, text_ids: List[int], text_hidden: List[torch.Tensor]) -> np.ndarray:
        o, m = self.options, self.model
        n_codes = int(round(o.window_sec * m.config.tts_config.codes_per_second))
        ids = torch.tensor(text_ids, dtype=torch.long, device=m.device)
        hid = torch.stack(text_hidden) if text_hidden else torch.zeros(0, m.config.hidden_size,
                                                                       device=m.device, dtype=m.dtype)
        cond = m.tts.condition(ids, hid)
        if self.tts_state.position + cond.shape[0] + n_codes + 1 > m.config.tts_config.max_position_embeddings:
            self.tts_state = TTSTurnState()       # a very long turn: restart the decoder context

        codes = m.tts.generate_unit(cond, self.tts_state, n_codes, self.generator,
                                    temperature=o.tts_temperature,
                                    repetition_penalty=o.tts_repetition_penalty)
        wav = m.token2wav.decode_stream(codes, self.t2w_context).cpu().numpy().astype(np.float32)
        self.t2w_context = (self.t2w_context + codes)[-8:]
        n = int(round(o.window_sec * OUTPUT_SAMPLE_RATE))
        if wav.shape[0] < n:
            wav = np.pad(wav, (0, n - wav.shape[0]))
        return np.ascontiguousarray(wav[:n])

    # --- one unit ---
    def _run_unit(self, unit: UnitInput) -> UnitOutput:
        o, m, sp = self.options, self.model, self.sp
        if self.cache is None:
            self._prefill()
        start = self.position

        n_in = int(round(o.window_sec * INPUT_SAMPLE_RATE))
        audio = np.nan_to_num(np.asarray(unit.audio, dtype=np.float32).reshape(-1))
        audio = np.pad(audio, (0, max(0, n_in - audio.shape[0])))[:n_in]
        parts = [m.embed_tokens([sp.unit_start])]
        if unit.image is not None:
            parts += [m.embed_tokens([sp.image_start]), m.embed_image(unit.image), m.embed_tokens([sp.image_end])]
        parts.append(m.embed_audio(audio))
        _, logits = self._feed(torch.cat(parts))

        # listen / speak decision
        pair = torch.softmax(torch.stack([logits[sp.listen], logits[sp.speak]]).float(), dim=0)
        p_listen, p_speak = float(pair[0]) * o.listen_prob_scale, float(pair[1])
        speak_prob = p_speak / max(p_listen + p_speak, 1e-12)
        forced = self.units_done < o.force_listen_count
        draw = float(torch.rand(1, generator=self.generator))
        speak = (not forced) and draw < speak_prob
        if self._decision_override is not None:
            speak = self._decision_override

        if not speak:
            self._feed_ids([sp.listen, sp.unit_end], need_logits=False)
            if self.in_turn:
                self._end_speech_turn()
            out = UnitOutput(is_listen=True, speak_probability=speak_prob)
        else:
            self.in_turn = True
            hidden, logits = self._feed_ids([sp.speak])
            text_ids: List[int] = []
            text_hidden: List[torch.Tensor] = []
            end_turn = False
            for step in range(o.max_text_tokens_per_unit):
                tok = sp.chunk_eos if step == o.max_text_tokens_per_unit - 1 else self._sample_text(logits)
                if tok == sp.listen:
                    tok = sp.tts_bos
                if tok == sp.chunk_eos:
                    break
                if tok == sp.turn_eos:
                    end_turn = True
                    break
                hidden, logits = self._feed_ids([tok])
                if tok != sp.tts_bos:
                    text_ids.append(tok)
                    text_hidden.append(hidden[-1])
                    self.turn_text_ids.append(tok)
            tail = ([sp.turn_eos] if end_turn else []) + [sp.chunk_eos, sp.unit_end]
            self._feed_ids(tail, need_logits=False)
            speech = self._speech(text_ids, text_hidden)
            text = m.tokenizer.decode(text_ids, skip_special_tokens=True) if text_ids else ""
            if end_turn:
                self._end_speech_turn()
            out = UnitOutput(is_listen=False, text=text, speech=speech, end_of_turn=end_turn,
                             speak_probability=speak_prob)

        self.units_done += 1
        self.unit_spans.append((start, self.position))
        while len(self.unit_spans) > max(1, o.max_context_units):
            self._drop_oldest_unit()
        return out
