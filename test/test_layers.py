"""The package's layering, read from the source (every import, lazy ones inside functions too):

    flow  <-  model  <-  session  <-  runtime  <-  ros  <-  tools

flow imports no ROS and no torch; model, session and runtime import no ROS; no package imports
one to its right, so no import cycle runs between packages."""
import ast
import functools
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "omni_ros"
ORDER = ["flow", "model", "session", "runtime", "ros", "tools"]
ROS_MODULES = {"rclpy", "rosidl_runtime_py", "launch", "launch_ros", "ament_index_python"}
TORCH_MODULES = {"torch", "transformers", "torchaudio", "safetensors"}
NO_ROS = {"flow", "model", "session", "runtime"}
NO_TORCH = {"flow"}


def _is_ros(name: str) -> bool:
    top = name.split(".")[0]
    return top in ROS_MODULES or top.endswith(("_msgs", "_srvs", "_interfaces")) \
        or name == "omni_ros.msg" or name.startswith("omni_ros.msg.")


def imports_of(path: Path, root: Path = PACKAGE):
    """Absolute module names imported by a file of the package at `root` (relative imports
    resolved)."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


@functools.lru_cache(maxsize=1)
def layer_imports():
    """{layer: {(file, imported module)}} for every module of every layer."""
    found = {}
    for layer in ORDER:
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for name in imports_of(path):
                found.setdefault(layer, set()).add((path.relative_to(PACKAGE).as_posix(), name))
    return found


def test_every_layer_is_known():
    layers = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert layers - {"msg"} == set(ORDER)


def test_layers_import_only_to_their_left():
    wrong = []
    for layer, imports in layer_imports().items():
        right = ORDER[ORDER.index(layer) + 1:]
        for file, name in imports:
            parts = name.split(".")
            if parts[0] == "omni_ros" and len(parts) > 1 and parts[1] in right:
                wrong.append(f"{file} imports {name}")
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize("layer", sorted(NO_ROS))
def test_no_ros_below_the_ros_layer(layer):
    found = sorted(f"{file} imports {name}" for file, name in layer_imports().get(layer, ())
                   if _is_ros(name))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("layer", sorted(NO_TORCH))
def test_no_torch_in_the_flow(layer):
    found = sorted(f"{file} imports {name}" for file, name in layer_imports().get(layer, ())
                   if name.split(".")[0] in TORCH_MODULES)
    assert not found, "\n".join(found)


def test_the_reader_sees_lazy_and_relative_imports(tmp_path):
    path = tmp_path / "omni_ros" / "model" / "example.py"
    path.parent.mkdir(parents=True)
    path.write_text("def f():\n    from ..runtime import graphs\n    import rclpy\n")
    names = set(imports_of(path, tmp_path / "omni_ros"))
    assert {"omni_ros.runtime", "omni_ros.runtime.graphs", "rclpy"} <= names
    assert _is_ros("rclpy") and _is_ros("sensor_msgs.msg") and not _is_ros("numpy")
