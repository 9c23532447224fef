"""`ExportedCompute`: the Compute interface over exported graphs (onnxruntime, TensorRT).

A subclass supplies `run(name, inputs) -> outputs` for one graph of `omni_ros.runtime.graphs`
(inputs and outputs as torch tensors on `self.device`, in the graph's declared order); this class
turns the session's calls into graph runs, keeps the explicit key/value caches (`StackedKV`) and
reads what the session needs besides weights (config, tokenizer, special ids, the waveform
stage's dimensions and its prompt front end) from the checkpoint folder, without loading the
LLM's weights.

The waveform stage (`self.waveform`, an `ExportedWaveform`) implements the `WaveformCompute`
protocol of omni_ros.session.compute over the `t2w_*` graphs; the prompt front end (speech tokenizer,
CAM++, 24 kHz mel: `PromptFrontEnd`) runs on the host, once per voice, as for the torch backend.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from omni_ros.model.loader import CheckpointError, default_voice, read_config
from omni_ros.model.token2wav import assets as A
from omni_ros.model.token2wav.flow import FlowCaches
from omni_ros.model.token2wav.hift import HiFTConfig, random_inputs
from omni_ros.model.token2wav.model import PromptFrontEnd, empty_flow_caches
from omni_ros.model.tokenizer import load_tokenizer, resolve_special_ids

from . import graphs as G
from .kv import StackedKV, rope_delta

Run = Callable[[str, Dict[str, torch.Tensor]], List[torch.Tensor]]


def required_components(model_path) -> List[str]:
    """The graphs an engine folder must hold for this checkpoint: all of them."""
    return list(G.GRAPHS)


def read_hift_config(path: Path) -> HiFTConfig:
    """The vocoder's dimensions from the tensor shapes of `hift.pt`, memory-mapped (no weights
    are read into memory where the file allows it)."""
    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:            # a file torch cannot map (legacy format): read it
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        return HiFTConfig.from_state_dict(state)
    except (KeyError, ValueError, RuntimeError, OSError, AttributeError) as e:
        raise A.AssetError(f"{path}: cannot read the vocoder's dimensions ({type(e).__name__}: {e})") from e


class ExportedWaveform:
    """The waveform stage's `WaveformCompute` (omni_ros.session.compute) over the t2w_*
    graphs run by `run`. Signals (mu, mel, speech, source, speaker) come back on the CPU; the flow
    caches stay on `device` (they are large and only go back into the graphs)."""

    def __init__(self, run: Run, asset_dir, device: torch.device):
        asset_dir = Path(asset_dir)
        self._run = run
        self.device = torch.device(device)
        self.flow_config = A.read_flow_yaml(asset_dir)
        self.hift_config = read_hift_config(asset_dir / A.HIFT_WEIGHTS)
        self.front_end = PromptFrontEnd(asset_dir, int(self.flow_config.encoder.up_stride))

    @property
    def t2w_lookahead(self) -> int:
        return int(self.flow_config.encoder.pre_lookahead_len)

    def t2w_prompt(self, voice) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.front_end(voice)

    def t2w_speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        out = self._run("t2w_speaker", {"embedding": embedding.to(self.device, torch.float32)})
        return out[0].float().cpu()

    def t2w_empty_flow_caches(self, steps: int) -> FlowCaches:
        return empty_flow_caches(self.flow_config, self.device, steps)

    def t2w_encoder(self, codes, last_chunk, cnn_cache, att_cache):
        dev = self.device
        mu, cnn, att = self._run("t2w_encoder_last" if last_chunk else "t2w_encoder", {
            "codes": codes.to(dev, torch.long), "cnn_cache": cnn_cache.to(dev), "att_cache": att_cache.to(dev)})
        return mu.float().cpu(), cnn, att

    def t2w_estimator_step(self, x, mu_in, speaker_in, cond_in, t, dt, cnn_cache, keys, values):
        dev = self.device
        inputs = {"x": x, "mu_in": mu_in, "speaker_in": speaker_in, "cond_in": cond_in,
                  "t": t.reshape(1), "dt": dt.reshape(1)}
        inputs = {k: v.to(dev, torch.float32) for k, v in inputs.items()}
        x_next, cnn, k, v = self._run("t2w_estimator_step", {
            **inputs, "cnn_cache": cnn_cache.to(dev), "att_keys": keys.to(dev), "att_values": values.to(dev)})
        return x_next.float().cpu(), cnn, k, v

    def t2w_vocoder_random(self, frames: int, generator: torch.Generator):
        return random_inputs(self.hift_config, frames, generator)

    def t2w_vocoder(self, mel, cache_source, *random):
        dev = self.device
        sine_noise = random[1]            # (phase_init, sine_noise, branch_noise): only this one counts
        speech, source = self._run("t2w_vocoder", {
            "mel": mel.to(dev, torch.float32), "cache_source": cache_source.to(dev, torch.float32),
            "sine_noise": sine_noise.to(dev, torch.float32)})
        return speech.float().cpu(), source.float().cpu()


class ExportedCompute(abc.ABC):
    name = "graphs"

    def __init__(self, model_path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        folder = Path(model_path)
        self.config = read_config(folder)
        if not (folder / "tokenizer.json").exists():
            raise CheckpointError(f"checkpoint tokenizer missing: {folder / 'tokenizer.json'} does not exist")
        try:
            self.tokenizer = load_tokenizer(folder)
            self.special = resolve_special_ids(self.tokenizer)
        except Exception as error:
            raise CheckpointError(f"cannot load the tokenizer from {folder}: {error}") from error
        self.device = torch.device(device)
        self.dtype = dtype
        self.components = required_components(folder)
        t2w_dir = folder / A.ASSET_DIR
        try:
            A.check_layout(t2w_dir)
            self.waveform = ExportedWaveform(self.run, t2w_dir, self.device)
        except A.AssetError as error:
            raise CheckpointError(f"waveform stage: {error}") from error
        except Exception as error:
            raise CheckpointError(f"cannot load the waveform stage from {t2w_dir}: {error}") from error
        self.default_voice = default_voice(folder)

    # -- what a subclass provides --------------------------------------------------------------
    @abc.abstractmethod
    def run(self, name: str, inputs: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """Run graph `name` on `inputs` (torch tensors on self.device, by input name); the
        outputs in the graph's declared order."""

    # -- helpers ---------------------------------------------------------------------------------
    def _tensor(self, values, dtype=torch.long) -> torch.Tensor:
        return torch.as_tensor(values, dtype=dtype, device=self.device)

    def _empty_kv(self, shape_fn) -> StackedKV:
        return StackedKV.empty(shape_fn(self.config, 0), self.dtype, self.device)

    def _step(self, name: str, embeds: torch.Tensor, position: int, cache: StackedKV) -> List[torch.Tensor]:
        n, past = int(embeds.shape[0]), cache.get_seq_length()
        if position != past:
            raise ValueError(f"{name}: position {position} but the cache holds {past} positions")
        out = self.run(name, {
            "inputs_embeds": embeds.to(self.device, self.dtype)[None],
            "position_ids": torch.arange(position, position + n, device=self.device)[None],
            "attention_bias": G.causal_bias(n, past).to(self.device)[None, None],
            "past_keys": cache.keys, "past_values": cache.values})
        cache.keys, cache.values = out[-2], out[-1]
        return out

    # -- the Compute interface -------------------------------------------------------------------
    def embed_tokens(self, ids: Sequence[int]) -> torch.Tensor:
        return self.run("embed_tokens", {"input_ids": self._tensor(list(ids)).reshape(-1)})[0]

    def vision(self, image: np.ndarray) -> torch.Tensor:
        inputs = G.vision_inputs(image, self.config)
        return self.run("vision", {k: v.to(self.device) for k, v in inputs.items()})[0]

    def audio(self, mel, keep_index, position_ids, attention_bias, cache):
        if cache is None:
            cache = self._empty_kv(G.audio_kv_shape)
        dev = self.device
        embeds, keys, values = self.run("audio", {
            "mel": mel.to(dev, torch.float32), "keep_index": keep_index.to(dev),
            "position_ids": position_ids.to(dev), "attention_bias": attention_bias.to(dev),
            "past_keys": cache.keys, "past_values": cache.values})
        return embeds, StackedKV(keys, values)

    def new_llm_cache(self) -> StackedKV:
        return self._empty_kv(G.llm_kv_shape)

    def llm_step(self, embeds, position, cache, need_logits=True):
        hidden = self._step("llm_step", embeds, position, cache)[0][0]
        if not need_logits:
            return hidden, None
        return hidden, self.run("lm_head", {"hidden": hidden[-1:]})[0][0].float()

    def llm_drop_span(self, cache: StackedKV, start: int, end: int) -> None:
        cos, sin = rope_delta(self.config, end - start)
        cache.drop_span(start, end, cos, sin)

    def tts_condition(self, text_ids, hidden, semantic_mask):
        dev = self.device
        return self.run("tts_condition", {"text_ids": text_ids.to(dev),
                                          "llm_hidden": hidden.to(dev, torch.float32),
                                          "semantic_mask": semantic_mask.to(dev, torch.float32)})[0]

    def tts_code_embed(self, codes):
        return self.run("tts_code_embed", {"codes": self._tensor(list(codes))})[0]

    def new_tts_cache(self) -> StackedKV:
        return self._empty_kv(G.tts_kv_shape)

    def tts_step(self, embeds, position, cache):
        return self._step("tts_step", embeds, position, cache)[0][0].float()
