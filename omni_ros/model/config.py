"""Configuration dataclasses for a MiniCPM-o-4.5-shaped model, read from and written to config.json.

Field names follow the released config classes (a Qwen3 config extended with vision, audio and TTS
sub-configs); unknown fields are kept in `extra` and written back unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List


class _Section:
    """Shared from_dict/to_dict for the config dataclasses: unknown keys go to `extra`."""

    extra: Dict[str, Any]
    _NESTED: Dict[str, type] = {}

    @classmethod
    def _known(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        data = dict(data or {})
        kwargs: Dict[str, Any] = {}
        for name in cls._known():
            if name in data:
                value = data.pop(name)
                nested = cls._NESTED.get(name)
                if nested is not None and isinstance(value, dict):
                    value = nested.from_dict(value)
                kwargs[name] = value
        obj = cls(**kwargs)
        obj.extra = data
        return obj

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = copy.deepcopy(self.extra)
        for name in self._known():
            value = getattr(self, name)
            if isinstance(value, _Section):
                value = value.to_dict()
            out[name] = copy.deepcopy(value)
        return out


@dataclass
class VisionConfig(_Section):
    """SigLIP vision tower (`vpm.*`)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27          # the released model drops the last one (26 stored)
    num_attention_heads: int = 16
    num_channels: int = 3
    patch_size: int = 14
    image_size: int = 980                # position table = (image_size // patch_size) ** 2 = 70x70
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    model_type: str = "siglip_vision_model"
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class AudioConfig(_Section):
    """Whisper encoder (`apm.*`)."""

    d_model: int = 1024
    encoder_layers: int = 24
    encoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    num_mel_bins: int = 80
    max_source_positions: int = 1500
    activation_function: str = "gelu"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    model_type: str = "whisper"
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class TTSConfig(_Section):
    """Speech-token decoder (`tts.*`): a Llama backbone conditioned on LLM tokens and states.

    Field names and order follow the released `MiniCPMTTSConfig`; values are the 4.5 release's
    where the module tree or the duplex code fixes them, the class defaults otherwise."""

    llm_dim: int = 4096
    llm_intermediate_size: int = 768
    llm_down_scale: bool = False
    llm_dim_model_base: int = 256
    projector_type: str = "mlp"
    hidden_act: str = "silu"
    aug_loss_weight: bool = False
    aug_layer_loss_weight: bool = False
    filter_tts_loss: bool = False
    tts_filter_loss_fix: bool = False
    long_weight: float = 0.1
    short_weight: float = 0.1
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    num_hidden_layers: int = 20
    num_key_value_heads: int = 12
    max_position_embeddings: int = 4096
    num_audio_tokens: int = 6562         # 6561 codes + EOS
    num_text_tokens: int = 152064
    num_mel_bins: int = 100
    num_vq: int = 1
    use_llm_hidden_state: bool = False
    audio_bos_token_id: int = 151687     # row of emb_text used as the audio-BOS embedding
    text_eos_token_id: int = 151692
    use_text: bool = True
    streaming: bool = False
    streaming_text_chunk_min: int = 3
    streaming_text_chunk_max: int = 7
    streaming_text_reserved_len: int = 300
    streaming_audio_chunk_size: int = 50
    attn_implementation: str = "sdpa"
    condition_type: str = "hidden_text_merge"
    backbone_model: str = "llama"
    audio_tokenizer_type: str = "s3tokenizer_step_audio"
    audio_tokenizer_sample_rate: int = 24000
    top_p: float = 0.85
    top_k: int = 25
    repetition_penalty: float = 1.05
    streaming_sliding_window: bool = False
    streaming_sliding_window_max_text_len: int = 500
    streaming_sliding_window_average_speed: int = 5
    streaming_sliding_window_fast_speed: int = 7
    streaming_sliding_window_slow_speed: int = 3
    streaming_sliding_window_audio_frame_rate: int = 50
    streaming_sliding_window_audio_init_text_length: int = 10
    streaming_sliding_window_audio_window_size: int = 300
    normalize_projected_hidden: bool = True
    interleaved: bool = False
    attention_type: str = "sliding_recompute"
    recomputed_chunks: int = 1
    window_size: int = 2
    model_type: str = "minicpmtts"
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    # not config fields in the release: fixed by its code
    BACKBONE_VOCAB_SIZE = 32000          # LlamaConfig default: the unused tts.model.embed_tokens
    CODES_PER_SECOND = 25

    @property
    def backbone_vocab_size(self) -> int:
        return self.BACKBONE_VOCAB_SIZE

    @property
    def codes_per_second(self) -> int:
        return self.CODES_PER_SECOND

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def audio_eos_code(self) -> int:
        return self.num_audio_tokens - 1

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        data = dict(data or {})
        if "num_layers" in data:                 # older files of ours
            layers = data.pop("num_layers")
            data.setdefault("num_hidden_layers", layers)
        data.pop("backbone_vocab_size", None)
        data.pop("codes_per_second", None)
        return super().from_dict(data)


# `auto_map` of the released config.json: the remote-code classes the official loader
# (`AutoConfig`/`AutoModel.from_pretrained(..., trust_remote_code=True)`) imports from the files
# shipped beside it (configuration_minicpmo.py, modeling_minicpmo.py).
RELEASED_AUTO_MAP = {
    "AutoConfig": "configuration_minicpmo.MiniCPMOConfig",
    "AutoModel": "modeling_minicpmo.MiniCPMO",
    "AutoModelForCausalLM": "modeling_minicpmo.MiniCPMO",
}


def _default_auto_map() -> Dict[str, Any]:
    return dict(RELEASED_AUTO_MAP)


def _default_slice_config() -> Dict[str, Any]:
    return {"max_slice_nums": 9, "patch_size": 14, "scale_resolution": 448, "model_type": "minicpmv"}


@dataclass
class OmniConfig(_Section):
    """Top-level config: Qwen3 language model fields plus the multimodal sub-configs."""

    model_type: str = "minicpmo"
    architectures: List[str] = field(default_factory=lambda: ["MiniCPMO"])
    auto_map: Dict[str, Any] = field(default_factory=_default_auto_map)
    version: float = 4.5
    hidden_size: int = 4096
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 12288
    hidden_act: str = "silu"
    vocab_size: int = 151748
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_dropout: float = 0.0
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    torch_dtype: str = "bfloat16"
    query_num: int = 64
    image_size: int = 448
    drop_vision_last_layer: bool = True
    audio_pool_step: int = 5
    audio_chunk_length: float = 1.0
    slice_config: Dict[str, Any] = field(default_factory=_default_slice_config)
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    audio_config: AudioConfig = field(default_factory=AudioConfig)
    tts_config: TTSConfig = field(default_factory=TTSConfig)
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    # the released MiniCPMOConfig's own fields (besides the Qwen3 ones)
    use_cache: bool = True
    batch_vision_input: bool = True
    use_image_id: bool = True
    vision_batch_size: int = 16
    stream_input: bool = False
    listen_speak_type: str = "asr"
    init_vision: bool = True
    init_audio: bool = True
    init_tts: bool = True
    patch_size: int = 14
    slice_mode: bool = True
    # further Qwen3Config fields
    use_sliding_window: bool = False
    sliding_window: Any = None
    max_window_layers: int = 36
    initializer_range: float = 0.02

    _NESTED = {"vision_config": VisionConfig, "audio_config": AudioConfig, "tts_config": TTSConfig}

    # --- derived sizes ---
    @property
    def vision_layers_built(self) -> int:
        n = self.vision_config.num_hidden_layers
        return n - 1 if self.drop_vision_last_layer else n

    @property
    def resampler_heads(self) -> int:
        return self.hidden_size // 128

    # --- constructors ---
    @classmethod
    def released(cls) -> "OmniConfig":
        """Full-size values of the released MiniCPM-o 4.5 (from its module tree)."""
        return cls()

    @classmethod
    def tiny(cls) -> "OmniConfig":
        """A small random-weight model with the released vocabulary and key layout."""
        return cls(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=256, max_position_embeddings=8192, max_window_layers=2,
            torch_dtype="bfloat16", query_num=16, image_size=56,
            slice_config={"max_slice_nums": 1, "patch_size": 14, "scale_resolution": 56,
                          "model_type": "minicpmv"},
            vision_config=VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                       num_attention_heads=4, patch_size=14, image_size=112),
            # the released code sizes the audio projector input as encoder_ffn_dim // 4
            audio_config=AudioConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4,
                                     encoder_ffn_dim=256, max_source_positions=1500),
            tts_config=TTSConfig(llm_dim=128, hidden_size=64, intermediate_size=128,
                                 num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2,
                                 max_position_embeddings=4096),
        )

    # --- json ---
    @classmethod
    def from_json_file(cls, path) -> "OmniConfig":
        with open(path, "r", encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path) -> None:
        Path(path).write_text(self.to_json_string(), encoding="utf-8")

    # --- transformers configs for the sub-modules ---
    def qwen3_config(self):
        from transformers import Qwen3Config

        cfg = Qwen3Config(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim, hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings, rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rope_theta)},
            tie_word_embeddings=False, attention_bias=self.attention_bias,
            attention_dropout=self.attention_dropout, use_sliding_window=False,
            bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
        )
        cfg._attn_implementation = "sdpa"
        return cfg

    def siglip_config(self):
        from transformers import SiglipVisionConfig

        v = self.vision_config
        cfg = SiglipVisionConfig(
            hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
            num_hidden_layers=self.vision_layers_built, num_attention_heads=v.num_attention_heads,
            num_channels=v.num_channels, image_size=v.image_size, patch_size=v.patch_size,
            hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps,
            attention_dropout=v.attention_dropout,
        )
        cfg._attn_implementation = "sdpa"
        return cfg

    def whisper_config(self):
        from transformers import WhisperConfig

        a = self.audio_config
        cfg = WhisperConfig(
            d_model=a.d_model, encoder_layers=a.encoder_layers,
            encoder_attention_heads=a.encoder_attention_heads, encoder_ffn_dim=a.encoder_ffn_dim,
            num_mel_bins=a.num_mel_bins, max_source_positions=a.max_source_positions,
            activation_function=a.activation_function, dropout=a.dropout,
            attention_dropout=a.attention_dropout, activation_dropout=a.activation_dropout,
        )
        cfg._attn_implementation = "sdpa"
        return cfg

    def llama_tts_config(self):
        from transformers import LlamaConfig

        t = self.tts_config
        cfg = LlamaConfig(
            vocab_size=t.backbone_vocab_size, hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
            hidden_act=t.hidden_act, max_position_embeddings=t.max_position_embeddings,
            rms_norm_eps=1e-6, tie_word_embeddings=False,   # LlamaConfig defaults in the release
        )
        cfg._attn_implementation = "sdpa"
        return cfg
