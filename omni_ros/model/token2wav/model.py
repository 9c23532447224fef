"""The waveform stage loaded from a checkpoint's `assets/token2wav/`, and its random-weight writer.

`Token2WavModel` holds the flow (`flow.pt`, built from `flow.yaml`) and the HiFT vocoder (`hift.pt`)
as torch modules, and the prompt front end: the speech tokenizer (weights read from
`speech_tokenizer_v2_25hz.onnx`) and the CAM++ speaker encoder (`campplus.onnx`, run in onnxruntime).
Its `t2w_*` methods are the torch implementation of what `stream.WaveformStream` asks a backend for.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Tuple

import numpy as np
import soundfile
import torch
from torch import nn

from . import assets as A
from .encoder import EncoderConfig
from .estimator import DiTConfig
from .flow import FlowCaches, FlowModel
from .hift import HiFTConfig, HiFTGenerator, prompt_mel
from .prompt import (SAMPLE_RATE as PROMPT_SAMPLE_RATE, S3TokenizerV2, SpeakerEncoder,
                     TokenizerDims, prompt_tokens_and_speaker, write_random_campplus_onnx)

# Dimensions of the random-weight folders the project writes (tests, demo, benchmarks).
TINY_FLOW = A.FlowConfig(
    input_size=64,
    encoder=EncoderConfig(input_size=64, output_size=64, attention_heads=2, linear_units=128, num_blocks=2,
                          num_up_blocks=2),
    decoder=A.CFMConfig(estimator=DiTConfig(depth=2, num_heads=2, head_dim=32, hidden_size=64)))
TINY_HIFT_CHANNELS = 32
TINY_TOKENIZER = TokenizerDims(width=128, n_blocks=2)
SIZES = ("tiny", "released")


class PromptFrontEnd:
    """Reference voice -> prompt codes, speaker embedding and prompt mel; once per voice, on the CPU
    for every backend: the speech tokenizer (torch, weights from its ONNX file), CAM++ (onnxruntime)
    and the 24 kHz mel."""

    def __init__(self, folder: Path, up_rate: int):
        folder = Path(folder)
        try:
            self.tokenizer = S3TokenizerV2.from_onnx(folder / A.TOKENIZER_ONNX).eval()
        except (KeyError, ValueError) as e:
            raise A.AssetError(f"{folder / A.TOKENIZER_ONNX}: {e}") from e
        try:
            self.speaker_encoder = SpeakerEncoder(folder / A.SPEAKER_ONNX)
        except Exception as e:
            raise A.AssetError(f"{folder / A.SPEAKER_ONNX}: cannot load ({e})") from e
        self.up_rate = int(up_rate)

    @torch.inference_mode()
    def __call__(self, voice) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Voice -> codes [1, N] (int64), CAM++ embedding [1, 192], prompt mel [1, up_rate * N, 80]."""
        codes, _, embedding = prompt_tokens_and_speaker(voice.audio_16k, self.tokenizer, self.speaker_encoder)
        mel = prompt_mel(voice.audio_24k[None]).transpose(1, 2)               # [1, F, 80]
        frames = int(codes.shape[1]) * self.up_rate
        mel = torch.nn.functional.pad(mel, (0, 0, 0, frames - mel.shape[1]), mode="replicate") \
            if frames >= mel.shape[1] else mel[:, :frames]
        return codes.long().cpu(), embedding.float().cpu(), mel.contiguous()


class Token2WavModel(nn.Module):
    def __init__(self, flow: FlowModel, hift: HiFTGenerator, front_end: PromptFrontEnd, folder: Path):
        super().__init__()
        self.flow, self.hift = flow, hift
        self.front_end, self.folder = front_end, folder

    @property
    def t2w_lookahead(self) -> int:
        return self.flow.pre_lookahead_len

    @classmethod
    def from_folder(cls, folder, device="cpu") -> "Token2WavModel":
        """Load `assets/token2wav/` (the released layout); refusals name the file and the key."""
        folder = Path(folder)
        A.check_layout(folder)
        flow_config = A.read_flow_yaml(folder)
        hift_state = A.load_torch_weights(folder / A.HIFT_WEIGHTS, strip_prefix="generator.")
        try:
            hift = HiFTGenerator.from_state_dict(hift_state)
        except (KeyError, ValueError) as e:
            raise A.AssetError(f"{folder / A.HIFT_WEIGHTS}: {e}") from e
        flow = FlowModel(flow_config)
        A.match_state_dict(flow, A.load_torch_weights(folder / A.FLOW_WEIGHTS), str(folder / A.FLOW_WEIGHTS))
        return cls(flow, hift, PromptFrontEnd(folder, flow.up_rate), folder).to(device).eval()

    # --- the graphs' torch implementation (WaveformCompute) ---
    @property
    def _device(self) -> torch.device:
        return self.flow.input_embedding.weight.device

    def t2w_prompt(self, voice) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.front_end(voice)

    @torch.inference_mode()
    def t2w_speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        """CAM++ embedding [1, 192] -> speaker condition [1, 80]."""
        return self.flow.speaker(embedding.to(self._device)).float().cpu()

    def t2w_empty_flow_caches(self, steps: int) -> FlowCaches:
        return empty_flow_caches(self.flow.config, self._device, steps)

    @torch.inference_mode()
    def t2w_encoder(self, codes, last_chunk, cnn_cache, att_cache):
        dev = self._device
        return self.flow.encode(codes.to(dev), bool(last_chunk), cnn_cache.to(dev), att_cache.to(dev))

    @torch.inference_mode()
    def t2w_estimator_step(self, x, mu_in, speaker_in, cond_in, t, dt, cnn_cache, keys, values):
        dev = self._device
        return self.flow.decoder.euler_step(*(v.to(dev) for v in (x, mu_in, speaker_in, cond_in, t, dt,
                                                                   cnn_cache, keys, values)))

    def t2w_vocoder_random(self, frames: int, generator: torch.Generator):
        return self.hift.random_inputs(frames, generator)

    @torch.inference_mode()
    def t2w_vocoder(self, mel, cache_source, *random):
        dev = self._device
        speech, source = self.hift(mel.to(dev), cache_source.to(dev), *(r.to(dev) for r in random))
        return speech.float().cpu(), source.float().cpu()


def empty_flow_caches(config: A.FlowConfig, device="cpu", steps: int = 10) -> FlowCaches:
    """Zero-length caches (a first chunk) in the released layouts."""
    enc, dit = config.encoder, config.decoder.estimator
    d_k = enc.output_size // enc.attention_heads
    return FlowCaches(
        encoder_cnn=torch.zeros(1, enc.output_size, 0, device=device),
        encoder_att=torch.zeros(enc.num_blocks + enc.num_up_blocks, 1, enc.attention_heads, 0, 2 * d_k,
                                device=device),
        estimator_cnn=torch.zeros(steps, dit.depth, 2, 2 * dit.hidden_size, 0, device=device),
        estimator_keys=torch.zeros(steps, dit.depth, 2, dit.num_heads, 0, dit.head_dim, device=device),
        estimator_values=torch.zeros(steps, dit.depth, 2, dit.num_heads, 0, dit.head_dim, device=device))


# --- random-weight folders in the released layout ---
def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Default inits stay; weights a module initialises to zero (gates, modulation) get N(0, 0.02) so
    that every path carries signal."""
    with torch.no_grad():
        for _, p in module.named_parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def synthetic_voice(seconds: float = 3.0, rate: int = PROMPT_SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A deterministic voice-like signal: a gliding harmonic source shaped by three formants, in
    syllables. Stands in for a recorded reference voice in random-weight folders."""
    g = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wav = np.zeros(n)
    for k in range(1, 25):
        freq = k * f0
        gain = sum(np.exp(-((freq - fc) / bw) ** 2) for fc, bw in ((700, 150), (1200, 200), (2600, 300)))
        wav += (gain + 0.02) / k * np.sin(k * phase)
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 4.0 * t)
    wav = wav * syllables + 0.003 * g.standard_normal(n)
    return (0.5 * wav / np.abs(wav).max()).astype(np.float32)


def write_random_assets(folder, size: str = "tiny", seed: int = 0) -> Path:
    """Write `assets/token2wav/` (the five released files) with random weights, deterministic for
    `seed`, at `size` "tiny" or "released" dimensions. Each model is written and dropped before the
    next is built (at released size they hold about 1.2 GB together)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flow_config = TINY_FLOW if size == "tiny" else A.FlowConfig()
    hift_config = HiFTConfig() if size == "released" else dataclasses.replace(
        HiFTConfig(), base_channels=TINY_HIFT_CHANNELS, f0_cond_channels=TINY_HIFT_CHANNELS)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)         # the three default inits draw from it in this order
        flow = FlowModel(flow_config)
        _randomise(flow, g)
        (folder / A.FLOW_YAML).write_text(A.dump_flow_yaml(flow_config), encoding="utf-8")
        torch.save({k: v.contiguous() for k, v in flow.state_dict().items()}, str(folder / A.FLOW_WEIGHTS))
        del flow
        torch.save(HiFTGenerator(hift_config).state_dict_official(), str(folder / A.HIFT_WEIGHTS))
        tokenizer = S3TokenizerV2(TINY_TOKENIZER if size == "tiny" else TokenizerDims())
    tokenizer.write_onnx(folder / A.TOKENIZER_ONNX)
    del tokenizer
    write_random_campplus_onnx(folder / A.SPEAKER_ONNX, seed=seed + 2)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def write_default_voice(checkpoint_folder, seed: int = 0) -> Path:
    """The checkpoint's default voice file (16 kHz 16-bit wav) from `synthetic_voice`."""
    path = Path(checkpoint_folder) / A.DEFAULT_VOICE
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), synthetic_voice(seed=seed), PROMPT_SAMPLE_RATE, subtype="PCM_16")
    return path
