"""MiniCPM-o-4.5-shaped model for omni_ros: config, modules, checkpoint writer/loader and the
full-duplex session. Submodules import torch/transformers; this package file stays light.

    from omni_ros.model.loader import load_model, CheckpointError
    from omni_ros.model.session import OmniDuplexSession, SessionOptions
"""

__all__ = ["load_model", "CheckpointError", "OmniDuplexSession", "SessionOptions", "OmniConfig"]


def __getattr__(name):
    if name in ("load_model", "CheckpointError"):
        from . import loader
        return getattr(loader, name)
    if name in ("OmniDuplexSession", "SessionOptions"):
        from . import session
        return getattr(session, name)
    if name == "OmniConfig":
        from .config import OmniConfig
        return OmniConfig
    raise AttributeError(name)
