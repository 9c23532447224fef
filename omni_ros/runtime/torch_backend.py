"""The portable PyTorch backend: eager execution on CPU or CUDA of the model in omni_ros.model."""
from __future__ import annotations

from omni_ros.runtime.registry import BackendError, BackendSettings, omni_session


class TorchBackend:
    name = "torch"

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings

    def create_session(self):
        from omni_ros.model.loader import CheckpointError, DeviceUnavailable, load_model
        from omni_ros.runtime.torch_compute import TorchCompute

        try:
            model = load_model(self.settings.model_path, device=self.settings.device,
                               dtype=self.settings.dtype)
        except (CheckpointError, DeviceUnavailable) as error:   # one line: what is wrong, what to do
            raise BackendError(str(error)) from error
        return omni_session(TorchCompute(model), self.settings)
