"""SigLIP vision tower (`vpm.*`) and perceiver resampler (`resampler.*`): image -> query_num LLM tokens.

The encoder layers are transformers' Siglip layers; the patch/position embedding is NaViT-style
(position ids bucketized into the stored position table) as in the released model.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
from torch import nn
from transformers.models.siglip.modeling_siglip import SiglipEncoder

from .config import OmniConfig


class SiglipEmbeddings(nn.Module):
    """Patch embedding + bucketized position embedding (`vpm.embeddings.*`)."""

    def __init__(self, config: OmniConfig):
        super().__init__()
        v = config.vision_config
        self.patch_size = v.patch_size
        self.num_patches_per_side = v.num_patches_per_side   # 70 in the release
        self.patch_embedding = nn.Conv2d(v.num_channels, v.hidden_size, kernel_size=v.patch_size,
                                         stride=v.patch_size, padding="valid")
        self.position_embedding = nn.Embedding(self.num_patches_per_side ** 2, v.hidden_size)

    def position_ids(self, grid_h: int, grid_w: int, device) -> torch.Tensor:
        n = self.num_patches_per_side
        boundaries = torch.arange(1 / n, 1.0, 1 / n, device=device)
        frac_h = torch.arange(0, 1 - 1e-6, 1 / grid_h, device=device)
        frac_w = torch.arange(0, 1 - 1e-6, 1 / grid_w, device=device)
        bucket_h = torch.bucketize(frac_h, boundaries, right=True)
        bucket_w = torch.bucketize(frac_w, boundaries, right=True)
        return (bucket_h[:, None] * n + bucket_w[None, :]).flatten()  # [grid_h*grid_w]

    def forward(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        # pixel_values [B, 3, H, W] -> [B, N, C]
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        grid = (patches.shape[-2], patches.shape[-1])
        x = patches.flatten(2).transpose(1, 2)
        x = x + self.position_embedding(self.position_ids(*grid, x.device))[None]
        return x, grid


class SiglipVision(nn.Module):
    """SigLIP vision transformer with keys `embeddings.*`, `encoder.layers.N.*`, `post_layernorm`."""

    def __init__(self, config: OmniConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(config)
        self.encoder = SiglipEncoder(config.siglip_config())
        self.post_layernorm = nn.LayerNorm(config.vision_config.hidden_size,
                                           eps=config.vision_config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x, grid = self.embeddings(pixel_values)          # [B, N, Cv]
        x = self.encoder(inputs_embeds=x).last_hidden_state
        return self.post_layernorm(x), grid


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [M, dim]


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """2D sin-cos position embedding [grid_h*grid_w, dim] (half the channels per axis)."""
    gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
    emb = np.concatenate([_sincos_1d(dim // 2, gw), _sincos_1d(dim // 2, gh)], axis=1)
    return torch.from_numpy(emb).float()


class Resampler(nn.Module):
    """Perceiver resampler: query_num learned queries cross-attend to the vision features."""

    def __init__(self, config: OmniConfig):
        super().__init__()
        embed_dim, kv_dim = config.hidden_size, config.vision_config.hidden_size
        self.embed_dim = embed_dim
        self.query = nn.Parameter(torch.zeros(config.query_num, embed_dim))       # [Q, D]
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)                   # Cv -> D
        self.attn = nn.MultiheadAttention(embed_dim, config.resampler_heads)      # D // 128 heads
        self.ln_q = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_post = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Parameter(torch.zeros(embed_dim, embed_dim))               # [D, D]

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        # x [B, N, Cv] -> [B, Q, D]
        x = self.ln_kv(self.kv_proj(x))
        pos = sincos_2d(self.embed_dim, *grid).to(x.device, x.dtype)               # [N, D]
        q = self.ln_q(self.query)[:, None].expand(-1, x.shape[0], -1)              # [Q, B, D]
        kv = x.transpose(0, 1)                                                      # [N, B, D]
        out = self.attn(q, kv + pos[:, None], kv, need_weights=False)[0]
        out = self.ln_post(out.transpose(0, 1))
        return out @ self.proj


def best_resize(width: int, height: int, scale_resolution: int, patch_size: int) -> Tuple[int, int]:
    """The released single-slice size rule (`find_best_resize` with upscaling, as used for
    `max_slice_nums=1`): keep the aspect ratio, scale to about scale_resolution**2 pixels, round
    each side to a multiple of patch_size. Returns (width, height)."""
    r = width / height
    h = int(scale_resolution / math.sqrt(r))
    w = int(h * r)
    ensure = lambda n: max(round(n / patch_size) * patch_size, patch_size)
    return ensure(w), ensure(h)


NORM_MEAN = 0.5          # the released preprocessor_config.json `norm_mean` / `norm_std`
NORM_STD = 0.5


def preprocess_image(image: np.ndarray, scale_resolution: int, patch_size: int = 14) -> torch.Tensor:
    """HxWx3 RGB -> [1, 3, H', W'] float32, as the released image processor with one slice:
    the uint8 image is resized by Pillow (`Image.resize(best_resize, BICUBIC)`, aspect kept, up- or
    down-scaled), then `x / 255` in float32 and `(x - 0.5) / 0.5`. A floating-point image is taken
    as 0..1 and becomes uint8 as in the released `to_pil_image` (x * 255, truncated; clipped here
    first); other integer types are clipped to 0..255."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.nan_to_num(arr.astype(np.float64)) * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    w, h = best_resize(arr.shape[1], arr.shape[0], scale_resolution, patch_size)
    resized = Image.fromarray(np.ascontiguousarray(arr)).resize((w, h), resample=Image.Resampling.BICUBIC)
    x = np.asarray(resized).astype(np.float32) / 255
    x = (x - np.float32(NORM_MEAN)) / np.float32(NORM_STD)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
