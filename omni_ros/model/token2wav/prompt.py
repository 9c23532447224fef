"""Speaker-prompt front end of the waveform stage: a 16 kHz reference wav -> its speech codes (the
S3 speech tokenizer v2, 25 codes/s) and its 192-value speaker embedding (CAM++).

- `log_mel_128`: the tokenizer's log-mel (STFT 400/160 with a periodic Hann window, the 128 Slaney
  filters librosa builds, log10 floored at 1e-10, an 8-decade range below the clip's peak, (x + 4) / 4).
- `S3TokenizerV2`: two stride-2 convolutions, FSMN + rotary attention blocks, an 8-dim finite scalar
  quantiser (3 levels per dim, 3**8 = 6561 codes). State-dict keys are those of the released
  `s3tokenizer.S3TokenizerV2`; `from_onnx` reads `speech_tokenizer_v2_25hz.onnx` the way
  `s3tokenizer.load_model` does (initializers only, the graph is never run).
- `kaldi_fbank_80` and `SpeakerEncoder`: Kaldi's 80-bin log fbank (torchaudio's `compliance.kaldi.fbank`
  with dither 0), mean-normalised over time, fed to `campplus.onnx` in onnxruntime.
- `write_onnx` / `write_random_campplus_onnx`: files of the released layouts, for tests.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
MAX_TOKENIZER_FRAMES = 3000         # 30 s of mel: the longest clip the tokenizer takes in one pass

# Initializers of the released speech_tokenizer_v2_25hz.onnx that the official loader maps by their
# own names (the input convolutions and the projection to the quantiser); every other weight is keyed
# by the name of the node that consumes it.
RELEASED_NAMED = {
    "encoder.conv1.weight": "onnx::Conv_2216", "encoder.conv1.bias": "onnx::Conv_2217",
    "encoder.conv2.weight": "onnx::Conv_2218", "encoder.conv2.bias": "onnx::Conv_2219",
    "quantizer._codebook.project_down.weight": "onnx::MatMul_2536",
    "quantizer._codebook.project_down.bias": "quantizer.project_in.bias",
}
# ... and all the names it knows (v1 tokenizers' too; none of those is a v2 weight)
ONNX_NAMED = {name: key for key, name in RELEASED_NAMED.items()}
ONNX_NAMED.update({
    "onnx::Conv_1519": "encoder.conv1.weight", "onnx::Conv_1520": "encoder.conv1.bias",
    "onnx::Conv_1521": "encoder.conv2.weight", "onnx::Conv_1522": "encoder.conv2.bias",
    "encoders.conv1.weight": "encoder.conv1.weight", "encoders.conv1.bias": "encoder.conv1.bias",
    "encoders.conv2.weight": "encoder.conv2.weight", "encoders.conv2.bias": "encoder.conv2.bias",
    "encoders.positional_embedding": "encoder.positional_embedding",
})


# ----------------------------------------------------------------------------------------------
# 128-bin log mel (the tokenizer's input)

@lru_cache(maxsize=4)
def slaney_mel_filters(n_mels: int = 128, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32: librosa.filters.mel(sr, n_fft, n_mels) (Slaney scale and area
    norm), rounded as librosa rounds it (triangles to float32 first, then the norm applied in float64)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def to_mel(hz: float) -> float:
        return min_log_mel + math.log(hz / min_log_hz) / logstep if hz >= min_log_hz else hz / f_sp

    mels = np.linspace(to_mel(0.0), to_mel(sample_rate / 2.0), n_mels + 2)
    hz = f_sp * mels
    log_part = mels >= min_log_mel
    hz[log_part] = min_log_hz * np.exp(logstep * (mels[log_part] - min_log_mel))
    fft_hz = np.arange(n_fft // 2 + 1) * (1.0 / (n_fft * (1.0 / sample_rate)))
    gaps = np.diff(hz)
    ramps = hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / gaps[:-1, None]
    falling = ramps[2:] / gaps[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    return (weights * (2.0 / (hz[2:] - hz[:-2]))[:, None]).astype(np.float32)


def log_mel_128(audio_16k: torch.Tensor, n_mels: int = 128, padding: int = 0) -> torch.Tensor:
    """[T] float 16 kHz -> [n_mels, T // 160] (`s3tokenizer.log_mel_spectrogram`; `padding` zero samples
    are appended first). The floor is 8 below the maximum of the whole clip."""
    if padding > 0:
        audio_16k = F.pad(audio_16k, (0, padding))
    window = torch.hann_window(N_FFT, device=audio_16k.device)
    spec = torch.stft(audio_16k, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2                                   # [201, frames]
    filters = torch.from_numpy(slaney_mel_filters(n_mels)).to(audio_16k.device)
    logs = torch.clamp(filters @ power, min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    return (logs + 4.0) / 4.0


def pad_mels(mels: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """List of [n_mels, T_i] -> ([B, n_mels, max T_i] zero-padded, lengths [B] int32) (`s3tokenizer.padding`)."""
    lengths = torch.tensor([m.shape[1] for m in mels], dtype=torch.int32)
    batch = mels[0].new_zeros(len(mels), mels[0].shape[0], int(lengths.max()))
    for i, m in enumerate(mels):
        batch[i, :, :m.shape[1]] = m
    return batch, lengths


# ----------------------------------------------------------------------------------------------
# S3 speech tokenizer v2

@dataclass
class TokenizerDims:
    """Sizes of the speech tokenizer; released values as defaults. Heads are 64 wide (the rotary table
    is 64 wide and applied to each head), so heads = width // 64."""
    n_mels: int = 128
    width: int = 1280
    n_blocks: int = 6
    fsmn_kernel: int = 31
    code_dim: int = 8           # FSQ dims (3 levels each -> 3**8 codes)
    levels: int = 3
    rotary_dim: int = 64
    rotary_positions: int = 2048

    @property
    def n_heads(self) -> int:
        return self.width // self.rotary_dim


def _rotary_table(dim: int, positions: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [positions, dim]: the angle of position t for pair i is t / 10000**(2i/dim), the dim/2
    angles repeated twice (the rotation pairs x[i] with x[i + dim/2])."""
    inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    angles = torch.outer(torch.arange(positions), inv).float()
    unit = torch.polar(torch.ones_like(angles), angles)          # complex64, as the released code builds it
    unit = torch.cat((unit, unit), dim=-1)
    return unit.real.contiguous(), unit.imag.contiguous()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D] rotated by cos/sin [1, T, 1, D]."""
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + turned * sin


class FsmnAttention(nn.Module):
    """Self-attention with rotary q/k (scaled by head_dim**-0.25 on each side), plus an FSMN memory:
    a depthwise convolution over the value projection, added to the attention output."""

    def __init__(self, width: int, n_heads: int, kernel: int):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.fsmn_block = nn.Conv1d(width, width, kernel, groups=width, bias=False)
        self.pads = ((kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2)

    def memory(self, v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """v [B, T, C], keep [B, T, 1] bool -> FSMN memory [B, T, C] (zero on padded frames)."""
        v = v * keep
        mem = self.fsmn_block(F.pad(v.transpose(1, 2), self.pads)).transpose(1, 2)
        return (mem + v) * keep

    def forward(self, x: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, C], bias [B, 1, 1, T] (0 or -1e10), keep [B, T, 1], cos/sin [1, T, 1, D] -> [B, T, C]."""
        b, t, c = x.shape
        scale = (c // self.n_heads) ** -0.25
        q = self.query(x).view(b, t, self.n_heads, -1)
        k = self.key(x).view(b, t, self.n_heads, -1)
        v = self.value(x).view(b, t, self.n_heads, -1)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        mem = self.memory(v.reshape(b, t, c), keep)
        q = q.permute(0, 2, 1, 3) * scale                        # [B, H, T, D]
        k = k.permute(0, 2, 3, 1) * scale                        # [B, H, D, T]
        weights = torch.softmax((q @ k + bias).float(), dim=-1)
        ctx = (weights @ v.permute(0, 2, 1, 3)).permute(0, 2, 1, 3).flatten(start_dim=2)
        return self.out(ctx) + mem


class TokenizerBlock(nn.Module):
    def __init__(self, width: int, n_heads: int, kernel: int):
        super().__init__()
        self.attn = FsmnAttention(width, n_heads, kernel)
        self.attn_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.mlp_ln = nn.LayerNorm(width)

    def forward(self, x, bias, keep, cos, sin):
        x = x + self.attn(self.attn_ln(x), bias, keep, cos, sin)
        return x + self.mlp(self.mlp_ln(x))


class TokenizerEncoder(nn.Module):
    """mel [B, n_mels, T] -> hidden [B, T', width] at a quarter of the frame rate, and lengths T'."""

    def __init__(self, dims: TokenizerDims):
        super().__init__()
        self.conv1 = nn.Conv1d(dims.n_mels, dims.width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(dims.width, dims.width, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(TokenizerBlock(dims.width, dims.n_heads, dims.fsmn_kernel)
                                    for _ in range(dims.n_blocks))
        cos, sin = _rotary_table(dims.rotary_dim, dims.rotary_positions)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)

    @staticmethod
    def _valid(t: int, lengths: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return torch.arange(t, device=like.device)[None, :] < lengths[:, None]          # [B, T] bool

    def forward(self, mel: torch.Tensor, mel_len: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = F.gelu(self.conv1(mel * self._valid(mel.shape[2], mel_len, mel).unsqueeze(1)))
        lengths = torch.div(mel_len - 1, 2, rounding_mode="floor") + 1
        x = F.gelu(self.conv2(x * self._valid(x.shape[2], lengths, x).unsqueeze(1)))
        lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        x = x.transpose(1, 2)                                               # [B, T', C]
        t = x.shape[1]
        valid = self._valid(t, lengths, x)
        keep = valid.unsqueeze(-1)                                          # [B, T', 1]
        bias = ((1.0 - valid.to(x.dtype)) * -1.0e10)[:, None, None, :]      # [B, 1, 1, T']
        cos = self.rotary_cos[:t][None, :, None, :]
        sin = self.rotary_sin[:t][None, :, None, :]
        for block in self.blocks:
            x = block(x, bias, keep, cos, sin)
        return x, lengths


class FsqCodebook(nn.Module):
    """Finite scalar quantiser: project to `code_dim` values, tanh, round to `levels` steps, base-`levels`
    digits (first dim least significant) -> one code."""

    def __init__(self, width: int, code_dim: int, levels: int):
        super().__init__()
        self.project_down = nn.Linear(width, code_dim)
        self.levels = levels

    def digits(self, h: torch.Tensor) -> torch.Tensor:
        """Projected values [..., code_dim] -> digits in [0, levels) (int64)."""
        h = torch.tanh(h).clamp(-1 + 1e-6, 1 - 1e-6)
        return ((h + 1.0) * (self.levels - 1) / 2.0).round().to(torch.int64)

    def codes(self, h: torch.Tensor) -> torch.Tensor:
        powers = self.levels ** torch.arange(h.shape[-1], device=h.device, dtype=torch.int64)
        return (self.digits(h) * powers).sum(dim=-1)


class FsqQuantizer(nn.Module):
    def __init__(self, width: int, code_dim: int, levels: int):
        super().__init__()
        self._codebook = FsqCodebook(width, code_dim, levels)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, width] -> [B, T, code_dim] (the values that are quantised)."""
        b, t, c = hidden.shape
        return self._codebook.project_down(hidden.reshape(b * t, c)).float().view(b, t, -1)


class S3TokenizerV2(nn.Module):
    """The S3 speech tokenizer v2: 128-bin log mel at 100 frames/s -> codes in [0, 6561) at 25/s."""

    def __init__(self, dims: Optional[TokenizerDims] = None):
        super().__init__()
        self.dims = dims or TokenizerDims()
        self.encoder = TokenizerEncoder(self.dims)
        self.quantizer = FsqQuantizer(self.dims.width, self.dims.code_dim, self.dims.levels)

    def project(self, mel: torch.Tensor, mel_len: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """mel [B, n_mels, T], mel_len [B] -> pre-quantisation values [B, T', code_dim], lengths [B]."""
        hidden, lengths = self.encoder(mel, mel_len)
        return self.quantizer.project(hidden), lengths

    def forward(self, mel: torch.Tensor, mel_len: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """mel [B, n_mels, T] (T = max mel_len, at most 3000), mel_len [B] -> codes [B, T'] int32, lengths [B]
        (codes past a row's length are those of its padding)."""
        values, lengths = self.project(mel, mel_len)
        return self.quantizer._codebook.codes(values).to(torch.int32), lengths

    @torch.inference_mode()
    def quantize(self, mel: torch.Tensor, mel_len: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """As `s3tokenizer.S3TokenizerV2.quantize` for clips of at most 3000 frames (30 s; a reference
        voice is never longer): codes int32, lengths of mel_len's dtype."""
        if bool((mel_len > MAX_TOKENIZER_FRAMES).any()):
            raise ValueError(f"clips longer than {MAX_TOKENIZER_FRAMES} mel frames (30 s) are not tokenized")
        return self.forward(mel, mel_len)

    # -- the released ONNX file ------------------------------------------------------------------

    @classmethod
    def from_onnx(cls, path) -> "S3TokenizerV2":
        """Read `speech_tokenizer_v2_25hz.onnx` (its initializers; the graph is not run), mapping each
        weight as `s3tokenizer.load_model` does; sizes are taken from the file. A file whose weights
        do not make exactly this model's state dict is refused, naming what is missing, unexpected
        or of the wrong shape."""
        import onnx
        weights = _official_onnx_weights(onnx.load(str(path)))
        conv1 = weights.get("encoder.conv1.weight")
        if conv1 is None or conv1.dim() != 3:
            raise ValueError(f"{path}: no speech-tokenizer input convolution (initializer onnx::Conv_2216)")
        blocks = {int(m.group(1)) for k in weights if (m := re.match(r"encoder\.blocks\.(\d+)\.", k))}
        dims = TokenizerDims(n_mels=conv1.shape[1], width=conv1.shape[0],
                             n_blocks=max(blocks) + 1 if blocks else 0)
        model = cls(dims)
        want = model.state_dict()
        missing = sorted(set(want) - set(weights))
        unexpected = sorted(set(weights) - set(want))
        misshaped = sorted(f"{k} {tuple(weights[k].shape)} (expected {tuple(want[k].shape)})"
                           for k in set(want) & set(weights) if weights[k].shape != want[k].shape)
        if missing or unexpected or misshaped:
            raise ValueError(f"{path} is not a speech tokenizer v2 of width {dims.width}, "
                             f"{dims.n_blocks} blocks, {dims.n_mels} mels: missing {missing}, "
                             f"unexpected {unexpected}, wrong shape {misshaped}")
        model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
        return model.eval()

    def write_onnx(self, path) -> None:
        """Write this model as `speech_tokenizer_v2_25hz.onnx`: every weight an initializer under its
        released name, shape ([in, out] for Linear weights) and dtype, consumed by a node of the
        released name. The graph computes the codes of one unpadded clip: inputs `feats` [1, n_mels, T]
        float32 and `feats_length` [1] int32 (T), output `indices` [1, T'] int64."""
        import onnx
        onnx.save(_tokenizer_graph(self), str(path))


def _official_onnx_weights(model) -> Dict[str, torch.Tensor]:
    """The state dict `s3tokenizer.onnx2torch` + `_rename_weights` make of an ONNX model: each
    initializer a node consumes is keyed by its own name (`ONNX_NAMED`) or by the consuming node's
    name ('/blocks.0/attn/query/MatMul' -> 'encoder.blocks.0.attn.query.weight', a LayerNormalization
    node gives its scale and bias); weights of at most 2 dims are transposed (1-D ones are unchanged);
    quantizer weights other than the projection are dropped. A key the official loader would stop at
    (an assertion there) is kept under a descriptive name, so that it is reported as unexpected."""
    from onnx import numpy_helper
    inits = {t.name: t for t in model.graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        if name not in inits:
            raise ValueError(f"a LayerNormalization node reads {name!r}, which is not an initializer")
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    raw: Dict[str, torch.Tensor] = {}
    for node in model.graph.node:
        for name in node.input:
            if name not in inits:
                continue
            if name not in ONNX_NAMED and node.op_type == "LayerNormalization":
                scope = node.name.replace("/LayerNormalization", "")
                raw[scope + ".weight"] = tensor(node.input[1])
                raw[scope + ".bias"] = tensor(node.input[2])
                continue
            key = ONNX_NAMED.get(name, node.name)
            value = tensor(name)
            raw[key] = value if value.dim() > 2 or key == "encoder.positional_embedding" else value.t()
    out: Dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if "quantizer" in key:
            if key == "/quantizer/rq/model/layers.0/_codebook/Pow_1":
                out["quantizer._codebook.embed"] = value
            elif "project_down" in key:
                out[key] = value
        elif "positional_embedding" in key or "conv" in key:
            out[key] = value
        elif "blocks" in key:
            new = (key[1:].replace("/", ".").replace("MatMul", "weight").replace("Add_1", "bias")
                   .replace("Mul", "weight").replace("Add", "bias").replace("mlp.mlp", "mlp")
                   .replace("fsmn_block.Conv", "fsmn_block.weight"))
            out["encoder." + new] = value
        else:
            out[f"<weight of node {key!r}>"] = value
    return out


def _released_names(n_blocks: int) -> Dict[str, str]:
    """State-dict key -> initializer name in the released file (block b's generated names are numbered
    from 2224 + 52 b, as the exporter numbered them)."""
    names = dict(RELEASED_NAMED)
    slots = {"attn_ln.weight": ("LayerNormalization", 0), "attn_ln.bias": ("LayerNormalization", 1),
             "attn.query.bias": ("Add", 3), "attn.query.weight": ("MatMul", 4),
             "attn.key.weight": ("MatMul", 6), "attn.value.bias": ("Add", 8),
             "attn.value.weight": ("MatMul", 9), "attn.out.bias": ("Add", 42),
             "attn.out.weight": ("MatMul", 43), "mlp_ln.weight": ("LayerNormalization", 44),
             "mlp_ln.bias": ("LayerNormalization", 45), "mlp.0.bias": ("Add", 47),
             "mlp.0.weight": ("MatMul", 48), "mlp.2.bias": ("Add", 50), "mlp.2.weight": ("MatMul", 51)}
    for b in range(n_blocks):
        for key, (op, offset) in slots.items():
            names[f"encoder.blocks.{b}.{key}"] = f"onnx::{op}_{2224 + 52 * b + offset}"
        names[f"encoder.blocks.{b}.attn.fsmn_block.weight"] = f"blocks.{b}.attn.fsmn_block.weight"
    return names


class _GraphBuilder:
    """Collects ONNX nodes; node outputs are named '<node name>_output_0' as torch's exporter names them."""

    def __init__(self):
        from onnx import helper
        self.helper = helper
        self.nodes = []
        self.initializers = []
        self._constants = 0

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs) -> str:
        out = f"{name}_output_0"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def const(self, value: np.ndarray) -> str:
        """A Constant node (not an initializer: the official loader reads initializers only)."""
        from onnx import numpy_helper
        self._constants += 1
        name = f"/Constant_{self._constants}"
        return self.op("Constant", [], name, value=numpy_helper.from_array(np.asarray(value), name + "_value"))

    def weight(self, name: str, value: torch.Tensor) -> str:
        from onnx import numpy_helper
        self.initializers.append(numpy_helper.from_array(value.detach().cpu().float().numpy(), name))
        return name


def _tokenizer_graph(model: S3TokenizerV2):
    """The ONNX model `write_onnx` saves (opset 18): the tokenizer for one unpadded clip."""
    from onnx import TensorProto, helper
    dims = model.dims
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    names = _released_names(dims.n_blocks)
    g = _GraphBuilder()

    def w(key: str, transpose: bool = False) -> str:
        return g.weight(names[key], sd[key].t().contiguous() if transpose else sd[key])

    def linear(x: str, key: str, scope: str, bias: bool = True) -> str:
        y = g.op("MatMul", [x, w(key + ".weight", transpose=True)], scope + "/MatMul")
        return g.op("Add", [w(key + ".bias"), y], scope + "/Add") if bias else y

    def gelu(x: str, scope: str) -> str:
        e = g.op("Erf", [g.op("Div", [x, g.const(np.float32(math.sqrt(2.0)))], scope + "/Div")], scope + "/Erf")
        e = g.op("Add", [e, g.const(np.float32(1.0))], scope + "/Add")
        return g.op("Mul", [g.op("Mul", [x, e], scope + "/Mul"), g.const(np.float32(0.5))], scope + "/Mul_1")

    zero, one = g.const(np.array([0], np.int64)), g.const(np.array([1], np.int64))
    last = g.const(np.array([-1], np.int64))
    length = g.op("Cast", ["feats_length"], "/Cast", to=TensorProto.INT64)
    x = g.op("Slice", ["feats", zero, length, g.const(np.array([2], np.int64))], "/Slice")
    for i in (1, 2):
        conv = g.op("Conv", [x, w(f"encoder.conv{i}.weight"), w(f"encoder.conv{i}.bias")], f"/conv{i}/Conv",
                    kernel_shape=[3], strides=[2], pads=[1, 1])
        x = gelu(conv, f"/gelu{i}")
    x = g.op("Transpose", [x], "/Transpose", perm=[0, 2, 1])                            # [1, T, C]
    t = g.op("Gather", [g.op("Shape", [x], "/Shape"), one], "/Gather", axis=0)          # [1]
    rot = []
    for label, table in (("cos", model.encoder.rotary_cos), ("sin", model.encoder.rotary_sin)):
        full = g.const(table.cpu().numpy()[:, None, :])                                  # [P, 1, D]
        rot.append(g.op("Slice", [full, zero, t, zero], f"/rotary_{label}/Slice"))       # [T, 1, D]
    heads = g.const(np.array([1, -1, dims.n_heads, dims.width // dims.n_heads], np.int64))
    flat = g.const(np.array([1, -1, dims.width], np.int64))
    scale = g.const(np.float32((dims.width // dims.n_heads) ** -0.25))
    pads = dims.fsmn_kernel - 1
    for b in range(dims.n_blocks):
        p, k = f"/blocks.{b}", f"encoder.blocks.{b}"
        h = g.op("LayerNormalization", [x, w(k + ".attn_ln.weight"), w(k + ".attn_ln.bias")],
                 p + "/attn_ln/LayerNormalization", axis=-1, epsilon=1e-6)
        q = linear(h, k + ".attn.query", p + "/attn/query")
        kk = linear(h, k + ".attn.key", p + "/attn/key", bias=False)
        v = linear(h, k + ".attn.value", p + "/attn/value")
        rotated = []
        for label, y in (("q", q), ("k", kk)):
            y = g.op("Reshape", [y, heads], f"{p}/attn/Reshape_{label}")
            lo, hi = (f"{p}/attn/Split_{label}_output_{j}" for j in (0, 1))
            g.nodes.append(g.helper.make_node("Split", [y], [lo, hi], name=f"{p}/attn/Split_{label}",
                                              axis=-1, num_outputs=2))
            turned = g.op("Concat", [g.op("Neg", [hi], f"{p}/attn/Neg_{label}"), lo], f"{p}/attn/Concat_{label}",
                          axis=-1)
            rotated.append(g.op("Add", [g.op("Mul", [y, rot[0]], f"{p}/attn/Mul_cos_{label}"),
                                        g.op("Mul", [turned, rot[1]], f"{p}/attn/Mul_sin_{label}")],
                                f"{p}/attn/Add_rot_{label}"))
        mem = g.op("Transpose", [v], p + "/attn/Transpose_mem", perm=[0, 2, 1])
        mem = g.op("Pad", [mem, g.const(np.array([0, 0, pads // 2, 0, 0, pads - pads // 2], np.int64))],
                   p + "/attn/Pad")
        mem = g.op("Conv", [mem, w(k + ".attn.fsmn_block.weight")], p + "/attn/fsmn_block/Conv",
                   kernel_shape=[dims.fsmn_kernel], group=dims.width)
        mem = g.op("Add", [g.op("Transpose", [mem], p + "/attn/Transpose_mem_back", perm=[0, 2, 1]), v],
                   p + "/attn/Add_mem")
        qh = g.op("Mul", [g.op("Transpose", [rotated[0]], p + "/attn/Transpose_q", perm=[0, 2, 1, 3]), scale],
                  p + "/attn/Mul_q")
        kh = g.op("Mul", [g.op("Transpose", [rotated[1]], p + "/attn/Transpose_k", perm=[0, 2, 3, 1]), scale],
                  p + "/attn/Mul_k")
        att = g.op("Softmax", [g.op("MatMul", [qh, kh], p + "/attn/MatMul")], p + "/attn/Softmax", axis=-1)
        vh = g.op("Transpose", [g.op("Reshape", [v, heads], p + "/attn/Reshape_v")], p + "/attn/Transpose_v",
                  perm=[0, 2, 1, 3])
        ctx = g.op("Transpose", [g.op("MatMul", [att, vh], p + "/attn/MatMul_1")], p + "/attn/Transpose_ctx",
                   perm=[0, 2, 1, 3])
        ctx = linear(g.op("Reshape", [ctx, flat], p + "/attn/Reshape_ctx"), k + ".attn.out", p + "/attn/out")
        x = g.op("Add", [x, g.op("Add", [ctx, mem], p + "/attn/Add_out")], p + "/Add")
        h = g.op("LayerNormalization", [x, w(k + ".mlp_ln.weight"), w(k + ".mlp_ln.bias")],
                 p + "/mlp_ln/LayerNormalization", axis=-1, epsilon=1e-5)
        h = gelu(linear(h, k + ".mlp.0", p + "/mlp/mlp.0"), p + "/mlp/mlp.1")
        x = g.op("Add", [x, linear(h, k + ".mlp.2", p + "/mlp/mlp.2")], p + "/Add_1")
    h = linear(x, "quantizer._codebook.project_down", "/quantizer/project_in")
    h = g.op("Clip", [g.op("Tanh", [h], "/quantizer/Tanh"), g.const(np.float32(-1 + 1e-6)),
                      g.const(np.float32(1 - 1e-6))], "/quantizer/Clip")
    half_range = g.const(np.float32((dims.levels - 1) / 2.0))
    h = g.op("Round", [g.op("Mul", [g.op("Add", [h, g.const(np.float32(1.0))], "/quantizer/Add"), half_range],
                            "/quantizer/Mul")], "/quantizer/Round")
    h = g.op("Cast", [h], "/quantizer/Cast", to=TensorProto.INT64)
    powers = g.const(dims.levels ** np.arange(dims.code_dim, dtype=np.int64))
    h = g.op("Mul", [h, powers], "/quantizer/Mul_1")
    h = g.op("ReduceSum", [h, last], "/quantizer/ReduceSum", keepdims=0)
    g.nodes.append(helper.make_node("Identity", [h], ["indices"], name="/Identity"))
    graph = helper.make_graph(
        g.nodes, "speech_tokenizer_v2",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, dims.n_mels, "T"]),
         helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "T_codes"])],
        initializer=g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                   producer_name="omni_ros")
    onnx_model.ir_version = 8
    return onnx_model


# ----------------------------------------------------------------------------------------------
# Kaldi fbank + CAM++ speaker embedding

FBANK_WINDOW = 400          # 25 ms
FBANK_SHIFT = 160           # 10 ms
FBANK_FFT = 512             # window rounded up to a power of two
_EPS = torch.finfo(torch.float32).eps


@lru_cache(maxsize=4)
def kaldi_mel_banks(num_bins: int = 80, fft: int = FBANK_FFT, sample_rate: float = SAMPLE_RATE,
                    low_hz: float = 20.0) -> torch.Tensor:
    """[num_bins, fft // 2 + 1] float32 triangles on Kaldi's mel scale 1127 ln(1 + f/700), from `low_hz`
    to Nyquist, evaluated at the FFT bins (the Nyquist bin gets no weight), as torchaudio builds them."""
    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0) if isinstance(f, float) else 1127.0 * (1.0 + f / 700.0).log()

    lo, hi = mel(float(low_hz)), mel(0.5 * sample_rate)
    step = (hi - lo) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)
    left, centre, right = lo + b * step, lo + (b + 1.0) * step, lo + (b + 2.0) * step
    at = mel((sample_rate / fft) * torch.arange(fft / 2)).unsqueeze(0)
    up, down = (at - left) / (centre - left), (right - at) / (right - centre)
    return F.pad(torch.max(torch.zeros(1), torch.min(up, down)), (0, 1))


def kaldi_fbank_80(audio_16k: torch.Tensor, num_mel_bins: int = 80) -> torch.Tensor:
    """[T] float 16 kHz -> [frames, num_mel_bins] log mel energies as Kaldi's compute-fbank-feats with
    dither 0 (torchaudio.compliance.kaldi.fbank defaults): 25 ms frames every 10 ms (only whole frames),
    each frame's mean removed, pre-emphasis 0.97, Povey window (Hann**0.85), zero-padded to 512, power
    spectrum, mel triangles from 20 Hz, ln floored at float32 eps."""
    if audio_16k.dim() != 1 or audio_16k.shape[0] < FBANK_WINDOW:
        raise ValueError(f"kaldi_fbank_80 needs a 1-D signal of at least {FBANK_WINDOW} samples, "
                         f"got shape {tuple(audio_16k.shape)}")
    frames = audio_16k.unfold(0, FBANK_WINDOW, FBANK_SHIFT)                  # [m, 400]
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat((frames[:, :1], frames[:, :-1]), dim=1)
    frames = frames - 0.97 * previous
    window = torch.hann_window(FBANK_WINDOW, periodic=False, device=frames.device, dtype=frames.dtype).pow(0.85)
    frames = F.pad(frames * window, (0, FBANK_FFT - FBANK_WINDOW))
    power = torch.fft.rfft(frames).abs().pow(2.0)                              # [m, 257]
    banks = kaldi_mel_banks(num_mel_bins).to(device=frames.device, dtype=frames.dtype)
    energies = torch.mm(power, banks.T)
    return torch.max(energies, torch.tensor(_EPS, dtype=frames.dtype, device=frames.device)).log()


class SpeakerEncoder:
    """CAM++ (`campplus.onnx`) in onnxruntime on the CPU, one intra-op thread, as the released stage runs it."""

    def __init__(self, path):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @staticmethod
    def features(audio_16k: torch.Tensor) -> torch.Tensor:
        """[T] -> [frames, 80]: the fbank minus its mean over time."""
        feats = kaldi_fbank_80(audio_16k.float().cpu())
        return feats - feats.mean(dim=0, keepdim=True)

    def embed(self, audio_16k: torch.Tensor) -> torch.Tensor:
        """[T] float 16 kHz -> speaker embedding [1, 192] float32."""
        feats = self.features(audio_16k).unsqueeze(0).numpy()
        return torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: feats})[0]).copy())


def write_random_campplus_onnx(path, seed: int, embed_dim: int = 192, hidden: int = 64) -> None:
    """A stand-in for `campplus.onnx` with its signature: input `input` [batch, frames, 80] float32,
    output `output` [batch, embed_dim] float32. Two ReLU layers per frame, the mean and standard
    deviation over time, a linear layer; weights drawn from numpy's generator seeded with `seed`, scaled
    by 1/sqrt(fan-in) so that a mean-normalised fbank gives an embedding of order 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        scale = 1.0 / math.sqrt(shape[0]) if len(shape) == 2 else 0.1
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", 80, hidden), init("b1", hidden), init("w2", hidden, hidden), init("b2", hidden),
             init("w3", 2 * hidden, embed_dim), init("b3", embed_dim),
             numpy_helper.from_array(np.array([1], np.int64), "time_axis")]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1m"]), helper.make_node("Add", ["h1m", "b1"], ["h1a"]),
        helper.make_node("Relu", ["h1a"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w2"], ["h2m"]), helper.make_node("Add", ["h2m", "b2"], ["h2a"]),
        helper.make_node("Relu", ["h2a"], ["h2"]),
        helper.make_node("ReduceMean", ["h2", "time_axis"], ["mean"], keepdims=0),
        helper.make_node("ReduceMean", ["h2", "time_axis"], ["mean_t"], keepdims=1),
        helper.make_node("Sub", ["h2", "mean_t"], ["centred"]),
        helper.make_node("Mul", ["centred", "centred"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "time_axis"], ["var"], keepdims=0),
        helper.make_node("Sqrt", ["var"], ["std"]),
        helper.make_node("Concat", ["mean", "std"], ["stats"], axis=-1),
        helper.make_node("MatMul", ["stats", "w3"], ["out_m"]),
        helper.make_node("Add", ["out_m", "b3"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "campplus_random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "frames", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", embed_dim])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="omni_ros")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(Path(path)))


# ----------------------------------------------------------------------------------------------

def prompt_tokens_and_speaker(audio_16k: torch.Tensor, tokenizer: S3TokenizerV2, speaker: SpeakerEncoder
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 16 kHz reference clip [T] -> (prompt codes [1, N], their count [1], speaker embedding [1, 192]),
    as the released stage's `_prepare_prompt` makes them (the 24 kHz prompt mel is made elsewhere)."""
    mels, mel_lens = pad_mels([log_mel_128(audio_16k.float().cpu())])
    device = next(tokenizer.parameters()).device
    tokens, token_lens = tokenizer.quantize(mels.to(device), mel_lens.to(device))
    return tokens, token_lens, speaker.embed(audio_16k).to(device)
