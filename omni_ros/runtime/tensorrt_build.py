"""Build TensorRT engines from the exported ONNX graphs (TensorRT 10 Python API).

One engine per graph of `omni_ros.runtime.graphs`, each with one optimization profile that covers
the shapes a session produces (`shape_profiles`), written with a manifest (`engine_files`) that
records the component, precision, profile, checkpoint fingerprint, TensorRT version and the GPU
(name and compute capability) it was built on. Engines are specific to a GPU model and TensorRT
version; `TrtBackend` refuses any other.

Precision: `fp16` (default; TensorRT picks fp16 kernels where they are faster and keeps fp32 where
the graph needs it), `bf16` or `fp32`. INT8 and weight-only INT4 for the LLM need a graph with
explicit quantize/dequantize nodes (NVIDIA ModelOpt); this builder does not produce those and
refuses the request rather than build something else.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Tuple

from .engine_files import Manifest, checkpoint_fingerprint, entry_for_file, read_manifest, write_manifest

PRECISIONS = ("fp16", "bf16", "fp32")
ENGINE_SUFFIX = ".engine"


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing on this machine."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as error:
        raise TensorRTUnavailable(
            "TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU and "
            "driver); the onnxruntime and torch backends run without it") from error
    return trt


def current_gpu(device: int = 0) -> Dict[str, str]:
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is visible to PyTorch; TensorRT engines need one")
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


@dataclass(frozen=True)
class ShapeLimits:
    """The ranges a session's calls fall in; the defaults cover the released duplex protocol with
    the default context policy (system prefix + reference voice + 24 units) and a 30 s reference
    voice, with margin."""

    max_tokens: int = 512          # tokens fed in one LLM call (system prefix + voice at prefill)
    max_past: int = 8192           # LLM cache positions
    opt_past: int = 1024
    max_tts_tokens: int = 64       # condition rows of one unit
    max_tts_past: int = 1024       # speech-decoder positions in one turn (its position table)
    max_mel_frames: int = 3000     # 30 s of mel (the reference voice, offline)
    opt_mel_frames: int = 104      # one 1 s unit with its context frames
    max_audio_past: int = 1500     # Whisper's position table
    max_image_side: int = 0        # 0: twice the checkpoint's scale_resolution
    max_codes: int = 64            # speech codes embedded at once (tts_code_embed)
    max_prompt_codes: int = 750    # reference-voice codes (30 s at 25/s): the waveform stage's prompt
    opt_prompt_codes: int = 150    # a 6 s reference voice
    t2w_chunk_codes: int = 25      # new codes per waveform decode call: 25 * window_sec (1 s windows)


Shape = Tuple[int, ...]
Profile = Dict[str, Tuple[Shape, Shape, Shape]]


def waveform_profiles(flow, hift=None, limits: ShapeLimits = ShapeLimits()) -> Dict[str, Profile]:
    """The t2w_* graphs' profiles. `flow`: the checkpoint's FlowConfig (flow.yaml); `hift`: its
    HiFTConfig (default: the released dimensions, which the vocoder's inputs do not depend on
    otherwise).

    Calls a session makes (omni_ros.session.waveform; s = up_stride, L = lookahead):
    - once per voice: the encoder over the prompt codes + 3 silence codes with empty caches, then
      every Euler step over its s*N frames with empty caches (N <= max_prompt_codes);
    - per decode call: the encoder over C + L codes (C = t2w_chunk_codes, 25 for 1 s windows;
      fewer at a turn's first unit; `_last`: the < C + L left at a turn's end) with caches of at
      most the prompt's s*N frames + 100 (the caches are trimmed to that after every call), the
      Euler steps over those frames, and the vocoder over the 8 mel frames kept from the previous
      call + the chunk's (<= s*(C + L)) with the 3840 source samples kept (none at a turn's first
      call)."""
    from omni_ros.model.token2wav.hift import HiFTConfig
    from omni_ros.session.waveform import (CACHE_TAIL_FRAMES, MEL_CACHE_FRAMES, OVERLAP_SAMPLES,
                                                 START_SILENCE_CODES)

    from .graphs import t2w_encoder_cache_shapes, t2w_estimator_cache_shapes

    h = hift or HiFTConfig()
    lim = limits
    look, s = int(flow.encoder.pre_lookahead_len), int(flow.encoder.up_stride)
    mels = int(flow.output_size)
    new = lim.t2w_chunk_codes
    chunk = new + look                                             # codes of a regular decode call
    prompt_codes = lim.max_prompt_codes + START_SILENCE_CODES
    max_frames = s * prompt_codes                                  # the prompt's estimator calls
    max_past = s * lim.max_prompt_codes + CACHE_TAIL_FRAMES + s * chunk
    opt_past = s * lim.opt_prompt_codes + CACHE_TAIL_FRAMES
    enc = lambda p: t2w_encoder_cache_shapes(flow, p)              # noqa: E731
    est = lambda p: t2w_estimator_cache_shapes(flow, p)            # noqa: E731

    def encoder(lo, opt, hi):
        return {"codes": ((1, lo), (1, opt), (1, hi)),
                "cnn_cache": (enc(0)[0], enc(opt_past)[0], enc(max_past)[0]),
                "att_cache": (enc(0)[1], enc(opt_past)[1], enc(max_past)[1])}

    vocoder_frames = MEL_CACHE_FRAMES + s * chunk
    opt_vocoder = MEL_CACHE_FRAMES + s * new
    scale, harmonics = h.upsample_scale, h.num_harmonics
    return {
        "t2w_encoder": encoder(look + 1, chunk, prompt_codes),
        "t2w_encoder_last": encoder(1, chunk - look, chunk),
        "t2w_estimator_step": {
            "x": ((1, mels, 1), (1, mels, s * new), (1, mels, max_frames)),
            "mu_in": ((2, mels, 1), (2, mels, s * new), (2, mels, max_frames)),
            "speaker_in": ((2, mels),) * 3,
            "cond_in": ((2, mels, 1), (2, mels, s * new), (2, mels, max_frames)),
            "t": ((1,),) * 3, "dt": ((1,),) * 3,
            "cnn_cache": (est(0)[0], est(opt_past)[0], est(max_past)[0]),
            "att_keys": (est(0)[1], est(opt_past)[1], est(max_past)[1]),
            "att_values": (est(0)[1], est(opt_past)[1], est(max_past)[1])},
        "t2w_vocoder": {
            "mel": ((1, h.in_channels, 1), (1, h.in_channels, opt_vocoder), (1, h.in_channels, vocoder_frames)),
            "cache_source": ((1, 1, 0), (1, 1, OVERLAP_SAMPLES), (1, 1, OVERLAP_SAMPLES)),
            "sine_noise": ((1, scale, harmonics), (1, scale * opt_vocoder, harmonics),
                           (1, scale * vocoder_frames, harmonics))},
        "t2w_speaker": {"embedding": ((1, flow.spk_embed_dim),) * 3},
    }


def shape_profiles(config, limits: ShapeLimits = ShapeLimits(), flow=None, hift=None) -> Dict[str, Profile]:
    """graph -> input -> (min, opt, max) shapes. `flow` / `hift`: the checkpoint's token2wav
    FlowConfig / HiFTConfig (default: the released dimensions)."""
    from omni_ros.model.token2wav.assets import FlowConfig

    from .graphs import audio_kv_shape, llm_kv_shape, tts_kv_shape

    d = config.hidden_size
    t = config.tts_config
    a = config.audio_config
    lim = limits
    patch = config.vision_config.patch_size
    scale = int(config.slice_config.get("scale_resolution", config.image_size))
    side = lim.max_image_side or 2 * scale
    side -= side % patch
    opt_side = scale - scale % patch
    patches = lambda s: (s // patch) ** 2

    def kv(fn, lo, mid, hi):
        return (fn(config, lo), fn(config, mid), fn(config, hi))

    def decoder(width, kv_fn, max_tokens, opt_past, max_past):
        return {"inputs_embeds": ((1, 1, width), (1, 1, width), (1, max_tokens, width)),
                "position_ids": ((1, 1), (1, 1), (1, max_tokens)),
                "attention_bias": ((1, 1, 1, 1), (1, 1, 1, opt_past + 1),
                                   (1, 1, max_tokens, max_past + max_tokens)),
                "past_keys": kv(kv_fn, 0, opt_past, max_past),
                "past_values": kv(kv_fn, 0, opt_past, max_past)}

    opt_frames = (lim.opt_mel_frames - 1) // 2 + 1
    max_frames = (lim.max_mel_frames - 1) // 2 + 1
    opt_audio_past = 10 * opt_frames
    return {
        "vision": {"pixel_values": ((1, 3, 2 * patch, 2 * patch), (1, 3, opt_side, opt_side), (1, 3, side, side)),
                   "patch_position_ids": ((4,), (patches(opt_side),), (patches(side),)),
                   "query_pos_embed": ((4, d), (patches(opt_side), d), (patches(side), d))},
        "audio": {"mel": ((1, a.num_mel_bins, 2), (1, a.num_mel_bins, lim.opt_mel_frames),
                          (1, a.num_mel_bins, lim.max_mel_frames)),
                  "keep_index": ((1,), (opt_frames,), (max_frames,)),
                  "position_ids": ((1,), (opt_frames,), (max_frames,)),
                  "attention_bias": ((1, 1), (opt_frames, opt_audio_past + opt_frames),
                                     (max_frames, lim.max_audio_past)),
                  "past_keys": kv(audio_kv_shape, 0, opt_audio_past, lim.max_audio_past),
                  "past_values": kv(audio_kv_shape, 0, opt_audio_past, lim.max_audio_past)},
        "embed_tokens": {"input_ids": ((1,), (1,), (lim.max_tokens,))},
        "llm_step": decoder(d, llm_kv_shape, lim.max_tokens, lim.opt_past, lim.max_past),
        "lm_head": {"hidden": ((1, d), (1, d), (1, d))},
        "tts_condition": {"text_ids": ((1,), (20,), (lim.max_tts_tokens,)),
                          "llm_hidden": ((1, t.llm_dim), (20, t.llm_dim), (lim.max_tts_tokens, t.llm_dim)),
                          "semantic_mask": ((1,), (20,), (lim.max_tts_tokens,))},
        "tts_code_embed": {"codes": ((1,), (1,), (lim.max_codes,))},
        "tts_step": decoder(t.hidden_size, tts_kv_shape, lim.max_tts_tokens, 128, lim.max_tts_past),
        **waveform_profiles(flow if flow is not None else FlowConfig(), hift, lim),
    }


def build_engine(onnx_path: Path, engine_path: Path, profile: Profile, precision: str = "fp16",
                 workspace_gib: float = 8.0, log: Callable[[str], None] = print) -> None:
    """Parse one ONNX file and write its serialized engine."""
    trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: this builder makes {', '.join(PRECISIONS)}; "
                         "INT8 / INT4 need an ONNX graph quantized with explicit Q/DQ nodes "
                         "(NVIDIA ModelOpt)")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profile:
            raise KeyError(f"{onnx_path.name}: no shape profile for input {name!r}")
        opt.set_shape(name, *profile[name])
    config.add_optimization_profile(opt)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    log(f"  {engine_path.name}: {engine_path.stat().st_size / 2**20:.1f} MiB in "
        f"{time.perf_counter() - started:.1f} s")


def build_engines(model_path, onnx_dir, out_dir, precision: str = "fp16",
                  limits: ShapeLimits = ShapeLimits(), log: Callable[[str], None] = print) -> Manifest:
    """An engine for every graph exported in `onnx_dir` (its manifest must match the checkpoint),
    written to `out_dir` with a tensorrt manifest."""
    from omni_ros.model.loader import read_config

    from .engine_files import check_manifest

    trt = import_tensorrt()
    gpu = current_gpu()
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    exported = read_manifest(onnx_dir)
    check_manifest(onnx_dir, model_path, "onnx", list(exported.components))
    from omni_ros.model.token2wav import assets as A

    from .exported_compute import read_hift_config

    t2w_dir = Path(model_path) / A.ASSET_DIR
    profiles = shape_profiles(read_config(model_path), limits, flow=A.read_flow_yaml(t2w_dir),
                              hift=read_hift_config(t2w_dir / A.HIFT_WEIGHTS))
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(format="tensorrt", checkpoint=str(Path(model_path).resolve()),
                        checkpoint_hash=checkpoint_fingerprint(model_path),
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        versions={**exported.versions, "tensorrt": trt.__version__}, gpu=gpu,
                        notes=dict(exported.notes))
    log(f"building TensorRT {trt.__version__} engines ({precision}) for {gpu['name']} "
        f"(compute capability {gpu['compute_capability']}) into {out_dir}")
    for name, entry in exported.components.items():
        engine_file = name + ENGINE_SUFFIX
        build_engine(onnx_dir / entry.file, out_dir / engine_file, profiles[name], precision, log=log)
        manifest.components[name] = entry_for_file(
            out_dir, name, engine_file, precision,
            {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])}
             for k, v in profiles[name].items()})
    write_manifest(out_dir, manifest)
    return manifest

