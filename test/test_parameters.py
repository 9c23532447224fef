"""The parameter reference in docs/ is the declarations, the declarations are sound, and the
nodes declare exactly what the tables say (no undeclared, extra or differently described one)."""
from dataclasses import replace
from pathlib import Path

import pytest

from omni_ros.ros import parameters
from omni_ros.ros.parameters import (CLOCK_NODE_PARAMETERS, NODE_PARAMETERS, OMNI_NODE_PARAMETERS,
                                     RCLPY_PARAMETERS, check_value, descriptor_fields)
from omni_ros.tools.parameter_docs import render

DOCS = Path(__file__).resolve().parents[1] / "docs" / "parameters.md"
ALL_SPECS = [spec for specs in NODE_PARAMETERS.values() for spec in specs]


@pytest.mark.unit
def test_docs_match_the_declarations():
    assert DOCS.read_text() == render(), \
        "docs/parameters.md is stale: python -m omni_ros.tools.parameter_docs > docs/parameters.md"


@pytest.mark.unit
def test_docs_cover_every_node_and_parameter():
    text = DOCS.read_text()
    for node, specs in NODE_PARAMETERS.items():
        section = text.split(f"## {node}\n", 1)[1].split("\n## ", 1)[0]
        for spec in specs:
            assert f"| `{spec.name}` |" in section, (node, spec.name)
            assert spec.description in section, (node, spec.name)


@pytest.mark.unit
@pytest.mark.parametrize("change", [
    {"description": "something else"}, {"default": 2.0}, {"value_range": (0.5, 5.0)},
    {"dynamic": True}])
def test_a_declaration_that_drifts_from_the_docs_is_caught(monkeypatch, change):
    """What test_docs_match_the_declarations relies on: any change to a spec changes the docs."""
    before = render()
    changed = (replace(CLOCK_NODE_PARAMETERS[0], **change), *CLOCK_NODE_PARAMETERS[1:])
    monkeypatch.setitem(parameters.NODE_PARAMETERS, "omni_flow_clock", changed)
    assert render() != before


@pytest.mark.unit
def test_every_default_lies_in_its_range_and_choices():
    for spec in ALL_SPECS:
        assert spec.description.strip(), spec.name
        assert check_value(spec, spec.default) is None, spec.name
        if spec.value_range is not None:
            low, high = spec.value_range
            assert low <= spec.default <= high, spec.name


@pytest.mark.unit
def test_choices_refuse_other_values():
    spec = next(s for s in OMNI_NODE_PARAMETERS if s.name == "dtype")
    assert check_value(spec, "int8") is not None


@pytest.mark.unit
def test_shared_parameters_agree_between_nodes():
    clock = {s.name: s for s in CLOCK_NODE_PARAMETERS}
    node = {s.name: s for s in OMNI_NODE_PARAMETERS}
    for name in clock.keys() & node.keys():
        assert (clock[name].default, clock[name].value_range) == \
            (node[name].default, node[name].value_range), name


def declared(node) -> dict:
    """{name: (value, descriptor fields)} of what a running node has declared itself."""
    names = [n for n in node._parameters if n not in RCLPY_PARAMETERS]
    descriptors = node.describe_parameters(names)
    return {name: (node.get_parameter(name).value, descriptor_fields(descriptor))
            for name, descriptor in zip(names, descriptors)}


def expected(specs) -> dict:
    return {spec.name: (spec.default, descriptor_fields(spec.descriptor())) for spec in specs}


def compare(actual: dict, table: dict, node_name: str) -> None:
    assert sorted(actual) == sorted(table), (
        f"{node_name} declares {sorted(set(actual) - set(table))} beyond its table and lacks "
        f"{sorted(set(table) - set(actual))}")
    for name, (value, fields) in table.items():
        got_value, got_fields = actual[name]
        assert got_fields == fields, (node_name, name)
        if name != "model_path":   # the one the test has to set
            assert got_value == value and type(got_value) is type(value), (node_name, name)


@pytest.mark.dds
def test_clock_node_declares_exactly_its_table(ros_context):
    from omni_ros.ros.clock_node import OmniFlowClock
    node = OmniFlowClock(context=ros_context)
    try:
        compare(declared(node), expected(CLOCK_NODE_PARAMETERS), "omni_flow_clock")
    finally:
        node.destroy_node()


@pytest.mark.dds
def test_omni_node_declares_exactly_its_table(ros_context, tiny_checkpoint):
    from rclpy.parameter import Parameter

    from omni_ros.ros.omni_node import OmniNode
    node = OmniNode(context=ros_context, parameter_overrides=[
        Parameter("model_path", value=str(tiny_checkpoint))])
    try:
        compare(declared(node), expected(OMNI_NODE_PARAMETERS), "omni_node")
    finally:
        node.close()
        node.destroy_node()
