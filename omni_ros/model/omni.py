"""OmniModel: the MiniCPM-o-4.5-shaped module tree (`llm`, `vpm`, `resampler`, `apm`,
`audio_projection_layer`, `tts`) with image/audio embedding helpers; the loader attaches the
tokenizer and the token2wav decoder.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn
from transformers import Qwen3ForCausalLM

from .audio import MultiModalProjector, WhisperAudioEncoder
from .config import OmniConfig
from .tts import MiniCPMTTS
from .vision import Resampler, SiglipVision, preprocess_image


class OmniModel(nn.Module):
    def __init__(self, config: OmniConfig):
        super().__init__()
        self.config = config
        self.llm = Qwen3ForCausalLM(config.qwen3_config())                 # llm.model.*, llm.lm_head
        self.vpm = SiglipVision(config)                                    # vpm.*
        self.resampler = Resampler(config)                                 # resampler.*
        self.apm = WhisperAudioEncoder(config)                             # apm.*
        # the released code: projector input = encoder_ffn_dim // 4 (== d_model for Whisper)
        self.audio_projection_layer = MultiModalProjector(config.audio_config.encoder_ffn_dim // 4, config.hidden_size)
        self.audio_avg_pooler = nn.AvgPool1d(config.audio_pool_step, stride=config.audio_pool_step)
        self.tts = MiniCPMTTS(config)                                      # tts.*
        # attached by the loader
        self.tokenizer = None
        self.token2wav = None          # Token2WavModel (assets/token2wav), attached by the loader
        self.default_voice = None      # the checkpoint's default reference voice file, if any
        self.special = None

    @property
    def device(self) -> torch.device:
        return self.llm.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.lm_head.weight.dtype

    def embed_tokens(self, ids) -> torch.Tensor:
        """Token ids (list or 1-D tensor) -> [n, hidden]."""
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(-1)
        return self.llm.model.embed_tokens(t)

    def embed_image(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> [query_num, hidden]."""
        scale = int(self.config.slice_config.get("scale_resolution", self.config.image_size))
        pixels = preprocess_image(image, scale, self.config.vision_config.patch_size).to(self.device, self.dtype)
        feats, grid = self.vpm(pixels)                     # [1, N, Cv]
        return self.resampler(feats, grid)[0]              # [Q, D]

    def llm_step(self, embeds: torch.Tensor, position: int, cache, need_logits: bool = True):
        """Append embeds [n, D] at positions position.. to `cache`.

        Returns (last_hidden [n, D] after the final norm, logits of the last position [V] or None).
        """
        n = embeds.shape[0]
        pos = torch.arange(position, position + n, device=embeds.device)[None]
        out = self.llm.model(inputs_embeds=embeds[None], position_ids=pos, cache=cache, use_cache=True)
        hidden = out.last_hidden_state[0]
        logits: Optional[torch.Tensor] = None
        if need_logits:
            logits = self.llm.lm_head(hidden[-1]).float()
        return hidden, logits
