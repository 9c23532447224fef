"""The onnxruntime backend: the graphs of omni_ros.runtime.graphs exported to ONNX, run by
onnxruntime (CPUExecutionProvider; CUDAExecutionProvider first when `device` is cuda[:N] and the
installed onnxruntime has it).

Build the files once with `omni_ros_build_engines MODEL_PATH --backend onnxruntime` (default
folder `MODEL_PATH/engines/onnxruntime`, the backend's default `engine_dir`). At start the folder's
manifest is checked against the checkpoint (omni_ros.runtime.engine_files.check_manifest); a
mismatch is a BackendError naming what differs and the rebuild command. Config, tokenizer and
special ids are read from the checkpoint folder; no torch weights are loaded, except the
waveform stage's prompt front end (speech tokenizer, CAM++, 24 kHz mel), which runs on the host
from `assets/token2wav/` once per voice, as for every backend.

Threads: onnxruntime's default intra-op thread count (one per physical core) unless the
environment variable OMNI_ROS_ORT_THREADS sets it (an integer; 0 = onnxruntime's default). Pool
threads do not spin-wait between runs (`session.intra_op.allow_spinning` 0): a unit is many short
graph runs with host code in between, and spinning threads took the CPU from it (a tiny-model
listening unit went from about 100 ms to about 20 ms on a busy 2-core machine).

Precision: the folder's graphs are float32 or float16 (`omni_ros_build_engines --onnx-precision`,
recorded per graph in the manifest). Inputs are converted to each graph's own input types and
floating outputs come back float32, so the session above sees no difference. Float16 graphs run
at onnxruntime's extended optimisation level, not its highest: onnxruntime 1.32's CPU layout
transformation (NCHWc) crashes the process on float16 convolutions.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from omni_ros.runtime.engine_files import check_manifest
from omni_ros.runtime.exported_compute import ExportedCompute
from omni_ros.runtime.registry import BackendError, BackendSettings, omni_session

THREADS_ENV = "OMNI_ROS_ORT_THREADS"
_NP_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16,
              "tensor(int32)": np.int32}


def default_engine_dir(model_path) -> Path:
    return Path(model_path) / "engines" / "onnxruntime"


def providers_for(device: str) -> List:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" in available:
            _, _, index = str(device).partition(":")
            return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
        logging.getLogger(__name__).warning(
            "device %s requested but this onnxruntime has no CUDAExecutionProvider (has: %s); "
            "running on the CPU", device, ", ".join(available))
    return ["CPUExecutionProvider"]


def _threads() -> int:
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return 0
    try:
        return max(0, int(raw))
    except ValueError:
        raise BackendError(f"{THREADS_ENV}={raw!r} is not an integer") from None


class _Graph:
    """One InferenceSession with its input names/dtypes and output names fixed once."""

    def __init__(self, path: Path, providers, threads: int, half: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if half
                                            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        # Many short runs with host code in between: idle pool threads must not spin-wait and
        # take the CPU from the session's own thread (and from the ROS executors).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.dtypes = [_NP_DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        feed = {name: np.ascontiguousarray(inputs[name].detach().numpy(), dtype=dtype)
                for name, dtype in zip(self.inputs, self.dtypes)}
        return [torch.from_numpy(a.astype(np.float32) if a.dtype == np.float16 else a)
                for a in self.session.run(self.outputs, feed)]


class OrtCompute(ExportedCompute):
    """The Compute protocol (omni_ros.session.compute) over exported ONNX graphs."""

    name = "onnxruntime"

    def __init__(self, model_path, engine_dir=None, device: str = "cpu", check: bool = True):
        # tensors cross the interface on the host; a CUDA provider copies them itself
        super().__init__(model_path, device="cpu", dtype=torch.float32)
        folder = Path(model_path)
        self.engine_dir = Path(engine_dir) if engine_dir else default_engine_dir(folder)
        half = set()
        if check:
            manifest = check_manifest(self.engine_dir, folder, "onnx", self.components)
            half = {n for n, e in manifest.components.items() if e.precision == "fp16"}
        self.providers = providers_for(device)
        threads = _threads()
        self.graphs: Dict[str, _Graph] = {
            n: _Graph(self.engine_dir / f"{n}.onnx", self.providers, threads, n in half)
            for n in self.components}

    def run(self, name: str, inputs: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        return self.graphs[name](inputs)


def waveform_compute(asset_dir, onnx_dir, device: str = "cpu", threads: int = None):
    """The waveform stage alone over the t2w_* ONNX files in `onnx_dir` (as written by
    onnx_export.export_waveform or export_all) for the `assets/token2wav/` folder `asset_dir`: a
    WaveformCompute for omni_ros.session.waveform.WaveformStream (benchmarks, tools)."""
    from omni_ros.model.token2wav import assets as A
    from omni_ros.runtime import graphs as G
    from omni_ros.runtime.exported_compute import ExportedWaveform

    A.check_layout(Path(asset_dir))
    providers = providers_for(device)
    count = _threads() if threads is None else threads
    graphs = {n: _Graph(Path(onnx_dir) / f"{n}.onnx", providers, count) for n in G.WAVEFORM_GRAPHS}
    return ExportedWaveform(lambda name, inputs: graphs[name](inputs), asset_dir, torch.device("cpu"))


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings

    def compute(self) -> OrtCompute:
        from omni_ros.model.loader import CheckpointError

        s = self.settings
        if s.dtype not in ("float32", "fp32"):
            logging.getLogger(__name__).warning(
                "dtype %s: the onnxruntime backend runs the exported float32 graphs", s.dtype)
        try:
            return OrtCompute(s.model_path, s.engine_dir or None, device=s.device)
        except CheckpointError as error:
            raise BackendError(str(error)) from error
        except ImportError as error:
            raise BackendError(f"the onnxruntime backend needs the onnxruntime package: {error}") from error

    def create_session(self):
        return omni_session(self.compute(), self.settings)
