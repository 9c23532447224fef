"""A reference voice as the waveform stage reads it: a wav file at 16 kHz (prompt codes, speaker
embedding, and the LLM's voice slot) and at 24 kHz (the prompt mel).

Rates other than 16 and 24 kHz are converted with a windowed-sinc resampler (Hann window, 6 zero
crossings, roll-off 0.99): the resampler the released stage applies to its prompt wav, so the same
file gives the same prompt here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Tuple

import numpy as np
import soundfile
import torch
import torch.nn.functional as F

from .prompt import SAMPLE_RATE as PROMPT_RATE   # the speech tokenizer's and speaker encoder's rate
MEL_RATE = 24000
MAX_VOICE_SECONDS = 30.0


class VoiceError(ValueError):
    """A reference voice that cannot be used (unreadable, empty, silent-only, too long)."""


@lru_cache(maxsize=8)
def _sinc_kernel(orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> Tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc kernels [new, 1, taps] (float32, computed in float64) and the pad width."""
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    # the phase offsets are computed in the default dtype, then added to the float64 grid
    t = torch.arange(0, -new, -1)[:, None, None] / new + idx
    t = (t * base).clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    kernels = torch.where(t == 0, torch.tensor(1.0, dtype=t.dtype), t.sin() / t) * (window * (base / orig))
    return kernels.to(torch.float32), width


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """[..., N] float32 at `orig_rate` -> [..., ceil(N * new / orig)] at `new_rate`."""
    if orig_rate == new_rate:
        return audio
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    kernels, width = _sinc_kernel(orig, new)
    shape = audio.shape
    x = audio.reshape(-1, shape[-1])
    length = x.shape[-1]
    y = F.conv1d(F.pad(x, (width, width + orig))[:, None], kernels, stride=orig)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[..., :math.ceil(new * length / orig)]
    return y.reshape(*shape[:-1], y.shape[-1])


@dataclass(frozen=True)
class Voice:
    """A reference voice: `audio_16k` [N] (first channel) and `audio_24k` [M] (channel mean)."""
    audio_16k: torch.Tensor
    audio_24k: torch.Tensor
    source: str

    @classmethod
    def from_wav(cls, path) -> "Voice":
        path = Path(path)
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except Exception as e:
            raise VoiceError(f"reference voice {path}: cannot read it as audio ({e})") from e
        return cls.from_samples(data, rate, str(path))

    @classmethod
    def from_samples(cls, samples: np.ndarray, rate: int, source: str = "samples") -> "Voice":
        data = np.asarray(samples, dtype=np.float32)
        data = data[:, None] if data.ndim == 1 else data           # [N, channels]
        if data.shape[0] == 0:
            raise VoiceError(f"reference voice {source}: no samples")
        if not np.isfinite(data).all():
            raise VoiceError(f"reference voice {source}: holds NaN or infinite samples")
        seconds = data.shape[0] / float(rate)
        if seconds > MAX_VOICE_SECONDS:
            raise VoiceError(f"reference voice {source}: {seconds:.1f} s, longer than {MAX_VOICE_SECONDS:.0f} s "
                             "(a few seconds of clear speech is what the model expects)")
        if seconds < 0.5:
            raise VoiceError(f"reference voice {source}: {seconds:.2f} s, shorter than 0.5 s")
        channels = torch.from_numpy(np.ascontiguousarray(data.T))   # [C, N]
        return cls(audio_16k=resample(channels[0], rate, PROMPT_RATE).contiguous(),
                   audio_24k=resample(channels.mean(dim=0), rate, MEL_RATE).contiguous(), source=source)
