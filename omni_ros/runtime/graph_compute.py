"""`GraphCompute`: the Compute interface over exported graphs (onnxruntime, TensorRT).

A subclass supplies `run(name, inputs) -> outputs` for one graph of `omni_ros.runtime.graphs`
(inputs and outputs as torch tensors on `self.device`, in the graph's declared order); this class
turns the session's calls into graph runs, keeps the explicit key/value caches (`StackedKV`) and
reads what the session needs besides weights (config, tokenizer, special ids, the waveform
stage's rates) from the checkpoint folder, without loading any weights.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import logging
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from omni_ros.model.loader import CheckpointError, read_config, released_token2wav_assets
from omni_ros.model.token2wav import ASSET_DIR, CONFIG_NAME as T2W_CONFIG, Token2WavConfig
from omni_ros.model.tokenizer import load_tokenizer, resolve_special_ids

from . import graphs as G
from .compute import StackedKV, rope_delta

SILENT_SAMPLES_PER_CODE = 960       # 24 kHz / 25 codes per second (as loader.SilentToken2Wav)


def required_components(model_path) -> List[str]:
    """The graphs an engine folder must hold for this checkpoint: all of them, except token2wav
    for the released Step-Audio2 assets (which run as silence, as with the torch backend)."""
    silent = released_token2wav_assets(Path(model_path) / ASSET_DIR)
    return [n for n in G.GRAPHS if not (n == "token2wav" and silent)]


class GraphCompute(abc.ABC):
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
        self.has_token2wav = "token2wav" in self.components
        if self.has_token2wav:
            raw = json.loads((folder / ASSET_DIR / T2W_CONFIG).read_text(encoding="utf-8"))
            known = {f.name for f in dataclasses.fields(Token2WavConfig)}
            t2w = Token2WavConfig(**{k: v for k, v in raw.items() if k in known})
            self.samples_per_code, self.token2wav_context = t2w.samples_per_code, t2w.context_codes
        else:
            logging.getLogger(__name__).warning(
                "%s holds the released Step-Audio2 token2wav, which omni_ros cannot run; speech "
                "output will be SILENT", folder / ASSET_DIR)
            self.samples_per_code, self.token2wav_context = SILENT_SAMPLES_PER_CODE, 0

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

    def token2wav(self, codes):
        codes = list(codes)
        if not self.has_token2wav:
            return torch.zeros(len(codes) * self.samples_per_code)
        return self.run("token2wav", {"codes": self._tensor([codes])})[0][0].float()
