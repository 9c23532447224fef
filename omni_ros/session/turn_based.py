"""The released simplex streaming protocol, adapted to a 1 s unit stream.

System prefix (when the session starts in this mode) `<|im_start|>system\\n{prompt}` + the
reference voice as one `<|audio_start|>`...`<|audio_end|>` span per second + `<|im_end|>\\n` (the
released chat template; no audio span without a voice). The user turn is framed as a chat
message: the first unit of a user turn feeds `<|im_start|>user\\n` (after an answer:
`<|tts_eos|><|im_end|>\\n<|im_start|>user\\n`), every unit feeds
`[<image>V</image>]<|audio_start|>A10<|audio_end|>`. The user turn ends from the unit audio: once
a unit had speech (RMS >= `turn_end_rms`), `turn_end_silence_units` consecutive quieter units end
it (or `max_user_units`). The answer then starts with
`<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n<|tts_bos|>`, and each following
unit draws a fixed 10 text tokens (the released streaming generator's forbidden tokens and
`bad_token_ids` masked; stopping early at `<|tts_eos|>`/`<|im_end|>`) and 25 speech codes
conditioned on them (the fixed 10:25 interleave; text EOS appended to the last condition), i.e. one
window of speech per unit, until the answer ends (end_of_turn) or `max_answer_units`. User audio
that arrives while answering is not fed (simplex).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from omni_ros.flow.types import UnitInput, UnitOutput
from omni_ros.model.audio import pooled_length

from .protocol import ConversationProtocol
from .sampling import repetition_penalty

IDLE, USER, ANSWER = "idle", "user", "answer"
ANSWER_START = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<|tts_bos|>"
TEXT_PENALTY_WINDOW = 128     # the released streaming generator's repetition window


class TurnBasedProtocol(ConversationProtocol):
    name = "turn_based"

    def reset(self) -> None:
        self.phase = IDLE
        self.answered = False         # an answer was generated since the last user message
        self.heard_speech = False
        self.silent_units = 0
        self.user_units = 0
        self.answer_units = 0
        self.logits: Optional[torch.Tensor] = None
        self.text_ids: List[int] = []

    def interrupt(self) -> bool:
        """An answer in progress stops; the next unit opens a user message, closing the cut answer
        first with `<|tts_eos|><|im_end|>` as after a finished answer. Whether one was in progress."""
        if self.phase != ANSWER:
            return False
        self.phase, self.answered, self.logits = IDLE, True, None
        return True

    def enter(self) -> None:
        """From another protocol: start with a fresh user message."""
        self.phase, self.answered = IDLE, False

    def leave(self) -> None:
        """To another protocol: close the open message so what follows sees a complete one."""
        special, ctx = self.s.special, self.s.context
        if self.phase == ANSWER:
            ctx.feed_ids([special.tts_eos, special.im_end] + ctx.ids("\n"), need_logits=False)
        elif self.phase == USER:
            ctx.feed_ids([special.im_end] + ctx.ids("\n"), need_logits=False)
        self.phase = IDLE

    def prefill(self, prompt: str, voice: Optional[torch.Tensor]) -> None:
        """`streaming_prefill` of the system message through the chat template (omni_mode): the
        voice as one audio span per started second, as the processor chunks audio."""
        special, ctx = self.s.special, self.s.context
        ctx.feed_text(f"<|im_start|>system\n{prompt}")
        if voice is not None:
            per_chunk = pooled_length(100, self.s.compute.config.audio_pool_step)   # 1 s of mel
            for start in range(0, voice.shape[0], per_chunk):
                ctx.feed_ids([special.audio_start], need_logits=False)
                ctx.feed(voice[start: start + per_chunk], need_logits=False)
                ctx.feed_ids([special.audio_end], need_logits=False)
        ctx.feed_text("<|im_end|>\n")

    # --- one unit ---
    def run(self, unit: UnitInput) -> UnitOutput:
        if self.phase == ANSWER:
            return self._answer_unit()         # simplex: the unit's audio and image are not read
        options, special, ctx = self.s.options, self.s.special, self.s.context
        inputs = self.s.embed_unit(unit)
        if self.phase == IDLE:
            ctx.feed_text("<|tts_eos|><|im_end|>\n<|im_start|>user\n" if self.answered
                          else "<|im_start|>user\n")
            self.phase, self.heard_speech, self.silent_units, self.user_units = USER, False, 0, 0
        if inputs.image is not None:
            ctx.feed_ids([special.image_start], need_logits=False)
            ctx.feed(inputs.image, need_logits=False)
            ctx.feed_ids([special.image_end], need_logits=False)
        ctx.feed_ids([special.audio_start], need_logits=False)
        if inputs.audio.shape[0]:
            ctx.feed(inputs.audio, need_logits=False)
        ctx.feed_ids([special.audio_end], need_logits=False)
        self.user_units += 1
        samples = inputs.samples
        rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0
        if rms >= options.turn_end_rms:
            self.heard_speech, self.silent_units = True, 0
        else:
            self.silent_units += 1
        turn_over = (self.heard_speech and self.silent_units >= max(1, options.turn_end_silence_units)) \
            or self.user_units >= options.max_user_units
        if turn_over:
            _, self.logits = ctx.feed_text(ANSWER_START, need_logits=True)
            self.phase, self.answer_units, self.answered = ANSWER, 0, False
            self.text_ids = []
            self.s.speech.end_turn()
        return UnitOutput(is_listen=True)

    def _sample(self, logits: torch.Tensor) -> int:
        options = self.s.options
        logits = logits.float().cpu().clone()
        logits[self.s.masked_ids["turn_based"]] = float("-inf")   # bad_token_ids, punctuation, tts_pad
        logits = repetition_penalty(logits, self.text_ids[-TEXT_PENALTY_WINDOW:], options.repetition_penalty)
        if options.decode_mode == "greedy":
            return int(torch.argmax(logits))
        return self.s.sampler.filtered(logits, options.temperature, options.top_k, options.top_p)

    def _answer_unit(self) -> UnitOutput:
        """One unit of answer: a fixed chunk of text tokens, then one window of speech."""
        options, special, ctx = self.s.options, self.s.special, self.s.context
        logits = self.logits
        ids: List[int] = []
        hidden: List[torch.Tensor] = []
        finished = False
        for _ in range(max(1, options.turn_based_text_tokens)):
            tok = self._sample(logits)
            if tok in (special.tts_eos, special.im_end):
                finished = True
                break
            h, logits = ctx.feed_ids([tok])
            ids.append(tok)
            hidden.append(h[-1])
            self.text_ids.append(tok)
        self.logits = logits
        self.answer_units += 1
        if self.answer_units >= options.max_answer_units:
            finished = True
        speech = self.s.speak(ids, hidden, end_of_turn=finished, text_eos=finished)
        if finished:
            self.phase, self.answered, self.logits = IDLE, True, None
        text = self.s.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
        return UnitOutput(is_listen=False, text=text, speech=speech, end_of_turn=finished,
                          speak_probability=1.0)
