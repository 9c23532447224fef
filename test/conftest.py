"""Shared pytest fixtures."""
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight MiniCPM-o-4.5-layout checkpoint folder, written once per test session."""
    from omni_ros.model.checkpoint import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "ckpt", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The tiny checkpoint loaded once (float32, CPU)."""
    from omni_ros.model.loader import load_model

    return load_model(tiny_checkpoint, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ros_env():
    """An isolated DDS environment for the module's node processes, and rclpy initialised for
    its test-side nodes."""
    import rclpy

    from graph import isolated_ros_environment

    env = isolated_ros_environment()
    rclpy.init()
    yield env
    rclpy.try_shutdown()


@pytest.fixture
def ros_context():
    """A ROS context of its own for a node built in the test process."""
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


KIND_MARKERS = ("unit", "slow", "dds", "build")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Every test says what it needs: `unit`, `slow`, `dds` or `build` (see pyproject.toml), as a
    module-level `pytestmark` or on the test. Runs before `-m` deselects, so a test with none
    fails every run, `-m unit` included."""
    unmarked = [item.nodeid for item in items
                if not any(item.get_closest_marker(name) for name in KIND_MARKERS)]
    if unmarked:
        raise pytest.UsageError(
            "tests without a kind marker (mark them pytest.mark.unit, .slow, .dds or .build):\n  "
            + "\n  ".join(unmarked))
