"""The GPU benchmark in one command: MiniCPM-o 4.5 at released size with random weights built on the
GPU, about 30 units through the session (OmniSession) in bf16, per decode variant and waveform step
count; per-component times, real-time factors, first audio and peak GPU memory.

    python benchmarks/gpu.py                                      # an NVIDIA GPU: released size, 30 units
    python benchmarks/gpu.py --variants eager,graphs,compile      # torch.compile too (slower to start)
    python benchmarks/gpu.py --device cpu --size tiny --units 3 --threads 1   # the CPU smoke run CI does

Needs PyTorch (a CUDA build for --device cuda) and the package's Python requirements (transformers,
onnx, onnxruntime, soundfile, PyYAML); no ROS, no TensorRT, no network, no checkpoint. The module
tree is built on the meta device, materialised on `--device` in `--dtype` and filled there with
seeded random values by the checkpoint writer's rules (omni_ros.model.checkpoint: N(0, 0.02),
speech decoder N(0, 0.15), norms 1, biases 0, the decision rows of the output head scaled up):
the same distributions as a written random checkpoint, drawn by the device's generator. The
tokenizer and `assets/token2wav` (random, at `--size`; about 1.2 GB at released size) are written to
a temporary folder and loaded as a checkpoint's are; the waveform stage runs in float32 as
`load_model` gives it. The reference voice is a synthetic 3 s voice.

Each variant is a fresh session over the same model: warm-up (`OmniSession.warmup`), then `--units`
units of 1 s, each a random 640x480 frame and 1 s of noise; unit k listens when k % 5 == 0 (the turn
open before it is cut first, as a barge-in does) and speaks otherwise (`decision_override`: the first
token is forced to `<|speak|>`, the model draws the rest), so a run has turns of four speaking units.
Variants, for the LLM's and the speech decoder's one-token steps (every other call is eager):
  eager    TorchCompute as omni_node runs it (transformers with a growing cache).
  static   keys and values in preallocated buffers, attention over them with a mask: fixed shapes.
  graphs   static, each one-token step captured once in a CUDA graph and replayed (CUDA only).
  compile  static through torch.compile, then captured in a CUDA graph (CUDA only).
Every variant runs at each of `--steps` (token2wav_steps, the waveform stage's Euler steps).

Components are timed by wrapping the session's Compute (torch.cuda.synchronize after each call, so
the times add up; the remainder of a unit is host work: sampling, mel, the protocol). "First audio
computed" is when a speaking unit's first vocoder call returns, counted from the unit's start (the
window closing); "speech handed back" is when run_unit returns with the window's speech, which is
when a node can publish it. The targets (an H100, released size: unit RTF <= 0.15, LLM decode <= 8 ms
per token, first audio <= 300 ms) are judged on the best variant.

Every unit's outputs are checked as they come: the LLM's hidden states and logits and the speech
decoder's logits finite (warm-up and the context rebuild included), a listening unit without speech,
a speaking unit's speech finite float32 mono of exactly one window at 24 kHz (`window_sec` x
OUTPUT_SAMPLE_RATE samples; a unit that ends its turn at least that, the waveform stage's final
flush after it). A unit that fails the check fails its variant: one line on stderr naming the unit
and what is wrong, the variant's column "failed: ...", exit status 1.

Prints a markdown table and appends it, with date and machine, to `--output`
(default benchmarks/results/gpu.md). Exit status 2, with one line, when the device is unusable.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import math
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import RESULTS, machine  # noqa: E402 - benchmarks/ is the script's folder

from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb  # noqa: E402

from omni_ros.flow.types import OUTPUT_SAMPLE_RATE  # noqa: E402
from omni_ros.runtime import graphs as G  # noqa: E402
from omni_ros.runtime.kv import rope_delta  # noqa: E402
from omni_ros.runtime.torch_compute import TorchCompute  # noqa: E402

VARIANTS = ("eager", "static", "graphs", "compile")
CUDA_ONLY = ("graphs", "compile")
SPEAK_PERIOD = 5                 # unit k listens when k % SPEAK_PERIOD == 0
VOICE_SECONDS = 3.0
TARGETS = {"unit_rtf": 0.15, "llm_token_ms": 8.0, "first_audio_ms": 300.0}   # an H100, released size


# --- the model: random weights made on the device -------------------------------------------------
def random_model(config, device: torch.device, dtype: torch.dtype, seed: int):
    """The OmniModel for `config` on `device` in `dtype`, values drawn there (no file, no CPU copy)."""
    from omni_ros.model import checkpoint as C
    from omni_ros.model.loader import build_model
    from omni_ros.model.tokenizer import released_added_tokens

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)         # parameters allocated in `dtype`; rotary tables stay float32
    try:
        model = build_model(config, device)
    finally:
        torch.set_default_dtype(previous)
    generator = torch.Generator(device=device).manual_seed(seed)
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            rule = C._init_rule(name, tuple(tensor.shape))
            if rule == "zeros":
                tensor.zero_()
            elif rule == "ones":
                tensor.fill_(1.0)
            elif rule == "sinusoids":
                tensor.copy_(C._sinusoids(*tensor.shape))
            elif rule != "magnitude":
                tensor.normal_(0.0, float(rule), generator=generator)
        for name in [n for n in state if C._init_rule(n, tuple(state[n].shape)) == "magnitude"]:
            direction = state[name[: -len("original0")] + "original1"]      # weight norm: g = |v| per row
            state[name].copy_(direction.float().norm(dim=1, keepdim=True))
        rows = sorted(released_added_tokens()[t] for t in C.DECISION_TOKENS)
        model.llm.lm_head.weight[rows] *= C.DECISION_ROW_SCALE
    return model.eval().requires_grad_(False)


def build(size: str, device: torch.device, dtype: torch.dtype, seed: int, work: Path):
    """The random model with its tokenizer and waveform stage attached, as load_model attaches them."""
    from omni_ros.model.checkpoint import size_config
    from omni_ros.model.token2wav.model import Token2WavModel, write_random_assets
    from omni_ros.model.tokenizer import load_tokenizer, resolve_special_ids, write_tokenizer

    model = random_model(size_config(size), device, dtype, seed)
    write_tokenizer(work)
    model.tokenizer = load_tokenizer(work)
    model.special = resolve_special_ids(model.tokenizer)
    model.token2wav = Token2WavModel.from_folder(write_random_assets(work / "token2wav", size=size, seed=seed + 1),
                                                 device=device)
    return model


# --- the static-cache decode steps (variants static, graphs, compile) -----------------------------
class StaticKV:
    """The session's handle on a StaticDecoder's buffers: the first `length` slots are filled."""

    def __init__(self) -> None:
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length


class StaticDecoder:
    """A transformers decoder (Qwen3Model / LlamaModel) whose keys and values live in two buffers
    [L, 1, H, capacity, Dh] reused by every new cache (one cache at a time), attending over the
    whole buffer with a mask: a one-token step has the same shapes at every position."""

    def __init__(self, decoder, kv_shape, head: Callable[[torch.Tensor], torch.Tensor], mode: str,
                 dtype: torch.dtype, device: torch.device):
        self.decoder, self.head, self.mode = decoder, head, mode
        self.keys = torch.zeros(kv_shape, dtype=dtype, device=device)
        self.values = torch.zeros(kv_shape, dtype=dtype, device=device)
        self.cache: Optional[StaticKV] = None
        self.one_token: Optional[OneTokenStep] = None

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[3])

    def new_cache(self) -> StaticKV:
        self.cache = StaticKV()
        return self.cache

    def forward(self, embeds, positions, slots, with_logits: bool):
        """embeds [1, n, D] at rotary `positions` [1, n] written to cache `slots` [n] ->
        (hidden [n, D] after the final norm, logits [V] float of the last position or None)."""
        m, x = self.decoder, embeds
        cos, sin = m.rotary_emb(x, positions)
        visible = (torch.arange(self.capacity, device=x.device)[None] <= slots[:, None])[None, None]
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            y = layer.input_layernorm(x)
            q, k, v = (proj(y).unflatten(-1, (-1, attn.head_dim)) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            if hasattr(attn, "q_norm"):                # Qwen3's QK-norm
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            self.keys[i].index_copy_(2, slots, k)
            self.values[i].index_copy_(2, slots, v.transpose(1, 2))
            a = F.scaled_dot_product_attention(q, self.keys[i], self.values[i], attn_mask=visible,
                                               scale=attn.scaling, enable_gqa=True)
            x = x + attn.o_proj(a.transpose(1, 2).flatten(2))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        hidden = m.norm(x)[0]
        return hidden, (self.head(hidden[-1:])[0] if with_logits else None)

    def step(self, embeds, position: int, cache: StaticKV, with_logits: bool):
        if cache is not self.cache:
            raise RuntimeError("a StaticDecoder serves one cache at a time: this one was replaced")
        n, start = int(embeds.shape[0]), cache.length
        if start + n > self.capacity:
            raise RuntimeError(f"static cache full: {start} + {n} positions > capacity {self.capacity} "
                               "(raise --llm-capacity)")
        if n == 1 and with_logits:
            if self.one_token is None:
                self.one_token = OneTokenStep(self, embeds, position, start)
            out = self.one_token(embeds, position, start)
        else:
            dev = embeds.device
            out = self.forward(embeds[None], torch.arange(position, position + n, device=dev)[None],
                               torch.arange(start, start + n, device=dev), with_logits)
        cache.length += n
        return out

    def drop_span(self, cache: StaticKV, start: int, end: int, cos, sin) -> None:
        """Cut slots [start, end) out, in place; the keys after them rotated by (cos, sin)."""
        n = cache.length - end
        tail = self.keys[:, :, :, end:cache.length].float()
        rotated = tail * cos.to(tail.device) + G.rotate_half(tail) * sin.to(tail.device)
        self.keys[:, :, :, start:start + n] = rotated.to(self.keys.dtype)
        self.values[:, :, :, start:start + n] = self.values[:, :, :, end:cache.length].clone()
        cache.length -= end - start


class OneTokenStep:
    """A StaticDecoder's one-token step with logits over static input buffers: through torch.compile
    in mode `compile`; in modes `graphs` and `compile` on CUDA, captured once in a CUDA graph and
    replayed. Built at the first call, whose own inputs warm it up (a replay writes the same keys and
    values again)."""

    def __init__(self, owner: StaticDecoder, embeds, position: int, slot: int):
        dev = embeds.device
        fn = lambda e, p, s: owner.forward(e, p, s, True)            # noqa: E731
        self.fn = torch.compile(fn, dynamic=False) if owner.mode == "compile" else fn
        self.inputs = (embeds[None].clone(), torch.tensor([[position]], device=dev), torch.tensor([slot], device=dev))
        self.graph = None
        if dev.type == "cuda" and owner.mode in CUDA_ONLY:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):                                   # compile, autotune, allocate
                    self.fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = self.fn(*self.inputs)

    def __call__(self, embeds, position: int, slot: int):
        e, p, s = self.inputs
        e.copy_(embeds[None])
        p.fill_(position)
        s.fill_(slot)
        if self.graph is None:
            hidden, logits = self.fn(e, p, s)
        else:
            self.graph.replay()
            hidden, logits = self.outputs
        return hidden.clone(), logits.clone()      # the graph's outputs are overwritten by the next replay


class StaticDecodeCompute(TorchCompute):
    """TorchCompute with the LLM and the speech decoder on StaticDecoders (`mode`: static, graphs,
    compile). One session per compute: a new cache empties the decoder's buffers."""

    def __init__(self, model, mode: str, llm_capacity: int):
        super().__init__(model)
        self.name = f"torch-{mode}"
        config, dtype, dev = model.config, self.dtype, self.device
        tts = config.tts_config
        self.llm = StaticDecoder(model.llm.model, G.llm_kv_shape(config, llm_capacity),
                                 lambda h: model.llm.lm_head(h).float(), mode, dtype, dev)
        head = model.tts.head_code[0].weight.detach()           # weight norm, fixed at inference: once
        self.tts = StaticDecoder(model.tts.model, G.tts_kv_shape(config, tts.max_position_embeddings),
                                 lambda h: F.linear(h, head).float(), mode, dtype, dev)

    def new_llm_cache(self):
        return self.llm.new_cache()

    def llm_step(self, embeds, position, cache, need_logits=True):
        return self.llm.step(embeds, position, cache, need_logits)

    def llm_drop_span(self, cache, start, end):
        self.llm.drop_span(cache, start, end, *rope_delta(self.config, end - start))

    def new_tts_cache(self):
        return self.tts.new_cache()

    def tts_step(self, embeds, position, cache):
        return self.tts.step(embeds, position, cache, True)[1]


# --- timing: a wrapper around the session's Compute ----------------------------------------------
@dataclass
class UnitRecord:
    started: float
    seconds: Dict[str, float] = field(default_factory=dict)
    calls: Dict[str, int] = field(default_factory=dict)
    singles: Dict[str, List[float]] = field(default_factory=dict)   # per-call times: llm_token, tts_code
    first_audio: Optional[float] = None                              # first vocoder output, s after start
    total: float = 0.0
    speaking: bool = False
    speech_seconds: float = 0.0


class Recorder:
    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.unit: Optional[UnitRecord] = None
        self.finite: Dict[str, torch.Tensor] = {}    # output name -> all finite so far (on the device)

    def watch(self, name: str, tensor: Optional[torch.Tensor]) -> None:
        """Note whether `tensor` is all finite; kept on its device (no sync) until `nonfinite`."""
        if tensor is not None:
            ok = torch.isfinite(tensor).all()
            self.finite[name] = ok if name not in self.finite else self.finite[name] & ok

    def nonfinite(self) -> List[str]:
        """The watched outputs that held NaN or infinite values since the last call."""
        bad = [name for name, ok in self.finite.items() if not bool(ok)]
        self.finite = {}
        return bad

    def call(self, key: str, fn, *args, **kwargs):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        now = time.perf_counter()
        unit = self.unit
        if unit is not None:
            unit.seconds[key] = unit.seconds.get(key, 0.0) + now - started
            unit.calls[key] = unit.calls.get(key, 0) + 1
            if key in ("llm_token", "tts_code"):
                unit.singles.setdefault(key, []).append(now - started)
            if key == "t2w_vocoder" and unit.first_audio is None:
                unit.first_audio = now - unit.started
        return out


class _Delegating:
    def __init__(self, inner, recorder: Recorder):
        self.inner, self.recorder = inner, recorder

    def __getattr__(self, name):
        return getattr(self.inner, name)


class TimedWaveform(_Delegating):
    def t2w_encoder(self, *args):
        return self.recorder.call("t2w_encoder", self.inner.t2w_encoder, *args)

    def t2w_estimator_step(self, *args):
        return self.recorder.call("t2w_estimator", self.inner.t2w_estimator_step, *args)

    def t2w_vocoder_random(self, *args):
        return self.recorder.call("t2w_vocoder_random", self.inner.t2w_vocoder_random, *args)

    def t2w_vocoder(self, *args):
        return self.recorder.call("t2w_vocoder", self.inner.t2w_vocoder, *args)


class TimedCompute(_Delegating):
    """The Compute protocol (omni_ros.session.compute) passed through to `inner`, each graph call timed."""

    def __init__(self, inner, recorder: Recorder):
        super().__init__(inner, recorder)
        self.waveform = TimedWaveform(inner.waveform, recorder)

    def embed_tokens(self, ids):
        return self.recorder.call("embed", self.inner.embed_tokens, ids)

    def vision(self, image):
        return self.recorder.call("vision", self.inner.vision, image)

    def audio(self, *args):
        return self.recorder.call("audio", self.inner.audio, *args)

    def llm_step(self, embeds, position, cache, need_logits=True):
        key = "llm_token" if embeds.shape[0] == 1 and need_logits else "llm_feed"
        hidden, logits = self.recorder.call(key, self.inner.llm_step, embeds, position, cache,
                                            need_logits=need_logits)
        self.recorder.watch("LLM hidden states", hidden)
        self.recorder.watch("LLM logits", logits)
        return hidden, logits

    def llm_drop_span(self, cache, start, end):
        return self.recorder.call("llm_drop", self.inner.llm_drop_span, cache, start, end)

    def tts_condition(self, *args):
        return self.recorder.call("tts_condition", self.inner.tts_condition, *args)

    def tts_code_embed(self, codes):
        return self.recorder.call("tts_embed", self.inner.tts_code_embed, codes)

    def tts_step(self, embeds, position, cache):
        key = "tts_code" if embeds.shape[0] == 1 else "tts_prefill"
        logits = self.recorder.call(key, self.inner.tts_step, embeds, position, cache)
        self.recorder.watch("speech decoder logits", logits)
        return logits


# --- what every unit must hand back -----------------------------------------------------------------
class OutputCheckFailed(RuntimeError):
    """A unit's outputs are not finite, or not of the released shapes and rates."""


def speech_problems(out, window_sec: float) -> List[str]:
    """What is wrong with a unit's speech (empty: nothing). Listening: none at all. Speaking: finite
    float32 mono, exactly one window at OUTPUT_SAMPLE_RATE; a unit that ends its turn at least one
    window (the waveform stage's final flush comes after it)."""
    speech = np.asarray(out.speech)
    if out.is_listen:
        return [] if speech.size == 0 else [f"a listening unit handed back {speech.size} samples of speech"]
    window = int(round(window_sec * OUTPUT_SAMPLE_RATE))
    if speech.dtype != np.float32 or speech.ndim != 1:
        return [f"speech is {speech.dtype} of shape {tuple(speech.shape)}, not float32 mono"]
    problems = []
    n = speech.shape[0]
    if n != window and not (out.end_of_turn and n > window):
        problems.append(f"speech is {n} samples, not one {window_sec:g} s window at {OUTPUT_SAMPLE_RATE} Hz "
                        f"({window} samples{', or more at the end of a turn' if out.end_of_turn else ''})")
    if not np.isfinite(speech).all():
        problems.append("the speech holds NaN or infinite samples")
    return problems


def check_outputs(where: str, recorder: Recorder, out=None, window_sec: float = 1.0) -> None:
    """Raise OutputCheckFailed, naming `where` and every problem, if the outputs watched since the
    last check (and `out`'s speech, when given) are not what a unit must hand back."""
    problems = [f"{name} not finite" for name in recorder.nonfinite()]
    if out is not None:
        problems += speech_problems(out, window_sec)
    if problems:
        raise OutputCheckFailed(f"{where}: " + "; ".join(problems))


# --- one variant ------------------------------------------------------------------------------------
def unit_inputs(units: int, seed: int):
    from omni_ros.flow.types import UnitInput

    rng = np.random.default_rng(seed)
    return [UnitInput(window_index=k, epoch=0, start_ns=k * 10 ** 9, end_ns=(k + 1) * 10 ** 9,
                      image=rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), image_stamp_ns=k * 10 ** 9,
                      audio=(0.05 * rng.standard_normal(16000)).astype(np.float32))
            for k in range(units)]


def run_variant(model, variant: str, steps: int, inputs, args) -> dict:
    from omni_ros.model.token2wav.model import synthetic_voice
    from omni_ros.session.options import SessionOptions
    from omni_ros.session.session import OmniSession

    device = model.device
    gc.collect()                     # the previous variant's buffers and graphs
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    recorder = Recorder(device)
    started = time.perf_counter()
    inner = TorchCompute(model) if variant == "eager" else StaticDecodeCompute(model, variant, args.llm_capacity)
    session = OmniSession(TimedCompute(inner, recorder),
                          SessionOptions(token2wav_steps=steps, seed=args.seed, force_listen_count=0,
                                         reference_voice_samples=synthetic_voice(VOICE_SECONDS, seed=args.seed)))
    session.warmup()
    recorder.sync()
    warmup_s = time.perf_counter() - started
    check_outputs("warm-up", recorder)
    records: List[UnitRecord] = []
    for k, unit in enumerate(inputs):
        speak = k % SPEAK_PERIOD != 0
        if not speak:
            session.interrupt()                      # the turn before is cut: the next one starts afresh
        session.decision_override = speak
        recorder.unit = record = UnitRecord(started=time.perf_counter())
        out = session.run_unit(unit)
        recorder.sync()
        record.total = time.perf_counter() - record.started
        recorder.unit = None
        record.speaking = not out.is_listen
        record.speech_seconds = out.speech.shape[0] / OUTPUT_SAMPLE_RATE
        check_outputs(f"unit {k} ({'listening' if out.is_listen else 'speaking'})", recorder, out,
                      args.window_sec)
        records.append(record)
    result = summarize(records, args.window_sec)
    result["warmup_s"] = warmup_s
    # a new standing instruction on a running robot: the prefix rebuilt under the kept units
    session.apply_options({"standing_instruction": "Now watch the loading bay."})
    recorder.sync()
    rebuild_started = time.perf_counter()
    with torch.inference_mode():
        rebuilt = session.rebuild_context("standing_instruction")
    recorder.sync()
    result["rebuild"] = (rebuilt.units, rebuilt.tokens, (time.perf_counter() - rebuild_started) * 1000.0)
    check_outputs("the context rebuild", recorder)
    if device.type == "cuda":
        result["peak"] = (f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} / "
                          f"{torch.cuda.max_memory_reserved(device) / 2 ** 30:.2f} GiB")
    else:
        result["peak"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB RSS"
    del session, inner
    return result


def _median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def _mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


WAVEFORM_KEYS = ("t2w_encoder", "t2w_estimator", "t2w_vocoder_random", "t2w_vocoder")


def summarize(records: List[UnitRecord], window_sec: float) -> dict:
    ms = lambda seconds: seconds * 1000.0                                     # noqa: E731
    part = lambda r, *keys: sum(r.seconds.get(k, 0.0) for k in keys)          # noqa: E731
    speaking = [r for r in records if r.speaking]
    totals = sorted(r.total for r in records)
    timed = [k for r in records for k in r.seconds]
    waveform_s = sum(part(r, *WAVEFORM_KEYS) for r in speaking)
    speech_s = sum(r.speech_seconds for r in speaking)
    return {
        "units": len(records), "speaking": len(speaking),
        "unit_ms": (ms(_median(totals)), ms(totals[min(len(totals) - 1, int(0.9 * len(totals)))]), ms(totals[-1])),
        "unit_rtf": _mean(totals) / window_sec,
        "speaking_rtf": _mean(r.total for r in speaking) / window_sec,
        "vision_ms": ms(_mean(part(r, "vision") for r in records)),
        "audio_ms": ms(_mean(part(r, "audio") for r in records)),
        "llm_feed_ms": ms(_mean(part(r, "llm_feed", "llm_drop", "embed") for r in records)),
        "llm_token_ms": ms(_median(t for r in records for t in r.singles.get("llm_token", []))),
        "llm_tokens": _mean(r.calls.get("llm_token", 0) for r in speaking),
        "tts_prefill_ms": ms(_mean(part(r, "tts_condition", "tts_prefill") for r in speaking)),
        "tts_code_ms": ms(_median(t for r in speaking for t in r.singles.get("tts_code", []))),
        "tts_codes": _mean(r.calls.get("tts_code", 0) for r in speaking),
        "tts_ms": ms(_mean(part(r, "tts_condition", "tts_prefill", "tts_code", "tts_embed") for r in speaking)),
        "waveform_ms": ms(waveform_s / max(1, len(speaking))),
        "waveform_rtf": waveform_s / speech_s if speech_s else float("nan"),
        "host_ms": ms(_mean(r.total - part(r, *set(timed)) for r in records)),
        "first_audio_ms": (ms(_median(r.first_audio for r in speaking if r.first_audio is not None)),
                           ms(max((r.first_audio for r in speaking if r.first_audio is not None), default=math.nan))),
        "handed_ms": (ms(_median(r.total for r in speaking)), ms(max((r.total for r in speaking), default=math.nan))),
    }


# --- the report -------------------------------------------------------------------------------------
def _pair(values, digits: int = 1) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


ROWS = [
    ("units run (speaking)", lambda r: f"{r['units']} ({r['speaking']})"),
    ("unit time, median / p90 / max (ms)", lambda r: _pair(r["unit_ms"])),
    ("unit RTF, all units (mean / window)", lambda r: f"{r['unit_rtf']:.3f}"),
    ("unit RTF, speaking units", lambda r: f"{r['speaking_rtf']:.3f}"),
    ("vision, ms per unit", lambda r: f"{r['vision_ms']:.1f}"),
    ("audio encoder, ms per unit", lambda r: f"{r['audio_ms']:.1f}"),
    ("LLM feeds (unit, image, audio, prefix cuts), ms per unit", lambda r: f"{r['llm_feed_ms']:.1f}"),
    ("LLM decode, ms per token (median)", lambda r: f"{r['llm_token_ms']:.2f}"),
    ("LLM tokens decoded per speaking unit", lambda r: f"{r['llm_tokens']:.1f}"),
    ("TTS condition + prefill, ms per speaking unit", lambda r: f"{r['tts_prefill_ms']:.1f}"),
    ("TTS, ms per code (median)", lambda r: f"{r['tts_code_ms']:.2f}"),
    ("TTS codes per speaking unit", lambda r: f"{r['tts_codes']:.1f}"),
    ("TTS, ms per speaking unit", lambda r: f"{r['tts_ms']:.1f}"),
    ("waveform stage, ms per speaking unit", lambda r: f"{r['waveform_ms']:.1f}"),
    ("waveform-stage RTF", lambda r: f"{r['waveform_rtf']:.3f}"),
    ("host and other (sampling, mel, glue), ms per unit", lambda r: f"{r['host_ms']:.1f}"),
    ("first audio computed after the window closes, median / max (ms)", lambda r: _pair(r["first_audio_ms"])),
    ("speech handed back (run_unit returns), median / max (ms)", lambda r: _pair(r["handed_ms"])),
    ("peak memory (GPU: allocated / reserved; CPU: process RSS)", lambda r: r["peak"]),
    ("session start + warm-up (s)", lambda r: f"{r['warmup_s']:.1f}"),
    ("context rebuild for a new standing instruction: kept units / positions / ms",
     lambda r: f"{r['rebuild'][0]} / {r['rebuild'][1]} / {r['rebuild'][2]:.1f}"),
]


def report(columns: List[tuple], args, build_s: float, total_s: float) -> str:
    """columns: (label, result dict or a one-line reason it did not run)."""
    lines = ["| | " + " | ".join(label for label, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name, cell in ROWS:
        values = [cell(r) if isinstance(r, dict) else (r if name == ROWS[0][0] else "-") for _, r in columns]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    ran = [(label, r) for label, r in columns if isinstance(r, dict)]
    source = (f"{args.checkpoint} loaded with load_model (memory-mapped)" if args.checkpoint else
              f"random {args.dtype} weights made on {args.device}; tokenizer and {args.size} token2wav "
              f"written and loaded")
    lines += ["", f"Model built in {build_s:.1f} s ({source}); whole run {total_s:.1f} s."]
    if ran and args.size == "released" and args.device.startswith("cuda"):
        best = lambda key, i=None: min(ran, key=lambda c: c[1][key] if i is None else c[1][key][i])   # noqa: E731
        for key, index, what in (("unit_rtf", None, "unit RTF"), ("llm_token_ms", None, "LLM decode ms/token"),
                                 ("handed_ms", 0, "first audio (speech handed back, median) ms")):
            label, r = best(key, index)
            value = r[key] if index is None else r[key][index]
            target = TARGETS["first_audio_ms" if key == "handed_ms" else key]
            lines.append(f"- target {what} <= {target:g}: best {value:.3f} ({label}): "
                         f"{'reached' if value <= target else 'not reached'}")
    else:
        lines.append("Targets (unit RTF <= 0.15, LLM decode <= 8 ms/token, first audio <= 300 ms) apply to the "
                     "released size on an H100: not judged here.")
    return "\n".join(lines)


def write_report(path: Path, title: str, body: str) -> None:
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    text = f"\n## {title}: {stamp}\n\nMachine: {machine()}\n\n{body.rstrip()}\n"
    print(text)
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        if new:
            f.write("# GPU benchmark (benchmarks/gpu.py)\n\nMiniCPM-o 4.5 with random weights, units through "
                    "OmniSession per decode variant and token2wav step count; see the script's docstring.\n")
        f.write(text)
    print(f"appended to {path}")


def _device_problem(device: str) -> Optional[str]:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        return f"--device {device!r} is not a torch device ({error})"
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = ("has no CUDA (a CPU-only build)" if not torch.backends.cuda.is_built()
               else "has CUDA but finds no usable GPU (driver, CUDA_VISIBLE_DEVICES)")
        return (f"--device {device} needs an NVIDIA GPU, but torch {torch.__version__} {why}; "
                "`--device cpu --size tiny` runs the CPU smoke run")
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", choices=("released", "tiny"), default="released")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--units", type=int, default=30)
    p.add_argument("--variants", default="", help=f"comma-separated of {', '.join(VARIANTS)} "
                   "(default: eager,graphs on CUDA; eager,static on a CPU, graphs and compile skipped)")
    p.add_argument("--steps", default="10,5", help="token2wav_steps to run each variant at")
    p.add_argument("--llm-capacity", type=int, default=4096, help="positions of the static LLM cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own)")
    p.add_argument("--max-minutes", type=float, default=9.0,
                   help="no variant starts after this long (the run stays within about ten minutes)")
    p.add_argument("--output", default=str(RESULTS / "gpu.md"), help="results file (appended)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="load this checkpoint folder (load_model, memory-mapped) instead of building "
                        "random weights in memory, e.g. one written by omni_ros_tiny_checkpoint --size released")
    args = p.parse_args(argv)
    args.window_sec = 1.0
    problem = _device_problem(args.device)
    if problem:
        print(f"benchmarks/gpu.py: {problem}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    variants = [v.strip() for v in (args.variants or ("eager,graphs" if on_cuda else "eager,static,graphs,compile")
                                    ).split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.units < 1:
        p.error(f"unknown variants {unknown}" if unknown else "--units must be at least 1")
    steps = [int(s) for s in args.steps.split(",")]

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="omni_gpu_bench_") as tmp, torch.inference_mode():
        if args.checkpoint:
            from omni_ros.model.loader import load_model
            model = load_model(args.checkpoint, device=args.device, dtype=args.dtype)
            args.size = f"{args.size} ({args.checkpoint})"
        else:
            model = build(args.size, device, getattr(torch, args.dtype), args.seed, Path(tmp))
        build_s = time.perf_counter() - started
        print(f"[gpu.py] {args.size} model on {device} in {build_s:.1f} s", flush=True)
        inputs = unit_inputs(args.units, args.seed)
        columns = []
        for variant in variants:
            if variant in CUDA_ONLY and not on_cuda:
                columns.append((variant, f"skipped on {device.type}"))
                continue
            for n in steps:
                label = f"{variant}, {n} steps"
                if time.perf_counter() - started > 60.0 * args.max_minutes:
                    columns.append((label, f"skipped: past --max-minutes {args.max_minutes:g}"))
                    continue
                try:
                    columns.append((label, run_variant(model, variant, n, inputs, args)))
                except Exception as error:   # noqa: BLE001 - one variant failing does not lose the others
                    first = (str(error).splitlines() or [""])[0][:200].replace("|", "/")
                    columns.append((label, f"failed: {type(error).__name__}: {first}"))
                    print(f"benchmarks/gpu.py: {label} failed: {type(error).__name__}: {first}",
                          file=sys.stderr, flush=True)
                print(f"[gpu.py] {label}: done at {time.perf_counter() - started:.0f} s", flush=True)
    title = f"{args.size} size on {device.type} ({args.dtype}), {args.units} units"
    if not on_cuda:
        title += " (a CPU smoke run, not GPU figures)"
    write_report(Path(args.output), title, report(columns, args, build_s, time.perf_counter() - started))
    failed = [label for label, r in columns if isinstance(r, str) and r.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
