"""Streaming waveform stage: speech codes (25/s) -> float32 24 kHz audio, exactly 960 samples per code.

A small HiFi-GAN-shaped decoder (code embedding -> conv/upsampling stack -> tanh) whose weights live
in the checkpoint folder under `assets/token2wav/`.

NOT the released waveform stage. The release uses Step-Audio2's Token2wav (flow matching + HiFT,
conditioned on a prompt wav; streams 28-code windows = 25 new + 3 lookahead, three silence codes
4218 at a turn start) from OpenBMB's `stepaudio2-minicpmo` package. That package was checked here
(pip dry run, 2026-11-25): it would pull torchaudio 2.11 (built for another torch than the 2.13 CPU
build in this venv), s3tokenizer, onnxruntime, librosa, diffusers; its torchaudio import is known
to fail on this CPU build, and its weights (assets/token2wav of the real checkpoint) are not
available, so it is not used. A released checkpoint's `assets/token2wav/` (Step-Audio2 files) is
therefore not loadable by this decoder; the speech codes (6561, 25/s) are the released ones.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

ASSET_DIR = "assets/token2wav"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "token2wav.safetensors"


@dataclass
class Token2WavConfig:
    codebook_size: int = 6562
    embed_dim: int = 64
    channels: List[int] = field(default_factory=lambda: [64, 32, 16, 16, 8, 8])
    upsample_rates: List[int] = field(default_factory=lambda: [8, 5, 4, 3, 2])  # product = 960
    kernel_size: int = 7
    sample_rate: int = 24000
    codes_per_second: int = 25
    context_codes: int = 3          # previous codes re-decoded for continuity across units
    output_gain: float = 0.5

    @property
    def samples_per_code(self) -> int:
        n = 1
        for r in self.upsample_rates:
            n *= r
        return n


def decode_with_context(decode, codes: List[int], context: Optional[List[int]], context_codes: int,
                        samples_per_code: int) -> torch.Tensor:
    """`decode(ids)` -> samples over up to `context_codes` previous codes followed by `codes`;
    returns the samples of `codes` only (float32)."""
    ctx = list(context or [])[-context_codes:] if context_codes else []
    return decode(ctx + list(codes))[len(ctx) * samples_per_code:].float()


class UpBlock(nn.Module):
    """Transposed-conv upsampling by `rate` then a residual conv."""

    def __init__(self, c_in: int, c_out: int, rate: int, kernel: int):
        super().__init__()
        self.up = nn.ConvTranspose1d(c_in, c_out, kernel_size=rate, stride=rate)
        self.res = nn.Conv1d(c_out, c_out, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(F.leaky_relu(x, 0.1))                    # [B, C_out, T*rate]
        return x + self.res(F.leaky_relu(x, 0.1))


class Token2Wav(nn.Module):
    """Keys: `embed`, `conv_pre`, `ups.N.{up,res}`, `conv_post`."""

    def __init__(self, config: Token2WavConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.embed = nn.Embedding(config.codebook_size, config.embed_dim)
        self.conv_pre = nn.Conv1d(config.embed_dim, c[0], config.kernel_size, padding=config.kernel_size // 2)
        self.ups = nn.ModuleList([UpBlock(c[i], c[i + 1], r, config.kernel_size)
                                  for i, r in enumerate(config.upsample_rates)])
        self.conv_post = nn.Conv1d(c[-1], 1, config.kernel_size, padding=config.kernel_size // 2)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        # codes [B, T] -> [B, T * 960]
        x = self.conv_pre(self.embed(codes).transpose(1, 2))
        for up in self.ups:
            x = up(x)
        return torch.tanh(self.conv_post(F.leaky_relu(x, 0.1)))[:, 0] * self.config.output_gain

    @torch.inference_mode()
    def decode_stream(self, codes: List[int], context: Optional[List[int]] = None) -> torch.Tensor:
        """Decode new codes with up to `context_codes` previous codes as left context.

        Returns exactly len(codes) * samples_per_code float32 samples.
        """
        def decode(ids: List[int]) -> torch.Tensor:
            return self(torch.tensor([ids], dtype=torch.long, device=self.embed.weight.device))[0]

        return decode_with_context(decode, codes, context, self.config.context_codes,
                                   self.config.samples_per_code)

    # --- files ---
    @classmethod
    def from_folder(cls, folder, device="cpu", dtype=torch.float32) -> "Token2Wav":
        folder = Path(folder)
        raw = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        known = {f.name for f in fields(Token2WavConfig)}
        cfg = Token2WavConfig(**{k: v for k, v in raw.items() if k in known})
        model = cls(cfg)
        state = load_file(str(folder / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise KeyError(f"token2wav weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model.to(device=device, dtype=dtype).eval()

    def save(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2, sort_keys=True) + "\n",
                                          encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
