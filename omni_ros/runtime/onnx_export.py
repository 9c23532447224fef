"""Export the compute graphs of omni_ros.runtime.graphs to ONNX (opset 18) with a manifest.

The TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) is used: on these graphs (explicit
matmul attention in the decoders and the audio encoder, transformers' SDPA without grouped heads in
SigLIP) it keeps every dynamic axis symbolic, including an empty past (P = 0, the first audio chunk
and the first LLM/TTS step) and a single new token, which test/test_onnx_export.py checks against the
torch modules. The waveform stage's graphs (`t2w_*`: the flow encoder, one Euler step of the
flow-matching estimator, the HiFT vocoder, the speaker projection) export the same way, their
zero-length caches (a first chunk) included; its prompt front end (speech tokenizer, CAM++, 24 kHz
mel) is not exported: every backend runs it on the host from the checkpoint's `assets/token2wav/`,
once per voice. Files larger than 2 GB are written with their weights in one external-data file
`<graph>.onnx.data` next to `<graph>.onnx`.
"""
from __future__ import annotations

import copy
import datetime
import shutil
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from omni_ros.runtime import graphs as G
from omni_ros.runtime.engine_files import (Manifest, checkpoint_fingerprint, entry_for_file,
                                           write_manifest)

OPSET = 18
_PROTOBUF_LIMIT = 2 * 1024 ** 3 - 64 * 1024 ** 2      # keep a margin below protobuf's 2 GiB


# Graphs whose 1-D convolutions are exported as 2-D ones over [B, C, 1, T]: onnxruntime runs its
# blocked 2-D convolution kernels on them (same weights, same results to float rounding).
CONV_AS_2D = ("t2w_vocoder",)


class _Conv1dAs2d(nn.Module):
    """A Conv1d / ConvTranspose1d computed by its 2-D twin on [B, C, 1, T]."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        transpose = isinstance(conv, nn.ConvTranspose1d)
        kind = nn.ConvTranspose2d if transpose else nn.Conv2d
        extra = {"output_padding": (0, conv.output_padding[0])} if transpose else {}
        self.conv = kind(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]), stride=(1, conv.stride[0]),
                         padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]), groups=conv.groups,
                         bias=conv.bias is not None, **extra)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight.detach().unsqueeze(2))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


def convs_as_2d(module: nn.Module) -> nn.Module:
    """A copy of `module` whose Conv1d / ConvTranspose1d (zero-padded) run as 2-D convolutions."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)) and child.padding_mode == "zeros" \
                    and not isinstance(child.padding, str):
                setattr(parent, child_name, _Conv1dAs2d(child))
    return module


def _trace(module: nn.Module, spec, args, path: Path, **options) -> None:
    """torch.onnx.export (TorchScript) of `module` as graph `spec`, its names and dynamic axes."""
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(spec.inputs),
                          output_names=list(spec.outputs),
                          dynamic_axes={k: dict(v) for k, v in spec.dynamic.items()},
                          dynamo=False, **options)


def export_graph(model, name: str, path, opset: int = OPSET,
                 sizes: Optional[Dict[str, int]] = None) -> Path:
    """Export graph `name` of a loaded OmniModel to `path` (.onnx) and run onnx.checker on it.
    Returns the path of the external-data file when one was needed, else `path`."""
    import onnx

    spec = G.GRAPHS[name]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = spec.build(model).eval()
    if name in CONV_AS_2D:
        module = convs_as_2d(module)
    device = next(iter(module.parameters())).device
    example = G.model_example_inputs(name, model, sizes)
    args = tuple(example[k].to(device) for k in spec.inputs)
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(prefix=f".{name}_", dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        _trace(module, spec, args, tmp_path, opset_version=opset, do_constant_folding=True)
        written = [p for p in Path(tmp).iterdir() if p.is_file()]
        total = sum(p.stat().st_size for p in written)
        for old in (path, path.with_name(data_name)):
            if old.exists():
                old.unlink()
        if len(written) == 1 and total < _PROTOBUF_LIMIT:
            shutil.move(str(tmp_path), str(path))
            external = False
        else:   # the exporter wrote one file per tensor: gather them into one data file
            proto = onnx.load(str(tmp_path), load_external_data=True)
            onnx.save_model(proto, str(path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
            del proto
            external = True
    onnx.checker.check_model(str(path))          # the path form: works past 2 GB
    return path.with_name(data_name) if external else path


ONNX_DTYPES = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}   # onnx.TensorProto
_ALIGN = 4096


def _weight_shell(module: nn.Module) -> nn.Module:
    """The module tree of `module` without its weights: every parameter a one-element stand-in
    (the traced call supplies the real shapes, see `_WeightsAsInputs`), every buffer the real one.
    The tree is copied without its tensors (deepcopy with every tensor pre-assigned)."""
    memo = {id(t): nn.Parameter(torch.zeros(1, dtype=t.dtype), requires_grad=False)
            for t in module.parameters()}
    memo.update({id(t): t for t in module.buffers()})
    return copy.deepcopy(module, memo)


class _WeightsAsInputs(nn.Module):
    """Calls `shell` with its weights taken from the trailing arguments (each put in its module's
    parameter slot for the call), so the exporter sees them as named graph inputs: it never holds,
    folds or serialises them."""

    def __init__(self, shell: nn.Module, count: int, names: List[str], dtype: torch.dtype) -> None:
        super().__init__()
        self.shell, self.count = shell, count
        self.slots = [(shell.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in names]
        for owner, leaf in [(shell.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2])
                            for n, b in shell.named_buffers() if b.is_floating_point()]:
            owner._buffers[leaf] = owner._buffers[leaf].to(dtype)

    def forward(self, *args):
        kept = [owner._parameters[leaf] for owner, leaf in self.slots]
        try:
            for (owner, leaf), weight in zip(self.slots, args[self.count:]):
                owner._parameters[leaf] = weight
            return self.shell(*args[:self.count])
        finally:
            for (owner, leaf), weight in zip(self.slots, kept):
                owner._parameters[leaf] = weight


def weight_stand_ins(module: nn.Module, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Every weight of `module` as a zero-stride view of one element of `dtype` (its integer
    weights keep their dtype): real tensors of the full shapes that cost a few bytes each."""
    return {name: torch.zeros(1, dtype=dtype if p.is_floating_point() else p.dtype).expand(p.shape)
            for name, p in module.named_parameters()}


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()


def export_graph_streamed(model, name: str, path, dtype: torch.dtype = torch.float16,
                          sizes: Optional[Dict[str, int]] = None) -> Path:
    """Export graph `name` with its weights in `dtype`, written one tensor at a time.

    For graphs whose weights do not fit in memory twice over (the released LLM step: 16.4 GB in
    float16), and for float16 ONNX (what TensorRT builds strongly typed engines from). The graph
    is traced over a weight shell (`_weight_shell`) with the weights as named graph inputs
    (`_WeightsAsInputs`, zero-stride stand-ins); each input that is a weight then becomes an
    initializer whose bytes go, converted from the loaded model one tensor at a time, into
    `<graph>.onnx.data` (4 KiB aligned, so onnxruntime can map it). Peak memory is the loaded model
    plus one tensor. Constant folding is left to the runtime. Returns the data file's path."""
    import onnx

    spec = G.GRAPHS[name]
    if dtype not in ONNX_DTYPES:
        raise ValueError(f"dtype {dtype}: one of {', '.join(map(str, ONNX_DTYPES))}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    real = spec.build(model).eval()
    if name in CONV_AS_2D:
        real = convs_as_2d(real)
    stand_ins = weight_stand_ins(real, dtype)
    wrapper = _WeightsAsInputs(_weight_shell(real), len(spec.inputs), list(stand_ins), dtype)
    example = G.model_example_inputs(name, model, sizes)
    args = tuple(example[k].to(dtype) if example[k].is_floating_point() else example[k]
                 for k in spec.inputs) + tuple(stand_ins.values())
    with tempfile.TemporaryDirectory(prefix=f".{name}_", dir=path.parent) as tmp:
        traced = Path(tmp) / path.name
        named = G.GraphSpec(spec.name, spec.build, [*spec.inputs, *stand_ins], spec.outputs, spec.dynamic)
        _trace(wrapper, named, args, traced, opset_version=OPSET, do_constant_folding=False)
        proto = onnx.load(str(traced))
    del wrapper, stand_ins
    weights = dict(real.named_parameters())
    data_name = path.name + ".data"
    data_path = path.with_name(data_name)
    kept_inputs = []
    offset = 0
    with open(data_path, "wb") as data:
        for graph_input in proto.graph.input:
            tensor = weights.get(graph_input.name)
            if tensor is None:
                kept_inputs.append(graph_input)
                continue
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            blob = _raw_bytes(tensor)
            pad = -offset % _ALIGN
            data.write(b"\0" * pad)
            offset += pad
            data.write(blob)
            init = onnx.TensorProto(name=graph_input.name, dims=list(tensor.shape),
                                    data_type=ONNX_DTYPES.get(tensor.dtype) or onnx.helper.np_dtype_to_tensor_dtype(
                                        tensor.numpy().dtype))
            init.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(blob)))):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
            proto.graph.initializer.append(init)
            offset += len(blob)
            del blob, tensor
    del proto.graph.input[:]
    proto.graph.input.extend(kept_inputs)
    onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path))          # the path form: reads the external data's layout
    return data_path


def export_waveform(token2wav, out_dir, log=print) -> Dict[str, Path]:
    """Export only the waveform stage's graphs (t2w_*) of a Token2WavModel into `out_dir`, without
    a manifest (benchmarks and tools that work on an `assets/token2wav/` folder alone)."""
    holder = types.SimpleNamespace(token2wav=token2wav, config=None)
    out = Path(out_dir)
    written = {}
    for name in G.WAVEFORM_GRAPHS:
        started = time.perf_counter()
        written[name] = export_graph(holder, name, out / f"{name}.onnx")
        log(f"[export] {name}: {out / f'{name}.onnx'} ({time.perf_counter() - started:.1f} s)")
    return written


def versions() -> Dict[str, str]:
    import onnx

    found = {"torch": torch.__version__, "onnx": onnx.__version__, "opset": str(OPSET),
             "exporter": "torchscript"}
    try:
        import onnxruntime
        found["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return found


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
# Graphs kept in float32 in a float16 export: the vocoder's sine source and phase run in float32
# inside the graph (float16 loses the phase over a chunk), which mixed-dtype tracing cannot keep.
FLOAT32_ONLY = ("t2w_vocoder",)


def export_all(model_path, out_dir, device: str = "cpu", log=print, precision: str = "fp32") -> Manifest:
    """Export every graph of the checkpoint into `out_dir` and write its manifest.

    fp32: the model is loaded in float32 and each graph exported with constant folding (memory:
    the float32 model, 36 GB at the released size). fp16: the model is loaded memory-mapped in its
    stored dtype and each graph streamed (export_graph_streamed) with float16 weights and inputs,
    `FLOAT32_ONLY` graphs in float32: memory is the mapped shards plus one tensor, the files half
    the size. TensorRT builds its engines from either; onnxruntime runs either."""
    from omni_ros.model.loader import load_model

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = checkpoint_fingerprint(model_path)
    streamed = precision != "fp32"
    # the streamed export traces on the host whatever `device` says: the weights are only read
    model = load_model(model_path, device="cpu" if streamed else device,
                       dtype="auto" if streamed else "float32")
    manifest = Manifest(format="onnx", checkpoint=str(Path(model_path).resolve()),
                        checkpoint_hash=fingerprint,
                        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        versions=versions(), gpu=None)
    for name in G.GRAPHS:
        started = time.perf_counter()
        graph_precision = "fp32" if name in FLOAT32_ONLY else precision
        if streamed:
            written = export_graph_streamed(model, name, out / f"{name}.onnx", PRECISIONS[graph_precision])
        else:
            written = export_graph(model, name, out / f"{name}.onnx")
        data = written.name if written.suffix == ".data" else ""
        manifest.components[name] = entry_for_file(out, name, f"{name}.onnx", graph_precision, {}, data)
        size = sum((out / f).stat().st_size for f in (f"{name}.onnx", data) if f)
        log(f"[export] {name}: {out / f'{name}.onnx'} ({graph_precision}, {size / 1e6:.1f} MB, "
            f"{time.perf_counter() - started:.1f} s)")
    del model
    write_manifest(out, manifest)
    return manifest
