"""Export graphs of a released-size checkpoint to ONNX one by one, check each with onnx.checker
(the path form, past 2 GB), run it once in onnxruntime against torch, and print a table.

    .venv/bin/python benchmarks/released_export.py /tmp/omni_released --out /tmp/released_onnx \
        [--precision fp32|fp16] [--graphs vision,audio,...] [--keep]

The checkpoint is loaded memory-mapped in its stored bfloat16 (its waveform stage, `assets/token2wav`,
in float32 as load_model gives it). The default graphs are every graph, the waveform stage's (`t2w_*`)
included; fp32 leaves out the LLM step.
fp32: each graph's own modules are made float32 just before its export (constant folding) and
handed back to their stored dtype after it, so memory holds one graph's float32 weights at a time; the LLM
step (`llm_step`, 8 B parameters: about 33 GB in float32) is left out by default: it does not fit
this way in a machine of 24 GB. The reference is torch in float32.
fp16: every graph, the LLM step included, is streamed (onnx_export.export_graph_streamed: traced
over a weight shell, its float16 weights written one tensor at a time; the vocoder stays float32),
so memory is the mapped shards plus one tensor. onnxruntime runs it at its extended optimisation
level; the reference is torch in the checkpoint's bfloat16 (float32 for the small graphs).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from omni_ros.model.loader import load_model  # noqa: E402
from omni_ros.runtime import graphs as G  # noqa: E402
from omni_ros.runtime.onnx_export import (FLOAT32_ONLY, export_graph,  # noqa: E402
                                          export_graph_streamed)

DEFAULT = ",".join(["vision", "audio", "tts_condition", "tts_code_embed", "tts_step", "embed_tokens", "lm_head",
                    *G.WAVEFORM_GRAPHS])
DEFAULT_FP16 = ",".join(["vision", "audio", "tts_condition", "tts_code_embed", "tts_step", "embed_tokens",
                         "lm_head", "llm_step", *G.WAVEFORM_GRAPHS])
FLOAT32_REFERENCE_LIMIT = 4e9      # bytes of float32 weights a reference may hold
# onnxruntime's CPU provider has no float16 matrix product on x86: it turns a float16 graph's
# weights into float32 copies. A graph whose float32 weights pass this is loaded (its types and
# shapes checked by the session) but not run here.
ORT_RUN_LIMIT = 8e9


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reference(model, name: str, example) -> tuple:
    """The graph's torch outputs on `example`, in the module's current dtype."""
    spec = G.GRAPHS[name]
    module = spec.build(model).eval()
    dtype = next(module.parameters()).dtype
    args = [example[k].to(dtype) if example[k].is_floating_point() else example[k] for k in spec.inputs]
    with torch.no_grad():
        expected = module(*args)
    return expected if isinstance(expected, tuple) else (expected,)


def run_once(model, name: str, path: Path, expected=None, load_only: bool = False):
    """Largest |onnxruntime - torch| over the outputs, relative to the torch outputs' peak; with
    `load_only` the session is created (the graph's types and shapes checked) and None returned."""
    import onnxruntime as ort

    spec = G.GRAPHS[name]
    example = G.model_example_inputs(name, model)
    options = ort.SessionOptions()
    # onnxruntime 1.32's CPU layout transformation crashes on float16 convolutions
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if load_only:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return None
    if expected is None:
        expected = reference(model, name, example)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in session.get_inputs()}
    feed = {k: (example[k].half() if types[k] == "tensor(float16)" else example[k]).numpy()
            for k in spec.inputs if k in types}
    got = session.run(None, feed)
    del session
    worst = 0.0
    for a, b in zip(got, expected):
        b = b.float().numpy()
        worst = max(worst, float(np.abs(a.astype(np.float32) - b).max() / max(1e-12, np.abs(b).max())))
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_path")
    p.add_argument("--out", required=True)
    p.add_argument("--graphs", default=None, help=f"default: {DEFAULT} (fp32), {DEFAULT_FP16} (fp16)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--keep", action="store_true", help="keep the files (default: one graph's on disk at a time)")
    args = p.parse_args(argv)
    out = Path(args.out)
    half = args.precision == "fp16"
    graphs = args.graphs or (DEFAULT_FP16 if half else DEFAULT)
    started = time.perf_counter()
    model = load_model(args.model_path, device="cpu", dtype="bfloat16")
    print(f"loaded in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for name in [g.strip() for g in graphs.split(",") if g.strip()]:
        module = G.GRAPHS[name].build(model)
        stored = next(module.parameters()).dtype     # bfloat16; float32 for the waveform stage
        weight_bytes = 4 * sum(p.numel() for p in module.parameters())
        small = weight_bytes <= FLOAT32_REFERENCE_LIMIT
        if not half or small:
            module.float()                   # this graph's weights only
        ref_dtype = "float32" if (not half or small) else "bfloat16"
        t0 = time.perf_counter()
        try:
            load_only = half and weight_bytes > ORT_RUN_LIMIT
            if half:
                expected = None if load_only else reference(model, name, G.model_example_inputs(name, model))
                dtype = torch.float32 if name in FLOAT32_ONLY else torch.float16
                if small:
                    module.to(stored)            # the export reads the stored weights
                t0 = time.perf_counter()
                written = export_graph_streamed(model, name, out / f"{name}.onnx", dtype)
            else:
                expected = None
                written = export_graph(model, name, out / f"{name}.onnx")
            export_s = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in out.glob(f"{name}.onnx*"))
            t1 = time.perf_counter()
            error = run_once(model, name, out / f"{name}.onnx", expected, load_only)
            ran = f"{time.perf_counter() - t1:.1f} s" + (" (session only)" if error is None else "")
            rows.append((name, f"{size / 1e9:.2f} GB{' (external data)' if written.suffix == '.data' else ''}",
                         f"{export_s:.0f} s", ran, "not run" if error is None else f"{error:.1e}",
                         ref_dtype, f"{peak_rss_gb():.1f} GB"))
        except Exception as exc:  # noqa: BLE001 - one graph failing does not lose the others
            rows.append((name, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
                         "", "", "", "", ""))
        module.to(stored)
        if not args.keep:
            for f in out.glob(f"{name}.onnx*"):
                f.unlink()                   # one graph's files on disk at a time
        print(rows[-1], flush=True)
    print(f"\n{args.precision} ONNX")
    print("| graph | ONNX size | export | onnxruntime run | worst error (of peak) | torch reference | "
          "peak RSS so far |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
