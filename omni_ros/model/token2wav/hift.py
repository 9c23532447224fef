"""The HiFT vocoder (neural source filter + iSTFT head): 80-bin mel at 50 frames/s -> 24 kHz audio,
and the 24 kHz log-mel used for the reference-voice prompt.

Data path for one call (F mel frames, T = 480 F samples):
  mel [1, 80, F] -> f0 predictor -> f0 [1, F] (Hz)
  f0 -> harmonic source (9 sines + noise, merged by a linear + tanh) -> source [1, 1, T]
        (the first S samples are replaced by `cache_source` so consecutive chunks join without a glitch)
  source -> STFT (n_fft 16, hop 4) -> [1, 18, T/4 + 1] (real | imag), fused at every upsampling stage
  mel -> conv_pre -> 3 x (leaky relu, transposed conv x8/x5/x3, + source branch, 3 averaged res blocks)
      -> conv_post -> log-magnitude | phase [1, 18, T/4 + 1] -> inverse STFT -> clamp -> speech [1, T]

Key names and shapes follow the released `hift.pt` (optionally prefixed `generator.`). Its
weight-normalised convolutions are stored as magnitude/direction pairs; they are folded into plain
`.weight` tensors once at load (`from_state_dict`), so this module's own `state_dict()` holds plain
weights; `state_dict_official()` writes the released layout back.

Randomness: the released source module draws, in this order, a phase offset `rand(1, 9)`, the sine
noise `randn(1, T, 9)` and a noise branch `randn(1, T, 1)`. `random_inputs` draws the same three from a
`torch.Generator` so that seeding it with s reproduces the released call after `torch.manual_seed(s)`.
Only the sine noise reaches the output: the phase offset is added to the first sample only, which the
released frame-rate phase computation never reads (it reads samples 239/240 of every frame), and the
noise branch is discarded. Both are still accepted by `forward` so the draw sequence stays explicit
(the dynamo ONNX exporter keeps them as graph inputs; the TorchScript exporter drops unused inputs).

STFT / inverse STFT are written as (transposed) convolutions with fixed DFT bases so that the graph
exports to ONNX; they match `torch.stft` / `torch.istft` (center=True, periodic Hann) to float rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 24000

# prompt mel (24 kHz, 50 frames/s)
MEL_N_FFT = 1920
MEL_HOP = 480
MEL_BINS = 80
MEL_FMIN = 0.0
MEL_FMAX = 8000.0

# suffixes of a weight-normalised weight in a checkpoint: (magnitude g, direction v)
_WN_FORMS = ((".parametrizations.weight.original0", ".parametrizations.weight.original1"),
             (".weight_g", ".weight_v"))


@dataclass
class HiFTConfig:
    """Dimensions of the vocoder; the defaults are the released ones."""
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = SAMPLE_RATE
    nsf_alpha: float = 0.1                      # sine amplitude
    nsf_sigma: float = 0.003                    # noise std in voiced regions
    nsf_voiced_threshold: float = 10.0          # f0 (Hz) above which a sample is voiced
    upsample_rates: Tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: Tuple[int, ...] = (16, 11, 7)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: Tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: Tuple[Tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: Tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: Tuple[Tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_cond_channels: int = 512
    f0_num_class: int = 1

    def __post_init__(self):
        if self.sampling_rate != SAMPLE_RATE or self.upsample_scale != 480:
            raise ValueError(f"the released vocoder makes {SAMPLE_RATE} Hz audio, 480 samples per mel frame; "
                             f"this one {self.sampling_rate} Hz, {self.upsample_scale}")

    @property
    def upsample_scale(self) -> int:
        """Output samples per mel frame (480)."""
        return int(np.prod(self.upsample_rates)) * self.hop_len

    @property
    def num_harmonics(self) -> int:
        """Sines in the source (fundamental + overtones)."""
        return self.nb_harmonics + 1

    @classmethod
    def from_state_dict(cls, state: Dict[str, torch.Tensor]) -> "HiFTConfig":
        """Channel widths from tensor shapes (any weight form); everything else released defaults."""
        state = _strip_prefix(state)

        def shape(name: str) -> torch.Size:
            for key in (name + ".weight", name + _WN_FORMS[0][1], name + _WN_FORMS[1][1]):
                if key in state:
                    return state[key].shape
            raise KeyError(f"HiFT checkpoint has no weight for {name!r}")

        base, mel_bins = shape("conv_pre")[:2]
        return cls(in_channels=int(mel_bins), base_channels=int(base),
                   f0_cond_channels=int(shape("f0_predictor.condnet.0")[0]))


def _strip_prefix(state: Dict[str, torch.Tensor], prefix: str = "generator.") -> Dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


# ----------------------------------------------------------------------------------------- layers

class Snake(nn.Module):
    """x + sin^2(a x) / a, one `alpha` per channel. [B, C, T] -> [B, C, T]"""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha[None, :, None]
        return x + (1.0 / (a + 1e-9)) * torch.sin(x * a).pow(2)


class ResBlock(nn.Module):
    """Per dilation d: x += conv_k(snake(conv_k,d(snake(x)))). Lengths are preserved."""

    def __init__(self, channels: int, kernel_size: int, dilations: Iterable[int]):
        super().__init__()
        dilations = list(dilations)
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations)
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for act1, conv1, act2, conv2 in zip(self.activations1, self.convs1, self.activations2, self.convs2):
            x = conv2(act2(conv1(act1(x)))) + x
        return x


class F0Predictor(nn.Module):
    """mel [B, 80, F] -> f0 [B, F] (Hz, non-negative): 5 x (conv k3 + ELU), then a linear head."""

    def __init__(self, in_channels: int, cond_channels: int, num_class: int = 1):
        super().__init__()
        layers: List[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.condnet(mel).transpose(1, 2)              # [B, F, C]
        return self.classifier(h).squeeze(-1).abs()


class HarmonicSource(nn.Module):
    """f0 [B, F] + sine noise [B, T, H] -> excitation [B, 1, T] (T = F * scale, H harmonics).

    As released: the per-sample phase increment of harmonic h, (h f0 / sr) mod 1 cycles, is summed
    over frames, times 2 pi, times `scale`, then linearly interpolated up to the sample rate (the
    phase grows by ~1e4 rad per second, so float32 rounding of it matters and is reproduced exactly);
    sines (amplitude sine_amp) are kept where f0 > threshold, noise is added everywhere (std
    `noise_std` when voiced, sine_amp / 3 when not), and a linear + tanh merges the harmonics.
    """

    def __init__(self, config: HiFTConfig):
        super().__init__()
        self.sampling_rate = config.sampling_rate
        self.scale = config.upsample_scale
        self.sine_amp = config.nsf_alpha
        self.noise_std = config.nsf_sigma
        self.voiced_threshold = config.nsf_voiced_threshold
        self.l_linear = nn.Linear(config.num_harmonics, 1)
        self.register_buffer("harmonics", torch.arange(1, config.num_harmonics + 1, dtype=torch.float32),
                             persistent=False)              # [H]: 1, 2, ..., H

    def forward(self, f0: torch.Tensor, sine_noise: torch.Tensor) -> torch.Tensor:
        b, frames = f0.shape
        h = self.harmonics.shape[0]
        freq = f0[:, :, None] * self.harmonics              # [B, F, H] Hz
        # per-sample phase increment in cycles (the release computes this per sample and reads it
        # back at frame rate; the values are the same since f0 is constant within a frame)
        rad = (freq / self.sampling_rate) % 1
        # torch's float cumsum accumulates in double; spelled out so that an exported graph does too
        phase = torch.cumsum(rad.double(), dim=1).float() * 2 * math.pi       # [B, F, H]
        phase = phase.transpose(1, 2) * self.scale                            # [B, H, F] slope
        if _exporting():
            phase = upsample_linear(phase, self.scale)                        # [B, H, T]
        else:
            phase = F.interpolate(phase, scale_factor=float(self.scale), mode="linear")
        # the release works in this [B, H, T] memory layout (seen as [B, T, H]); keep it so that
        # every op (and the merge matmul) rounds the same way
        sines = (torch.sin(phase) * self.sine_amp).reshape(b, h, frames, self.scale)
        # voiced flag and noise amplitude per frame, broadcast over the frame's samples
        uv = (f0 > self.voiced_threshold).to(sines.dtype)[:, None, :, None]     # [B, 1, F, 1]
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        noise = noise_amp * sine_noise.transpose(1, 2).reshape(b, h, frames, self.scale)
        waves = (sines * uv + noise).reshape(b, h, frames * self.scale)         # [B, H, T]
        return torch.tanh(self.l_linear(waves.transpose(1, 2))).transpose(1, 2)  # [B, 1, T]


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def upsample_linear(x: torch.Tensor, scale: int) -> torch.Tensor:
    """`F.interpolate(x, scale_factor=scale, mode="linear")` ([B, C, F] -> [B, C, F * scale],
    half-pixel centres) with the rounding of torch's CPU kernel spelled out in plain ops, so that an
    exported graph gives the same float32 values: the source position is rounded once from
    step * (t + 0.5) - 0.5 (step = float32(1 / scale)), and the blend is a fused a * w0 + fl(b * w1).
    This matters because the harmonic phase reaches ~1e4 rad, where one float32 ulp is ~1e-3 rad."""
    frames = x.shape[-1]
    t = torch.arange(frames * scale, dtype=torch.float64, device=x.device)
    step = float(np.float32(1.0 / scale))
    src = (step * (t + 0.5) - 0.5).clamp(min=0).float()
    i0 = torch.minimum(src.floor(), torch.full_like(src, frames - 1))
    w1 = (src - i0).clamp(0, 1)
    w0 = 1 - w1
    i0 = i0.long()
    i1 = torch.minimum(i0 + 1, torch.full_like(i0, frames - 1))
    a, b = x[..., i0], x[..., i1]
    return (a.double() * w0.double() + (b * w1).double()).float()


def _hann_periodic(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


class STFTHead(nn.Module):
    """Onesided STFT / inverse STFT with n_fft-point periodic Hann window, hop `hop`, centre padding
    (reflect), as torch.stft / torch.istft with center=True, written as convolutions.

    stft: [B, T] -> [B, 2K, T/hop + 1] (real parts of bins 0..K-1, then imaginary parts; K = n_fft/2+1)
    istft: magnitude, phase [B, K, L] -> [B, hop (L - 1)]
    """

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        bins = n_fft // 2 + 1
        win = _hann_periodic(n_fft)
        angle = 2 * np.pi * np.outer(np.arange(bins), np.arange(n_fft)) / n_fft    # [K, N]
        cos, sin = np.cos(angle), np.sin(angle)
        sin[0] = 0.0
        if n_fft % 2 == 0:
            sin[-1] = 0.0
        # analysis: X_k = sum_n w[n] x[n] exp(-2 pi i k n / N)
        analysis = np.concatenate([cos * win, -sin * win])[:, None, :]             # [2K, 1, N]
        # synthesis: x[n] = w[n] / N * sum_k c_k (Re X_k cos - Im X_k sin), c = 1 for DC/Nyquist, else 2
        c = np.full(bins, 2.0)
        c[0] = 1.0
        if n_fft % 2 == 0:
            c[-1] = 1.0
        synthesis = np.concatenate([c[:, None] * cos, -c[:, None] * sin]) * win / n_fft  # [2K, N]
        self.register_buffer("analysis", torch.from_numpy(analysis).float(), persistent=False)
        self.register_buffer("synthesis", torch.from_numpy(synthesis[:, None, :]).float(), persistent=False)
        self.register_buffer("window_sq", torch.from_numpy(win ** 2)[None, None, :].float(), persistent=False)

    def stft(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        x = F.pad(x[:, None, :], (pad, pad), mode="reflect")                # [B, 1, T + N]
        return F.conv1d(x, self.analysis, stride=self.hop)                 # [B, 2K, T/hop + 1]

    def istft(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        spec = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)
        frames = F.conv_transpose1d(spec, self.synthesis, stride=self.hop)  # [B, 1, hop (L-1) + N]
        envelope = F.conv_transpose1d(torch.ones_like(spec[:1, :1]), self.window_sq, stride=self.hop)
        pad = self.n_fft // 2
        length = frames.shape[2] - 2 * pad
        y = frames[:, 0, pad:pad + length] / envelope[:, 0, pad:pad + length]
        return y


# -------------------------------------------------------------------------------------- generator

class HiFTGenerator(nn.Module):
    """mel [1, 80, F] (+ source cache) -> speech [1, 480 F], source excitation [1, 1, 480 F]."""

    def __init__(self, config: Optional[HiFTConfig] = None):
        super().__init__()
        cfg = self.config = config if config is not None else HiFTConfig()
        base = cfg.base_channels
        spec_ch = cfg.n_fft + 2
        self.m_source = HarmonicSource(cfg)
        self.conv_pre = nn.Conv1d(cfg.in_channels, base, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(base >> i, base >> (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)))

        # source branch: the source STFT (hop 4, i.e. 120 frames per mel frame) is brought down to
        # the resolution of each upsampling stage: strides 15, 3, 1 for the released rates
        rates = list(cfg.upsample_rates)
        strides = np.cumprod([1] + rates[::-1][:-1])[::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (s, k, d) in enumerate(zip(strides, cfg.source_resblock_kernel_sizes,
                                          cfg.source_resblock_dilation_sizes)):
            s = int(s)
            ch = base >> (i + 1)
            self.source_downs.append(nn.Conv1d(spec_ch, ch, 1) if s == 1 else
                                     nn.Conv1d(spec_ch, ch, 2 * s, s, padding=s // 2))
            self.source_resblocks.append(ResBlock(ch, k, d))

        self.resblocks = nn.ModuleList(
            ResBlock(base >> (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = nn.Conv1d(base >> len(self.ups), spec_ch, 7, padding=3)
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.f0_cond_channels, cfg.f0_num_class)
        self.stft_head = STFTHead(cfg.n_fft, cfg.hop_len)

    # ------------------------------------------------------------------------------ checkpoints

    def _weight_norm_names(self) -> List[str]:
        """Modules whose weight the release stores weight-normalised (dim 0)."""
        names = ["conv_pre", "conv_post"]
        names += [f"ups.{i}" for i in range(len(self.ups))]
        names += [f"f0_predictor.condnet.{i}" for i in range(0, len(self.f0_predictor.condnet), 2)]
        for group in ("resblocks", "source_resblocks"):
            for i, block in enumerate(getattr(self, group)):
                names += [f"{group}.{i}.{c}.{j}" for c in ("convs1", "convs2") for j in range(len(block.convs1))]
        return names

    @classmethod
    def from_state_dict(cls, state: Dict[str, torch.Tensor],
                        config: Optional[HiFTConfig] = None) -> "HiFTGenerator":
        """Build from a released-layout state dict (`hift.pt`): `generator.` prefixes are dropped,
        weight norm may be `parametrizations.weight.original0/1` (what torch >= 2.1 writes) or
        `weight_g/weight_v` (older torch), or already folded to `.weight`; it is folded once here.
        Strict: KeyError for missing/unexpected keys, ValueError for shape mismatches."""
        state = _strip_prefix(state)
        model = cls(config if config is not None else HiFTConfig.from_state_dict(state))
        folded = dict(state)
        for name in model._weight_norm_names():
            for g_suffix, v_suffix in _WN_FORMS:
                g_key, v_key = name + g_suffix, name + v_suffix
                if g_key in folded and v_key in folded:
                    g, v = folded.pop(g_key), folded.pop(v_key)
                    if g.dim() != v.dim() or g.shape[0] != v.shape[0]:
                        raise ValueError(f"weight norm pair {g_key} {tuple(g.shape)} / {v_key} "
                                         f"{tuple(v.shape)} do not match")
                    folded[name + ".weight"] = torch._weight_norm(v.float(), g.float(), 0)
                    break
        own = model.state_dict()
        missing = [k for k in own if k not in folded]
        unexpected = [k for k in folded if k not in own]
        if missing or unexpected:
            raise KeyError(f"HiFT checkpoint does not match: missing {missing}, unexpected {unexpected}")
        bad = [f"{k}: {tuple(folded[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
               if folded[k].shape != v.shape]
        if bad:
            raise ValueError("HiFT checkpoint shape mismatch: " + "; ".join(bad))
        model.load_state_dict({k: folded[k].float() for k in own}, strict=True)
        return model.eval()

    def state_dict_official(self) -> Dict[str, torch.Tensor]:
        """The released key layout, in the released order, weight norm written in the form that
        torch 2.13's `parametrizations.weight_norm` produces (`parametrizations.weight.original0` =
        g [C0, 1, ...], `original1` = v); v is the folded weight and g its norm, so the released
        module reproduces the weight to float rounding. (The released module also accepts
        `weight_g`/`weight_v` through torch's compatibility hook.)"""
        wn = set(self._weight_norm_names())
        own = self.state_dict()
        out: Dict[str, torch.Tensor] = {}
        for key, value in own.items():
            name, _, leaf = key.rpartition(".")
            if name not in wn:
                out[key] = value.detach().clone()
            elif leaf == "bias":                   # released order: bias, then g, then v
                w = own[name + ".weight"].detach().clone()
                out[key] = value.detach().clone()
                out[name + _WN_FORMS[0][0]] = torch.norm_except_dim(w, 2, 0)
                out[name + _WN_FORMS[0][1]] = w
        return out

    # --------------------------------------------------------------------------------- inference

    def random_inputs(self, num_frames: int, generator: torch.Generator, batch: int = 1
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return random_inputs(self.config, num_frames, generator, batch)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel [B, 80, F], source [B, 1, T] -> speech [B, T], clamped to +-audio_limit."""
        cfg = self.config
        spec = self.stft_head.stft(source[:, 0])                       # [B, 18, T/4 + 1]
        x = self.conv_pre(mel)
        n_k = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")                   # T/4 -> T/4 + 1
            x = x + self.source_resblocks[i](self.source_downs[i](spec))
            blocks = self.resblocks[i * n_k:(i + 1) * n_k]
            acc = blocks[0](x)
            for block in blocks[1:]:
                acc = acc + block(x)
            x = acc / n_k
        x = self.conv_post(F.leaky_relu(x))                            # slope 0.01 here (as released)
        bins = cfg.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :bins]).clamp(max=1e2)
        phase = torch.sin(x[:, bins:])
        speech = self.stft_head.istft(magnitude, phase)
        return speech.clamp(-cfg.audio_limit, cfg.audio_limit)

    def forward(self, mel: torch.Tensor, cache_source: torch.Tensor, phase_init: torch.Tensor,
                sine_noise: torch.Tensor, branch_noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """mel [B, 80, F], cache_source [B, 1, S] (S may be 0), then the three tensors of
        `random_inputs(F, g)` -> speech [B, 480 F], source [B, 1, 480 F] (whose first S samples
        are `cache_source`). `phase_init` and `branch_noise` do not affect the result."""
        f0 = self.f0_predictor(mel)                                    # [B, F]
        source = self.m_source(f0, sine_noise)                         # [B, 1, T]
        source = torch.cat([cache_source.to(source.dtype), source[:, :, cache_source.shape[2]:]], dim=2)
        return self.decode(mel, source), source

def random_inputs(config: HiFTConfig, num_frames: int, generator: torch.Generator, batch: int = 1
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The released call's random draws, in its order: phase offset [B, H] (uniform; unused,
    see the module docstring), sine noise [B, T, H] (standard normal), noise branch [B, T, 1]
    (standard normal; unused). T = num_frames * 480. Every backend draws through this function."""
    t = num_frames * config.upsample_scale
    h = config.num_harmonics
    phase_init = torch.rand(batch, h, generator=generator)
    # the release draws the sine noise into a [B, T, H] view of a [B, H, T] buffer; torch fills
    # such a strided tensor element by element in memory order (not with the vectorised
    # contiguous sampler), so draw into the same layout to get the same numbers
    sine_noise = torch.empty(batch, h, t).transpose(1, 2)
    sine_noise.normal_(generator=generator)
    branch_noise = torch.randn(batch, t, 1, generator=generator)
    return phase_init, sine_noise, branch_noise


# -------------------------------------------------------------------------------------- prompt mel

def slaney_mel_filters(sr: int = SAMPLE_RATE, n_fft: int = MEL_N_FFT, n_mels: int = MEL_BINS,
                       fmin: float = MEL_FMIN, fmax: float = MEL_FMAX) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters [n_mels, n_fft/2 + 1] (float32), with the
    same float32 rounding steps as librosa.filters.mel (bit-identical for the prompt settings)."""
    f_sp = 200.0 / 3                        # Hz per mel below 1 kHz
    brk_hz, brk_mel = 1000.0, 1000.0 / f_sp
    logstep = math.log(6.4) / 27.0          # mel step above 1 kHz (log Hz)

    def to_mel(f: float) -> float:
        return brk_mel + math.log(f / brk_hz) / logstep if f >= brk_hz else f / f_sp

    mels = np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2)
    edges = f_sp * mels
    hi = mels >= brk_mel
    edges[hi] = brk_hz * np.exp(logstep * (mels[hi] - brk_mel))          # filter edges, Hz
    bin_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    width = np.diff(edges)
    dist = edges[:, None] - bin_hz[None, :]
    rising = -dist[:-2] / width[:-1, None]
    falling = dist[2:] / width[1:, None]
    w = np.maximum(0, np.minimum(rising, falling)).astype(np.float32)
    w *= (2.0 / (edges[2:] - edges[:-2]))[:, None]                        # equal area
    return w


_PROMPT_MEL_CACHE: Dict[str, torch.Tensor] = {}


def prompt_mel(wav_24k: torch.Tensor) -> torch.Tensor:
    """Log-mel of the 24 kHz prompt as the release computes it: [B, N] float -> [B, 80, F],
    F = (N + 1440 - 1920) // 480 + 1 (reflect pad 720 each side, no centring, magnitude
    sqrt(re^2 + im^2 + 1e-9), Slaney mel 0-8 kHz, natural log with floor 1e-5)."""
    dev = str(wav_24k.device)
    if dev not in _PROMPT_MEL_CACHE:
        _PROMPT_MEL_CACHE[dev] = torch.from_numpy(slaney_mel_filters()).to(wav_24k.device)
        _PROMPT_MEL_CACHE[dev + "/win"] = torch.hann_window(MEL_N_FFT).to(wav_24k.device)
    filters, window = _PROMPT_MEL_CACHE[dev], _PROMPT_MEL_CACHE[dev + "/win"]
    pad = (MEL_N_FFT - MEL_HOP) // 2
    x = F.pad(wav_24k.float()[:, None], (pad, pad), mode="reflect")[:, 0]
    spec = torch.stft(x, MEL_N_FFT, hop_length=MEL_HOP, win_length=MEL_N_FFT, window=window,
                      center=False, normalized=False, onesided=True, return_complex=True)
    spec = torch.view_as_real(spec)
    mag = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)                       # [B, 961, F]
    return torch.log(torch.clamp(filters @ mag, min=1e-5))
