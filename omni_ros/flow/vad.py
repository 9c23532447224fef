"""Voice activity on 16 kHz audio: silero-vad's ONNX model in onnxruntime, or a plain energy gate.

Used by the unit runner (did a person speak in recent windows?) and by barge-in (is a person
talking over the robot, every 32 ms while it speaks). The ONNX model shipped inside the silero-vad
wheel gives the same probabilities as its TorchScript one (checked in the tests) at about 0.08 ms
per 512-sample chunk instead of about 2 ms, and keeps torch out of omni_ros.flow.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .types import INPUT_SAMPLE_RATE

CHUNK_SAMPLES = 512   # what silero-vad takes at 16 kHz
CONTEXT_SAMPLES = 64  # the tail of the previous chunk that silero-vad prepends at 16 kHz
STATE_SHAPE = (2, 1, 128)
MODEL_FILE = "silero_vad.onnx"


def silero_onnx_path() -> str:
    from importlib.resources import files  # noqa: PLC0415

    return str(files("silero_vad.data") / MODEL_FILE)


class VoiceActivity:
    """Streaming speech probability with silero-vad; state is kept across calls until reset().

    Each call feeds the audio in 512-sample chunks; samples that do not fill a chunk are carried
    over to the next call (at most 511), so consecutive calls form one stream.
    """

    def __init__(self, num_threads: Optional[int] = None) -> None:
        import onnxruntime as ort  # noqa: PLC0415 - imported when voice activity is wanted

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads or 1)   # one small model, called often
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(silero_onnx_path(), options,
                                             providers=["CPUExecutionProvider"])
        self._rate = np.array(INPUT_SAMPLE_RATE, dtype=np.int64)
        self._input = np.zeros((1, CONTEXT_SAMPLES + CHUNK_SAMPLES), dtype=np.float32)
        self.chunks_processed = 0
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._input[:] = 0.0                      # the context of the first chunk is silence
        self._carry = np.zeros(0, dtype=np.float32)
        self.last_probability = 0.0

    def _chunk(self, chunk: np.ndarray) -> float:
        x = self._input
        x[0, :CONTEXT_SAMPLES] = x[0, -CONTEXT_SAMPLES:]       # previous chunk's tail
        x[0, CONTEXT_SAMPLES:] = chunk
        out, self._state = self._session.run(None, {"input": x, "state": self._state,
                                                    "sr": self._rate})
        return float(out[0, 0])

    def speech_probability(self, window_audio_16k: np.ndarray) -> float:
        """Highest speech probability over the chunks completed by this audio (0..1)."""
        audio = np.asarray(window_audio_16k, dtype=np.float32).reshape(-1)
        if self._carry.shape[0]:
            audio = np.concatenate([self._carry, audio])
        whole = audio.shape[0] - audio.shape[0] % CHUNK_SAMPLES
        self._carry = audio[whole:].copy()
        if whole == 0:
            return self.last_probability
        best = 0.0
        p = 0.0
        audio = audio[:whole]
        if not np.isfinite(audio).all():
            audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
        for chunk in audio.reshape(-1, CHUNK_SAMPLES):
            p = self._chunk(chunk)
            best = max(best, p)
        self.chunks_processed += whole // CHUNK_SAMPLES
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
