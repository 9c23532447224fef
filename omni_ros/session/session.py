"""OmniSession: one 1 s unit at a time, in the protocol `options.mode` names at every unit (so the
mode can change at run time without a restart): duplex (omni_ros.session.duplex) or turn_based
(omni_ros.session.turn_based).

The session is its parts, each with its own streaming state and one `reset`: the LLM context
(omni_ros.session.context), the streaming audio front end (audio_stream), the speech decoder and
waveform stream (speech, waveform), the sampler (sampling) and the two protocols. It runs every
graph through a backend's `Compute` (omni_ros.session.compute) and never touches weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

import numpy as np
import torch

from omni_ros.flow.types import (INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, ContextRebuild,
                                 DuplexSession, SessionCapabilities, UnitInput, UnitOutput)
from omni_ros.model.token2wav.voice import PROMPT_RATE, Voice, VoiceError
from omni_ros.model.tokenizer import decoding_masks

from .audio_stream import StreamingAudioEncoder, embed_audio
from .compute import Compute
from .context import LLMContext
from .duplex import DuplexProtocol
from .options import MODES, SessionOptions
from .sampling import Sampler
from .speech import SpeechStream
from .turn_based import TurnBasedProtocol
from .waveform import WaveformStream


# The protocols by mode (options.MODES names them; the node's `mode` parameter offers them).
PROTOCOLS = {"duplex": DuplexProtocol, "turn_based": TurnBasedProtocol}
# Options that are part of the system prefix: a change rebuilds the context at the next unit.
PREFIX_OPTIONS = frozenset({"system_prompt", "standing_instruction", "reference_voice",
                            "reference_voice_samples"})


@dataclass
class UnitEmbeddings:
    """A unit's inputs as the LLM takes them."""

    samples: np.ndarray              # the window's audio, float32 16 kHz, one window long
    audio: torch.Tensor              # [n, D] (n = 10 per second; 0 while the stream fills)
    image: Optional[torch.Tensor]    # [Q, D], or None without a frame


class OmniSession(DuplexSession):
    """The MiniCPM-o 4.5 session over any backend's Compute (omni_ros.runtime builds one)."""

    option_names = SessionOptions.names()

    def __init__(self, compute: Compute, options: Optional[SessionOptions] = None):
        self.compute = compute
        self.options = options or SessionOptions()
        options = self.options
        self.special = compute.special
        self.tokenizer = compute.tokenizer
        self.capabilities = SessionCapabilities(window_samples=int(round(options.window_sec * INPUT_SAMPLE_RATE)))
        self.decision_override: Optional[bool] = None   # warm-up only: force listen/speak
        # ids masked before the decoding draw, per mode (the released forbidden lists: `<|tts_pad|>`,
        # `<|chunk_eos|>` after the first raw draw, the checkpoint's `bad_token_ids`, ...)
        self.masked_ids = {mode: torch.tensor(ids, dtype=torch.long)
                           for mode, ids in decoding_masks(self.tokenizer, self.special).items()}
        self.sampler = Sampler(options.seed)
        self.context = LLMContext(compute)
        self.audio = StreamingAudioEncoder(compute, chunk_ms=int(round(options.window_sec * 1000)))
        self.speech = SpeechStream(compute, self._new_waveform_stream(),
                                   int(round(options.window_sec * compute.config.tts_config.codes_per_second)))
        self.protocols = {mode: PROTOCOLS[mode](self) for mode in MODES}
        self.voice: Optional[Voice] = None
        self.set_voice()
        self.reset()

    # --- the reference voice ---
    def _voice_from_options(self) -> Voice:
        options = self.options
        if options.reference_voice:
            return Voice.from_wav(options.reference_voice)
        if options.reference_voice_samples is not None:
            return Voice.from_samples(np.asarray(options.reference_voice_samples, dtype=np.float32).reshape(-1),
                                      PROMPT_RATE, "reference voice samples")
        if self.compute.default_voice is None:
            raise VoiceError("no reference voice: set the reference_voice parameter to a wav file of a few "
                             "seconds of speech (the checkpoint has no default voice at "
                             "assets/ref_audio/ref_minicpm_signature.wav)")
        return Voice.from_wav(self.compute.default_voice)

    def _new_waveform_stream(self) -> WaveformStream:
        options = self.options
        codes = int(round(options.window_sec * self.compute.config.tts_config.codes_per_second))
        return WaveformStream(self.compute.waveform, steps=options.token2wav_steps, seed=options.seed, chunk_codes=codes,
                              window_samples=int(round(options.window_sec * OUTPUT_SAMPLE_RATE)))

    @property
    def waveform(self) -> WaveformStream:
        return self.speech.waveform

    def set_voice(self, voice: Optional[Voice] = None) -> None:
        """Take `voice` (default: read it as the options say) and recompute the waveform stage's
        prompt caches (about one decode call's time). Speech of an open turn restarts with the new
        voice; the LLM's voice slot takes it at the next unit (apply_options rebuilds the context)."""
        voice = voice if voice is not None else self._voice_from_options()
        if self.waveform.steps != int(self.options.token2wav_steps):
            self.speech.waveform = self._new_waveform_stream()
        self.waveform.set_voice(voice)
        self.voice = voice

    # --- the contract (omni_ros.flow.types.DuplexSession) ---
    def apply_options(self, changes: Mapping[str, Any]) -> None:
        """All of `changes` or none: a new reference voice is read first (ValueError when it
        cannot be), then every option is set; the voice's prompt is recomputed at once."""
        super().apply_options(changes)
        voice = None
        if "reference_voice" in changes and changes["reference_voice"]:
            try:
                voice = Voice.from_wav(changes["reference_voice"])
            except VoiceError as error:
                raise ValueError(str(error)) from None
        text_before, voice_before = self.system_text(), self.voice
        for name, value in changes.items():
            setattr(self.options, name, value)
        if "reference_voice" in changes:
            self.set_voice(voice)
        if self.context.started and (self.system_text() != text_before or self.voice is not voice_before):
            changed = sorted(set(changes) & PREFIX_OPTIONS)
            self.prefix_changed = ", ".join(changed) or "system prefix"

    def warmup(self) -> None:
        """Run one listening and one speaking unit on silence, then reset. The first call of each
        path pays lazy initialisation (seconds on some machines) that must not land on a real
        window."""
        silence = np.zeros(self.capabilities.window_samples, np.float32)
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        mode = self.options.mode
        try:
            self.options.mode = "duplex"
            for speak in (False, True):
                self.decision_override = speak
                self.run_unit(UnitInput(window_index=0, epoch=0, start_ns=0, end_ns=0, image=image,
                                        image_stamp_ns=0, audio=silence))
        finally:
            self.decision_override = None
            self.options.mode = mode
        self.reset()

    def reset(self) -> None:
        """Every part back to its start: context, audio stream, speech, protocols, the draws."""
        self.units_done = 0
        self.active_mode: Optional[str] = None
        self.prefix_changed: Optional[str] = None     # what changed the prefix: rebuild next unit
        self.context.reset()
        self.audio.reset(chunk_ms=int(round(self.options.window_sec * 1000)))
        self.speech.reset()
        for protocol in self.protocols.values():
            protocol.reset()
        self.sampler.reseed(self.options.seed)

    def interrupt(self) -> bool:
        """The person spoke over the robot (barge-in): close the robot's turn now. Each protocol
        closes its own (see theirs), and the speech decoder's turn cache and waveform context are
        dropped. The units already fed stay in the LLM context, and the person's audio keeps
        arriving as the following units: the model listens with their words in context.
        Returns True when a turn was open."""
        was_open = [self.speech.in_turn] + [p.interrupt() for p in self.protocols.values()]
        self.speech.end_turn()
        return any(was_open)

    def run_unit(self, unit: UnitInput) -> UnitOutput:
        with torch.inference_mode():
            mode = self.options.mode if self.options.mode in MODES else "duplex"
            rebuild = None
            if not self.context.started:
                self._prefill()
            elif self.prefix_changed:
                rebuild = self.rebuild_context(self.prefix_changed)
            self.context.begin_unit()
            if self.active_mode is not None and mode != self.active_mode:
                self._switch_mode(mode)
            self.active_mode = mode
            out = self.protocols[mode].run(unit)
            self.units_done += 1
            self.context.end_unit(self.options.max_context_units)
            out.context_rebuild = rebuild
            return out

    def rebuild_context(self, reason: str) -> ContextRebuild:
        """A new system prefix (the options' prompt, standing instruction and voice) under the
        units the context keeps, fed again from their records: the conversation goes on under
        the new instruction. Turn state, speech and the draws are untouched."""
        started = time.perf_counter()
        records = self.context.take_units()
        self._prefill(self.active_mode)
        self.context.replay(records)
        self.prefix_changed = None
        return ContextRebuild(reason=reason, units=len(self.context.unit_records),
                              tokens=self.context.position, ms=(time.perf_counter() - started) * 1000.0)

    # --- used by the protocols ---
    @property
    def cache_length(self) -> int:
        return self.context.length

    @property
    def context_units(self) -> int:
        return len(self.context.unit_spans)

    def system_text(self) -> str:
        """The system prompt the model is given: the prompt, then the standing instruction."""
        options = self.options
        if options.standing_instruction.strip():
            return f"{options.system_prompt}\n{options.standing_instruction.strip()}"
        return options.system_prompt

    def embed_unit(self, unit: UnitInput) -> UnitEmbeddings:
        n_in = self.capabilities.window_samples
        audio = np.nan_to_num(np.asarray(unit.audio, dtype=np.float32).reshape(-1))
        audio = np.pad(audio, (0, max(0, n_in - audio.shape[0])))[:n_in]
        image = self.compute.vision(unit.image) if unit.image is not None else None
        return UnitEmbeddings(audio, self.audio.embed_unit(audio), image)

    def speak(self, ids: List[int], hidden: List[torch.Tensor], end_of_turn: bool,
              text_eos: bool = False) -> np.ndarray:
        options = self.options
        return self.speech.speak(ids, hidden, end_of_turn, self.sampler, options.tts_temperature,
                                 options.tts_repetition_penalty, text_eos=text_eos)

    def _prefill(self, mode: Optional[str] = None) -> None:
        """The system prefix exactly as the released code builds it, for the mode at prefill time
        (it stays until the next reset or rebuild, whatever the mode later)."""
        self.context.start()
        voice = None
        if self.voice is not None:
            wav = self.voice.audio_16k.float()[None]
            voice = embed_audio(self.compute, wav)[0].to(self.compute.dtype)
        mode = mode or (self.options.mode if self.options.mode in MODES else "duplex")
        self.protocols[mode].prefill(self.system_text(), voice)
        self.context.end_prefix()

    def _switch_mode(self, new_mode: str) -> None:
        """The old protocol closes what it has open, a speaking turn in progress is cut, the new
        protocol starts afresh."""
        self.protocols[self.active_mode].leave()
        if self.speech.in_turn:
            self.speech.end_turn()
        self.protocols[new_mode].enter()
