"""The released full-duplex protocol (`DuplexCapability.streaming_generate`), one unit at a time.

System prefix `<|im_start|>system\\n{prompt}\\n<|audio_start|>` + reference-voice audio +
`<|audio_end|><|im_end|>` (without a reference voice the span stays, empty, as the released
`prepare`); then per unit `<unit>[<image>V</image>]A10`, then up to `max_text_tokens_per_unit`
(20) steps:
- step 19 (the last) forces `<|chunk_eos|>`; the first `force_listen_count` units force `<|listen|>`;
- a token is drawn by the released two-stage decoder (`decode`): a first draw from the raw
  distribution returns `<|chunk_eos|>` if it draws it; otherwise `<|tts_pad|>`, `<|chunk_eos|>`
  and the checkpoint's `bad_token_ids` are masked, the text repetition penalty (recent
  `text_repetition_window_size` drawn tokens, logits divided by the penalty), the length penalty on
  `<|turn_eos|>`, `listen_prob_scale` (multiplies the `<|listen|>` logit) and `listen_top_k`
  apply, then temperature, top-k, top-p and a draw;
- a `<|listen|>` drawn while a turn is open (not ended by `<|turn_eos|>`) becomes `<|tts_bos|>`;
- `<|listen|>`, `<|chunk_eos|>`, `<|chunk_tts_eos|>` end the unit; they are fed together with
  `</unit>`; any other token is fed and the loop goes on (`<|turn_eos|>` included: it ends the
  turn and the model goes on, usually to `<|listen|>`);
- a token that would make the unit's text (tokens after the first) `max_unit_chars` (28)
  characters or longer is not fed and `<|chunk_eos|>` is forced instead.
A unit that fed at least one token is a speaking unit: its speech is conditioned on every fed
token after the first (omni_ros.session.speech).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from omni_ros.flow.types import UnitInput, UnitOutput

from .protocol import ConversationProtocol
from .sampling import repetition_penalty


class DuplexProtocol(ConversationProtocol):
    name = "duplex"

    def reset(self) -> None:
        self.turn_ended = True            # the released `current_turn_ended`
        self.drawn_ids: List[int] = []    # decoder history for the text penalty

    def interrupt(self) -> bool:
        """The open turn is marked ended, so the next unit may start with `<|listen|>` (mid-turn
        it would be turned into `<|tts_bos|>`). No token is fed for the cut (the released
        protocol has none). Whether a turn was open."""
        was_open, self.turn_ended = not self.turn_ended, True
        return was_open

    def enter(self) -> None:
        self.turn_ended = True

    def leave(self) -> None:
        self.turn_ended = True

    def prefill(self, prompt: str, voice: Optional[torch.Tensor]) -> None:
        """`MiniCPMODuplex.prepare` with the demo's prefix/suffix strings."""
        ctx = self.s.context
        ctx.feed_text(f"<|im_start|>system\n{prompt}\n<|audio_start|>")
        if voice is not None:
            ctx.feed(voice, need_logits=False)
        ctx.feed_text("<|audio_end|><|im_end|>")

    # --- the released decoder ---
    def decode(self, logits: torch.Tensor) -> int:
        """The released duplex decoder (StreamDecoder.decode) on one step's logits [V]."""
        options, special, sampler = self.s.options, self.s.special, self.s.sampler
        logits = logits.float().cpu().clone()
        greedy = options.decode_mode == "greedy"
        if greedy:
            first_is_eos = int(torch.argmax(logits)) == special.chunk_eos
        else:
            # first draw from the raw distribution; only whether it is <|chunk_eos|> matters
            p_eos = float(torch.exp(logits[special.chunk_eos] - torch.logsumexp(logits, dim=0)))
            first_is_eos = sampler.uniform() < p_eos
        if first_is_eos:
            return special.chunk_eos
        logits[self.s.masked_ids["duplex"]] = float("-inf")     # tts_pad, chunk_eos, bad_token_ids
        logits = repetition_penalty(logits, self.drawn_ids[-options.text_repetition_window_size:],
                                    options.repetition_penalty, sign_aware=False)
        if options.length_penalty != 1.0:
            v = logits[special.turn_eos]
            logits[special.turn_eos] = v / options.length_penalty if v > 0 else v * options.length_penalty
        if options.listen_prob_scale != 1.0:
            logits[special.listen] = logits[special.listen] * options.listen_prob_scale
        if options.listen_top_k is not None:
            rank = int((logits > logits[special.listen]).sum())
            if rank < options.listen_top_k:
                return special.listen
        tok = int(torch.argmax(logits)) if greedy else sampler.filtered(logits, options.temperature, options.top_k, options.top_p)
        self.drawn_ids.append(tok)
        del self.drawn_ids[:-max(1, options.text_repetition_window_size)]
        return tok

    def _speak_probability(self, logits: torch.Tensor) -> float:
        p = torch.softmax(logits.float(), dim=-1)
        pl, ps = float(p[self.s.special.listen]), float(p[self.s.special.speak])
        return ps / (pl + ps) if pl + ps > 0 else 0.0

    # --- one unit ---
    def run(self, unit: UnitInput) -> UnitOutput:
        s = self.s
        options, special, ctx = s.options, s.special, s.context
        inputs = s.embed_unit(unit)
        has_audio = inputs.audio.shape[0] > 0
        _, logits = ctx.feed_ids([special.unit_start], need_logits=inputs.image is None and not has_audio)
        if inputs.image is not None:
            ctx.feed_ids([special.image_start], need_logits=False)
            ctx.feed(inputs.image, need_logits=False)
            _, logits = ctx.feed_ids([special.image_end], need_logits=not has_audio)
        if has_audio:
            _, logits = ctx.feed(inputs.audio)
        speak_prob = self._speak_probability(logits)

        forced = s.units_done < options.force_listen_count
        terminators = (special.listen, special.chunk_eos, special.chunk_tts_eos)
        pending: Optional[int] = None
        fed: List[int] = []
        cond_ids: List[int] = []
        cond_hidden: List[torch.Tensor] = []
        end_of_turn = False
        for j in range(options.max_text_tokens_per_unit):
            if j == options.max_text_tokens_per_unit - 1:
                pending = special.chunk_eos
                break
            if s.decision_override is not None and j == 0:
                tok = special.speak if s.decision_override else special.listen
            elif forced:
                tok = special.listen
            else:
                tok = self.decode(logits)
                if tok == special.listen and not self.turn_ended:
                    tok = special.tts_bos
            if tok in terminators:
                pending = tok
                break
            self.turn_ended = False
            if j != 0 and options.max_unit_chars > 0:
                text = s.tokenizer.decode(cond_ids + [tok], skip_special_tokens=True)
                if len(text) >= options.max_unit_chars:
                    pending = special.chunk_eos
                    break
            hidden, logits = ctx.feed_ids([tok])
            fed.append(tok)
            end_of_turn = tok == special.turn_eos
            if end_of_turn:
                self.turn_ended = True
            if j != 0:
                cond_ids.append(tok)
                cond_hidden.append(hidden[-1])
        ctx.feed_ids(([pending] if pending is not None else []) + [special.unit_end], need_logits=False)

        if not fed:
            return UnitOutput(is_listen=True, speak_probability=speak_prob)
        speech = s.speak(cond_ids, cond_hidden, end_of_turn)
        text = s.tokenizer.decode(cond_ids, skip_special_tokens=True) if cond_ids else ""
        return UnitOutput(is_listen=False, text=text, speech=speech, end_of_turn=end_of_turn,
                          speak_probability=speak_prob)
