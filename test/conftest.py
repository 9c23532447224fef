"""Shared pytest fixtures."""
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, worker_id) -> Path:   # worker_id: pytest-xdist's fixture
    """A tiny random-weight MiniCPM-o-4.5-layout checkpoint folder, written once per test run
    (with pytest-xdist, once for all workers: the first writes it, the others wait for it).
    Tests read it; a test that changes files copies it first."""
    from filelock import FileLock

    from omni_ros.model.checkpoint import write_checkpoint

    if worker_id == "master":
        return write_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "ckpt", seed=0)
    shared = tmp_path_factory.getbasetemp().parent / "tiny_ckpt"
    with FileLock(str(shared) + ".lock"):
        if not (shared / "ckpt" / "config.json").exists():
            write_checkpoint(shared / "ckpt", seed=0)
    return shared / "ckpt"


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The tiny checkpoint loaded once (float32, CPU)."""
    from omni_ros.model.loader import load_model

    return load_model(tiny_checkpoint, device="cpu", dtype="float32")


class ScriptedHead:
    """Test double of the LLM output head (hidden state -> logits): each call makes the next
    scripted token (near-)certain (logit 50; its runner-up, if any, 40); '<|listen|>' once the
    script is over. Everything else is the tiny model."""

    def __init__(self, tok, vocab, script, runner_up=None):
        self.tok, self.vocab, self.script = tok, vocab, list(script)
        self.runner_up = runner_up or {}

    def id(self, name):
        return int(name) if isinstance(name, int) else int(self.tok.convert_tokens_to_ids(name))

    def __call__(self, hidden):
        import torch

        name = self.script.pop(0) if self.script else "<|listen|>"
        logits = torch.zeros(self.vocab)
        logits[self.id(name)] = 50.0
        if name in self.runner_up:
            logits[self.id(self.runner_up[name])] = 40.0
        return logits


@pytest.fixture
def make(tiny_model):
    """make(script, runner_up=None, **options): a duplex session on the tiny model whose output head
    follows `script`, prefilled, with its trace of fed tokens started empty."""
    from omni_ros.session.options import SessionOptions
    from omni_ros.session.session import OmniSession
    from omni_ros.runtime.torch_compute import TorchCompute

    def _make(script, runner_up=None, **opts):
        base = dict(force_listen_count=0, max_unit_chars=0, seed=0)
        base.update(opts)
        s = OmniSession(TorchCompute(tiny_model), SessionOptions(**base))
        s.context.head = ScriptedHead(tiny_model.tokenizer, tiny_model.config.vocab_size, script, runner_up)
        s._prefill()
        s.context.trace = []
        return s
    return _make


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
