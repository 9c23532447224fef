"""The TensorRT backend: the compute graphs as TensorRT engines on a CUDA GPU.

Engines come from `omni_ros_build_engines MODEL --backend tensorrt` (see tensorrt_build). They run
with PyTorch CUDA tensors as their buffers (`set_tensor_address` + `execute_async_v3` on the
current torch stream), so no pycuda is needed and the session's host code (sampling, caches)
stays in torch on the same device. The engine folder's manifest must name this checkpoint, this
TensorRT version and this GPU, or the backend refuses to start and says how to rebuild.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import torch

from .engine_files import check_manifest
from .exported_compute import ExportedCompute
from .registry import BackendError, BackendSettings, omni_session
from .tensorrt_build import TensorRTUnavailable, current_gpu, import_tensorrt


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64,
             trt.DataType.BOOL: torch.bool, trt.DataType.INT8: torch.int8}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    return table[dtype]


class _Engine:
    """One deserialized engine, its execution context and its I/O names and dtypes."""

    def __init__(self, trt, runtime, path: Path):
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not load {path}; rebuild it with omni_ros_build_engines")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}


class TrtCompute(ExportedCompute):
    name = "tensorrt"

    def __init__(self, model_path, engine_dir, device: str = "cuda"):
        super().__init__(model_path, device=device, dtype=torch.float32)
        trt = import_tensorrt()
        components = self.components
        index = self.device.index if self.device.index is not None else 0
        manifest = check_manifest(engine_dir, model_path, "tensorrt", components,
                                  versions_required={"tensorrt": trt.__version__},
                                  gpu=current_gpu(index))
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(self.device):
            self.engines: Dict[str, _Engine] = {
                n: _Engine(trt, self.runtime, Path(engine_dir) / manifest.components[n].file)
                for n in components}
        self._empty_buffer = torch.zeros(1, device=self.device)   # the address given to empty tensors

    def run(self, name: str, inputs: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        e = self.engines[name]
        ctx = e.context
        held = []
        for n in e.inputs:
            t = inputs[n].to(self.device, e.dtypes[n]).contiguous()
            held.append(t)
            ctx.set_input_shape(n, tuple(t.shape))
            ctx.set_tensor_address(n, t.data_ptr() if t.numel() else self._empty_buffer.data_ptr())
        outputs = []
        for n in e.outputs:
            t = torch.empty(tuple(ctx.get_tensor_shape(n)), dtype=e.dtypes[n], device=self.device)
            ctx.set_tensor_address(n, t.data_ptr() if t.numel() else self._empty_buffer.data_ptr())
            outputs.append(t)
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT engine {name!r} failed to run")
        # engines built from float16 ONNX have float16 I/O: the session works in float32
        return [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in outputs]


class TrtBackend:
    name = "tensorrt"

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings

    def engine_dir(self) -> Path:
        return Path(self.settings.engine_dir or Path(self.settings.model_path) / "engines" / "tensorrt")

    def create_session(self):
        device = self.settings.device if self.settings.device.startswith("cuda") else "cuda"
        try:
            compute = TrtCompute(self.settings.model_path, self.engine_dir(), device=device)
        except TensorRTUnavailable as error:
            raise BackendError(f"backend tensorrt: {error}") from error
        return omni_session(compute, self.settings)
