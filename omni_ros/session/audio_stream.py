"""The audio front end as a session streams it (the released processor and duplex code).

Two ways in:
- offline (`embed_audio`, the reference voice in the system prefix): mel with the 8 dB dynamic
  range over the whole clip, encoder with a 1 s chunked attention mask (each frame sees every
  frame up to the end of its own 1 s chunk), clips over 30 s split in 30 s pieces.
- streaming (`StreamingAudioEncoder`, one call per 1 s unit): the audio is accumulated in a buffer,
  the mel of the whole buffer is recomputed each unit and only "stable" frames are emitted
  (frames whose STFT window lies inside the buffer); the first chunk is 1035 ms (the first unit is
  zero-padded at the front to 16560 samples; the mel processor aligns the chunk down to the hop,
  16480 samples, so 80 samples carry over to the next unit), later chunks 1000 ms; each emitted
  chunk carries 2 mel frames (20 ms) of context on each side (none on the left of the first),
  which are cut again after the encoder's stride-2 convolution. The log floor is a fixed
  log10 floor of -10 while the buffer holds less than 5 s and max-8 (dynamic range 8) from then
  on; the buffer slides by 10 s once it reaches 30 s. The encoder keeps a key/value cache over
  past chunks (attention over all cached frames, position table offset by the cache length) and
  starts a fresh cache when cache + chunk would reach the 1500-position table.
The encoder itself runs in the backend (`Compute.audio`, the `audio` graph).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from omni_ros.model.audio import HOP_LENGTH, N_FFT, SAMPLE_RATE, LogMel, chunked_bias, pooled_length

from .compute import Compute

# streaming constants of the released duplex code
CHUNK_MS = 1000
FIRST_CHUNK_MS = 1035
CNN_REDUNDANCY_MS = 20
LOG_FLOOR = -10.0               # fixed log10 floor used while the buffer is short
FLOOR_UNTIL_SEC = 5.0
SLIDE_TRIGGER_SEC = 30.0
SLIDE_STRIDE_SEC = 10.0
OFFLINE_CHUNK_FRAMES = 50       # encoder frames per 1 s chunk (audio_chunk_length = 1.0)


def _encode(compute, mel: torch.Tensor, cut_left: int, cut_right: int, cache, bias_fn):
    """Run the `audio` graph on mel [80, T] with `cut_left`/`cut_right` encoder frames removed
    after the stride-2 conv; bias_fn(new, past) gives the attention bias."""
    conv = (mel.shape[-1] - 1) // 2 + 1
    hi = conv - cut_right if 0 < cut_right < conv - cut_left else conv
    keep = torch.arange(cut_left, hi)
    past = 0 if cache is None else cache.get_seq_length()
    return compute.audio(mel[None], keep, torch.arange(past, past + keep.numel()),
                         bias_fn(keep.numel(), past), cache)


def embed_audio(compute: Compute, wav: torch.Tensor) -> torch.Tensor:
    """Offline (the reference voice): [1, S] 16 kHz audio -> [1, n_tokens, hidden] (10 per second;
    30 s pieces)."""
    logmel = LogMel(compute.config.audio_config.num_mel_bins)
    piece = 30 * SAMPLE_RATE
    outs = []
    wav = wav.float().cpu()
    for start in range(0, max(1, wav.shape[1]), piece):
        seg = wav[:, start: start + piece]
        n_frames = max(1, math.ceil(seg.shape[1] / HOP_LENGTH))
        padded = F.pad(seg, (0, piece - seg.shape[1]))             # the processor pads to 30 s
        mel = logmel(padded)[0, :, :n_frames]
        pooled, _ = _encode(compute, mel, 0, 0, None,
                            lambda new, past: chunked_bias(new, past, OFFLINE_CHUNK_FRAMES))
        outs.append(pooled[: pooled_length(n_frames, compute.config.audio_pool_step)])
    return torch.cat(outs)[None]


class StreamingMel:
    """Exact streaming mel of the released processor (see module doc). numpy buffer, torch STFT."""

    def __init__(self, logmel: LogMel, chunk_ms: int = CHUNK_MS, first_chunk_ms: int = FIRST_CHUNK_MS,
                 redundancy_ms: int = CNN_REDUNDANCY_MS):
        self.logmel = logmel
        self.chunk_samples = int(round(chunk_ms * SAMPLE_RATE / 1000))
        self.chunk_frames = self.chunk_samples // HOP_LENGTH
        raw_first = int(round(first_chunk_ms * SAMPLE_RATE / 1000))
        self.first_chunk_samples = max(HOP_LENGTH, (raw_first // HOP_LENGTH) * HOP_LENGTH)
        self.redundancy_frames = max(0, int(redundancy_ms * SAMPLE_RATE / 1000) // HOP_LENGTH)
        self.reset()

    def reset(self) -> None:
        self.buffer = np.zeros(0, np.float32)
        self.last_emitted = 0          # global frame index of the next core frame
        self.base = 0                  # global frame index of the buffer's first frame
        self.chunks = 0
        self.raw_cache: Optional[torch.Tensor] = None   # [80, n] final raw frames of the buffer

    def next_chunk_samples(self) -> int:
        return self.first_chunk_samples if self.chunks == 0 else self.chunk_samples

    def _slide(self) -> None:
        if len(self.buffer) < SLIDE_TRIGGER_SEC * SAMPLE_RATE:
            return
        drop = int(SLIDE_STRIDE_SEC * SAMPLE_RATE)
        guard = min(SAMPLE_RATE, len(self.buffer) - drop)
        drop = min(drop, max(0, len(self.buffer) - guard))
        drop = (drop // HOP_LENGTH) * HOP_LENGTH
        if drop > 0:
            self.buffer = self.buffer[drop:]
            self.base += drop // HOP_LENGTH
            if self.raw_cache is not None:
                # frames 0 and 1 of the new buffer see its reflect padding: recompute them
                keep = self.raw_cache[:, drop // HOP_LENGTH:]
                self.raw_cache = keep if keep.shape[1] > 2 else None
                if self.raw_cache is not None:
                    head = self.logmel.raw(self._tensor(self.buffer[: 4 * N_FFT]))[0][:, :2]
                    self.raw_cache = torch.cat([head, self.raw_cache[:, 2:]], dim=1)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.logmel.window.device)[None]

    def _raw_full(self) -> torch.Tensor:
        """Raw log-mel of the whole buffer (as a full recomputation would give), reusing the
        frames whose STFT window lies inside the buffer from earlier calls."""
        n_total = len(self.buffer) // HOP_LENGTH                   # frames after the last is dropped
        n_cached = 0 if self.raw_cache is None else self.raw_cache.shape[1]
        if n_cached < 2:
            raw = self.logmel.raw(self._tensor(self.buffer))[0]
        else:
            s0 = n_cached * HOP_LENGTH - N_FFT // 2
            seg = self.buffer[s0:]
            seg = np.concatenate([seg, seg[-2:-(N_FFT // 2) - 2:-1]])  # centre-mode right reflect pad
            tail = self.logmel.raw(self._tensor(seg), center=False)[0][:, : n_total - n_cached]
            raw = torch.cat([self.raw_cache, tail], dim=1)
        stable = max(0, (len(self.buffer) - N_FFT // 2) // HOP_LENGTH + 1)
        self.raw_cache = raw[:, : min(stable, raw.shape[1])]
        return raw

    def process(self, chunk: np.ndarray) -> Tuple[torch.Tensor, int, int]:
        """Append one chunk; return (mel [80, T] with context, prefix_extra, suffix_extra)."""
        self.buffer = np.concatenate([self.buffer, np.asarray(chunk, np.float32)])
        self._slide()
        floor = LOG_FLOOR if len(self.buffer) < FLOOR_UNTIL_SEC * SAMPLE_RATE else None
        mel = LogMel.finish(self._raw_full(), floor)                  # [80, T_local]
        total = mel.shape[-1]
        stable = min(total, max(0, (len(self.buffer) - N_FFT // 2) // HOP_LENGTH + 1))
        core_start, core_end = self.last_emitted, self.last_emitted + self.chunk_frames
        r = self.redundancy_frames
        prefix = 0
        if self.base + stable >= core_end + r:
            start_g = max(0, core_start - r)
            prefix = core_start - start_g
            lo = max(0, min(start_g - self.base, total))
            hi = max(lo, min(core_end + r - self.base, total))
            out = mel[:, lo:hi]
            self.last_emitted = core_end
        else:
            out = mel[:, 0:0]
        self.chunks += 1
        return out, prefix, r


class StreamingAudioEncoder:
    """Per-session streaming audio state: unit audio in, 10 LLM tokens per second out."""

    def __init__(self, compute: Compute, chunk_ms: int = CHUNK_MS):
        self.compute = compute
        self.logmel = LogMel(self.compute.config.audio_config.num_mel_bins)
        self.positions = int(self.compute.config.audio_config.max_source_positions)
        self.reset(chunk_ms)

    def reset(self, chunk_ms: Optional[int] = None) -> None:
        """Forget the stream; `chunk_ms` (the unit length) sets the chunk size, the first chunk
        being 35 ms longer (1000/1035 ms in the release)."""
        if chunk_ms is not None or not hasattr(self, "mel"):
            chunk_ms = int(chunk_ms or CHUNK_MS)
            self.first_ms = chunk_ms + (FIRST_CHUNK_MS - CHUNK_MS)
            self.mel = StreamingMel(self.logmel, chunk_ms=chunk_ms, first_chunk_ms=self.first_ms)
        self.mel.reset()
        self.pending = np.zeros(0, np.float32)
        self.cache = None                      # the encoder's keys/values over past chunks

    @property
    def cache_length(self) -> int:
        return 0 if self.cache is None else self.cache.get_seq_length()

    def embed_unit(self, audio: np.ndarray) -> torch.Tensor:
        """One unit of 16 kHz audio -> [n, hidden] (n = 10 per second; empty if not enough audio)."""
        compute = self.compute
        self.pending = np.concatenate([self.pending, np.asarray(audio, np.float32).reshape(-1)])
        need = self.mel.next_chunk_samples()
        first = int(self.first_ms * SAMPLE_RATE / 1000)           # 16560: padded to, 16480 consumed
        if self.mel.chunks == 0 and len(self.pending) < first:
            self.pending = np.concatenate([np.zeros(first - len(self.pending), np.float32), self.pending])
        outs = []
        while len(self.pending) >= need:
            chunk, self.pending = self.pending[:need], self.pending[need:]
            mel, prefix, suffix = self.mel.process(chunk)
            need = self.mel.next_chunk_samples()
            if mel.shape[-1] == 0:
                continue
            n_enc = (mel.shape[-1] - 1) // 2 + 1
            if self.cache_length + n_enc >= self.positions:
                self.cache = None                      # the released code restarts the cache
            cut_l = (prefix + 1) // 2 if prefix > 0 else 0
            cut_r = (suffix + 1) // 2 if suffix > 0 else 0
            pooled, self.cache = _encode(compute, mel, cut_l, cut_r, self.cache,
                                         lambda new, past: chunked_bias(new, past, 0))
            outs.append(pooled[: pooled_length(mel.shape[-1], compute.config.audio_pool_step)])
        if not outs:
            return torch.zeros(0, compute.config.hidden_size, device=compute.device, dtype=compute.dtype)
        return torch.cat(outs).to(compute.dtype)
