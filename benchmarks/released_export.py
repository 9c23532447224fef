"""Export graphs of a released-size checkpoint to ONNX one by one, check each with onnx.checker
(the path form, past 2 GB), run it once in onnxruntime against torch, and print a table.

    .venv/bin/python benchmarks/released_export.py /tmp/omni_released --out /tmp/released_onnx \
        [--graphs vision,audio,tts_condition,tts_code_embed,tts_step,embed_tokens,lm_head]

The checkpoint is loaded memory-mapped in bfloat16; each graph's own modules are made float32
just before its export and handed back to bfloat16 after it, so memory holds one graph's float32
weights at a time. The LLM step (`llm_step`, 8 B parameters: about 33 GB in float32) is left out by
default: it does not fit this way in a machine of 24 GB.
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
from omni_ros.runtime.onnx_export import export_graph  # noqa: E402

DEFAULT = "vision,audio,tts_condition,tts_code_embed,tts_step,embed_tokens,lm_head"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_once(model, name: str, path: Path) -> float:
    """Largest |onnxruntime - torch| over the outputs, relative to the torch outputs' peak."""
    import onnxruntime as ort

    spec = G.GRAPHS[name]
    example = G.example_inputs(name, model.config, None, t2w=None)
    with torch.no_grad():
        expected = spec.build(model).eval()(*(example[k] for k in spec.inputs))
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    got = session.run(None, {k: example[k].numpy() for k in spec.inputs if k in names})
    worst = 0.0
    for a, b in zip(got, expected):
        b = b.float().numpy()
        worst = max(worst, float(np.abs(a - b).max() / max(1e-12, np.abs(b).max())))
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_path")
    p.add_argument("--out", required=True)
    p.add_argument("--graphs", default=DEFAULT)
    args = p.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    model = load_model(args.model_path, device="cpu", dtype="bfloat16")
    print(f"loaded in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for name in [g.strip() for g in args.graphs.split(",") if g.strip()]:
        module = G.GRAPHS[name].build(model)
        module.float()                       # this graph's weights only
        t0 = time.perf_counter()
        try:
            written = export_graph(model, name, out / f"{name}.onnx")
            export_s = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in out.glob(f"{name}.onnx*"))
            t1 = time.perf_counter()
            error = run_once(model, name, out / f"{name}.onnx")
            rows.append((name, f"{size / 1e9:.2f} GB{' (external data)' if written.suffix == '.data' else ''}",
                         f"{export_s:.0f} s", f"{time.perf_counter() - t1:.1f} s", f"{error:.1e}",
                         f"{peak_rss_gb():.1f} GB"))
        except Exception as exc:  # noqa: BLE001 - one graph failing does not lose the others
            rows.append((name, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", "", "", "", ""))
        module.to(torch.bfloat16)
        for f in out.glob(f"{name}.onnx*"):
            f.unlink()                       # one graph's files on disk at a time
        print(rows[-1], flush=True)
    print("\n| graph | ONNX size | export | onnxruntime run | worst error (of peak) | peak RSS so far |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
