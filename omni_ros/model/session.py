"""Model session: one 1 s unit at a time, in one of two modes read from `options.mode` at every unit
(so the mode can change at run time without a restart).

duplex (the released full-duplex protocol, `DuplexCapability.streaming_generate`):
  system prefix `<|im_start|>system\\n{prompt}\\n<|audio_start|>` + reference-voice audio +
  `<|audio_end|><|im_end|>` (without a reference voice the span stays, empty:
  `...\\n<|audio_start|><|audio_end|><|im_end|>`, as the released `prepare`);
  then per unit `<unit>[<image>V</image>]A10`, then up to `max_text_tokens_per_unit` (20) steps:
  - step 19 (the last) forces `<|chunk_eos|>`; the first `force_listen_count` units force `<|listen|>`;
  - a token is drawn by the released two-stage decoder: a first draw from the raw distribution
    returns `<|chunk_eos|>` if it draws it; otherwise `<|tts_pad|>`, `<|chunk_eos|>` and the
    checkpoint's `bad_token_ids` (tokenizer_config.json) are masked, the text repetition penalty
    (recent `text_repetition_window_size` drawn tokens, logits divided by the penalty), the
    length penalty on `<|turn_eos|>`, `listen_prob_scale` (multiplies the `<|listen|>` logit)
    and `listen_top_k` apply, then temperature, top-k, top-p and a draw;
  - a `<|listen|>` drawn while a turn is open (not ended by `<|turn_eos|>`) becomes `<|tts_bos|>`;
  - `<|listen|>`, `<|chunk_eos|>`, `<|chunk_tts_eos|>` end the unit; they are fed together with
    `</unit>`; any other token is fed and the loop goes on (`<|turn_eos|>` included: it ends the
    turn and the model goes on, usually to `<|listen|>`);
  - a token that would make the unit's text (tokens after the first) 28 characters or longer is
    not fed and `<|chunk_eos|>` is forced instead.
  A unit that fed at least one token is a speaking unit: its TTS condition is every fed token after
  the first (emb_text(id) + L2-normalised projector_semantic(hidden)), then audio BOS; the speech
  decoder draws 26 codes and keeps 25 (EOS allowed only at the start or end of a turn), its KV
  cache lives for the turn; the waveform stage (omni_ros.model.token2wav.stream) turns the codes into
  one window of 24 kHz speech, with the turn's final flush appended when the turn ends.

turn_based (the released simplex streaming, adapted to a 1 s unit stream):
  system prefix (when the session starts in this mode) `<|im_start|>system\\n{prompt}` + the
  reference voice as one `<|audio_start|>`...`<|audio_end|>` span per second + `<|im_end|>\\n`
  (the released chat template; no audio span without a voice). The user turn is framed as a chat
  message: the first unit of a user turn feeds `<|im_start|>user\\n` (after an answer:
  `<|tts_eos|><|im_end|>\\n<|im_start|>user\\n`), every unit feeds
  `[<image>V</image>]<|audio_start|>A10<|audio_end|>`. The session ends the user turn from
  the unit audio: once a unit had speech (RMS >= `turn_end_rms`), `turn_end_silence_units`
  consecutive quieter units end it (or `max_user_units`). The answer then starts with
  `<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n<|tts_bos|>`, and each following
  unit draws a fixed 10 text tokens (the released streaming generator's forbidden tokens and
  `bad_token_ids` masked; stopping early at `<|tts_eos|>`/`<|im_end|>`) and 25 speech
  codes conditioned on them (the fixed 10:25 interleave; text EOS appended to the last condition),
  i.e. one window of speech per unit, until the answer ends (end_of_turn) or `max_answer_units`.
  User audio that arrives while answering is not fed (simplex).

Context policy (both modes): the KV cache keeps the system prefix (prompt + standing instruction
+ reference voice) and the most recent `max_context_units` units; older unit spans are cut out
and the keys after them re-rotated, so memory and per-unit time stay flat over hours.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields
from typing import Callable, Deque, List, Optional, Tuple

import numpy as np
import torch

from omni_ros.flow.types import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, UnitInput, UnitOutput
from omni_ros.runtime.compute import Compute, as_compute

from .audio import StreamingAudioEncoder, embed_audio, pooled_length
from .token2wav.stream import WaveformStream
from .token2wav.voice import PROMPT_RATE, Voice, VoiceError
from .tokenizer import decoding_masks
from .tts import TTSTurnState, condition_rows, generate_codes

MODES = ("duplex", "turn_based")
THINK_EMPTY = "<think>\n\n</think>\n\n"


@dataclass
class SessionOptions:
    # "duplex" (released full-duplex protocol) or "turn_based" (released simplex streaming with
    # fixed 10 text : 25 speech tokens); read at every unit, may change at run time.
    mode: str = "duplex"
    system_prompt: str = "Streaming Omni Conversation."
    # What to watch for and warn about; appended to the system prompt (read at prefill, i.e. at
    # the first unit and after each reset).
    standing_instruction: str = ""
    window_sec: float = 1.0
    # text decoding (released duplex defaults)
    decode_mode: str = "sampling"         # or "greedy"
    temperature: float = 0.7
    top_k: int = 20
    top_p: float = 0.8
    repetition_penalty: float = 1.05
    text_repetition_window_size: int = 512
    length_penalty: float = 1.1           # on <|turn_eos|>; > 1 makes turns longer
    max_text_tokens_per_unit: int = 20
    max_unit_chars: int = 28
    force_listen_count: int = 3
    listen_prob_scale: float = 1.0
    listen_top_k: Optional[int] = None
    max_context_units: int = 24          # units kept in the KV cache besides the system prefix
    tts_temperature: float = 0.8
    tts_repetition_penalty: float = 1.05
    seed: int = 0
    # The reference voice: the robot speaks with it (the waveform stage's speaker prompt) and the
    # LLM hears it in the system prefix (`<|audio_start|>` ... `<|audio_end|>`). A wav file (any
    # rate, mono or stereo), or 16 kHz mono samples used when the file is empty; with neither, the
    # checkpoint's default voice (`assets/ref_audio/ref_minicpm_signature.wav`) where it has one.
    reference_voice: str = ""
    reference_voice_samples: Optional[np.ndarray] = None
    # Euler steps of the waveform stage's flow matching (10 as the released modeling code, 5 as the
    # released web demo: about half the waveform stage's time)
    token2wav_steps: int = 10
    # turn_based mode
    turn_end_rms: float = 0.01
    turn_end_silence_units: int = 1
    max_user_units: int = 30
    turn_based_text_tokens: int = 10
    max_answer_units: int = 30

    @classmethod
    def from_mapping(cls, values) -> "SessionOptions":
        """Options from a name -> value mapping (e.g. node parameters); other names are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(values).items() if k in known})


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The released filter: keep the top_k logits, then the smallest prefix whose probability
    exceeds top_p (the first token crossing it kept). Returns filtered logits [V]."""
    if top_k and 0 < top_k < logits.shape[-1]:
        vals, order = torch.topk(logits, top_k)                  # sorted, descending
        kth = vals[-1]
        vals = torch.where(logits[order] < kth, torch.full_like(vals, float("-inf")), vals)
    else:
        vals, order = torch.sort(logits, descending=True)
    if top_p and top_p > 0.0:
        cum = torch.cumsum(torch.softmax(vals, dim=-1), dim=-1)
        remove = cum > top_p
        remove[1:] = remove[:-1].clone()
        remove[0] = False
        vals = vals.masked_fill(remove, float("-inf"))
    out = torch.full_like(logits, float("-inf"))
    out[order] = vals
    return out


class OmniDuplexSession:
    """Satisfies omni_ros.flow.types.DuplexSession (both modes)."""

    def __init__(self, model, options: Optional[SessionOptions] = None):
        """`model`: a loaded OmniModel (run eagerly by TorchCompute) or any backend's Compute."""
        self.compute: Compute = as_compute(model)
        self.options = options or SessionOptions()
        self.sp = self.compute.special
        self.tok = self.compute.tokenizer
        # None: logits come from the backend's LLM graph. Tests set a scripted double of the
        # output head here (hidden [D] -> logits [V]).
        self.head: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        # When a list, every fed token id (int) and embedding span (("embeds", n)) is appended.
        self.trace: Optional[list] = None
        self._decision_override: Optional[bool] = None   # warm-up only: force listen/speak
        # ids masked before the decoding draw, per mode (the released forbidden lists: `<|tts_pad|>`,
        # `<|chunk_eos|>` after the first raw draw, the checkpoint's `bad_token_ids`, ...)
        self.masked_ids = {mode: torch.tensor(ids, dtype=torch.long)
                           for mode, ids in decoding_masks(self.tok, self.sp).items()}
        self.audio = StreamingAudioEncoder(self.compute)
        self.voice: Optional[Voice] = None
        self.waveform = self._new_waveform_stream()
        self.set_voice()
        self.reset()

    # --- the reference voice ---
    def _voice_from_options(self) -> Voice:
        o = self.options
        if o.reference_voice:
            return Voice.from_wav(o.reference_voice)
        if o.reference_voice_samples is not None:
            return Voice.from_samples(np.asarray(o.reference_voice_samples, dtype=np.float32).reshape(-1),
                                      PROMPT_RATE, "reference voice samples")
        default = getattr(self.compute, "default_voice", None)
        if default is None:
            raise VoiceError("no reference voice: set the reference_voice parameter to a wav file of a few "
                             "seconds of speech (the checkpoint has no default voice at "
                             "assets/ref_audio/ref_minicpm_signature.wav)")
        return Voice.from_wav(default)

    def _new_waveform_stream(self) -> WaveformStream:
        o = self.options
        codes = int(round(o.window_sec * self.compute.config.tts_config.codes_per_second))
        return WaveformStream(self.compute.waveform, steps=o.token2wav_steps, seed=o.seed, chunk_codes=codes,
                              window_samples=int(round(o.window_sec * OUTPUT_SAMPLE_RATE)))

    def set_voice(self, voice: Optional[Voice] = None) -> None:
        """Take `voice` (default: read it as the options say) and recompute the waveform stage's
        prompt caches (about one decode call's time). Speech of an open turn restarts with the new
        voice; the LLM's voice slot takes it at the next prefill (start, reset or epoch)."""
        voice = voice if voice is not None else self._voice_from_options()
        if self.waveform.steps != int(self.options.token2wav_steps):
            self.waveform = self._new_waveform_stream()
        self.waveform.set_voice(voice)
        self.voice = voice

    def warmup(self) -> None:
        """Run one listening and one speaking unit on silence, then reset. The first call of each
        path pays lazy initialisation (seconds on some machines) that must not land on a real
        window."""
        silence = np.zeros(int(round(self.options.window_sec * INPUT_SAMPLE_RATE)), np.float32)
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        mode = self.options.mode
        try:
            self.options.mode = "duplex"
            for speak in (False, True):
                self._decision_override = speak
                self.run_unit(UnitInput(window_index=0, epoch=0, start_ns=0, end_ns=0, image=image,
                                        image_stamp_ns=0, audio=silence))
        finally:
            self._decision_override = None
            self.options.mode = mode
        self.reset()

    # --- public ---
    def reset(self) -> None:
        self.cache = None                                     # the backend's LLM cache
        self.position = 0                                     # next LLM position == cache length
        self.prefix_len = 0
        self.unit_spans: Deque[Tuple[int, int]] = deque()     # cache spans of the kept units
        self.units_done = 0
        self.turn_ended = True                                # the released `current_turn_ended`
        self.in_turn = False                                  # a speaking turn is open (speech side)
        self.tts_state = TTSTurnState()
        self.waveform.start_turn()
        self.drawn_ids: List[int] = []                        # decoder history for the text penalty
        self.audio.reset(chunk_ms=int(round(self.options.window_sec * 1000)))
        self.generator = torch.Generator().manual_seed(int(self.options.seed))
        # turn-based state
        self.active_mode: Optional[str] = None
        self.tb_phase = "idle"            # idle | user | answer
        self.tb_heard_speech = False
        self.tb_silent_units = 0
        self.tb_user_units = 0
        self.tb_answer_units = 0
        self.tb_answered = False          # an answer was generated since the last user message
        self.tb_logits: Optional[torch.Tensor] = None
        self.tb_text_ids: List[int] = []

    def interrupt(self) -> bool:
        """The person spoke over the robot (barge-in): close the robot's turn now.

        duplex: the open turn is marked ended, so the next unit may start with `<|listen|>`
        (mid-turn it would be turned into `<|tts_bos|>`), and the speech decoder's turn cache and
        waveform context are dropped. The units already fed stay in the LLM context, and the
        person's audio keeps arriving as the following units: the model listens with their words
        in context. No token is fed for the cut (the released protocol has none).
        turn_based: an answer in progress stops; the next unit opens a user message, closing the
        cut answer first with `<|tts_eos|><|im_end|>` as after a finished answer.
        Returns True when a turn was open."""
        was_open = self.in_turn or not self.turn_ended or self.tb_phase == "answer"
        if self.tb_phase == "answer":
            self.tb_phase, self.tb_answered, self.tb_logits = "idle", True, None
        self.turn_ended = True
        self._end_speech_turn()
        return was_open

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
    def _ids(self, text: str) -> List[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _feed_ids(self, ids: List[int], need_logits: bool = True):
        if self.trace is not None:
            self.trace.extend(int(i) for i in ids)
        return self._feed(self.compute.embed_tokens(ids), need_logits, _traced=True)

    def _feed(self, embeds: torch.Tensor, need_logits: bool = True, _traced: bool = False):
        """Append embeds [n, D]; returns (hidden [n, D] after the final norm, logits [V] or None)."""
        if self.trace is not None and not _traced:
            self.trace.append(("embeds", int(embeds.shape[0])))
        hidden, logits = self.compute.llm_step(embeds, self.position, self.cache,
                                               need_logits=need_logits and self.head is None)
        self.position += embeds.shape[0]
        if need_logits and self.head is not None:
            logits = self.head(hidden[-1]).float()
        return hidden, logits

    def system_text(self) -> str:
        """The system prompt the model is given: the prompt, then the standing instruction."""
        o = self.options
        if o.standing_instruction.strip():
            return f"{o.system_prompt}\n{o.standing_instruction.strip()}"
        return o.system_prompt

    def _reference_voice(self) -> Optional[np.ndarray]:
        return None if self.voice is None else self.voice.audio_16k.numpy()

    def _prefill(self) -> None:
        """The system prefix exactly as the released code builds it, for the mode at prefill time
        (it stays until the next reset, whatever the mode later):
        duplex (`MiniCPMODuplex.prepare` with the demo's prefix/suffix strings):
          `<|im_start|>system\\n{text}\\n<|audio_start|>` + the voice's audio embeddings (none
          without a voice: the span is then empty) + `<|audio_end|><|im_end|>`;
        turn_based (`streaming_prefill` of the system message through the chat template,
          omni_mode): `<|im_start|>system\\n{text}` + the voice as one
          `<|audio_start|>`...`<|audio_end|>` span per started second (as the processor chunks
          audio; nothing without a voice) + `<|im_end|>\\n`."""
        self.cache = self.compute.new_llm_cache()
        prompt = self.system_text()
        voice = self._reference_voice()
        embeds = None
        if voice is not None:
            wav = torch.from_numpy(np.ascontiguousarray(voice, dtype=np.float32))[None]
            embeds = embed_audio(self.compute, wav)[0].to(self.compute.dtype)
        if self.options.mode == "turn_based":
            self._feed_ids(self._ids(f"<|im_start|>system\n{prompt}"), need_logits=False)
            if embeds is not None:
                per_chunk = pooled_length(100, self.compute.config.audio_pool_step)   # 1 s of mel
                for start in range(0, embeds.shape[0], per_chunk):
                    self._feed_ids([self.sp.audio_start], need_logits=False)
                    self._feed(embeds[start: start + per_chunk], need_logits=False)
                    self._feed_ids([self.sp.audio_end], need_logits=False)
            self._feed_ids(self._ids("<|im_end|>\n"), need_logits=False)
        else:
            self._feed_ids(self._ids(f"<|im_start|>system\n{prompt}\n<|audio_start|>"), need_logits=False)
            if embeds is not None:
                self._feed(embeds, need_logits=False)
            self._feed_ids(self._ids("<|audio_end|><|im_end|>"), need_logits=False)
        self.prefix_len = self.position

    # --- context window ---
    def _drop_oldest_unit(self) -> None:
        start, end = self.unit_spans.popleft()
        delta = end - start
        # keys after the span move back by delta positions: rotated by -delta (RoPE composes)
        self.compute.llm_drop_span(self.cache, start, end)
        self.unit_spans = deque((s - delta, e - delta) for s, e in self.unit_spans)
        self.position -= delta

    # --- sampling ---
    def _draw(self, probs: torch.Tensor) -> int:
        """One draw from `probs` [V] by inverse CDF (same law as torch.multinomial, much faster on
        a 151748-entry vocabulary); reproducible for the session seed."""
        cdf = torch.cumsum(probs.double(), dim=0)
        u = float(torch.rand(1, generator=self.generator, dtype=torch.float64)) * float(cdf[-1])
        i = int(torch.searchsorted(cdf, torch.tensor([u], dtype=torch.float64), right=True))
        i = min(i, probs.shape[0] - 1)
        while probs[i] <= 0 and i > 0:          # never land on a zero-probability entry
            i -= 1
        return i

    def _sample_filtered(self, logits: torch.Tensor) -> int:
        """temperature, top-k, top-p (the released filter), then one draw."""
        o = self.options
        logits = logits / max(o.temperature, 1e-5)
        if o.top_k and 0 < o.top_k < logits.shape[0]:
            vals, order = torch.topk(logits, o.top_k)              # only these can survive
            filtered = _top_k_top_p(vals, 0, o.top_p)
            return int(order[self._draw(torch.softmax(filtered, dim=-1))])
        return self._draw(torch.softmax(_top_k_top_p(logits, 0, o.top_p), dim=-1))

    def decode(self, logits: torch.Tensor) -> int:
        """The released duplex decoder (StreamDecoder.decode) on one step's logits [V]."""
        o, sp = self.options, self.sp
        logits = logits.float().cpu().clone()
        greedy = o.decode_mode == "greedy"
        if greedy:
            first_is_eos = int(torch.argmax(logits)) == sp.chunk_eos
        else:
            # first draw from the raw distribution; only whether it is <|chunk_eos|> matters
            p_eos = float(torch.exp(logits[sp.chunk_eos] - torch.logsumexp(logits, dim=0)))
            first_is_eos = float(torch.rand(1, generator=self.generator, dtype=torch.float64)) < p_eos
        if first_is_eos:
            return sp.chunk_eos
        logits[self.masked_ids["duplex"]] = float("-inf")     # tts_pad, chunk_eos, bad_token_ids
        if o.repetition_penalty != 1.0 and self.drawn_ids:
            recent = sorted(set(self.drawn_ids[-o.text_repetition_window_size:]))
            idx = torch.tensor([i for i in recent if i < logits.shape[0]], dtype=torch.long)
            if o.repetition_penalty > 1.0:
                logits[idx] = logits[idx] / o.repetition_penalty
            else:
                logits[idx] = logits[idx] * (1.0 / o.repetition_penalty)
        if o.length_penalty != 1.0:
            v = logits[sp.turn_eos]
            logits[sp.turn_eos] = v / o.length_penalty if v > 0 else v * o.length_penalty
        if o.listen_prob_scale != 1.0:
            logits[sp.listen] = logits[sp.listen] * o.listen_prob_scale
        if o.listen_top_k is not None:
            rank = int((logits > logits[sp.listen]).sum())
            if rank < o.listen_top_k:
                return sp.listen
        tok = int(torch.argmax(logits)) if greedy else self._sample_filtered(logits)
        self.drawn_ids.append(tok)
        del self.drawn_ids[:-max(1, o.text_repetition_window_size)]
        return tok

    def _speak_probability(self, logits: torch.Tensor) -> float:
        p = torch.softmax(logits.float(), dim=-1)
        pl, ps = float(p[self.sp.listen]), float(p[self.sp.speak])
        return ps / (pl + ps) if pl + ps > 0 else 0.0

    # --- speech ---
    def _end_speech_turn(self) -> None:
        self.in_turn = False
        self.tts_state = TTSTurnState()
        self.waveform.start_turn()           # codes not yet spoken are dropped

    def _speech(self, ids: List[int], hidden: List[torch.Tensor], end_of_turn: bool,
                text_eos: bool = False) -> np.ndarray:
        """The speech of this unit's condition tokens (released duplex TTS step): one window, plus
        the waveform stage's final flush (0.28 s: the held-back lookahead and overlap) when the turn
        ends."""
        o, c = self.options, self.compute
        t = c.config.tts_config
        rows = condition_rows(ids, torch.stack(hidden) if hidden else None, text_eos, t,
                              c.config.hidden_size)
        cond = c.tts_condition(*rows)
        n_codes = int(round(o.window_sec * t.codes_per_second))
        if self.tts_state.position + cond.shape[0] + n_codes + 1 > t.max_position_embeddings:
            self.tts_state = TTSTurnState()       # a very long turn: restart the decoder context
        turn_start = self.tts_state.position == 0
        codes = generate_codes(c.tts_step, c.tts_code_embed, c.new_tts_cache, cond, self.tts_state,
                               self.generator, max_new_tokens=n_codes + 1,
                               min_new_tokens=0 if (turn_start or end_of_turn) else n_codes + 1,
                               temperature=o.tts_temperature,
                               repetition_penalty=o.tts_repetition_penalty, eos=t.audio_eos_code)
        # the released schedule: early flushes at a turn's first unit, the last chunk at its end
        wav = self.waveform.push(codes, turn_start=turn_start, end_of_turn=end_of_turn)
        if wav.shape[0] < self.waveform.window_samples:    # a turn that ended short: silence after it
            wav = np.pad(wav, (0, self.waveform.window_samples - wav.shape[0]))
        if end_of_turn:
            self._end_speech_turn()
        return wav

    # --- one unit ---
    def _unit_inputs(self, unit: UnitInput) -> Tuple[np.ndarray, torch.Tensor, Optional[torch.Tensor]]:
        n_in = int(round(self.options.window_sec * INPUT_SAMPLE_RATE))
        audio = np.nan_to_num(np.asarray(unit.audio, dtype=np.float32).reshape(-1))
        audio = np.pad(audio, (0, max(0, n_in - audio.shape[0])))[:n_in]
        image = self.compute.vision(unit.image) if unit.image is not None else None
        return audio, self.audio.embed_unit(audio), image

    def _run_unit(self, unit: UnitInput) -> UnitOutput:
        o = self.options
        mode = o.mode if o.mode in MODES else "duplex"
        if self.cache is None:
            self._prefill()
        start = self.position
        if self.active_mode is not None and mode != self.active_mode:
            self._switch_mode(mode)
        self.active_mode = mode
        out = self._duplex_unit(unit) if mode == "duplex" else self._turn_based_unit(unit)
        self.units_done += 1
        if self.position > start:
            self.unit_spans.append((start, self.position))
        while len(self.unit_spans) > max(1, o.max_context_units):
            self._drop_oldest_unit()
        return out

    def _switch_mode(self, new_mode: str) -> None:
        sp = self.sp
        if new_mode == "turn_based":
            # a duplex speaking turn in progress is cut; turn-based starts with a fresh user message
            if self.in_turn:
                self._end_speech_turn()
            self.turn_ended = True
            self.tb_phase = "idle"
            self.tb_answered = False
        else:
            # close an open turn-based message so the duplex units follow a complete one
            if self.tb_phase == "answer":
                self._feed_ids([sp.tts_eos, sp.im_end] + self._ids("\n"), need_logits=False)
            elif self.tb_phase == "user":
                self._feed_ids([sp.im_end] + self._ids("\n"), need_logits=False)
            if self.in_turn:
                self._end_speech_turn()
            self.tb_phase = "idle"
            self.turn_ended = True

    def _duplex_unit(self, unit: UnitInput) -> UnitOutput:
        o, sp = self.options, self.sp
        _, audio_emb, image_emb = self._unit_inputs(unit)
        has_audio = audio_emb.shape[0] > 0
        _, logits = self._feed_ids([sp.unit_start], need_logits=image_emb is None and not has_audio)
        if image_emb is not None:
            self._feed_ids([sp.image_start], need_logits=False)
            self._feed(image_emb, need_logits=False)
            _, logits = self._feed_ids([sp.image_end], need_logits=not has_audio)
        if has_audio:
            _, logits = self._feed(audio_emb)
        speak_prob = self._speak_probability(logits)

        forced = self.units_done < o.force_listen_count
        terminators = (sp.listen, sp.chunk_eos, sp.chunk_tts_eos)
        pending: Optional[int] = None
        fed: List[int] = []
        cond_ids: List[int] = []
        cond_hidden: List[torch.Tensor] = []
        end_of_turn = False
        for j in range(o.max_text_tokens_per_unit):
            if j == o.max_text_tokens_per_unit - 1:
                pending = sp.chunk_eos
                break
            if self._decision_override is not None and j == 0:
                tok = sp.speak if self._decision_override else sp.listen
            elif forced:
                tok = sp.listen
            else:
                tok = self.decode(logits)
                if tok == sp.listen and not self.turn_ended:
                    tok = sp.tts_bos
            if tok in terminators:
                pending = tok
                break
            self.turn_ended = False
            if j != 0 and o.max_unit_chars > 0:
                text = self.tok.decode(cond_ids + [tok], skip_special_tokens=True)
                if len(text) >= o.max_unit_chars:
                    pending = sp.chunk_eos
                    break
            hidden, logits = self._feed_ids([tok])
            fed.append(tok)
            end_of_turn = tok == sp.turn_eos
            if end_of_turn:
                self.turn_ended = True
            if j != 0:
                cond_ids.append(tok)
                cond_hidden.append(hidden[-1])
        self._feed_ids(([pending] if pending is not None else []) + [sp.unit_end], need_logits=False)

        if not fed:
            return UnitOutput(is_listen=True, speak_probability=speak_prob)
        self.in_turn = True
        speech = self._speech(cond_ids, cond_hidden, end_of_turn)
        text = self.tok.decode(cond_ids, skip_special_tokens=True) if cond_ids else ""
        return UnitOutput(is_listen=False, text=text, speech=speech, end_of_turn=end_of_turn,
                          speak_probability=speak_prob)

    # --- turn-based ---
    def _turn_based_unit(self, unit: UnitInput) -> UnitOutput:
        o, sp = self.options, self.sp
        if self.tb_phase == "answer":
            return self._answer_unit()
        audio, audio_emb, image_emb = self._unit_inputs(unit)
        if self.tb_phase == "idle":
            if self.tb_answered:
                head = "<|tts_eos|><|im_end|>\n<|im_start|>user\n"
            else:
                head = "<|im_start|>user\n"
            self._feed_ids(self._ids(head), need_logits=False)
            self.tb_phase, self.tb_heard_speech, self.tb_silent_units, self.tb_user_units = "user", False, 0, 0
        if image_emb is not None:
            self._feed_ids([sp.image_start], need_logits=False)
            self._feed(image_emb, need_logits=False)
            self._feed_ids([sp.image_end], need_logits=False)
        self._feed_ids([sp.audio_start], need_logits=False)
        if audio_emb.shape[0]:
            self._feed(audio_emb, need_logits=False)
        self._feed_ids([sp.audio_end], need_logits=False)
        self.tb_user_units += 1
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if audio.size else 0.0
        if rms >= o.turn_end_rms:
            self.tb_heard_speech, self.tb_silent_units = True, 0
        else:
            self.tb_silent_units += 1
        turn_over = (self.tb_heard_speech and self.tb_silent_units >= max(1, o.turn_end_silence_units)) \
            or self.tb_user_units >= o.max_user_units
        if turn_over:
            bos = "<|im_end|>\n<|im_start|>assistant\n" + THINK_EMPTY + "<|tts_bos|>"
            _, self.tb_logits = self._feed_ids(self._ids(bos))
            self.tb_phase, self.tb_answer_units, self.tb_answered = "answer", 0, False
            self.tb_text_ids = []
            self._end_speech_turn()
        return UnitOutput(is_listen=True)

    def _sample_turn_based(self, logits: torch.Tensor) -> int:
        o, sp = self.options, self.sp
        logits = logits.float().cpu().clone()
        logits[self.masked_ids["turn_based"]] = float("-inf")   # bad_token_ids, punctuation, tts_pad
        if o.repetition_penalty != 1.0 and self.tb_text_ids:
            idx = torch.tensor(sorted(set(self.tb_text_ids[-128:])), dtype=torch.long)
            vals = logits[idx]
            logits[idx] = torch.where(vals > 0, vals / o.repetition_penalty, vals * o.repetition_penalty)
        if o.decode_mode == "greedy":
            return int(torch.argmax(logits))
        return self._sample_filtered(logits)

    def _answer_unit(self) -> UnitOutput:
        """One unit of answer: a fixed chunk of text tokens, then one window of speech."""
        o, sp = self.options, self.sp
        logits = self.tb_logits
        ids: List[int] = []
        hidden: List[torch.Tensor] = []
        finished = False
        for _ in range(max(1, o.turn_based_text_tokens)):
            tok = self._sample_turn_based(logits)
            if tok in (sp.tts_eos, sp.im_end):
                finished = True
                break
            h, logits = self._feed_ids([tok])
            ids.append(tok)
            hidden.append(h[-1])
            self.tb_text_ids.append(tok)
        self.tb_logits = logits
        self.tb_answer_units += 1
        if self.tb_answer_units >= o.max_answer_units:
            finished = True
        self.in_turn = True
        speech = self._speech(ids, hidden, end_of_turn=finished, text_eos=finished)
        if finished:
            self.tb_phase, self.tb_answered = "idle", True
            self.tb_logits = None
        text = self.tok.decode(ids, skip_special_tokens=True) if ids else ""
        return UnitOutput(is_listen=False, text=text, speech=speech, end_of_turn=finished,
                          speak_probability=1.0)
