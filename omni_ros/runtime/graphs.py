"""The model's compute graphs: what an execution backend runs.

Every heavy computation of a unit goes through one of these graphs; everything else (mel front
end, image resize, sampling, the duplex protocol) is host code shared by all backends. Each graph
is an `nn.Module` over the loaded `OmniModel`'s own submodules with tensor-only inputs and outputs:
no cache objects, no Python branches on tensor values, every shape decision taken by the host and
passed in as a tensor (index lists, position ids, attention biases). The same module is what the
torch backend runs, what `omni_ros.runtime.onnx_export` traces and what TensorRT compiles.

| graph            | inputs                                                        | outputs |
|------------------|---------------------------------------------------------------|---------|
| `vision`         | pixel_values [1,3,H,W], patch_position_ids [N], query_pos_embed [N,D] | image_embeds [Q,D] |
| `audio`          | mel [1,80,T], keep_index [n], position_ids [n], attention_bias [n,P+n], past_keys/values [La,1,Ha,P,Dha] | audio_embeds [n//5,D], present_keys/values [La,1,Ha,P+n,Dha] |
| `embed_tokens`   | input_ids [n]                                                 | embeds [n,D] |
| `llm_step`       | inputs_embeds [1,n,D], position_ids [1,n], attention_bias [1,1,n,P+n], past_keys/values [L,1,Hkv,P,Dh] | hidden [1,n,D], present_keys/values [L,1,Hkv,P+n,Dh] |
| `lm_head`        | hidden [1,D]                                                  | logits [1,V] |
| `tts_condition`  | text_ids [n], llm_hidden [n,D], semantic_mask [n]             | condition [n,Ht] |
| `tts_code_embed` | codes [n]                                                     | embeds [n,Ht] |
| `tts_step`       | inputs_embeds [1,n,Ht], position_ids [1,n], attention_bias [1,1,n,P+n], past_keys/values [Lt,1,Ht_kv,P,Dht] | logits [1,C], present_keys/values |
| `t2w_encoder`    | codes [1,T], cnn_cache [1,C,0 or 2+2s], att_cache [Le,1,He,P,2Dhe] | mu [1,80,s(T-3)], new_cnn_cache [1,C,2+2s], new_att_cache [Le,1,He,P+s(T-3),2Dhe] |
| `t2w_encoder_last` | the same, the chunk ending the turn (no lookahead codes)    | mu [1,80,sT], caches [..,P+sT,..] |
| `t2w_estimator_step` | x [1,80,F], mu_in / cond_in [2,80,F], speaker_in [2,80], t [1], dt [1], cnn_cache [Ld,2,2Hd,0 or 2], att_keys / att_values [Ld,2,Hh,P,Dh] | x_next [1,80,F], new_cnn_cache [Ld,2,2Hd,2], new_keys / new_values [Ld,2,Hh,F,Dh] (the chunk's own; the host prepends them to the cache) |
| `t2w_vocoder`    | mel [1,80,F], cache_source [1,1,S], sine_noise [1,480F,9]     | speech [1,480F], source [1,1,480F] |
| `t2w_speaker`    | embedding [1,192]                                             | speaker [1,80] |

The `t2w_*` graphs are the waveform stage (Step-Audio2 token2wav, omni_ros.model.token2wav) over
the loaded model's `token2wav` (a Token2WavModel): the flow encoder turns 25 Hz speech codes into
the 50 Hz condition `mu` (s = up_stride = 2; unless `_last`, the last 3 codes are lookahead), each
of the `token2wav_steps` Euler steps of the flow-matching decoder is one `t2w_estimator_step` call
with its own caches (batch 2: the guided and unguided halves), and HiFT turns the mel into 24 kHz
speech. The host side (omni_ros.session.waveform.WaveformStream) keeps the caches, the noise,
the time grid and the cross-fades; a cache of length 0 is a first chunk. The prompt front end
(speech tokenizer, CAM++, 24 kHz mel) runs once per voice on the host for every backend.

`hidden` is the last decoder state after the final norm (what the speech decoder's semantic
projector reads). The output head is a graph of its own: most LLM calls of a unit (the unit
start, image tokens, fed text) need no logits, and the head over the 151,748-token vocabulary is
a large share of a step. Present keys and values hold the
past followed by the new positions, so a backend keeps them as the next step's past.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

from omni_ros.model.audio import chunked_bias
from omni_ros.model.tts import semantic_norm
from omni_ros.model.vision import preprocess_image, sincos_2d

NEG_INF = float("-inf")


# --- host-side shape decisions, shared by every backend -------------------------------------------
def navit_position_ids(grid_h: int, grid_w: int, patches_per_side: int) -> torch.Tensor:
    """NaViT-style bucketized position ids [grid_h*grid_w] into a patches_per_side^2 table."""
    n = patches_per_side
    boundaries = torch.arange(1 / n, 1.0, 1 / n)
    bucket_h = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / grid_h), boundaries, right=True)
    bucket_w = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / grid_w), boundaries, right=True)
    return (bucket_h[:, None] * n + bucket_w[None, :]).flatten()


def vision_inputs(image: np.ndarray, config) -> Dict[str, torch.Tensor]:
    """HxWx3 uint8 RGB -> the `vision` graph's inputs (float32, CPU)."""
    patch = config.vision_config.patch_size
    scale = int(config.slice_config.get("scale_resolution", config.image_size))
    pixels = preprocess_image(image, scale, patch)
    grid_h, grid_w = pixels.shape[-2] // patch, pixels.shape[-1] // patch
    return {"pixel_values": pixels,
            "patch_position_ids": navit_position_ids(grid_h, grid_w,
                                                     config.vision_config.num_patches_per_side),
            "query_pos_embed": sincos_2d(config.hidden_size, grid_h, grid_w)}


def causal_bias(new: int, past: int, dtype=torch.float32) -> torch.Tensor:
    """[new, past+new] additive mask: new position i sees every past position and new ones <= i."""
    cols = torch.arange(past + new)
    rows = torch.arange(new)[:, None] + past
    return torch.zeros(new, past + new, dtype=dtype).masked_fill(cols[None, :] > rows, NEG_INF)


def rope_rotation(head_dim: int, theta: float, delta: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [head_dim] that move a rotary-embedded key by `delta` positions (default RoPE)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angle = torch.cat([inv_freq, inv_freq]) * float(delta)
    return torch.cos(angle).float(), torch.sin(angle).float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


# --- the graphs -----------------------------------------------------------------------------------
def _attend(q, k, v, past_k, past_v, scaling, bias):
    """Attention of new queries [B,Hq,n,Dh] over past + new keys/values [B,Hkv,*,Dh] (grouped
    heads repeated), with an additive bias [.., n, P+n]. Returns (out [B,n,Hq*Dh], keys, values),
    keys/values being past followed by new, the layer's present."""
    k = torch.cat([past_k.to(k.dtype), k], dim=2)
    v = torch.cat([past_v.to(v.dtype), v], dim=2)
    groups = q.shape[1] // k.shape[1]
    kr = k.repeat_interleave(groups, dim=1) if groups > 1 else k
    vr = v.repeat_interleave(groups, dim=1) if groups > 1 else v
    out = torch.softmax((q @ kr.transpose(-1, -2)) * scaling + bias, dim=-1) @ vr
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1), k, v


class VisionGraph(nn.Module):
    """SigLIP (patch conv + bucketized positions + encoder + post-LN) then the resampler."""

    def __init__(self, model):
        super().__init__()
        self.vpm, self.resampler = model.vpm, model.resampler

    def forward(self, pixel_values, patch_position_ids, query_pos_embed):
        emb = self.vpm.embeddings
        w = emb.patch_embedding.weight
        x = emb.patch_embedding(pixel_values.to(w.dtype)).flatten(2).transpose(1, 2)   # [1, N, Cv]
        x = x + emb.position_embedding(patch_position_ids)[None]
        x = self.vpm.post_layernorm(self.vpm.encoder(inputs_embeds=x).last_hidden_state)
        r = self.resampler
        x = r.ln_kv(r.kv_proj(x))                                                         # [1, N, D]
        q = r.ln_q(r.query)[:, None]                                                      # [Q, 1, D]
        kv = x.transpose(0, 1)
        out = r.attn(q, kv + query_pos_embed.to(x.dtype)[:, None], kv, need_weights=False)[0]
        return (r.ln_post(out.transpose(0, 1)) @ r.proj)[0]                              # [Q, D]


class AudioGraph(nn.Module):
    """Whisper encoder over one mel chunk with a key/value cache of earlier chunks, then the
    projector and AvgPool(5)."""

    def __init__(self, model):
        super().__init__()
        self.apm = model.apm
        self.projector = model.audio_projection_layer
        self.pool = model.audio_avg_pooler

    def forward(self, mel, keep_index, position_ids, attention_bias, past_keys, past_values):
        apm = self.apm
        x = F.gelu(apm.conv1(mel.to(apm.conv1.weight.dtype)))
        x = F.gelu(apm.conv2(x))                                          # [1, D, ceil(T/2)]
        x = x.index_select(2, keep_index).transpose(1, 2)                 # [1, n, D]
        x = x + apm.embed_positions(position_ids)[None]
        bias = attention_bias.to(x.dtype)
        h = apm.num_heads
        keys: List[torch.Tensor] = []
        values: List[torch.Tensor] = []
        for i, layer in enumerate(apm.layers):
            attn = layer.self_attn
            y = layer.self_attn_layer_norm(x)
            b, n, d = y.shape
            split = lambda t: t.view(b, n, h, d // h).transpose(1, 2)     # noqa: E731
            a, k, v = _attend(split(attn.q_proj(y)), split(attn.k_proj(y)), split(attn.v_proj(y)),
                              past_keys[i], past_values[i], attn.scaling, bias)
            keys.append(k)
            values.append(v)
            x = x + attn.out_proj(a)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
        feats = self.projector(apm.layer_norm(x))                         # [1, n, D_llm]
        pooled = self.pool(feats.transpose(1, 2)).transpose(1, 2)[0]      # [n // 5, D_llm]
        return pooled, torch.stack(keys), torch.stack(values)


class TokenEmbedGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.table = model.llm.model.embed_tokens

    def forward(self, input_ids):
        return self.table(input_ids)


class CodeEmbedGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.table = model.tts.emb_code[0]

    def forward(self, codes):
        return self.table(codes)


def _decoder(model, embeds, position_ids, attention_bias, past_keys, past_values):
    """A transformers Qwen3Model / LlamaModel run over explicit stacked past keys/values.

    Returns (hidden after the final norm [1, n, D], present keys, present values)."""
    x = embeds
    cos, sin = model.rotary_emb(x, position_ids)
    bias = attention_bias.to(x.dtype)
    keys: List[torch.Tensor] = []
    values: List[torch.Tensor] = []
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        y = layer.input_layernorm(x)
        b, n, _ = y.shape
        shape = (b, n, -1, attn.head_dim)
        q, k, v = attn.q_proj(y).view(shape), attn.k_proj(y).view(shape), attn.v_proj(y).view(shape)
        if hasattr(attn, "q_norm"):                  # Qwen3's QK-norm (Llama has none)
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        a, k, v = _attend(q, k, v, past_keys[i], past_values[i], attn.scaling, bias)
        keys.append(k)
        values.append(v)
        x = x + attn.o_proj(a)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.norm(x), torch.stack(keys), torch.stack(values)


class LLMStepGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model.llm.model

    def forward(self, inputs_embeds, position_ids, attention_bias, past_keys, past_values):
        return _decoder(self.model, inputs_embeds, position_ids, attention_bias, past_keys,
                        past_values)


class LMHeadGraph(nn.Module):
    """Logits [1, V] of one position's final hidden state [1, D]."""

    def __init__(self, model):
        super().__init__()
        self.lm_head = model.llm.lm_head

    def forward(self, hidden):
        return self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()


class TTSConditionGraph(nn.Module):
    """emb_text(id) + semantic_mask * L2norm(projector_semantic(llm_hidden)) per row."""

    def __init__(self, model):
        super().__init__()
        self.emb_text, self.projector = model.tts.emb_text, model.tts.projector_semantic

    def forward(self, text_ids, llm_hidden, semantic_mask):
        sem = semantic_norm(self.projector(llm_hidden.to(self.emb_text.weight.dtype)))
        return self.emb_text(text_ids) + semantic_mask.to(sem.dtype)[:, None] * sem


class TTSStepGraph(nn.Module):
    """The speech-token decoder (Llama) step and its weight-normed code head."""

    def __init__(self, model):
        super().__init__()
        self.model, self.head = model.tts.model, model.tts.head_code[0]

    def forward(self, inputs_embeds, position_ids, attention_bias, past_keys, past_values):
        hidden, keys, values = _decoder(self.model, inputs_embeds, position_ids, attention_bias,
                                        past_keys, past_values)
        return self.head(hidden[:, -1]).float(), keys, values


# --- the waveform stage (omni_ros.model.token2wav), over `model.token2wav` (a Token2WavModel) -----
class T2WEncoderGraph(nn.Module):
    """The flow's token embedding + streaming conformer encoder + projection for one chunk
    (`FlowModel.encode`); `last_chunk` is fixed per graph (t2w_encoder / t2w_encoder_last)."""

    def __init__(self, model, last_chunk: bool = False):
        super().__init__()
        self.flow = model.token2wav.flow
        self.last_chunk = bool(last_chunk)

    def forward(self, codes, cnn_cache, att_cache):
        return self.flow.encode(codes, self.last_chunk, cnn_cache, att_cache)


class T2WEncoderLastGraph(T2WEncoderGraph):
    def __init__(self, model):
        super().__init__(model, last_chunk=True)


class T2WEstimatorStepGraph(nn.Module):
    """One guided Euler step of the flow-matching decoder (`CausalConditionalCFM.euler_step`)
    with that step's caches."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.token2wav.flow.decoder

    def forward(self, x, mu_in, speaker_in, cond_in, t, dt, cnn_cache, att_keys, att_values):
        return self.decoder.euler_step(x, mu_in, speaker_in, cond_in, t, dt, cnn_cache, att_keys, att_values)


class T2WVocoderGraph(nn.Module):
    """HiFT: mel (+ the previous call's source tail) and the sine noise -> speech, source. The
    vocoder's other two random draws do not reach its output and are not graph inputs."""

    def __init__(self, model):
        super().__init__()
        self.hift = model.token2wav.hift

    def forward(self, mel, cache_source, sine_noise):
        return self.hift(mel, cache_source, None, sine_noise, None)


class T2WSpeakerGraph(nn.Module):
    """CAM++ speaker embedding -> the flow's speaker condition."""

    def __init__(self, model):
        super().__init__()
        self.flow = model.token2wav.flow

    def forward(self, embedding):
        return self.flow.speaker(embedding)


# --- what an exporter or engine builder needs to know about each graph ---------------------------
@dataclass(frozen=True)
class GraphSpec:
    name: str
    build: Callable[[object], nn.Module]
    inputs: Sequence[str]
    outputs: Sequence[str]
    # axis name per (tensor, dim) that varies between calls
    dynamic: Dict[str, Dict[int, str]]


def _kv_axes(prefix: str, length: str) -> Dict[str, Dict[int, str]]:
    return {f"{prefix}_keys": {3: length}, f"{prefix}_values": {3: length}}


GRAPHS: Dict[str, GraphSpec] = {spec.name: spec for spec in [
    GraphSpec("vision", VisionGraph, ["pixel_values", "patch_position_ids", "query_pos_embed"],
              ["image_embeds"],
              {"pixel_values": {2: "height", 3: "width"}, "patch_position_ids": {0: "patches"},
               "query_pos_embed": {0: "patches"}}),
    GraphSpec("audio", AudioGraph,
              ["mel", "keep_index", "position_ids", "attention_bias", "past_keys", "past_values"],
              ["audio_embeds", "present_keys", "present_values"],
              {"mel": {2: "mel_frames"}, "keep_index": {0: "frames"}, "position_ids": {0: "frames"},
               "attention_bias": {0: "frames", 1: "total_frames"}, "audio_embeds": {0: "tokens"},
               **_kv_axes("past", "past_frames"), **_kv_axes("present", "total_frames")}),
    GraphSpec("embed_tokens", TokenEmbedGraph, ["input_ids"],
              ["embeds"], {"input_ids": {0: "tokens"}, "embeds": {0: "tokens"}}),
    GraphSpec("llm_step", LLMStepGraph,
              ["inputs_embeds", "position_ids", "attention_bias", "past_keys", "past_values"],
              ["hidden", "present_keys", "present_values"],
              {"inputs_embeds": {1: "tokens"}, "position_ids": {1: "tokens"},
               "attention_bias": {2: "tokens", 3: "total"}, "hidden": {1: "tokens"},
               **_kv_axes("past", "past"), **_kv_axes("present", "total")}),
    GraphSpec("lm_head", LMHeadGraph, ["hidden"], ["logits"], {}),
    GraphSpec("tts_condition", TTSConditionGraph, ["text_ids", "llm_hidden", "semantic_mask"],
              ["condition"], {"text_ids": {0: "tokens"}, "llm_hidden": {0: "tokens"},
                              "semantic_mask": {0: "tokens"}, "condition": {0: "tokens"}}),
    GraphSpec("tts_code_embed", CodeEmbedGraph, ["codes"], ["embeds"],
              {"codes": {0: "codes"}, "embeds": {0: "codes"}}),
    GraphSpec("tts_step", TTSStepGraph,
              ["inputs_embeds", "position_ids", "attention_bias", "past_keys", "past_values"],
              ["logits", "present_keys", "present_values"],
              {"inputs_embeds": {1: "tokens"}, "position_ids": {1: "tokens"},
               "attention_bias": {2: "tokens", 3: "total"},
               **_kv_axes("past", "past"), **_kv_axes("present", "total")}),
    *[GraphSpec(name, build, ["codes", "cnn_cache", "att_cache"], ["mu", "new_cnn_cache", "new_att_cache"],
                {"codes": {1: "codes"}, "cnn_cache": {2: "cnn_frames"}, "att_cache": {3: "past_frames"},
                 "mu": {2: "frames"}, "new_att_cache": {3: "total_frames"}})
      for name, build in (("t2w_encoder", T2WEncoderGraph), ("t2w_encoder_last", T2WEncoderLastGraph))],
    GraphSpec("t2w_estimator_step", T2WEstimatorStepGraph,
              ["x", "mu_in", "speaker_in", "cond_in", "t", "dt", "cnn_cache", "att_keys", "att_values"],
              ["x_next", "new_cnn_cache", "new_keys", "new_values"],
              {"x": {2: "frames"}, "mu_in": {2: "frames"}, "cond_in": {2: "frames"},
               "cnn_cache": {3: "conv_context"}, "att_keys": {3: "past_frames"}, "att_values": {3: "past_frames"},
               "x_next": {2: "frames"}, "new_keys": {3: "frames"}, "new_values": {3: "frames"}}),
    GraphSpec("t2w_vocoder", T2WVocoderGraph, ["mel", "cache_source", "sine_noise"], ["speech", "source"],
              {"mel": {2: "frames"}, "cache_source": {2: "cached_samples"}, "sine_noise": {1: "samples"},
               "speech": {1: "samples"}, "source": {2: "samples"}}),
    GraphSpec("t2w_speaker", T2WSpeakerGraph, ["embedding"], ["speaker"], {}),
]}
WAVEFORM_GRAPHS = tuple(name for name in GRAPHS if name.startswith("t2w_"))


# --- shapes of the caches ---------------------------------------------------------------------------
def llm_kv_shape(config, past: int) -> Tuple[int, ...]:
    return (config.num_hidden_layers, 1, config.num_key_value_heads, past, config.head_dim)


def tts_kv_shape(config, past: int) -> Tuple[int, ...]:
    t = config.tts_config
    heads = t.num_key_value_heads or t.num_attention_heads
    return (t.num_hidden_layers, 1, heads, past, t.hidden_size // t.num_attention_heads)


def audio_kv_shape(config, past: int) -> Tuple[int, ...]:
    a = config.audio_config
    return (a.encoder_layers, 1, a.encoder_attention_heads, past, a.d_model // a.encoder_attention_heads)


def t2w_encoder_cache_shapes(flow, past: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(cnn_cache, att_cache) shapes of the flow encoder with `past` cached 50 Hz frames (even;
    0 = a first chunk, whose conv cache is empty too). `flow`: a token2wav FlowConfig."""
    e = flow.encoder
    cnn = (1, e.output_size, 0 if past == 0 else 2 + 2 * e.up_stride)
    return cnn, (e.num_blocks + e.num_up_blocks, 1, e.attention_heads, past, 2 * (e.output_size // e.attention_heads))


def t2w_estimator_cache_shapes(flow, past: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(cnn_cache, att_keys = att_values) shapes of one Euler step of the DiT estimator (batch 2:
    guidance) with `past` cached frames (0 = a first chunk)."""
    d = flow.decoder.estimator
    cnn = (d.depth, 2, 2 * d.hidden_size, 0 if past == 0 else 2)
    return cnn, (d.depth, 2, d.num_heads, past, d.head_dim)


def _t2w_example(name: str, t2w, s: Dict[str, int], rand, g) -> Dict[str, torch.Tensor]:
    if t2w is None:
        raise ValueError(f"example_inputs({name!r}) needs t2w= (the model's Token2WavModel)")
    flow = t2w.flow.config
    mels = flow.output_size
    if name in ("t2w_encoder", "t2w_encoder_last"):
        cnn, att = t2w_encoder_cache_shapes(flow, s["t2w_enc_past"])
        return {"codes": torch.randint(0, flow.vocab_size, (1, s["t2w_codes"]), generator=g),
                "cnn_cache": rand(*cnn), "att_cache": rand(*att) * 0.5}
    if name == "t2w_estimator_step":
        f = s["t2w_frames"]
        cnn, att = t2w_estimator_cache_shapes(flow, s["t2w_est_past"])
        zeros = torch.zeros(1, mels, f)
        return {"x": rand(1, mels, f), "mu_in": torch.cat([rand(1, mels, f), zeros]),
                "speaker_in": torch.cat([rand(1, mels), torch.zeros(1, mels)]),
                "cond_in": torch.cat([rand(1, mels, f) * (s["t2w_est_past"] == 0), zeros]),
                "t": torch.tensor([0.3]), "dt": torch.tensor([0.12]),
                "cnn_cache": rand(*cnn), "att_keys": rand(*att), "att_values": rand(*att)}
    if name == "t2w_vocoder":
        h = t2w.hift.config
        f = s["t2w_mel"]
        samples = f * h.upsample_scale
        return {"mel": rand(1, h.in_channels, f) - 4.0,
                "cache_source": rand(1, 1, min(s["t2w_source"], samples)) * 0.1,
                "sine_noise": rand(1, samples, h.num_harmonics)}
    if name == "t2w_speaker":
        return {"embedding": rand(1, flow.spk_embed_dim)}
    raise KeyError(f"unknown graph {name!r}; graphs: {', '.join(GRAPHS)}")


def example_inputs(name: str, config, sizes: Dict[str, int] = None, t2w=None) -> Dict[str, torch.Tensor]:
    """Random inputs of plausible unit shapes for graph `name` (export, parity tests, benchmarks).
    Every dynamic size is at least 2 (an exporter may pin a dimension whose example size is 1).
    The waveform graphs (t2w_*) read their dimensions from `t2w`, the model's Token2WavModel;
    their sizes: t2w_codes (encoder codes), t2w_enc_past (cached encoder frames, even),
    t2w_frames / t2w_est_past (estimator frames / cached frames), t2w_mel / t2w_source (vocoder
    mel frames / cached source samples); a past of 0 gives empty caches (a first chunk)."""
    s = {"tokens": 3, "past": 5, "mel_frames": 104, "height": 70, "width": 84, "codes": 4,
         "t2w_codes": 9, "t2w_enc_past": 10, "t2w_frames": 12, "t2w_est_past": 6, "t2w_mel": 10,
         "t2w_source": 960}
    s.update(sizes or {})
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    if name.startswith("t2w_"):
        return _t2w_example(name, t2w, s, rand, g)
    d, n, p = config.hidden_size, s["tokens"], s["past"]
    if name == "vision":
        patch = config.vision_config.patch_size
        gh, gw = s["height"] // patch, s["width"] // patch
        return {"pixel_values": rand(1, 3, gh * patch, gw * patch),
                "patch_position_ids": navit_position_ids(gh, gw, config.vision_config.num_patches_per_side),
                "query_pos_embed": sincos_2d(d, gh, gw)}
    if name == "audio":
        t = s["mel_frames"]
        conv = (t - 1) // 2 + 1
        keep = torch.arange(1, conv - 1)
        return {"mel": rand(1, config.audio_config.num_mel_bins, t), "keep_index": keep,
                "position_ids": torch.arange(p, p + keep.numel()),
                "attention_bias": chunked_bias(keep.numel(), p, 0),   # all visible (streaming)
                "past_keys": rand(*audio_kv_shape(config, p)), "past_values": rand(*audio_kv_shape(config, p))}
    if name == "embed_tokens":
        return {"input_ids": torch.randint(0, config.vocab_size, (n,), generator=g)}
    if name == "lm_head":
        return {"hidden": rand(1, d)}
    if name in ("llm_step", "tts_step"):
        shape = llm_kv_shape if name == "llm_step" else tts_kv_shape
        width = d if name == "llm_step" else config.tts_config.hidden_size
        return {"inputs_embeds": rand(1, n, width), "position_ids": torch.arange(p, p + n)[None],
                "attention_bias": causal_bias(n, p)[None, None],
                "past_keys": rand(*shape(config, p)) * 0.5, "past_values": rand(*shape(config, p))}
    if name == "tts_condition":
        t = config.tts_config
        return {"text_ids": torch.randint(0, t.num_text_tokens, (n,), generator=g),
                "llm_hidden": rand(n, t.llm_dim), "semantic_mask": torch.tensor([1.0] * (n - 1) + [0.0])}
    if name == "tts_code_embed":
        return {"codes": torch.randint(0, config.tts_config.num_audio_tokens, (s["codes"],), generator=g)}
    raise KeyError(f"unknown graph {name!r}; graphs: {', '.join(GRAPHS)}")


def model_example_inputs(name: str, model, sizes: Dict[str, int] = None) -> Dict[str, torch.Tensor]:
    """`example_inputs` for graph `name` of a loaded model: its config, and its waveform stage
    (`model.token2wav`) for the t2w_* graphs."""
    return example_inputs(name, getattr(model, "config", None), sizes, t2w=getattr(model, "token2wav", None))


def build_graphs(model) -> Dict[str, nn.Module]:
    """Every graph of a loaded OmniModel (sharing its weights)."""
    return {name: spec.build(model).eval() for name, spec in GRAPHS.items()}

