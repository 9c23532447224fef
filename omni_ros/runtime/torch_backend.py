"""The portable PyTorch backend: eager execution on CPU or CUDA of the model in omni_ros.model."""
from __future__ import annotations

from omni_ros.runtime.registry import BackendError, BackendSettings


class TorchBackend:
    name = "torch"

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings

    def create_session(self):
        from omni_ros.model.loader import CheckpointError, load_model
        from omni_ros.model.session import OmniDuplexSession, SessionOptions

        try:
            model = load_model(self.settings.model_path, device=self.settings.device,
                               dtype=self.settings.dtype)
        except CheckpointError as error:
            raise BackendError(str(error)) from error
        return OmniDuplexSession(model, SessionOptions.from_mapping(self.settings.session_options))
