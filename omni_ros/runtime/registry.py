"""Execution backends as plugins: found through the entry-point group `omni_ros.backends`.

A backend is a callable (usually a class) that takes `BackendSettings` and returns an object that
satisfies `omni_ros.flow.types.DuplexSession`. Third-party packages add their own with
`[project.entry-points."omni_ros.backends"] name = "package.module:Factory"`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable, Dict

ENTRY_POINT_GROUP = "omni_ros.backends"

# Backends shipped with omni_ros, also found where no package metadata is installed (colcon).
BUILTIN_BACKENDS = {
    "torch": "omni_ros.runtime.torch_backend:TorchBackend",
    "onnxruntime": "omni_ros.runtime.onnxruntime_backend:OrtBackend",
    "tensorrt": "omni_ros.runtime.tensorrt_backend:TrtBackend",
    "vllm_omni": "omni_ros.runtime.vllm_omni_backend:VllmOmniBackend",
}


class BackendError(RuntimeError):
    """A backend cannot be found or cannot start; the message says what to do."""


@dataclass
class BackendSettings:
    model_path: str
    device: str = "cpu"
    dtype: str = "float32"
    # Exported graphs / engines (onnxruntime, tensorrt); "" = the backend's default folder.
    engine_dir: str = ""
    # The node's parameters by name; a session takes the ones that are its options (for the
    # built-in backends, the fields of omni_ros.session.options.SessionOptions).
    session_options: Dict[str, Any] = field(default_factory=dict)


def _load(target: str) -> Callable:
    module_name, _, attribute = target.partition(":")
    return getattr(import_module(module_name), attribute)


def available_backends() -> Dict[str, str]:
    """{name: "module:attribute"} of every backend that can be loaded by name."""
    found = dict(BUILTIN_BACKENDS)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = entry.value
    return found


def load_backend(name: str) -> Callable:
    backends = available_backends()
    if name not in backends:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(sorted(backends))}. "
                           f"A plugin registers one under the entry-point group {ENTRY_POINT_GROUP!r}.")
    try:
        return _load(backends[name])
    except (ImportError, AttributeError) as error:
        raise BackendError(f"backend {name!r} ({backends[name]}) failed to import: {error}") from error


def create_session(name: str, settings: BackendSettings):
    """Build a DuplexSession with the named backend."""
    return load_backend(name)(settings).create_session()


def omni_session(compute, settings: BackendSettings):
    """The MiniCPM-o session (omni_ros.session) over a backend's Compute, with the settings'
    session options: what the built-in backends' `create_session` returns."""
    from omni_ros.session.options import SessionOptions
    from omni_ros.session.session import OmniSession

    return OmniSession(compute, SessionOptions.from_mapping(settings.session_options))
