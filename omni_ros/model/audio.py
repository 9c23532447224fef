"""Audio path: Whisper-style log-mel front end, Whisper encoder (`apm.*`) and the projector
(`audio_projection_layer.*`) + AvgPool1d: 1 s of 16 kHz audio -> 100 mel frames -> 50 encoder
frames -> 10 LLM tokens.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

from .config import OmniConfig

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160


class LogMel(nn.Module):
    """Whisper log-mel spectrogram: 80 slaney mel bins, log10, 8 dB dynamic range, (x+4)/4."""

    def __init__(self, num_mel_bins: int = 80):
        super().__init__()
        filters = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=num_mel_bins,
                                  min_frequency=0.0, max_frequency=SAMPLE_RATE / 2,
                                  sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
        self.register_buffer("filters", torch.from_numpy(filters.T.astype(np.float32)),
                             persistent=False)                       # [80, 201]
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        # wav [B, S] float32 16 kHz -> [B, 80, S // 160]
        spec = torch.stft(wav.float(), N_FFT, HOP_LENGTH, window=self.window, return_complex=True)
        power = spec[..., :-1].abs() ** 2                             # [B, 201, T]
        mel = self.filters @ power                                    # [B, 80, T]
        log = torch.clamp(mel, min=1e-10).log10()
        log = torch.maximum(log, log.amax(dim=(-2, -1), keepdim=True) - 8.0)
        return (log + 4.0) / 4.0


class WhisperAudioEncoder(nn.Module):
    """Whisper encoder with keys `conv1`, `conv2`, `embed_positions`, `layers.N.*`, `layer_norm`.

    Unlike transformers' WhisperEncoder it takes chunks of any length up to 30 s and slices the
    position table.
    """

    def __init__(self, config: OmniConfig):
        super().__init__()
        a = config.audio_config
        wcfg = config.whisper_config()
        self.conv1 = nn.Conv1d(a.num_mel_bins, a.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(a.d_model, a.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(a.max_source_positions, a.d_model)   # [1500, D]
        self.layers = nn.ModuleList([WhisperEncoderLayer(wcfg) for _ in range(a.encoder_layers)])
        self.layer_norm = nn.LayerNorm(a.d_model)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # mel [B, 80, T] -> [B, ceil(T/2), D]
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        n = x.shape[1]
        if n > self.embed_positions.num_embeddings:
            raise ValueError(f"audio chunk too long: {n} frames > {self.embed_positions.num_embeddings}")
        x = x + self.embed_positions.weight[:n]
        for layer in self.layers:
            x = layer(x, attention_mask=None)
        return self.layer_norm(x)


class MultiModalProjector(nn.Module):
    """Two-layer MLP with ReLU (`linear1`, `linear2`); used for audio and by the TTS projectors."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(in_dim, out_dim)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.relu(self.linear1(x)))


def embed_audio(model, wav: torch.Tensor) -> torch.Tensor:
    """[B, S] 16 kHz audio -> [B, S/1600, hidden] LLM embeddings (10 per second).

    `model` provides `mel`, `apm`, `audio_projection_layer` and `audio_avg_pooler`.
    """
    mel = model.mel(wav)                                    # [B, 80, 100/s]
    feats = model.apm(mel)                                  # [B, 50/s, Da]
    proj = model.audio_projection_layer(feats)              # [B, 50/s, D]
    pooled = model.audio_avg_pooler(proj.transpose(1, 2))   # [B, D, 10/s]
    return pooled.transpose(1, 2)
