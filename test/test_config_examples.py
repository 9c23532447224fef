"""config/omni.yaml and every file in config/examples/ is a ROS 2 parameter file whose omni_ros
keys are declared parameters with valid values, and the driver sections use the drivers' names."""
from pathlib import Path

import pytest
import yaml

from omni_ros.flow.types import OUTPUT_SAMPLE_RATE
from omni_ros.ros.parameters import NODE_PARAMETERS, RCLPY_PARAMETERS, check_value

CONFIG = Path(__file__).resolve().parents[1] / "config"
FILES = sorted([CONFIG / "omni.yaml", *(CONFIG / "examples").glob("*.yaml")])
# The ros-drivers audio_common nodes' parameters, by node name (the nodes are called
# audio_capture_node and audio_play_node, as their executables).
DRIVER_PARAMETERS = {
    "audio_capture_node": {"dst", "device", "format", "bitrate", "channels", "depth", "sample_rate",
                      "sample_format"},
    "audio_play_node": {"dst", "device", "do_timestamp", "format", "channels", "depth", "sample_rate",
                   "sample_format"},
}


def sections(path: Path) -> dict:
    """{node name: its ros__parameters} of a parameter file (`/**/name` or `name` keys)."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data, path
    result = {}
    for key, value in data.items():
        assert set(value) == {"ros__parameters"}, (path.name, key)
        result[key.rsplit("/", 1)[-1]] = value["ros__parameters"]
    return result


@pytest.mark.unit
def test_there_are_examples_for_camera_microphone_speaker():
    names = {p.name for p in FILES}
    assert {"realsense_camera.yaml", "audio_capture_mic.yaml", "audio_play_speaker.yaml"} <= names


@pytest.mark.dds
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_rcl_loads_it_and_gives_each_node_its_section(path):
    """Parsed by rcl itself (as `--ros-args --params-file` does), wildcards matched to a node of
    each section's name, under a namespace like a robot's."""
    import rclpy
    from rclpy.node import Node

    context = rclpy.Context()
    rclpy.init(context=context, args=["test", "--ros-args", "--params-file", str(path)])
    try:
        for name, values in sections(path).items():
            node = Node(name, namespace="/robot1", context=context,
                        automatically_declare_parameters_from_overrides=True)
            try:
                got = {n: node.get_parameter(n).value for n in values}
            finally:
                node.destroy_node()
            assert got == values, (path.name, name)
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.unit
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_key_is_a_declared_parameter_with_a_valid_value(path):
    for node, values in sections(path).items():
        if node in DRIVER_PARAMETERS:
            unknown = set(values) - DRIVER_PARAMETERS[node]
            assert not unknown, f"{path.name}: {node} has no parameters {sorted(unknown)}"
            continue
        assert node in NODE_PARAMETERS, f"{path.name}: unknown node {node}"
        specs = {spec.name: spec for spec in NODE_PARAMETERS[node]}
        for name, value in values.items():
            assert name in specs or name in RCLPY_PARAMETERS, \
                f"{path.name}: {node} declares no parameter {name!r}"
            if name not in specs:
                continue
            spec = specs[name]
            assert type(value) is type(spec.default), \
                f"{path.name}: {node}.{name} is {type(value).__name__}, declared " \
                f"{type(spec.default).__name__} (write 1.0, not 1, for a float)"
            assert check_value(spec, value) is None, (path.name, name, value)
            if spec.value_range is not None and not isinstance(value, bool):
                assert spec.value_range[0] <= value <= spec.value_range[1], (path.name, name)


@pytest.mark.unit
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_clock_and_node_agree_on_the_window(path):
    found = sections(path)
    windows = {found[n].get("window_sec", 1.0) for n in ("omni_flow_clock", "omni_node")
               if n in found}
    assert len(windows) <= 1, f"{path.name}: window_sec differs between the nodes"


@pytest.mark.unit
def test_audio_play_is_told_the_speech_format():
    play = sections(CONFIG / "examples" / "audio_play_speaker.yaml")["audio_play_node"]
    assert (play["format"], play["sample_format"], play["channels"], play["sample_rate"],
            play["dst"]) == ("wave", "S16LE", 1, OUTPUT_SAMPLE_RATE, "alsasink")


@pytest.mark.unit
def test_audio_capture_records_raw_pcm_omni_node_accepts():
    found = sections(CONFIG / "examples" / "audio_capture_mic.yaml")
    capture, node = found["audio_capture_node"], found["omni_node"]
    assert capture["format"] == "wave"
    assert (capture["sample_rate"], capture["channels"], capture["sample_format"]) == \
        (node["audio_sample_rate"], node["audio_channels"], node["audio_sample_format"])
    text = (CONFIG / "examples" / "audio_capture_mic.yaml").read_text()
    assert "mic/audio_stamped:=/audio/audio_stamped" in text
    assert "mic/audio_info:=/audio/audio_info" in text
