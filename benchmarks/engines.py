"""Per-graph and per-unit compute time of each backend, in one run, on the same inputs.

    .venv/bin/python benchmarks/engines.py [--repeats 50] [--units 40] [--checkpoint DIR]
    .venv/bin/python benchmarks/engines.py --full-size [--device cuda]     # a CUDA machine
    .venv/bin/python benchmarks/engines.py --waveform tiny|released [--steps 5,10] [--calls 10]

Tiny checkpoint (default): every graph of omni_ros.runtime.graphs at unit shapes, timed as
  torch eager (the graph module), onnxruntime (the exported file) and TensorRT (an fp16 engine)
  where installed: median of `--repeats` after warm-up, ratio against torch. Then whole units
  through OmniSession per backend (torch's cached eager path, onnxruntime, TensorRT).
--full-size: the released architecture with random weights in bf16 on CUDA (compute cost does
  not depend on the weights): the LLM step, vision, audio and speech-decoder graphs for torch
  eager, torch.compile with CUDA graphs (mode reduce-overhead) and TensorRT where installed.
--waveform SIZE: the waveform stage alone (Step-Audio2 token2wav) on an `assets/token2wav/` folder
  with random weights at "tiny" or "released" dimensions (`write_random_assets`; `--assets DIR`
  reuses or names the folder, default a folder under the system temp dir, kept between runs):
  after `set_voice` (a synthetic voice of `--voice-seconds`), the time of one 1 s unit, i.e. one
  28-code decode call with the vocoder (median of `--calls`), for torch eager (Token2WavModel) and
  onnxruntime (the exported t2w_* graphs), at each `--steps` count, and each backend's peak RSS
  (each runs in a process of its own). The ratio onnxruntime / torch is printed.

Prints a table and appends it, with date and machine, to benchmarks/results/engines.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import append_result  # noqa: E402 - benchmarks/ is the script's folder

from omni_ros.runtime import graphs as G  # noqa: E402

# (graph, what the case is, sizes for graphs.example_inputs)
CASES = [
    ("vision", "one camera frame", {"height": 10 ** 6, "width": 10 ** 6}),   # capped below
    ("audio", "1 s chunk, 10 s of past", {"mel_frames": 104, "past": 500}),
    ("embed_tokens", "1 token", {"tokens": 1}),
    ("llm_step", "1 token, 1,000 past", {"tokens": 1, "past": 1000}),
    ("llm_step", "12 tokens, 1,000 past", {"tokens": 12, "past": 1000}),
    ("lm_head", "1 position", {}),
    ("tts_condition", "20 rows", {"tokens": 20}),
    ("tts_code_embed", "1 code", {"codes": 1}),
    ("tts_step", "1 code, 200 past", {"tokens": 1, "past": 200}),
    ("t2w_encoder", "28 codes, 400 cached frames", {"t2w_codes": 28, "t2w_enc_past": 400}),
    ("t2w_estimator_step", "50 frames, 400 cached", {"t2w_frames": 50, "t2w_est_past": 400}),
    ("t2w_vocoder", "58 frames", {"t2w_mel": 58, "t2w_source": 3840}),
]


def case_sizes(config, sizes: Dict[str, int]) -> Dict[str, int]:
    """The vision case uses the checkpoint's own square image size."""
    out = dict(sizes)
    if "height" in out:
        scale = int(config.slice_config.get("scale_resolution", config.image_size))
        out["height"] = out["width"] = scale - scale % config.vision_config.patch_size
    return out


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3, sync: Callable = lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def fmt(ms: Optional[float], base: Optional[float]) -> str:
    if ms is None:
        return "-"
    return f"{ms:.3f} ({ms / base:.2f}x)" if base else f"{ms:.3f}"


# --- tiny checkpoint: every graph, every backend ------------------------------------------------------
def ort_sessions(folder: Path, threads: int) -> Dict[str, object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return {name: ort.InferenceSession(str(folder / f"{name}.onnx"), options,
                                       providers=["CPUExecutionProvider"])
            for name in G.GRAPHS if (folder / f"{name}.onnx").exists()}


def trt_compute(checkpoint: Path, onnx_dir: Path, work: Path):
    """A TensorRT compute over fp16 engines, or (None, reason)."""
    try:
        from omni_ros.runtime.tensorrt_backend import TrtCompute
        from omni_ros.runtime.tensorrt_build import build_engines, current_gpu, import_tensorrt
        import_tensorrt()
        current_gpu()
    except Exception as error:  # noqa: BLE001 - reported in the table's notes
        return None, str(error)
    build_engines(checkpoint, onnx_dir, work / "trt", precision="fp16", log=lambda *_: None)
    return TrtCompute(checkpoint, work / "trt", device="cuda"), ""


def bench_graphs(checkpoint: Path, work: Path, repeats: int):
    from omni_ros.model.loader import load_model
    from omni_ros.runtime.onnx_export import export_all

    model = load_model(checkpoint, dtype="float32")
    modules = G.build_graphs(model)
    export_all(checkpoint, work / "onnx", log=lambda *_: None)
    sessions = ort_sessions(work / "onnx", torch.get_num_threads())
    trt, trt_note = trt_compute(checkpoint, work / "onnx", work)
    rows = []
    for name, what, sizes in CASES:
        inputs = G.example_inputs(name, model.config, case_sizes(model.config, sizes), t2w=model.token2wav)
        with torch.inference_mode():
            t_torch = median_ms(lambda: modules[name](**inputs), repeats)
        feeds = {k: v.numpy() for k, v in inputs.items()}
        t_ort = None
        if name in sessions:
            t_ort = median_ms(lambda: sessions[name].run(None, feeds), repeats)
        t_trt = None
        if trt is not None:
            cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
            t_trt = median_ms(lambda: trt.run(name, cuda_inputs), repeats, sync=torch.cuda.synchronize)
        rows.append((name, what, t_torch, t_ort, t_trt))
    return rows, trt, trt_note


def bench_units(checkpoint: Path, work: Path, units: int, trt) -> List[tuple]:
    from omni_ros.flow.types import UnitInput
    from omni_ros.model.loader import load_model
    from omni_ros.session.options import SessionOptions
    from omni_ros.session.session import OmniSession
    from omni_ros.runtime.torch_compute import TorchCompute
    from omni_ros.runtime.onnxruntime_backend import OrtCompute

    rng = np.random.default_rng(0)
    inputs = [UnitInput(window_index=k, epoch=0, start_ns=0, end_ns=0,
                        image=(rng.random((480, 640, 3)) * 255).astype(np.uint8),
                        image_stamp_ns=0, audio=(0.1 * rng.standard_normal(16000)).astype(np.float32))
              for k in range(units)]
    computes = [("torch", TorchCompute(load_model(checkpoint, dtype="float32"))),
                ("onnxruntime", OrtCompute(checkpoint, work / "onnx"))]
    if trt is not None:
        computes.append(("tensorrt", trt))
    rows = []
    for label, compute in computes:
        session = OmniSession(compute, SessionOptions(force_listen_count=0, seed=1))
        session.warmup()
        times = {"listen": [], "speak": []}
        for k, unit in enumerate(inputs):
            speak = k % 4 in (1, 2)                  # half the units speak, in two-unit turns
            session.decision_override = speak
            started = time.perf_counter()
            session.run_unit(unit)
            times["speak" if speak else "listen"].append((time.perf_counter() - started) * 1000.0)
        rows.append((label, statistics.median(times["listen"]), statistics.median(times["speak"])))
    return rows


def run_tiny(args) -> int:
    with tempfile.TemporaryDirectory(prefix="omni_engines_") as tmp:
        work = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        if checkpoint is None:
            from omni_ros.model.checkpoint import write_checkpoint
            checkpoint = write_checkpoint(work / "ckpt", seed=0)
        rows, trt, trt_note = bench_graphs(checkpoint, work, args.repeats)
        unit_rows = bench_units(checkpoint, work, args.units, trt)
    lines = ["Per graph, median ms of the call (ratio against torch eager):", "",
             "| graph | case | torch eager | onnxruntime | tensorrt fp16 |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {w} | {fmt(a, None)} | {fmt(b, a)} | {fmt(c, a)} |" for n, w, a, b, c in rows]
    base = unit_rows[0]
    lines += ["", f"Whole units through OmniSession ({args.units} units, 640x480 frame + 1 s "
              "audio each, half of them speaking), median ms (ratio against torch):", "",
              "| backend | listening unit | speaking unit |", "|---|---|---|"]
    lines += [f"| {label} | {fmt(l, base[1] if label != 'torch' else None)} | "
              f"{fmt(s, base[2] if label != 'torch' else None)} |" for label, l, s in unit_rows]
    if trt is None:
        lines += ["", f"TensorRT not run: {trt_note}"]
    append_result("engines", f"Engines, tiny checkpoint ({args.repeats} repeats)", "\n".join(lines))
    return 0


# --- full size on CUDA -----------------------------------------------------------------------------
def full_size_model(device: str):
    from omni_ros.model.config import OmniConfig
    from omni_ros.model.loader import build_model

    model = build_model(OmniConfig(), device="meta").to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.to(torch.bfloat16).eval()


def run_full_size(args) -> int:
    if not torch.cuda.is_available():
        print("--full-size needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    model = full_size_model(args.device)
    cases = [c for c in CASES if c[0] in ("vision", "audio", "llm_step", "lm_head", "tts_step")]
    sync = torch.cuda.synchronize
    rows = []
    for name, what, sizes in cases:
        module = G.GRAPHS[name].build(model).eval()
        inputs = {k: v.to(args.device) for k, v in
                  G.example_inputs(name, model.config, case_sizes(model.config, sizes)).items()}
        inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
        with torch.inference_mode():
            t_eager = median_ms(lambda: module(**inputs), args.repeats, sync=sync)
            compiled = torch.compile(module, mode="reduce-overhead", dynamic=False)
            t_graph = median_ms(lambda: compiled(**inputs), args.repeats, warmup=5, sync=sync)
        rows.append((name, what, t_eager, t_graph))
    lines = ["Released architecture, random bf16 weights, median ms (ratio against eager):", "",
             "| graph | case | torch eager | torch.compile + CUDA graphs |", "|---|---|---|---|"]
    lines += [f"| {n} | {w} | {fmt(a, None)} | {fmt(b, a)} |" for n, w, a, b in rows]
    lines += ["", "TensorRT engines of the full-size graphs: build them with "
              "`omni_ros_build_engines MODEL --backend tensorrt` and run the tiny-table path "
              "with `--checkpoint MODEL` on the same machine."]
    append_result("engines", "Engines, full-size architecture on CUDA", "\n".join(lines))
    return 0


# --- the waveform stage alone: torch eager vs onnxruntime ------------------------------------------
def waveform_worker(args) -> int:
    """One backend in a process of its own: JSON with the per-call times and the peak RSS."""
    import json
    import resource

    from omni_ros.model.token2wav.model import Token2WavModel, synthetic_voice
    from omni_ros.session.waveform import WaveformStream
    from omni_ros.model.token2wav.voice import PROMPT_RATE, Voice

    assets = Path(args.assets)
    started = time.perf_counter()
    if args.waveform_worker == "torch":
        compute = Token2WavModel.from_folder(assets)
    else:
        from omni_ros.runtime.onnxruntime_backend import waveform_compute
        compute = waveform_compute(assets, args.onnx_dir, threads=torch.get_num_threads())
    result = {"load_s": time.perf_counter() - started, "steps": {}}
    voice = Voice.from_samples(synthetic_voice(args.voice_seconds), PROMPT_RATE, "synthetic voice")
    rng = np.random.default_rng(0)
    codes = lambda: rng.integers(0, 6561, 25).tolist()          # noqa: E731 - a 1 s unit's codes
    for steps in args.steps:
        stream = WaveformStream(compute, steps=steps)
        t0 = time.perf_counter()
        stream.set_voice(voice)
        set_voice_ms = (time.perf_counter() - t0) * 1000.0
        stream.push(codes(), turn_start=True, end_of_turn=False)         # warm-up: three calls
        for _ in range(2):
            stream.push(codes(), turn_start=False, end_of_turn=False)
        times = []
        for _ in range(args.calls):
            before = stream.calls
            t0 = time.perf_counter()
            wav = stream.push(codes(), turn_start=False, end_of_turn=False)
            times.append((time.perf_counter() - t0) * 1000.0)
            assert stream.calls == before + 1 and wav.shape == (24000,), (stream.calls, wav.shape)
        result["steps"][str(steps)] = {"set_voice_ms": set_voice_ms, "call_ms": statistics.median(times),
                                       "call_ms_min": min(times)}
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result["prompt_codes"] = int(stream.prompt.codes.shape[1])
    print("RESULT " + json.dumps(result))
    return 0


def run_waveform(args) -> int:
    import json
    import subprocess

    from omni_ros.model.token2wav import assets as A
    from omni_ros.model.token2wav.model import Token2WavModel, write_random_assets
    from omni_ros.runtime import graphs as graphs_module
    from omni_ros.runtime.onnx_export import export_waveform

    size = args.waveform
    assets = Path(args.assets) if args.assets else Path(tempfile.gettempdir()) / f"omni_ros_t2w_{size}"
    if not all((assets / f).is_file() for f in A.RELEASED_FILES):
        started = time.perf_counter()
        write_random_assets(assets, size=size, seed=0)
        print(f"[waveform] wrote {size} random assets to {assets} in {time.perf_counter() - started:.1f} s")
    onnx_dir = assets.parent / (assets.name + "_onnx")
    # exported graphs older than the assets or than the code that defines them are exported again
    code = [Path(graphs_module.__file__), Path(graphs_module.__file__).with_name("onnx_export.py"),
            *Path(A.__file__).parent.glob("*.py")]
    stamp = max(p.stat().st_mtime for p in [*(assets / f for f in A.RELEASED_FILES), *code])
    if not all((onnx_dir / f"{n}.onnx").is_file() and (onnx_dir / f"{n}.onnx").stat().st_mtime >= stamp
               for n in graphs_module.WAVEFORM_GRAPHS):
        started = time.perf_counter()
        export_waveform(Token2WavModel.from_folder(assets), onnx_dir, log=lambda *_: None)
        print(f"[waveform] exported the t2w_* graphs to {onnx_dir} in {time.perf_counter() - started:.1f} s")
    results = {}
    for backend in ("torch", "onnxruntime"):
        command = [sys.executable, str(Path(__file__).resolve()), "--waveform-worker", backend,
                   "--assets", str(assets), "--onnx-dir", str(onnx_dir), "--calls", str(args.calls),
                   "--steps", ",".join(map(str, args.steps)), "--voice-seconds", str(args.voice_seconds)]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            return 1
        results[backend] = json.loads(lines[-1][len("RESULT "):])
    t, o = results["torch"], results["onnxruntime"]
    lines = [f"Waveform stage, {size} random assets, {args.voice_seconds:g} s voice "
             f"({t['prompt_codes']} prompt codes), {torch.get_num_threads()} threads; ms per 1 s unit "
             f"(one 28-code decode call with the vocoder), median (min) of {args.calls}:", "",
             "| token2wav_steps | torch eager | onnxruntime | ratio ort/torch, median (min) | "
             "set_voice torch / ort |", "|---|---|---|---|---|"]
    for steps in map(str, args.steps):
        a, b = t["steps"][steps], o["steps"][steps]
        lines.append(f"| {steps} | {a['call_ms']:.1f} ({a['call_ms_min']:.1f}) | "
                     f"{b['call_ms']:.1f} ({b['call_ms_min']:.1f}) | {b['call_ms'] / a['call_ms']:.2f}x "
                     f"({b['call_ms_min'] / a['call_ms_min']:.2f}x) | "
                     f"{a['set_voice_ms']:.0f} / {b['set_voice_ms']:.0f} ms |")
    lines += ["", f"Peak RSS: torch {t['peak_rss_mib']:.0f} MiB, onnxruntime {o['peak_rss_mib']:.0f} MiB "
              f"(each process: imports, weights, the prompt front end, both step counts). "
              f"Load: torch {t['load_s']:.1f} s, onnxruntime {o['load_s']:.1f} s."]
    append_result("engines", f"Waveform stage ({size})", "\n".join(lines))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--units", type=int, default=40)
    parser.add_argument("--checkpoint", default="", help="checkpoint folder (default: a tiny one)")
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--waveform", choices=("tiny", "released"), default=None,
                        help="benchmark the waveform stage alone at these dimensions")
    parser.add_argument("--assets", default="", help="assets/token2wav folder (--waveform; written if absent)")
    parser.add_argument("--steps", type=lambda v: [int(x) for x in v.split(",")], default=[5, 10])
    parser.add_argument("--calls", type=int, default=10, help="timed decode calls per step count (--waveform)")
    parser.add_argument("--voice-seconds", type=float, default=6.0)
    parser.add_argument("--waveform-worker", choices=("torch", "onnxruntime"), help=argparse.SUPPRESS)
    parser.add_argument("--onnx-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.waveform_worker:
        return waveform_worker(args)
    if args.waveform:
        return run_waveform(args)
    return run_full_size(args) if args.full_size else run_tiny(args)


if __name__ == "__main__":
    sys.exit(main())
