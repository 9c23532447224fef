"""A backend from another package: the torch backend with a fixed delay added to every unit."""
import time

from omni_ros.runtime.torch_backend import TorchBackend

DELAY_SEC = 0.05


class _Delayed:
    def __init__(self, session):
        self._session = session

    def run_unit(self, unit):
        time.sleep(DELAY_SEC)
        return self._session.run_unit(unit)

    def __getattr__(self, name):
        return getattr(self._session, name)


class SlowTorchBackend(TorchBackend):
    name = "slow_torch"

    def create_session(self):
        return _Delayed(super().create_session())
