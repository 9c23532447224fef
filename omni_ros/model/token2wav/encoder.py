"""Token encoder of the token2wav flow (Step-Audio2 / CosyVoice2 `UpsampleConformerEncoderV2`).

Speech-token embeddings at 25 Hz -> hidden states at 50 Hz for the flow-matching decoder:

    embed (Linear + LayerNorm, x sqrt(d))  ->  lookahead conv (sees `pre_lookahead_len` future tokens)
    -> `num_blocks` conformer blocks (rel-pos self-attention + FFN, pre-norm)
    -> nearest x`up_stride` + causal conv  ->  up_embed (Linear + LayerNorm, x sqrt(d))
    -> `num_up_blocks` conformer blocks  ->  after_norm

Streaming (`forward_chunk`) keeps two caches with the released layouts, so code written against the
release (e.g. token2wav's trimming of the attention cache) works unchanged:

- `cnn_cache` [1, C, 2 + 2*up_stride]: the last 2 lookahead-conv1 outputs, then the last 2*up_stride
  upsampled frames (the causal left context of the two convolutions).
- `att_cache` [num_blocks + num_up_blocks, 1, heads, 2*t, 2*d_k]: per block the keys | values of all
  past frames (concatenated on the last axis). The up blocks store their 2*t frames at 50 Hz; the
  first blocks store their t frames at 25 Hz twice over ([c, c] along axis 3) so that both halves
  share one axis, and read back only the first half (`[:t]`) of whatever they are handed. After a
  token2wav-style trim ([:prompt] ++ [-100:]) that first half is therefore [c[:prompt], c[k:...]]:
  the release does exactly this and so do we.

Relative positional encodings (ESPnet style, Transformer-XL shift) are computed on the fly for the
current key length; there is no table and no length limit. Eval-only: dropout is not applied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "hardtanh": nn.Hardtanh,
    "selu": nn.SELU,
}


@dataclass
class EncoderConfig:
    """The `encoder` block of flow.yaml (defaults = released values)."""

    input_size: int = 512
    output_size: int = 512
    input_layer: str = "linear"
    pre_lookahead_len: int = 3
    num_blocks: int = 6
    num_up_blocks: int = 4
    up_stride: int = 2
    up_scale_factor: float = 2.0
    attention_heads: int = 8
    pos_enc_layer_type: str = "rel_pos_espnet"
    selfattention_layer_type: str = "rel_selfattn"
    key_bias: bool = True
    linear_units: int = 2048
    dropout_rate: float = 0.1              # accepted, unused (eval only)
    positional_dropout_rate: float = 0.1   # accepted, unused
    attention_dropout_rate: float = 0.1    # accepted, unused
    normalize_before: bool = True
    activation_type: str = "swish"

    def __post_init__(self):
        fixed = {"input_layer": "linear", "pos_enc_layer_type": "rel_pos_espnet",
                 "selfattention_layer_type": "rel_selfattn"}
        for key, value in fixed.items():
            if getattr(self, key) != value:
                raise ValueError(f"EncoderConfig.{key}={getattr(self, key)!r}: only {value!r} is implemented")
        if self.activation_type not in _ACTIVATIONS:
            raise ValueError(f"EncoderConfig.activation_type={self.activation_type!r}: "
                             f"expected one of {sorted(_ACTIVATIONS)}")
        if self.output_size % self.attention_heads:
            raise ValueError(f"EncoderConfig.attention_heads={self.attention_heads} does not divide "
                             f"output_size={self.output_size}")
        if self.output_size % 2:
            raise ValueError(f"EncoderConfig.output_size={self.output_size}: must be even (sin/cos pairs)")
        # up_embed is Linear(input_size, output_size) applied to output_size features
        if self.input_size != self.output_size:
            raise ValueError(f"EncoderConfig.input_size={self.input_size}: must equal "
                             f"output_size={self.output_size} (up_embed reuses input_size)")
        if self.pre_lookahead_len < 1:
            raise ValueError(f"EncoderConfig.pre_lookahead_len={self.pre_lookahead_len}: must be >= 1")
        if self.up_stride < 1:
            raise ValueError(f"EncoderConfig.up_stride={self.up_stride}: must be >= 1")
        # the streaming cache layout (2*t frames after upsampling) needs scale == stride
        if float(self.up_scale_factor) != float(self.up_stride):
            raise ValueError(f"EncoderConfig.up_scale_factor={self.up_scale_factor}: only "
                             f"up_scale_factor == up_stride ({self.up_stride}) is implemented")
        if self.num_blocks < 1 or self.num_up_blocks < 1:
            raise ValueError("EncoderConfig.num_blocks / num_up_blocks must be >= 1")


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def rel_position_table(n_query: int, n_key: int, d_model: int, dtype: torch.dtype = torch.float32,
                       device: Optional[torch.device] = None) -> torch.Tensor:
    """Sinusoids of the relative positions n_key-1, n_key-2, ..., -(n_query-1) (descending), the
    rows the last `n_query` queries need against `n_key` keys: [1, n_key + n_query - 1, d_model],
    even channels sin(r * w_i), odd channels cos(r * w_i), w_i = 10000^(-2i/d_model)."""
    rel = torch.arange(n_key - 1, -n_query, -1, dtype=torch.float32, device=device)        # [P]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
                     * -(math.log(10000.0) / d_model))                                      # [d/2]
    angle = rel.unsqueeze(1) * freq                                                         # [P, d/2]
    table = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(1)            # [P, d]
    return table.unsqueeze(0).to(dtype)


def _rel_index(n_query: int, n_key: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """[n_query, n_key] row of `rel_position_table` holding position (query_abs - key_abs), where
    the queries are the last n_query of the n_key keys."""
    q = torch.arange(n_query, device=device).unsqueeze(1)
    k = torch.arange(n_key, device=device).unsqueeze(0)
    return k - q + (n_query - 1)


class TokenEmbed(nn.Module):
    """Linear + LayerNorm, scaled by sqrt(d) (the positional part is added inside attention).
    Keys: out.0 (Linear), out.1 (LayerNorm)."""

    def __init__(self, idim: int, odim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5))
        self.xscale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.xscale                                  # [B, T, odim]


class RelPosSelfAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (learned biases u, v).
    The key/value cache is [B, heads, t_cache, 2*d_k] (keys | values)."""

    def __init__(self, n_head: int, n_feat: int, key_bias: bool = True):
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_head, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_head, self.d_k))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1, self.h, self.d_k)                   # [B, T, h, d_k]

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], cache [B, h, t, 2*d_k] (t may be 0) -> (out [B, T, C], new cache
        [B, h, t+T, 2*d_k]). No mask: every frame sees the cache and the whole chunk (as released)."""
        b, n_q = x.size(0), x.size(1)
        q = self._heads(self.linear_q(x))                                 # [B, T, h, d_k]
        k = self._heads(self.linear_k(x)).transpose(1, 2)                 # [B, h, T, d_k]
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        k_past, v_past = cache.split(self.d_k, dim=-1)
        k = torch.cat([k_past, k], dim=2)                                 # [B, h, S, d_k]
        v = torch.cat([v_past, v], dim=2)
        new_cache = torch.cat([k, v], dim=-1)
        n_k = k.size(2)

        table = rel_position_table(n_q, n_k, x.size(-1), x.dtype, x.device)   # [1, S+T-1, C]
        p = self._heads(self.linear_pos(table)).transpose(1, 2)           # [1, h, S+T-1, d_k]
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))  # [B,h,T,S]
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))  # [B,h,T,S+T-1]
        idx = _rel_index(n_q, n_k, x.device).expand(b, self.h, n_q, n_k)
        position = torch.gather(position, -1, idx)                        # [B, h, T, S]
        scores = (content + position) / math.sqrt(self.d_k)

        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n_q, self.h * self.d_k)
        return self.linear_out(out), new_cache


class FeedForward(nn.Module):
    """w_2(act(w_1(x)))."""

    def __init__(self, dim: int, hidden: int, activation: str):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.activation = _ACTIVATIONS[activation]()
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.activation(self.w_1(x)))


class ConformerBlock(nn.Module):
    """Self-attention then FFN, each residual, LayerNorm (eps 1e-12) before (or after) each."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d = cfg.output_size
        self.self_attn = RelPosSelfAttention(cfg.attention_heads, d, cfg.key_bias)
        self.feed_forward = FeedForward(d, cfg.linear_units, cfg.activation_type)
        self.norm_ff = nn.LayerNorm(d, eps=1e-12)
        self.norm_mha = nn.LayerNorm(d, eps=1e-12)
        self.pre_norm = cfg.normalize_before

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], cache [B, h, t, 2*d_k] -> (x, new cache [B, h, t+T, 2*d_k])."""
        if self.pre_norm:
            a, new_cache = self.self_attn(self.norm_mha(x), cache)
            x = x + a
            return x + self.feed_forward(self.norm_ff(x)), new_cache
        a, new_cache = self.self_attn(x, cache)
        x = self.norm_mha(x + a)
        return self.norm_ff(x + self.feed_forward(x)), new_cache


def _left_context(cache: torch.Tensor, width: int) -> torch.Tensor:
    """The last `width` frames of cache [B, C, t] with zeros in front when t < width (t = 0: zeros)."""
    pad = cache.new_zeros(cache.size(0), cache.size(1), width)
    return torch.cat([pad, cache], dim=2)[..., -width:]


class LookaheadConv(nn.Module):
    """conv1 (kernel L+1) looks L tokens ahead, leaky ReLU, causal conv2 (kernel 3), residual.
    Streaming cache: the last 2 conv1 outputs [B, C, 2]."""

    def __init__(self, channels: int, lookahead: int):
        super().__init__()
        self.pre_lookahead_len = lookahead
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def forward_chunk(self, x: torch.Tensor, cache: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B, T+L, C] (the last L are lookahead), cache [B, C, 2 or 0]
        -> ([B, T, C], new cache [B, C, 2])."""
        y = F.leaky_relu(self.conv1(x.transpose(1, 2)))                  # [B, C, T]
        y = torch.cat([_left_context(cache, 2), y], dim=2)                # [B, C, T+2]
        new_cache = y[..., -2:]
        y = self.conv2(y).transpose(1, 2)
        return y + x[:, : x.size(1) - self.pre_lookahead_len], new_cache


class RepeatUpsample(nn.Module):
    """Nearest-neighbour x`stride` then a causal conv (kernel 2*stride+1).
    Streaming cache: the last 2*stride upsampled frames [B, C, 2*stride]."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, kernel_size=2 * stride + 1)

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        return x.unsqueeze(-1).expand(b, c, t, self.stride).reshape(b, c, t * self.stride)

    def forward_chunk(self, x: torch.Tensor, cache: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, T], cache [B, C, 2*stride or 0] -> ([B, C, stride*T], new cache)."""
        y = torch.cat([_left_context(cache, 2 * self.stride), self._repeat(x)], dim=2)
        return self.conv(y), y[..., -2 * self.stride:]


class UpsampleConformerEncoder(nn.Module):
    """Keys as released: embed.out.{0,1}, pre_lookahead_layer.conv{1,2}, encoders.N.*, up_layer.conv,
    up_embed.out.{0,1}, up_encoders.N.*, after_norm."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        d = config.output_size
        self.embed = TokenEmbed(config.input_size, d)
        self.pre_lookahead_layer = LookaheadConv(d, config.pre_lookahead_len)
        self.encoders = nn.ModuleList(ConformerBlock(config) for _ in range(config.num_blocks))
        self.up_layer = RepeatUpsample(d, config.up_stride)
        self.up_embed = TokenEmbed(config.input_size, d)
        self.up_encoders = nn.ModuleList(ConformerBlock(config) for _ in range(config.num_up_blocks))
        self.after_norm = nn.LayerNorm(d, eps=1e-5)

    @property
    def pre_lookahead_len(self) -> int:
        return self.config.pre_lookahead_len

    @property
    def up_rate(self) -> int:
        return self.config.up_stride

    @property
    def cnn_cache_len(self) -> int:
        return 2 + 2 * self.config.up_stride

    def empty_caches(self, xs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zero-length caches (= first chunk): cnn [B, C, 0], att [L1+L2, B, h, 0, 2*d_k]."""
        c = self.config
        d_k = c.output_size // c.attention_heads
        cnn = xs.new_zeros(xs.size(0), c.output_size, 0)
        att = xs.new_zeros(c.num_blocks + c.num_up_blocks, xs.size(0), c.attention_heads, 0, 2 * d_k)
        return cnn, att

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_norm(x) if self.config.normalize_before else x

    def forward_chunk(self, xs: torch.Tensor, last_chunk: bool = False,
                      cnn_cache: Optional[torch.Tensor] = None,
                      att_cache: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One streaming step.

        xs [1, T, input_size] token embeddings; unless `last_chunk` the last `pre_lookahead_len`
        of them are lookahead (consumed by the conv, not emitted; send them again next chunk).
        cnn_cache [1, C, 2 + 2*up_stride], att_cache [L1+L2, 1, h, 2*t, 2*d_k]; None or a
        zero-length time axis = first chunk.
        Returns h [1, up_stride*T', C] with T' = T - pre_lookahead_len (T if last_chunk),
        new cnn_cache [1, C, 2 + 2*up_stride], new att_cache [L1+L2, 1, h, 2*(t+T'), 2*d_k].
        """
        c = self.config
        if not _tracing():
            empty_cnn, empty_att = self.empty_caches(xs)
            if cnn_cache is None or cnn_cache.numel() == 0:
                cnn_cache = empty_cnn
            if att_cache is None or att_cache.numel() == 0:
                att_cache = empty_att
            if att_cache.size(3) % 2:
                raise ValueError(f"att_cache axis 3 must be even, got shape {tuple(att_cache.shape)}")
            if cnn_cache.size(2) not in (0, self.cnn_cache_len):
                raise ValueError(f"cnn_cache axis 2 must be 0 or {self.cnn_cache_len}, "
                                 f"got shape {tuple(cnn_cache.shape)}")

        # first blocks read the first half of axis 3 (25 Hz frames), up blocks all of it (50 Hz)
        n1 = c.num_blocks
        att1 = att_cache[:n1, :, :, : att_cache.size(3) // 2]
        att2 = att_cache[n1:]
        cnn1 = cnn_cache[:, :, :2]
        cnn2 = cnn_cache[:, :, 2:]

        x = self.embed(xs)
        if last_chunk:      # no future tokens: zeros (after the embedding) stand in for the lookahead
            x = F.pad(x, (0, 0, 0, c.pre_lookahead_len))
        x, new_cnn1 = self.pre_lookahead_layer.forward_chunk(x, cnn1)        # [1, T', C]

        new_att1 = []
        for i, block in enumerate(self.encoders):
            x, kv = block(x, att1[i])
            new_att1.append(kv)
        new_att1 = torch.stack(new_att1, dim=0)                              # [L1, 1, h, t+T', 2d_k]

        x, new_cnn2 = self.up_layer.forward_chunk(x.transpose(1, 2), cnn2)
        x = self.up_embed(x.transpose(1, 2))                                 # [1, s*T', C]

        new_att2 = []
        for i, block in enumerate(self.up_encoders):
            x, kv = block(x, att2[i])
            new_att2.append(kv)
        new_att2 = torch.stack(new_att2, dim=0)                              # [L2, 1, h, 2(t+T'), 2d_k]

        new_att = torch.cat([torch.cat([new_att1, new_att1], dim=3), new_att2], dim=0)
        new_cnn = torch.cat([new_cnn1, new_cnn2], dim=2)
        return self._finish(x), new_cnn, new_att
