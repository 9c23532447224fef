"""A session's options: what the node's parameters set, read by the session at every unit unless
a field says otherwise."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import numpy as np

MODES = ("duplex", "turn_based")


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
        known = cls.names()
        return cls(**{k: v for k, v in dict(values).items() if k in known})

    @classmethod
    def names(cls) -> frozenset:
        return frozenset(f.name for f in fields(cls))
