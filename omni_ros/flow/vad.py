"""Voice activity on 16 kHz windows: silero-vad (torch JIT, imported lazily) or a plain energy gate.

Used by the duplex loop to know whether a person spoke in recent windows. torch is imported only
inside this module's functions, so the rest of omni_ros.flow stays torch-free.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np

from .types import INPUT_SAMPLE_RATE

CHUNK_SAMPLES = 512   # what silero-vad takes at 16 kHz


class VoiceActivity:
    """Streaming speech probability with silero-vad; state is kept across calls until reset().

    Each call feeds the window's audio in 512-sample chunks; samples that do not fill a chunk are
    carried over to the next call (at most 511), so consecutive windows form one stream.
    """

    def __init__(self, num_threads: Optional[int] = None) -> None:
        import torch  # noqa: PLC0415 - keep torch out of the flow package's import time
        from silero_vad import load_silero_vad  # noqa: PLC0415

        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self._torch = torch
        with warnings.catch_warnings():   # silero's importlib/jit.load deprecations are noise
            warnings.simplefilter("ignore", DeprecationWarning)
            self._model = load_silero_vad()   # the JIT model shipped inside the wheel
        self._model.eval()
        self._carry = np.zeros(0, dtype=np.float32)
        self.last_probability = 0.0
        self.chunks_processed = 0
        # TorchScript optimises the graph during its first calls (hundreds of ms each): pay that
        # now, not on the first real windows.
        for _ in range(3):
            self.speech_probability(np.zeros(CHUNK_SAMPLES, dtype=np.float32))
        self.chunks_processed = 0
        self.reset()

    def reset(self) -> None:
        self._model.reset_states()
        self._carry = np.zeros(0, dtype=np.float32)
        self.last_probability = 0.0

    def speech_probability(self, window_audio_16k: np.ndarray) -> float:
        """Highest speech probability over the chunks completed by this audio (0..1)."""
        audio = np.asarray(window_audio_16k, dtype=np.float32).reshape(-1)
        if self._carry.shape[0]:
            audio = np.concatenate([self._carry, audio])
        whole = audio.shape[0] - audio.shape[0] % CHUNK_SAMPLES
        self._carry = audio[whole:].copy()
        if whole == 0:
            return self.last_probability
        chunks = np.nan_to_num(audio[:whole]).reshape(-1, CHUNK_SAMPLES)
        torch = self._torch
        best = 0.0
        with torch.no_grad():
            for chunk in chunks:
                p = float(self._model(torch.from_numpy(chunk).unsqueeze(0), INPUT_SAMPLE_RATE))
                best = max(best, p)
        self.chunks_processed += chunks.shape[0]
        self.last_probability = p
        return best

    __call__ = speech_probability


def energy_speech_probability(window_audio_16k: np.ndarray, quiet_dbfs: float = -50.0,
                              loud_dbfs: float = -30.0) -> float:
    """A crude stand-in when no VAD is available: RMS level mapped linearly from quiet..loud to 0..1.

    With the defaults, 0.5 corresponds to -40 dBFS. Any loud sound counts, not only speech.
    """
    audio = np.asarray(window_audio_16k, dtype=np.float32)
    if audio.size == 0:
        return 0.0
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if not math.isfinite(rms) or rms <= 0.0:
        return 0.0
    level = 20.0 * math.log10(rms)
    return float(min(1.0, max(0.0, (level - quiet_dbfs) / (loud_dbfs - quiet_dbfs))))
