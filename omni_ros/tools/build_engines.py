"""omni_ros_build_engines: export a checkpoint's graphs for the onnxruntime or TensorRT backend.

    omni_ros_build_engines MODEL_PATH [--backend onnxruntime|tensorrt] [--out DIR]
                           [--precision fp16] [--onnx-precision fp32|fp16] [--device cpu]

onnxruntime: the ONNX files and manifest.json in DIR (default MODEL_PATH/engines/onnxruntime).
tensorrt: the ONNX files in DIR/onnx, then TensorRT engines and manifest.json in DIR (default
MODEL_PATH/engines/tensorrt), built for the GPU of this machine.

--onnx-precision fp32 (default) loads the checkpoint in float32 and exports with constant folding;
fp16 loads it memory-mapped in its stored dtype and writes float16 graphs one weight at a time
(the vocoder stays float32): half the files and the memory of the weights themselves, the way to
export a released-size checkpoint on a host without 40 GB of free memory.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

BACKENDS = ("onnxruntime", "tensorrt")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="omni_ros_build_engines", description=__doc__.splitlines()[0])
    parser.add_argument("model_path", help="checkpoint folder")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--out", default=None, help="output folder (default: MODEL_PATH/engines/BACKEND)")
    parser.add_argument("--precision", default="fp16",
                        help="TensorRT engine precision (fp16, bf16, fp32)")
    parser.add_argument("--onnx-precision", default="fp32", choices=("fp32", "fp16"),
                        help="precision of the exported ONNX graphs (fp16: streamed, half the memory)")
    parser.add_argument("--device", default="cpu", help="torch device used for the ONNX export")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from omni_ros.model.loader import CheckpointError
    from omni_ros.runtime.onnx_export import export_all
    from omni_ros.runtime.registry import BackendError

    model_path = Path(args.model_path).resolve()
    out = Path(args.out).resolve() if args.out else model_path / "engines" / args.backend
    started = time.perf_counter()
    try:
        if args.backend == "onnxruntime":
            manifest = export_all(model_path, out, device=args.device, precision=args.onnx_precision)
        else:
            from omni_ros.runtime import tensorrt_build                 # only with TensorRT
            try:
                tensorrt_build.import_tensorrt()          # fail before a long export
                onnx_dir = out / "onnx"
                export_all(model_path, onnx_dir, device=args.device, precision=args.onnx_precision)
                manifest = tensorrt_build.build_engines(model_path, onnx_dir, out, args.precision)
            except tensorrt_build.TensorRTUnavailable as error:
                print(f"omni_ros_build_engines: {error}", file=sys.stderr)
                return 2
    except (CheckpointError, BackendError) as error:
        print(f"omni_ros_build_engines: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"omni_ros_build_engines: the {args.backend} backend cannot be built here: {error}",
              file=sys.stderr)
        return 2
    components = ", ".join(sorted(getattr(manifest, "components", {}) or {}))
    print(f"[omni_ros_build_engines] wrote {out} ({components}; manifest.json) "
          f"in {time.perf_counter() - started:.1f} s")
    for name, note in (getattr(manifest, "notes", {}) or {}).items():
        print(f"[omni_ros_build_engines] {name}: {note}")
    print(f"[omni_ros_build_engines] use it with: -p backend:={args.backend} -p engine_dir:={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
