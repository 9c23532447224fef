"""Flow-matching decoder of the released waveform stage (Step-Audio2 token2wav, `flow.decoder.*`).

Two parts:
- `DiT`: the velocity estimator. A transformer over mel frames, conditioned on the flow time through
  adaLN modulation; its input is the channel stack [x, mu, spks, cond] (4 x 80 = 320 channels). Each
  block runs attention (no positions, no mask: every frame of the chunk sees the whole chunk and
  every cached frame), then a causal two-layer conv branch (kernel 3), then an MLP, each gated.
  Streaming keeps, per block, the conv inputs of the last 2 frames and the keys/values of all
  previous frames.
- `CausalConditionalCFM`: the Euler solver on a cosine time grid with classifier-free guidance; the
  estimator always runs on a batch of two, [conditional, unconditional (mu, spks, cond zeroed)],
  and each Euler step has its own caches (the caller keeps one set per step).

Caches of one Euler step:
- cnn (depth, 2B, 2*hidden, 2): the last 2 inputs of conv1 and of conv2 (the released layout);
- keys and values (depth, 2B, heads, T_cache, head_dim) each: the released attention cache holds the
  two joined on the last axis; they are kept apart here so that a step reads the cached ones in
  place and returns only the chunk's own (`step`), and the caller prepends those to the cache.
The attention cache is ordered newest chunk FIRST: after a chunk it is [this chunk, old cache]
along time (what the release does; attention ignores the order, the release's trimming does not).
An empty cache (None, or a time axis of size 0) is the first chunk.

Differences from the release that do not change results: the release writes the new caches into
fixed buffers (16 steps x 16 blocks x 1000 frames) and returns views of them, so a cache it returned
is overwritten by its next call (its callers clone the prompt cache); here every call returns fresh
tensors, one set per Euler step actually taken (the chunked solver is
omni_ros.session.waveform.WaveformStream._solve), with no 1000-frame limit. The noise is an input (the release
slices a fixed `randn(1, 80, 30000)` buffer at the cached length; `draw_noise` draws that buffer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

TIME_FEATURES = 256          # sinusoidal features of the flow time
TIME_SCALE = 1000.0          # t in [0, 1] is scaled before the sinusoids
MAX_PERIOD = 10000
CONV_KERNEL = 3              # causal conv branch: cache = the last KERNEL - 1 inputs
NOISE_FRAMES = 50 * 600      # the release's noise buffer: 600 s of 50 Hz mel frames
INFERENCE_CFG_RATE = 0.7


@dataclass
class DiTConfig:
    """Estimator dimensions; field names are the `estimator` keys of the released flow.yaml."""
    in_channels: int = 320       # x, mu, spks, cond stacked
    out_channels: int = 80       # mel bins
    mlp_ratio: float = 4.0
    depth: int = 16
    num_heads: int = 8
    head_dim: int = 64
    hidden_size: int = 512


def draw_noise(generator: Optional[torch.Generator] = None, out_channels: int = 80,
               frames: int = NOISE_FRAMES) -> torch.Tensor:
    """The release's fixed noise buffer [1, out_channels, frames] (one randn draw); chunk i uses
    `noise[:, :, offset:offset + T]` with offset = the cached attention length."""
    return torch.randn([1, out_channels, frames], generator=generator)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def time_features(t: torch.Tensor, dim: int = TIME_FEATURES, max_period: int = MAX_PERIOD) -> torch.Tensor:
    """[N] -> [N, dim]: cos of the first half of the frequencies, then sin (geometric frequencies
    from 1 down to 1/max_period)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half) / half).to(t)
    angles = t[:, None] * freqs[None]
    feats = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        feats = torch.cat([feats, torch.zeros_like(feats[:, :1])], dim=-1)
    return feats


class TimestepEmbedder(nn.Module):
    """Flow time [N] -> [N, hidden] (sinusoids of 1000 t, then Linear-SiLU-Linear)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = TIME_FEATURES):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(time_features(t * TIME_SCALE, self.frequency_embedding_size))


class CausalConv1d(nn.Conv1d):
    """Left-padded conv1d; `step` continues from the previous chunk's last kernel-1 inputs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size)
        self.context = kernel_size - 1

    def step(self, x: torch.Tensor, cache: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, T], cache [B, C, context] or [B, C, 0] or None -> y [B, C', T], new cache."""
        zeros = x.new_zeros(x.shape[0], x.shape[1], self.context)
        if cache is None:
            cache = zeros
        else:   # an empty cache reads as zeros (one graph for both)
            cache = torch.cat([zeros, cache], dim=2)[:, :, -self.context:]
        xc = torch.cat([cache, x], dim=2)
        return super().forward(xc), xc[:, :, -self.context:]


class CausalConvBlock(nn.Module):
    """[B, T, C] -> conv1 -> LayerNorm -> Mish -> conv2 -> [B, T, C]; keys `block.{1,3,6}.*` as released."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = CONV_KERNEL):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.block = nn.ModuleDict({
            "1": CausalConv1d(in_channels, out_channels, kernel_size),
            "3": nn.LayerNorm(out_channels),
            "6": CausalConv1d(out_channels, out_channels, kernel_size),
        })

    def step(self, x: torch.Tensor, cache: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], cache [B, C_in + C_out, 2] (or empty) -> y [B, T, C_out], new cache."""
        c1 = c2 = None
        if cache is not None:
            c1, c2 = cache.split((self.in_channels, self.out_channels), dim=1)
        h, n1 = self.block["1"].step(x.transpose(1, 2), c1)
        h = F.mish(self.block["3"](h.transpose(1, 2))).transpose(1, 2)
        h, n2 = self.block["6"].step(h, c2)
        return h.transpose(1, 2), torch.cat([n1, n2], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention with LayerNorm'd queries/keys, over [cache + chunk]."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.q_norm = nn.LayerNorm(head_dim)
        self.k_norm = nn.LayerNorm(head_dim)
        self.proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:           # [B, T, H*D] -> [B, H, T, D]
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def step(self, x: torch.Tensor, keys: Optional[torch.Tensor], values: Optional[torch.Tensor]
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, dim]; cached keys, values [B, H, Tc, D] (Tc may be 0) or None -> y [B, T, dim],
        this chunk's keys and values [B, H, T, D]. The scores against the chunk and against the cache are taken apart
        and normalised together, so the cache is only read, never copied."""
        b, t, _ = x.shape
        q = self.q_norm(self._heads(self.to_q(x)))
        k = self.k_norm(self._heads(self.to_k(x)))
        v = self._heads(self.to_v(x))
        if keys is None:
            y = F.scaled_dot_product_attention(q, k, v)                         # [B, H, T, D]
        else:
            scale = self.head_dim ** -0.5
            scores = torch.cat([torch.matmul(q, k.transpose(-1, -2)),
                                torch.matmul(q, keys.transpose(-1, -2))], dim=-1) * scale
            weights = torch.softmax(scores, dim=-1)
            y = torch.matmul(weights[..., :t], v) + torch.matmul(weights[..., t:], values)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1)), k, v


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-Zero block: x += g_a * attn(.), x += g_c * conv(.), x += g_m * mlp(.)."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)   # attention
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)   # mlp
        self.norm3 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)   # conv
        self.attn = Attention(hidden_size, num_heads, head_dim)
        self.mlp = FeedForward(hidden_size, int(hidden_size * mlp_ratio))
        self.conv = CausalConvBlock(hidden_size, hidden_size, CONV_KERNEL)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 9 * hidden_size))

    def step(self, x: torch.Tensor, c: torch.Tensor, cnn_cache: Optional[torch.Tensor],
             keys: Optional[torch.Tensor], values: Optional[torch.Tensor]):
        """x [B, T, hidden], c [B, 1, hidden] -> x, new cnn cache, this chunk's keys and values."""
        (shift_a, scale_a, gate_a, shift_m, scale_m, gate_m,
         shift_c, scale_c, gate_c) = self.adaLN_modulation(c).chunk(9, dim=-1)
        y, k, v = self.attn.step(modulate(self.norm1(x), shift_a, scale_a), keys, values)
        x = x + gate_a * y
        y, cnn_cache = self.conv.step(modulate(self.norm3(x), shift_c, scale_c), cnn_cache)
        x = x + gate_c * y
        x = x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x, cnn_cache, k, v


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Velocity estimator (`flow.decoder.estimator.*`)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.t_embedder = TimestepEmbedder(config.hidden_size)
        self.in_proj = nn.Linear(config.in_channels, config.hidden_size)
        self.blocks = nn.ModuleList([
            DiTBlock(config.hidden_size, config.num_heads, config.head_dim, config.mlp_ratio)
            for _ in range(config.depth)])
        self.final_layer = FinalLayer(config.hidden_size, config.out_channels)

    def _inputs(self, x, mu, t, spks, cond):
        """-> h [B, T, hidden] from the stacked channels, c [B, 1, hidden] from the time."""
        c = self.t_embedder(t).unsqueeze(1)
        parts = [x, mu]
        if spks is not None:
            parts.append(spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if cond is not None:
            parts.append(cond)
        return self.in_proj(torch.cat(parts, dim=1).transpose(1, 2)), c

    def forward_chunk(self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                      spks: Optional[torch.Tensor], cond: Optional[torch.Tensor],
                      cnn_cache: Optional[torch.Tensor], keys: Optional[torch.Tensor],
                      values: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """One estimator call on a chunk.
        x, mu, cond [B, 80, T]; t [B]; spks [B, 80]; cnn_cache (depth, B, 2*hidden, 2), keys and
        values (depth, B, heads, Tc, head_dim); None or empty (size 0 on the last / time axis) =
        first chunk. -> dphi_dt [B, 80, T], new cnn cache (depth, B, 2*hidden, 2), this chunk's keys
        and values (depth, B, heads, T, head_dim)."""
        h, c = self._inputs(x, mu, t, spks, cond)
        new_cnn, new_keys, new_values = [], [], []
        for i, block in enumerate(self.blocks):
            h, cc, k, v = block.step(h, c, None if cnn_cache is None else cnn_cache[i],
                                     None if keys is None else keys[i], None if values is None else values[i])
            new_cnn.append(cc)
            new_keys.append(k)
            new_values.append(v)
        out = self.final_layer(h, c).transpose(1, 2)
        return out, torch.stack(new_cnn), torch.stack(new_keys), torch.stack(new_values)

def cosine_time_grid(n_timesteps: int, dtype: torch.dtype = torch.float32,
                     device: Optional[torch.device] = None) -> torch.Tensor:
    """[n + 1] flow times 1 - cos(pi/2 * linspace(0, 1, n + 1)), computed as released."""
    t = torch.linspace(0, 1, n_timesteps + 1, device=device, dtype=dtype)
    return 1 - torch.cos(t * 0.5 * torch.pi)


class CausalConditionalCFM(nn.Module):
    """Euler solver with classifier-free guidance (`flow.decoder.*`; weights under `estimator.*`)."""

    def __init__(self, estimator: DiT, inference_cfg_rate: float = INFERENCE_CFG_RATE):
        super().__init__()
        self.estimator = estimator
        self.inference_cfg_rate = inference_cfg_rate
        self.out_channels = estimator.out_channels

    @staticmethod
    def guidance_inputs(mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor):
        """-> (mu_in, spks_in, cond_in): [conditional; zeros] along the batch."""
        return (torch.cat([mu, torch.zeros_like(mu)], dim=0),
                torch.cat([spks, torch.zeros_like(spks)], dim=0),
                torch.cat([cond, torch.zeros_like(cond)], dim=0))

    def _guided(self, dphi: torch.Tensor) -> torch.Tensor:
        cond_v, uncond_v = dphi.chunk(2, dim=0)
        return (1.0 + self.inference_cfg_rate) * cond_v - self.inference_cfg_rate * uncond_v

    def euler_step(self, x: torch.Tensor, mu_in: torch.Tensor, spks_in: torch.Tensor,
                   cond_in: torch.Tensor, t: torch.Tensor, dt: torch.Tensor, cnn_cache: Optional[torch.Tensor],
                   keys: Optional[torch.Tensor], values: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """One guided Euler step on a chunk (the exported "estimator step" graph).
        x [B, 80, T]; mu_in, cond_in [2B, 80, T], spks_in [2B, 80] (from `guidance_inputs`);
        t [B] (or [1]) current time, dt [1] (or 0-d) step; this step's caches as in
        `DiT.forward_chunk`. -> x + dt * guided velocity, new cnn cache, this chunk's keys and
        values (the caller prepends them to the cached ones)."""
        t = t.expand(x.shape[0])
        dphi, cnn_cache, k, v = self.estimator.forward_chunk(
            torch.cat([x, x], dim=0), mu_in, torch.cat([t, t], dim=0), spks_in, cond_in, cnn_cache, keys, values)
        return x + dt * self._guided(dphi), cnn_cache, k, v
