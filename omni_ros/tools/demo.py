"""omni_ros_demo: the whole graph on a generated scene, as separate processes over DDS.

Writes a tiny checkpoint if none is given, starts omni_flow_clock and omni_node (as
omni_ros_bringup does), a scene player (camera frames and a spoken request) and a recorder that
prints what came out: windows, listen/speak per window, speech seconds, alerts, compute time.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from omni_ros.tools.bringup import graph_commands
from omni_ros.tools.processes import ProcessGroup


def ensure_tiny_checkpoint(folder: Path, seed: int) -> None:
    """Write the demo's tiny checkpoint, again if one left by an older omni_ros no longer loads."""
    from omni_ros.model.checkpoint import write_checkpoint
    from omni_ros.model.loader import CheckpointError, load_model

    if (folder / "config.json").exists():
        try:
            load_model(folder)
            return
        except CheckpointError as error:
            print(f"[omni_ros_demo] {folder} is out of date ({error}); rewriting it", flush=True)
    print(f"[omni_ros_demo] writing a tiny random-weight checkpoint to {folder}", flush=True)
    write_checkpoint(folder, seed=seed)


def ensure_onnx_files(model_path: Path) -> Path:
    """The ONNX files of the checkpoint in MODEL/engines/onnxruntime, exported unless the manifest
    there already matches it."""
    from omni_ros.runtime.engine_files import EngineMismatch, check_manifest
    from omni_ros.runtime.onnx_export import export_all
    from omni_ros.runtime.exported_compute import required_components

    engine_dir = model_path / "engines" / "onnxruntime"
    try:
        check_manifest(engine_dir, model_path, "onnx", required_components(model_path))
        print(f"[omni_ros_demo] ONNX files in {engine_dir} match the checkpoint", flush=True)
    except EngineMismatch as reason:
        print(f"[omni_ros_demo] exporting ONNX files ({str(reason).split(';')[0]})", flush=True)
        export_all(model_path, engine_dir, log=lambda line: print(f"[omni_ros_demo] {line}", flush=True))
    return engine_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="omni_ros_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None,
                        help="checkpoint folder (default: a tiny one in checkpoints/tiny)")
    parser.add_argument("--duration-sec", type=float, default=20.0)
    parser.add_argument("--output", default="demo_output", help="summary.json and speech.wav")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-level", default="warn", help="node log level")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                        help="onnxruntime: export the checkpoint's graphs to ONNX first (once)")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)

    model_path = Path(options.model_path or "checkpoints/tiny").resolve()
    if options.model_path is None:
        ensure_tiny_checkpoint(model_path, options.seed)
    extra = ["-p", f"seed:={options.seed}"]
    if options.backend == "onnxruntime":
        extra += ["-p", f"engine_dir:={ensure_onnx_files(model_path)}"]
    env = os.environ.copy()
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    group = ProcessGroup()
    try:
        for command in graph_commands(str(model_path), backend=options.backend, extra=extra,
                                      log_level=options.log_level):
            group.start(command, env=env, node=True)
        recorder = group.start(
            [sys.executable, "-m", "omni_ros.tools.recorder",
             "--duration-sec", str(options.duration_sec + 2.0), "--output", options.output,
             "--timeline", str(Path(options.output) / "timeline.png")],
            env=env)
        group.start([sys.executable, "-m", "omni_ros.tools.scene_player",
                     "--duration-sec", str(options.duration_sec)], env=env)
        status = recorder.wait()
    except KeyboardInterrupt:
        status = 130
    finally:
        group.stop()
    if status == 0:
        print(f"[omni_ros_demo] summary.json, speech.wav and timeline.png in "
              f"{Path(options.output).resolve()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
