"""Audio modules as released: MiniCPM-o's log-mel front end (`LogMel`, with the release's two
floor rules), the Whisper-medium encoder (`apm.*`) and the projector (`audio_projection_layer.*`)
+ AvgPool1d(5): 100 mel frames/s -> 50 encoder frames/s -> 10 LLM tokens/s. The encoder takes
chunks of any length against a key/value cache; how audio is cut into chunks (the offline
reference voice, the streaming unit audio) is the session's (omni_ros.session.audio_stream).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

from omni_ros.flow.types import INPUT_SAMPLE_RATE

from .config import OmniConfig

SAMPLE_RATE = INPUT_SAMPLE_RATE   # the Whisper encoder's input rate
N_FFT = 400
HOP_LENGTH = 160
DYNAMIC_RANGE_DB = 8.0          # log10 units, as in Whisper


def mel_filters_np(num_mel_bins: int = 80) -> np.ndarray:
    """Slaney-style mel filterbank [1 + N_FFT//2, num_mel_bins] (Whisper's)."""
    return mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=num_mel_bins,
                           min_frequency=0.0, max_frequency=SAMPLE_RATE / 2,
                           sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")


class LogMel(nn.Module):
    """Whisper log-mel spectrogram with MiniCPM-o's two floor rules:
    `floor=None` -> max - dynamic_range (Whisper's 8 dB rule), else a fixed log10 floor; then (x+4)/4."""

    def __init__(self, num_mel_bins: int = 80):
        super().__init__()
        self.register_buffer("filters", torch.from_numpy(mel_filters_np(num_mel_bins).T.astype(np.float32)),
                             persistent=False)                       # [80, 201]
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def raw(self, wav: torch.Tensor, center: bool = True) -> torch.Tensor:
        """log10 mel power before any floor: [B, S] -> [B, 80, frames] (centre mode drops the
        last frame, as the release does)."""
        spec = torch.stft(wav.float(), N_FFT, HOP_LENGTH, window=self.window, center=center,
                          return_complex=True)
        power = spec.abs() ** 2
        if center:
            power = power[..., :-1]
        return torch.clamp(self.filters @ power, min=1e-10).log10()

    @staticmethod
    def finish(log: torch.Tensor, floor: Optional[float] = None,
               dynamic_range: float = DYNAMIC_RANGE_DB) -> torch.Tensor:
        if floor is None:
            log = torch.maximum(log, log.amax(dim=(-2, -1), keepdim=True) - dynamic_range)
        else:
            log = torch.clamp(log, min=floor)
        return (log + 4.0) / 4.0

    def forward(self, wav: torch.Tensor, floor: Optional[float] = None,
                dynamic_range: float = DYNAMIC_RANGE_DB) -> torch.Tensor:
        # wav [B, S] float32 16 kHz -> [B, 80, S // 160]
        return self.finish(self.raw(wav), floor, dynamic_range)


class WhisperAudioEncoder(nn.Module):
    """Whisper encoder with keys `conv1`, `conv2`, `embed_positions`, `layers.N.*`, `layer_norm`.

    Takes chunks of any length, slices the position table at an offset, optionally attends to a
    key/value cache of earlier chunks (streaming) or uses a chunked attention mask (offline).
    """

    def __init__(self, config: OmniConfig):
        super().__init__()
        a = config.audio_config
        wcfg = config.whisper_config()
        self.num_heads = a.encoder_attention_heads
        self.conv1 = nn.Conv1d(a.num_mel_bins, a.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(a.d_model, a.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(a.max_source_positions, a.d_model)   # [1500, D]
        self.layers = nn.ModuleList([WhisperEncoderLayer(wcfg) for _ in range(a.encoder_layers)])
        self.layer_norm = nn.LayerNorm(a.d_model)

    def _attention(self, layer: WhisperEncoderLayer, x: torch.Tensor, past: Optional[Tuple[torch.Tensor, torch.Tensor]],
                   mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        attn = layer.self_attn
        b, n, d = x.shape
        h = self.num_heads
        q = attn.q_proj(x).view(b, n, h, d // h).transpose(1, 2)
        k = attn.k_proj(x).view(b, n, h, d // h).transpose(1, 2)
        v = attn.v_proj(x).view(b, n, h, d // h).transpose(1, 2)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
        out = out.transpose(1, 2).reshape(b, n, d)
        return attn.out_proj(out), (k, v)

    def forward(self, mel: torch.Tensor, cache: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None,
                prefix_extra: int = 0, suffix_extra: int = 0,
                chunk_frames: Optional[int] = None) -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]]]:
        """mel [B, 80, T] -> ([B, n, D], new cache). `prefix_extra`/`suffix_extra` mel context
        frames are removed after the stride-2 conv (ceil(x/2) encoder frames each)."""
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x))                                          # [B, D, ceil(T/2)]
        cut_l = (prefix_extra + 1) // 2 if prefix_extra > 0 else 0
        cut_r = (suffix_extra + 1) // 2 if suffix_extra > 0 else 0
        if cut_l:
            x = x[:, :, cut_l:]
        if 0 < cut_r < x.shape[2]:
            x = x[:, :, :-cut_r]
        x = x.transpose(1, 2)
        n = x.shape[1]
        past_len = 0 if not cache else int(cache[0][0].shape[2])
        table = self.embed_positions.weight
        if past_len + n > table.shape[0]:
            raise ValueError(f"audio too long: {past_len + n} frames > {table.shape[0]} positions")
        x = x + table[past_len: past_len + n]
        mask = None
        if chunk_frames and cache is None and n > chunk_frames:
            mask = chunked_bias(n, 0, chunk_frames, x.dtype).to(x.device)
        new_cache: List[Tuple[torch.Tensor, torch.Tensor]] = []
        for i, layer in enumerate(self.layers):
            residual = x
            a, kv = self._attention(layer, layer.self_attn_layer_norm(x), cache[i] if cache else None, mask)
            x = residual + a
            residual = x
            x = residual + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
            new_cache.append(kv)
        return self.layer_norm(x), new_cache


class MultiModalProjector(nn.Module):
    """Two-layer MLP with ReLU (`linear1`, `linear2`); used for audio and by the TTS projectors."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(in_dim, out_dim)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.relu(self.linear1(x)))


def chunked_bias(new: int, past: int, chunk_frames: int, dtype=torch.float32) -> torch.Tensor:
    """The encoder's attention bias [new, past+new]: every past frame visible; a new frame sees new
    frames up to the end of its own `chunk_frames` chunk (the released offline audio mask);
    chunk_frames <= 0: all visible (streaming, over a cache of past chunks)."""
    bias = torch.zeros(new, past + new, dtype=dtype)
    if chunk_frames > 0 and new > chunk_frames:
        idx = torch.arange(new)
        hidden = idx[None, :] >= ((idx[:, None] // chunk_frames) + 1) * chunk_frames
        bias[:, past:] = bias[:, past:].masked_fill(hidden, float("-inf"))
    return bias


def pooled_length(mel_frames: int, pool_step: int = 5) -> int:
    """LLM audio tokens for a mel length (the released `_get_feat_extract_output_lengths`)."""
    cnn = (mel_frames - 1) // 2 + 1
    return (cnn - pool_step) // pool_step + 1
